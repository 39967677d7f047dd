"""A participant completes the pairwise demo in Chromium over real HTTP.

The study is the shipped demo with a shorter listening minimum. The browser
listens, answers with the mouse and with the keyboard shortcuts, and the
stored judgements are then exported with ``caqe results export``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from caqe_pairwise.responses import heard_seconds_from_events
from click.testing import CliRunner
from sqlalchemy import select

from caqe_core.cli import build_cli
from caqe_core.models import ListeningEvent, Participant, Reservation, Trial
from caqe_core.plugins import Registry
from tests.support.server import ServedStudy, serve

DEMO_CONFIG = (
    Path(__file__).resolve().parents[2] / "plugins" / "pairwise" / "demo" / "demo.yaml"
)
CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MIN_PLAY_SECONDS = 0.3
# Each play, switch and stop becomes audible about 30 ms plus one 5 ms fade
# after its event, so the events may show slightly less listening than the
# audio engine measured.
EVENT_SLACK_SECONDS = 0.15
PAGES = 2
EXPORT_COLUMNS = (
    "participant",
    "item",
    "scale",
    "stimulus_a",
    "stimulus_b",
    "order_shown",
    "choice",
    "system",
    "repeat",
    "decision_time_ms",
)


@pytest.fixture
def served_demo(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    """The pairwise demo, two pages per participant, served on loopback."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["pairwise"]["min_play_seconds"] = MIN_PLAY_SECONDS
    config["flow"]["steps"] = ["consent", "trials"]
    config["assignment"]["conditions_per_participant"] = PAGES
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    with serve(path, sqlite_url, registry, tmp_path / "data") as served:
        yield served


@pytest.fixture(scope="module")
def browser(playwright_instance: Any) -> Iterator[Any]:
    if not CHROMIUM_PATH.exists():
        message = f"Chromium not found at {CHROMIUM_PATH}; install Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    playwright = playwright_instance
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


def listen_until_heard(page: Any, side: str, use_key: bool) -> None:
    """Play A or B until the page counts it as heard on this pair."""
    if use_key:
        page.keyboard.press(side)
    else:
        page.click(f"#pairwise-select-{side}")
    page.wait_for_selector(
        f"#pairwise-select-{side}.pairwise-select--heard", timeout=10_000
    )


def answer_pair(page: Any, number: int) -> str:
    """Listen to A and B and answer; odd pairs use the keyboard shortcuts."""
    use_keys = number % 2 == 1
    choice_a = page.locator("#pairwise-choice-a")
    assert choice_a.is_disabled(), "no answer before A and B were heard"

    listen_until_heard(page, "a", use_keys)
    if page.locator("#pairwise-select-ref").count():
        page.keyboard.press("r")
        assert page.get_attribute("#pairwise-select-ref", "aria-pressed") == "true"
    assert choice_a.is_disabled(), "no answer before B was heard"
    listen_until_heard(page, "b", use_keys)
    assert choice_a.is_enabled()

    choice = ("a", "b", "none")[number % 3]
    if use_keys:
        page.keyboard.press({"a": "1", "b": "2", "none": "n"}[choice])
    else:
        page.click(f"#pairwise-choice-{choice}")
    assert page.get_attribute(f"#pairwise-choice-{choice}", "aria-pressed") == "true"

    if use_keys:
        page.locator("body").focus()
        page.keyboard.press("Enter")
    else:
        page.click("#pairwise-next")
    return choice


def open_first_page(browser: Any, base_url: str) -> tuple[Any, Any, list[str]]:
    """Start a participant in a new browser context and agree to the consent.

    Returns the context, the page, which is loading the first trial, and the
    list that collects the page's script errors.
    """
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base_url}/")
    page.click("#start")
    page.check("#agree")
    page.click("#continue")
    return context, page, errors


