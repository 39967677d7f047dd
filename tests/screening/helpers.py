"""Studies with screening steps, and the answers the server expects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from caqe_core.config import StudyConfig, load_config
from caqe_core.models import Participant
from caqe_core.plugins import Registry
from caqe_core.study import generated_dir
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study

# Short tones keep the browser tests fast; the timing rules still hold.
FAST_HEARING = {
    "tone_ms": 60,
    "ramp_ms": 10,
    "min_gap_ms": 80,
    "stimulus_seconds": 1.0,
    "min_tones": 2,
    "max_tones": 5,
    "calibration_seconds": 0.5,
}
FAST_HEADPHONE = {
    "tone_ms": 150,
    "ramp_ms": 30,
    "gap_ms": 60,
    "calibration_seconds": 0.5,
}


def screening_config(folder: Path, steps: list[str], **sections: Any) -> Path:
    """Write a 'scale' study whose flow runs ``steps`` before the trials."""
    return scale_study(
        folder, flow={"steps": ["consent", *steps, "trials"]}, **sections
    )


def load(path: Path, registry: Registry) -> StudyConfig:
    return load_config(path, registry)


def serve(
    path: Path, database_url: str, registry: Registry, data_dir: Path
) -> ServedStudy:
    served = build_study(path, database_url, registry, data_dir)
    served.start()
    return served


def step_folder(served: ServedStudy, step_name: str) -> Path:
    """Return the folder of a step's generated files in a served study."""
    config = served.study.config
    step = served.study.registry.flow_steps[step_name]
    base = generated_dir(served.data_dir, config.name)
    return step.asset_dir(config.section(step_name), config, base)


def expected_answers(
    served: ServedStudy, step_name: str, public_id: str, attempt: int
) -> list[Any]:
    """Return the right answers of one attempt, in page order, from the server's key."""
    step = served.study.registry.flow_steps[step_name]
    key = json.loads((step_folder(served, step_name) / "key.json").read_text())
    with served.session_factory() as session:
        participant = session.scalars(
            select(Participant).where(Participant.public_id == public_id)
        ).one()
        entries = step.pick(served.study.config, participant, attempt, key)
    field = "tones" if step_name == "hearing_screening" else "quiet"
    return [entry[field] for entry in entries]


def only_participant(served: ServedStudy) -> Participant:
    with served.session_factory() as session:
        participant = session.scalars(select(Participant)).one()
        session.expunge(participant)
        return participant


def start_over_http(url: str) -> tuple[requests.Session, str, str]:
    """Arrive, agree to the consent and return (session, page URL, CSRF token)."""
    http = requests.Session()
    begun = http.post(f"{url}/lab/", allow_redirects=False)
    page_url = url + begun.headers["Location"]
    consent = http.get(page_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent.text).group(1)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    return http, page_url, csrf
