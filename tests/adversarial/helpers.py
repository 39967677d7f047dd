"""Helpers for the adversarial tests: a participant over HTTP and small studies."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import soundfile as sf
import yaml

from tests.support.server import serve as serve  # imported by the adversarial tests

MUSHRA_RATE = 48000


@dataclass
class Listener:
    """One participant's HTTP session and the URL of their page."""

    http: requests.Session
    base: str
    page_url: str

    def page(self) -> str:
        response = self.http.get(self.page_url)
        assert response.status_code == 200, response.text[:300]
        return response.text

    def post_step(self, step: str, data: dict[str, str]) -> requests.Response:
        return self.http.post(f"{self.page_url}step/{step}", data=data)


def csrf_of(page_html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match, "the page has a form with a CSRF token"
    return match.group(1)


def start_listener(base: str) -> Listener:
    """Start a participant at the lab entry, standing on the first step."""
    http = requests.Session()
    begun = http.post(f"{base}/lab/", allow_redirects=False)
    assert begun.status_code == 302, begun.text[:300]
    return Listener(http=http, base=base, page_url=base + begun.headers["Location"])


def agree(listener: Listener) -> None:
    """Agree to the consent form, which leads to the trials in these studies."""
    consent = listener.page()
    agreed = listener.post_step(
        "consent", {"csrf_token": csrf_of(consent), "agree": "yes"}
    )
    assert agreed.status_code == 200, agreed.text[:300]


def scale_trial(listener: Listener) -> dict[str, Any]:
    """Return the settings of the 'scale' test type's trial page."""
    match = re.search(
        r"<script id='trial' type='application/json'>(.*?)</script>", listener.page()
    )
    assert match, "the page is a trial page of the 'scale' test type"
    return json.loads(html.unescape(match.group(1)))


def scale_body(trial: dict[str, Any], key: str) -> dict[str, Any]:
    """Return a valid response body for a 'scale' trial."""
    return {
        "idempotency_key": key,
        "response": {"ratings": {signal["id"]: 5 for signal in trial["signals"]}},
        "events": [{"type": "play", "time": 1.0, "signal": trial["signals"][0]["id"]}],
        "time_on_page_ms": 2000,
    }


def post_json_text(
    listener: Listener, trial: dict[str, Any], text: str
) -> requests.Response:
    """Post a raw JSON text, so that a test can send what json.dumps never writes."""
    return listener.http.post(
        listener.base + trial["submit"],
        data=text.encode("utf-8"),
        headers={"X-CAQE-CSRF": trial["csrf"], "Content-Type": "application/json"},
    )


def write_noise(path: Path, seed: int, seconds: float = 1.0) -> Path:
    rng = np.random.default_rng(seed)
    data = np.clip(0.2 * rng.standard_normal(round(seconds * MUSHRA_RATE)), -0.9, 0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, MUSHRA_RATE)
    return path


def mushra_study(folder: Path, **sections: Any) -> Path:
    """Write a one-page MUSHRA study of noise stimuli and return the config path.

    Keyword arguments replace top-level sections of the config.
    """
    write_noise(folder / "audio" / "reference.wav", seed=1)
    write_noise(folder / "audio" / "codec_x.wav", seed=2)
    write_noise(folder / "audio" / "codec_y.wav", seed=3)
    config: dict[str, Any] = {
        "experiment": {"name": "adversarial-mushra", "title": "MUSHRA"},
        "test_type": "mushra",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": 1, "trials_per_condition": 5},
        "flow": {"steps": ["consent", "trials"]},
        "mushra": {
            "items": [
                {
                    "name": "item0",
                    "reference": "reference.wav",
                    "systems": {"codec_x": "codec_x.wav", "codec_y": "codec_y.wav"},
                }
            ],
            "training": {"enabled": False},
        },
    }
    config.update(sections)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mushra_settings(page_html: str) -> dict[str, Any]:
    match = re.search(
        r'<script type="application/json" id="mushra-settings">(.*?)</script>',
        page_html,
        re.DOTALL,
    )
    assert match, "the page is a MUSHRA trial page"
    return json.loads(match.group(1))


def pairwise_study(folder: Path, **sections: Any) -> Path:
    """Write a one-page pairwise study of noise stimuli and return the config path.

    Keyword arguments replace top-level sections of the config.
    """
    systems = {}
    write_noise(folder / "audio" / "reference.wav", seed=1)
    for index, name in enumerate(["codec_x", "codec_y", "codec_z"]):
        write_noise(folder / "audio" / f"{name}.wav", seed=index + 2)
        systems[name] = f"{name}.wav"
    config: dict[str, Any] = {
        "experiment": {"name": "adversarial-pairwise", "title": "Pairwise"},
        "test_type": "pairwise",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": 1, "trials_per_condition": 5},
        "flow": {"steps": ["consent", "trials"]},
        "pairwise": {
            "items": [
                {"name": "item0", "reference": "reference.wav", "systems": systems}
            ],
            "pairs_per_participant": 3,
            "repeats": 0,
        },
    }
    config.update(sections)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pairwise_settings(page_html: str) -> dict[str, Any]:
    match = re.search(
        r'<script type="application/json" id="pairwise-settings">(.*?)</script>',
        page_html,
        re.DOTALL,
    )
    assert match, "the page is a pairwise trial page"
    return json.loads(match.group(1))
