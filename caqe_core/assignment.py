"""Balanced assignment of conditions to participants.

Each participant gets up to ``conditions_per_participant`` conditions: those
with the fewest completed plus reserved trials that are below their target
and that the participant has not done. Every assignment runs in one
transaction that starts by updating the experiment row, which takes the
write lock on SQLite and a row lock on PostgreSQL, so assignments from any
number of processes are serialised.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.models import (
    Condition,
    Experiment,
    Participant,
    Reservation,
    Trial,
    utcnow,
)
from caqe_core.study import Study

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

logger = logging.getLogger(__name__)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def lock_experiment(session: Session, experiment_id: int) -> None:
    """Serialise this transaction against every other assignment of the experiment."""
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id)
        .values(lock_counter=Experiment.lock_counter + 1)
    )


def expire_reservations(session: Session, experiment_id: int, now: dt.datetime) -> int:
    """Mark overdue reservations expired and give their slots back; call under the lock."""
    overdue = session.execute(
        select(Reservation.id, Reservation.condition_id)
        .join(Condition, Condition.id == Reservation.condition_id)
        .where(
            Condition.experiment_id == experiment_id,
            Reservation.status == "active",
            Reservation.expires_at < now,
        )
    ).all()
    if not overdue:
        return 0
    # A trial response does not take the experiment lock, so it may complete
    # a reservation between the select and this update: only rows still
    # active are expired, and only theirs give their slot back.
    expired = (
        session.execute(
            update(Reservation)
            .where(
                Reservation.id.in_([row.id for row in overdue]),
                Reservation.status == "active",
            )
            .values(status="expired")
            .returning(Reservation.condition_id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    change_loads(
        session,
        {condition_id: -count for condition_id, count in Counter(expired).items()},
    )
    return len(expired)


def _renew(session: Session, reservation: Reservation, expires_at: dt.datetime) -> bool:
    """Make an expired reservation active again; return False if it changed meanwhile.

    A late response may complete the reservation while this transaction
    runs, and it must stay completed.
    """
    result = session.execute(
        update(Reservation)
        .where(Reservation.id == reservation.id, Reservation.status == "expired")
        .values(status="active", expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    session.refresh(reservation)
    return cast("CursorResult[Any]", result).rowcount == 1


def change_load(session: Session | Connection, condition_id: int, delta: int) -> None:
    change_loads(session, {condition_id: delta})


def change_loads(session: Session | Connection, deltas: dict[int, int]) -> None:
    """Add ``deltas[condition_id]`` to each condition's load in one batch."""
    if not deltas:
        return
    # Run on the connection, not the session: the ORM would read a list of
    # parameters as a bulk update by primary key.
    connection = session.connection() if isinstance(session, Session) else session
    connection.execute(
        update(Condition)
        .where(Condition.id == bindparam("condition"))
        .values(load=Condition.load + bindparam("delta")),
        [
            {"condition": condition_id, "delta": delta}
            for condition_id, delta in sorted(deltas.items())
        ],
    )


def condition_load(session: Session, experiment_id: int) -> Counter[int]:
    """Completed plus actively reserved trials per condition id."""
    rows = session.execute(
        select(Condition.id, Condition.load).where(
            Condition.experiment_id == experiment_id
        )
    ).all()
    return Counter({condition_id: load for condition_id, load in rows})


