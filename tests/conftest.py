"""Shared fixtures: plugin registry, databases (SQLite and PostgreSQL), live servers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

# Installed third-party plugins stay out of the tests: only the built-ins load.
os.environ["CAQE_PLUGINS"] = "mushra,pairwise,mturk,local_lab"

from caqe_core.plugins import Registry, build_registry, set_registry
from tests.support import scale_plugin
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study

# Hypothesis checks properties, not speed: its per-example deadline fails
# tests on a loaded machine, so it is off for the whole suite.
settings.register_profile("caqe", deadline=None)
settings.load_profile("caqe")

POSTGRES_ENV = "CAQE_TEST_POSTGRES_URL"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def registry() -> Registry:
    """Built-in plugins plus the test-only 'scale' test type."""
    return build_registry(extra_plugins=[("scale", scale_plugin)])


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAQE_HOME", str(tmp_path / "caqe-home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CAQE_CONFIG", raising=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.sqlite'}"


def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if IN_CI:
            pytest.fail(
                f"{POSTGRES_ENV} is not set, but CI requires the PostgreSQL tests."
            )
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV}, e.g. postgresql://postgres@127.0.0.1:5432/postgres"
        )
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin_url = make_url(_postgres_admin_url()).set(drivername="postgresql+psycopg")
    name = f"caqe_test_{secrets.token_hex(6)}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {POSTGRES_ENV} is unreachable: {error}")
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is unreachable: {error}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def scale_config(tmp_path: Path) -> Path:
    return scale_study(tmp_path / "study")


@pytest.fixture
def served_scale(
    scale_config: Path, sqlite_url: str, registry: Registry, tmp_path: Path
) -> Iterator[ServedStudy]:
    """The 'scale' study behind a real HTTP server on loopback."""
    served = build_study(scale_config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


CHROMIUM_PATH = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[object]:
    """The session's one Playwright driver; every browser test launches from it.

    Playwright's sync API cannot start a second driver while one runs, so
    the test areas share this one. Skips when Debian's Chromium is missing,
    except under CI=true, where a missing browser fails the run.
    """
    if not CHROMIUM_PATH.exists():
        message = (
            f"Chromium not found at {CHROMIUM_PATH}; install Debian's chromium package "
            "to run the browser tests"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright
