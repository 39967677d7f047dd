"""Participant pages: the flow's steps and the trial response API."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from flask import Blueprint, abort, g, redirect, request, url_for
from sqlalchemy import Connection, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from caqe_core.assignment import (
    HeldReservation,
    change_load,
    completed_count,
    ensure_reservations,
    reservations_in_hand,
)
from caqe_core.extension import CompletionPage, ResponseError, StepPage, TrialPage
from caqe_core.flow import DONE, advance, claim_step, end_session, notify_finished
from caqe_core.models import (
    Experiment,
    ListeningEvent,
    Participant,
    Reservation,
    ScreeningResult,
    Trial,
    utcnow,
)
from caqe_core.study import Study
from caqe_core.web import (
    MAX_REQUEST_BYTES,
    ParticipantKey,
    check_csrf,
    close_read_connection,
    csrf_token,
    current_study,
    db_session,
    decode_participant_token,
    json_error,
    participant_token,
    read_connection,
    state,
    write_connection,
)
from caqe_core.web.audio import asset_url, stimulus_urls

logger = logging.getLogger(__name__)

bp = Blueprint("participant", __name__)

MAX_EVENTS = 5000
INVALID_LINK = "This link is not valid. Open the study from the link you were given."
IDEMPOTENCY_KEY_LENGTH = (8, 100)


@bp.get("/")
def index() -> Any:
    recruiter = current_study().recruiter
    return redirect(url_for(recruiter.entry_endpoint))


def participant_url(participant: ParticipantKey) -> str:
    return url_for("participant.page", token=participant_token(participant.public_id))


def _load_participant(token: str) -> Participant | None:
    public_id = decode_participant_token(token)
    if public_id is None:
        return None
    return db_session().scalar(
        select(Participant).where(
            Participant.public_id == public_id,
            Participant.experiment_id == current_study().experiment_id,
        )
    )


def _participant_or_404(token: str) -> Participant:
    participant = _load_participant(token)
    if participant is None:
        abort(404, INVALID_LINK)
    return participant


@dataclass(slots=True)
class _ParticipantRow:
    """The columns of a participant that a trial page or a response reads."""

    id: int
    public_id: str
    step: str


@dataclass(slots=True)
class _ReservationRow:
    """A reservation's columns, read without the ORM (see ``HeldReservation``)."""

    id: int
    public_id: str
    participant_id: int
    condition_id: int
    position: int
    status: str
    plan: dict[str, Any]
    expires_at: dt.datetime
    first_served_at: dt.datetime | None


_PARTICIPANT_COLUMNS = (Participant.id, Participant.public_id, Participant.step)
_RESERVATION_COLUMNS = (
    Reservation.id.label("reservation_id"),
    Reservation.public_id.label("reservation_public_id"),
    Reservation.participant_id.label("reservation_participant_id"),
    Reservation.condition_id,
    Reservation.position,
    Reservation.status,
    Reservation.plan,
    Reservation.expires_at,
    Reservation.first_served_at,
)


def _reservations_of(rows: Iterable[Any]) -> list[_ReservationRow]:
    """Return the reservations of ``rows``, skipping rows of an outer join without one."""
    reservations = (_reservation_of(row) for row in rows)
    return [held for held in reservations if held is not None]


def _reservation_of(row: Any) -> _ReservationRow | None:
    if row.reservation_id is None:
        return None
    return _ReservationRow(
        id=row.reservation_id,
        public_id=row.reservation_public_id,
        participant_id=row.reservation_participant_id,
        condition_id=row.condition_id,
        position=row.position,
        status=row.status,
        plan=row.plan,
        expires_at=row.expires_at,
        first_served_at=row.first_served_at,
    )