def test_participant_completes_demo_in_chromium(
    served_demo: ServedStudy, browser: Any, sqlite_url: str, tmp_path: Path
) -> None:
    context, page, errors = open_first_page(browser, served_demo.url)

    answers: list[str] = []
    for page_number in range(PAGES):
        page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
        assert page.inner_text("#pairwise-progress") == f"Page {page_number + 1} of 2"
        if page_number == 0:
            page.screenshot(path=str(tmp_path / "pairwise-page.png"), full_page=True)
            # Space on a focused button plays or stops once; its click on
            # keyup must not undo that.
            page.focus("#pairwise-play")
            page.keyboard.press(" ")
            assert page.inner_text("#pairwise-play") == "Stop"
            page.keyboard.press(" ")
            assert page.inner_text("#pairwise-play") == "Play"
        title = page.inner_text("#pairwise-pair-title")
        pairs = int(title.rsplit(" ", 1)[1])
        for number in range(pairs - 1):
            assert page.inner_text("#pairwise-pair-title") == (
                f"Pair {number + 1} of {pairs}"
            )
            answers.append(answer_pair(page, len(answers)))
        assert page.inner_text("#pairwise-next") == "Submit and continue"
        # The last pair's answer submits the page, which then loads the next one.
        with page.expect_navigation(timeout=20_000):
            answers.append(answer_pair(page, len(answers)))

    page.wait_for_selector("text=Thank you", timeout=20_000)
    context.close()
    assert errors == []

    with served_demo.session_factory() as session:
        participant = session.scalars(select(Participant)).one()
        trials = session.execute(
            select(Trial, Reservation.plan)
            .join(Reservation, Trial.reservation_id == Reservation.id)
            .order_by(Reservation.position)
        ).all()
        choice_events = session.scalars(
            select(ListeningEvent).where(ListeningEvent.type == "choice")
        ).all()
        stored_events = {
            trial.id: [
                {"type": event.type, "time": event.time_ms, **event.data}
                for event in session.scalars(
                    select(ListeningEvent)
                    .where(ListeningEvent.trial_id == trial.id)
                    .order_by(ListeningEvent.sequence)
                )
            ]
            for trial, _ in trials
        }
    planned = sum(len(plan["pairs"]) for _, plan in trials)
    assert len(trials) == PAGES
    assert planned == len(answers)
    assert len(choice_events) == len(answers)

    # The events the page logged account for the listening it reported: the
    # server's check must not reject an honest page.
    for trial, plan in trials:
        heard = heard_seconds_from_events(stored_events[trial.id])
        for judgement in trial.response["judgements"]:
            pair = plan["pairs"][judgement["pair"]]
            for side in ("a", "b"):
                reported = judgement["played_seconds"][side]
                assert reported >= MIN_PLAY_SECONDS
                from_events = heard.get((judgement["pair"], pair[side]), 0.0)
                assert from_events >= reported - EVENT_SLACK_SECONDS, (
                    judgement,
                    side,
                    from_events,
                )

    out_dir = tmp_path / "export"
    result = CliRunner().invoke(
        build_cli(),
        [
            "results",
            "export",
            "--database-url",
            sqlite_url,
            "--out",
            str(out_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    ratings = pd.read_csv(out_dir / "ratings.csv")
    for column in EXPORT_COLUMNS:
        assert column in ratings.columns, column
    assert len(ratings) == len(answers)
    assert set(ratings["participant"]) == {participant.public_id}
    assert ratings["choice"].tolist() == answers
    assert (ratings["stimulus_a"] != ratings["stimulus_b"]).all()
    assert ratings["decision_time_ms"].gt(0).all()
    chosen = ratings.apply(
        lambda row: {"a": row["stimulus_a"], "b": row["stimulus_b"]}.get(row["choice"]),
        axis=1,
    )
    assert ratings["system"].fillna("none").tolist() == chosen.fillna("none").tolist()
    for _, group in ratings.groupby("condition"):
        assert group["order_shown"].tolist() == list(range(1, len(group) + 1))
        assert group["repeat"].sum() == 1


def pairwise_draft_key(page: Any) -> str:
    return page.evaluate(
        """() => "caqe.draft." + JSON.parse(
            document.getElementById("pairwise-settings").textContent).submitUrl"""
    )


def stored_drafts(page: Any) -> list[str]:
    return page.evaluate(
        """() => Object.keys(localStorage).filter((key) => key.startsWith("caqe.draft."))"""
    )


def pressed_choices(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        ".pairwise-choice[aria-pressed=true]",
        "buttons => buttons.map((button) => button.dataset.choice)",
    )


def test_reload_restores_choices(
    served_demo: ServedStudy, browser: Any, sqlite_url: str, tmp_path: Path
) -> None:
    context, page, errors = open_first_page(browser, served_demo.url)
    page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
    pairs = int(page.inner_text("#pairwise-pair-title").rsplit(" ", 1)[1])

    # Pair 1 gets the choice B, and pair 2 the choice A without leaving it.
    for side in ("a", "b"):
        listen_until_heard(page, side, use_key=False)
    page.click("#pairwise-choice-b")
    page.click("#pairwise-next")
    for side in ("a", "b"):
        listen_until_heard(page, side, use_key=False)
    page.click("#pairwise-choice-a")
    key = pairwise_draft_key(page)
    # A judgement for a pair the page does not show is skipped.
    page.evaluate(
        """(key) => {
            const draft = JSON.parse(localStorage.getItem(key));
            draft.state.judgements.push({...draft.state.judgements[0], pair: 99});
            localStorage.setItem(key, JSON.stringify(draft));
        }""",
        key,
    )

    page.reload()
    page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
    # The study requires listening, and the listening before the reload is
    # lost, so each restored choice is confirmed after hearing A and B again.
    assert page.inner_text("#pairwise-pair-title") == f"Pair 1 of {pairs}"
    assert pressed_choices(page) == ["b"]
    assert page.locator("#pairwise-choice-b").is_disabled()
    assert page.locator("#pairwise-next").is_disabled()
    assert "before the page was reloaded: B" in page.inner_text("#pairwise-status")
    page.screenshot(path=str(tmp_path / "pairwise-restored.png"), full_page=True)
    for side in ("a", "b"):
        listen_until_heard(page, side, use_key=False)
    assert page.locator("#pairwise-next").is_disabled()
    page.click("#pairwise-choice-b")
    assert page.locator("#pairwise-next").is_enabled()
    page.click("#pairwise-next")

    assert page.inner_text("#pairwise-pair-title") == f"Pair 2 of {pairs}"
    assert pressed_choices(page) == ["a"]
    assert page.locator("#pairwise-next").is_disabled()
    for side in ("a", "b"):
        listen_until_heard(page, side, use_key=False)
    page.click("#pairwise-choice-none")
    page.click("#pairwise-next")

    answers = ["b", "none"]
    for number in range(2, pairs - 1):
        assert pressed_choices(page) == []
        answers.append(answer_pair(page, number))
    with page.expect_navigation(timeout=20_000):
        answers.append(answer_pair(page, pairs - 1))
    page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
    assert stored_drafts(page) == []

    # The second page was never reloaded.
    second_page = []
    second_pairs = int(page.inner_text("#pairwise-pair-title").rsplit(" ", 1)[1])
    for number in range(second_pairs - 1):
        second_page.append(answer_pair(page, number))
    with page.expect_navigation(timeout=20_000):
        second_page.append(answer_pair(page, second_pairs - 1))
    page.wait_for_selector("text=Thank you", timeout=20_000)
    context.close()
    assert errors == []

    with served_demo.session_factory() as session:
        trials = session.execute(
            select(Trial).join(Reservation).order_by(Reservation.position)
        ).scalars()
        responses = [trial.response for trial in trials]
    assert [j["choice"] for j in responses[0]["judgements"]] == answers
    assert responses[0]["restored"] is True
    assert [j["choice"] for j in responses[1]["judgements"]] == second_page
    assert "restored" not in responses[1]

    out_dir = tmp_path / "export"
    result = CliRunner().invoke(
        build_cli(),
        ["results", "export", "--database-url", sqlite_url, "--out", str(out_dir)],
    )
    assert result.exit_code == 0, result.output
    ratings = pd.read_csv(out_dir / "ratings.csv")
    restored = ratings.groupby("trial_position")["restored"].agg(set)
    assert restored.tolist() == [{True}, {False}]


def test_invalid_draft_is_ignored(served_demo: ServedStudy, browser: Any) -> None:
    context, page, errors = open_first_page(browser, served_demo.url)
    page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
    key = pairwise_draft_key(page)
    submit_url = key.removeprefix("caqe.draft.")
    pair = page.evaluate(
        """() => JSON.parse(document.getElementById("pairwise-settings").textContent)
            .pairs[0]"""
    )
    valid = {
        "pair": 0,
        **pair,
        "decision_time_ms": 900,
        "played_seconds": {"a": 1, "b": 1},
    }

    def document(judgements: Any, trial: str = submit_url) -> str:
        state = {"judgements": judgements}
        return json.dumps({"version": 1, "trial": trial, "savedAt": 0, "state": state})

    drafts = {
        "not JSON": ("{not json", False),
        "another trial's draft": (document([{**valid, "choice": "a"}], "/x"), False),
        "judgements that are not a list": (document({"0": valid}), True),
        "an unknown choice": (document([{**valid, "choice": "c"}]), True),
        "swapped A and B": (
            document([{**valid, "a": pair["b"], "b": pair["a"], "choice": "a"}]),
            True,
        ),
        "negative seconds": (
            document([{**valid, "choice": "a", "played_seconds": {"a": -1, "b": 1}}]),
            True,
        ),
    }
    for case, (text, kept) in drafts.items():
        page.evaluate("([key, text]) => localStorage.setItem(key, text)", [key, text])
        page.reload()
        page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
        assert page.inner_text("#pairwise-pair-title").startswith("Pair 1 of"), case
        assert pressed_choices(page) == [], case
        assert "reloaded" not in page.inner_text("#pairwise-status"), case
        assert stored_drafts(page) == ([key] if kept else []), case
    context.close()
    assert errors == []


@pytest.fixture
def served_without_listening(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    """The pairwise demo on one page, with choices allowed before listening."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["pairwise"]["require_both_played"] = False
    config["flow"]["steps"] = ["consent", "trials"]
    config["assignment"]["conditions_per_participant"] = 1
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    with serve(path, sqlite_url, registry, tmp_path / "data") as served:
        yield served


def test_reload_resumes_at_open_pair(
    served_without_listening: ServedStudy, browser: Any
) -> None:
    context, page, errors = open_first_page(browser, served_without_listening.url)
    page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)
    pairs = int(page.inner_text("#pairwise-pair-title").rsplit(" ", 1)[1])

    page.click("#pairwise-choice-b")
    page.click("#pairwise-next")
    page.click("#pairwise-choice-a")
    page.click("#pairwise-next")
    page.reload()
    page.wait_for_selector('#pairwise[data-state="ready"]', timeout=20_000)

    # Without a listening requirement the restored choices stand, so the page
    # resumes at the first pair without a choice.
    assert page.inner_text("#pairwise-pair-title") == f"Pair 3 of {pairs}"
    done = page.eval_on_selector_all(".pairwise-step--done", "steps => steps.length")
    assert done == 2
    assert pressed_choices(page) == []
    answers = ["b", "a"]
    for _ in range(2, pairs - 1):
        page.click("#pairwise-choice-b")
        page.click("#pairwise-next")
        answers.append("b")
    page.click("#pairwise-choice-none")
    answers.append("none")
    with page.expect_navigation(timeout=20_000):
        page.click("#pairwise-next")
    page.wait_for_selector("text=Thank you", timeout=20_000)
    assert stored_drafts(page) == []
    context.close()
    assert errors == []

    with served_without_listening.session_factory() as session:
        trial = session.scalars(select(Trial)).one()
    assert [j["choice"] for j in trial.response["judgements"]] == answers
    assert trial.response["restored"] is True
