"""Hostile input to the participant API and step forms over real HTTP.

Every request here is one a broken or malicious browser can send. The server
must answer with a 4xx naming the problem, never with a 500, and must not
store a value that later breaks the export.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from caqe_core.models import Trial
from caqe_core.plugins import Registry
from tests.adversarial.helpers import (
    agree,
    csrf_of,
    post_json_text,
    scale_body,
    scale_trial,
    serve,
    start_listener,
)
from tests.support.server import ServedStudy
from tests.support.studies import scale_study

# 10**400 is a valid JSON number that Python parses as an int too large to
# convert to a float, so math.isfinite() raises OverflowError on it.
HUGE_INTEGER = "1" + "0" * 400


def stored_trials(served: ServedStudy) -> int:
    with served.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Trial)) or 0


def test_huge_integer_event_time(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    text = json.dumps(scale_body(trial, "huge-event-time")).replace(
        '"time": 1.0', f'"time": {HUGE_INTEGER}'
    )

    answer = post_json_text(listener, trial, text)

    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["field"] == "events[0].time"
    assert stored_trials(served_scale) == 0


def test_huge_integer_time_on_page(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    text = json.dumps(scale_body(trial, "huge-time-on-page")).replace(
        '"time_on_page_ms": 2000', f'"time_on_page_ms": {HUGE_INTEGER}'
    )

    answer = post_json_text(listener, trial, text)

    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["field"] == "time_on_page_ms"


def test_huge_integer_extra_event_field(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    text = json.dumps(scale_body(trial, "huge-extra-field")).replace(
        '"time": 1.0', f'"time": 1.0, "volume": {HUGE_INTEGER}'
    )

    answer = post_json_text(listener, trial, text)

    assert answer.status_code in (200, 422), answer.text[:200]


def test_non_ascii_csrf_header(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)

    answer = listener.http.post(
        listener.base + trial["submit"],
        json=scale_body(trial, "non-ascii-csrf"),
        headers={"X-CAQE-CSRF": "\u00e9" * 32},
    )

    assert answer.status_code == 403, answer.text[:200]
    assert answer.json()["field"] == "X-CAQE-CSRF"


def test_non_ascii_csrf_form_field(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    listener.page()

    answer = listener.post_step("consent", {"csrf_token": "\u00e9", "agree": "yes"})

    assert answer.status_code == 403, answer.text[:200]


def test_lone_surrogate_idempotency_key(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    text = json.dumps(scale_body(trial, "placeholder-key")).replace(
        "placeholder-key", "\\udc80" * 10
    )

    answer = post_json_text(listener, trial, text)

    assert answer.status_code == 400, answer.text[:200]
    assert answer.json()["field"] == "idempotency_key"


def test_lone_surrogate_event_string(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    text = json.dumps(scale_body(trial, "surrogate-event")).replace(
        '"time": 1.0', '"time": 1.0, "note": "\\udc80"'
    )

    answer = post_json_text(listener, trial, text)

    assert answer.status_code in (400, 422), answer.text[:200]
    assert stored_trials(served_scale) == 0


@pytest.mark.parametrize(
    ("encoding", "prefix"),
    [
        ("utf-16", b""),
        ("utf-16-le", b""),
        ("utf-32", b""),
        ("utf-8", b"\xef\xbb\xbf"),
        ("latin-1", b""),
    ],
)
def test_body_not_plain_utf8(
    served_scale: ServedStudy, encoding: str, prefix: bytes
) -> None:
    """A body in UTF-16, UTF-32, Latin-1 or with a byte order mark gets a 400."""
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    body = scale_body(trial, "encoded-body-key")
    body["events"][0]["note"] = "caf\u00e9"
    data = prefix + json.dumps(body, ensure_ascii=False).encode(encoding)

    answer = listener.http.post(
        listener.base + trial["submit"],
        data=data,
        headers={"X-CAQE-CSRF": trial["csrf"], "Content-Type": "application/json"},
    )

    assert answer.status_code == 400, answer.text[:200]
    assert answer.json()["field"] == "body"
    assert stored_trials(served_scale) == 0


def test_body_utf8_accepted(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    body = scale_body(trial, "utf8-body-key-1")
    body["events"][0]["note"] = "caf\u00e9 \u97f3"

    answer = post_json_text(listener, trial, json.dumps(body, ensure_ascii=False))

    assert answer.status_code == 200, answer.text[:200]
    assert stored_trials(served_scale) == 1


@pytest.mark.postgres
def test_nul_idempotency_key_postgres(
    tmp_path: Path, postgres_url: str, registry: Registry
) -> None:
    config = scale_study(tmp_path / "study")
    with serve(config, postgres_url, registry, tmp_path / "data") as served:
        listener = start_listener(served.url)
        agree(listener)
        trial = scale_trial(listener)

        answer = listener.http.post(
            listener.base + trial["submit"],
            json=scale_body(trial, "nul\u0000key-0123"),
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )

    assert answer.status_code == 400, answer.text[:200]


def test_digit_limit_integer_rejected(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)
    trial = scale_trial(listener)
    # Python refuses to parse an int of more than 4300 digits as a DoS guard.
    text = json.dumps(scale_body(trial, "digit-limit")).replace(
        '"time": 1.0', f'"time": {"9" * 5000}'
    )

    answer = post_json_text(listener, trial, text)

    assert answer.status_code == 400
    assert answer.json()["field"] == "body"


def test_stale_step_form_replay(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    consent = listener.page()
    token = csrf_of(consent)
    agree(listener)
    before = listener.page()

    replayed = listener.post_step("consent", {"csrf_token": token, "agree": "yes"})

    assert replayed.status_code == 200
    assert replayed.text == before


def test_reload_keeps_signal_order(served_scale: ServedStudy) -> None:
    listener = start_listener(served_scale.url)
    agree(listener)

    first = scale_trial(listener)
    second = scale_trial(listener)

    assert first["signals"] == second["signals"]
    assert first["submit"] == second["submit"]
