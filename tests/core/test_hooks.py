"""Every hook of caqe_core.hookspecs, through the code that calls it.

``Recorder`` is an inline plugin that implements every hook and records
each call. The lifecycle test takes one participant from arrival to the
analysis report and the consistency scores of a bonus, and asserts the
order of the calls. Each hook also has its own ``test_hook_<name>``, which
tests/core/test_meta.py requires.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import requests
from caqe_mturk.commands import collect_consistency
from click.testing import CliRunner
from flask import Blueprint
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from caqe_core import (
    CompletionPage,
    FlowStep,
    Recruiter,
    ReportSection,
    StepOutcome,
    StepPage,
    hookimpl,
)
from caqe_core.cli import build_cli, cli
from caqe_core.models import Participant, ScreeningResult, Trial
from caqe_core.plugins import PluginError, Registry, build_registry, set_registry
from caqe_core.web import current_study
from tests.support import scale_plugin
from tests.support.scale_plugin import ScaleTestType
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study


class EchoTestType(ScaleTestType):
    """The scale test type under another name, registered by the recorder."""

    name = "echo"
    title = "Echo of the scale test type"


class DoorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    farewell: str = "Goodbye from the door recruiter"


class DoorRecruiter(Recruiter):
    name = "door"
    title = "Participants who walk through a door"
    config_model = DoorConfig
    entry_endpoint = "recorder.door"

    def render_completion(self, page: CompletionPage) -> str:
        return (
            f"<p id='farewell'>{page.section.farewell}</p>"
            f"<p id='completed'>{page.completed}</p><p id='reason'>{page.reason}</p>"
        )


class PasswordConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = "open sesame"


class PasswordStep(FlowStep):
    """A screening step: the participant must type the password."""

    name = "password_check"
    title = "Password"
    config_model = PasswordConfig

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        error = (errors or {}).get("password", "")
        return (
            f"<form method='post' action='{page.submit_url}'>"
            f"<input type='hidden' name='csrf_token' value='{page.csrf_token}'>"
            f"<input name='password'><p id='error'>{error}</p>"
            f"<p id='attempt'>{page.attempt}</p></form>"
        )

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        given = form.get("password", "")
        if given == "give up":
            return StepOutcome(
                done=True, passed=False, end_session=True, data={"given": given}
            )
        if given != page.section.password:
            return StepOutcome(
                done=False,
                passed=False,
                data={"given": given},
                errors={"password": "Wrong password."},
            )
        return StepOutcome(
            done=True, passed=True, data={"given": given}, flag="typed_password"
        )


@dataclass(eq=False)
class Recorder:
    """A plugin that implements every hook and records the calls in order."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, hook: str, **details: Any) -> None:
        with self.lock:
            self.calls.append((hook, details))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def of(self, hook: str) -> list[dict[str, Any]]:
        return [details for name, details in self.calls if name == hook]

    @hookimpl
    def register_test_types(self, register: Callable[[Any], None]) -> None:
        self.record("register_test_types")
        register(EchoTestType())

    @hookimpl
    def register_recruiters(self, register: Callable[[Any], None]) -> None:
        self.record("register_recruiters")
        register(DoorRecruiter())

    @hookimpl
    def register_flow_steps(self, register: Callable[[Any], None]) -> None:
        self.record("register_flow_steps")
        register(PasswordStep())

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        self.record("register_commands", existing=sorted(cli.commands))

        @cli.command("recorder-ping")
        @click.argument("word")
        def ping(word: str) -> None:
            """Print WORD back, proving that a plugin command runs."""
            click.echo(f"pong {word}")

    @hookimpl
    def register_routes(self, app: Any) -> None:
        self.record("register_routes", blueprints=sorted(app.blueprints))
        blueprint = Blueprint("recorder", __name__, url_prefix="/recorder")

        @blueprint.get("/ping")
        def ping() -> str:
            return f"pong {current_study().name}"

        @blueprint.get("/door")
        def door() -> str:
            return "the door"

        app.register_blueprint(blueprint)

    @hookimpl
    def participant_started(
        self, participant: Any, experiment: Any, session: Session
    ) -> None:
        self.record(
            "participant_started",
            participant=participant.id,
            step=participant.step,
            sequence=participant.sequence,
            experiment=experiment.name,
            stored=_stored_elsewhere(session, Participant, participant.id),
        )
        participant.external_data = {**participant.external_data, "greeted": True}

    @hookimpl
    def trial_stored(
        self, trial: Any, participant: Any, experiment: Any, session: Session
    ) -> None:
        self.record(
            "trial_stored",
            trial=trial.id,
            participant=participant.id,
            experiment=experiment.name,
            response=trial.response,
            stored=_stored_elsewhere(session, Trial, trial.id),
        )

    @hookimpl
    def participant_finished(
        self, participant: Any, experiment: Any, session: Session
    ) -> None:
        self.record(
            "participant_finished",
            participant=participant.id,
            status=participant.status,
            step=participant.step,
            finished=participant.finished_at is not None,
            experiment=experiment.name,
        )

    @hookimpl
    def report_sections(self, study: Any, data: Any) -> list[Any] | None:
        self.record(
            "report_sections",
            study=study.name,
            ratings=len(data.ratings),
            participants=len(data.participants),
        )
        return [
            ReportSection(
                title="Recorder section", html="<p>recorder-section-marker</p>"
            )
        ]

    @hookimpl
    def ratings_frame(self, study: Any, trials: list[Any]) -> Any | None:
        # Not recorded: returning None leaves the rows to export_rows, and
        # test_hook_ratings_frame covers the hook itself.
        return None

    @hookimpl
    def participant_consistency(
        self, study: Any, session: Session
    ) -> dict[int, float] | None:
        ids = session.scalars(
            select(Participant.id).where(
                Participant.experiment_id == study.experiment_id
            )
        ).all()
        self.record("participant_consistency", study=study.name, participants=len(ids))
        return {participant_id: 1.0 for participant_id in ids}


