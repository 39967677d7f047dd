"""A participant completes the MUSHRA demo in headless Chromium over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from caqe_core.cli import build_cli
from caqe_core.models import ListeningEvent, Participant, Reservation, Trial
from caqe_core.plugins import Registry, set_registry
from tests.support.server import ServedStudy, build_study, serve

pytestmark = pytest.mark.browser

MIN_PLAY_SECONDS = 0.3
READY = "#mushra[data-state=ready]"


@pytest.fixture
def served_demo(
    make_demo_copy: Callable[..., Path],
    tmp_path: Path,
    sqlite_url: str,
    registry: Registry,
) -> Iterator[ServedStudy]:
    """The shipped demo, with a shorter listening minimum, behind a real server."""
    path = make_demo_copy(tmp_path / "demo", min_play_seconds=MIN_PLAY_SECONDS)
    set_registry(registry)
    served = build_study(path, sqlite_url, registry, tmp_path / "data")
    served.start()
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 960})
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield new_page
    finally:
        context.close()
    assert not errors, f"Uncaught errors in the page: {errors}"


def start_session(page: Any, base: str) -> None:
    """Go from the landing page through consent and the pre-test survey."""
    page.goto(base + "/")
    page.click("#start")
    page.check("#agree")
    page.click("#continue")
    page.fill("input[name=age]", "34")
    page.check("input[name=hearing_disorder][value=no]")
    page.click("#continue")


def signal_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        ".mushra-slider", "sliders => sliders.map(s => s.dataset.signal)"
    )


def listen(page: Any, number: int, signal: str) -> None:
    """Switch to a stimulus with its number key and wait until its slider unlocks."""
    key = str(number % 10)
    page.keyboard.press(key)
    page.wait_for_function(
        f"() => !document.getElementById('mushra-slider-{signal}').disabled",
        timeout=15000,
    )


def rate_with_keyboard(page: Any, signal: str, steps: int) -> float:
    page.focus(f"#mushra-slider-{signal}")
    for _ in range(steps):
        page.keyboard.press("ArrowUp")
    return float(page.input_value(f"#mushra-slider-{signal}"))


def rate_with_mouse(page: Any, signal: str, fraction: float) -> float:
    """Click the slider ``fraction`` of the way up its track."""
    box = page.locator(f"#mushra-slider-{signal}").bounding_box()
    page.mouse.click(
        box["x"] + box["width"] / 2, box["y"] + box["height"] * (1 - fraction)
    )
    return float(page.input_value(f"#mushra-slider-{signal}"))


def submit_disabled(page: Any) -> bool:
    return page.eval_on_selector("#mushra-submit", "button => button.disabled")


def test_participant_completes_demo(page: Any, served_demo: ServedStudy) -> None:
    start_session(page, served_demo.url)

    page.wait_for_selector(READY, timeout=30000)
    assert page.locator("h1").first.inner_text() == "Training"
    page.click(".mushra-select[data-signal=s1]")
    page.click(".mushra-example--low")
    page.wait_for_function(
        "() => document.getElementById('mushra-play').textContent === 'Stop'"
    )
    page.click("#continue")

    expected: list[dict[str, float]] = []
    for number in range(1, 4):
        page.wait_for_selector(READY, timeout=30000)
        assert page.inner_text("#mushra-progress") == f"Page {number} of 3"
        assert submit_disabled(page)
        ratings = {}
        for index, signal in enumerate(signal_ids(page), start=1):
            listen(page, index, signal)
            if index % 2:
                ratings[signal] = rate_with_keyboard(page, signal, 10 * index)
                assert ratings[signal] == 10 * index
            else:
                ratings[signal] = rate_with_mouse(page, signal, 0.75)
                assert 70 <= ratings[signal] <= 80
        # The loop region: drag across the timeline.
        box = page.locator(".caqe-timeline__track").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + 20)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 20, steps=5)
        page.mouse.up()
        assert not submit_disabled(page)
        expected.append(ratings)
        page.click("#mushra-submit")
        page.wait_for_load_state("load")
        page.wait_for_function(
            "() => !document.getElementById('mushra-progress') || "
            f"document.getElementById('mushra-progress').textContent !== 'Page {number} of 3'",
            timeout=30000,
        )

    page.wait_for_selector("input[name=listening_device]")
    page.check("input[name=listening_device][value='closed headphones']")
    page.check("input[name=critical_listening][value=some]")
    page.check("input[name=environment_noise][value=quiet]")
    page.click("#continue")
    page.wait_for_selector("#completion-code")
    assert "Thank you" in page.content()

    with served_demo.session_factory() as session:
        participant = session.scalars(select(Participant)).one()
        assert participant.status == "completed"
        trials = session.scalars(select(Trial).order_by(Trial.id)).all()
        assert len(trials) == 3
        assert len({trial.condition_id for trial in trials}) == 3
        for trial, ratings in zip(trials, expected):
            reservation = session.get(Reservation, trial.reservation_id)
            rated = [s["id"] for s in reservation.plan["signals"] if s["id"] != "ref"]
            assert trial.response["ratings"] == ratings
            assert trial.response["order"] == rated
            assert trial.response["loop"] is not None
            assert trial.time_on_page_ms > 0
            events = session.scalars(
                select(ListeningEvent).where(ListeningEvent.trial_id == trial.id)
            ).all()
            types = [event.type for event in events]
            assert "play" in types
            assert "loop-set" in types
            switched_to = {event.signal for event in events if event.type == "switch"}
            assert switched_to >= set(rated)
            keys = {event.stimulus_key for event in events if event.type == "switch"}
            assert "hidden_reference" in keys
            assert "lowpass_3500" in keys


def test_submit_needs_every_stimulus(
    page: Any, served_demo: ServedStudy, make_demo_copy: Callable[..., Path]
) -> None:
    start_session(page, served_demo.url)
    page.wait_for_selector(READY, timeout=30000)
    page.click("#continue")
    page.wait_for_selector(READY, timeout=30000)
    signals = signal_ids(page)

    # Space on a focused stimulus button only toggles playback: the button
    # must not also be clicked, which would start playback again.
    page.focus("#mushra-select-ref")
    page.keyboard.press(" ")
    assert page.inner_text("#mushra-play") == "Stop"
    page.keyboard.press(" ")
    page.wait_for_timeout(200)
    assert page.inner_text("#mushra-play") == "Play"

    assert submit_disabled(page)
    sliders_disabled = page.eval_on_selector_all(
        ".mushra-slider", "sliders => sliders.every(s => s.disabled)"
    )
    assert sliders_disabled
    for index, signal in enumerate(signals[:-1], start=1):
        listen(page, index, signal)
        rate_with_keyboard(page, signal, 5)
        assert submit_disabled(page)

    # The last stimulus, heard but not rated.
    last = signals[-1]
    listen(page, len(signals), last)
    assert submit_disabled(page)
    page.evaluate("document.getElementById('mushra-submit').click()")

    # A response forced past the page's checks is rejected by the server.
    status = page.evaluate(
        """async () => {
            const settings = JSON.parse(
                document.getElementById("mushra-settings").textContent);
            const ratings = {};
            for (const s of settings.signals.slice(0, -1)) ratings[s.id] = 50;
            const response = await fetch(settings.submitUrl, {
                method: "POST",
                headers: {"Content-Type": "application/json",
                          "X-CAQE-CSRF": settings.csrfToken},
                body: JSON.stringify({
                    idempotency_key: "forced-submit-0001",
                    response: {ratings, order: settings.signals.map(s => s.id), loop: null},
                    events: [],
                }),
            });
            return [response.status, await response.json()];
        }"""
    )
    assert status[0] == 422
    assert status[1]["field"] == f"response.ratings.{last}"
    with served_demo.session_factory() as session:
        assert session.scalars(select(Trial)).all() == []

    rate_with_keyboard(page, last, 1)
    assert not submit_disabled(page)


def test_96k_page_plays_at_96k(
    page: Any,
    make_study: Callable[..., Path],
    tmp_path: Path,
    sqlite_url: str,
    registry: Registry,
) -> None:
    path = make_study(
        tmp_path / "study",
        items=1,
        systems=3,
        rate=96000,
        seconds=2.0,
        mushra={"min_play_seconds": MIN_PLAY_SECONDS},
    )
    set_registry(registry)
    served = build_study(path, sqlite_url, registry, tmp_path / "data")
    base = served.start()
    try:
        page.goto(base + "/")
        page.click("#start")
        page.check("#agree")
        page.click("#continue")
        page.wait_for_selector(READY, timeout=30000)
        assert page.get_attribute("#mushra", "data-sample-rate") == "96000"
        for index, signal in enumerate(signal_ids(page), start=1):
            listen(page, index, signal)
            rate_with_keyboard(page, signal, 3)
        assert not submit_disabled(page)
        page.click("#mushra-submit")
        page.wait_for_selector("#completion-code", timeout=30000)
        with served.session_factory() as session:
            trial = session.scalars(select(Trial)).one()
            assert set(trial.response["ratings"].values()) == {3.0}
    finally:
        served.stop()
        set_registry(None)


def test_page_fetches_each_stimulus_once(
    page: Any,
    make_study: Callable[..., Path],
    tmp_path: Path,
    sqlite_url: str,
    registry: Registry,
) -> None:
    path = make_study(tmp_path / "study", items=1, systems=3)
    set_registry(registry)
    served = build_study(path, sqlite_url, registry, tmp_path / "data")
    base = served.start()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    workers: list[str] = []
    page.on("worker", lambda worker: workers.append(worker.url))
    try:
        page.goto(base + "/")
        page.click("#start")
        page.check("#agree")
        page.click("#continue")
        page.wait_for_selector(READY, timeout=30000)
        stimulus_urls = page.evaluate(
            """() => {
                const settings = JSON.parse(
                    document.getElementById("mushra-settings").textContent);
                return [settings.reference, ...settings.signals].map(
                    (signal) => new URL(signal.url, location.href).href);
            }"""
        )
        early_requests = page.evaluate("window.caqeEarlyAudio.bytes.size")
        module_urls = page.eval_on_selector_all(
            "link[rel=modulepreload]", "links => links.map(link => link.href)"
        )
    finally:
        served.stop()
        set_registry(None)

    audio_requests = [url for url in requested if "/a/" in url]
    assert sorted(audio_requests) == sorted(stimulus_urls)
    assert early_requests == len(stimulus_urls)
    assert len(workers) == 1
    assert "/static/caqe/fetch-worker.js?v=" in workers[0]
    # Each module is fetched once: its import resolves, through the import
    # map, to the versioned URL that the page preloads.
    assert module_urls
    for url in module_urls:
        assert "?v=" in url
        assert requested.count(url) == 1
    plain_module_requests = [
        url for url in requested if url.endswith(".js") and "?v=" not in url
    ]
    assert plain_module_requests == []


@pytest.fixture
def served_small(
    make_study: Callable[..., Path], tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    """A one-page MUSHRA study with three systems behind a real server."""
    path = make_study(tmp_path / "study", items=1, systems=3)
    set_registry(registry)
    served = build_study(path, sqlite_url, registry, tmp_path / "data")
    served.start()
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)


def open_first_page(page: Any, base: str) -> None:
    page.goto(base + "/")
    page.click("#start")
    page.check("#agree")
    page.click("#continue")


def test_page_loads_without_fetch_worker(page: Any, served_small: ServedStudy) -> None:
    page.route("**/fetch-worker.js*", lambda route: route.fulfill(status=404))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_first_page(page, served_small.url)
    page.wait_for_selector(READY, timeout=30000)

    audio_requests = [url for url in requested if "/a/" in url]
    assert len(audio_requests) == len(set(audio_requests))
    assert len(audio_requests) == len(signal_ids(page)) + 1


def test_page_reports_missing_stimulus(page: Any, served_small: ServedStudy) -> None:
    open_first_page(page, served_small.url)
    page.wait_for_selector(READY, timeout=30000)
    missing = page.evaluate(
        """() => JSON.parse(document.getElementById("mushra-settings").textContent)
            .signals[1].url"""
    )
    page.route(f"**{missing}", lambda route: route.fulfill(status=404))
    page.reload()
    page.wait_for_selector("#mushra[data-state=failed]", timeout=30000)

    assert "could not be loaded" in page.inner_text("#mushra-loading-text")


@pytest.fixture
def served_quick(
    make_study: Callable[..., Path], tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    """A one-page MUSHRA study with three systems and a short listening minimum."""
    path = make_study(
        tmp_path / "study",
        items=1,
        systems=3,
        mushra={"min_play_seconds": MIN_PLAY_SECONDS},
    )
    with serve(path, sqlite_url, registry, tmp_path / "data") as served:
        yield served


def draft_key(page: Any) -> str:
    return page.evaluate(
        """() => "caqe.draft." + JSON.parse(
            document.getElementById("mushra-settings").textContent).submitUrl"""
    )


def stored_drafts(page: Any) -> list[str]:
    return page.evaluate(
        """() => Object.keys(localStorage).filter((key) => key.startsWith("caqe.draft."))"""
    )


def column_classes(page: Any, signal: str) -> str:
    return page.get_attribute(f".mushra-column[data-signal={signal}]", "class")


def test_reload_restores_ratings(
    page: Any, served_quick: ServedStudy, sqlite_url: str, tmp_path: Path
) -> None:
    open_first_page(page, served_quick.url)
    page.wait_for_selector(READY, timeout=30000)
    signals = signal_ids(page)
    ratings = {}
    for index, signal in enumerate(signals[:2], start=1):
        listen(page, index, signal)
        ratings[signal] = rate_with_keyboard(page, signal, 10 * index)
    key = draft_key(page)
    # Entries for a signal id the page does not have, or with a value that is
    # not a rating, are skipped. The valid entries are still restored.
    page.evaluate(
        """([key, last]) => {
            const draft = JSON.parse(localStorage.getItem(key));
            draft.state.ratings.s99 = 30;
            draft.state.ratings[last] = "high";
            localStorage.setItem(key, JSON.stringify(draft));
        }""",
        [key, signals[2]],
    )

    page.reload()
    page.wait_for_selector(READY, timeout=30000)
    for signal, value in ratings.items():
        assert float(page.input_value(f"#mushra-slider-{signal}")) == value
        assert page.inner_text(f"#mushra-value-{signal}") == str(round(value))
        assert "mushra-column--rated" in column_classes(page, signal)
    for signal in signals[2:]:
        assert page.input_value(f"#mushra-slider-{signal}") == "0"
        assert "mushra-column--rated" not in column_classes(page, signal)
    # The heard state is not restored: every slider stays locked and Submit
    # disabled until each stimulus is heard again on this load.
    for signal in signals:
        assert "mushra-column--heard" not in column_classes(page, signal)
        assert page.is_disabled(f"#mushra-slider-{signal}")
    assert submit_disabled(page)
    assert "from before the page was reloaded" in page.inner_text("#mushra-status")
    page.screenshot(path=str(tmp_path / "mushra-restored.png"), full_page=True)

    for index, signal in enumerate(signals, start=1):
        listen(page, index, signal)
    assert submit_disabled(page), "the other stimuli are not rated yet"
    for signal in signals[2:]:
        ratings[signal] = rate_with_keyboard(page, signal, 7)
    # The restored values survive hearing the stimuli again.
    for signal in signals[:2]:
        assert float(page.input_value(f"#mushra-slider-{signal}")) == ratings[signal]
    assert not submit_disabled(page)
    page.click("#mushra-submit")
    page.wait_for_selector("#completion-code", timeout=30000)
    assert stored_drafts(page) == []

    with served_quick.session_factory() as session:
        trial = session.scalars(select(Trial)).one()
        assert trial.response["ratings"] == ratings
        assert trial.response["restored"] is True

    out_dir = tmp_path / "export"
    result = CliRunner().invoke(
        build_cli(),
        ["results", "export", "--database-url", sqlite_url, "--out", str(out_dir)],
    )
    assert result.exit_code == 0, result.output
    exported = pd.read_csv(out_dir / "ratings.csv")
    assert len(exported) == len(signals)
    assert exported["restored"].tolist() == [True] * len(signals)


def test_invalid_draft_is_ignored(page: Any, served_quick: ServedStudy) -> None:
    open_first_page(page, served_quick.url)
    page.wait_for_selector(READY, timeout=30000)
    signals = signal_ids(page)
    key = draft_key(page)
    submit_url = key.removeprefix("caqe.draft.")
    drafts = {
        "not JSON": "{not json",
        "a JSON array": "[1, 2]",
        "another format version": json.dumps(
            {
                "version": 99,
                "trial": submit_url,
                "savedAt": 0,
                "state": {"ratings": {signals[0]: 40}},
            }
        ),
        "another trial's draft": json.dumps(
            {
                "version": 1,
                "trial": submit_url + "x",
                "savedAt": 0,
                "state": {"ratings": {signals[0]: 40}},
            }
        ),
        "ratings that are not an object": json.dumps(
            {"version": 1, "trial": submit_url, "savedAt": 0, "state": {"ratings": 40}}
        ),
    }
    for case, text in drafts.items():
        page.evaluate("([key, text]) => localStorage.setItem(key, text)", [key, text])
        page.reload()
        page.wait_for_selector(READY, timeout=30000)
        values = [page.input_value(f"#mushra-slider-{s}") for s in signals]
        assert values == ["0"] * len(signals), case
        rated = page.eval_on_selector_all(
            ".mushra-column--rated", "columns => columns.length"
        )
        assert rated == 0, case
        if case != "ratings that are not an object":
            assert stored_drafts(page) == [], case

    for index, signal in enumerate(signals, start=1):
        listen(page, index, signal)
        rate_with_keyboard(page, signal, 5)
    page.click("#mushra-submit")
    page.wait_for_selector("#completion-code", timeout=30000)
    with served_quick.session_factory() as session:
        trial = session.scalars(select(Trial)).one()
        assert set(trial.response["ratings"].values()) == {5.0}
        assert "restored" not in trial.response
