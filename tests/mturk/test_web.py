"""The worker's pages: preview, entry, returning workers and the end page."""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import requests
import soundfile
from caqe_mturk.config import MTurkConfig
from flask.testing import FlaskClient
from sqlalchemy import select, update

from caqe_core import FlowStep, StepOutcome, StepPage
from caqe_core.config import ConfigError, load_config
from caqe_core.flow import start_participant
from caqe_core.hookspecs import hookimpl
from caqe_core.models import Participant, RecruitmentJob, ScreeningResult
from caqe_core.plugins import Registry, build_registry
from tests.support import scale_plugin
from tests.support.processes import call_at_once, serve_in_processes
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study

SUBMIT_ORIGIN = "http://127.0.0.1:9"
FRAME_ORIGIN = "http://127.0.0.2:8000"
HIT = "HITONE"
PREVIEW = "ASSIGNMENT_ID_NOT_AVAILABLE"
FLOW = ["consent", "pre_survey", "screen", "trials", "post_survey"]


class ScreenStep(FlowStep):
    """A one-time screening step: 'yes' passes, anything else screens out."""

    name = "screen"
    title = "Listening check"
    one_time = True

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        return (
            f"<h1 id='screen'>Listening check</h1><form method='post' "
            f"action='{page.submit_url}'><input type='hidden' name='csrf_token' "
            f"value='{page.csrf_token}'></form>"
        )

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        passed = form.get("answer") == "yes"
        return StepOutcome(
            done=True,
            passed=passed,
            data={"answer": form.get("answer")},
            end_session=not passed,
        )


class ScreenPlugin:
    @hookimpl
    def register_flow_steps(self, register: Callable[[FlowStep], None]) -> None:
        register(ScreenStep())


@dataclass
class Site:
    served: ServedStudy
    client: FlaskClient

    @property
    def factory(self):
        return self.served.session_factory

    def entry(
        self,
        assignment: str,
        worker: str | None = "AWORKERONE",
        hit: str = HIT,
        submit_to: str = SUBMIT_ORIGIN,
    ):
        query = {"assignmentId": assignment, "hitId": hit, "turkSubmitTo": submit_to}
        if worker is not None:
            query["workerId"] = worker
        return self.client.get(f"/mturk/?{urlencode(query)}")

    def participants(self) -> list[Participant]:
        with self.factory() as session:
            return list(
                session.scalars(select(Participant).order_by(Participant.id)).all()
            )

    def start(self, assignment: str, worker: str = "AWORKERONE") -> str:
        """Enter with an accepted assignment; return the participant page path."""
        response = self.entry(assignment, worker)
        assert response.status_code == 302, response.get_data(as_text=True)
        return response.headers["Location"]

    def step(self, page: str) -> str:
        with self.factory() as session:
            token = page.rstrip("/").rsplit("/", 1)[-1]
            participants = session.scalars(select(Participant)).all()
        from caqe_core.web import decode_participant_token

        with self.served.app.test_request_context():
            public_id = decode_participant_token(token)
        return next(row.step for row in participants if row.public_id == public_id)

    def submit_step(self, page: str, name: str, form: dict[str, str]) -> None:
        text = self.client.get(page).get_data(as_text=True)
        csrf = re.search(r"name=.csrf_token. value=.([0-9a-f]+)", text)
        assert csrf, f"no CSRF token on the {name} page: {text[:300]}"
        response = self.client.post(
            f"{page}step/{name}", data={"csrf_token": csrf.group(1), **form}
        )
        assert response.status_code == 303, response.get_data(as_text=True)

    def do_trials(self, page: str) -> None:
        while True:
            text = self.client.get(page).get_data(as_text=True)
            match = re.search(
                r"<script id='trial' type='application/json'>(.*?)</script>", text
            )
            if match is None:
                return
            trial = json.loads(html.unescape(match.group(1)))
            body = {
                "idempotency_key": f"key-{trial['submit'][-12:]}-0123",
                "response": {
                    "ratings": {signal["id"]: 5 for signal in trial["signals"]}
                },
                "events": [],
            }
            answer = self.client.post(
                trial["submit"], json=body, headers={"X-CAQE-CSRF": trial["csrf"]}
            )
            assert answer.status_code == 200, answer.get_data(as_text=True)

    def complete(self, assignment: str, worker: str = "AWORKERONE") -> str:
        """Run one whole session; return the participant page path."""
        page = self.start(assignment, worker)
        for _ in range(len(FLOW) + 1):
            step = self.step(page)
            if step == "consent":
                self.submit_step(page, "consent", {"agree": "yes"})
            elif step == "pre_survey":
                self.submit_step(
                    page, "pre_survey", {"age": "30", "hearing_disorder": "no"}
                )
            elif step == "screen":
                self.submit_step(page, "screen", {"answer": "yes"})
            elif step == "trials":
                self.do_trials(page)
            elif step == "post_survey":
                self.submit_step(
                    page,
                    "post_survey",
                    {
                        "listening_device": "closed headphones",
                        "critical_listening": "some",
                        "environment_noise": "quiet",
                    },
                )
            else:
                break
        assert self.step(page) == "done"
        return page


