"""The Flask app factory and request helpers shared by core and plugins."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flask import Flask, Request, current_app, g, jsonify, render_template, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException

from caqe_core.audio import AudioTokens
from caqe_core.study import Study

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1_000_000


class ParticipantKey(Protocol):
    """The ids of a participant that URLs and tokens use: an ORM row or a plain record."""

    @property
    def id(self) -> int: ...
    @property
    def public_id(self) -> str: ...


@dataclass
class WebState:
    """Per-app state used by every request; none of it is per-participant."""

    study: Study
    session_factory: sessionmaker[Session]
    secret_key: bytes
    admin_password: str
    data_dir: Path
    audio_tokens: AudioTokens
    participant_tokens: URLSafeSerializer
    engine: Engine
    """The engine of ``session_factory``."""
    audio_paths: dict[int, Path] = field(default_factory=dict)
    """Served file of each stimulus id, filled on first request. Stimuli
    never change while a study is served, so the cache needs no expiry."""
    participant_ids: dict[str, str] = field(default_factory=dict)
    """Public id of each participant token whose signature was checked.
    Only valid tokens are added, and the dict is emptied when it reaches
    ``PARTICIPANT_ID_CACHE_SIZE`` entries."""


def state() -> WebState:
    return current_app.extensions["caqe"]


def current_study() -> Study:
    """Return the study being served (inside a request or app context)."""
    return state().study


def db_session() -> Session:
    """Return the request's SQLAlchemy session, closed when the request ends."""
    if "caqe_session" not in g:
        g.caqe_session = state().session_factory()
    return g.caqe_session


def read_connection() -> Connection:
    """Return the request's autocommit connection, closed when the request ends.

    Each statement commits by itself. Use it only for reads and for writes
    of one statement. Work that must be atomic across several statements
    belongs in ``write_connection()`` or ``db_session()``.
    """
    connection = g.get("caqe_read_connection")
    if connection is None:
        # Autocommit is set on the connection, not through
        # engine.execution_options(), because an engine with options carries
        # an event listener that sends every statement of its connections
        # through SQLAlchemy's slower event dispatch.
        connection = state().engine.connect()
        connection.execution_options(isolation_level="AUTOCOMMIT")
        g.caqe_read_connection = connection
    return connection


def close_read_connection() -> None:
    """Hand the request's autocommit connection back to the pool, if it has one."""
    connection = g.pop("caqe_read_connection", None)
    if connection is not None:
        connection.close()


def write_connection() -> Connection:
    """Return the request's transactional Core connection, closed when the request ends.

    The hot participant requests use it in place of ``db_session()``: a
    Core connection costs less CPU per statement than an ORM session.
    A transaction begins with the first statement, and one not committed
    is rolled back when the request ends.
    """
    connection = g.get("caqe_write_connection")
    if connection is None:
        connection = g.caqe_write_connection = state().engine.connect()
    return connection


def participant_token(public_id: str) -> str:
    return state().participant_tokens.dumps(public_id)


PARTICIPANT_ID_CACHE_SIZE = 10_000


def decode_participant_token(token: str) -> str | None:
    """Return the public id that ``token`` was signed for, or None if it is invalid.

    Every trial page and response decodes the same few tokens again, so
    tokens that pass the signature check are remembered.
    """
    web_state = state()
    public_id = web_state.participant_ids.get(token)
    if public_id is not None:
        return public_id
    try:
        value = web_state.participant_tokens.loads(token)
    except BadSignature:
        return None
    if not isinstance(value, str):
        return None
    # itsdangerous (2.2) also accepts other spellings of a valid token: it drops
    # non-ASCII characters and "=" padding, and ignores the unused low bits
    # of the last base64 character. Only the token as issued is accepted,
    # so that one participant has one token and cache entry.
    if web_state.participant_tokens.dumps(value) != token:
        return None
    if len(web_state.participant_ids) >= PARTICIPANT_ID_CACHE_SIZE:
        web_state.participant_ids.clear()
    web_state.participant_ids[token] = value
    return value


