"""get_or_start_participant: one participant per idempotency key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from caqe_core.flow import MAX_IDEMPOTENCY_KEY_LENGTH, get_or_start_participant
from caqe_core.models import Participant
from caqe_core.plugins import Registry
from tests.support.server import ServedStudy, build_study


@pytest.fixture
def study_on_database(
    scale_config: Path, database_url: str, registry: Registry, tmp_path: Path
) -> Iterator[ServedStudy]:
    served = build_study(scale_config, database_url, registry, tmp_path / "data")
    try:
        yield served
    finally:
        served.session_factory.kw["bind"].dispose()


def participant_count(served: ServedStudy) -> int:
    with served.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Participant)) or 0


def test_same_key_returns_first(study_on_database: ServedStudy) -> None:
    served = study_on_database

    first, first_created = get_or_start_participant(
        served.session_factory, served.study, "local_lab", "KEY-0123456789"
    )
    again, again_created = get_or_start_participant(
        served.session_factory, served.study, "local_lab", "KEY-0123456789"
    )

    assert first_created is True
    assert again_created is False
    assert again.id == first.id
    assert participant_count(served) == 1


@pytest.mark.parametrize(
    "key",
    ["", "K" * 201, "KEY\x00NUL", "KEY-\udc80"],
    ids=["empty", "longer-than-column", "nul", "lone-surrogate"],
)
def test_unstorable_key_rejected(study_on_database: ServedStudy, key: str) -> None:
    """An empty or unstorable key raises ValueError on SQLite and PostgreSQL alike."""
    served = study_on_database

    with pytest.raises(ValueError, match="idempotency_key"):
        get_or_start_participant(served.session_factory, served.study, "lab", key)

    assert participant_count(served) == 0


def test_key_of_column_length_accepted(study_on_database: ServedStudy) -> None:
    served = study_on_database
    key = "K" * MAX_IDEMPOTENCY_KEY_LENGTH

    participant, created = get_or_start_participant(
        served.session_factory, served.study, "local_lab", key
    )

    column = Participant.__table__.c.idempotency_key
    assert column.type.length == MAX_IDEMPOTENCY_KEY_LENGTH
    assert created is True
    assert participant.idempotency_key == key