# The hot statements of the trial page and the response are built once, with
# bind parameters for the values of each request. Building them per request
# took roughly a quarter of these requests' CPU time in a cProfile run. A
# statement executed as the same object also skips SQLAlchemy's adaptation
# of the cached result columns to a new statement.
_PARTICIPANT_OF_TOKEN = and_(
    Participant.public_id == bindparam("participant_public_id"),
    Participant.experiment_id == bindparam("experiment_id"),
)
_SELECT_PAGE_ROWS = (
    select(*_PARTICIPANT_COLUMNS, *_RESERVATION_COLUMNS)
    .select_from(Participant)
    .outerjoin(Reservation, Reservation.participant_id == Participant.id)
    .where(_PARTICIPANT_OF_TOKEN)
    .order_by(Reservation.position)
)
_SELECT_RESPONSE_ROW = (
    select(
        *_PARTICIPANT_COLUMNS,
        *_RESERVATION_COLUMNS,
        Trial.acknowledgement.label("replayed"),
    )
    .select_from(Participant)
    .outerjoin(Reservation, Reservation.public_id == bindparam("reservation_public_id"))
    .outerjoin(
        Trial,
        and_(
            Trial.participant_id == Participant.id,
            Trial.idempotency_key == bindparam("idempotency_key"),
            # Only a replay for the same trial returns the stored
            # acknowledgement. A key reused for another trial is a conflict.
            Trial.reservation_id == Reservation.id,
        ),
    )
    .where(_PARTICIPANT_OF_TOKEN)
)
_MARK_FIRST_SERVED = (
    update(Reservation)
    .where(
        Reservation.id == bindparam("reservation_id"),
        Reservation.first_served_at.is_(None),
    )
    .values(first_served_at=bindparam("served_at"))
)
_COMPLETE_RESERVATION = (
    update(Reservation)
    .where(
        Reservation.id == bindparam("reservation_id"),
        Reservation.status == bindparam("expected_status"),
    )
    .values(status="completed", completed_at=bindparam("now"))
)
_SELECT_RESERVATIONS = (
    select(*_RESERVATION_COLUMNS)
    .where(Reservation.participant_id == bindparam("participant_id"))
    .order_by(Reservation.position)
)
_INSERT_TRIAL = insert(Trial).returning(Trial.id)
_INSERT_EVENTS = insert(ListeningEvent)


def _participant_and_reservations(
    token: str,
) -> tuple[_ParticipantRow, list[_ReservationRow]] | None:
    """Read the participant and all their reservations, in page order, in one query.

    The rows come from the autocommit ``read_connection()`` through
    SQLAlchemy Core: a trial page is served from them without a transaction
    and without building ORM objects.
    """
    public_id = decode_participant_token(token)
    if public_id is None:
        return None
    rows = (
        read_connection()
        .execute(
            _SELECT_PAGE_ROWS,
            {
                "participant_public_id": public_id,
                "experiment_id": current_study().experiment_id,
            },
        )
        .all()
    )
    if not rows:
        return None
    first = rows[0]
    participant = _ParticipantRow(
        id=first.id, public_id=first.public_id, step=first.step
    )
    return participant, _reservations_of(rows)


@bp.get("/p/<token>/")
def page(token: str) -> Any:
    found = _participant_and_reservations(token)
    if found is None:
        abort(404, INVALID_LINK)
    row, own = found
    if row.step == "trials":
        return _render_trial(token, row, own)
    # Every other step may change the participant: load it into the
    # request's transaction.
    participant = _participant_or_404(token)
    study = current_study()
    if participant.step == DONE:
        return _render_completion(participant)
    if participant.step == "trials":
        return _render_trial(token, participant, None)
    if participant.step == "training":
        return _render_training(token, participant)
    step = study.registry.flow_steps[participant.step]
    html = step.render(_step_page(token, participant))
    # A step may register audio (StepPage.audio_url) while it renders.
    db_session().commit()
    return html


@bp.post("/p/<token>/step/<step_name>")
def submit_step(token: str, step_name: str) -> Any:
    participant = _participant_or_404(token)
    if not check_csrf(participant.public_id, request.form.get("csrf_token")):
        abort(
            403,
            "The form has expired or was not sent by this study's page. Reload the page.",
        )
    if step_name != participant.step or step_name == DONE:
        # A form from an earlier or later step (back button, second tab), or
        # one posted after the end: show the current step.
        return redirect(participant_url(participant), code=303)
    study = current_study()
    session = db_session()
    if not claim_step(session, participant):
        session.rollback()
        return redirect(participant_url(participant), code=303)
    if step_name == "training":
        advance(session, study, participant)
        session.commit()
        return redirect(participant_url(participant), code=303)
    if step_name == "trials":
        session.rollback()
        return redirect(participant_url(participant), code=303)

    flow_step = study.registry.flow_steps[step_name]
    step_page = _step_page(token, participant)
    outcome = flow_step.submit(step_page, request.form)
    if outcome.passed is not None or (outcome.data and flow_step.name != "pre_survey"):
        session.add(
            ScreeningResult(
                participant_id=participant.id,
                step=step_name,
                attempt=step_page.attempt + 1,
                passed=outcome.passed,
                data=outcome.data,
            )
        )
    if outcome.flag and outcome.flag not in participant.flags:
        participant.flags = [*participant.flags, outcome.flag]
    if not outcome.done:
        session.commit()
        html = flow_step.render(
            _step_page(token, participant), request.form, outcome.errors
        )
        return html, 422
    if outcome.end_session:
        end_session(participant, "screened_out")
        logger.info("Participant %s screened out at step %s", participant.id, step_name)
    else:
        advance(session, study, participant)
    return _commit_and_continue(session, study, participant)


