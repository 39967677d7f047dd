"""The worker's side: the ExternalQuestion entry page, returning workers and the end page.

MTurk shows the study in an iframe at ``https://SERVER_ADDRESS/mturk/`` and
adds ``assignmentId``, ``hitId``, ``workerId`` and ``turkSubmitTo`` to the
URL. A preview (``assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE``) only describes
the study. An accepted assignment starts a participant and redirects to the
core's participant pages, whose URLs carry a signed token: cookies in MTurk's
iframe are third-party cookies, which browsers may block.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import logging
import os
import re
from typing import Any

import numpy as np
import soundfile
from caqe_mturk.client import PRODUCTION_SUBMIT_ORIGIN, SANDBOX_SUBMIT_ORIGIN
from caqe_mturk.config import MTurkConfig, normalize_origin
from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core import CompletionPage, Recruiter
from caqe_core.config import StudyConfig
from caqe_core.flow import get_or_start_participant
from caqe_core.markdown import render_markdown
from caqe_core.models import (
    Participant,
    RecruitmentJob,
    ScreeningResult,
    SurveyResponse,
    utcnow,
)
from caqe_core.web import current_study, db_session, participant_token, state

logger = logging.getLogger(__name__)

NAME = "mturk"
ENTRY_PATH = "/mturk/"
"""Path of the ExternalQuestion page; create-hits points HITs at it."""
PREVIEW_ASSIGNMENT_ID = "ASSIGNMENT_ID_NOT_AVAILABLE"
EXTERNAL_SUBMIT_PATH = "/mturk/externalSubmit"
SUBMIT_ORIGINS_ENV = "CAQE_MTURK_SUBMIT_ORIGINS"
"""Comma-separated extra ``turkSubmitTo`` origins, for tests with a local fake."""
MTURK_SUBMIT_ORIGINS = frozenset({PRODUCTION_SUBMIT_ORIGIN, SANDBOX_SUBMIT_ORIGIN})

# Matched with fullmatch(): with match(), "$" also accepts a trailing newline,
# so "ID\n" would be a second idempotency key for the assignment "ID".
_WORKER_ID = re.compile(r"A[A-Z0-9]{1,63}")
_ENTITY_ID = re.compile(r"[A-Z0-9]{1,64}")
# Surveys store SurveyResponse rows; every other one-time step stores a
# passed ScreeningResult.
_SURVEY_STEPS = {"pre_survey": "pre", "post_survey": "post"}
_STEPS_WITHOUT_EXPIRY = {"consent", *_SURVEY_STEPS}

AUDIO_CHECK_FREQUENCY_HZ = 1000.0
AUDIO_CHECK_SECONDS = 2.0
AUDIO_CHECK_LEVEL_DBFS = -20.0
AUDIO_CHECK_RATE = 44100
AUDIO_CHECK_FADE_SECONDS = 0.02

bp = Blueprint("mturk", __name__, url_prefix="/mturk", template_folder="templates")


def _section(config: StudyConfig) -> MTurkConfig:
    return config.section(NAME) or MTurkConfig()


def allowed_submit_origins(section: MTurkConfig) -> set[str]:
    """Return the ``turkSubmitTo`` origins the end page may post to."""
    origins = set(MTURK_SUBMIT_ORIGINS) | set(section.allowed_submit_origins)
    for value in os.environ.get(SUBMIT_ORIGINS_ENV, "").split(","):
        if value.strip():
            try:
                origins.add(normalize_origin(value))
            except ValueError as error:
                logger.error(
                    "Ignoring an invalid origin in %s: %s", SUBMIT_ORIGINS_ENV, error
                )
    return origins


def external_submit_url(turk_submit_to: str, section: MTurkConfig) -> str | None:
    """Return ``{turkSubmitTo}/mturk/externalSubmit``, or None for an origin not allowed."""
    try:
        origin = normalize_origin(turk_submit_to)
    except ValueError:
        return None
    if origin not in allowed_submit_origins(section):
        return None
    return origin + EXTERNAL_SUBMIT_PATH


# --- entry --------------------------------------------------------------------


@bp.get("/")
def entry() -> Any:
    """Show the HIT preview, or start or resume the session of an accepted assignment."""
    study = current_study()
    if study.config.core.recruiter != NAME:
        abort(404, "This study does not recruit on Mechanical Turk.")
    section = _section(study.config)
    assignment_id = request.args.get("assignmentId", "")
    hit_id = request.args.get("hitId", "")
    worker_id = request.args.get("workerId", "")
    turk_submit_to = request.args.get("turkSubmitTo", "")
    session = db_session()

    if not assignment_id or assignment_id == PREVIEW_ASSIGNMENT_ID:
        if worker_id and _WORKER_ID.fullmatch(worker_id):
            reason = took_part(session, study.experiment_id, worker_id, section)
            if reason is not None:
                return _took_part_page(reason, section)
        return _preview(section)

    problem = _invalid_arguments(
        assignment_id, hit_id, worker_id, turk_submit_to, section
    )
    if problem is not None:
        logger.warning("Rejected an MTurk entry: %s", problem)
        return _message("This link is not valid", [problem], 400)
    if not _is_study_hit(session, study.experiment_id, hit_id):
        logger.warning(
            "Rejected an MTurk entry for HIT %s, not one of this study", hit_id
        )
        return _message(
            "This HIT is not part of this study",
            ["Please return the HIT. The study cannot find it among its HITs."],
            400,
        )

    # The assignment id is the participant's idempotency key, which the
    # database keeps unique, so concurrent first loads of the entry page (a
    # reload, two gunicorn workers) start one participant.
    participant = _participant_for_assignment(
        session, study.experiment_id, assignment_id
    )
    created = False
    if participant is None:
        # The limit is checked under the insert's lock, after this assignment's
        # participant is looked up again. A check here could count that
        # participant if another request of this assignment just stored it.
        try:
            participant, created = get_or_start_participant(
                state().session_factory,
                study,
                NAME,
                idempotency_key=assignment_id,
                external_id=worker_id,
                external_data={
                    "assignmentId": assignment_id,
                    "hitId": hit_id,
                    "turkSubmitTo": normalize_origin(turk_submit_to),
                },
                check=functools.partial(
                    _check_worker_limit, study.experiment_id, worker_id, section
                ),
            )
        except WorkerLimitReachedError as error:
            logger.info(
                "Worker %s may not start assignment %s: %s",
                worker_id,
                assignment_id,
                error.reason,
            )
            return _took_part_page(error.reason, section)
    if participant.external_id != worker_id:
        logger.warning(
            "Assignment %s arrived with worker %s, but participant %s is worker %s",
            assignment_id,
            worker_id,
            participant.id,
            participant.external_id,
        )
        abort(409, "This assignment belongs to another worker.")
    if created:
        logger.info(
            "Worker %s started assignment %s of HIT %s as participant %s",
            worker_id,
            assignment_id,
            hit_id,
            participant.id,
        )
    else:
        logger.info("Worker %s resumed assignment %s", worker_id, assignment_id)
    token = participant_token(participant.public_id)
    return redirect(url_for("participant.page", token=token))


def _invalid_arguments(
    assignment_id: str,
    hit_id: str,
    worker_id: str,
    turk_submit_to: str,
    section: MTurkConfig,
) -> str | None:
    if not _ENTITY_ID.fullmatch(assignment_id):
        return f"assignmentId {assignment_id[:80]!r} is not an MTurk assignment ID."
    if not _ENTITY_ID.fullmatch(hit_id):
        return f"hitId {hit_id[:80]!r} is not an MTurk HIT ID."
    if not _WORKER_ID.fullmatch(worker_id):
        return f"workerId {worker_id[:80]!r} is not an MTurk worker ID."
    if external_submit_url(turk_submit_to, section) is None:
        return (
            f"turkSubmitTo {turk_submit_to[:200]!r} is not MTurk's submit address. "
            "Open the study from the HIT on MTurk."
        )
    return None


def _is_study_hit(session: Session, experiment_id: int, hit_id: str) -> bool:
    return (
        session.scalar(
            select(RecruitmentJob.id).where(
                RecruitmentJob.experiment_id == experiment_id,
                RecruitmentJob.recruiter == NAME,
                RecruitmentJob.external_id == hit_id,
            )
        )
        is not None
    )


def _participant_for_assignment(
    session: Session, experiment_id: int, assignment_id: str
) -> Participant | None:
    return session.scalar(
        select(Participant).where(
            Participant.experiment_id == experiment_id,
            Participant.recruiter == NAME,
            Participant.idempotency_key == assignment_id,
        )
    )


class WorkerLimitReachedError(Exception):
    """A worker may not start another assignment; ``reason`` is from ``took_part``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the worker may not start another assignment: {reason}")
        self.reason = reason


