"""A whole MTurk study in Chromium: HITs, framed workers, approvals and bonuses.

``caqe mturk create-hits`` posts HITs to the fake MTurk. Simulated workers
accept them, and Chromium opens each HIT's ExternalQuestion URL inside an
iframe of a page on another loopback origin (127.0.0.2), as MTurk's worker
site frames it. HITs point at ``https://caqe.example.org/mturk/``; the test
rewrites that prefix to the local plain-http test server, which is the only
change to the URL. The worker completes the study and submits the HIT with
the externalSubmit form, which the fake receives. Then the paying commands
run, some killed or cut off midway and run again, and MTurk's records must
show every reward and bonus paid exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from xml.etree import ElementTree

import pytest
from caqe_mturk.testing import FakeMTurk
from click.testing import CliRunner, Result
from markupsafe import escape
from sqlalchemy import select

from caqe_core.cli import build_cli
from caqe_core.hookspecs import hookimpl
from caqe_core.models import Participant, Payment, RecruitmentJob
from caqe_core.plugins import Registry, build_registry, set_registry
from tests.support import scale_plugin
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[2]
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
SERVER = "caqe.example.org"
FRAME_HOST = "127.0.0.2"

# A caqe command line in a subprocess, with the test-only 'scale' test type and
# a stand-in for the pairwise plugin's participant_consistency hook.
COMMAND_LINE = """
import json, os, sys
from caqe_core.hookspecs import hookimpl
from caqe_core.plugins import build_registry, set_registry
from tests.support import scale_plugin

class Consistency:
    @hookimpl
    def participant_consistency(self, study, session):
        scores = json.loads(os.environ.get("TEST_CONSISTENCY", "{}"))
        return {int(key): value for key, value in scores.items()}

