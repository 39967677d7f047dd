"""Stimulus audio over real HTTP: opaque URLs, Range requests and caching.

A listener who reads the page source, the URLs, the response headers or the
FLAC bytes must learn nothing about which system made a sound.
"""

from __future__ import annotations

import html
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile as sf
import yaml

from caqe_core.plugins import Registry, set_registry
from tests.support.server import ServedStudy, build_study
from tests.support.studies import SAMPLE_RATE

SECRET_NAMES = ["codec-alpha", "codec-bravo", "secret-song", "hidden-take"]
"""System, item and folder names that must never reach the listener."""


def write_tagged(path: Path, frequency: float, title: str) -> None:
    """Write a tone whose file carries tags that name the system."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, format="FLAC") as handle:
        handle.title = title
        handle.artist = f"{title} artist"
        handle.comment = f"made by {title}"
        handle.write(0.3 * np.sin(2 * np.pi * frequency * t))


def write_secret_study(folder: Path, frequency: float = 220.0) -> Path:
    items = []
    for item in ("secret-song", "hidden-take"):
        stimuli = {}
        for index, system in enumerate(("codec-alpha", "codec-bravo")):
            relative = f"{item}/{system}.flac"
            write_tagged(folder / "audio" / relative, frequency * (index + 1), system)
            stimuli[system] = relative
        items.append({"name": item, "stimuli": stimuli})
    config = {
        "experiment": {"name": "audio-study", "title": "Audio test"},
        "test_type": "scale",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": 2, "trials_per_condition": 5},
        "flow": {"steps": ["trials"]},
        "scale": {"question": "Rate each sound", "items": items},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def served_secret(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    served = build_study(
        write_secret_study(tmp_path / "study"), sqlite_url, registry, tmp_path / "data"
    )
    served.start()
    set_registry(registry)
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


def start_trial(base: str) -> tuple[requests.Session, str, dict[str, Any]]:
    """Start a participant and return the session, the trial page HTML and its data."""
    http = requests.Session()
    begun = http.post(f"{base}/lab/", allow_redirects=False)
    assert begun.status_code == 302
    page = http.get(base + begun.headers["Location"])
    assert page.status_code == 200
    match = re.search(
        r"<script id='trial' type='application/json'>(.*?)</script>", page.text
    )
    assert match, "the first page is a trial page"
    return http, page.text, json.loads(html.unescape(match.group(1)))


def assert_no_secret(text: str, where: str, paths: bool = True) -> None:
    """Fail if ``text`` names a system or item, or (with ``paths``) looks like a file path."""
    lowered = text.lower()
    for name in [*SECRET_NAMES, ".flac", *(["audio/"] if paths else [])]:
        assert name not in lowered, f"{name!r} appears in {where}"


def test_page_and_urls_hide_names(served_secret: ServedStudy) -> None:
    _, page, trial = start_trial(served_secret.url)

    assert_no_secret(page, "the trial page")
    for signal in trial["signals"]:
        assert signal["url"].startswith("/a/")
        assert_no_secret(signal["url"], "an audio URL")
        assert_no_secret(signal["id"], "a signal id")


def test_audio_response_hides_names(served_secret: ServedStudy) -> None:
    http, _, trial = start_trial(served_secret.url)

    for signal in trial["signals"]:
        answer = http.get(served_secret.url + signal["url"])
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "audio/wav"
        assert "Content-Disposition" not in answer.headers
        # Content-Type is audio/wav, so only names and extensions are checked.
        assert_no_secret(json.dumps(dict(answer.headers)), "the headers", paths=False)
        lowered = answer.content.lower()
        for name in SECRET_NAMES:
            assert name.encode() not in lowered, (
                f"{name!r} appears in the served audio bytes"
            )
        assert b"artist" not in lowered
        assert b"made by" not in lowered


def test_served_audio_is_the_stimulus(
    served_secret: ServedStudy, tmp_path: Path
) -> None:
    http, _, trial = start_trial(served_secret.url)
    sources = {
        path.stem: sf.read(str(path))[0]
        for path in (tmp_path / "study" / "audio").rglob("*.flac")
    }

    for signal in trial["signals"]:
        served = tmp_path / f"{signal['id']}.flac"
        served.write_bytes(http.get(served_secret.url + signal["url"]).content)
        data, rate = sf.read(str(served))
        assert rate == SAMPLE_RATE
        # The prepared copy is 16-bit: the same samples within one quantisation step.
        matches = [
            name
            for name, source in sources.items()
            if source.shape == data.shape and np.max(np.abs(source - data)) <= 1 / 32768
        ]
        assert matches, f"signal {signal['id']} matches no source file"


def test_range_request(served_secret: ServedStudy) -> None:
    http, _, trial = start_trial(served_secret.url)
    url = served_secret.url + trial["signals"][0]["url"]
    whole = http.get(url).content

    part = http.get(url, headers={"Range": "bytes=100-1099"})
    tail = http.get(url, headers={"Range": "bytes=-50"})
    beyond = http.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})

    assert part.status_code == 206
    assert part.content == whole[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
    assert part.headers["Accept-Ranges"] == "bytes"
    assert tail.status_code == 206
    assert tail.content == whole[-50:]
    assert beyond.status_code == 416


def test_caching_headers(served_secret: ServedStudy) -> None:
    http, _, trial = start_trial(served_secret.url)
    url = served_secret.url + trial["signals"][0]["url"]

    first = http.get(url)
    again = http.get(url, headers={"If-None-Match": first.headers["ETag"]})

    assert "max-age=86400" in first.headers["Cache-Control"]
    assert "private" in first.headers["Cache-Control"]
    assert first.headers["ETag"]
    assert first.headers["Last-Modified"]
    assert again.status_code == 304
    assert again.content == b""


def test_url_stable_per_participant(served_secret: ServedStudy) -> None:
    http, _, first = start_trial(served_secret.url)
    _, _, other = start_trial(served_secret.url)
    page = http.get(
        served_secret.url
        + first["submit"].replace("/api/p/", "/p/").rsplit("/trials/", 1)[0]
        + "/"
    )
    match = re.search(
        r"<script id='trial' type='application/json'>(.*?)</script>", page.text
    )
    assert match
    reloaded = json.loads(html.unescape(match.group(1)))

    assert reloaded["signals"] == first["signals"]
    first_urls = {signal["url"] for signal in first["signals"]}
    other_urls = {signal["url"] for signal in other["signals"]}
    assert not first_urls & other_urls, "two participants share an audio URL"


def _other_spelling_of_last_character(token: str) -> str:
    """Return ``token`` with the unused low bit of its last character flipped.

    32 sealed bytes take 43 base64 characters, so the last character carries
    two bits that decoding ignores.
    """
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet[alphabet.index(token[-1]) ^ 1]
    return token[:-1] + last


@pytest.mark.parametrize(
    "change",
    [
        "flip",
        "truncate",
        "extend",
        "garbage",
        "empty-ish",
        "inserted-dot",
        "padding",
        "low-bit",
    ],
)
def test_tampered_token(served_secret: ServedStudy, change: str) -> None:
    http, _, trial = start_trial(served_secret.url)
    token = trial["signals"][0]["url"].removeprefix("/a/")
    assert http.get(f"{served_secret.url}/a/{token}").status_code == 200
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    tampered = {
        "flip": flipped,
        "truncate": token[:-4],
        "extend": token + "AAAA",
        "garbage": "!!!not-base64!!!" * 3,
        "empty-ish": "A" * 20,
        # Other spellings of the same bytes: only the token as issued serves.
        "inserted-dot": token[:10] + "." + token[10:],
        "padding": token + "=",
        "low-bit": _other_spelling_of_last_character(token),
    }[change]

    answer = http.get(f"{served_secret.url}/a/{tampered}")

    assert answer.status_code == 404
    assert b"fLaC" not in answer.content
    assert b"RIFF" not in answer.content


def test_two_studies_in_one_process(tmp_path: Path, registry: Registry) -> None:
    """Each app serves its own files although both databases number stimuli from 1."""
    low = build_study(
        write_secret_study(tmp_path / "low", 220.0),
        f"sqlite:///{tmp_path / 'low.sqlite'}",
        registry,
        tmp_path / "low-data",
    )
    high = build_study(
        write_secret_study(tmp_path / "high", 440.0),
        f"sqlite:///{tmp_path / 'high.sqlite'}",
        registry,
        tmp_path / "high-data",
    )
    set_registry(registry)
    low.start()
    high.start()
    try:
        for name, study in (("low", low), ("high", high)):
            prepared = {
                path.read_bytes()
                for path in (tmp_path / f"{name}-data" / "prepared").glob("*.wav")
            }
            http, _, trial = start_trial(study.url)
            for signal in trial["signals"]:
                content = http.get(study.url + signal["url"]).content
                assert content in prepared, (
                    f"the {name} study served another study's file"
                )
    finally:
        low.stop()
        high.stop()
        set_registry(None)
