"""Alembic migrations applied to databases that already contain studies."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from caqe_core.db import alembic_config, head_revision, make_engine, upgrade

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def upgrade_to(engine: Engine, revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def add_experiment(engine: Engine, name: str) -> int:
    with engine.begin() as connection:
        return connection.execute(
            text(
                "INSERT INTO experiments (name, title, test_type, recruiter, "
                "config_hash, config_text, config_path, config_data, created_at, "
                "prepared_at, lock_counter, participant_counter) VALUES (:name, "
                "'Title', 'scale', 'mturk', 'hash', '', 'study.yaml', '{}', :now, "
                ":now, 0, 0) RETURNING id"
            ),
            {"name": name, "now": NOW},
        ).scalar_one()


def add_participant(
    engine: Engine, experiment_id: int, recruiter: str, external_data: str
) -> int:
    with engine.begin() as connection:
        sequence = connection.execute(
            text("SELECT count(*) FROM participants")
        ).scalar_one()
        return connection.execute(
            text(
                "INSERT INTO participants (experiment_id, public_id, sequence, "
                "recruiter, external_id, external_data, status, step, flags, "
                "created_at, updated_at) VALUES (:experiment, :public_id, :sequence, "
                ":recruiter, 'AWORKER', :data, 'active', 'consent', '[]', :now, :now) "
                "RETURNING id"
            ),
            {
                "experiment": experiment_id,
                "public_id": f"participant-{sequence}",
                "sequence": sequence,
                "recruiter": recruiter,
                "data": external_data,
                "now": NOW,
            },
        ).scalar_one()


def idempotency_keys(engine: Engine) -> dict[int, Any]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, idempotency_key FROM participants ORDER BY id")
        ).all()
    return {row.id: row.idempotency_key for row in rows}


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_assignment_ids_become_keys(engine: Engine) -> None:
    upgrade_to(engine, "0001")
    study = add_experiment(engine, "study")
    other = add_experiment(engine, "other")
    first = add_participant(engine, study, "mturk", '{"assignmentId": "ASSIGNONE"}')
    duplicate = add_participant(engine, study, "mturk", '{"assignmentId": "ASSIGNONE"}')
    second = add_participant(engine, study, "mturk", '{"assignmentId": "ASSIGNTWO"}')
    same_id_elsewhere = add_participant(
        engine, other, "mturk", '{"assignmentId": "ASSIGNONE"}'
    )
    without_assignment = add_participant(engine, study, "mturk", "{}")
    lab = add_participant(engine, study, "local_lab", '{"assignmentId": "LABDATA"}')

    upgrade(engine)

    keys = idempotency_keys(engine)
    assert keys[first] == "ASSIGNONE"
    assert keys[duplicate] is None
    assert keys[second] == "ASSIGNTWO"
    assert keys[same_id_elsewhere] == "ASSIGNONE"
    assert keys[without_assignment] is None
    assert keys[lab] is None
    with engine.connect() as connection:
        revision = connection.execute(
            text("SELECT version_num FROM alembic_version")
        ).scalar_one()
    assert revision == head_revision()


def set_key(engine: Engine, participant_id: int, key: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE participants SET idempotency_key = :key WHERE id = :id"),
            {"key": key, "id": participant_id},
        )


def test_idempotency_key_is_unique(engine: Engine) -> None:
    upgrade(engine)
    study = add_experiment(engine, "study")
    other = add_experiment(engine, "other")
    first = add_participant(engine, study, "mturk", "{}")
    second = add_participant(engine, study, "mturk", "{}")
    lab = add_participant(engine, study, "local_lab", "{}")
    elsewhere = add_participant(engine, other, "mturk", "{}")
    set_key(engine, first, "KEY")
    set_key(engine, lab, "KEY")
    set_key(engine, elsewhere, "KEY")

    with pytest.raises(IntegrityError):
        set_key(engine, second, "KEY")

    assert list(idempotency_keys(engine).values()) == ["KEY", None, "KEY", "KEY"]


def test_downgrade_and_upgrade_again(engine: Engine) -> None:
    upgrade(engine)
    study = add_experiment(engine, "study")
    participant = add_participant(engine, study, "mturk", "{}")
    set_key(engine, participant, "KEY")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO screening_results (participant_id, step, attempt, "
                "passed, data, created_at) VALUES (:id, 'screen', 1, true, '{}', :now)"
            ),
            {"id": participant, "now": NOW},
        )
    config = alembic_config(engine.url.render_as_string(hide_password=False))

    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    columns_after_downgrade = {
        column["name"] for column in inspect(engine).get_columns("participants")
    }
    upgrade(engine)

    assert "idempotency_key" not in columns_after_downgrade
    assert idempotency_keys(engine) == {participant: None}
    with engine.connect() as connection:
        results = connection.execute(
            text("SELECT count(*) FROM screening_results")
        ).scalar_one()
    assert results == 1