def write_config(folder: Path, recruiter: str = "mturk", **mturk: Any) -> Path:
    overrides: dict[str, Any] = {
        "recruiter": recruiter,
        "flow": {"steps": FLOW},
        "web": {"frame_ancestors": ["'self'", FRAME_ORIGIN]},
    }
    if recruiter == "mturk":
        overrides["mturk"] = {
            "allowed_submit_origins": [SUBMIT_ORIGIN],
            "max_assignments_per_worker": 2,
            **mturk,
        }
    else:
        overrides["flow"] = {"steps": ["consent", "trials"]}
    return scale_study(folder, items=3, stimuli=2, **overrides)


@pytest.fixture
def web_registry() -> Registry:
    return build_registry(
        extra_plugins=[("scale", scale_plugin), ("screen", ScreenPlugin())]
    )


def make_site(
    tmp_path: Path, sqlite_url: str, registry: Registry, **mturk: Any
) -> Site:
    served = build_study(
        write_config(tmp_path / "study", **mturk),
        sqlite_url,
        registry,
        tmp_path / "data",
    )
    with served.session_factory() as session, session.begin():
        for hit in (HIT, "HITTWO", "HITTHREE"):
            session.add(
                RecruitmentJob(
                    experiment_id=served.study.experiment_id,
                    recruiter="mturk",
                    request_token=f"token-{hit}",
                    external_id=hit,
                    status="created",
                    data={"kind": "hit"},
                )
            )
    return Site(served, served.app.test_client())


@pytest.fixture
def site(
    tmp_path: Path,
    sqlite_url: str,
    web_registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> Site:
    monkeypatch.delenv("CAQE_MTURK_SUBMIT_ORIGINS", raising=False)
    return make_site(tmp_path, sqlite_url, web_registry)


# --- preview --------------------------------------------------------------------


def test_preview_assigns_nothing(site: Site) -> None:
    response = site.entry(PREVIEW, worker=None)

    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "This is a preview. Accept the HIT to begin." in text
    assert '<audio controls preload="none" src="/mturk/audio-check.wav"' in text
    assert "$0.50" in text
    assert site.participants() == []


def test_preview_without_arguments(site: Site) -> None:
    response = site.client.get("/mturk/")

    assert response.status_code == 200
    assert "Accept the HIT to begin" in response.get_data(as_text=True)
    assert site.participants() == []


def test_root_redirects_to_entry(site: Site) -> None:
    response = site.client.get("/")

    assert response.status_code == 302
    assert response.headers["Location"].endswith("/mturk/")


def test_audio_check_is_a_tone(site: Site) -> None:
    response = site.client.get("/mturk/audio-check.wav")

    assert response.status_code == 200
    assert response.mimetype == "audio/wav"
    signal, rate = soundfile.read(io.BytesIO(response.get_data()))
    assert rate == 44100
    assert len(signal) == 2 * 44100
    assert np.max(np.abs(signal)) == pytest.approx(0.1, abs=0.002)
    spectrum = np.abs(np.fft.rfft(signal))
    assert np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)] == pytest.approx(
        1000
    )
    assert abs(signal[0]) < 1e-3
    assert abs(signal[-1]) < 1e-3