def _check_worker_limit(
    experiment_id: int, worker_id: str, section: MTurkConfig, session: Session
) -> None:
    """Raise WorkerLimitReachedError if the worker may not start another assignment.

    ``get_or_start_participant`` calls this while participant starts are
    locked, so two assignments of one worker that arrive at once, in one
    process or several, cannot both pass it.
    """
    reason = took_part(session, experiment_id, worker_id, section)
    if reason is not None:
        raise WorkerLimitReachedError(reason)


def took_part(
    session: Session, experiment_id: int, worker_id: str, section: MTurkConfig
) -> str | None:
    """Return why a worker may not start another assignment, or None.

    ``completed`` when the worker has ``max_assignments_per_worker`` sessions
    that are completed or still active. An active session counts until its
    assignment expires, ``assignment_duration_seconds`` after it started,
    because until then the worker may still finish and submit it.
    ``screened_out`` when a screening step ended a session of theirs within
    the last ``screening_validity_hours``.
    """
    rows = _worker_participants(session, experiment_id, worker_id)
    now = utcnow()
    open_since = now - dt.timedelta(seconds=section.assignment_duration_seconds)
    counted_sessions = sum(
        1
        for row in rows
        if row.status == "completed"
        or (row.status == "active" and _as_utc(row.created_at) >= open_since)
    )
    if counted_sessions >= section.max_assignments_per_worker:
        return "completed"
    since = now - dt.timedelta(hours=section.screening_validity_hours)
    for row in rows:
        finished = row.finished_at
        if row.status == "screened_out" and finished and _as_utc(finished) >= since:
            return "screened_out"
    return None


