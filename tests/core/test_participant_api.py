"""The participant pages and the trial response API over real HTTP.

A hostile or unlucky browser replays, races, forges and garbles requests.
Each gets a 4xx JSON error naming the field, the database keeps exactly one
row per trial, and the server never responds with 500 or logs an unexpected error.
"""

from __future__ import annotations

import html
import json
import logging
import re
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event, func, select

from caqe_core.models import Participant, Reservation, SurveyResponse, Trial
from caqe_core.plugins import Registry, set_registry
from caqe_core.web import MAX_REQUEST_BYTES
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study


@dataclass
class Listener:
    """One participant's HTTP session, standing on a trial page."""

    http: requests.Session
    base: str
    page_url: str

    def trial(self) -> dict[str, Any]:
        page = self.http.get(self.page_url)
        assert page.status_code == 200
        match = re.search(
            r"<script id='trial' type='application/json'>(.*?)</script>", page.text
        )
        assert match, "the page is a trial page"
        return json.loads(html.unescape(match.group(1)))

    def submit(
        self,
        trial: dict[str, Any],
        body: Any,
        headers: dict[str, str] | None = None,
        url: str | None = None,
    ) -> requests.Response:
        sent = {"X-CAQE-CSRF": trial["csrf"], **(headers or {})}
        target = url or self.base + trial["submit"]
        if isinstance(body, (bytes, str)) or callable(body):
            data = body() if callable(body) else body
            sent.setdefault("Content-Type", "application/json")
            return self.http.post(target, data=data, headers=sent)
        return self.http.post(target, json=body, headers=sent)


def csrf_of(page_html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match, "the page has a form with a CSRF token"
    return match.group(1)


def arrive(base: str) -> Listener:
    """Start a participant at the lab entry and agree to the consent form."""
    http = requests.Session()
    begun = http.post(f"{base}/lab/", allow_redirects=False)
    assert begun.status_code == 302
    page_url = base + begun.headers["Location"]
    consent = http.get(page_url)
    agreed = http.post(
        page_url + "step/consent",
        data={"csrf_token": csrf_of(consent.text), "agree": "yes"},
    )
    assert agreed.status_code == 200
    return Listener(http=http, base=base, page_url=page_url)


def good_body(trial: dict[str, Any], key: str = "key-0123456789") -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "response": {"ratings": {signal["id"]: 6 for signal in trial["signals"]}},
        "events": [
            {
                "type": "play",
                "time": 10.5,
                "position": 0.0,
                "signal": trial["signals"][0]["id"],
            }
        ],
        "time_on_page_ms": 5000,
    }


def count_trials(served: ServedStudy) -> int:
    with served.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Trial)) or 0