def test_pages_may_be_framed_by_configured_origin(site: Site) -> None:
    response = site.entry(PREVIEW, worker=None)

    policy = response.headers["Content-Security-Policy"]
    ancestors = re.search(r"frame-ancestors ([^;]+)", policy).group(1).split()
    assert ancestors == ["'self'", FRAME_ORIGIN]


# --- entry ------------------------------------------------------------------------


def test_accepted_assignment_starts_participant(site: Site) -> None:
    page = site.start("ASSIGNMENTONE")

    assert re.fullmatch(r"/p/[^/]+/", page)
    participants = site.participants()
    assert len(participants) == 1
    participant = participants[0]
    assert participant.recruiter == "mturk"
    assert participant.external_id == "AWORKERONE"
    assert participant.external_data == {
        "assignmentId": "ASSIGNMENTONE",
        "hitId": HIT,
        "turkSubmitTo": SUBMIT_ORIGIN,
    }
    assert "Consent" in site.client.get(page).get_data(as_text=True)


def test_same_assignment_resumes_participant(site: Site) -> None:
    first = site.start("ASSIGNMENTONE")
    site.submit_step(first, "consent", {"agree": "yes"})

    second = site.start("ASSIGNMENTONE")

    assert second == first
    assert len(site.participants()) == 1
    assert site.step(second) == "pre_survey"