def _step_page(token: str, participant: Participant) -> StepPage:
    study = current_study()
    session = db_session()
    attempts = session.scalars(
        select(ScreeningResult.id).where(
            ScreeningResult.participant_id == participant.id,
            ScreeningResult.step == participant.step,
        )
    ).all()
    return StepPage(
        participant=participant,
        section=study.config.section(participant.step),
        config=study.config,
        submit_url=url_for(
            "participant.submit_step", token=token, step_name=participant.step
        ),
        csrf_token=csrf_token(participant.public_id),
        attempt=len(attempts),
        audio_url=lambda path, role="screening": asset_url(
            session, participant, path, role
        ),
        session=session,
    )


def _asset_url_for(participant: ParticipantKey) -> Any:
    # The session opens only when a page registers audio, which trial pages
    # rarely do.
    return lambda path, role="asset": asset_url(db_session(), participant, path, role)


def _commit_open_session() -> None:
    """Commit the request's ORM session if the request opened one."""
    session = g.get("caqe_session")
    if session is not None:
        session.commit()


def _signal_urls(
    participant: ParticipantKey, condition: Any, plan: dict[str, Any]
) -> dict[str, str]:
    signals = plan["signals"]
    urls = stimulus_urls(
        participant.id,
        [condition.stimuli[signal["stimulus"]].id for signal in signals],
    )
    return {signal["id"]: url for signal, url in zip(signals, urls, strict=True)}


def _trial_page(
    token: str,
    participant: ParticipantKey,
    reservation: HeldReservation,
    position: int,
    total: int,
) -> TrialPage:
    study = current_study()
    condition = study.conditions[reservation.condition_id]
    return TrialPage(
        condition=condition,
        plan=reservation.plan,
        signal_urls=_signal_urls(participant, condition, reservation.plan),
        submit_url=url_for(
            "participant.submit_trial",
            token=token,
            reservation_id=reservation.public_id,
        ),
        csrf_token=csrf_token(participant.public_id),
        position=position,
        total=total,
        section=study.config.test_type_section,
        study_title=study.config.core.experiment.title,
        audio_url=_asset_url_for(participant),
    )


def _render_trial(
    token: str, participant: ParticipantKey, own: Sequence[HeldReservation] | None
) -> Any:
    """Render the participant's next trial page.

    ``own`` is the list of the participant's reservations read with it, or
    None to read them here. When they are all in hand, the page needs no
    lock and no transaction: one read, and one update the first time a page
    is served.
    """
    study = current_study()
    if own is None:
        rows = read_connection().execute(
            _SELECT_RESERVATIONS, {"participant_id": participant.id}
        )
        own = _reservations_of(rows)
    reservations = reservations_in_hand(study, own)
    if reservations is None:
        # Hand both connections back to the pool while assignment uses one of
        # its own; holding them could exhaust the pool.
        close_read_connection()
        _commit_open_session()
        reservations = ensure_reservations(
            state().session_factory, study, participant.id
        )
    if not reservations:
        return _finish_trials(participant)
    reservation = reservations[0]
    if reservation.first_served_at is None:
        # One statement, committed on its own: a lost race only leaves the
        # first time of the two.
        read_connection().execute(
            _MARK_FIRST_SERVED,
            {"reservation_id": reservation.id, "served_at": utcnow()},
        )
    done = reservations.completed
    page_data = _trial_page(
        token, participant, reservation, done, done + len(reservations)
    )
    html = study.test_type.render_trial(page_data)
    # The page may have registered extra audio through page_data.audio_url.
    _commit_open_session()
    return html


def _finish_trials(participant: ParticipantKey) -> Any:
    """Move a participant with no trials left past the trials step."""
    study = current_study()
    session = db_session()
    stored = session.get(Participant, participant.id)
    if stored is None or stored.step != "trials" or not claim_step(session, stored):
        session.rollback()
        return redirect(participant_url(participant), code=303)
    if completed_count(session, stored.id) == 0:
        end_session(stored, "no_work")
        logger.info("Participant %s found no work left in %s", stored.id, study.name)
    else:
        advance(session, study, stored)
    return _commit_and_continue(session, study, stored)