def _worker_participants(
    session: Session, experiment_id: int, worker_id: str, exclude: int | None = None
) -> list[Participant]:
    query = select(Participant).where(
        Participant.experiment_id == experiment_id,
        Participant.recruiter == NAME,
        Participant.external_id == worker_id,
    )
    if exclude is not None:
        query = query.where(Participant.id != exclude)
    return list(session.scalars(query.order_by(Participant.id)).all())


def _as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes; CAQE stores every time in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# --- pages --------------------------------------------------------------------


def _preview(section: MTurkConfig) -> str:
    study = current_study()
    return render_template(
        "caqe_mturk/preview.html",
        description=Markup(render_markdown(study.config.core.experiment.description)),
        section=section,
        minutes=round(section.assignment_duration_seconds / 60),
        audio_url=url_for("mturk.audio_check"),
    )


def _took_part_page(reason: str, section: MTurkConfig) -> tuple[str, int]:
    if reason == "screened_out":
        hours = section.screening_validity_hours
        paragraphs = [
            (
                "A listening check ended one of your recent sessions, so you cannot "
                f"take part again for {hours:g} hours after it."
            ),
            "Please return this HIT. Thank you for your interest.",
        ]
    else:
        paragraphs = [
            (
                "Thank you, you have already taken part in this study as often as "
                "it allows."
            ),
            "Please return this HIT so that other workers can take it.",
        ]
    return _message("You already took part", paragraphs, 403)


