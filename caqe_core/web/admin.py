"""Admin pages behind the admin password: live progress and participants.

Every route needs the password that ``caqe run`` printed, given as the
``token`` query parameter, the ``X-CAQE-Admin-Token`` header or the password
of HTTP basic authentication. Without it the response is 401.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core.models import Participant
from caqe_core.progress import progress_summary
from caqe_core.web import compare_secret, current_study, db_session, state

bp = Blueprint("admin", __name__, url_prefix="/admin")

REFRESH_MS = 5000
"""How often the dashboard fetches /admin/api/progress, in ms."""


def _authorised() -> bool:
    expected = state().admin_password
    given = request.args.get("token") or request.headers.get("X-CAQE-Admin-Token")
    if not given and request.authorization is not None:
        given = request.authorization.password
    return bool(given) and compare_secret(given or "", expected)


@bp.before_request
def require_admin() -> Any:
    if not _authorised():
        return Response(
            "The admin pages need the admin password that 'caqe run' printed.",
            401,
            {
                "WWW-Authenticate": 'Basic realm="CAQE admin"',
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "no-store",
            },
        )
    return None


def progress(session: Session) -> dict[str, Any]:
    return progress_summary(session, current_study())


def _token() -> str | None:
    """Return the token of the query string, to keep it in the page's links."""
    return request.args.get("token") or None


@bp.get("/")
def dashboard() -> Any:
    return render_template(
        "caqe/admin.html",
        data=progress(db_session()),
        token=_token(),
        refresh_ms=REFRESH_MS,
    )


@bp.get("/api/progress")
def progress_json() -> Any:
    response = jsonify(progress(db_session()))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/participants")
def participants() -> Any:
    study = current_study()
    rows = (
        db_session()
        .scalars(
            select(Participant)
            .where(Participant.experiment_id == study.experiment_id)
            .order_by(Participant.id)
        )
        .all()
    )
    return render_template(
        "caqe/admin_participants.html", participants=rows, token=_token()
    )