def _commit_and_continue(
    session: Session, study: Study, participant: Participant
) -> Any:
    """Commit the participant's new step and redirect to it.

    A participant who reached the end is announced to the plugins after the
    commit.
    """
    finished = participant.step == DONE
    session.commit()
    if finished:
        notify_finished(state().session_factory, study, participant.id)
    return redirect(participant_url(participant), code=303)


def _render_training(token: str, participant: Participant) -> Any:
    study = current_study()
    condition = next(iter(study.conditions.values()))
    rng = random.Random(
        f"{study.config.core.experiment.seed}:{participant.public_id}:training"
    )
    plan = study.test_type.plan_trial(condition, rng, participant.sequence)
    page_data = TrialPage(
        condition=condition,
        plan=plan,
        signal_urls=_signal_urls(participant, condition, plan),
        submit_url="",
        csrf_token=csrf_token(participant.public_id),
        position=0,
        total=0,
        section=study.config.test_type_section,
        study_title=study.config.core.experiment.title,
        training=True,
        continue_url=url_for(
            "participant.submit_step", token=token, step_name="training"
        ),
        audio_url=_asset_url_for(participant),
    )
    html = study.test_type.render_training(page_data)
    # The page may have registered extra audio through page_data.audio_url.
    db_session().commit()
    return html


def _render_completion(participant: Participant) -> Any:
    study = current_study()
    section = study.config.section(study.config.core.recruiter)
    reason = None if participant.status == "completed" else participant.status
    return study.recruiter.render_completion(
        CompletionPage(
            participant=participant,
            section=section,
            config=study.config,
            completed=participant.status == "completed",
            reason=reason,
            session=db_session(),
        )
    )


