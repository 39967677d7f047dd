"""Inclusion criteria: the whitelist parser, the type check and evaluation.

The ``caqe validate`` cases run the real command line on a written config,
so a criterion that tries to run code is rejected with file, line and key
before any study is served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from caqe_core.cli import cli
from caqe_core.plugins import Registry, set_registry
from caqe_core.screening.inclusion import (
    CriterionError,
    QuestionInfo,
    check_criterion,
    criterion_names,
    evaluate_criterion,
    failed_criteria,
    parse_criterion,
)
from tests.support.studies import write_tone

QUESTIONS = {
    "age": QuestionInfo("number"),
    "hearing_disorder": QuestionInfo("single", ("no", "yes")),
    "devices": QuestionInfo("multiple", ("earbuds", "headphones", "speakers")),
    "experience": QuestionInfo("likert", ("none", "some", "much")),
    "country": QuestionInfo("text"),
}

CODE_RUNNING = [
    ("__import__('os').system('x')", "a function call"),
    ("age.real > 1", "attribute access"),
    ("print(age) == 1", "a function call"),
    ("(lambda: 1)() == 1", "a function call"),
    ("(lambda: 1) == 1", "a lambda"),
    ("[x for x in (1, 2)] == [1]", "a comprehension"),
    ("{x for x in (1, 2)} == 1", "a comprehension"),
    ("(x for x in (1,)) == 1", "a generator expression"),
    ("age[0] == 1", "a subscript"),
    ("age + 1 > 2", "arithmetic"),
    ("(age := 5) > 1", "an assignment expression"),
    ("f'{age}' == '1'", "an f-string"),
    ("__builtins__ == 1", "'__builtins__'"),
    ("age == (1 if True else 2)", "a conditional expression"),
    ("age in {1: 2}", "a dict"),
    ("age in (print(), 1)", "a function call"),
]


@pytest.mark.parametrize(("source", "construct"), CODE_RUNNING)
def test_parser_rejects_code(source: str, construct: str) -> None:
    with pytest.raises(CriterionError) as error:
        parse_criterion(source)
    assert construct in str(error.value)


@pytest.mark.parametrize(
    "source",
    [
        "age >= 18",
        'hearing_disorder == "no"',
        '18 <= age < 100 and not hearing_disorder == "yes"',
        '"earbuds" not in devices or country == "DE"',
        'country in ("DE", "FR")',
        "age >= -5",
    ],
)
def test_parser_accepts_criteria(source: str) -> None:
    check_criterion(source, QUESTIONS)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("agee >= 18", "did you mean 'age'"),
        ('age >= "18"', "compare it with a number"),
        ('hearing_disorder == "No"', "did you mean 'no'"),
        ('devices == "earbuds"', "test one option"),
        ('"tablet" in devices', "not one of its options"),
        ('experience > "none"', "use ==, != or in"),
        ('"x" in age', "no multiple-choice question"),
        ("hearing_disorder == 1", "in quotes"),
        ("age", "bare name"),
        ("age >= 18 or", "not a valid expression"),
        ("", "non-empty"),
        ("(age > 1) == True", "result of a comparison"),
    ],
)
def test_type_check_rejects(source: str, fragment: str) -> None:
    with pytest.raises(CriterionError) as error:
        check_criterion(source, QUESTIONS)
    assert fragment in str(error.value)


def test_criterion_names_in_order() -> None:
    assert criterion_names('hearing_disorder == "no" and age > 1') == [
        "hearing_disorder",
        "age",
    ]


@pytest.mark.parametrize(
    ("source", "answers", "expected"),
    [
        ("age >= 18", {"age": 18}, True),
        ("age >= 18", {"age": 17}, False),
        ("age >= 18", {"age": None}, False),
        ("age >= 18", {}, False),
        ("not age >= 18", {}, True),
        ("18 <= age < 30", {"age": 29.5}, True),
        ("18 <= age < 30", {"age": 30}, False),
        ('hearing_disorder == "no"', {"hearing_disorder": "no"}, True),
        ('hearing_disorder != "no"', {"hearing_disorder": "no"}, False),
        ('"earbuds" in devices', {"devices": ["earbuds", "speakers"]}, True),
        ('"earbuds" in devices', {"devices": []}, False),
        ('"earbuds" not in devices', {"devices": ["speakers"]}, True),
        ('country in ("DE", "FR")', {"country": "FR"}, True),
        ('country not in ("DE", "FR")', {"country": "US"}, True),
        (
            'age > 60 or hearing_disorder == "yes"',
            {"age": 20, "hearing_disorder": "yes"},
            True,
        ),
        (
            'age > 60 and hearing_disorder == "yes"',
            {"age": 20, "hearing_disorder": "yes"},
            False,
        ),
        ("age == 'x'", {"age": 3}, False),
        ("age != 'x'", {"age": 3}, True),
    ],
)
def test_evaluate_criterion(source: str, answers: dict, expected: bool) -> None:
    assert evaluate_criterion(source, answers) is expected


def test_failed_criteria_keeps_order() -> None:
    criteria = ["age >= 18", 'hearing_disorder == "no"', "age < 100"]
    answers = {"age": 16, "hearing_disorder": "yes"}
    assert failed_criteria(criteria, answers) == criteria[:2]


# --- caqe validate -----------------------------------------------------------

STUDY = """\
experiment:
  name: scale-study
  title: Scale test
test_type: scale
audio:
  root: audio
flow:
  steps: [consent, pre_survey, trials]
surveys:
  inclusion:
    - age >= 18
    - {criterion}
scale:
  items:
    - name: item0
      stimuli:
        system0: item0/system0.wav
        system1: item0/system1.wav
"""


@pytest.fixture
def run_validate(
    registry: Registry, tmp_path: Path
) -> Iterator[Callable[[str], tuple[int, str]]]:
    set_registry(registry)
    for index, system in enumerate(("system0", "system1")):
        write_tone(tmp_path / "audio" / "item0" / f"{system}.wav", 220.0 * (index + 1))
    runner = CliRunner()

    def run(criterion: str) -> tuple[int, str]:
        path = tmp_path / "study.yaml"
        quoted = "'" + criterion.replace("'", "''") + "'"
        path.write_text(STUDY.format(criterion=quoted))
        result = runner.invoke(cli, ["validate", str(path)])
        return result.exit_code, result.output

    try:
        yield run
    finally:
        set_registry(None)


def test_validate_accepts_criteria(
    run_validate: Callable[[str], tuple[int, str]],
) -> None:
    code, output = run_validate('hearing_disorder == "no"')
    assert code == 0, output
    assert "valid" in output


@pytest.mark.parametrize(("source", "construct"), CODE_RUNNING)
def test_validate_rejects_code(
    run_validate: Callable[[str], tuple[int, str]], source: str, construct: str
) -> None:
    code, output = run_validate(source)
    assert code != 0
    # The criterion is the second item, on line 12 of the config.
    assert "study.yaml:12: surveys.inclusion[1]:" in output
    assert construct in output


def test_validate_rejects_unknown_question(
    run_validate: Callable[[str], tuple[int, str]],
) -> None:
    code, output = run_validate("hearing == 'no'")
    assert code != 0
    assert "study.yaml:12: surveys.inclusion[1]:" in output
    assert "did you mean 'hearing_disorder'" in output
