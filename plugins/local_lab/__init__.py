"""Lab recruitment: anonymous entry, per-participant codes and a kiosk mode."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click
from flask import Blueprint, abort, redirect, render_template, request, url_for
from itsdangerous import BadData, URLSafeSerializer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from caqe_core import CompletionPage, Recruiter, hookimpl
from caqe_core.models import Participant, RecruitmentJob, utcnow
from caqe_core.web import current_study, db_session, participant_token, state

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

NAME = "local_lab"
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
"""Letters and digits without look-alikes (0/O, 1/I)."""
CODE_LENGTH = 8
MAX_CODE_LENGTH = 32
"""Longer input is rejected without a database query."""
CLAIM_WAIT_SECONDS = 10.0
"""How long a second request with the same code waits for the first one's
participant before it takes over the claim."""
COMPLETION_CODE_LENGTH = 10
"""Characters of a completion code: 50 bits, so a guess matches one of a
million participants with a probability of about 1e-9."""
_COMPLETION_CODE_CONTEXT = b"caqe-local-lab-completion-code\x00"
START_TOKEN_FIELD = "start_token"
"""Form field of the signed nonce that makes a repeated post of one start page
return the participant the first post started."""
START_NONCE_BYTES = 16
MAX_START_TOKEN_LENGTH = 200
"""Longer input is rejected without checking its signature."""
_START_TOKEN_SALT = "caqe-local-lab-start"
_START_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class LocalLabConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_code: bool = False
    """True admits only participants with a code from 'caqe lab codes'."""
    kiosk: bool = False
    """True starts the next participant when one finishes (a lab computer)."""
    kiosk_delay_seconds: int = Field(default=10, ge=0, le=600)
    completion_message: str = "Thank you for taking part. You may close this window."
    show_completion_code: bool = True
    """Show a code the participant can give the experimenter as proof of
    completion. 'caqe lab verify CODE' finds the participant it belongs to."""


class LocalLab(Recruiter):
    name = NAME
    title = "Lab or anonymous participants"
    config_model = LocalLabConfig
    entry_endpoint = "local_lab.start"

    def render_completion(self, page: CompletionPage) -> str:
        section = page.section or LocalLabConfig()
        code = None
        if page.completed and section.show_completion_code:
            code = completion_code(page.participant.public_id, state().secret_key)
        return render_template(
            "caqe_local_lab/complete.html",
            page=page,
            section=section,
            code=code,
            restart_url=url_for("local_lab.start") if section.kiosk else None,
        )


def completion_code(public_id: str, secret_key: bytes) -> str:
    """Derive the completion code of a participant from the server's secret key.

    The public id is visible in the participant's page URLs, so the code is an
    HMAC-SHA256 of it, which only a holder of the secret key can compute.
    """
    message = _COMPLETION_CODE_CONTEXT + public_id.encode()
    digest = hmac.new(secret_key, message, hashlib.sha256).digest()
    number = int.from_bytes(digest, "big")
    characters = []
    for _ in range(COMPLETION_CODE_LENGTH):
        number, index = divmod(number, len(CODE_ALPHABET))
        characters.append(CODE_ALPHABET[index])
    return "".join(characters)


def find_participant_by_completion_code(
    session: Session, experiment_id: int, code: str, secret_key: bytes
) -> Participant | None:
    """Return the lab participant of the experiment whose completion code is ``code``.

    Codes are not stored, so this computes the code of every lab participant
    of the experiment. Case and surrounding spaces in ``code`` do not matter.
    """
    normalized = code.strip().upper()
    participants = session.scalars(
        select(Participant)
        .where(
            Participant.experiment_id == experiment_id,
            Participant.recruiter == NAME,
        )
        .order_by(Participant.id)
    )
    for participant in participants:
        expected = completion_code(participant.public_id, secret_key)
        if hmac.compare_digest(expected, normalized):
            return participant
    return None


bp = Blueprint("local_lab", __name__, url_prefix="/lab", template_folder="templates")


@bp.before_request
def _require_lab_study() -> None:
    # Another recruiter's study must not get an anonymous way in, since that
    # would skip its entry checks (MTurk's worker and assignment checks).
    if current_study().config.core.recruiter != NAME:
        abort(404, "This study does not recruit lab participants.")


def _section() -> LocalLabConfig:
    return current_study().config.section(NAME) or LocalLabConfig()


@bp.get("/")
def start() -> Any:
    return _start_page()


@bp.post("/")
def begin() -> Any:
    from caqe_core.flow import start_participant

    study = current_study()
    section = _section()
    code = (request.form.get("code") or "").strip().upper()
    if not section.require_code and not code:
        return _begin_anonymous(request.form.get(START_TOKEN_FIELD))
    if not code:
        return _start_page("Enter the code you were given.", 422)

    session = db_session()
    job = None
    if len(code) <= MAX_CODE_LENGTH:
        job = session.scalar(
            select(RecruitmentJob).where(
                RecruitmentJob.experiment_id == study.experiment_id,
                RecruitmentJob.recruiter == NAME,
                RecruitmentJob.request_token == code,
            )
        )
    if job is None:
        return _start_page(
            f"The code {code[:MAX_CODE_LENGTH]} is not valid. Check it and try again.",
            422,
        )

    # The same code continues the same session, so a closed tab is not lost.
    public_id = _participant_of_code(session, code)
    if public_id is None and _claim_code(session, job.id):
        participant = start_participant(
            state().session_factory, study, NAME, external_id=code
        )
        session.execute(
            update(RecruitmentJob)
            .where(RecruitmentJob.id == job.id)
            .values(status="used", data={"participant": participant.public_id})
        )
        session.commit()
        public_id = participant.public_id
    if public_id is None:
        public_id = _wait_for_participant(session, code, job.id)
    if public_id is None:
        logger.warning("Code %s is claimed but no participant appeared", code)
        return _start_page(
            "A session with this code is starting right now. Reload the page in a "
            "moment.",
            409,
        )
    return _to_participant(public_id)


def _begin_anonymous(start_token: str | None) -> Any:
    """Start an anonymous participant, once per start token.

    A double-click on Start or a re-sent form posts the same token again and
    gets the participant that the first post started.
    """
    from caqe_core.flow import get_or_start_participant, start_participant

    factory = state().session_factory
    if start_token is None:
        # NOTE: a start page rendered before start tokens existed, or a client
        # that posts without loading the page, starts a new participant on
        # every post, so a double-click there still starts two.
        participant = start_participant(factory, current_study(), NAME)
        return _to_participant(participant.public_id)

    nonce = start_nonce(start_token, state().secret_key)
    if nonce is None:
        logger.warning("Rejected a lab start with an invalid start token")
        return _start_page(
            "This start page is not valid any more, so no session started. "
            "Press Start again.",
            400,
        )
    participant, created = get_or_start_participant(
        factory, current_study(), NAME, idempotency_key=nonce
    )
    if not created:
        logger.info(
            "A repeated post of one start page went to participant %s",
            participant.id,
        )
    return _to_participant(participant.public_id)


def issue_start_token(secret_key: bytes) -> str:
    """Return a signed one-time nonce for a start form."""
    nonce = secrets.token_urlsafe(START_NONCE_BYTES)
    return URLSafeSerializer(secret_key, salt=_START_TOKEN_SALT).dumps(nonce)


def start_nonce(start_token: str, secret_key: bytes) -> str | None:
    """Return the nonce of a start token that this server signed, or None."""
    if len(start_token) > MAX_START_TOKEN_LENGTH:
        return None
    try:
        nonce = URLSafeSerializer(secret_key, salt=_START_TOKEN_SALT).loads(start_token)
    except BadData:
        return None
    if not isinstance(nonce, str) or not _START_NONCE.fullmatch(nonce):
        return None
    return nonce


def _to_participant(public_id: str) -> Any:
    return redirect(url_for("participant.page", token=participant_token(public_id)))


def _participant_of_code(session: Session, code: str) -> str | None:
    """Return the public id of the first participant who started with ``code``."""
    # End the read transaction, so that rows committed since are visible.
    session.commit()
    return session.scalar(
        select(Participant.public_id)
        .where(
            Participant.experiment_id == current_study().experiment_id,
            Participant.external_id == code,
        )
        .order_by(Participant.id)
        .limit(1)
    )


def _claim_code(session: Session, job_id: int, stale_before: Any = None) -> bool:
    """Mark the code's job as claimed; return False if another request did first.

    Two requests with one code (a double-click on Start, two lab computers)
    would otherwise both find no participant and both start one. With
    ``stale_before``, a claim older than that time is taken over, so a
    request that died between claiming and starting does not block the code.
    """
    condition = (
        RecruitmentJob.status == "issued"
        if stale_before is None
        else (RecruitmentJob.status == "claimed")
        & (RecruitmentJob.updated_at < stale_before)
    )
    result = session.execute(
        update(RecruitmentJob)
        .where(RecruitmentJob.id == job_id, condition)
        .values(status="claimed", updated_at=utcnow())
    )
    session.commit()
    return cast(CursorResult[Any], result).rowcount == 1


def _wait_for_participant(session: Session, code: str, job_id: int) -> str | None:
    """Wait for the request that claimed ``code`` to start its participant."""
    from caqe_core.flow import start_participant

    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
        public_id = _participant_of_code(session, code)
        if public_id is not None:
            return public_id
    stale_before = utcnow() - dt.timedelta(seconds=CLAIM_WAIT_SECONDS)
    if not _claim_code(session, job_id, stale_before):
        return _participant_of_code(session, code)
    logger.warning("Took over the stale claim of code %s", code)
    participant = start_participant(
        state().session_factory, current_study(), NAME, external_id=code
    )
    return participant.public_id


def _start_page(error: str | None = None, status: int = 200) -> Any:
    """Render the start page with a new start token.

    ``Cache-Control: no-store`` tells the browser to load the page again on
    Back or a reload instead of showing a stored copy, so that a kiosk's next
    participant gets a new token instead of posting the previous one's.
    """
    from markupsafe import Markup

    from caqe_core.markdown import render_markdown

    html = render_template(
        "caqe_local_lab/start.html",
        section=_section(),
        description=Markup(
            render_markdown(current_study().config.core.experiment.description)
        ),
        error=error,
        start_token=issue_start_token(state().secret_key),
        start_token_field=START_TOKEN_FIELD,
    )
    return html, status, {"Cache-Control": "no-store"}


@hookimpl
def register_recruiters(register: Callable[[Recruiter], None]) -> None:
    register(LocalLab())


@hookimpl
def register_routes(app: Any) -> None:
    app.register_blueprint(bp)


def generate_codes(
    count: int, taken: Callable[[set[str]], set[str]] | None = None
) -> list[str]:
    """Return ``count`` distinct random codes; ``taken`` returns those already in use.

    At 100,000 codes of 8 characters from 32, a repeat within one batch is
    about 0.5 % likely (the birthday bound), so repeats are drawn again.
    """
    codes: set[str] = set()
    while len(codes) < count:
        fresh = {
            "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            for _ in range(count - len(codes))
        }
        fresh -= codes
        if taken is not None:
            fresh -= taken(fresh)
        codes |= fresh
    return list(codes)


def _codes_in_use(session: Session) -> Callable[[set[str]], set[str]]:
    def taken(codes: set[str]) -> set[str]:
        found: set[str] = set()
        batch = sorted(codes)
        for start in range(0, len(batch), 500):
            found.update(
                session.scalars(
                    select(RecruitmentJob.request_token).where(
                        RecruitmentJob.request_token.in_(batch[start : start + 500])
                    )
                )
            )
        return found

    return taken


@hookimpl
def register_commands(cli: click.Group) -> None:
    from caqe_core.cli import database_options, experiment_option, make_context

    @cli.group("lab")
    def lab() -> None:
        """Lab recruitment: participant codes."""

    @lab.command("codes")
    @click.argument("count", type=click.IntRange(1, 100_000))
    @click.option(
        "--csv",
        "csv_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the codes to this CSV file instead of printing them.",
    )
    @database_options
    @experiment_option
    def codes(
        count: int,
        csv_path: Path | None,
        database_url: str | None,
        experiment: str | None,
    ) -> None:
        """Create COUNT participant codes for the study and print them."""
        context = make_context(database_url)
        study = context.study(experiment)
        with context.session_factory() as session, session.begin():
            new_codes = generate_codes(count, _codes_in_use(session))
            for code in new_codes:
                session.add(
                    RecruitmentJob(
                        experiment_id=study.experiment_id,
                        recruiter=NAME,
                        request_token=code,
                        status="issued",
                    )
                )
        if csv_path is not None:
            with csv_path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["code", "experiment"])
                writer.writerows([code, study.name] for code in new_codes)
            click.echo(f"Wrote {count} codes for {study.name} to {csv_path}.")
        else:
            for code in new_codes:
                click.echo(code)
            click.echo(f"{count} codes for {study.name}.", err=True)

    @lab.command("verify")
    @click.argument("code")
    @database_options
    @experiment_option
    def verify(code: str, database_url: str | None, experiment: str | None) -> None:
        """Find the participant whose end page showed completion code CODE.

        Codes are derived from the secret key that signs participant links, so
        run this with the server's CAQE_SECRET_KEY or CAQE_HOME. It exits with
        status 1 when CODE matches no participant who completed the study.
        """
        from caqe_core.cli import secret_key
        from caqe_core.db import data_dir

        context = make_context(database_url)
        study = context.study(experiment)
        key = secret_key(data_dir())
        with context.session_factory() as session:
            participant = find_participant_by_completion_code(
                session, study.experiment_id, code, key
            )
        if participant is None:
            raise click.ClickException(
                f"The code {code.strip().upper()[:MAX_CODE_LENGTH]} matches no lab "
                f"participant of {study.name}. Check the code, and check that "
                "CAQE_SECRET_KEY or CAQE_HOME is the server's, because codes "
                "depend on its secret key."
            )
        if participant.status != "completed":
            raise click.ClickException(
                f"The code belongs to participant {participant.public_id}, who has "
                f"not completed {study.name} (status {participant.status})."
            )
        finished = "at an unknown time"
        if participant.finished_at is not None:
            finished = f"{participant.finished_at:%Y-%m-%d %H:%M:%S} UTC"
        lab_code = participant.external_id or "none"
        click.echo(
            f"Valid: participant {participant.public_id} completed {study.name} "
            f"(finished {finished}, lab code {lab_code})."
        )
