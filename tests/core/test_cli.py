"""The core ``caqe`` commands: db upgrade and reset, run, status and options.

Commands run in-process through click's CliRunner. ``caqe run`` gets a
stand-in for the gunicorn server, so the tests check what it prepares and
rejects without serving.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from caqe_core.assignment import ensure_reservations
from caqe_core.cli import build_cli
from caqe_core.db import head_revision, make_engine, make_session_factory
from caqe_core.flow import start_participant
from caqe_core.models import Condition, Experiment, Participant, Stimulus
from caqe_core.plugins import Registry, set_registry
from caqe_core.study import load_study_from_database
from tests.support.studies import scale_study


@pytest.fixture
def caqe(registry: Registry) -> Iterator[Any]:
    """Run ``caqe ARGS...`` in-process; return click's Result."""
    set_registry(registry)
    group = build_cli()
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(group, list(args), input=input)

    try:
        yield invoke
    finally:
        set_registry(None)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Calls of the gunicorn server that ``caqe run`` would start."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "caqe_core.serve.serve", lambda **options: calls.append(options)
    )
    return calls


def add_participants(database_url: str, registry: Registry, count: int) -> None:
    """Start ``count`` participants and give each their conditions."""
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    study = load_study_from_database(factory, registry, None)
    for _ in range(count):
        participant = start_participant(factory, study, "local_lab")
        ensure_reservations(factory, study, participant.id)
    engine.dispose()


def count_rows(database_url: str, model: type) -> int:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0
    finally:
        engine.dispose()


def assert_clean(result: Result, code: int) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code != 0:
        assert isinstance(result.exception, SystemExit), result.exception


# --- db upgrade and db reset ------------------------------------------------------


def test_db_upgrade(caqe: Any, database_url: str) -> None:
    first = caqe("db", "upgrade", "--database-url", database_url)
    second = caqe("db", "upgrade", "--database-url", database_url)

    assert_clean(first, 0)
    assert_clean(second, 0)
    assert "from empty to 0002" in first.output
    assert "is up to date (0002)" in second.output
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            revision = connection.exec_driver_sql(
                "SELECT version_num FROM alembic_version"
            ).scalar()
    finally:
        engine.dispose()
    assert {
        "experiments",
        "participants",
        "trials",
        "payments",
        "alembic_version",
    } <= tables
    assert revision == head_revision()


def test_db_upgrade_from_environment(
    caqe: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)

    result = caqe("db", "upgrade")

    assert_clean(result, 0)
    assert make_url(sqlite_url).database in result.output


def test_db_reset_declined(
    caqe: Any,
    served: list,
    database_url: str,
    scale_config: Path,
    registry: Registry,
    tmp_path: Path,
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", database_url), 0
    )
    add_participants(database_url, registry, 3)

    result = caqe("db", "reset", "--database-url", database_url, input="n\n")

    assert_clean(result, 1)
    assert "Aborted" in result.output
    assert count_rows(database_url, Participant) == 3
    assert count_rows(database_url, Experiment) == 1
    backups = list((tmp_path / "caqe-home" / "backups").iterdir())
    assert len(backups) == 1
    assert "Backed up" in result.output
    assert str(backups[0]) in result.output
    assert backed_up_participants(backups[0]) == 3


def test_db_reset_confirmed(
    caqe: Any,
    served: list,
    database_url: str,
    scale_config: Path,
    registry: Registry,
    tmp_path: Path,
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", database_url), 0
    )
    add_participants(database_url, registry, 2)

    result = caqe("db", "reset", "--database-url", database_url, "--yes")

    assert_clean(result, 0)
    assert "Cleared" in result.output
    assert count_rows(database_url, Participant) == 0
    assert count_rows(database_url, Experiment) == 0
    backups = list((tmp_path / "caqe-home" / "backups").iterdir())
    assert len(backups) == 1
    assert backed_up_participants(backups[0]) == 2
    again = caqe("run", "--config", str(scale_config), "--database-url", database_url)
    assert_clean(again, 0)