def _stored_elsewhere(session: Session, model: type, row_id: int) -> bool:
    """Return True if another connection finds the row, which proves it was committed."""
    with Session(bind=session.get_bind()) as other:
        return other.get(model, row_id) is not None


HOOK_ORDER = [
    "register_test_types",
    "register_recruiters",
    "register_flow_steps",
    "register_routes",
    "register_commands",
    "participant_started",
    "trial_stored",
    "trial_stored",
    "participant_finished",
    "report_sections",
    "participant_consistency",
]


@dataclass
class Recorded:
    recorder: Recorder
    registry: Registry
    served: ServedStudy
    database_url: str


@pytest.fixture
def recorded(tmp_path: Path, database_url: str) -> Iterator[Recorded]:
    """A study of the 'echo' test type with the password step, behind a live server."""
    recorder = Recorder()
    registry = build_registry(
        extra_plugins=[("scale", scale_plugin), ("recorder", recorder)]
    )
    config = scale_study(
        tmp_path / "study",
        flow={"steps": ["consent", "password_check", "trials"]},
        test_type="echo",
    )
    text = config.read_text().replace("\nscale:\n", "\necho:\n")
    config.write_text(text + "password_check:\n  password: swordfish\n")
    served = build_study(config, database_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        yield Recorded(recorder, registry, served, database_url)
    finally:
        served.stop()
        set_registry(None)
        cli.commands.pop("recorder-ping", None)


def _csrf(text: str) -> str:
    match = re.search(r"name=.csrf_token. value=.([^'\"]+)", text)
    assert match, "the page has a CSRF token"
    return match.group(1)


def _trial(text: str) -> dict[str, Any]:
    match = re.search(
        r"<script id='trial' type='application/json'>(.*?)</script>", text
    )
    assert match, "the page is a trial page"
    return json.loads(html.unescape(match.group(1)))


def start(base: str) -> tuple[requests.Session, str]:
    http = requests.Session()
    begun = http.post(f"{base}/lab/", allow_redirects=False)
    assert begun.status_code == 302
    return http, base + begun.headers["Location"]


def pass_screening(
    http: requests.Session, page_url: str, password: str = "swordfish"
) -> requests.Response:
    consent = http.get(page_url)
    csrf = _csrf(consent.text)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    return http.post(
        page_url + "step/password_check",
        data={"csrf_token": csrf, "password": password},
    )


def answer_trials(
    http: requests.Session, base: str, page_url: str, count: int = 2
) -> None:
    for index in range(count):
        trial = _trial(http.get(page_url).text)
        answer = http.post(
            base + trial["submit"],
            json={
                "idempotency_key": f"trial-{index}-0123456789",
                "response": {
                    "ratings": {signal["id"]: 4 for signal in trial["signals"]}
                },
            },
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )
        assert answer.status_code == 200


def test_lifecycle_calls_every_hook_in_order(
    recorded: Recorded, tmp_path: Path
) -> None:
    recorder = recorded.recorder
    base = recorded.served.url

    build_cli()
    http, page_url = start(base)
    screened = pass_screening(http, page_url)
    answer_trials(http, base, page_url)
    final = http.get(page_url)
    report = tmp_path / "report.html"
    analyzed = CliRunner().invoke(
        cli, ["analyze", "--database-url", recorded.database_url, "--out", str(report)]
    )
    with recorded.served.session_factory() as session:
        scores = collect_consistency(recorded.served.study, session)

    assert screened.status_code == 200
    assert final.status_code == 200
    assert analyzed.exit_code == 0, analyzed.output
    assert recorder.names() == HOOK_ORDER
    started = recorder.of("participant_started")[0]
    assert started["stored"] is True
    assert started["step"] == "consent"
    assert all(call["stored"] for call in recorder.of("trial_stored"))
    assert recorder.of("participant_finished")[0]["status"] == "completed"
    assert "recorder-section-marker" in report.read_text()
    assert scores == {1: 1.0}


def test_hook_register_test_types(recorded: Recorded) -> None:
    study = recorded.served.study

    assert isinstance(recorded.registry.test_types["echo"], EchoTestType)
    assert study.config.core.test_type == "echo"
    assert study.test_type.name == "echo"
    assert recorded.registry.provided["recorder"]["test_types"] == ["echo"]
    assert recorded.recorder.names()[:3] == [
        "register_test_types",
        "register_recruiters",
        "register_flow_steps",
    ]


def test_hook_register_test_types_rejects_wrong_object() -> None:
    class Broken:
        @hookimpl
        def register_test_types(self, register: Callable[[Any], None]) -> None:
            register("not a test type")

    with pytest.raises(PluginError) as raised:
        build_registry(extra_plugins=[("broken", Broken())])

    message = str(raised.value)
    assert "'broken'" in message
    assert "register_test_types" in message
    assert "caqe_core.TestType" in message


def test_hook_register_test_types_rejects_duplicate_name() -> None:
    class Twice:
        @hookimpl
        def register_test_types(self, register: Callable[[Any], None]) -> None:
            register(ScaleTestType())

    with pytest.raises(PluginError) as raised:
        build_registry(extra_plugins=[("scale", scale_plugin), ("twice", Twice())])

    assert "'twice'" in str(raised.value)
    assert "'scale'" in str(raised.value)


def test_hook_register_test_types_without_arguments() -> None:
    class Quiet:
        calls = 0

        @hookimpl
        def register_test_types(self) -> None:
            Quiet.calls += 1

    registry = build_registry(extra_plugins=[("quiet", Quiet())])

    assert Quiet.calls == 1
    assert "quiet" in [info.name for info in registry.plugin_infos()]


def test_hook_register_test_types_error_names_plugin() -> None:
    class Failing:
        @hookimpl
        def register_test_types(self, register: Callable[[Any], None]) -> None:
            raise KeyError("missing-setting")

    with pytest.raises(PluginError) as raised:
        build_registry(extra_plugins=[("failing", Failing())])

    message = str(raised.value)
    assert "'failing'" in message
    assert "register_test_types" in message
    assert "KeyError" in message
    assert "missing-setting" in message


def test_hook_register_recruiters(tmp_path: Path, sqlite_url: str) -> None:
    recorder = Recorder()
    registry = build_registry(
        extra_plugins=[("scale", scale_plugin), ("recorder", recorder)]
    )
    config = scale_study(
        tmp_path / "study", recruiter="door", door={"farewell": "Bye now"}
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        entry = requests.get(f"{served.url}/", allow_redirects=False)
        participant = _start_directly(served, "door")
        finished = requests.get(f"{served.url}/p/{participant}/")
    finally:
        served.stop()
        set_registry(None)

    assert registry.recruiters["door"].title == DoorRecruiter.title
    assert entry.status_code == 302
    assert entry.headers["Location"].endswith("/recorder/door")
    assert "Bye now" in finished.text
    assert "<p id='reason'>screened_out</p>" in finished.text


def _start_directly(served: ServedStudy, recruiter: str) -> str:
    """Start a participant without an entry page and end their session; return the token."""
    from caqe_core.flow import end_session, start_participant
    from caqe_core.web import participant_token

    participant = start_participant(served.session_factory, served.study, recruiter)
    with served.session_factory() as session, session.begin():
        row = session.get(Participant, participant.id)
        end_session(row, "screened_out")
    with served.app.app_context():
        return participant_token(participant.public_id)


def test_hook_register_flow_steps(recorded: Recorded) -> None:
    base = recorded.served.url
    http, page_url = start(base)

    wrong = pass_screening(http, page_url, password="guess")
    right = http.post(
        page_url + "step/password_check",
        data={"csrf_token": _csrf(wrong.text), "password": "swordfish"},
    )

    assert wrong.status_code == 422
    assert "Wrong password." in wrong.text
    assert "<p id='attempt'>1</p>" in wrong.text
    assert right.status_code == 200
    assert _trial(right.text)["signals"]
    with recorded.served.session_factory() as session:
        results = session.execute(
            select(
                ScreeningResult.attempt, ScreeningResult.passed, ScreeningResult.data
            )
            .where(ScreeningResult.step == "password_check")
            .order_by(ScreeningResult.attempt)
        ).all()
        participant = session.scalars(select(Participant)).one()
    assert [tuple(row) for row in results] == [
        (1, False, {"given": "guess"}),
        (2, True, {"given": "swordfish"}),
    ]
    assert participant.flags == ["typed_password"]
    assert participant.step == "trials"


def test_hook_register_flow_steps_ends_session(recorded: Recorded) -> None:
    http, page_url = start(recorded.served.url)

    ended = pass_screening(http, page_url, password="give up")

    assert ended.status_code == 200
    assert "completion-code" not in ended.text
    with recorded.served.session_factory() as session:
        participant = session.scalars(select(Participant)).one()
    assert participant.status == "screened_out"
    assert participant.step == "done"
    finished = recorded.recorder.of("participant_finished")
    assert [call["status"] for call in finished] == ["screened_out"]


def test_hook_register_commands(recorded: Recorded) -> None:
    group = build_cli()

    result = CliRunner().invoke(group, ["recorder-ping", "hello"])

    assert result.exit_code == 0, result.output
    assert result.output == "pong hello\n"
    existing = recorded.recorder.of("register_commands")[0]["existing"]
    assert {"run", "validate", "status", "db", "plugins"} <= set(existing)


def test_hook_register_routes(recorded: Recorded) -> None:
    answer = requests.get(f"{recorded.served.url}/recorder/ping")

    assert answer.status_code == 200
    assert answer.text == "pong scale-study"
    blueprints = recorded.recorder.of("register_routes")[0]["blueprints"]
    assert {"participant", "audio", "admin"} <= set(blueprints)


def test_hook_participant_started(recorded: Recorded) -> None:
    for _ in range(3):
        start(recorded.served.url)

    calls = recorded.recorder.of("participant_started")
    assert [call["sequence"] for call in calls] == [0, 1, 2]
    assert all(call["stored"] for call in calls)
    assert all(call["step"] == "consent" for call in calls)
    assert all(call["experiment"] == "scale-study" for call in calls)
    with recorded.served.session_factory() as session:
        data = session.scalars(select(Participant.external_data)).all()
    assert data == [{"greeted": True}] * 3


def test_hook_trial_stored(recorded: Recorded) -> None:
    base = recorded.served.url
    http, page_url = start(base)
    pass_screening(http, page_url)
    trial = _trial(http.get(page_url).text)
    ratings = {signal["id"]: 4 for signal in trial["signals"]}

    def post(body: dict[str, Any]) -> int:
        return http.post(
            base + trial["submit"], json=body, headers={"X-CAQE-CSRF": trial["csrf"]}
        ).status_code

    rejected = post(
        {"idempotency_key": "trial-0123456789", "response": {"ratings": {}}}
    )
    stored = post(
        {"idempotency_key": "trial-0123456789", "response": {"ratings": ratings}}
    )
    replayed = post(
        {"idempotency_key": "trial-0123456789", "response": {"ratings": ratings}}
    )

    assert (rejected, stored, replayed) == (422, 200, 200)
    calls = recorded.recorder.of("trial_stored")
    assert len(calls) == 1
    assert calls[0]["stored"] is True
    assert calls[0]["response"] == {"ratings": {key: 4.0 for key in sorted(ratings)}}
    with recorded.served.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Trial)) == 1


