"""Admin pages behind the admin password: progress per condition and participants."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, render_template, request
from sqlalchemy import select

from caqe_core.models import Participant
from caqe_core.progress import progress_summary
from caqe_core.web import current_study, db_session, state

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _authorised() -> bool:
    expected = state().admin_password
    given = request.args.get("token") or request.headers.get("X-CAQE-Admin-Token")
    if given is None and request.authorization is not None:
        given = request.authorization.password
    return bool(given) and hmac.compare_digest(given or "", expected)


@bp.before_request
def require_admin() -> Any:
    if not _authorised():
        return Response(
            "The admin pages need the admin password that 'caqe run' printed.",
            401,
            {"WWW-Authenticate": 'Basic realm="CAQE admin"', "Content-Type": "text/plain"},
        )
    return None


def progress(session: Any) -> dict[str, Any]:
    return progress_summary(session, current_study())


@bp.get("/")
def dashboard() -> Any:
    token = request.args.get("token", "")
    return render_template("caqe/admin.html", data=progress(db_session()), token=token)


@bp.get("/api/progress")
def progress_json() -> Any:
    return progress(db_session())


@bp.get("/participants")
def participants() -> Any:
    study = current_study()
    rows = db_session().scalars(
        select(Participant).where(Participant.experiment_id == study.experiment_id).order_by(Participant.id)
    ).all()
    return render_template("caqe/admin_participants.html", participants=rows, token=request.args.get("token", ""))
