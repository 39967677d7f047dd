"""A participant completes the pairwise demo in Chromium over real HTTP.

The study is the shipped demo with a shorter listening minimum. The browser
listens, answers with the mouse and with the keyboard shortcuts, and the
stored judgements are then exported with ``caqe results export``.
"""

from __future__ import annotations

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
from caqe_core.plugins import Registry, set_registry
from tests.support.server import ServedStudy, build_study

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

    served = build_study(path, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


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


def test_participant_completes_demo_in_chromium(
    served_demo: ServedStudy, browser: Any, sqlite_url: str, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{served_demo.url}/")
    page.click("#start")
    page.check("#agree")
    page.click("#continue")

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
