"""The participant flow: steps, their order and where a participant stands.

The state lives in the database (``Participant.step``), so a reload renders
the same step and a request for any other step is sent back to it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.models import Experiment, Participant, Reservation, utcnow
from caqe_core.study import Study

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

logger = logging.getLogger(__name__)

DONE = "done"

MAX_IDEMPOTENCY_KEY_LENGTH = 200
"""Characters of a participant's idempotency key: the length of its column."""


def step_order(study: Study) -> list[str]:
    return [*study.config.core.flow.steps, DONE]


def start_participant(
    session_factory: sessionmaker[Session],
    study: Study,
    recruiter: str,
    external_id: str | None = None,
    external_data: dict[str, Any] | None = None,
) -> Participant:
    """Create a participant at the first step and fire ``participant_started``."""
    participant, _ = _insert_participant(
        session_factory, study, recruiter, external_id, external_data, None
    )
    return _announce_start(session_factory, study, participant)


def get_or_start_participant(
    session_factory: sessionmaker[Session],
    study: Study,
    recruiter: str,
    idempotency_key: str,
    external_id: str | None = None,
    external_data: dict[str, Any] | None = None,
    check: Callable[[Session], None] | None = None,
) -> tuple[Participant, bool]:
    """Return the participant started with ``idempotency_key``, starting it if new.

    The second value is True when this call created the participant. The
    key is unique per experiment and recruiter in the database, so of two
    concurrent calls with one key, in one process or several, one inserts
    the participant and the other returns it. Only the call that created
    the participant fires ``participant_started``, and the other call may
    return before those hooks have committed their changes.

    ``check``, when given, decides whether a new participant may start, for
    example a recruiter's limit per person. It runs in the inserting
    transaction while that transaction holds the lock that serialises every
    participant start of the experiment, across processes, so its queries
    see every participant committed before and none can be inserted until
    this call commits. It does not run when a participant with the key
    exists. An exception it raises rolls the transaction back and
    propagates to the caller.

    Raises ValueError for an empty key, which would join unrelated starts,
    and for a key that the database cannot store: longer than
    ``MAX_IDEMPOTENCY_KEY_LENGTH``, or containing NUL or a lone surrogate.
    """
    _check_idempotency_key(idempotency_key)
    existing = _participant_by_key(session_factory, study, recruiter, idempotency_key)
    if existing is not None:
        return existing, False
    # The insert runs under the experiment's lock and looks the key up again
    # there, so a concurrent start with this key returns its participant
    # instead of failing on the unique index.
    participant, created = _insert_participant(
        session_factory,
        study,
        recruiter,
        external_id,
        external_data,
        idempotency_key,
        check,
    )
    if not created:
        logger.info(
            "Participant %s was started with this idempotency key while this "
            "request waited (recruiter %s)",
            participant.id,
            recruiter,
        )
        return participant, False
    return _announce_start(session_factory, study, participant), True


def _check_idempotency_key(idempotency_key: str) -> None:
    # SQLite stores over-long keys and NUL, but PostgreSQL rejects both with a
    # DataError, so the limits are checked here for both databases.
    if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValueError(
            f"idempotency_key must have 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} "
            f"characters, not {len(idempotency_key)}."
        )
    if "\x00" in idempotency_key:
        raise ValueError(
            f"idempotency_key {idempotency_key[:80]!r} contains a NUL character."
        )
    try:
        idempotency_key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"idempotency_key {idempotency_key[:80]!r} contains a lone surrogate, "
            "which has no UTF-8 encoding."
        ) from None


def _participant_by_key(
    session_factory: sessionmaker[Session],
    study: Study,
    recruiter: str,
    idempotency_key: str,
) -> Participant | None:
    with session_factory() as session:
        participant = session.scalar(_select_by_key(study, recruiter, idempotency_key))
        if participant is not None:
            session.expunge(participant)
        return participant


def _select_by_key(
    study: Study, recruiter: str, idempotency_key: str
) -> Select[Participant]:
    return select(Participant).where(
        Participant.experiment_id == study.experiment_id,
        Participant.recruiter == recruiter,
        Participant.idempotency_key == idempotency_key,
    )


