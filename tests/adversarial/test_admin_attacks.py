"""The admin pages against bad passwords and hostile participant data."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from caqe_core.plugins import Registry
from tests.adversarial.helpers import agree, csrf_of, serve, start_listener
from tests.support.server import ADMIN_PASSWORD, ServedStudy
from tests.support.studies import scale_study

ATTACK = "<script>alert(1)</script><img src=x onerror=alert(2)>"

ADMIN_PATHS = ["/admin/", "/admin/participants", "/admin/api/progress"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_without_password(served_scale: ServedStudy, path: str) -> None:
    answer = requests.get(served_scale.url + path)

    assert answer.status_code == 401
    assert "Scale test" not in answer.text


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_with_wrong_password(served_scale: ServedStudy, path: str) -> None:
    by_query = requests.get(served_scale.url + path, params={"token": "wrong"})
    by_basic = requests.get(served_scale.url + path, auth=("admin", "wrong"))

    assert by_query.status_code == 401
    assert by_basic.status_code == 401


def test_admin_with_password(served_scale: ServedStudy) -> None:
    answer = requests.get(
        served_scale.url + "/admin/api/progress", params={"token": ADMIN_PASSWORD}
    )

    assert answer.status_code == 200
    assert answer.json()["experiment"] == "scale-study"


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_non_ascii_password(served_scale: ServedStudy, path: str) -> None:
    by_query = requests.get(served_scale.url + path, params={"token": "\u00e9"})
    by_header = requests.get(
        served_scale.url + path, headers={"X-CAQE-Admin-Token": "\u00e9"}
    )

    assert by_query.status_code == 401
    assert by_header.status_code == 401


def test_admin_not_framed_by_others(served_scale: ServedStudy) -> None:
    answer = requests.get(
        served_scale.url + "/admin/", params={"token": ADMIN_PASSWORD}
    )
    policy = answer.headers["Content-Security-Policy"]
    ancestors = next(
        part for part in policy.split(";") if part.strip().startswith("frame-ancestors")
    )

    assert "*" not in ancestors.split()
    assert "http:" not in ancestors.split()


def test_admin_escapes_survey_answers(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = scale_study(
        tmp_path / "study",
        flow={"steps": ["consent", "pre_survey", "trials"]},
        surveys={"pre": [{"id": "note", "type": "text", "text": "Anything else?"}]},
    )
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        listener = start_listener(served.url)
        agree(listener)
        survey = listener.page()
        answered = listener.post_step(
            "pre_survey", {"csrf_token": csrf_of(survey), "note": ATTACK}
        )
        pages = [
            requests.get(served.url + path, params={"token": ADMIN_PASSWORD}).text
            for path in ["/admin/", "/admin/participants"]
        ]

    assert answered.status_code == 200
    for page in pages:
        assert "<script>alert" not in page
        assert "<img src=x" not in page
