"""The local_lab recruiter: anonymous start, participant codes and kiosk mode."""

from __future__ import annotations

import csv
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from caqe_local_lab import (
    CODE_ALPHABET,
    COMPLETION_CODE_LENGTH,
    completion_code,
    generate_codes,
)
from click.testing import CliRunner
from itsdangerous import URLSafeSerializer
from sqlalchemy import func, select

from caqe_core.cli import build_cli
from caqe_core.config import load_config
from caqe_core.models import Participant, RecruitmentJob
from caqe_core.plugins import Registry, set_registry
from caqe_core.study import prepare_study
from tests.adversarial.helpers import (
    Listener,
    agree,
    scale_body,
    scale_trial,
    start_listener,
)
from tests.support.processes import call_at_once, serve_in_processes
from tests.support.server import SECRET, ServedStudy, build_study, serve
from tests.support.studies import scale_study


@pytest.fixture
def serve_lab(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> Iterator[Callable[..., ServedStudy]]:
    """Serve a 'scale' study with the given local_lab section."""
    started: list[ServedStudy] = []

    def serve(**section: Any) -> ServedStudy:
        config = scale_study(tmp_path / "study", local_lab=section)
        served = build_study(config, sqlite_url, registry, tmp_path / "data")
        served.start()
        started.append(served)
        return served

    set_registry(registry)
    try:
        yield serve
    finally:
        for served in started:
            served.stop()
        set_registry(None)


def issue_codes(served: ServedStudy, count: int, *options: str) -> list[str]:
    url = str(served.session_factory.kw["bind"].url)
    result = CliRunner().invoke(
        build_cli(), ["lab", "codes", str(count), "--database-url", url, *options]
    )
    assert result.exit_code == 0, result.output
    return [line for line in result.stdout.splitlines() if line]


def participants(served: ServedStudy) -> list[Participant]:
    with served.session_factory() as session:
        return list(session.scalars(select(Participant).order_by(Participant.id)))


def verify_code(served: ServedStudy, code: str, secret: bytes = SECRET) -> Any:
    """Run 'caqe lab verify CODE' against the served study's database."""
    url = str(served.session_factory.kw["bind"].url)
    return CliRunner().invoke(
        build_cli(),
        ["lab", "verify", code, "--database-url", url],
        env={"CAQE_SECRET_KEY": secret.decode()},
    )


def finish_trials(listener: Listener) -> str:
    """Answer every trial of a 'scale' study and return the end page."""
    for number in range(10):
        page = listener.page()
        if "<script id='trial'" not in page:
            return page
        trial = scale_trial(listener)
        answer = listener.http.post(
            listener.base + trial["submit"],
            json=scale_body(trial, f"lab-finish-{number:04d}"),
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )
        assert answer.status_code == 200, answer.text[:200]
    raise AssertionError("the study did not end after 10 trials")


def shown_completion_code(page_html: str) -> str:
    match = re.search(r'<strong id="completion-code">([^<]+)</strong>', page_html)
    assert match, "the end page shows a completion code"
    return match.group(1)


def test_anonymous_start(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab()
    http = requests.Session()

    landing = http.get(f"{served.url}/")
    begun = http.post(f"{served.url}/lab/", allow_redirects=False)
    first_page = http.get(served.url + begun.headers["Location"])

    assert landing.status_code == 200
    assert landing.url.endswith("/lab/")
    assert 'id="start"' in landing.text
    assert 'name="code"' not in landing.text
    assert begun.status_code == 302
    assert begun.headers["Location"].startswith("/p/")
    assert 'name="agree"' in first_page.text
    rows = participants(served)
    assert len(rows) == 1
    assert rows[0].external_id is None
    assert rows[0].recruiter == "local_lab"


def test_anonymous_starts_are_separate(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab()

    locations = {
        requests.post(f"{served.url}/lab/", allow_redirects=False).headers["Location"]
        for _ in range(3)
    }

    assert len(locations) == 3
    assert [row.sequence for row in participants(served)] == [0, 1, 2]


@pytest.fixture
def lab_on_database(
    tmp_path: Path, database_url: str, registry: Registry
) -> Iterator[ServedStudy]:
    """A lab study on SQLite and on PostgreSQL, served over HTTP."""
    config = scale_study(tmp_path / "study")
    with serve(config, database_url, registry, tmp_path / "data") as served:
        yield served
    served.session_factory.kw["bind"].dispose()


def start_token(page_html: str) -> str:
    match = re.search(r'name="start_token" value="([^"]+)"', page_html)
    assert match, "the start page carries a start token"
    return match.group(1)


def test_start_page_is_not_stored(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab()

    first = requests.get(f"{served.url}/lab/")
    second = requests.get(f"{served.url}/lab/")

    assert first.headers["Cache-Control"] == "no-store"
    assert start_token(first.text) != start_token(second.text)


def test_repeated_start_post_resumes(lab_on_database: ServedStudy) -> None:
    served = lab_on_database
    form = {"start_token": start_token(requests.get(f"{served.url}/lab/").text)}

    first = requests.post(f"{served.url}/lab/", data=form, allow_redirects=False)
    again = requests.post(f"{served.url}/lab/", data=form, allow_redirects=False)

    assert first.status_code == 302
    assert again.status_code == 302
    assert again.headers["Location"] == first.headers["Location"]
    assert len(participants(served)) == 1


def test_each_start_page_starts_one(lab_on_database: ServedStudy) -> None:
    served = lab_on_database
    locations = set()

    for _ in range(3):
        token = start_token(requests.get(f"{served.url}/lab/").text)
        answer = requests.post(
            f"{served.url}/lab/", data={"start_token": token}, allow_redirects=False
        )
        locations.add(answer.headers["Location"])

    assert len(locations) == 3
    assert [row.sequence for row in participants(served)] == [0, 1, 2]


START_PROCESSES = 3
START_ROUNDS = 4
STARTS_PER_PROCESS = 2


def test_start_posts_in_processes_start_one(
    lab_on_database: ServedStudy, tmp_path: Path
) -> None:
    """Server processes that share only the database start one participant per page.

    Each round posts one start page's form to every process at once, as a
    double-click behind a load balancer with several gunicorn workers would.
    """
    served = lab_on_database
    database_url = served.session_factory.kw["bind"].url.render_as_string(
        hide_password=False
    )
    rounds: list[list[str]] = []

    with serve_in_processes(
        tmp_path / "study" / "study.yaml",
        database_url,
        tmp_path / "data",
        START_PROCESSES,
    ) as urls:
        for _ in range(START_ROUNDS):
            token = start_token(requests.get(f"{urls[0]}/lab/").text)
            answers = call_at_once(
                [
                    lambda url=url, token=token: requests.post(
                        f"{url}/lab/",
                        data={"start_token": token},
                        allow_redirects=False,
                        timeout=60,
                    )
                    for url in urls * STARTS_PER_PROCESS
                ]
            )
            locations = [
                answer.headers.get("Location", str(answer.status_code))
                for answer in answers
            ]
            rounds.append(locations)

    for locations in rounds:
        assert len(locations) == START_PROCESSES * STARTS_PER_PROCESS
        assert len(set(locations)) == 1, locations
        assert locations[0].startswith("/p/"), locations
    assert len({locations[0] for locations in rounds}) == START_ROUNDS
    assert [row.sequence for row in participants(served)] == list(range(START_ROUNDS))


def signed_start_token(payload: object, secret: bytes = SECRET) -> str:
    return URLSafeSerializer(secret, salt="caqe-local-lab-start").dumps(payload)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "x" * 10_000,
        signed_start_token("A" * 22, b"another-secret-key-of-32-bytes-or-more"),
        signed_start_token("A" * 22)[:-2] + "xx",
        signed_start_token(12345),
        signed_start_token("short"),
        signed_start_token("A" * 21 + "\x00"),
    ],
    ids=[
        "empty",
        "unsigned",
        "over-long",
        "other key",
        "bad signature",
        "not text",
        "short nonce",
        "NUL in nonce",
    ],
)
def test_invalid_start_token_rejected(
    serve_lab: Callable[..., ServedStudy], token: str
) -> None:
    served = serve_lab()

    answer = requests.post(
        f"{served.url}/lab/", data={"start_token": token}, allow_redirects=False
    )

    assert answer.status_code == 400
    assert "Press Start again" in answer.text
    assert start_token(answer.text) != token
    assert participants(served) == []


def test_start_without_token_still_starts(
    serve_lab: Callable[..., ServedStudy],
) -> None:
    served = serve_lab()

    answer = requests.post(f"{served.url}/lab/", allow_redirects=False)

    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/p/")
    assert len(participants(served)) == 1


def test_code_start_ignores_start_token(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)
    first_code, second_code = issue_codes(served, 2)
    token = start_token(requests.get(f"{served.url}/lab/").text)

    first = requests.post(
        f"{served.url}/lab/",
        data={"code": first_code, "start_token": token},
        allow_redirects=False,
    )
    second = requests.post(
        f"{served.url}/lab/",
        data={"code": second_code, "start_token": token},
        allow_redirects=False,
    )

    assert first.status_code == 302
    assert second.status_code == 302
    assert first.headers["Location"] != second.headers["Location"]
    assert [row.external_id for row in participants(served)] == [
        first_code,
        second_code,
    ]


def test_completion_code_is_keyed() -> None:
    public_id = "lxLQNwvnzrVBfmMP0BvLFj6r"
    code = completion_code(public_id, SECRET)

    assert len(code) == COMPLETION_CODE_LENGTH
    assert set(code) <= set(CODE_ALPHABET)
    assert completion_code(public_id, SECRET) == code
    assert completion_code(public_id, b"another-secret-key-of-32-bytes-or-more") != code
    assert completion_code(public_id + "x", SECRET) != code
    assert public_id[:COMPLETION_CODE_LENGTH].upper() != code


def test_verify_accepts_shown_code(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab()
    listener = start_listener(served.url)
    agree(listener)
    code = shown_completion_code(finish_trials(listener))
    [participant] = participants(served)

    exact = verify_code(served, code)
    typed = verify_code(served, f"  {code.lower()} ")

    assert participant.status == "completed"
    assert code == completion_code(participant.public_id, SECRET)
    assert exact.exit_code == 0, exact.output
    assert f"participant {participant.public_id} completed" in exact.output
    assert typed.exit_code == 0, typed.output
    assert participant.public_id in typed.output


def test_verify_rejects_wrong_code_or_key(
    serve_lab: Callable[..., ServedStudy],
) -> None:
    served = serve_lab()
    listener = start_listener(served.url)
    agree(listener)
    code = shown_completion_code(finish_trials(listener))
    wrong_code = "".join(
        CODE_ALPHABET[(CODE_ALPHABET.index(letter) + 1) % len(CODE_ALPHABET)]
        for letter in code
    )

    unknown = verify_code(served, wrong_code)
    other_key = verify_code(served, code, b"another-secret-key-of-32-bytes-or-more")

    assert unknown.exit_code == 1
    assert f"The code {wrong_code} matches no lab participant" in unknown.output
    assert other_key.exit_code == 1
    assert "CAQE_SECRET_KEY" in other_key.output


def test_verify_rejects_unfinished_participant(
    serve_lab: Callable[..., ServedStudy],
) -> None:
    served = serve_lab()
    listener = start_listener(served.url)
    agree(listener)
    [participant] = participants(served)

    result = verify_code(served, completion_code(participant.public_id, SECRET))

    assert result.exit_code == 1
    assert "has not completed" in result.output
    assert "status active" in result.output


def test_codes_printed(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)

    codes = issue_codes(served, 25)

    assert len(codes) == 25
    assert len(set(codes)) == 25
    for code in codes:
        assert re.fullmatch(f"[{CODE_ALPHABET}]{{8}}", code), code
    with served.session_factory() as session:
        stored = set(session.scalars(select(RecruitmentJob.request_token)))
    assert stored == set(codes)


def test_codes_written_to_csv(
    serve_lab: Callable[..., ServedStudy], tmp_path: Path
) -> None:
    served = serve_lab(require_code=True)
    target = tmp_path / "codes.csv"

    printed = issue_codes(served, 7, "--csv", str(target))

    assert printed == [f"Wrote 7 codes for scale-study to {target}."]
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7
    assert {row["experiment"] for row in rows} == {"scale-study"}
    with served.session_factory() as session:
        stored = set(session.scalars(select(RecruitmentJob.request_token)))
    assert stored == {row["code"] for row in rows}


def test_codes_unique_across_batches(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)

    first = issue_codes(served, 40)
    second = issue_codes(served, 40)

    assert len(set(first) | set(second)) == 80


def test_generate_codes_unique() -> None:
    codes = generate_codes(5000)

    assert len(codes) == 5000
    assert len(set(codes)) == 5000


def test_generate_codes_skips_taken() -> None:
    rejected: set[str] = set()

    def taken(codes: set[str]) -> set[str]:
        if not rejected:
            rejected.update(sorted(codes)[:5])
            return set(rejected)
        return set()

    codes = generate_codes(20, taken)

    assert len(set(codes)) == 20
    assert len(rejected) == 5
    assert not rejected & set(codes)


@pytest.mark.parametrize("code", ["", "WRONG123", "' OR 1=1 --", "x" * 500])
def test_require_code_rejects_bad_code(
    serve_lab: Callable[..., ServedStudy], code: str
) -> None:
    served = serve_lab(require_code=True)
    issue_codes(served, 3)

    answer = requests.post(
        f"{served.url}/lab/", data={"code": code}, allow_redirects=False
    )

    assert answer.status_code == 422
    assert 'role="alert"' in answer.text
    assert participants(served) == []


def test_require_code_page_asks_for_code(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)

    page = requests.get(f"{served.url}/lab/")

    assert 'name="code"' in page.text


def test_require_code_accepts_good_code(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)
    code = issue_codes(served, 2)[0]

    answer = requests.post(
        f"{served.url}/lab/", data={"code": code}, allow_redirects=False
    )

    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/p/")
    rows = participants(served)
    assert [row.external_id for row in rows] == [code]


def test_same_code_resumes_session(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)
    code = issue_codes(served, 1)[0]

    first = requests.post(
        f"{served.url}/lab/", data={"code": code}, allow_redirects=False
    )
    again = requests.post(
        f"{served.url}/lab/", data={"code": f"  {code.lower()} "}, allow_redirects=False
    )

    assert first.headers["Location"] == again.headers["Location"]
    assert len(participants(served)) == 1


def test_concurrent_starts_with_one_code(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab(require_code=True)
    code = issue_codes(served, 1)[0]
    barrier = threading.Barrier(6)
    locations: list[str] = []

    def start() -> None:
        barrier.wait()
        answer = requests.post(
            f"{served.url}/lab/", data={"code": code}, allow_redirects=False
        )
        locations.append(answer.headers.get("Location", str(answer.status_code)))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(locations) == 6
    assert len(set(locations)) == 1, locations
    assert len(participants(served)) == 1


def test_code_of_other_study_rejected(
    serve_lab: Callable[..., ServedStudy], tmp_path: Path, registry: Registry
) -> None:
    served = serve_lab(require_code=True)
    other = scale_study(
        tmp_path / "other", experiment={"name": "other-study", "title": "Other"}
    )
    prepare_study(
        load_config(other, registry),
        registry,
        served.session_factory,
        tmp_path / "other",
    )
    code = issue_codes(served, 1, "--experiment", "other-study")[0]

    answer = requests.post(
        f"{served.url}/lab/", data={"code": code}, allow_redirects=False
    )

    assert answer.status_code == 422
    assert participants(served) == []


def test_kiosk_completion_returns_to_start(
    serve_lab: Callable[..., ServedStudy],
) -> None:
    served = serve_lab(kiosk=True, kiosk_delay_seconds=7)
    http = requests.Session()
    page_url = (
        served.url
        + http.post(f"{served.url}/lab/", allow_redirects=False).headers["Location"]
    )
    consent = http.get(page_url).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent).group(1)

    done = http.post(
        page_url + "step/consent", data={"csrf_token": csrf, "decline": "yes"}
    )

    assert done.status_code == 200
    refresh = re.search(
        r'<meta http-equiv="refresh" content="(\d+);url=([^"]+)">', done.text
    )
    assert refresh, done.text
    assert refresh.group(1) == "7"
    assert refresh.group(2) == "/lab/"
    assert 'href="/lab/"' in done.text
    assert http.get(served.url + refresh.group(2)).status_code == 200


def test_completion_without_kiosk_stays(serve_lab: Callable[..., ServedStudy]) -> None:
    served = serve_lab()
    http = requests.Session()
    page_url = (
        served.url
        + http.post(f"{served.url}/lab/", allow_redirects=False).headers["Location"]
    )
    consent = http.get(page_url).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent).group(1)

    done = http.post(
        page_url + "step/consent", data={"csrf_token": csrf, "decline": "yes"}
    )

    assert 'http-equiv="refresh"' not in done.text
    assert "This session has ended" in done.text
    with served.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Participant)) == 1


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.browser
def test_kiosk_browser_returns_to_start(
    serve_lab: Callable[..., ServedStudy], tmp_path: Path, playwright_instance: Any
) -> None:
    """In Chromium, a kiosk session ends on the start page, whose Start begins the next."""
    if not CHROMIUM.exists():
        message = f"the browser test needs Debian's Chromium at {CHROMIUM}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)

    served = serve_lab(kiosk=True, kiosk_delay_seconds=1)
    playwright = playwright_instance
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
    )
    try:
        page = browser.new_page()
        page.goto(f"{served.url}/")
        page.click("#start")
        page.wait_for_selector("#agree")
        page.click("button[name=decline]")
        page.wait_for_selector("text=The next session starts in 1 second.")
        page.screenshot(path=str(tmp_path / "kiosk-end.png"))
        page.wait_for_url(f"{served.url}/lab/", timeout=15_000)
        page.wait_for_selector("#start")
        page.screenshot(path=str(tmp_path / "kiosk-start.png"))
        page.click("#start")
        page.wait_for_selector("#agree")
    finally:
        browser.close()

    assert [row.status for row in participants(served)] == ["screened_out", "active"]