def _insert_participant(
    session_factory: sessionmaker[Session],
    study: Study,
    recruiter: str,
    external_id: str | None,
    external_data: dict[str, Any] | None,
    idempotency_key: str | None,
    check: Callable[[Session], None] | None = None,
) -> tuple[Participant, bool]:
    """Insert a participant, or return the one stored with ``idempotency_key``.

    The second value is True when this call inserted the participant.
    """
    with session_factory() as session, session.begin():
        # A no-op update of the experiment row is the lock: PostgreSQL locks
        # the row until commit, and SQLite takes its database write lock. So
        # starts of one experiment run one at a time, also across processes,
        # and the queries below see every participant committed before.
        session.execute(
            update(Experiment)
            .where(Experiment.id == study.experiment_id)
            .values(participant_counter=Experiment.participant_counter)
        )
        if idempotency_key is not None:
            existing = session.scalar(_select_by_key(study, recruiter, idempotency_key))
            if existing is not None:
                session.expunge(existing)
                return existing, False
        if check is not None:
            check(session)
        session.execute(
            update(Experiment)
            .where(Experiment.id == study.experiment_id)
            .values(participant_counter=Experiment.participant_counter + 1)
        )
        sequence = session.scalar(
            select(Experiment.participant_counter).where(
                Experiment.id == study.experiment_id
            )
        )
        participant = Participant(
            experiment_id=study.experiment_id,
            public_id=secrets.token_urlsafe(18),
            sequence=(sequence or 1) - 1,
            recruiter=recruiter,
            external_id=external_id,
            idempotency_key=idempotency_key,
            external_data=external_data or {},
            status="active",
            step=step_order(study)[0],
        )
        session.add(participant)
        session.flush()
        _skip_steps(session, study, participant)
    logger.info(
        "Participant %s started experiment %s (recruiter %s)",
        participant.id,
        study.name,
        recruiter,
    )
    return participant, True


def _announce_start(
    session_factory: sessionmaker[Session], study: Study, participant: Participant
) -> Participant:
    """Fire ``participant_started`` and return the participant as the hooks left it."""
    with session_factory() as session:
        with session.begin():
            stored = session.get(Participant, participant.id)
            assert stored is not None, "the participant was committed above"
            participant = stored
            experiment = session.get(Experiment, study.experiment_id)
            study.registry.hook.participant_started(
                participant=participant, experiment=experiment, session=session
            )
        # Detached only after the commit: an object expunged earlier would
        # silently drop the changes a plugin made to it.
        session.expunge(participant)
    return participant


def _skip_steps(session: Session, study: Study, participant: Participant) -> None:
    """Move past steps the participant need not do (training without a page, returning workers)."""
    order = step_order(study)
    recruiter = study.recruiter
    while participant.step != DONE:
        step = participant.step
        skip = False
        if step == "training" and not study.test_type_has_training():
            skip = True
        flow_step = study.registry.flow_steps.get(step)
        if flow_step is not None and flow_step.one_time:
            skip = recruiter.skip_step(participant, step, session, study.config)
        if not skip:
            return
        participant.step = order[order.index(step) + 1]


def advance(session: Session, study: Study, participant: Participant) -> None:
    """Move the participant to the next step that applies."""
    order = step_order(study)
    participant.step = order[order.index(participant.step) + 1]
    _skip_steps(session, study, participant)
    if participant.step == DONE and participant.status == "active":
        participant.status = "completed"
        participant.finished_at = utcnow()


def claim_step(session: Session, participant: Participant) -> bool:
    """Lock the participant's row for a step change; return False if it already moved.

    Two requests of one participant (a double-click, two tabs) may both act
    on the step they read. The conditional update makes the second one wait
    for the first to commit and then match no row, so each step is
    completed once and ``participant_finished`` fires once.
    """
    result = session.execute(
        update(Participant)
        .where(Participant.id == participant.id, Participant.step == participant.step)
        .values(step=participant.step)
        .execution_options(synchronize_session=False)
    )
    return cast("CursorResult[Any]", result).rowcount == 1


def end_session(participant: Participant, status: str) -> None:
    participant.status = status
    participant.step = DONE
    participant.finished_at = utcnow()


def notify_finished(
    session_factory: sessionmaker[Session], study: Study, participant_id: int
) -> None:
    with session_factory() as session, session.begin():
        participant = session.get(Participant, participant_id)
        experiment = session.get(Experiment, study.experiment_id)
        study.registry.hook.participant_finished(
            participant=participant, experiment=experiment, session=session
        )
    logger.info(
        "Participant %s finished with status %s",
        participant_id,
        participant.status if participant else "?",
    )


def pending_reservations(session: Session, participant_id: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Reservation)
            .where(
                Reservation.participant_id == participant_id,
                Reservation.status == "active",
            )
        )
        or 0
    )