def test_concurrent_entries_start_one_participant(site: Site) -> None:
    url = site.served.start()
    query = urlencode(
        {
            "assignmentId": "ASSIGNMENTONE",
            "hitId": HIT,
            "workerId": "AWORKERONE",
            "turkSubmitTo": SUBMIT_ORIGIN,
        }
    )
    locations: list[str] = []

    def enter() -> None:
        response = requests.get(
            f"{url}/mturk/?{query}", allow_redirects=False, timeout=30
        )
        locations.append(response.headers.get("Location", str(response.status_code)))

    try:
        threads = [threading.Thread(target=enter) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        site.served.stop()

    assert len(set(locations)) == 1
    assert len(site.participants()) == 1


ENTRY_PROCESSES = 3
ENTRY_ROUNDS = 6
ENTRIES_PER_PROCESS = 2


def _study_with_hit(
    tmp_path: Path, database_url: str, registry: Registry, **mturk: Any
) -> tuple[Path, ServedStudy]:
    """Build an MTurk study with one created HIT; ``mturk`` adds config keys."""
    config = scale_study(
        tmp_path / "study",
        items=3,
        stimuli=2,
        recruiter="mturk",
        mturk={"allowed_submit_origins": [SUBMIT_ORIGIN], **mturk},
    )
    served = build_study(config, database_url, registry, tmp_path / "data")
    with served.session_factory() as session, session.begin():
        session.add(
            RecruitmentJob(
                experiment_id=served.study.experiment_id,
                recruiter="mturk",
                request_token=f"token-{HIT}",
                external_id=HIT,
                status="created",
                data={"kind": "hit"},
            )
        )
    return config, served


def _entry_query(assignment: str, worker: str) -> str:
    return urlencode(
        {
            "assignmentId": assignment,
            "hitId": HIT,
            "workerId": worker,
            "turkSubmitTo": SUBMIT_ORIGIN,
        }
    )


def test_entries_in_processes_start_one_participant(
    tmp_path: Path, database_url: str, registry: Registry
) -> None:
    """Server processes that share only the database start one participant per assignment.

    Each round sends the first entries of a new assignment to every process
    at once, so each process may find no participant before another stores one.
    """
    config, served = _study_with_hit(tmp_path, database_url, registry)
    assignments = [f"ASSIGNMENT{round_}" for round_ in range(ENTRY_ROUNDS)]
    locations: dict[str, list[str]] = {assignment: [] for assignment in assignments}

    with serve_in_processes(
        config, database_url, tmp_path / "data", ENTRY_PROCESSES
    ) as urls:
        for assignment in assignments:
            query = _entry_query(assignment, f"AWORKER{assignment}")
            answers = call_at_once(
                [
                    lambda url=url, query=query: requests.get(
                        f"{url}/mturk/?{query}", allow_redirects=False, timeout=60
                    )
                    for url in urls * ENTRIES_PER_PROCESS
                ]
            )
            locations[assignment] = [
                answer.headers.get("Location", str(answer.status_code))
                for answer in answers
            ]

    with served.session_factory() as session:
        started = session.scalars(select(Participant).order_by(Participant.id)).all()
    served.session_factory.kw["bind"].dispose()
    per_assignment = [row.external_data["assignmentId"] for row in started]
    for assignment in assignments:
        assert len(locations[assignment]) == len(urls) * ENTRIES_PER_PROCESS
        assert len(set(locations[assignment])) == 1, locations[assignment]
        assert locations[assignment][0].startswith("/p/"), locations[assignment]
        assert per_assignment.count(assignment) == 1, per_assignment
    assert [row.sequence for row in started] == list(range(ENTRY_ROUNDS))


WORKER_ASSIGNMENTS = 6


@pytest.mark.parametrize("limit", [1, 2])
def test_worker_limit_holds_across_processes(
    tmp_path: Path, database_url: str, registry: Registry, limit: int
) -> None:
    """Different assignments of one worker sent at once start ``limit`` participants.

    The entries go to several server processes that share only the database,
    so no process can read the participants another is starting.
    """
    config, served = _study_with_hit(
        tmp_path, database_url, registry, max_assignments_per_worker=limit
    )
    assignments = [f"ASSIGNMENT{index}" for index in range(WORKER_ASSIGNMENTS)]

    with serve_in_processes(
        config, database_url, tmp_path / "data", ENTRY_PROCESSES
    ) as urls:
        answers = call_at_once(
            [
                lambda url=urls[index % len(urls)], assignment=assignment: requests.get(
                    f"{url}/mturk/?{_entry_query(assignment, 'AWORKERONE')}",
                    allow_redirects=False,
                    timeout=60,
                )
                for index, assignment in enumerate(assignments)
            ]
        )
        responses = [(answer.status_code, answer.text) for answer in answers]

    with served.session_factory() as session:
        started = session.scalars(select(Participant)).all()
    served.session_factory.kw["bind"].dispose()
    statuses = sorted(status for status, _ in responses)
    assert len(responses) == WORKER_ASSIGNMENTS
    assert statuses == [302] * limit + [403] * (WORKER_ASSIGNMENTS - limit)
    for status, text in responses:
        if status == 403:
            assert "You already took part" in text
    assert len(started) == limit


def test_assignment_of_other_worker_rejected(site: Site) -> None:
    site.start("ASSIGNMENTONE", "AWORKERONE")

    response = site.entry("ASSIGNMENTONE", "AWORKERTWO")

    assert response.status_code == 409
    assert len(site.participants()) == 1


def test_assignment_with_newline_starts_nothing(site: Site) -> None:
    """An id with a trailing newline is not a second key for one assignment."""
    first = site.start("ASSIGNMENTONE")

    response = site.entry("ASSIGNMENTONE\n")

    assert response.status_code == 400
    assert len(site.participants()) == 1
    assert site.start("ASSIGNMENTONE") == first


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"submit_to": "https://evil.example.org"}, "turkSubmitTo"),
        ({"submit_to": "http://www.mturk.com"}, "turkSubmitTo"),
        ({"submit_to": "https://www.mturk.com.evil.example.org"}, "turkSubmitTo"),
        ({"submit_to": "https://www.mturk.com/other/path"}, "turkSubmitTo"),
        ({"submit_to": "javascript:alert(1)"}, "turkSubmitTo"),
        ({"submit_to": ""}, "turkSubmitTo"),
        ({"worker": "not-a-worker"}, "workerId"),
        ({"worker": None}, "workerId"),
        ({"assignment": "ASSIGNMENT<script>"}, "assignmentId"),
        ({"assignment": "ASSIGNMENTONE\n"}, "assignmentId"),
        ({"worker": "AWORKERONE\n"}, "workerId"),
        ({"hit": f"{HIT}\n"}, "hitId"),
        ({"hit": ""}, "hitId"),
        ({"hit": "HITOFANOTHERSTUDY"}, "not part of this study"),
    ],
)
def test_invalid_entry_rejected(
    site: Site, overrides: dict[str, Any], expected: str
) -> None:
    arguments: dict[str, Any] = {"assignment": "ASSIGNMENTONE", **overrides}
    assignment = arguments.pop("assignment")

    response = site.entry(assignment, **arguments)

    assert response.status_code == 400
    assert expected in html.unescape(response.get_data(as_text=True))
    assert site.participants() == []


