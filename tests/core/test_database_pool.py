"""The PostgreSQL connection pool: connections the server closed are replaced."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from caqe_core import db


def _terminate(admin_url: str, pid: int) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def _backend_pid(engine: object) -> int:
    with engine.connect() as connection:  # type: ignore[attr-defined]
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_idle_closed_connection_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.make_engine(postgres_url)
    engine.pool.dispose()
    first = _backend_pid(engine)
    _terminate(postgres_url, first)
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)

    second = _backend_pid(engine)

    assert second != first
    engine.dispose()


def test_busy_pool_skips_ping(postgres_url: str) -> None:
    """A connection checked in moments ago is handed out without a ping.

    The killed connection therefore fails the request that gets it, and the
    pool then replaces it, as SQLAlchemy does for any lost connection.
    """
    engine = db.make_engine(postgres_url)
    first = _backend_pid(engine)
    _terminate(postgres_url, first)

    with pytest.raises(OperationalError):
        _backend_pid(engine)
    second = _backend_pid(engine)

    assert second != first
    engine.dispose()
