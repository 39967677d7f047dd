"""Progress of a study: per-condition counts, reservations and participants."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from caqe_core.assignment import as_utc
from caqe_core.models import Condition, Participant, Reservation, Trial, utcnow
from caqe_core.study import Study


def progress_summary(session: Session, study: Study) -> dict[str, Any]:
    """Per-condition completed and reserved trials, and participants by status."""
    now = utcnow()
    rows = session.execute(
        select(
            Condition.id,
            Condition.key,
            Condition.item,
            Condition.scale,
            Condition.target,
        )
        .where(Condition.experiment_id == study.experiment_id)
        .order_by(Condition.position)
    ).all()
    ids = [row.id for row in rows]
    completed = dict(
        session.execute(
            select(Trial.condition_id, func.count())
            .where(Trial.condition_id.in_(ids))
            .group_by(Trial.condition_id)
        ).all()
    )
    reserved: dict[int, int] = {}
    for condition_id, expires_at in session.execute(
        select(Reservation.condition_id, Reservation.expires_at).where(
            Reservation.status == "active", Reservation.condition_id.in_(ids)
        )
    ):
        if as_utc(expires_at) >= now:
            reserved[condition_id] = reserved.get(condition_id, 0) + 1
    statuses = dict(
        session.execute(
            select(Participant.status, func.count())
            .where(Participant.experiment_id == study.experiment_id)
            .group_by(Participant.status)
        ).all()
    )
    conditions = [
        {
            "key": row.key,
            "item": row.item,
            "scale": row.scale,
            "target": row.target,
            "completed": completed.get(row.id, 0),
            "reserved": reserved.get(row.id, 0),
        }
        for row in rows
    ]
    return {
        "experiment": study.name,
        "conditions": conditions,
        "participants": statuses,
        "completed_trials": sum(completed.values()),
        "target_trials": sum(row.target for row in rows),
        "active_reservations": sum(reserved.values()),
    }