@pytest.mark.parametrize(
    "origin", ["https://www.mturk.com", "https://workersandbox.mturk.com"]
)
def test_mturk_origins_accepted(site: Site, origin: str) -> None:
    response = site.entry("ASSIGNMENTONE", submit_to=origin)

    assert response.status_code == 302
    assert site.participants()[0].external_data["turkSubmitTo"] == origin


def test_submit_origin_from_environment(
    tmp_path: Path,
    sqlite_url: str,
    web_registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CAQE_MTURK_SUBMIT_ORIGINS", "http://127.0.0.3:8080, https://bad path"
    )
    site = make_site(tmp_path, sqlite_url, web_registry)

    response = site.entry("ASSIGNMENTONE", submit_to="http://127.0.0.3:8080")

    assert response.status_code == 302


def test_entry_absent_for_other_recruiters(
    tmp_path: Path, sqlite_url: str, web_registry: Registry
) -> None:
    served = build_study(
        write_config(tmp_path / "lab", recruiter="local_lab"),
        sqlite_url,
        web_registry,
        tmp_path / "data",
    )

    response = served.app.test_client().get(
        f"/mturk/?{urlencode({'assignmentId': 'ASSIGNMENTONE', 'hitId': HIT, 'workerId': 'AWORKERONE', 'turkSubmitTo': SUBMIT_ORIGIN})}"
    )

    assert response.status_code == 404


# --- returning workers ---------------------------------------------------------------


def _add_participant(
    site: Site, worker: str, status: str, finished: dt.datetime, assignment: str
) -> int:
    participant = start_participant(
        site.factory,
        site.served.study,
        "mturk",
        external_id=worker,
        external_data={
            "assignmentId": assignment,
            "hitId": HIT,
            "turkSubmitTo": SUBMIT_ORIGIN,
        },
    )
    with site.factory() as session, session.begin():
        session.execute(
            update(Participant)
            .where(Participant.id == participant.id)
            .values(status=status, step="done", finished_at=finished)
        )
    return participant.id


def test_worker_at_limit_told_before_work(site: Site) -> None:
    now = dt.datetime.now(dt.UTC)
    _add_participant(site, "AWORKERONE", "completed", now, "ASSIGNMENTONE")
    _add_participant(site, "AWORKERONE", "completed", now, "ASSIGNMENTTWO")

    accepted = site.entry("ASSIGNMENTTHREE", "AWORKERONE")
    previewed = site.entry(PREVIEW, "AWORKERONE")

    for response in (accepted, previewed):
        assert response.status_code == 403
        assert "You already took part" in response.get_data(as_text=True)
    assert len(site.participants()) == 2
    assert site.entry("ASSIGNMENTFOUR", "AWORKERTWO").status_code == 302


