"""Gold items between the trials: schedule, answers, flags and the verdict."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from caqe_core.config import ConfigError
from caqe_core.models import Participant, ScreeningResult
from caqe_core.plugins import Registry
from caqe_core.screening.gold import pick_items, schedule
from caqe_core.study import generated_dir
from tests.screening.helpers import only_participant, screening_config, serve
from tests.support.server import ServedStudy


def _gold_key(served: ServedStudy) -> dict[str, Any]:
    folder = (
        generated_dir(served.data_dir, served.study.config.name) / "screening" / "gold"
    )
    return json.loads((folder / "key.json").read_text())


def _expected(served: ServedStudy) -> list[str]:
    participant = only_participant(served)
    return [
        entry["answer"]
        for entry in pick_items(served.study.config, participant, _gold_key(served))
    ]


def _trial(http: requests.Session, served: ServedStudy, page: str, number: int) -> None:
    match = re.search(
        r"<script id='trial' type='application/json'>(.*?)</script>", page
    )
    assert match, "expected a trial page"
    trial = json.loads(html.unescape(match.group(1)))
    body = {
        "idempotency_key": f"gold-test-{number:04d}",
        "response": {"ratings": {signal["id"]: 5 for signal in trial["signals"]}},
        "events": [],
    }
    stored = http.post(
        served.url + trial["submit"], json=body, headers={"X-CAQE-CSRF": trial["csrf"]}
    )
    assert stored.status_code == 200


def _start(served: ServedStudy) -> tuple[requests.Session, str, str]:
    http = requests.Session()
    begun = http.post(f"{served.url}/lab/", allow_redirects=False)
    page_url = served.url + begun.headers["Location"]
    consent = http.get(page_url).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent).group(1)
    notice = http.post(
        page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"}
    )
    assert 'id="gold-notice"' in notice.text
    http.post(page_url + "step/gold", data={"csrf_token": csrf})
    return http, page_url, csrf


def _gold_results(served: ServedStudy) -> list[ScreeningResult]:
    with served.session_factory() as session:
        rows = session.scalars(
            select(ScreeningResult)
            .where(ScreeningResult.step == "gold")
            .order_by(ScreeningResult.attempt)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


@pytest.fixture
def gold_study(
    tmp_path: Path, sqlite_url: str, registry: Registry, request: pytest.FixtureRequest
):
    section = {"rate": 1.0, **getattr(request, "param", {})}
    path = screening_config(tmp_path / "study", ["gold"], gold=section)
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        yield served
    finally:
        served.stop()


def test_gold_between_trials_then_flag(gold_study: ServedStudy) -> None:
    http, page_url, csrf = _start(gold_study)
    participant = only_participant(gold_study)
    assert schedule(gold_study.study.config, participant) == [1, 2]
    expected = _expected(gold_study)

    _trial(http, gold_study, http.get(page_url).text, 1)
    gold_page = http.get(page_url).text
    assert 'id="gold-question"' in gold_page
    assert "How many beeps do you hear?" in gold_page
    # The answer is not marked in the page: every option looks the same.
    assert gold_page.count("data-answer disabled") == 4
    # Reloading shows the same gold item until it is answered.
    assert http.get(page_url).text.count("data-answer disabled") == 4

    token_path = page_url.removeprefix(gold_study.url)
    invalid = http.post(
        gold_study.url + token_path + "gold", data={"csrf_token": csrf, "answer": "9"}
    )
    assert invalid.status_code == 422
    assert "Choose one of the answers." in invalid.text

    right = http.post(
        gold_study.url + token_path + "gold",
        data={"csrf_token": csrf, "answer": expected[0]},
    )
    _trial(http, gold_study, right.text, 2)
    wrong = str(int(expected[1]) % 4 + 1)
    done = http.post(
        gold_study.url + token_path + "gold", data={"csrf_token": csrf, "answer": wrong}
    )
    assert "Thank you" in done.text

    participant = only_participant(gold_study)
    assert participant.status == "completed"
    assert participant.flags == ["gold"]
    first, second = _gold_results(gold_study)
    assert first.passed is None
    assert first.data["correct"] is True
    assert first.data["outcome"] == "pending"
    assert second.passed is False
    assert second.data["correct"] is False
    assert second.data["answer"] == wrong
    assert second.data["expected"] == expected[1]
    assert second.data["outcome"] == "fail"
    assert second.data["items_total"] == 2


@pytest.mark.parametrize("gold_study", [{"on_fail": "end"}], indirect=True)
def test_gold_failure_can_end_session(gold_study: ServedStudy) -> None:
    http, page_url, csrf = _start(gold_study)
    expected = _expected(gold_study)
    _trial(http, gold_study, http.get(page_url).text, 1)
    wrong = str(int(expected[0]) % 4 + 1)
    ended = http.post(page_url + "gold", data={"csrf_token": csrf, "answer": wrong})
    assert "This session has ended" in ended.text
    participant = only_participant(gold_study)
    assert participant.status == "screened_out"
    assert participant.flags == []


@pytest.mark.parametrize("gold_study", [{"max_errors": 1}], indirect=True)
def test_gold_allows_max_errors(gold_study: ServedStudy) -> None:
    http, page_url, csrf = _start(gold_study)
    expected = _expected(gold_study)
    _trial(http, gold_study, http.get(page_url).text, 1)
    wrong = str(int(expected[0]) % 4 + 1)
    after = http.post(page_url + "gold", data={"csrf_token": csrf, "answer": wrong})
    _trial(http, gold_study, after.text, 2)
    http.post(page_url + "gold", data={"csrf_token": csrf, "answer": expected[1]})
    participant = only_participant(gold_study)
    assert participant.flags == []
    assert [row.passed for row in _gold_results(gold_study)] == [None, True]


def test_gold_after_trials_rejected(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    from tests.support.studies import scale_study

    path = scale_study(
        tmp_path / "study", flow={"steps": ["consent", "trials", "gold"]}
    )
    with pytest.raises(ConfigError) as error:
        serve(path, sqlite_url, registry, tmp_path / "data")
    assert "flow.steps" in str(error.value)
    assert "move 'gold' before 'trials'" in str(error.value)


def test_gold_item_answer_must_be_option(tmp_path: Path, registry: Registry) -> None:
    from caqe_core.config import load_config

    path = screening_config(
        tmp_path / "study",
        ["gold"],
        gold={
            "items": [
                {
                    "audio": "item0/system0.wav",
                    "question": "Q?",
                    "options": ["a", "b"],
                    "answer": "c",
                }
            ]
        },
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, registry)
    assert "gold.items[0]" in str(error.value)
    assert "answer 'c' is not one of the options" in str(error.value)


def test_configured_gold_items_used(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    item = {
        "audio": "item0/system0.wav",
        "question": "Which word?",
        "options": ["Bad", "Poor"],
        "answer": "Poor",
    }
    path = screening_config(
        tmp_path / "study", ["gold"], gold={"items": [item], "rate": 0.5}
    )
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        http, page_url, csrf = _start(served)
        participant = only_participant(served)
        [position] = schedule(served.study.config, participant)
        for number in range(1, position + 1):
            _trial(http, served, http.get(page_url).text, number)
        gold_page = http.get(page_url).text
        assert "Which word?" in gold_page
        http.post(page_url + "gold", data={"csrf_token": csrf, "answer": "Poor"})
        [row] = _gold_results(served)
        assert row.passed is True
        assert row.data["source"] == "config"
        assert row.data["item_key"] == "items[0]"
        with served.session_factory() as session:
            assert session.scalars(select(Participant)).one().flags == []
    finally:
        served.stop()