def test_db_reset_typed_yes(
    caqe: Any, served: list, sqlite_url: str, scale_config: Path, registry: Registry
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", sqlite_url), 0
    )
    add_participants(sqlite_url, registry, 1)

    result = caqe("db", "reset", "--database-url", sqlite_url, input="y\n")

    assert_clean(result, 0)
    assert count_rows(sqlite_url, Participant) == 0


def backed_up_participants(backup: Path) -> int:
    """Count the participants in a backup: a SQLite copy or a JSON dump of the tables."""
    if backup.suffix == ".sqlite":
        with sqlite3.connect(backup) as connection:
            return connection.execute("SELECT count(*) FROM participants").fetchone()[0]
    return len(json.loads(backup.read_text())["participants"])


# --- caqe run: preparing the same and a changed config ----------------------------


def test_run_prepares_and_serves(
    caqe: Any, served: list, sqlite_url: str, scale_config: Path
) -> None:
    result = caqe(
        "run",
        "--config",
        str(scale_config),
        "--database-url",
        sqlite_url,
        "--port",
        "5123",
    )

    assert_clean(result, 0)
    assert len(served) == 1
    assert served[0]["port"] == 5123
    assert served[0]["host"] == "127.0.0.1"
    assert served[0]["study"].name == "scale-study"
    assert count_rows(sqlite_url, Condition) == 3


def study_snapshot(database_url: str) -> dict[str, Any]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            experiment = session.scalars(select(Experiment)).one()
            return {
                "experiment": (
                    experiment.id,
                    experiment.config_hash,
                    experiment.prepared_at,
                ),
                "conditions": session.execute(
                    select(Condition.id, Condition.key, Condition.target).order_by(
                        Condition.id
                    )
                ).all(),
                "stimuli": session.execute(
                    select(Stimulus.id, Stimulus.path, Stimulus.sha256).order_by(
                        Stimulus.id
                    )
                ).all(),
                "participants": session.scalar(
                    select(func.count()).select_from(Participant)
                ),
            }
    finally:
        engine.dispose()


def test_run_same_config_twice_changes_nothing(
    caqe: Any, served: list, database_url: str, scale_config: Path, registry: Registry
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", database_url), 0
    )
    add_participants(database_url, registry, 2)
    before = study_snapshot(database_url)

    result = caqe("run", "--config", str(scale_config), "--database-url", database_url)

    assert_clean(result, 0)
    assert study_snapshot(database_url) == before
    assert len(served) == 2


def change_config(path: Path, **assignment: Any) -> None:
    config = yaml.safe_load(path.read_text())
    config["assignment"].update(assignment)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_run_rejects_changed_config(
    caqe: Any, served: list, database_url: str, scale_config: Path, registry: Registry
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", database_url), 0
    )
    add_participants(database_url, registry, 1)
    before = study_snapshot(database_url)
    change_config(scale_config, trials_per_condition=9)

    result = caqe("run", "--config", str(scale_config), "--database-url", database_url)

    assert_clean(result, 1)
    assert (
        "already contains 1 participant(s) of experiment 'scale-study'" in result.output
    )
    assert "different config" in result.output
    assert "new experiment.name" in result.output
    assert "caqe db reset" in result.output
    assert len(served) == 1
    assert study_snapshot(database_url) == before


def test_run_rejects_changed_audio(
    caqe: Any, served: list, sqlite_url: str, scale_config: Path, registry: Registry
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", sqlite_url), 0
    )
    add_participants(sqlite_url, registry, 1)
    from tests.support.studies import write_tone

    write_tone(scale_config.parent / "audio" / "item0" / "system0.wav", 999.0)

    result = caqe("run", "--config", str(scale_config), "--database-url", sqlite_url)

    assert_clean(result, 1)
    assert "different config or different audio" in result.output


