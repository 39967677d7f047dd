"""Survey questions: config checks, answer validation and inclusion over HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from caqe_core.config import SurveyQuestion, SurveysConfig
from caqe_core.models import Participant, ScreeningResult, SurveyResponse
from caqe_core.plugins import Registry
from caqe_core.steps import validate_answers
from tests.support.server import build_study
from tests.support.studies import scale_study

QUESTIONS = [
    SurveyQuestion(id="age", type="number", text="Age", min=18, max=120, integer=True),
    SurveyQuestion(id="weight", type="number", text="Weight", required=False),
    SurveyQuestion(
        id="disorder", type="single", text="Disorder?", options=["no", "yes"]
    ),
    SurveyQuestion(
        id="devices", type="multiple", text="Devices", options=["earbuds", "headphones"]
    ),
    SurveyQuestion(
        id="noise", type="likert", text="Noise", options=["silent", "quiet", "noisy"]
    ),
    SurveyQuestion(
        id="comments", type="text", text="Comments", required=False, max_length=10
    ),
]

GOOD = {
    "age": "30",
    "weight": "",
    "disorder": "no",
    "devices": ["earbuds", "headphones"],
    "noise": "quiet",
    "comments": "fine",
}


def _validate(values: dict) -> tuple[dict, dict]:
    form = MultiDict()
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            form.add(key, item)
    return validate_answers(QUESTIONS, form, form.getlist)


def test_valid_answers_are_cleaned() -> None:
    answers, errors = _validate(GOOD)
    assert errors == {}
    assert answers == {
        "age": 30,
        "weight": None,
        "disorder": "no",
        "devices": ["earbuds", "headphones"],
        "noise": "quiet",
        "comments": "fine",
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("age", "", "This answer is required."),
        ("age", "abc", "'abc' is not a number."),
        ("age", "nan", "Enter a finite number."),
        ("age", "17", "Enter a number of at least 18."),
        ("age", "121", "Enter a number of at most 120."),
        ("age", "30.5", "Enter a whole number, not 30.5."),
        ("disorder", "maybe", "Choose one of the options."),
        ("disorder", "", "This answer is required."),
        ("devices", [], "Choose at least one option."),
        ("devices", ["earbuds", "tablet"], "'tablet' is not one of the options."),
        ("noise", "loud", "Choose one of the options."),
        ("comments", "x" * 11, "Keep the answer under 10 characters."),
    ],
)
def test_bad_answer_message(field: str, value: object, message: str) -> None:
    answers, errors = _validate({**GOOD, field: value})
    assert errors == {field: message}
    assert field not in answers


def test_every_bad_field_reported() -> None:
    _, errors = _validate({"age": "x", "disorder": "", "devices": [], "noise": "?"})
    assert set(errors) == {"age", "disorder", "devices", "noise"}


def test_multiple_choice_drops_repeats() -> None:
    answers, errors = _validate({**GOOD, "devices": ["earbuds", "earbuds"]})
    assert errors == {}
    assert answers["devices"] == ["earbuds"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            {"id": "q", "type": "single", "text": "Q", "options": ["a"]},
            "at least two options",
        ),
        ({"id": "q", "type": "likert", "text": "Q"}, "at least two options"),
        ({"id": "q", "type": "single", "text": "Q", "options": ["a", "a"]}, "twice"),
        (
            {"id": "q", "type": "text", "text": "Q", "options": ["a", "b"]},
            "takes no options",
        ),
        ({"id": "q", "type": "number", "text": "Q", "min": 5, "max": 1}, "above max"),
        ({"id": "q", "type": "text", "text": "Q", "max": 1}, "number questions only"),
    ],
)
def test_question_config_rejected(data: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as error:
        SurveyQuestion.model_validate(data)
    assert fragment in str(error.value)


def test_repeated_question_id_rejected() -> None:
    question = {"id": "age", "type": "number", "text": "Age"}
    with pytest.raises(ValidationError) as error:
        SurveysConfig.model_validate({"pre": [question, question]})
    assert error.value.errors()[0]["loc"] == ("pre", 1, "id")


def test_default_surveys_are_valid() -> None:
    surveys = SurveysConfig()
    assert [question.id for question in surveys.pre] == ["age", "hearing_disorder"]
    assert [question.id for question in surveys.post] == [
        "gender",
        "country",
        "listening_device",
        "critical_listening",
        "environment_noise",
        "comments",
    ]
    assert surveys.inclusion == []


# --- over HTTP ---------------------------------------------------------------


def _inclusion_study(tmp_path: Path, sqlite_url: str, registry: Registry):
    config = scale_study(
        tmp_path / "study",
        flow={"steps": ["consent", "pre_survey", "trials"]},
        surveys={"inclusion": ["age >= 21", 'hearing_disorder == "no"']},
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    return served


def _start(url: str) -> tuple[requests.Session, str, str]:
    http = requests.Session()
    begun = http.post(f"{url}/lab/", allow_redirects=False)
    page_url = url + begun.headers["Location"]
    consent = http.get(page_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent.text).group(1)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    return http, page_url, csrf


def test_survey_errors_over_http(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    served = _inclusion_study(tmp_path, sqlite_url, registry)
    try:
        http, page_url, csrf = _start(served.url)
        rejected = http.post(
            page_url + "step/pre_survey",
            data={"csrf_token": csrf, "age": "twelve", "hearing_disorder": "perhaps"},
        )
        assert rejected.status_code == 422
        assert "&#39;twelve&#39; is not a number." in rejected.text
        assert "Choose one of the options." in rejected.text
        # The rejected answer is shown again for correction.
        assert 'value="twelve"' in rejected.text
    finally:
        served.stop()


@pytest.mark.parametrize(
    ("age", "disorder", "status", "failed"),
    [
        ("30", "no", "active", ""),
        ("19", "no", "screened_out", "age >= 21"),
        ("40", "yes", "screened_out", 'hearing_disorder == "no"'),
    ],
)
def test_inclusion_over_http(
    tmp_path: Path,
    sqlite_url: str,
    registry: Registry,
    age: str,
    disorder: str,
    status: str,
    failed: str,
) -> None:
    served = _inclusion_study(tmp_path, sqlite_url, registry)
    try:
        http, page_url, csrf = _start(served.url)
        answered = http.post(
            page_url + "step/pre_survey",
            data={"csrf_token": csrf, "age": age, "hearing_disorder": disorder},
        )
        assert answered.status_code == 200
        with served.session_factory() as session:
            participant = session.scalars(select(Participant)).one()
            assert participant.status == status
            result = session.scalars(
                select(ScreeningResult).where(ScreeningResult.step == "pre_survey")
            ).one()
            assert result.passed is (not failed)
            assert result.data == {
                "criteria": 2,
                "failed_count": 1 if failed else 0,
                "failed_criteria": failed,
            }
            survey = session.scalars(select(SurveyResponse)).one()
            assert survey.answers["age"] == int(age)
        if failed:
            assert "This session has ended" in answered.text
        else:
            assert "id='question'" in answered.text
    finally:
        served.stop()
