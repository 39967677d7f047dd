"""Database engine, sessions, migrations and the data folder."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "CAQE_HOME"
DEFAULT_DATA_DIR = "caqe-data"
SQLITE_FILENAME = "caqe.sqlite"


def data_dir() -> Path:
    """Return the folder for the SQLite file, prepared audio and the secret key.

    ``$CAQE_HOME`` when set, else ``./caqe-data`` in the working directory,
    so every command run in the same folder finds the same study.
    """
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).resolve()


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / SQLITE_FILENAME}"


def resolve_database_url(url: str | None) -> str:
    """Pick the URL: the argument, then ``$DATABASE_URL``, then the SQLite file."""
    url = url or os.environ.get("DATABASE_URL") or default_database_url()
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def describe_database(url: str) -> str:
    """Return a printable location of the database, without a password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return str(Path(parsed.database or "").resolve())
    return parsed.render_as_string(hide_password=True)


DEFAULT_POOL_SIZE = 5
"""PostgreSQL connections an engine keeps open when its caller does not size the pool."""


def make_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """Create the engine for ``url``.

    Stored JSON (plans, responses, events) is parsed with orjson, which is
    several times faster than the standard library. Every page load parses
    some. Writing still uses ``json.dumps``.

    On PostgreSQL the pool keeps ``pool_size`` connections open and opens up
    to 10 more under a burst. A server passes its threads per worker:
    a connection handed back to a full pool is closed, so a pool smaller
    than the threads using it opens and closes connections all the time,
    and each new connection starts a PostgreSQL backend process.
    """
    url = resolve_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30}, json_deserializer=orjson.loads
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=10,
        json_deserializer=orjson.loads,
    )
    event.listen(engine, "connect", _note_checkin)
    event.listen(engine, "checkin", _note_checkin)
    dialect = engine.dialect

    def ping_if_idle(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        _ping_if_idle(dialect, dbapi_connection, record)

    event.listen(engine, "checkout", ping_if_idle)
    return engine


IDLE_PING_SECONDS = 10.0
"""Ping a pooled connection unused for longer than this before handing it out."""


def _note_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dialect, dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    """Replace a connection that the server closed while it sat idle in the pool.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout, which is one
    more round trip on each trial page and response. Under load a pooled
    connection is rarely unused for ``IDLE_PING_SECONDS``, so only such
    connections are pinged. Raising ``DisconnectionError`` makes
    the pool discard the connection and open a new one. A connection lost
    while in use fails its request; SQLAlchemy then discards every pooled
    connection opened before the failure.
    """
    if time.monotonic() - record.info.get("checked_in", 0.0) < IDLE_PING_SECONDS:
        return
    try:
        alive = dialect.do_ping(dbapi_connection)
    except Exception as error:
        raise DisconnectionError(f"idle connection is closed: {error}") from error
    if not alive:
        raise DisconnectionError("idle connection did not answer a ping")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option(
        "sqlalchemy.url", resolve_database_url(url).replace("%", "%%")
    )
    return config


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration to the database."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def is_up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def has_tables(engine: Engine) -> bool:
    return bool(inspect(engine).get_table_names())