def test_run_replaces_unused_study(
    caqe: Any, served: list, sqlite_url: str, scale_config: Path
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", sqlite_url), 0
    )
    change_config(scale_config, trials_per_condition=9)

    result = caqe("run", "--config", str(scale_config), "--database-url", sqlite_url)

    assert_clean(result, 0)
    snapshot = study_snapshot(sqlite_url)
    assert [row.target for row in snapshot["conditions"]] == [9, 9, 9]


def test_run_invalid_config(
    caqe: Any, served: list, sqlite_url: str, tmp_path: Path
) -> None:
    config = scale_study(tmp_path / "bad", assignment={"trials_per_condition": -1})

    result = caqe("run", "--config", str(config), "--database-url", sqlite_url)

    assert_clean(result, 1)
    assert "assignment.trials_per_condition" in result.output
    assert served == []


def test_run_plugin_without_demo(caqe: Any, served: list, sqlite_url: str) -> None:
    result = caqe("run", "--plugin", "scale", "--database-url", sqlite_url)

    assert_clean(result, 1)
    assert "ships no demo config" in result.output


def test_run_unreachable_database(caqe: Any, served: list, scale_config: Path) -> None:
    result = caqe(
        "run",
        "--config",
        str(scale_config),
        "--database-url",
        "postgresql://nobody@127.0.0.1:1/none",
    )

    assert_clean(result, 1)
    assert "Cannot use the database" in result.output
    assert "nobody@127.0.0.1:1/none" in result.output


# --- caqe status and the study options --------------------------------------------


def test_status_prints_progress(
    caqe: Any, served: list, database_url: str, scale_config: Path, registry: Registry
) -> None:
    assert_clean(
        caqe("run", "--config", str(scale_config), "--database-url", database_url), 0
    )
    add_participants(database_url, registry, 4)

    result = caqe("status", "--database-url", database_url)

    assert_clean(result, 0)
    assert "Experiment scale-study" in result.output
    rows = {
        match.group(1): (int(match.group(2)), int(match.group(3)), int(match.group(4)))
        for match in re.finditer(
            r"(?m)^(item\d)\s+(\d+)\s+(\d+)\s+(\d+)", result.output
        )
    }
    assert set(rows) == {"item0", "item1", "item2"}
    assert all(completed == 0 for completed, _, _ in rows.values())
    assert sum(reserved for _, reserved, _ in rows.values()) == 8
    assert all(target == 5 for _, _, target in rows.values())


def two_studies(caqe: Any, tmp_path: Path, database_url: str) -> tuple[Path, Path]:
    first = scale_study(tmp_path / "first")
    second = scale_study(
        tmp_path / "second",
        experiment={"name": "second-study", "title": "Second"},
        assignment={"trials_per_condition": 7},
    )
    for config in (first, second):
        assert_clean(
            caqe("run", "--config", str(config), "--database-url", database_url), 0
        )
    return first, second


def test_status_needs_choice_of_study(
    caqe: Any, served: list, sqlite_url: str, tmp_path: Path
) -> None:
    two_studies(caqe, tmp_path, sqlite_url)

    result = caqe("status", "--database-url", sqlite_url)

    assert_clean(result, 1)
    assert "scale-study, second-study" in result.output
    assert "--experiment" in result.output


def test_status_study_from_config_option(
    caqe: Any, served: list, sqlite_url: str, tmp_path: Path
) -> None:
    _, second = two_studies(caqe, tmp_path, sqlite_url)

    result = caqe("status", "--database-url", sqlite_url, "--config", str(second))

    assert_clean(result, 0)
    assert "Experiment second-study" in result.output
    assert re.search(r"(?m)^item0\s+0\s+0\s+7\b", result.output)


