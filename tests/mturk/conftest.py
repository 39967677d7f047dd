"""Fixtures for MTurk tests: a running fake MTurk service and clients for it."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.config import Config
from caqe_mturk.testing import FakeMTurk

# Environment variables that would change how botocore builds or retries a client.
_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_MTURK",
    "AWS_CA_BUNDLE",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture(autouse=True)
def isolated_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's AWS configuration and credentials out of the tests."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake_mturk() -> Iterator[FakeMTurk]:
    """A fake MTurk service running on 127.0.0.1 for one test."""
    with FakeMTurk() as fake:
        yield fake


@pytest.fixture
def mturk_client(fake_mturk: FakeMTurk):
    """A boto3 MTurk client for ``fake_mturk`` that makes one attempt per call."""
    return fake_mturk.client(
        Config(retries={"mode": "standard", "total_max_attempts": 1})
    )