def test_active_sessions_count_until_expiry(site: Site) -> None:
    site.start("ASSIGNMENTONE")
    site.start("ASSIGNMENTTWO")

    blocked = site.entry("ASSIGNMENTTHREE", "AWORKERONE")

    assert blocked.status_code == 403
    assert "You already took part" in blocked.get_data(as_text=True)
    assert len(site.participants()) == 2

    expired = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=31)
    with site.factory() as session, session.begin():
        session.execute(
            update(Participant)
            .where(Participant.idempotency_key == "ASSIGNMENTONE")
            .values(created_at=expired)
        )

    assert site.entry("ASSIGNMENTTHREE", "AWORKERONE").status_code == 302
    assert len(site.participants()) == 3


def test_worker_below_limit_may_return(site: Site) -> None:
    _add_participant(
        site, "AWORKERONE", "completed", dt.datetime.now(dt.UTC), "ASSIGNMENTONE"
    )

    assert site.entry("ASSIGNMENTTWO", "AWORKERONE").status_code == 302


def test_screened_out_worker_waits(site: Site) -> None:
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=23)
    _add_participant(site, "AWORKERONE", "screened_out", recent, "ASSIGNMENTONE")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)
    _add_participant(site, "AWORKERTWO", "screened_out", long_ago, "ASSIGNMENTTWO")

    waiting = site.entry("ASSIGNMENTTHREE", "AWORKERONE")
    allowed = site.entry("ASSIGNMENTFOUR", "AWORKERTWO")

    assert waiting.status_code == 403
    assert "for 24 hours" in waiting.get_data(as_text=True)
    assert allowed.status_code == 302


def test_returning_worker_skips_one_time_steps(site: Site) -> None:
    site.complete("ASSIGNMENTONE")

    page = site.start("ASSIGNMENTTWO")

    assert site.step(page) == "trials"
    site.do_trials(page)
    assert site.step(page) == "done"
    assert len(site.participants()) == 2
    assert [row.status for row in site.participants()] == ["completed", "completed"]


def test_expired_screening_is_repeated(site: Site) -> None:
    site.complete("ASSIGNMENTONE")
    with site.factory() as session, session.begin():
        session.execute(
            update(ScreeningResult)
            .where(ScreeningResult.step == "screen")
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=25))
        )

    page = site.start("ASSIGNMENTTWO")

    assert site.step(page) == "screen"


def test_failed_survey_answers_not_reused(site: Site) -> None:
    site.complete("ASSIGNMENTONE")
    with site.factory() as session, session.begin():
        first = session.scalars(select(Participant)).one()
        session.add(
            ScreeningResult(
                participant_id=first.id,
                step="pre_survey",
                attempt=1,
                passed=False,
                data={},
            )
        )

    page = site.start("ASSIGNMENTTWO")

    assert site.step(page) == "pre_survey"


def test_other_worker_does_not_skip(site: Site) -> None:
    site.complete("ASSIGNMENTONE", "AWORKERONE")

    page = site.start("ASSIGNMENTTWO", "AWORKERTWO")

    assert site.step(page) == "consent"


# --- end page ------------------------------------------------------------------------


def _submit_form(text: str) -> dict[str, str]:
    form = re.search(r'<form method="post" action="([^"]+)" id="submit-form"', text)
    assert form, text
    fields = dict(
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', text)
    )
    return {"action": html.unescape(form.group(1)), **fields}


