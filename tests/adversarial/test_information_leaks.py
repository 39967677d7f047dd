"""What a listener can learn about the conditions without listening.

A MUSHRA page must not tell which signal is the hidden reference or an
anchor, and a completion code must prove that the participant finished.
"""

from __future__ import annotations

import base64
import hashlib
import json
from contextlib import AbstractContextManager
from pathlib import Path

import requests

from caqe_core.plugins import Registry
from tests.adversarial.helpers import (
    Listener,
    agree,
    mushra_settings,
    mushra_study,
    scale_body,
    scale_trial,
    serve,
    start_listener,
)
from tests.support.server import ServedStudy

HIDDEN_NAMES = ["codec_x", "codec_y", "hidden_reference", "lowpass", "reference.wav"]


def mushra_page(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> AbstractContextManager[ServedStudy]:
    """Serve a one-page MUSHRA study for the duration of a with block."""
    return serve(mushra_study(tmp_path / "study"), sqlite_url, registry, tmp_path / "d")


def fetch_signals(listener: Listener) -> tuple[str, dict[str, requests.Response]]:
    """Return the page source and the audio response of every signal on it."""
    page = listener.page()
    settings = mushra_settings(page)
    signals = [settings["reference"], *settings["signals"]]
    responses = {
        signal["id"]: listener.http.get(listener.base + signal["url"])
        for signal in signals
    }
    for signal_id, response in responses.items():
        assert response.status_code == 200, signal_id
    return page, responses


def test_mushra_page_hides_names(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    with mushra_page(tmp_path, sqlite_url, registry) as served:
        listener = start_listener(served.url)
        agree(listener)
        page, responses = fetch_signals(listener)

    for name in HIDDEN_NAMES:
        assert name not in page
        for response in responses.values():
            assert name not in str(response.headers)
            assert name.encode() not in response.content


def test_hidden_reference_not_identifiable(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    with mushra_page(tmp_path, sqlite_url, registry) as served:
        listener = start_listener(served.url)
        agree(listener)
        _page, responses = fetch_signals(listener)

    reference = responses.pop("ref")
    reference_digest = hashlib.sha256(reference.content).hexdigest()
    for signal_id, response in responses.items():
        assert response.headers.get("ETag") != reference.headers.get("ETag"), signal_id
        assert hashlib.sha256(response.content).hexdigest() != reference_digest, (
            signal_id
        )
        assert (
            response.headers["Content-Length"] != reference.headers["Content-Length"]
        ), signal_id


def test_signal_sizes_do_not_rank(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    with mushra_page(tmp_path, sqlite_url, registry) as served:
        listener = start_listener(served.url)
        agree(listener)
        _page, responses = fetch_signals(listener)

    sizes = {
        signal_id: int(response.headers["Content-Length"])
        for signal_id, response in responses.items()
    }
    # The salted padding of prepare_copy() varies sizes by up to about 2 kB,
    # so equal sizes up to 5 % of the largest file leak nothing useful.
    assert min(sizes.values()) >= 0.95 * max(sizes.values()), sizes


def public_id_of(page_url: str) -> str:
    """Decode the participant id that itsdangerous signs into the page URL."""
    token = page_url.rstrip("/").rsplit("/", 1)[1]
    payload = token.split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return json.loads(decoded)


def finish(listener: Listener) -> str:
    """Answer every trial of a 'scale' study and return the completion page."""
    for number in range(10):
        page = listener.page()
        if "<script id='trial'" not in page:
            return page
        trial = scale_trial(listener)
        answer = listener.http.post(
            listener.base + trial["submit"],
            json=scale_body(trial, f"finish-{number:04d}"),
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )
        assert answer.status_code == 200, answer.text[:200]
    raise AssertionError("the study did not end after 10 trials")


def test_completion_code_not_in_url(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    guessed = public_id_of(listener.page_url)[:10].upper()
    agree(listener)

    completion = finish(listener)

    assert "completion code" in completion.lower()
    assert guessed not in completion