@bp.post("/api/p/<token>/trials/<reservation_id>")
def submit_trial(token: str, reservation_id: str) -> Any:
    """Store one trial response; replaying the same idempotency key returns the same acknowledgement."""
    public_id = decode_participant_token(token)
    if public_id is None:
        return json_error(404, "Unknown participant token.", "token")
    # The CSRF token derives from the participant's id alone, so a forged or
    # stale request is turned away before it costs a database round trip.
    if not check_csrf(public_id, request.headers.get("X-CAQE-CSRF")):
        return json_error(
            403,
            "Missing or invalid X-CAQE-CSRF header. Reload the page.",
            "X-CAQE-CSRF",
        )
    body = _json_object_body()
    if not isinstance(body, dict):
        return body
    key = body.get("idempotency_key")
    low, high = IDEMPOTENCY_KEY_LENGTH
    if not isinstance(key, str) or not low <= len(key) <= high:
        return json_error(
            400,
            f"idempotency_key must be a string of {low} to {high} characters.",
            "idempotency_key",
        )

    if "\x00" in reservation_id:
        # No trial id contains NUL, and PostgreSQL rejects it in a query.
        return json_error(404, f"Unknown trial {reservation_id!r}.", "trial")

    connection = write_connection()
    # The participant, the trial named in the URL and an earlier submission
    # with this key, in one round trip.
    row = connection.execute(
        _SELECT_RESPONSE_ROW,
        {
            "participant_public_id": public_id,
            "experiment_id": current_study().experiment_id,
            "reservation_public_id": reservation_id,
            "idempotency_key": key,
        },
    ).first()
    if row is None:
        return json_error(404, "Unknown participant token.", "token")
    if row.replayed is not None:
        return row.replayed
    participant = _ParticipantRow(id=row.id, public_id=row.public_id, step=row.step)
    reservation = _reservation_of(row)
    if reservation is None:
        return json_error(404, f"Unknown trial {reservation_id!r}.", "trial")
    if reservation.participant_id != participant.id:
        logger.warning(
            "Participant %s posted a response for reservation %s of another participant",
            participant.id,
            reservation.id,
        )
        return json_error(403, "This trial is not assigned to you.", "trial")
    if reservation.status == "completed":
        # A replay that raced the first submission finds the trial only now.
        answered = connection.execute(
            select(Trial.idempotency_key, Trial.acknowledgement).where(
                Trial.reservation_id == reservation.id
            )
        ).first()
        if answered is not None and answered.idempotency_key == key:
            return answered.acknowledgement
        return json_error(
            409,
            "This trial was already answered with another idempotency_key.",
            "trial",
        )

    study = current_study()
    page_data = _trial_page(token, participant, reservation, 0, 1)
    try:
        cleaned = study.test_type.validate_response(page_data, body.get("response"))
        events = _validate_events(
            body.get("events", []), reservation.plan, study.test_type.event_types
        )
        time_on_page = _validate_time(body.get("time_on_page_ms"))
    except ResponseError as error:
        logger.info(
            "Rejected response of participant %s for reservation %s: %s",
            participant.id,
            reservation.id,
            error,
        )
        return json_error(422, error.message, error.field)

    acknowledgement = {
        "stored": True,
        "trial": reservation.public_id,
        "next": url_for("participant.page", token=token),
    }
    signals = {
        signal["id"]: signal["stimulus"] for signal in reservation.plan["signals"]
    }
    try:
        trial_id = connection.execute(
            _INSERT_TRIAL,
            {
                "reservation_id": reservation.id,
                "participant_id": participant.id,
                "condition_id": reservation.condition_id,
                "idempotency_key": key,
                "response": cleaned,
                "acknowledgement": acknowledgement,
                "time_on_page_ms": time_on_page,
            },
        ).scalar_one()
        _complete_reservation(connection, reservation)
        if events:
            connection.execute(
                _INSERT_EVENTS,
                [
                    {
                        "trial_id": trial_id,
                        "participant_id": participant.id,
                        "sequence": sequence,
                        "type": event["type"],
                        "time_ms": event["time"],
                        "position": event.get("position"),
                        "signal": event.get("to") or event.get("signal"),
                        "stimulus_key": signals.get(
                            event.get("to") or event.get("signal")
                        ),
                        "data": {
                            name: value
                            for name, value in event.items()
                            if name not in ("type", "time", "position")
                        },
                    }
                    for sequence, event in enumerate(events)
                ],
            )
        connection.commit()
    except IntegrityError:
        # A concurrent replay of the same submission won the race, so return its acknowledgement.
        connection.rollback()
        existing = connection.execute(
            select(Trial.reservation_id, Trial.acknowledgement).where(
                Trial.participant_id == participant.id, Trial.idempotency_key == key
            )
        ).first()
        if existing is not None and existing.reservation_id == reservation.id:
            return existing.acknowledgement
        if existing is not None:
            return json_error(
                409,
                "This idempotency_key was already used for another trial. Send "
                "a new key with each response.",
                "idempotency_key",
            )
        return json_error(409, "This trial was already answered.", "trial")
    logger.info(
        "Stored trial %s of participant %s (condition %s)",
        trial_id,
        participant.id,
        reservation.condition_id,
    )
    if study.registry.hook.trial_stored.get_hookimpls():
        session = db_session()
        trial = session.get(Trial, trial_id)
        stored = session.get(Participant, participant.id)
        experiment = session.get(Experiment, study.experiment_id)
        study.registry.hook.trial_stored(
            trial=trial, participant=stored, experiment=experiment, session=session
        )
        session.commit()
    return acknowledgement


def _complete_reservation(connection: Connection, reservation: HeldReservation) -> None:
    """Mark the reservation completed, whatever status a concurrent request gave it.

    An assignment may expire the reservation, or its participant's next page
    load renew it, while this response is validated. The update matches the
    status it read, so the condition's load is changed exactly once.
    """
    # The status read with the reservation is nearly always still current,
    # so the first try needs no read of its own.
    status: str | None = reservation.status
    for _ in range(5):
        if status is None:
            status = connection.scalar(
                select(Reservation.status).where(Reservation.id == reservation.id)
            )
        result = connection.execute(
            _COMPLETE_RESERVATION,
            {
                "reservation_id": reservation.id,
                "expected_status": status,
                "now": utcnow(),
            },
        )
        if result.rowcount != 1:
            status = None
            continue
        if status == "expired":
            # The response is kept even though its slot was given back, so the
            # condition may end one trial above its target.
            logger.info(
                "Accepting a late response for expired reservation %s", reservation.id
            )
            change_load(connection, reservation.condition_id, 1)
        return
    raise RuntimeError(
        f"reservation {reservation.id} kept changing while it was completed"
    )