def test_completion_posts_to_external_submit(site: Site) -> None:
    page = site.complete("ASSIGNMENTONE")

    form = _submit_form(site.client.get(page).get_data(as_text=True))

    assert form == {
        "action": f"{SUBMIT_ORIGIN}/mturk/externalSubmit",
        "assignmentId": "ASSIGNMENTONE",
        "status": "completed",
    }


def test_completion_checks_stored_origin(site: Site) -> None:
    page = site.complete("ASSIGNMENTONE")
    with site.factory() as session, session.begin():
        participant = session.scalars(select(Participant)).one()
        participant.external_data = {
            **participant.external_data,
            "turkSubmitTo": "https://evil.example.org",
        }

    text = site.client.get(page).get_data(as_text=True)

    assert "submit-form" not in text
    assert "evil.example.org" not in text
    assert "cannot be submitted to Mechanical Turk from here" in text


def _screen_out(site: Site, page: str) -> None:
    site.submit_step(page, "consent", {"agree": "yes"})
    site.submit_step(page, "pre_survey", {"age": "30", "hearing_disorder": "no"})
    site.submit_step(page, "screen", {"answer": "no"})


def test_screened_out_worker_returns_hit(site: Site) -> None:
    page = site.start("ASSIGNMENTONE")
    _screen_out(site, page)

    text = site.client.get(page).get_data(as_text=True)

    assert site.participants()[0].status == "screened_out"
    assert "submit-form" not in text
    assert "Please return it" in text


def test_screened_out_may_submit_when_configured(
    tmp_path: Path, sqlite_url: str, web_registry: Registry
) -> None:
    site = make_site(tmp_path, sqlite_url, web_registry, submit_screened_out=True)
    page = site.start("ASSIGNMENTONE")
    _screen_out(site, page)

    form = _submit_form(site.client.get(page).get_data(as_text=True))

    assert form["status"] == "screened_out"
    assert form["assignmentId"] == "ASSIGNMENTONE"


# --- config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mturk", "expected"),
    [
        ({"reward": 0.005}, "fractions of a cent"),
        ({"reward": 0}, "at least 0.01"),
        ({"first_hit_bonus": -0.3}, "must not be negative"),
        ({"allowed_submit_origins": ["http://example.org"]}, "plain http"),
        ({"allowed_submit_origins": ["https://example.org/path"]}, "without a path"),
        ({"locales": ["usa"]}, "ISO 3166"),
        ({"min_consistency_threshold_for_bonus": 1}, "less than 1"),
        ({"max_assignments_per_worker": 0}, "greater than or equal to 1"),
        ({"rewards": 1}, "unknown key 'rewards'"),
    ],
)
def test_config_rejects_bad_values(
    tmp_path: Path, web_registry: Registry, mturk: dict[str, Any], expected: str
) -> None:
    path = write_config(tmp_path / "study", **mturk)

    with pytest.raises(ConfigError) as excinfo:
        load_config(path, web_registry)

    message = str(excinfo.value)
    assert "mturk." in message
    assert expected in message


def test_config_defaults_follow_caqe(tmp_path: Path, web_registry: Registry) -> None:
    section = MTurkConfig()

    assert str(section.reward) == "0.50"
    assert str(section.first_hit_bonus) == "0.30"
    assert str(section.max_consistency_bonus) == "0.25"
    assert section.min_consistency_threshold_for_bonus == 0.7
    assert section.min_number_hits_approved == 1000
    assert section.min_percent_assignments_approved == 97
    assert section.assignment_duration_seconds == 1800
    assert section.lifetime_seconds == 7 * 24 * 3600
    assert section.auto_approval_delay_seconds == 24 * 3600


def test_config_float_money_is_exact(tmp_path: Path, web_registry: Registry) -> None:
    config = load_config(
        write_config(tmp_path / "study", reward=0.3, first_hit_bonus=1.1), web_registry
    )

    section = config.section("mturk")
    assert str(section.reward) == "0.30"
    assert str(section.first_hit_bonus) == "1.10"