def csrf_token(public_id: str) -> str:
    """Per-participant token for forms and JSON posts."""
    return hmac.new(
        state().secret_key, b"csrf\x00" + public_id.encode(), hashlib.sha256
    ).hexdigest()[:32]


def check_csrf(public_id: str, value: str | None) -> bool:
    """Return whether ``value`` is the CSRF token of the participant ``public_id``."""
    if not value:
        return False
    return compare_secret(value, csrf_token(public_id))


def compare_secret(given: str, expected: str) -> bool:
    """Compare a secret from a request with the expected one in constant time.

    ``hmac.compare_digest`` raises TypeError on a str with non-ASCII
    characters, so both sides are compared as UTF-8 bytes. Lone surrogates,
    which a JSON body may contain, are encoded with ``surrogatepass``.
    """
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"),
        expected.encode("utf-8", "surrogatepass"),
    )


def json_error(status: int, message: str, field: str | None = None) -> Any:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    return response


def create_app(
    study: Study,
    session_factory: sessionmaker[Session],
    secret_key: bytes,
    admin_password: str,
    data_dir: Path,
) -> Flask:
    """Build the Flask app that serves ``study``."""
    app = Flask(
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    app.config["SECRET_KEY"] = secret_key
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.config["JSON_SORT_KEYS"] = False
    app.session_interface = _CookieSessionInterface()
    engine = session_factory.kw["bind"]
    app.extensions["caqe"] = WebState(
        study=study,
        session_factory=session_factory,
        secret_key=secret_key,
        admin_password=admin_password,
        data_dir=data_dir,
        audio_tokens=AudioTokens(secret_key),
        participant_tokens=URLSafeSerializer(secret_key, salt="caqe-participant"),
        engine=engine,
    )

    from caqe_core.web import admin, audio, participant, static_files

    app.register_blueprint(participant.bp)
    app.register_blueprint(audio.bp)
    app.register_blueprint(admin.bp)
    study.registry.hook.register_routes(app=app)
    static_files.init_app(app)

    app.teardown_appcontext(_close_session)
    app.after_request(_security_headers(study))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.jinja_env.globals["study_title"] = study.config.core.experiment.title
    return app


class _CookieSessionInterface(SecureCookieSessionInterface):
    """Flask's cookie session, without building its signer for requests without the cookie.

    Flask builds the signer on every request, before it looks for the
    cookie. Participant requests carry no session cookie, so they skip
    that work and get the same empty session.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def _close_session(_exception: BaseException | None) -> None:
    for name in ("caqe_session", "caqe_read_connection", "caqe_write_connection"):
        resource = g.pop(name, None)
        if resource is not None:
            resource.close()


def _security_headers(study: Study) -> Callable[[Any], Any]:
    """Return the after-request function that adds the study's security headers.

    A header a view set already is kept. The values depend only on the
    study's config, so they are built once.
    """
    ancestors = " ".join(study.config.core.web.frame_ancestors)
    headers = (
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
            "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
            f"connect-src 'self'; form-action *; frame-ancestors {ancestors}",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    )

    def add_security_headers(response: Any) -> Any:
        # One pass over the response's headers, where setdefault would
        # scan them once per header.
        present = {name.lower() for name in response.headers.keys()}
        for name, value in headers:
            if name.lower() not in present:
                response.headers.add(name, value)
        if "cache-control" not in present and response.mimetype == "text/html":
            response.headers.add("Cache-Control", "no-store")
        return response

    return add_security_headers


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.is_json


def _http_error(error: HTTPException) -> Any:
    status = error.code or 500
    if status == 413:
        message = f"The request body is larger than {MAX_REQUEST_BYTES} bytes."
    else:
        message = error.description or error.name
    if _wants_json():
        return json_error(status, message, "body" if status == 413 else None)
    return render_template("caqe/error.html", status=status, message=message), status


def _unexpected_error(error: Exception) -> Any:
    logger.exception("Unexpected error on %s %s", request.method, request.path)
    message = "The server could not handle this request. Please try again in a moment."
    if _wants_json():
        return json_error(500, message)
    return render_template("caqe/error.html", status=500, message=message), 500
