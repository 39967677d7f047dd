"""Fixtures for the results tests: the CLI with the test registry, synthetic studies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from caqe_core.cli import build_cli
from caqe_core.plugins import Registry, set_registry
from tests.results.synthetic import SyntheticStudy, make_scale_study


@pytest.fixture
def run_cli(registry: Registry) -> Iterator[Callable[..., Result]]:
    """Run a ``caqe`` command in-process with the test registry loaded."""
    set_registry(registry)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(build_cli(), list(args), catch_exceptions=False)

    try:
        yield run
    finally:
        set_registry(None)


@pytest.fixture
def small_study(tmp_path: Path, sqlite_url: str, registry: Registry) -> SyntheticStudy:
    """60 listeners × 6 items of the 'scale' test type on SQLite."""
    return make_scale_study(tmp_path, sqlite_url, registry, participants=60, items=6)
