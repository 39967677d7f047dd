"""Hostile trial responses to the MUSHRA and pairwise test types over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from caqe_core.plugins import Registry
from tests.adversarial.helpers import (
    Listener,
    agree,
    mushra_settings,
    mushra_study,
    pairwise_settings,
    pairwise_study,
    serve,
    start_listener,
)

# A valid JSON number that Python parses as an int beyond float range.
HUGE_INTEGER = "1" + "0" * 400


def post_text(
    listener: Listener, settings: dict[str, Any], text: str
) -> requests.Response:
    return listener.http.post(
        listener.base + settings["submitUrl"],
        data=text.encode("utf-8"),
        headers={
            "X-CAQE-CSRF": settings["csrfToken"],
            "Content-Type": "application/json",
        },
    )


def mushra_body(settings: dict[str, Any], rating: Any = 50) -> dict[str, Any]:
    signals = [signal["id"] for signal in settings["signals"]]
    ratings = {signal: 50 for signal in signals}
    ratings[signals[0]] = rating
    return {
        "idempotency_key": "mushra-attack-0001",
        "response": {"ratings": ratings, "order": signals, "loop": None},
        "events": [],
        "time_on_page_ms": 1000,
    }


def test_mushra_huge_integer_rating(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = mushra_study(tmp_path / "study")
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        listener = start_listener(served.url)
        agree(listener)
        settings = mushra_settings(listener.page())
        text = json.dumps(mushra_body(settings, rating=12345)).replace(
            "12345", HUGE_INTEGER
        )

        answer = post_text(listener, settings, text)

    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["field"].startswith("response.ratings.")


@pytest.mark.parametrize("rating", [100.0001, -1e-9, "50", None, [50]])
def test_mushra_invalid_rating(
    tmp_path: Path, sqlite_url: str, registry: Registry, rating: Any
) -> None:
    config = mushra_study(tmp_path / "study")
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        listener = start_listener(served.url)
        agree(listener)
        settings = mushra_settings(listener.page())

        answer = post_text(
            listener, settings, json.dumps(mushra_body(settings, rating=rating))
        )

    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["field"].startswith("response.ratings.")


def pairwise_body(settings: dict[str, Any], decision: Any) -> dict[str, Any]:
    judgements = [
        {
            "pair": index,
            "a": pair["a"],
            "b": pair["b"],
            "choice": "a",
            "decision_time_ms": decision,
            "played_seconds": {"a": 2.0, "b": 2.0},
        }
        for index, pair in enumerate(settings["pairs"])
    ]
    return {
        "idempotency_key": "pairwise-attack-0001",
        "response": {"judgements": judgements},
        "events": [],
        "time_on_page_ms": 1000,
    }


def test_pairwise_huge_integer_decision_time(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = pairwise_study(tmp_path / "study")
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        listener = start_listener(served.url)
        agree(listener)
        settings = pairwise_settings(listener.page())
        text = json.dumps(pairwise_body(settings, decision=12345)).replace(
            "12345", HUGE_INTEGER
        )

        answer = post_text(listener, settings, text)

    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["field"] == "response.judgements[0].decision_time_ms"


def test_pairwise_forged_pair_rejected(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = pairwise_study(tmp_path / "study")
    with serve(config, sqlite_url, registry, tmp_path / "data") as served:
        listener = start_listener(served.url)
        agree(listener)
        settings = pairwise_settings(listener.page())
        body = pairwise_body(settings, decision=1500)
        first = body["response"]["judgements"][0]
        first["a"], first["b"] = first["b"], first["a"]

        answer = post_text(listener, settings, json.dumps(body))

    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["field"] == "response.judgements[0].pair"
