"""Lab recruitment: anonymous entry, per-participant codes and a kiosk mode."""

from __future__ import annotations

import csv
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

import click
from flask import Blueprint, abort, redirect, render_template, request, url_for
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from caqe_core import CompletionPage, Recruiter, hookimpl
from caqe_core.models import Participant, RecruitmentJob
from caqe_core.web import current_study, db_session, participant_token, state

__version__ = "0.1.0"

NAME = "local_lab"
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
"""Letters and digits without look-alikes (0/O, 1/I)."""


class LocalLabConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_code: bool = False
    """True admits only participants with a code from 'caqe lab codes'."""
    kiosk: bool = False
    """True starts the next participant when one finishes (a lab computer)."""
    kiosk_delay_seconds: int = Field(default=10, ge=0, le=600)
    completion_message: str = "Thank you for taking part. You may close this window."
    show_completion_code: bool = True
    """Show a code the participant can give the experimenter as proof."""


class LocalLab(Recruiter):
    name = NAME
    title = "Lab or anonymous participants"
    config_model = LocalLabConfig
    entry_endpoint = "local_lab.start"

    def render_completion(self, page: CompletionPage) -> str:
        section = page.section or LocalLabConfig()
        code = None
        if page.completed and section.show_completion_code:
            code = page.participant.public_id[:10].upper()
        return render_template(
            "caqe_local_lab/complete.html",
            page=page,
            section=section,
            code=code,
            restart_url=url_for("local_lab.start") if section.kiosk else None,
        )


bp = Blueprint("local_lab", __name__, url_prefix="/lab", template_folder="templates")


def _section() -> LocalLabConfig:
    return current_study().config.section(NAME) or LocalLabConfig()


@bp.get("/")
def start() -> Any:
    study = current_study()
    from caqe_core.markdown import render_markdown
    from markupsafe import Markup

    return render_template(
        "caqe_local_lab/start.html",
        section=_section(),
        description=Markup(render_markdown(study.config.core.experiment.description)),
        error=None,
    )


@bp.post("/")
def begin() -> Any:
    from caqe_core.flow import start_participant

    study = current_study()
    section = _section()
    code = (request.form.get("code") or "").strip().upper()
    external_id = None
    if section.require_code or code:
        if not code:
            return _start_error("Enter the code you were given.")
        session = db_session()
        job = session.scalar(
            select(RecruitmentJob).where(
                RecruitmentJob.experiment_id == study.experiment_id,
                RecruitmentJob.recruiter == NAME,
                RecruitmentJob.request_token == code,
            )
        )
        if job is None:
            return _start_error(
                f"The code {code} is not valid. Check it and try again."
            )
        existing = session.scalar(
            select(Participant).where(
                Participant.experiment_id == study.experiment_id,
                Participant.external_id == code,
            )
        )
        if existing is not None:
            # The same code continues the same session, so a closed tab is not lost.
            return redirect(
                url_for("participant.page", token=participant_token(existing.public_id))
            )
        external_id = code
    participant = start_participant(
        state().session_factory, study, NAME, external_id=external_id
    )
    return redirect(
        url_for("participant.page", token=participant_token(participant.public_id))
    )


def _start_error(message: str) -> Any:
    from caqe_core.markdown import render_markdown
    from markupsafe import Markup

    html = render_template(
        "caqe_local_lab/start.html",
        section=_section(),
        description=Markup(
            render_markdown(current_study().config.core.experiment.description)
        ),
        error=message,
    )
    return html, 422


@hookimpl
def register_recruiters(register: Callable[[Recruiter], None]) -> None:
    register(LocalLab())


@hookimpl
def register_routes(app: Any) -> None:
    app.register_blueprint(bp)


def generate_codes(count: int) -> list[str]:
    return [
        "".join(secrets.choice(CODE_ALPHABET) for _ in range(8)) for _ in range(count)
    ]


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
        new_codes = generate_codes(count)
        with context.session_factory() as session, session.begin():
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