set_registry(build_registry(
    extra_plugins=[("scale", scale_plugin), ("consistency", Consistency())]
))
from caqe_core.cli import main
sys.argv[0] = "caqe"
main()
"""

# Reads the scale test type's trial data (HTML-escaped JSON) and posts ratings.
SUBMIT_TRIAL = """
async () => {
  const holder = document.createElement("textarea");
  holder.innerHTML = document.getElementById("trial").textContent;
  const trial = JSON.parse(holder.value);
  const ratings = {};
  for (const signal of trial.signals) ratings[signal.id] = 7;
  const key = "trial-" + Math.random().toString(36).slice(2) + Date.now();
  const response = await fetch(trial.submit, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CAQE-CSRF": trial.csrf},
    body: JSON.stringify({idempotency_key: key, response: {ratings}, events: []}),
  });
  return {status: response.status, body: await response.json()};
}
"""


class ConsistencyPlugin:
    def __init__(self) -> None:
        self.scores: dict[int, float] = {}

    @hookimpl
    def participant_consistency(self, study: Any, session: Any) -> dict[int, float]:
        return self.scores


class _FrameHandler(BaseHTTPRequestHandler):
    """Serves ``/hit?src=URL``: a page that frames URL, as MTurk's worker site does."""

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        source = query.get("src", [""])[0]
        body = (
            "<!doctype html><html><head><title>Worker site</title></head>"
            "<body style='margin:0;font-family:sans-serif'>"
            "<div style='background:#232f3e;color:#fff;padding:8px'>"
            "Fake MTurk worker site: HIT in a frame</div>"
            f"<iframe id='hit' src='{escape(source)}' "
            "style='width:100%;height:760px;border:0'></iframe></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def frame_site() -> Iterator[str]:
    server = ThreadingHTTPServer((FRAME_HOST, 0), _FrameHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{FRAME_HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def chromium(playwright_instance: Any) -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"Chromium not found at {CHROMIUM}; install Debian's chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    playwright = playwright_instance
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()


class Study:
    """The served study, the fake MTurk and the commands that act on both."""

    def __init__(
        self,
        served: ServedStudy,
        fake: FakeMTurk,
        database_url: str,
        consistency: ConsistencyPlugin,
        home: Path,
    ) -> None:
        self.served = served
        self.fake = fake
        self.database_url = database_url
        self.consistency = consistency
        self.home = home

    def argv(self, *args: str, group: tuple[str, ...] = ()) -> list[str]:
        return [
            "mturk",
            "--endpoint-url",
            self.fake.endpoint_url,
            *group,
            *args,
            "--database-url",
            self.database_url,
        ]

    def run(self, *args: str, group: tuple[str, ...] = ()) -> Result:
        result = CliRunner().invoke(
            build_cli(), self.argv(*args, group=group), env={"SERVER_ADDRESS": SERVER}
        )
        return result

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start ``caqe ARGS`` in a subprocess that the test may kill."""
        env = {
            **os.environ,
            "TEST_CONSISTENCY": json.dumps(self.consistency.scores),
            "CAQE_HOME": str(self.home),
        }
        return subprocess.Popen(
            [sys.executable, "-c", COMMAND_LINE, *self.argv(*args)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def hits(self) -> list[dict[str, Any]]:
        return self.fake.client().list_hits(MaxResults=100)["HITs"]

    def participants(self) -> list[Participant]:
        with self.served.session_factory() as session:
            return list(
                session.scalars(select(Participant).order_by(Participant.id)).all()
            )

    def ledger(self) -> list[Payment]:
        with self.served.session_factory() as session:
            return list(session.scalars(select(Payment).order_by(Payment.id)).all())


@pytest.fixture
def study(
    tmp_path: Path,
    sqlite_url: str,
    fake_mturk: FakeMTurk,
    frame_site: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Study]:
    for name in ("MTURK_HOST", "CAQE_MTURK_ENDPOINT_URL", "CAQE_MTURK_SUBMIT_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    consistency = ConsistencyPlugin()
    registry: Registry = build_registry(
        extra_plugins=[("scale", scale_plugin), ("consistency", consistency)]
    )
    config = scale_study(
        tmp_path / "study",
        items=3,
        stimuli=2,
        recruiter="mturk",
        flow={"steps": ["consent", "trials"]},
        web={"frame_ancestors": ["'self'", frame_site]},
        mturk={
            "max_assignments": 3,
            "max_assignments_per_worker": 2,
            "allowed_submit_origins": [fake_mturk.endpoint_url],
        },
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        yield Study(served, fake_mturk, sqlite_url, consistency, tmp_path / "caqe-home")
    finally:
        set_registry(None)
        served.stop()


def local_entry_url(
    study: Study, hit: dict[str, Any], assignment_id: str, worker: str
) -> str:
    """The URL MTurk would frame, with https://SERVER rewritten to the test server."""
    root = ElementTree.fromstring(hit["Question"])
    external_url = "".join(
        element.text or "" for element in root if element.tag.endswith("ExternalURL")
    )
    public_prefix = f"https://{SERVER}/"
    assert external_url == f"{public_prefix}mturk/"
    local = study.served.url + "/" + external_url.removeprefix(public_prefix)
    query = {
        "assignmentId": assignment_id,
        "hitId": hit["HITId"],
        "workerId": worker,
        "turkSubmitTo": study.fake.turk_submit_to,
    }
    return f"{local}?{urlencode(query)}"


def work_in_browser(
    study: Study,
    browser: Any,
    frame_site: str,
    hit: dict[str, Any],
    worker: str,
    screenshots: Path | None = None,
) -> str:
    """Accept a HIT as ``worker``, complete the study in the frame, submit the HIT."""
    assignment_id = study.fake.simulate_accept(hit["HITId"], worker)
    entry = local_entry_url(study, hit, assignment_id, worker)
    context = browser.new_context(viewport={"width": 1000, "height": 820})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{frame_site}/hit?{urlencode({'src': entry})}")
        frame = page.wait_for_selector("#hit").content_frame()
        frame.wait_for_load_state()
        loaded = frame.locator("#agree, #trial").count()
        assert loaded, f"the study did not load in the frame: {frame.content()[:300]}"
        if frame.locator("#agree").count():
            if screenshots is not None:
                page.screenshot(path=str(screenshots / "consent.png"))
            frame.check("#agree")
            with frame.expect_navigation():
                frame.click("#continue")
        for _ in range(10):
            if frame.locator("#trial").count() == 0:
                break
            answer = frame.evaluate(SUBMIT_TRIAL)
            assert answer["status"] == 200, answer
            frame.goto(study.served.url + answer["body"]["next"])
        assert frame.locator("#submit-hit").count() == 1, frame.content()[:500]
        if screenshots is not None:
            page.screenshot(path=str(screenshots / "submit.png"))
        with frame.expect_navigation():
            frame.click("#submit-hit")
        assert f"Assignment {assignment_id} was submitted." in frame.content()
    finally:
        context.close()
    assert not errors, f"Uncaught errors in the study's pages: {errors}"
    assert study.fake.assignment_status(assignment_id) == "Submitted"
    return assignment_id


def wait_for_call(
    fake: FakeMTurk, operation: str, count: int, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while fake.calls.count(operation) < count:
        assert time.monotonic() < deadline, (
            f"{operation} was not called {count} time(s)"
        )
        time.sleep(0.01)


def kill_after(process: subprocess.Popen[str], fake: FakeMTurk, operation: str) -> str:
    """Kill the command as soon as MTurk received its first ``operation``."""
    try:
        wait_for_call(fake, operation, 1)
    finally:
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, output
    return output


def test_mturk_study_end_to_end(
    study: Study, chromium: Any, frame_site: str, tmp_path: Path
) -> None:
    created = study.run("create-hits", "2")
    assert created.exit_code == 0, created.output
    first_hit, second_hit = sorted(study.hits(), key=lambda hit: hit["CreationTime"])

    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    one_first = work_in_browser(
        study, chromium, frame_site, first_hit, "AWORKERONE", screenshots
    )
    two_only = work_in_browser(study, chromium, frame_site, first_hit, "AWORKERTWO")
    # A returning worker: consent is skipped, the second HIT is a new session.
    one_second = work_in_browser(study, chromium, frame_site, second_hit, "AWORKERONE")

    participants = study.participants()
    assert [row.status for row in participants] == ["completed"] * 3
    assert [row.external_data["assignmentId"] for row in participants] == [
        one_first,
        two_only,
        one_second,
    ]
    # Screenshots of the framed study, for a person to look at when this fails.
    assert (screenshots / "consent.png").stat().st_size > 0
    assert (screenshots / "submit.png").stat().st_size > 0

    # approve-all-hits, killed after MTurk received its first approval.
    study.fake.latency = 0.2
    killed = kill_after(
        study.spawn("approve-all-hits"), study.fake, "ApproveAssignment"
    )
    study.fake.latency = 0.0
    assert "reward(s) paid now" not in killed
    approved = study.run("approve-all-hits")
    assert approved.exit_code == 0, approved.output

    # give-first-trial-bonus, killed the same way.
    study.fake.latency = 0.2
    kill_after(study.spawn("give-first-trial-bonus"), study.fake, "SendBonus")
    study.fake.latency = 0.0
    first_bonus = study.run("give-first-trial-bonus")
    assert first_bonus.exit_code == 0, first_bonus.output

    # MTurk acts on the consistency bonus's first SendBonus, but the response is lost.
    by_assignment = {row.external_data["assignmentId"]: row.id for row in participants}
    study.consistency.scores = {
        by_assignment[one_first]: 1.0,
        by_assignment[two_only]: 0.85,
        by_assignment[one_second]: 0.7,
    }
    study.fake.crash_after("SendBonus", 1)
    cut_off = study.run(
        "give-pairwise-consistency-bonus", group=("--max-attempts", "1")
    )
    assert cut_off.exit_code == 1
    assert "unconfirmed" in cut_off.output
    consistency = study.run("give-pairwise-consistency-bonus")
    assert consistency.exit_code == 0, consistency.output

    # Every command once more: nothing new is paid.
    for command in (
        "approve-all-hits",
        "give-first-trial-bonus",
        "give-pairwise-consistency-bonus",
    ):
        again = study.run(command)
        assert again.exit_code == 0, again.output
        assert "paid now" not in again.output

    rewards = sorted(
        (payment.assignment_id, payment.amount)
        for payment in study.fake.payments
        if payment.kind == "reward"
    )
    assert rewards == sorted(
        (assignment, Decimal("0.50"))
        for assignment in (one_first, two_only, one_second)
    )
    bonuses = sorted(
        (payment.assignment_id, payment.amount)
        for payment in study.fake.payments
        if payment.kind == "bonus"
    )
    assert bonuses == sorted(
        [
            (one_first, Decimal("0.30")),
            (two_only, Decimal("0.30")),
            (one_first, Decimal("0.25")),
            (two_only, Decimal("0.13")),
        ]
    )
    assert study.fake.balance == Decimal("10000.00") - Decimal("1.50") - Decimal("0.98")
    ledger = study.ledger()
    assert len(ledger) == 7
    assert {row.status for row in ledger} == {"paid"}
    assert sum(row.amount for row in ledger) == Decimal("2.48")

    # The worker at the session limit now has the exclusion qualification.
    with study.served.session_factory() as session:
        qualification = next(
            row
            for row in session.scalars(select(RecruitmentJob)).all()
            if row.data.get("kind") == "exclusion_qualification"
        )
    holders = study.fake.client().list_workers_with_qualification_type(
        QualificationTypeId=qualification.external_id
    )["Qualifications"]
    assert [holder["WorkerId"] for holder in holders] == ["AWORKERONE"]