def test_hook_participant_finished(recorded: Recorded) -> None:
    base = recorded.served.url
    http, page_url = start(base)
    pass_screening(http, page_url)
    answer_trials(http, base, page_url)
    barrier = threading.Barrier(6)
    pages: list[str] = []

    def load() -> None:
        own = requests.Session()
        own.cookies.update(http.cookies)
        barrier.wait()
        pages.append(own.get(page_url).text)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(pages) == 6
    assert all("completion-code" in page for page in pages)
    calls = recorded.recorder.of("participant_finished")
    assert len(calls) == 1
    assert calls[0]["status"] == "completed"
    assert calls[0]["step"] == "done"
    assert calls[0]["finished"] is True


def test_hook_report_sections(recorded: Recorded, tmp_path: Path) -> None:
    base = recorded.served.url
    http, page_url = start(base)
    pass_screening(http, page_url)
    answer_trials(http, base, page_url)
    report = tmp_path / "report.html"

    result = CliRunner().invoke(
        build_cli(),
        ["analyze", "--database-url", recorded.database_url, "--out", str(report)],
    )

    assert result.exit_code == 0, result.output
    calls = recorded.recorder.of("report_sections")
    assert len(calls) == 1
    assert calls[0]["study"] == "scale-study"
    assert calls[0]["participants"] == 1
    assert calls[0]["ratings"] == 6
    text = report.read_text()
    assert "Recorder section" in text
    assert "recorder-section-marker" in text


def test_hook_participant_consistency(recorded: Recorded) -> None:
    for _ in range(2):
        start(recorded.served.url)

    with recorded.served.session_factory() as session:
        results = recorded.registry.hook.participant_consistency(
            study=recorded.served.study, session=session
        )
        merged = collect_consistency(recorded.served.study, session)

    assert [result for result in results if result is not None] == [{1: 1.0, 2: 1.0}]
    assert merged == {1: 1.0, 2: 1.0}
    assert (
        recorded.recorder.of("participant_consistency")
        == [{"study": "scale-study", "participants": 2}] * 2
    )
