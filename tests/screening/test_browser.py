"""The screening pages in headless Chromium over real HTTP: listen, answer, pass or fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from caqe_core.plugins import Registry
from tests.screening.helpers import (
    FAST_HEADPHONE,
    FAST_HEARING,
    expected_answers,
    only_participant,
    screening_config,
    serve,
)
from tests.support.server import ServedStudy

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(
    os.environ.get("CAQE_SCREENSHOTS", "/tmp/caqe-screening-screenshots")
)


@pytest.fixture
def study(tmp_path: Path, sqlite_url: str, registry: Registry) -> Iterator[ServedStudy]:
    path = screening_config(
        tmp_path / "study",
        ["hearing_screening", "headphone_check"],
        hearing_screening={**FAST_HEARING, "attempts": 2},
        headphone_check=FAST_HEADPHONE,
    )
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        yield served
    finally:
        served.stop()


def _arrive(page: Any, served: ServedStudy) -> None:
    page.goto(served.url + "/")
    page.click("#start")
    page.check("#agree")
    page.click("#continue")
    page.wait_for_selector("#calibration-play")


def _listen(page: Any, index: int, answer_selector: str) -> None:
    """Play one item to its end; its answer inputs unlock then."""
    page.click(f"#play-{index}")
    page.wait_for_selector(f"{answer_selector}:not([disabled])", timeout=15000)


def _hearing(page: Any, counts: list[int]) -> None:
    assert page.is_disabled("#play-1")
    page.click("#calibration-play")
    page.wait_for_selector("#play-1:not([disabled])")
    for index, count in enumerate(counts, start=1):
        assert page.is_disabled(f"#count-{index}")
        _listen(page, index, f"#count-{index}")
        page.fill(f"#count-{index}", str(count))
    page.click("#continue")


def _headphones(page: Any, answers: list[int], screenshot: str | None = None) -> None:
    page.wait_for_selector("text=Which tone is the quietest?")
    page.click("#calibration-play")
    for index, answer in enumerate(answers, start=1):
        _listen(page, index, f"#quietest-{index}-1")
        # Each trial plays once.
        assert page.is_disabled(f"#play-{index}")
        assert page.inner_text(f"#play-{index}") == "Played"
        page.check(f"#quietest-{index}-{answer}")
    if screenshot:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)
    page.click("#continue")


def test_listener_passes_both_checks(browser_page: Any, study: ServedStudy) -> None:
    page = browser_page
    _arrive(page, study)
    public_id = only_participant(study).public_id
    assert page.is_disabled("#continue")

    counts = expected_answers(study, "hearing_screening", public_id, 0)
    _hearing(page, counts)

    quietest = expected_answers(study, "headphone_check", public_id, 0)
    _headphones(page, quietest, screenshot="headphone-check.png")
    page.wait_for_selector("#question")

    participant = only_participant(study)
    assert participant.status == "active"
    assert participant.step == "trials"
    assert participant.flags == []


def test_listener_fails_hearing_twice(browser_page: Any, study: ServedStudy) -> None:
    page = browser_page
    _arrive(page, study)
    public_id = only_participant(study).public_id

    counts = expected_answers(study, "hearing_screening", public_id, 0)
    _hearing(page, [count + 2 for count in counts])
    page.wait_for_selector("#attempt-error")
    assert "Attempt 2 of 2" in page.inner_text("#attempt")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "hearing-retry.png"), full_page=True)

    counts = expected_answers(study, "hearing_screening", public_id, 1)
    _hearing(page, [count + 1 for count in counts])
    page.wait_for_selector("text=This session has ended")
    assert only_participant(study).status == "screened_out"


def test_listener_fails_headphone_check(browser_page: Any, study: ServedStudy) -> None:
    page = browser_page
    _arrive(page, study)
    public_id = only_participant(study).public_id
    _hearing(page, expected_answers(study, "hearing_screening", public_id, 0))

    right = expected_answers(study, "headphone_check", public_id, 0)
    # Two wrong answers: 4 of 6 is below the pass mark of 5.
    answers = [
        answer % 3 + 1 if index < 2 else answer for index, answer in enumerate(right)
    ]
    _headphones(page, answers)
    page.wait_for_selector("text=This session has ended")
    participant = only_participant(study)
    assert participant.status == "screened_out"


SUBMIT_SCALE_TRIAL = """async () => {
    // The 'scale' test page HTML-escapes its JSON inside the script element.
    const decoder = document.createElement("textarea");
    decoder.innerHTML = document.getElementById("trial").textContent;
    const trial = JSON.parse(decoder.value);
    const ratings = Object.fromEntries(trial.signals.map((signal) => [signal.id, 5]));
    const response = await fetch(trial.submit, {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CAQE-CSRF": trial.csrf},
        body: JSON.stringify({idempotency_key: "browser-" + trial.submit.slice(-16), response: {ratings}, events: []}),
    });
    return (await response.json()).next;
}"""


@pytest.mark.parametrize("right", [True, False])
def test_gold_item_in_browser(
    browser_page: Any, tmp_path: Path, sqlite_url: str, registry: Registry, right: bool
) -> None:
    from caqe_core.screening.gold import pick_items
    from tests.screening.test_gold import _gold_key

    path = screening_config(
        tmp_path / "study", ["gold"], gold={"rate": 0.5, "on_fail": "end"}
    )
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        page = browser_page
        page.goto(served.url + "/")
        page.click("#start")
        page.check("#agree")
        page.click("#continue")
        page.wait_for_selector("#gold-notice")
        page.click("#continue")
        participant = only_participant(served)
        [expected] = [
            entry["answer"]
            for entry in pick_items(served.study.config, participant, _gold_key(served))
        ]
        while not page.query_selector("#gold-question"):
            page.goto(served.url + page.evaluate(SUBMIT_SCALE_TRIAL))
        assert page.is_disabled("#answer-1")
        page.click("#play-1")
        page.wait_for_selector("#answer-1:not([disabled])", timeout=15000)
        choice = expected if right else str(int(expected) % 4 + 1)
        page.check(f"#answer-{choice}")
        if right:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "gold-item.png"), full_page=True)
        page.click("#continue")
        if right:
            page.wait_for_load_state()
            assert only_participant(served).status in ("active", "completed")
        else:
            page.wait_for_selector("text=This session has ended")
            assert only_participant(served).status == "screened_out"
    finally:
        served.stop()


def test_hearing_response_in_browser(
    browser_page: Any, tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    from sqlalchemy import select

    from caqe_core.models import ScreeningResult

    section = {"frequencies": [500, 2000], "runs": 2, "pulse_ms": 100, "floor_db": -40}
    path = screening_config(
        tmp_path / "study", ["hearing_response"], hearing_response=section
    )
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        page = browser_page
        page.goto(served.url + "/")
        page.click("#start")
        page.check("#agree")
        page.click("#continue")
        expected: dict[str, float] = {}
        for index in range(1, 5):
            run = page.locator(f"[data-run='{index}']")
            start = float(run.get_attribute("data-start"))
            field = page.locator(f"#level-{index}").get_attribute("name")
            run.locator("[data-action=play]").click()
            # Three steps down, one up, and down past the floor for the last run.
            presses = (
                ["softer"] * 3 + ["louder"] + (["softer"] * 20 if index == 4 else [])
            )
            for action in presses:
                run.locator(f"[data-action={action}]").click()
            run.locator("[data-action=done]").click()
            expected[field] = max(-40.0, start - 2 * 2 - (40 if index == 4 else 0))
        assert page.is_enabled("#continue")
        page.click("#continue")
        page.wait_for_selector("#question")
        with served.session_factory() as session:
            result = session.scalars(
                select(ScreeningResult).where(
                    ScreeningResult.step == "hearing_response"
                )
            ).one()
        assert result.passed is None
        for field, attenuation in expected.items():
            _, frequency, run_number = field.split("_")
            assert (
                result.data[f"threshold_{frequency}hz_run{run_number}_dbfs"]
                == -20 + attenuation
            )
        for frequency in ("500", "2000"):
            runs = [
                -20 + value
                for key, value in expected.items()
                if key.split("_")[1] == frequency
            ]
            assert result.data[f"threshold_{frequency}hz_dbfs"] == pytest.approx(
                sum(runs) / 2
            )
        assert result.data["floor_reached"] == 1
    finally:
        served.stop()