@pytest.fixture
def server_errors(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[list[logging.LogRecord]]:
    """Errors the app logged while the test ran; a test asserts there are none."""
    caplog.set_level(logging.WARNING, logger="caqe_core")
    records: list[logging.LogRecord] = []
    yield records
    records.extend(
        record for record in caplog.records if record.levelno >= logging.ERROR
    )
    assert not records, [record.getMessage() for record in records]


def test_reload_returns_same_trial(served_scale: ServedStudy) -> None:
    listener = arrive(served_scale.url)

    first = listener.trial()
    second = listener.trial()

    assert first["submit"] == second["submit"]
    assert first["signals"] == second["signals"]


def test_replay_stores_one_row(served_scale: ServedStudy, server_errors: list) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    body = good_body(trial)

    first = listener.submit(trial, body)
    second = listener.submit(trial, body)

    assert first.status_code == 200
    assert second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["stored"] is True
    assert count_trials(served_scale) == 1


def test_key_reused_for_another_trial_conflicts(
    served_scale: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_scale.url)
    first_trial = listener.trial()
    first = listener.submit(first_trial, good_body(first_trial))
    assert first.status_code == 200, first.text
    second_trial = listener.trial()
    assert second_trial["submit"] != first_trial["submit"]

    reused = listener.submit(second_trial, good_body(second_trial))

    assert reused.status_code == 409, reused.text
    assert reused.json()["field"] == "idempotency_key"
    assert count_trials(served_scale) == 1
    assert listener.trial()["submit"] == second_trial["submit"]


def test_concurrent_replays_store_one_row(
    served_scale: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    body = good_body(trial)
    barrier = threading.Barrier(8)
    answers: list[requests.Response] = []

    def replay() -> None:
        http = requests.Session()
        http.cookies.update(listener.http.cookies)
        barrier.wait()
        answers.append(
            http.post(
                listener.base + trial["submit"],
                json=body,
                headers={"X-CAQE-CSRF": trial["csrf"]},
            )
        )

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(answers) == 8
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({json.dumps(answer.json(), sort_keys=True) for answer in answers}) == 1
    assert count_trials(served_scale) == 1


def test_concurrent_distinct_keys_store_one_row(
    served_scale: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def submit(index: int) -> None:
        barrier.wait()
        codes.append(
            listener.submit(
                trial, good_body(trial, f"key-{index}-0123456789")
            ).status_code
        )

    threads = [threading.Thread(target=submit, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(codes) == [200, 409, 409, 409, 409, 409]
    assert count_trials(served_scale) == 1


def test_answered_trial_with_new_key(served_scale: ServedStudy) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    assert listener.submit(trial, good_body(trial)).status_code == 200

    again = listener.submit(trial, good_body(trial, "another-key-0123"))

    assert again.status_code == 409
    assert again.json()["field"] == "trial"
    assert count_trials(served_scale) == 1


def token_of(listener: Listener) -> str:
    return listener.page_url.removeprefix(listener.base).removeprefix("/p/").rstrip("/")


def reservation_of(trial: dict[str, Any]) -> str:
    return trial["submit"].rstrip("/").rsplit("/", 1)[1]


def test_trial_of_another_participant(
    served_scale: ServedStudy, server_errors: list
) -> None:
    owner = arrive(served_scale.url)
    intruder = arrive(served_scale.url)
    owner_trial = owner.trial()
    intruder_trial = intruder.trial()
    url = f"{served_scale.url}/api/p/{token_of(intruder)}/trials/{reservation_of(owner_trial)}"

    answer = intruder.submit(intruder_trial, good_body(owner_trial), url=url)

    assert answer.status_code == 403
    assert answer.json()["field"] == "trial"
    assert count_trials(served_scale) == 0


def test_other_participants_csrf_token(served_scale: ServedStudy) -> None:
    owner = arrive(served_scale.url)
    intruder = arrive(served_scale.url)
    trial = owner.trial()

    answer = owner.submit(
        trial, good_body(trial), headers={"X-CAQE-CSRF": intruder.trial()["csrf"]}
    )

    assert answer.status_code == 403
    assert answer.json()["field"] == "X-CAQE-CSRF"
    assert count_trials(served_scale) == 0


def _response(trial: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = good_body(trial)
    body.update(changes)
    return body


def _ratings(trial: dict[str, Any], value: Any) -> dict[str, Any]:
    first = trial["signals"][0]["id"]
    ratings = {signal["id"]: 5 for signal in trial["signals"]}
    ratings[first] = value
    return {"ratings": ratings}


def _event(trial: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    return [
        {
            "type": "switch",
            "time": 1.0,
            "position": 0.5,
            "to": trial["signals"][0]["id"],
            **fields,
        }
    ]


def _oversized() -> bytes:
    return json.dumps(
        {"idempotency_key": "k" * 20, "padding": "x" * MAX_REQUEST_BYTES}
    ).encode()


def _oversized_chunked() -> Iterator[bytes]:
    payload = _oversized()
    for start in range(0, len(payload), 65536):
        yield payload[start : start + 65536]


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    # (name, body builder taking the trial, status, field)
    ("malformed json", lambda trial: b'{"idempotency_key": "abc', 400, "body"),
    ("json array", lambda trial: [1, 2, 3], 400, "body"),
    ("deeply nested json", lambda trial: b"[" * 200_000, 400, "body"),
    ("invalid utf-8", lambda trial: b'{"idempotency_key": "\xff\xfe"}', 400, "body"),
    (
        "short idempotency key",
        lambda trial: _response(trial, idempotency_key="k"),
        400,
        "idempotency_key",
    ),
    (
        "numeric idempotency key",
        lambda trial: _response(trial, idempotency_key=1234567890),
        400,
        "idempotency_key",
    ),
    (
        "response as list",
        lambda trial: _response(trial, response=[1, 2]),
        422,
        "response",
    ),
    (
        "rating as text",
        lambda trial: _response(trial, response=_ratings(trial, "7")),
        422,
        None,
    ),
    (
        "rating above range",
        lambda trial: _response(trial, response=_ratings(trial, 11)),
        422,
        None,
    ),
    (
        "rating below range",
        lambda trial: _response(trial, response=_ratings(trial, -0.5)),
        422,
        None,
    ),
    (
        "rating as boolean",
        lambda trial: _response(trial, response=_ratings(trial, True)),
        422,
        None,
    ),
    (
        "rating not a number",
        lambda trial: json.dumps(
            _response(trial, response=_ratings(trial, 12345.678))
        ).replace("12345.678", "NaN"),
        400,
        "body",
    ),
    (
        "unknown signal rated",
        lambda trial: _response(
            trial, response={"ratings": {**_ratings(trial, 5)["ratings"], "s99": 5}}
        ),
        422,
        "response.ratings.s99",
    ),
    (
        "events as object",
        lambda trial: _response(trial, events={"type": "play"}),
        422,
        "events",
    ),
    ("event as number", lambda trial: _response(trial, events=[7]), 422, "events[0]"),
    (
        "unknown event type",
        lambda trial: _response(trial, events=_event(trial, type="explode")),
        422,
        "events[0].type",
    ),
    (
        "event type as list",
        lambda trial: _response(trial, events=_event(trial, type=["play"])),
        422,
        "events[0].type",
    ),
    (
        "negative event time",
        lambda trial: _response(trial, events=_event(trial, time=-1)),
        422,
        "events[0].time",
    ),
    (
        "event time as text",
        lambda trial: _response(trial, events=_event(trial, time="1")),
        422,
        "events[0].time",
    ),
    (
        "negative event position",
        lambda trial: _response(trial, events=_event(trial, position=-2)),
        422,
        "events[0].position",
    ),
    (
        "switch to unknown signal",
        lambda trial: _response(trial, events=_event(trial, to="s99")),
        422,
        "events[0].to",
    ),
    (
        "switch target as list",
        lambda trial: _response(trial, events=_event(trial, to=["s1"])),
        422,
        "events[0].to",
    ),
    (
        "switch source as object",
        lambda trial: _response(trial, events=_event(trial, **{"from": {"id": 1}})),
        422,
        "events[0].from",
    ),
    (
        "too many events",
        lambda trial: _response(trial, events=_event(trial) * 5001),
        422,
        "events",
    ),
    (
        "negative time on page",
        lambda trial: _response(trial, time_on_page_ms=-3),
        422,
        "time_on_page_ms",
    ),
    (
        "time on page as text",
        lambda trial: _response(trial, time_on_page_ms="soon"),
        422,
        "time_on_page_ms",
    ),
    (
        "lone surrogate in event field",
        lambda trial: _response(trial, events=_event(trial, note="\udc80")),
        400,
        "events[0].note",
    ),
    (
        "lone surrogate in key",
        lambda trial: _response(trial, events=_event(trial, **{"\ud800": 1})),
        400,
        "events[0]",
    ),
    (
        "nul in rating",
        lambda trial: _response(trial, response=_ratings(trial, "5\x00")),
        400,
        None,
    ),
    (
        "integer beyond float range",
        lambda trial: json.dumps(_response(trial, time_on_page_ms=7)).replace(
            '"time_on_page_ms": 7', '"time_on_page_ms": 1' + "0" * 400
        ),
        422,
        "time_on_page_ms",
    ),
    ("oversized body", lambda trial: _oversized(), 413, "body"),
    ("oversized chunked body", lambda trial: _oversized_chunked, 413, "body"),
]


@pytest.mark.parametrize(
    ("builder", "status", "field"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_submission(
    served_scale: ServedStudy,
    server_errors: list,
    builder: Any,
    status: int,
    field: str | None,
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()

    answer = listener.submit(trial, builder(trial))

    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.json()
    assert error["error"]
    if field is None:
        assert error["field"].startswith("response.ratings.")
    else:
        assert error["field"] == field
    assert count_trials(served_scale) == 0
    assert listener.submit(trial, good_body(trial)).status_code == 200


def test_wrong_content_type(served_scale: ServedStudy, server_errors: list) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()

    answer = listener.submit(
        trial, json.dumps(good_body(trial)), headers={"Content-Type": "text/plain"}
    )

    assert answer.status_code == 415
    assert answer.json()["field"] == "Content-Type"
    assert count_trials(served_scale) == 0


def test_form_encoded_submission(
    served_scale: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()

    answer = listener.http.post(
        listener.base + trial["submit"],
        data={"idempotency_key": "key-0123456789"},
        headers={"X-CAQE-CSRF": trial["csrf"]},
    )

    assert answer.status_code == 415
    assert answer.json()["field"] == "Content-Type"


@pytest.mark.parametrize("header", [None, "", "0" * 32, "not-a-token"])
def test_missing_or_wrong_csrf(
    served_scale: ServedStudy, server_errors: list, header: str | None
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    headers = {} if header is None else {"X-CAQE-CSRF": header}

    answer = listener.http.post(
        listener.base + trial["submit"], json=good_body(trial), headers=headers
    )

    assert answer.status_code == 403
    assert answer.json()["field"] == "X-CAQE-CSRF"
    assert count_trials(served_scale) == 0


@pytest.mark.parametrize("token", ["nonsense", "a" * 300, "InVhbmQi.forged-signature"])
def test_bad_participant_token(
    served_scale: ServedStudy, server_errors: list, token: str
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    url = f"{listener.base}/api/p/{token}/trials/{reservation_of(trial)}"

    answer = listener.submit(trial, good_body(trial), url=url)

    assert answer.status_code == 404
    assert answer.json()["field"] == "token"
    assert count_trials(served_scale) == 0


def _other_spellings(token: str) -> list[str]:
    """Return strings that itsdangerous decodes to the same signed token."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(token[-1])
    # A 20-byte signature is 27 base64 characters, and the last one carries
    # two unused low bits.
    same_bytes = alphabet[last ^ 1]
    return [token + "%C3%A9", token + "=", token[:-1] + same_bytes]


def test_other_token_spellings_rejected(
    served_scale: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    token = trial["submit"].split("/")[3]
    assert listener.http.get(listener.page_url).status_code == 200

    for spelling in _other_spellings(token):
        url = listener.base + trial["submit"].replace(token, spelling)
        answer = listener.submit(trial, good_body(trial), url=url)
        page = listener.http.get(listener.page_url.replace(token, spelling))

        assert answer.status_code == 404, spelling
        assert answer.json()["field"] == "token"
        assert page.status_code == 404, spelling
    assert count_trials(served_scale) == 0


@pytest.mark.parametrize("reservation", ["unknown-id", "x" * 500, "%00"])
def test_unknown_trial_id(
    served_scale: ServedStudy, server_errors: list, reservation: str
) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()
    base = trial["submit"].rstrip("/").rsplit("/", 1)[0]

    answer = listener.submit(
        trial, good_body(trial), url=f"{listener.base}{base}/{reservation}"
    )

    assert answer.status_code == 404
    assert answer.json()["field"] == "trial"


def test_get_on_submit_url(served_scale: ServedStudy) -> None:
    listener = arrive(served_scale.url)
    trial = listener.trial()

    answer = listener.http.get(listener.base + trial["submit"])

    assert answer.status_code == 405
    assert answer.json()["error"]


def test_unknown_participant_page(served_scale: ServedStudy) -> None:
    answer = requests.get(f"{served_scale.url}/p/not-a-token/")

    assert answer.status_code == 404
    assert "not valid" in answer.text


# --- Database round trips of the hot pages -------------------------------------


def test_nul_trial_id_on_database(
    served_on_database: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_on_database.url)
    trial = listener.trial()
    base = trial["submit"].rstrip("/").rsplit("/", 1)[0]

    answer = listener.submit(
        trial, good_body(trial), url=f"{listener.base}{base}/%C3%A9%00"
    )

    assert answer.status_code == 404, answer.text
    assert answer.json()["field"] == "trial"
    assert count_trials(served_on_database) == 0


@pytest.fixture
def served_on_database(
    tmp_path: Path, database_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    """The 'scale' study served from SQLite and from PostgreSQL."""
    served = build_study(
        scale_study(tmp_path / "study"), database_url, registry, tmp_path / "data"
    )
    served.start()
    set_registry(registry)
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


def _count_statements(served: ServedStudy, action: Any) -> list[str]:
    """Run ``action`` and return the SQL statements the server sent meanwhile."""
    engine = served.session_factory.kw["bind"]
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return statements


def test_trial_page_and_response_round_trips(
    served_on_database: ServedStudy, server_errors: list
) -> None:
    """A trial page is one read and one update; a response one read and three writes.

    Every statement is a round trip to the database. Under load, each one
    costs CPU in the web worker and in the database. The test fails when a
    change adds reads to the pages listeners load most.
    """
    listener = arrive(served_on_database.url)
    first = listener.trial()
    assert listener.submit(first, good_body(first, "first-key-0001")).status_code == 200
    trial: dict[str, Any] = {}

    def load() -> None:
        trial.update(listener.trial())

    page_statements = _count_statements(served_on_database, load)
    answer: list[requests.Response] = []
    response_statements = _count_statements(
        served_on_database,
        lambda: answer.append(
            listener.submit(trial, good_body(trial, "second-key-01"))
        ),
    )

    assert page_statements == ["SELECT", "UPDATE"]
    assert answer[0].status_code == 200
    assert response_statements == ["SELECT", "INSERT", "UPDATE", "INSERT"]
    assert count_trials(served_on_database) == 2


# --- Back and forward through the flow ----------------------------------------


@pytest.fixture
def served_survey_flow(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    config = scale_study(
        tmp_path / "study",
        flow={"steps": ["consent", "pre_survey", "trials", "post_survey"]},
        surveys={
            "pre": [
                {"id": "age", "type": "number", "text": "Age", "min": 18, "max": 99}
            ],
            "post": [
                {
                    "id": "comments",
                    "type": "text",
                    "text": "Comments",
                    "required": False,
                }
            ],
        },
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


def _step_of(served: ServedStudy, page_url: str) -> str:
    with served.session_factory() as session:
        participants = session.scalars(select(Participant)).all()
        assert len(participants) == 1
        return participants[0].step


def test_later_step_form_is_ignored(
    served_survey_flow: ServedStudy, server_errors: list
) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )
    csrf = csrf_of(http.get(page_url).text)

    skipped = http.post(
        page_url + "step/pre_survey",
        data={"csrf_token": csrf, "age": "30"},
        allow_redirects=False,
    )

    assert skipped.status_code == 303
    assert skipped.headers["Location"].endswith(
        page_url.removeprefix(served_survey_flow.url)
    )
    assert _step_of(served_survey_flow, page_url) == "consent"
    with served_survey_flow.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SurveyResponse)) == 0
    assert 'name="agree"' in http.get(page_url).text


def test_earlier_step_form_is_ignored(
    served_survey_flow: ServedStudy, server_errors: list
) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )
    csrf = csrf_of(http.get(page_url).text)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    assert _step_of(served_survey_flow, page_url) == "pre_survey"

    back = http.post(
        page_url + "step/consent",
        data={"csrf_token": csrf, "decline": "yes"},
        allow_redirects=False,
    )

    assert back.status_code == 303
    assert _step_of(served_survey_flow, page_url) == "pre_survey"
    with served_survey_flow.session_factory() as session:
        participant = session.scalars(select(Participant)).one()
        assert participant.status == "active"


def test_trials_step_cannot_be_skipped(
    served_survey_flow: ServedStudy, server_errors: list
) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )
    csrf = csrf_of(http.get(page_url).text)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    http.post(page_url + "step/pre_survey", data={"csrf_token": csrf, "age": "30"})
    assert _step_of(served_survey_flow, page_url) == "trials"

    for step in ("trials", "post_survey", "done"):
        answer = http.post(
            page_url + f"step/{step}", data={"csrf_token": csrf}, allow_redirects=False
        )
        assert answer.status_code == 303
        assert _step_of(served_survey_flow, page_url) == "trials"
    with served_survey_flow.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Trial)) == 0


def test_step_action_rejects_get(served_survey_flow: ServedStudy) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )

    for step in ("consent", "pre_survey", "trials", "post_survey"):
        assert http.get(page_url + f"step/{step}").status_code == 405
    assert _step_of(served_survey_flow, page_url) == "consent"


def test_step_form_without_csrf(served_survey_flow: ServedStudy) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )

    answer = http.post(
        page_url + "step/consent", data={"agree": "yes"}, allow_redirects=False
    )

    assert answer.status_code == 403
    assert _step_of(served_survey_flow, page_url) == "consent"


def test_survey_rejects_bad_answer(
    served_survey_flow: ServedStudy, server_errors: list
) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )
    csrf = csrf_of(http.get(page_url).text)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})

    for age in ("", "old", "12", "1e400", "nan"):
        answer = http.post(
            page_url + "step/pre_survey", data={"csrf_token": csrf, "age": age}
        )
        assert answer.status_code == 422, age
        assert _step_of(served_survey_flow, page_url) == "pre_survey"


def test_whole_flow_reaches_completion(
    served_survey_flow: ServedStudy, server_errors: list
) -> None:
    http = requests.Session()
    page_url = (
        served_survey_flow.url
        + http.post(f"{served_survey_flow.url}/lab/", allow_redirects=False).headers[
            "Location"
        ]
    )
    csrf = csrf_of(http.get(page_url).text)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    http.post(page_url + "step/pre_survey", data={"csrf_token": csrf, "age": "30"})
    listener = Listener(http=http, base=served_survey_flow.url, page_url=page_url)
    for index in range(2):
        trial = listener.trial()
        assert (
            listener.submit(
                trial, good_body(trial, f"key-{index}-0123456789")
            ).status_code
            == 200
        )
    assert 'name="comments"' in http.get(page_url).text
    assert _step_of(served_survey_flow, page_url) == "post_survey"

    http.post(
        page_url + "step/post_survey", data={"csrf_token": csrf, "comments": "fine"}
    )

    assert _step_of(served_survey_flow, page_url) == "done"
    assert "completion-code" in http.get(page_url).text
    with served_survey_flow.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Trial)) == 2
        assert (
            session.scalar(
                select(func.count())
                .select_from(Reservation)
                .where(Reservation.status == "completed")
            )
            == 2
        )


def test_finished_participant_posts_done(
    served_scale: ServedStudy, server_errors: list
) -> None:
    listener = arrive(served_scale.url)
    csrf = listener.trial()["csrf"]
    for index in range(2):
        trial = listener.trial()
        assert (
            listener.submit(
                trial, good_body(trial, f"key-{index}-0123456789")
            ).status_code
            == 200
        )
    assert "completion-code" in listener.http.get(listener.page_url).text

    for step in ("done", "consent", "trials"):
        answer = listener.http.post(
            listener.page_url + f"step/{step}",
            data={"csrf_token": csrf},
            allow_redirects=False,
        )
        assert answer.status_code == 303, step
    assert "completion-code" in listener.http.get(listener.page_url).text
