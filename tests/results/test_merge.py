"""`caqe results merge`: two servers' exports of one study, duplicates kept once."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result
from sqlalchemy import select

from caqe_core.models import Participant
from caqe_core.plugins import Registry
from tests.results.synthetic import SyntheticStudy, make_scale_study


def _export(run_cli: Callable[..., Result], study: SyntheticStudy, out: Path) -> None:
    result = run_cli(
        "results", "export", "--database-url", study.database_url, "--out", str(out)
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
def two_servers(
    tmp_path: Path, registry: Registry, run_cli: Callable[..., Result]
) -> tuple[SyntheticStudy, SyntheticStudy, Path, Path]:
    """Server B started from a copy of server A's database, then got its own listeners."""
    first_db = tmp_path / "a.sqlite"
    first = make_scale_study(
        tmp_path / "a",
        f"sqlite:///{first_db}",
        registry,
        participants=30,
        items=4,
        target=50,
    )
    second_db = tmp_path / "b.sqlite"
    # The backup API copies the write-ahead log too, which a file copy would miss.
    with sqlite3.connect(first_db) as source, sqlite3.connect(second_db) as target:
        source.backup(target)
    second = make_scale_study(
        tmp_path / "b",
        f"sqlite:///{second_db}",
        registry,
        participants=20,
        items=4,
        seed=99,
        target=50,
    )
    # A participant who was still active on A completed later on B.
    active = min(first.incomplete)
    with second.session_factory() as session, session.begin():
        row = session.scalars(
            select(Participant).where(Participant.public_id == active)
        ).one()
        row.status = "completed"
    _export(run_cli, first, tmp_path / "export-a")
    _export(run_cli, second, tmp_path / "export-b")
    return first, second, tmp_path / "export-a", tmp_path / "export-b"


def test_merge_keeps_duplicates_once(
    two_servers: tuple[SyntheticStudy, SyntheticStudy, Path, Path],
    run_cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    first, second, export_a, export_b = two_servers
    out = tmp_path / "merged"
    result = run_cli(
        "results", "merge", str(export_a), str(export_b), "--out", str(out)
    )
    assert result.exit_code == 0, result.output

    participants = pd.read_csv(out / "participants.csv")
    expected_ids = set(first.statuses) | set(second.statuses)
    assert len(participants) == len(expected_ids) == 50
    assert set(participants["participant"]) == expected_ids
    ratings = pd.read_csv(out / "ratings.csv")
    expected_ratings = {
        (r["participant"], r["trial"], r["system"], r["value"])
        for r in first.ratings + second.ratings
    }
    got = set(
        zip(
            ratings["participant"],
            ratings["trial"],
            ratings["system"],
            ratings["value"],
        )
    )
    assert got == expected_ratings
    assert len(ratings) == len(expected_ratings)
    assert not ratings.duplicated(["participant", "idempotency_key", "system"]).any()
    events = pd.read_csv(out / "events.csv")
    assert not events.duplicated(["participant", "trial", "sequence"]).any()
    payments = pd.read_csv(out / "payments.csv")
    assert payments["request_token"].is_unique
    assert len(payments) == len(first.payments) + len(second.payments)

    trials_a = len({r["trial"] for r in first.ratings})
    assert f"{trials_a} trials" in result.output
    assert "participants rows" in result.output
    assert "Participants in both exports (30)" in result.output
    active = min(first.incomplete)
    assert (
        f"Conflict: participants {active}: the exports differ in status"
        in result.output
    )
    merged_status = participants.set_index("participant").loc[active, "status"]
    assert merged_status == "active", "the first export's row is kept"

    conditions = pd.read_csv(out / "conditions.csv").set_index("condition")
    trials = ratings.drop_duplicates("trial").groupby("condition").size()
    assert (
        conditions["completed"] == trials.reindex(conditions.index, fill_value=0)
    ).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [source["folder"] for source in manifest["merged_from"]] == [
        str(export_a.resolve()),
        str(export_b.resolve()),
    ]
    assert (
        manifest["config_hash"]
        == json.loads((export_a / "manifest.json").read_text())["config_hash"]
    )


def test_merge_rejects_other_studies(
    two_servers: tuple[SyntheticStudy, SyntheticStudy, Path, Path],
    run_cli: Callable[..., Result],
    registry: Registry,
    tmp_path: Path,
) -> None:
    _, _, export_a, _ = two_servers
    renamed = make_scale_study(
        tmp_path / "c",
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        registry,
        participants=5,
        items=4,
        name="other",
        target=50,
    )
    changed = make_scale_study(
        tmp_path / "d",
        f"sqlite:///{tmp_path / 'd.sqlite'}",
        registry,
        participants=5,
        items=3,
        target=50,
    )
    _export(run_cli, renamed, tmp_path / "export-c")
    _export(run_cli, changed, tmp_path / "export-d")

    other_name = run_cli(
        "results",
        "merge",
        str(export_a),
        str(tmp_path / "export-c"),
        "--out",
        str(tmp_path / "m1"),
    )
    assert other_name.exit_code == 1
    assert "different studies" in other_name.output
    assert "'scale-study'" in other_name.output
    assert "'other'" in other_name.output
    other_config = run_cli(
        "results",
        "merge",
        str(export_a),
        str(tmp_path / "export-d"),
        "--out",
        str(tmp_path / "m2"),
    )
    assert other_config.exit_code == 1
    assert "different configs or audio" in other_config.output
    assert not (tmp_path / "m1").exists()
    assert not (tmp_path / "m2").exists()

    not_export = run_cli(
        "results",
        "merge",
        str(export_a),
        str(tmp_path / "a"),
        "--out",
        str(tmp_path / "m3"),
    )
    assert not_export.exit_code == 1
    assert "manifest.json is missing" in not_export.output
