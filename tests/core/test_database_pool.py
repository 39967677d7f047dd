"""The PostgreSQL connection pool: its size, and connections the server closed are replaced."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

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


def _connections_opened(pool_size: int, postgres_url: str) -> int:
    """Return how many connections 8 threads opened in 20 rounds of overlapping requests."""
    engine = db.make_engine(postgres_url, pool_size=pool_size)
    opened: list[object] = []
    event.listen(engine, "connect", lambda *_args: opened.append(None))
    barrier = threading.Barrier(8)
    failures: list[Exception] = []

    def request() -> None:
        try:
            for _ in range(20):
                barrier.wait(timeout=30)
                with engine.connect() as connection:
                    connection.execute(text("SELECT pg_sleep(0.005)"))
        except (SQLAlchemyError, threading.BrokenBarrierError) as error:
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()
    assert failures == []
    return len(opened)


def test_pool_sized_for_threads_reuses(postgres_url: str) -> None:
    """A pool with one connection per thread opens each connection once."""
    assert _connections_opened(8, postgres_url) == 8


def test_small_pool_reopens_connections(postgres_url: str) -> None:
    """A pool smaller than its threads closes the extra connections and opens new ones.

    This is why ``caqe run`` sizes the pool by its threads per worker.
    """
    assert _connections_opened(5, postgres_url) > 8