class HeldReservation(Protocol):
    """The reservation fields a page reads: an ORM ``Reservation`` or a row of its columns."""

    @property
    def id(self) -> int: ...
    @property
    def public_id(self) -> str: ...
    @property
    def condition_id(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def plan(self) -> dict[str, Any]: ...
    @property
    def expires_at(self) -> dt.datetime: ...
    @property
    def first_served_at(self) -> dt.datetime | None: ...


class Assigned(list[HeldReservation]):
    """Active reservations in page order, plus how many the participant completed."""

    def __init__(self, active: Sequence[HeldReservation], completed: int) -> None:
        super().__init__(active)
        self.completed = completed


def ensure_reservations(
    session_factory: sessionmaker[Session],
    study: Study,
    participant_id: int,
    now: dt.datetime | None = None,
) -> Assigned:
    """Give the participant their conditions; return their active reservations in page order.

    Expired reservations of this participant are renewed when their
    condition still has room, and otherwise replaced by another condition.
    An empty list means the participant has nothing (more) to do.
    """
    now = now or utcnow()
    assignment = study.config.core.assignment
    per_participant = assignment.conditions_per_participant
    lifetime = dt.timedelta(minutes=assignment.reservation_minutes)

    with session_factory() as session:
        own = session.scalars(
            select(Reservation)
            .where(Reservation.participant_id == participant_id)
            .order_by(Reservation.position)
        ).all()
        in_hand = reservations_in_hand(study, own, now)
        if in_hand is not None:
            for reservation in in_hand:
                session.expunge(reservation)
            return in_hand

    with session_factory() as session, session.begin():
        lock_experiment(session, study.experiment_id)
        expired = expire_reservations(session, study.experiment_id, now)
        if expired:
            logger.info("Expired %d reservations of experiment %s", expired, study.name)
        participant = session.get(Participant, participant_id)
        if participant is None:
            raise LookupError(f"participant {participant_id} not found")
        own = session.scalars(
            select(Reservation).where(Reservation.participant_id == participant_id)
        ).all()
        load = condition_load(session, study.experiment_id)
        targets = dict(
            session.execute(
                select(Condition.id, Condition.target).where(
                    Condition.experiment_id == study.experiment_id
                )
            ).all()
        )

        for reservation in own:
            if (
                reservation.status == "expired"
                and load[reservation.condition_id]
                < targets.get(reservation.condition_id, 0)
                and _renew(session, reservation, now + lifetime)
            ):
                load[reservation.condition_id] += 1
                change_load(session, reservation.condition_id, 1)
            elif (
                reservation.status == "active"
                and as_utc(reservation.expires_at) < now + lifetime / 2
            ):
                reservation.expires_at = now + lifetime

        held = sum(
            1 for reservation in own if reservation.status in ("active", "completed")
        )
        missing = per_participant - held
        if missing > 0:
            taken = {reservation.condition_id for reservation in own}
            taken |= _done_in_earlier_sessions(session, participant)
            rng = random.Random(
                f"{study.config.core.experiment.seed}:{participant.public_id}"
            )
            candidates = [
                condition_id
                for condition_id in targets
                if condition_id not in taken
                and load[condition_id] < targets[condition_id]
            ]
            rng.shuffle(candidates)
            candidates.sort(key=lambda condition_id: load[condition_id])
            chosen = candidates[:missing]
            rng.shuffle(chosen)
            next_position = (
                max((reservation.position for reservation in own), default=-1) + 1
            )
            new_reservations = []
            for offset, condition_id in enumerate(chosen):
                view = study.conditions[condition_id]
                plan_rng = random.Random(
                    f"{study.config.core.experiment.seed}:{participant.public_id}:{view.key}"
                )
                plan = study.test_type.plan_trial(view, plan_rng, participant.sequence)
                new_reservations.append(
                    {
                        "public_id": secrets.token_urlsafe(12),
                        "participant_id": participant_id,
                        "condition_id": condition_id,
                        "position": next_position + offset,
                        "status": "active",
                        "plan": plan,
                        "created_at": now,
                        "expires_at": now + lifetime,
                    }
                )
            if new_reservations:
                # One executemany INSERT on the connection: the unit of work
                # would build and track an object per row, which the select
                # below reads again anyway.
                session.connection().execute(insert(Reservation), new_reservations)
            change_loads(session, dict.fromkeys(chosen, 1))
        session.flush()
        mine = session.scalars(
            select(Reservation)
            .where(Reservation.participant_id == participant_id)
            .order_by(Reservation.position)
        ).all()
        active = [reservation for reservation in mine if reservation.status == "active"]
        completed = sum(1 for reservation in mine if reservation.status == "completed")
        for reservation in active:
            session.expunge(reservation)
        return Assigned(active, completed)


def _done_in_earlier_sessions(session: Session, participant: Participant) -> set[int]:
    """Conditions the same person completed in earlier sessions of this experiment.

    A returning MTurk worker or lab code gets a new participant row per
    session; the recruiter's ``external_id`` links them.
    """
    if participant.external_id is None:
        return set()
    earlier = select(Participant.id).where(
        Participant.experiment_id == participant.experiment_id,
        Participant.external_id == participant.external_id,
        Participant.id != participant.id,
    )
    return set(
        session.scalars(
            select(Reservation.condition_id).where(
                Reservation.participant_id.in_(earlier),
                Reservation.status == "completed",
            )
        ).all()
    )


def reservations_in_hand(
    study: Study, own: Sequence[HeldReservation], now: dt.datetime | None = None
) -> Assigned | None:
    """Return the participant's active reservations when nothing needs the experiment lock.

    ``own`` holds all of the participant's reservations in page order. That
    is the common case of a participant in the middle of their pages: all
    their conditions are held, none expired and none about to. Deciding it
    needs no lock, so page loads do not queue behind assignments. None
    means ``ensure_reservations`` must run.
    """
    assignment = study.config.core.assignment
    lifetime = dt.timedelta(minutes=assignment.reservation_minutes)
    renew_before = (now or utcnow()) + lifetime / 2
    held = [
        reservation
        for reservation in own
        if reservation.status in ("active", "completed")
    ]
    active = [reservation for reservation in own if reservation.status == "active"]
    if len(held) < assignment.conditions_per_participant or any(
        reservation.status == "expired" for reservation in own
    ):
        return None
    if any(as_utc(reservation.expires_at) < renew_before for reservation in active):
        return None
    return Assigned(active, len(held) - len(active))


def completed_count(session: Session, participant_id: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Trial)
            .where(Trial.participant_id == participant_id)
        )
        or 0
    )
