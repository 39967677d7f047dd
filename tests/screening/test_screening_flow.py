"""Hearing screening and headphone check over real HTTP: pass, retry, fail, flag, reuse."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from caqe_core.flow import start_participant
from caqe_core.models import Participant, ScreeningResult
from caqe_core.plugins import Registry
from caqe_core.web import participant_token
from tests.screening.helpers import (
    FAST_HEADPHONE,
    FAST_HEARING,
    expected_answers,
    only_participant,
    screening_config,
    serve,
    start_over_http,
)
from tests.support.server import ServedStudy


@pytest.fixture
def hearing_study(
    tmp_path: Path, database_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    path = screening_config(
        tmp_path / "study",
        ["hearing_screening", "headphone_check"],
        hearing_screening={**FAST_HEARING, "attempts": 2},
        headphone_check={**FAST_HEADPHONE, "on_fail": "flag"},
    )
    served = serve(path, database_url, registry, tmp_path / "data")
    try:
        yield served
    finally:
        served.stop()


def _results(served: ServedStudy, step: str) -> list[ScreeningResult]:
    with served.session_factory() as session:
        rows = session.scalars(
            select(ScreeningResult)
            .where(ScreeningResult.step == step)
            .order_by(ScreeningResult.attempt)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def _hearing_form(csrf: str, counts: list[int]) -> dict[str, str]:
    form = {"csrf_token": csrf}
    for index, count in enumerate(counts, start=1):
        form[f"count_{index}"] = str(count)
    return form


def _headphone_form(csrf: str, answers: list[int]) -> dict[str, str]:
    form = {"csrf_token": csrf}
    for index, answer in enumerate(answers, start=1):
        form[f"quietest_{index}"] = str(answer)
    return form


def test_screening_pass_then_flagged_headphones(hearing_study: ServedStudy) -> None:
    http, page_url, csrf = start_over_http(hearing_study.url)
    public_id = only_participant(hearing_study).public_id

    page = http.get(page_url).text
    # The page carries opaque audio URLs only: no file names, no counts.
    assert "stimulus-" not in page
    assert "key.json" not in page
    assert len(re.findall(r'data-play="/a/', page)) == 3

    counts = expected_answers(hearing_study, "hearing_screening", public_id, 0)
    passed = http.post(
        page_url + "step/hearing_screening", data=_hearing_form(csrf, counts)
    )
    assert passed.status_code == 200
    assert "Which tone is the quietest?" in passed.text

    right = expected_answers(hearing_study, "headphone_check", public_id, 0)
    wrong = [answer % 3 + 1 for answer in right]
    wrong[0] = right[0]
    flagged = http.post(
        page_url + "step/headphone_check", data=_headphone_form(csrf, wrong)
    )
    assert flagged.status_code == 200
    # on_fail: flag lets the listener go on to the trials.
    assert "id='question'" in flagged.text

    participant = only_participant(hearing_study)
    assert participant.status == "active"
    assert participant.flags == ["headphone_check"]

    [hearing] = _results(hearing_study, "hearing_screening")
    assert hearing.passed is True
    assert hearing.data["outcome"] == "pass"
    assert hearing.data["correct"] == 2
    assert hearing.data["required"] == 2
    assert hearing.data["item_1_expected"] == counts[0]
    assert hearing.data["item_1_answer"] == counts[0]
    assert all(not isinstance(value, (dict, list)) for value in hearing.data.values())

    [headphone] = _results(hearing_study, "headphone_check")
    assert headphone.passed is False
    assert headphone.data["outcome"] == "flag"
    assert headphone.data["correct"] == 1
    assert headphone.data["required"] == 5
    assert headphone.data["items"] == 6


def test_hearing_retry_then_fail_ends_session(hearing_study: ServedStudy) -> None:
    http, page_url, csrf = start_over_http(hearing_study.url)
    public_id = only_participant(hearing_study).public_id

    counts = expected_answers(hearing_study, "hearing_screening", public_id, 0)
    first = http.post(
        page_url + "step/hearing_screening",
        data=_hearing_form(csrf, [count + 1 for count in counts]),
    )
    assert first.status_code == 422
    assert "0 of 2 answers were right" in first.text
    assert "Attempt 2 of 2" in first.text
    # The old answers are not filled in for the new sounds.
    assert f'value="{counts[0] + 1}"' not in first.text

    second_counts = expected_answers(hearing_study, "hearing_screening", public_id, 1)
    answers = [second_counts[0], second_counts[1] + 1]
    second = http.post(
        page_url + "step/hearing_screening", data=_hearing_form(csrf, answers)
    )
    assert second.status_code == 200
    assert "This session has ended" in second.text

    participant = only_participant(hearing_study)
    assert participant.status == "screened_out"
    assert participant.flags == []
    rows = _results(hearing_study, "hearing_screening")
    assert [row.attempt for row in rows] == [1, 2]
    assert [row.passed for row in rows] == [False, False]
    assert [row.data["outcome"] for row in rows] == ["retry", "fail"]
    assert rows[1].data["correct"] == 1


def test_hearing_retry_then_pass(hearing_study: ServedStudy) -> None:
    http, page_url, csrf = start_over_http(hearing_study.url)
    public_id = only_participant(hearing_study).public_id
    http.post(page_url + "step/hearing_screening", data=_hearing_form(csrf, [0, 0]))
    counts = expected_answers(hearing_study, "hearing_screening", public_id, 1)
    passed = http.post(
        page_url + "step/hearing_screening", data=_hearing_form(csrf, counts)
    )
    assert "Which tone is the quietest?" in passed.text
    rows = _results(hearing_study, "hearing_screening")
    assert [row.passed for row in rows] == [False, True]


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"count_1": "", "count_2": "3"}, "count_1", "Enter how many tones you heard"),
        (
            {"count_1": "three", "count_2": "3"},
            "count_1",
            "is not a whole number from 0 to 50",
        ),
        (
            {"count_1": "2", "count_2": "2.5"},
            "count_2",
            "is not a whole number from 0 to 50",
        ),
    ],
)
def test_hearing_invalid_answer_not_counted(
    hearing_study: ServedStudy, form: dict[str, str], field: str, message: str
) -> None:
    http, page_url, csrf = start_over_http(hearing_study.url)
    rejected = http.post(
        page_url + "step/hearing_screening", data={"csrf_token": csrf, **form}
    )
    assert rejected.status_code == 422
    assert message in rejected.text
    # A malformed answer is no attempt: nothing is stored and the attempt stays 1.
    assert _results(hearing_study, "hearing_screening") == []
    assert "Attempt 1 of 2" in rejected.text


def test_headphone_answers_must_be_one_to_three(hearing_study: ServedStudy) -> None:
    http, page_url, csrf = start_over_http(hearing_study.url)
    public_id = only_participant(hearing_study).public_id
    counts = expected_answers(hearing_study, "hearing_screening", public_id, 0)
    http.post(page_url + "step/hearing_screening", data=_hearing_form(csrf, counts))
    answers = {f"quietest_{index}": "2" for index in range(1, 7)}
    answers["quietest_4"] = "4"
    rejected = http.post(
        page_url + "step/headphone_check", data={"csrf_token": csrf, **answers}
    )
    assert rejected.status_code == 422
    assert "Choose which tone was the quietest: 1, 2 or 3." in rejected.text


def test_pass_reused_by_same_person(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    path = screening_config(
        tmp_path / "study",
        ["hearing_screening"],
        hearing_screening={**FAST_HEARING, "valid_hours": 2},
    )
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        first = start_participant(
            served.session_factory, served.study, "local_lab", external_id="W1"
        )
        second = start_participant(
            served.session_factory, served.study, "local_lab", external_id="W1"
        )
        stranger = start_participant(
            served.session_factory, served.study, "local_lab", external_id="W2"
        )
        with served.session_factory() as session, session.begin():
            session.execute(update(Participant).values(step="hearing_screening"))
        with served.app.test_request_context():
            urls = {
                participant.public_id: f"{served.url}/p/{participant_token(participant.public_id)}/"
                for participant in (first, second, stranger)
            }

        import requests

        http = requests.Session()
        page = http.get(urls[first.public_id]).text
        assert 'id="reuse"' not in page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        counts = expected_answers(served, "hearing_screening", first.public_id, 0)
        http.post(
            urls[first.public_id] + "step/hearing_screening",
            data=_hearing_form(csrf, counts),
        )

        assert 'id="reuse"' not in http.get(urls[stranger.public_id]).text
        page = http.get(urls[second.public_id]).text
        assert 'id="reuse"' in page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        reused = http.post(
            urls[second.public_id] + "step/hearing_screening",
            data={"csrf_token": csrf, "reuse": "yes"},
        )
        assert "id='question'" in reused.text
        rows = _results(served, "hearing_screening")
        assert [row.passed for row in rows] == [True, True]
        assert rows[1].data == {"outcome": "reused", "reused_result_id": rows[0].id}

        # After valid_hours the pass no longer counts.
        third = start_participant(
            served.session_factory, served.study, "local_lab", external_id="W1"
        )
        with served.session_factory() as session, session.begin():
            session.execute(
                update(Participant)
                .where(Participant.id == third.id)
                .values(step="hearing_screening")
            )
            old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
            session.execute(update(ScreeningResult).values(created_at=old))
        with served.app.test_request_context():
            third_url = f"{served.url}/p/{participant_token(third.public_id)}/"
        assert 'id="reuse"' not in http.get(third_url).text
    finally:
        served.stop()