def test_status_from_environment(
    caqe: Any,
    served: list,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, _ = two_studies(caqe, tmp_path, sqlite_url)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CAQE_CONFIG", str(first))

    result = caqe("status")

    assert_clean(result, 0)
    assert "Experiment scale-study" in result.output


def test_status_conflicting_experiment_and_config(
    caqe: Any, served: list, sqlite_url: str, tmp_path: Path
) -> None:
    first, _ = two_studies(caqe, tmp_path, sqlite_url)

    result = caqe(
        "status",
        "--database-url",
        sqlite_url,
        "--config",
        str(first),
        "--experiment",
        "second-study",
    )

    assert_clean(result, 2)
    assert "does not match experiment.name 'scale-study'" in result.output


def test_export_study_from_config(
    caqe: Any,
    served: list,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, second = two_studies(caqe, tmp_path, sqlite_url)
    out = tmp_path / "export"
    monkeypatch.setenv("CAQE_CONFIG", str(second))

    result = caqe("results", "export", "--database-url", sqlite_url, "--out", str(out))

    assert_clean(result, 0)
    assert "Exported second-study" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["experiment"] == "second-study"


def test_analyze_config_must_match_export(
    caqe: Any, served: list, sqlite_url: str, tmp_path: Path
) -> None:
    first, second = two_studies(caqe, tmp_path, sqlite_url)
    out = tmp_path / "export"
    exported = caqe(
        "results",
        "export",
        "--database-url",
        sqlite_url,
        "--config",
        str(first),
        "--out",
        str(out),
    )
    assert_clean(exported, 0)

    result = caqe(
        "analyze",
        "--from-export",
        str(out),
        "--config",
        str(second),
        "--out",
        str(tmp_path / "report.html"),
    )

    assert_clean(result, 1)
    assert "contains experiment 'scale-study', not 'second-study'" in result.output


def test_run_from_environment(
    caqe: Any,
    served: list,
    sqlite_url: str,
    scale_config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CAQE_CONFIG", str(scale_config))

    result = caqe("run")

    assert_clean(result, 0)
    assert served[0]["study"].name == "scale-study"
    assert count_rows(sqlite_url, Experiment) == 1


def study_commands(
    group: click.Group, prefix: str = ""
) -> Iterator[tuple[str, click.Command]]:
    """Yield every command that works on a study: it has --experiment, or is run or validate."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        if isinstance(command, click.Group):
            yield from study_commands(command, path)
            continue
        options = {
            option for param in command.params for option in getattr(param, "opts", [])
        }
        if "--experiment" in options or path in ("run", "validate"):
            yield path, command


def option(command: click.Command, flag: str) -> click.Parameter | None:
    for param in command.params:
        if flag in getattr(param, "opts", []):
            return param
    return None


def test_study_commands_take_config_and_database_url(registry: Registry) -> None:
    set_registry(registry)
    try:
        commands = list(study_commands(build_cli()))
    finally:
        set_registry(None)
    assert {"run", "status", "validate", "lab codes"} <= {path for path, _ in commands}

    missing = []
    for path, command in commands:
        config = option(command, "--config")
        if config is None or config.envvar != "CAQE_CONFIG":
            missing.append(f"caqe {path}: --config [env CAQE_CONFIG]")
        if path == "validate":
            continue
        database = option(command, "--database-url")
        if database is None or database.envvar != "DATABASE_URL":
            missing.append(f"caqe {path}: --database-url [env DATABASE_URL]")
    assert not missing, "commands without the shared study options:\n" + "\n".join(
        missing
    )


def test_database_of_newer_caqe(caqe: Any, sqlite_url: str) -> None:
    assert_clean(caqe("db", "upgrade", "--database-url", sqlite_url), 0)
    engine = make_engine(sqlite_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE alembic_version SET version_num = 'ffff9999'"
        )
    engine.dispose()

    for args in (("db", "upgrade"), ("status",)):
        result = caqe(*args, "--database-url", sqlite_url)

        assert_clean(result, 1)
        assert "'ffff9999'" in result.output
        assert "newer CAQE" in result.output