def _message(heading: str, paragraphs: list[str], status: int) -> tuple[str, int]:
    html = render_template("caqe/message.html", heading=heading, paragraphs=paragraphs)
    return html, status


@functools.cache
def audio_check_wav() -> bytes:
    """Return a short 1 kHz tone at -20 dBFS with 20 ms Hann fades, as WAV."""
    frames = int(AUDIO_CHECK_SECONDS * AUDIO_CHECK_RATE)
    time = np.arange(frames) / AUDIO_CHECK_RATE
    amplitude = 10 ** (AUDIO_CHECK_LEVEL_DBFS / 20)
    tone = amplitude * np.sin(2 * np.pi * AUDIO_CHECK_FREQUENCY_HZ * time)
    fade = int(AUDIO_CHECK_FADE_SECONDS * AUDIO_CHECK_RATE)
    # Imported here: scipy.signal adds about 0.1 s to every command's start.
    from scipy.signal import windows

    window = windows.hann(2 * fade)
    tone[:fade] *= window[:fade]
    tone[-fade:] *= window[fade:]
    buffer = io.BytesIO()
    soundfile.write(buffer, tone, AUDIO_CHECK_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@bp.get("/audio-check.wav")
def audio_check() -> Response:
    response = Response(audio_check_wav(), mimetype="audio/wav")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


# --- the recruiter --------------------------------------------------------------


class MTurkRecruiter(Recruiter):
    """Recruitment on Amazon Mechanical Turk through an ExternalQuestion HIT."""

    name = NAME
    title = "Amazon Mechanical Turk"
    config_model = MTurkConfig
    entry_endpoint = "mturk.entry"

    def render_completion(self, page: CompletionPage) -> str:
        section = page.section or MTurkConfig()
        data = page.participant.external_data or {}
        assignment_id = data.get("assignmentId")
        submit_url = external_submit_url(data.get("turkSubmitTo", ""), section)
        can_submit = page.completed or (
            page.reason == "screened_out" and section.submit_screened_out
        )
        if assignment_id is None or submit_url is None:
            logger.error(
                "Participant %s has no valid MTurk assignment data to submit",
                page.participant.id,
            )
            can_submit = False
        return render_template(
            "caqe_mturk/complete.html",
            page=page,
            can_submit=can_submit,
            submit_url=submit_url,
            assignment_id=assignment_id,
        )

    def skip_step(
        self, participant: Participant, step: str, session: Session, config: StudyConfig
    ) -> bool:
        """Skip a one-time step this worker completed in an earlier session.

        Consent and surveys count forever; a screening step counts for
        ``screening_validity_hours`` after it was passed.
        """
        if participant.recruiter != NAME or not participant.external_id:
            return False
        earlier = [
            row.id
            for row in _worker_participants(
                session,
                participant.experiment_id,
                participant.external_id,
                participant.id,
            )
        ]
        if not earlier:
            return False
        survey = _SURVEY_STEPS.get(step)
        if survey is not None:
            answered = set(
                session.scalars(
                    select(SurveyResponse.participant_id).where(
                        SurveyResponse.participant_id.in_(earlier),
                        SurveyResponse.survey == survey,
                    )
                ).all()
            )
            # Answers that failed the survey's inclusion criteria are not reused.
            failed = set(
                session.scalars(
                    select(ScreeningResult.participant_id).where(
                        ScreeningResult.participant_id.in_(answered),
                        ScreeningResult.step == step,
                        ScreeningResult.passed.is_(False),
                    )
                ).all()
            )
            return bool(answered - failed)
        query = select(ScreeningResult.created_at).where(
            ScreeningResult.participant_id.in_(earlier),
            ScreeningResult.step == step,
            ScreeningResult.passed.is_(True),
        )
        passed_at = session.scalars(query).all()
        if not passed_at:
            return False
        if step in _STEPS_WITHOUT_EXPIRY:
            return True
        section = _section(config)
        since = utcnow() - dt.timedelta(hours=section.screening_validity_hours)
        return any(_as_utc(when) >= since for when in passed_at)