def _json_object_body() -> Any:
    """Return the request's JSON object, or the JSON error response to send instead."""
    if not request.is_json:
        return json_error(
            415,
            f"Send the response as application/json, not {request.mimetype or 'no type'!r}.",
            "Content-Type",
        )
    data = request.get_data(cache=True)
    if request.content_length is None and len(data) >= MAX_REQUEST_BYTES:
        # Werkzeug cuts a chunked body off at the limit instead of rejecting it.
        return json_error(
            413, f"The request body is larger than {MAX_REQUEST_BYTES} bytes.", "body"
        )
    try:
        # Only UTF-8 without a byte order mark is accepted, which is what the
        # trial page's fetch() sends. json.loads() would also read UTF-16 and
        # UTF-32 from bytes, so the body is decoded here, strictly.
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return json_error(
            400,
            f"The request body is not valid UTF-8 (byte {error.start}): "
            "send JSON encoded as UTF-8.",
            "body",
        )
    if text.startswith("\ufeff"):
        return json_error(
            400,
            "The request body starts with a byte order mark: send UTF-8 JSON without one.",
            "body",
        )
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        message = (
            "nested too deeply" if isinstance(error, RecursionError) else str(error)
        )
        return json_error(
            400, f"The request body is not valid JSON: {message}.", "body"
        )
    if not isinstance(body, dict):
        return json_error(400, "The request body must be a JSON object.", "body")
    invalid = _find_invalid_text(body)
    if invalid is not None:
        return json_error(
            400,
            f"{invalid} contains a NUL character or an unpaired UTF-16 surrogate "
            "(such as \\udc80), which cannot be stored. Send valid Unicode text.",
            invalid,
        )
    return body


def _find_invalid_text(body: dict[str, Any]) -> str | None:
    """Return the field of the first string or key that cannot be stored, or None.

    JSON escapes can spell a lone surrogate ("\\udc80"), which has no UTF-8
    encoding, so the database insert or a later export fails on it.
    PostgreSQL text and JSON columns also reject the NUL character. The walk
    uses its own stack because the body may be nested as deep as the JSON
    parser allows.
    """
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, str):
            if not _is_storable_text(value):
                return field
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                if not _is_storable_text(key):
                    return field or "body"
                children.append((f"{field}.{key}" if field else key, item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(
                (f"{field}[{index}]", item)
                for index, item in reversed(list(enumerate(value)))
            )
    return None


def _is_storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    # Python's json module accepts NaN and Infinity, which JSON does not
    # allow and PostgreSQL's JSON columns reject.
    raise ValueError(f"{name} is not a JSON number")


def _validate_events(
    events: Any, plan: dict[str, Any], allowed: frozenset[str]
) -> list[dict[str, Any]]:
    if not isinstance(events, list):
        raise ResponseError("events", "must be a list of event objects.")
    if len(events) > MAX_EVENTS:
        raise ResponseError(
            "events", f"at most {MAX_EVENTS} events are accepted per trial."
        )
    labels = [signal["id"] for signal in plan["signals"]]
    cleaned = []
    for index, event in enumerate(events):
        where = f"events[{index}]"
        if not isinstance(event, dict):
            raise ResponseError(where, "must be an object.")
        if not isinstance(event.get("type"), str) or event["type"] not in allowed:
            raise ResponseError(
                f"{where}.type", f"must be one of {', '.join(sorted(allowed))}."
            )
        time = event.get("time")
        if not _is_number(time) or time < 0:
            raise ResponseError(
                f"{where}.time", "must be a non-negative number of milliseconds."
            )
        position = event.get("position")
        if position is not None and (not _is_number(position) or position < 0):
            raise ResponseError(
                f"{where}.position", "must be a non-negative number of seconds."
            )
        for field in ("from", "to", "signal"):
            # A list or object never equals a label, so it is rejected here too.
            if event.get(field) is not None and event.get(field) not in labels:
                raise ResponseError(
                    f"{where}.{field}", "names no signal of this trial."
                )
        extra = {key: value for key, value in event.items() if _is_scalar(value)}
        if len(extra) > 20:
            raise ResponseError(where, "has too many fields.")
        cleaned.append(extra)
    return cleaned


def _validate_time(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value < 0:
        raise ResponseError("time_on_page_ms", "must be a non-negative number.")
    return float(value)


def _is_number(value: Any) -> TypeGuard[int | float]:
    """Return whether ``value`` is a JSON number that converts to a finite float.

    JSON allows integers of any size, and Python parses them as int. One
    beyond float range (such as 10**400) is rejected here, because
    ``float()`` and ``math.isfinite()`` raise OverflowError on it.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            return False
        return True
    return isinstance(value, float) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool)) or _is_number(value)


@bp.get("/api/p/<token>/state")
def participant_state(token: str) -> Any:
    participant = _load_participant(token)
    if participant is None:
        return json_error(404, "Unknown participant token.", "token")
    return {
        "step": participant.step,
        "status": participant.status,
        "next": url_for("participant.page", token=token),
    }
