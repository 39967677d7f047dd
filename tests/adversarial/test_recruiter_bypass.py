"""Entry points of recruiters that a study does not use."""

from __future__ import annotations

from pathlib import Path

import requests
from sqlalchemy import func, select

from caqe_core.models import Participant
from caqe_core.plugins import Registry
from tests.adversarial.helpers import serve
from tests.support.studies import scale_study


def test_lab_entry_closed_for_mturk(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = scale_study(tmp_path / "study", recruiter="mturk")
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        start_page = requests.get(served.url + "/lab/")
        begun = requests.post(served.url + "/lab/", allow_redirects=False)
        with served.session_factory() as session:
            participants = session.scalar(select(func.count()).select_from(Participant))

    assert start_page.status_code == 404
    assert begun.status_code == 404
    assert participants == 0


def test_mturk_entry_closed_for_lab(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = scale_study(tmp_path / "study")
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        entry = requests.get(
            served.url + "/mturk/",
            params={
                "assignmentId": "3ASSIGNMENT0000000000000000000",
                "hitId": "3HIT000000000000000000000000000",
                "workerId": "A1WORKER00000",
                "turkSubmitTo": "https://www.mturk.com",
            },
        )

    assert entry.status_code == 404
