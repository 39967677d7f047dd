"""``caqe mturk`` commands through a real boto3 client against the fake MTurk."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from caqe_mturk.client import (
    PERCENT_ASSIGNMENTS_APPROVED,
    PRODUCTION_ENDPOINT,
    SANDBOX_ENDPOINT,
    MTurkSetupError,
    mturk_fee,
    resolve_target,
)
from caqe_mturk.commands import consistency_bonus, question_url_for
from caqe_mturk.testing import FakeMTurk
from click.testing import CliRunner, Result
from sqlalchemy import delete, func, select

from caqe_core.cli import build_cli
from caqe_core.flow import start_participant
from caqe_core.hookspecs import hookimpl
from caqe_core.models import Participant, Payment, RecruitmentJob
from caqe_core.plugins import Registry, build_registry, set_registry
from tests.support import scale_plugin
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study

SERVER = "caqe.example.org"


class ConsistencyPlugin:
    """A stand-in for the pairwise plugin's participant_consistency hook."""

    def __init__(self) -> None:
        self.scores: dict[int, float] | None = None

    @hookimpl
    def participant_consistency(
        self, study: Any, session: Any
    ) -> dict[int, float] | None:
        return self.scores


@dataclass
class Harness:
    """A prepared MTurk study, the fake MTurk and a way to run commands."""

    served: ServedStudy
    fake: FakeMTurk
    database_url: str
    consistency: ConsistencyPlugin
    clock_step: list[int] = field(default_factory=lambda: [0])

    @property
    def factory(self):
        return self.served.session_factory

    def run(self, *args: str, group: tuple[str, ...] = (), **kwargs: Any) -> Result:
        """Run ``caqe mturk [group options] ARGS --database-url URL``."""
        env = {"SERVER_ADDRESS": SERVER, **kwargs.pop("env", {})}
        argv = [
            "mturk",
            "--endpoint-url",
            self.fake.endpoint_url,
            *group,
            *args,
            "--database-url",
            self.database_url,
        ]
        return CliRunner().invoke(build_cli(), argv, env=env, **kwargs)

    def hits(self) -> list[dict[str, Any]]:
        client = self.fake.client()
        return client.list_hits(MaxResults=100)["HITs"]

    def hit_rows(self) -> list[RecruitmentJob]:
        with self.factory() as session:
            rows = session.scalars(
                select(RecruitmentJob).order_by(RecruitmentJob.id)
            ).all()
            return [row for row in rows if row.data.get("kind") == "hit"]

    def work(self, hit_id: str, worker_id: str, submit: bool = True) -> tuple[int, str]:
        """Let a worker accept a HIT, complete a session and submit the HIT."""
        assignment_id = self.fake.simulate_accept(hit_id, worker_id)
        study = self.served.study
        participant = start_participant(
            self.factory,
            study,
            "mturk",
            external_id=worker_id,
            external_data={
                "assignmentId": assignment_id,
                "hitId": hit_id,
                "turkSubmitTo": self.fake.turk_submit_to,
            },
        )
        self.clock_step[0] += 1
        with self.factory() as session, session.begin():
            row = session.get(Participant, participant.id)
            row.status = "completed"
            row.step = "done"
            row.finished_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                minutes=self.clock_step[0]
            )
        if submit:
            self.fake.simulate_submit(assignment_id, {"status": "completed"})
        return participant.id, assignment_id

    def payments(self, kind: str | None = None) -> list[Payment]:
        with self.factory() as session:
            rows = session.scalars(select(Payment).order_by(Payment.id)).all()
            return [row for row in rows if kind is None or row.kind == kind]


def mturk_config(folder: Path, **mturk: Any) -> Path:
    section = {"max_assignments": 3, "max_assignments_per_worker": 2, **mturk}
    return scale_study(
        folder,
        items=2,
        stimuli=2,
        recruiter="mturk",
        mturk=section,
    )


@pytest.fixture
def consistency_plugin() -> ConsistencyPlugin:
    return ConsistencyPlugin()


@pytest.fixture
def mturk_registry(consistency_plugin: ConsistencyPlugin) -> Registry:
    return build_registry(
        extra_plugins=[("scale", scale_plugin), ("consistency", consistency_plugin)]
    )


@pytest.fixture
def harness(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mturk_registry: Registry,
    fake_mturk: FakeMTurk,
    consistency_plugin: ConsistencyPlugin,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    """The study on SQLite; ``parametrize("harness", BOTH_DATABASES, indirect=True)``
    runs a test on PostgreSQL as well."""
    for name in ("MTURK_HOST", "CAQE_MTURK_ENDPOINT_URL", "SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    backend = getattr(request, "param", "sqlite")
    database_url = request.getfixturevalue(f"{backend}_url")
    served = build_study(
        mturk_config(tmp_path / "study"),
        database_url,
        mturk_registry,
        tmp_path / "data",
    )
    set_registry(mturk_registry)
    try:
        yield Harness(served, fake_mturk, database_url, consistency_plugin)
    finally:
        set_registry(None)
        served.session_factory.kw["bind"].dispose()


BOTH_DATABASES = pytest.mark.parametrize(
    "harness", ["sqlite", "postgres"], indirect=True
)


def question_url(hit: dict[str, Any]) -> str:
    root = ElementTree.fromstring(hit["Question"])
    return "".join(
        element.text or "" for element in root if element.tag.endswith("ExternalURL")
    )


# --- targets ----------------------------------------------------------------------


def test_target_defaults_to_sandbox() -> None:
    target = resolve_target(False, False, None, environ={})
    assert target.production is False
    assert target.endpoint_url == SANDBOX_ENDPOINT


@pytest.mark.parametrize(
    "host", ["mechanicalturk.amazonaws.com", "mturk-requester.us-east-1.amazonaws.com"]
)
def test_target_production_from_mturk_host(host: str) -> None:
    target = resolve_target(False, False, None, environ={"MTURK_HOST": host})
    assert target.production is True
    assert target.endpoint_url == PRODUCTION_ENDPOINT


def test_target_sandbox_host_stays_sandbox() -> None:
    target = resolve_target(
        False,
        False,
        None,
        environ={"MTURK_HOST": "mechanicalturk.sandbox.amazonaws.com"},
    )
    assert target.endpoint_url == SANDBOX_ENDPOINT


@pytest.mark.parametrize(
    ("production", "debug", "endpoint", "environ", "expected"),
    [
        (
            False,
            False,
            None,
            {"MTURK_HOST": "example.org"},
            "not an MTurk requester host",
        ),
        (True, True, None, {}, "--debug posts to the sandbox"),
        (False, False, PRODUCTION_ENDPOINT, {}, "Pass --production"),
        (False, False, "http://mturk.example.org", {}, "plain http"),
        (False, False, "ftp://127.0.0.1", {}, "not an http(s) URL"),
        (
            False,
            False,
            None,
            {"CAQE_MTURK_ENDPOINT_URL": PRODUCTION_ENDPOINT},
            "Pass --production",
        ),
    ],
)
def test_target_rejects_unsafe_choices(
    production: bool, debug: bool, endpoint: str | None, environ: dict, expected: str
) -> None:
    with pytest.raises(
        MTurkSetupError, match=expected.replace("(", r"\(").replace(")", r"\)")
    ):
        resolve_target(production, debug, endpoint, environ=environ)


def test_target_keys_separate_endpoints() -> None:
    first = resolve_target(False, False, "http://127.0.0.1:1000", environ={})
    second = resolve_target(False, False, "http://127.0.0.1:2000", environ={})
    assert first.key != second.key
    assert first.key.startswith("sandbox@")
    assert resolve_target(True, False, None, environ={}).key == "production"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("caqe.example.org", "https://caqe.example.org/mturk/"),
        ("https://caqe.example.org/", "https://caqe.example.org/mturk/"),
        ("caqe.example.org:8443", "https://caqe.example.org:8443/mturk/"),
    ],
)
def test_question_url_is_https(address: str, expected: str) -> None:
    assert question_url_for(address) == expected


@pytest.mark.parametrize(
    "address", [None, "", "http://caqe.example.org", "caqe.example.org/path", "a:b:c"]
)
def test_question_url_rejects_bad_address(address: str | None) -> None:
    with pytest.raises(Exception) as excinfo:
        question_url_for(address)
    assert "SERVER_ADDRESS" in str(excinfo.value.message)


def test_mturk_fee_tiers() -> None:
    assert mturk_fee(Decimal("0.50"), 9) == Decimal("0.10")
    assert mturk_fee(Decimal("0.50"), 10) == Decimal("0.20")
    assert mturk_fee(Decimal("0.30")) == Decimal("0.06")
    assert mturk_fee(Decimal("0.01"), 1) == Decimal("0.01")


# --- create-hits -------------------------------------------------------------------


def test_create_hits_posts_configured_hits(harness: Harness) -> None:
    result = harness.run("create-hits", "3")

    assert result.exit_code == 0, result.output
    assert "Created 3 HIT(s)" in result.output
    hits = harness.hits()
    assert len(hits) == 3
    for hit in hits:
        assert question_url(hit) == f"https://{SERVER}/mturk/"
        assert hit["Reward"] == "0.50"
        assert hit["MaxAssignments"] == 3
        assert hit["AssignmentDurationInSeconds"] == 1800
        assert hit["AutoApprovalDelayInSeconds"] == 86400
        assert hit["RequesterAnnotation"].startswith("caqe:scale-study:")
        requirements = {
            item["QualificationTypeId"]: item
            for item in hit["QualificationRequirements"]
        }
        assert requirements[PERCENT_ASSIGNMENTS_APPROVED]["IntegerValues"] == [97]
        assert requirements["00000000000000000040"]["IntegerValues"] == [1000]
        exclusion = [
            item
            for item in requirements.values()
            if item["Comparator"] == "DoesNotExist"
        ]
        assert len(exclusion) == 1
        assert exclusion[0]["ActionsGuarded"] == "DiscoverPreviewAndAccept"
    rows = harness.hit_rows()
    assert {row.external_id for row in rows} == {hit["HITId"] for hit in hits}
    assert {row.status for row in rows} == {"created"}
    assert all(
        hit["RequesterAnnotation"].endswith(row.request_token)
        for hit, row in zip(
            sorted(hits, key=lambda hit: hit["HITId"]),
            sorted(rows, key=lambda row: row.external_id),
        )
    )


def test_create_hits_lifetime_is_one_week(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    hit = harness.hits()[0]
    lifetime = hit["Expiration"] - hit["CreationTime"]
    assert lifetime == dt.timedelta(days=7)


def test_create_hits_needs_server_address(harness: Harness) -> None:
    result = harness.run("create-hits", "2", env={"SERVER_ADDRESS": ""})

    assert result.exit_code == 1
    assert "SERVER_ADDRESS is not set" in result.output
    assert harness.hits() == []
    assert harness.hit_rows() == []


def test_create_hits_rejects_http_address(harness: Harness) -> None:
    result = harness.run(
        "create-hits", "1", env={"SERVER_ADDRESS": "http://caqe.example.org"}
    )

    assert result.exit_code == 1
    assert "HTTPS only" in result.output
    assert harness.hits() == []


def test_create_hits_debug_has_no_requirements(harness: Harness) -> None:
    result = harness.run("create-hits", "2", group=("--debug",))

    assert result.exit_code == 0, result.output
    assert all(
        "QualificationRequirements" not in hit or hit["QualificationRequirements"] == []
        for hit in harness.hits()
    )
    assert "CreateQualificationType" not in harness.fake.calls


def test_create_hits_reuses_exclusion_qualification(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    assert harness.run("create-hits", "1").exit_code == 0

    assert harness.fake.calls.count("CreateQualificationType") == 1
    exclusions = {
        item["QualificationTypeId"]
        for hit in harness.hits()
        for item in hit["QualificationRequirements"]
        if item["Comparator"] == "DoesNotExist"
    }
    assert len(exclusions) == 1


def test_create_hits_retries_throttling(harness: Harness) -> None:
    harness.fake.throttle(count=6, operation="CreateHIT")

    result = harness.run("create-hits", "4")

    assert result.exit_code == 0, result.output
    assert len(harness.hits()) == 4
    assert harness.fake.calls.count("CreateHIT") >= 10


def test_create_hits_dropped_response_creates_once(harness: Harness) -> None:
    harness.fake.crash_after("CreateHIT", 2)

    result = harness.run("create-hits", "3")

    assert result.exit_code == 0, result.output
    assert len(harness.hits()) == 3
    assert {row.status for row in harness.hit_rows()} == {"created"}


@BOTH_DATABASES
def test_create_hits_resume_after_interruption(harness: Harness) -> None:
    harness.fake.crash_after("CreateHIT", 1)

    first = harness.run(
        "create-hits", "3", "--concurrency", "1", group=("--max-attempts", "1")
    )

    assert first.exit_code == 1
    assert "--resume" in first.output
    assert len(harness.hits()) == 3
    assert [row.status for row in harness.hit_rows()].count("pending") == 1

    again = harness.run("create-hits", "3")
    assert again.exit_code == 1
    assert "pending" in again.output
    assert len(harness.hits()) == 3

    resumed = harness.run("create-hits", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(harness.hits()) == 3
    assert {row.status for row in harness.hit_rows()} == {"created"}
    assert "already on MTurk" in resumed.output


def test_create_hits_resume_sends_same_token(harness: Harness) -> None:
    harness.fake.fail_next("CreateHIT", "ServiceFault", n=1)

    first = harness.run("create-hits", "1", group=("--max-attempts", "1"))
    assert first.exit_code == 1
    token = harness.hit_rows()[0].request_token

    resumed = harness.run("create-hits", "--resume")
    assert resumed.exit_code == 0, resumed.output
    creates = [
        call for call in harness.fake.recorded_calls if call.operation == "CreateHIT"
    ]
    assert [call.params["UniqueRequestToken"] for call in creates] == [token, token]
    assert len(harness.hits()) == 1


def test_create_hits_rejected_request_fails_row(harness: Harness) -> None:
    harness.fake.fail_next("CreateHIT", "RequestError", n=1, message="Reward too small")

    result = harness.run("create-hits", "1")

    assert result.exit_code == 1
    assert "Reward too small" in result.output
    assert [row.status for row in harness.hit_rows()] == ["failed"]


def test_create_hits_production_asks_with_cost(harness: Harness) -> None:
    result = harness.run("create-hits", "2", group=("--production",), input="n\n")

    assert result.exit_code == 1
    assert "PRODUCTION" in result.output
    # 3 assignments per HIT pay the 20 % fee: 2 x 3 x (0.50 + 0.10) = 3.60.
    assert "$0.10 MTurk fee) = $3.60" in result.output
    assert "Available balance: $" in result.output
    assert harness.hits() == []
    assert harness.hit_rows() == []


def test_create_hits_production_with_yes(harness: Harness) -> None:
    result = harness.run("create-hits", "2", "--yes", group=("--production",))

    assert result.exit_code == 0, result.output
    assert len(harness.hits()) == 2
    assert all(
        row.data["target"].startswith("production@") for row in harness.hit_rows()
    )


def test_commands_ignore_other_targets(harness: Harness) -> None:
    assert (
        harness.run("create-hits", "1", "--yes", group=("--production",)).exit_code == 0
    )

    result = harness.run("expire-all-hits")

    assert result.exit_code == 0, result.output
    assert "Expired 0 of 0 HIT(s)" in result.output
    assert harness.hits()[0]["HITStatus"] == "Assignable"


def test_study_must_use_mturk(
    tmp_path: Path, sqlite_url: str, mturk_registry: Registry, fake_mturk: FakeMTurk
) -> None:
    config = scale_study(tmp_path / "lab", recruiter="local_lab")
    build_study(config, sqlite_url, mturk_registry, tmp_path / "data")
    set_registry(mturk_registry)
    try:
        result = CliRunner().invoke(
            build_cli(),
            [
                "mturk",
                "--endpoint-url",
                fake_mturk.endpoint_url,
                "status",
                "--database-url",
                sqlite_url,
            ],
        )
    finally:
        set_registry(None)
    assert result.exit_code == 1
    assert "recruits with 'local_lab', not MTurk" in result.output


def test_credentials_stay_out_of_logs(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACAQETESTKEY00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "caqe-secret-that-must-not-leak")
    caplog.set_level(logging.DEBUG)

    result = CliRunner().invoke(
        build_cli(),
        [
            "-v",
            "mturk",
            "--endpoint-url",
            harness.fake.endpoint_url,
            "create-hits",
            "1",
            "--database-url",
            harness.database_url,
        ],
        env={"SERVER_ADDRESS": SERVER},
    )

    assert result.exit_code == 0, result.output
    assert len(harness.hits()) == 1
    for text in (caplog.text, result.output):
        assert "AKIACAQETESTKEY00001" not in text
        assert "caqe-secret-that-must-not-leak" not in text


def test_missing_credentials_explained(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    result = harness.run("status")

    assert result.exit_code == 1
    assert "No AWS credentials found" in result.output


# --- expire and dispose ------------------------------------------------------------


def test_expire_all_hits(harness: Harness) -> None:
    assert harness.run("create-hits", "2").exit_code == 0
    outsider = harness.fake.client().create_hit(
        Title="Someone else's HIT",
        Description="Not part of the study",
        Reward="0.10",
        LifetimeInSeconds=3600,
        AssignmentDurationInSeconds=600,
        Question=harness.hits()[0]["Question"],
    )["HIT"]

    result = harness.run("expire-all-hits")

    assert result.exit_code == 0, result.output
    assert "Expired 2 of 2" in result.output
    states = {hit["HITId"]: hit["HITStatus"] for hit in harness.hits()}
    assert states.pop(outsider["HITId"]) == "Assignable"
    assert set(states.values()) == {"Reviewable"}


def test_dispose_reports_what_blocks(harness: Harness) -> None:
    assert harness.run("create-hits", "2").exit_code == 0
    first, _ = (row.external_id for row in harness.hit_rows())
    harness.work(first, "AWORKERONE")

    still_open = harness.run("dispose-all-hits")
    assert still_open.exit_code == 1
    assert "Expire it first" in still_open.output

    assert harness.run("expire-all-hits").exit_code == 0
    blocked = harness.run("dispose-all-hits")
    assert blocked.exit_code == 1
    assert "Disposed 1 of 2" in blocked.output
    assert f"{first}: 1 submitted assignment(s) are not approved yet" in blocked.output

    assert harness.run("approve-all-hits").exit_code == 0
    done = harness.run("dispose-all-hits")
    assert done.exit_code == 0, done.output
    assert "Disposed 1 of 1" in done.output
    assert harness.hits() == []
    assert {row.status for row in harness.hit_rows()} == {"disposed"}


# --- approve-all-hits --------------------------------------------------------------


def test_approve_pays_each_reward_once(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    hit_id = harness.hit_rows()[0].external_id
    harness.work(hit_id, "AWORKERONE")
    harness.work(hit_id, "AWORKERTWO")

    dry = harness.run("approve-all-hits", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 reward(s) would be paid: $1.00" in dry.output
    assert harness.payments() == []
    assert harness.fake.payments == []

    first = harness.run("approve-all-hits")
    second = harness.run("approve-all-hits")

    assert first.exit_code == 0, first.output
    assert "2 reward(s) paid now: $1.00" in first.output
    assert second.exit_code == 0, second.output
    assert "2 reward(s) paid earlier" in second.output
    rewards = [payment for payment in harness.fake.payments if payment.kind == "reward"]
    assert len(rewards) == 2
    assert sum(payment.amount for payment in rewards) == Decimal("1.00")
    ledger = harness.payments("reward")
    assert [row.status for row in ledger] == ["paid", "paid"]
    assert {row.amount for row in ledger} == {Decimal("0.50")}
    assert all(row.participant_id is not None for row in ledger)


def test_approve_records_auto_approval(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")
    harness.fake.clock.advance(86400 + 1)

    result = harness.run("approve-all-hits")

    assert result.exit_code == 0, result.output
    assert "ApproveAssignment" not in harness.fake.calls
    assert "already paid on MTurk" in result.output
    assert [row.status for row in harness.payments("reward")] == ["paid"]


@BOTH_DATABASES
@pytest.mark.parametrize("crash_call", [1, 2])
def test_approve_rerun_after_crash(harness: Harness, crash_call: int) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    hit_id = harness.hit_rows()[0].external_id
    for worker in ("AWORKERONE", "AWORKERTWO", "AWORKERTHREE"):
        harness.work(hit_id, worker)
    harness.fake.crash_after("ApproveAssignment", crash_call)

    crashed = harness.run("approve-all-hits", group=("--max-attempts", "1"))

    assert crashed.exit_code == 1
    assert "Run the command again" in crashed.output
    assert "pending" in [row.status for row in harness.payments("reward")]

    again = harness.run("approve-all-hits")
    assert again.exit_code == 0, again.output
    rewards = [payment for payment in harness.fake.payments if payment.kind == "reward"]
    assert sorted(payment.worker_id for payment in rewards) == [
        "AWORKERONE",
        "AWORKERTHREE",
        "AWORKERTWO",
    ]
    assert [row.status for row in harness.payments("reward")] == ["paid"] * 3


def test_approve_grants_exclusion_at_limit(harness: Harness) -> None:
    assert harness.run("create-hits", "2").exit_code == 0
    first, second = (row.external_id for row in harness.hit_rows())
    harness.work(first, "AWORKERONE")
    harness.work(first, "AWORKERTWO")
    harness.work(second, "AWORKERONE")

    result = harness.run("approve-all-hits")

    assert result.exit_code == 0, result.output
    qualification = next(
        item["QualificationTypeId"]
        for item in harness.hits()[0]["QualificationRequirements"]
        if item["Comparator"] == "DoesNotExist"
    )
    holders = harness.fake.client().list_workers_with_qualification_type(
        QualificationTypeId=qualification
    )["Qualifications"]
    assert [holder["WorkerId"] for holder in holders] == ["AWORKERONE"]

    assert harness.run("approve-all-hits").exit_code == 0
    assert harness.fake.calls.count("AssociateQualificationWithWorker") == 1


# --- first-trial bonus --------------------------------------------------------------


def test_first_trial_bonus_once_per_worker(harness: Harness) -> None:
    assert harness.run("create-hits", "2").exit_code == 0
    first, second = (row.external_id for row in harness.hit_rows())
    _, one_first = harness.work(first, "AWORKERONE")
    harness.work(second, "AWORKERONE")
    _, two_first = harness.work(second, "AWORKERTWO")
    harness.work(first, "AWORKERTHREE", submit=False)

    result = harness.run("give-first-trial-bonus")
    again = harness.run("give-first-trial-bonus")

    assert result.exit_code == 0, result.output
    assert "2 bonus(es) paid now: $0.60" in result.output
    assert again.exit_code == 0, again.output
    assert "2 bonus(es) paid earlier" in again.output
    bonuses = [payment for payment in harness.fake.payments if payment.kind == "bonus"]
    assert sorted(
        (payment.worker_id, payment.assignment_id) for payment in bonuses
    ) == sorted([("AWORKERONE", one_first), ("AWORKERTWO", two_first)])
    assert {payment.amount for payment in bonuses} == {Decimal("0.30")}
    rows = harness.payments("bonus")
    assert {row.purpose for row in rows} == {
        "first_hit_bonus:AWORKERONE",
        "first_hit_bonus:AWORKERTWO",
    }
    assert all(
        payment.unique_request_token in {row.request_token for row in rows}
        for payment in bonuses
    )


def test_flagged_worker_gets_no_bonus(harness: Harness) -> None:
    """A participant a quality check flagged is approved but gets no bonus."""
    assert harness.run("create-hits", "2").exit_code == 0
    first, second = (row.external_id for row in harness.hit_rows())
    flagged_id, _ = harness.work(first, "AWORKERONE")
    harness.work(second, "AWORKERTWO")
    with harness.factory.begin() as session:
        session.get(Participant, flagged_id).flags = ["headphones"]

    result = harness.run("give-first-trial-bonus")

    assert result.exit_code == 0, result.output
    assert "1 flagged participant(s) get no bonus" in result.output
    bonuses = [payment for payment in harness.fake.payments if payment.kind == "bonus"]
    assert [payment.worker_id for payment in bonuses] == ["AWORKERTWO"]


def test_first_trial_bonus_amount_argument(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")

    result = harness.run("give-first-trial-bonus", "0.45")

    assert result.exit_code == 0, result.output
    assert [payment.amount for payment in harness.fake.payments] == [Decimal("0.45")]


@pytest.mark.parametrize("amount", ["0", "-1", "0.305", "abc"])
def test_first_trial_bonus_rejects_amount(harness: Harness, amount: str) -> None:
    result = (
        harness.run("give-first-trial-bonus", "--", amount)
        if amount.startswith("-")
        else harness.run("give-first-trial-bonus", amount)
    )

    assert result.exit_code == 2
    assert "AMOUNT" in result.output


def test_first_trial_bonus_dry_run(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")

    result = harness.run("give-first-trial-bonus", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "1 bonus(es) would be paid: $0.30" in result.output
    assert "Dry run" in result.output
    assert harness.payments() == []
    assert "SendBonus" not in harness.fake.calls


@BOTH_DATABASES
@pytest.mark.parametrize("max_attempts", ["1", "8"])
def test_first_trial_bonus_after_dropped_response(
    harness: Harness, max_attempts: str
) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    hit_id = harness.hit_rows()[0].external_id
    for worker in ("AWORKERONE", "AWORKERTWO"):
        harness.work(hit_id, worker)
    harness.fake.crash_after("SendBonus", 1)

    first = harness.run(
        "give-first-trial-bonus", group=("--max-attempts", max_attempts)
    )
    again = harness.run("give-first-trial-bonus")

    assert again.exit_code == 0, again.output
    if max_attempts == "1":
        assert first.exit_code == 1
        assert "unconfirmed" in first.output
    else:
        assert first.exit_code == 0, first.output
    bonuses = [payment for payment in harness.fake.payments if payment.kind == "bonus"]
    assert sorted(payment.worker_id for payment in bonuses) == [
        "AWORKERONE",
        "AWORKERTWO",
    ]
    assert [row.status for row in harness.payments("bonus")] == ["paid", "paid"]


@BOTH_DATABASES
def test_bonus_on_mturk_missing_from_ledger(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")
    assert harness.run("give-first-trial-bonus").exit_code == 0
    with harness.factory() as session, session.begin():
        session.execute(delete(Payment))

    result = harness.run("give-first-trial-bonus")

    assert result.exit_code == 0, result.output
    assert "already paid on MTurk, now in the ledger" in result.output
    assert (
        len([payment for payment in harness.fake.payments if payment.kind == "bonus"])
        == 1
    )
    assert [row.status for row in harness.payments("bonus")] == ["paid"]


def test_failed_bonus_retried_next_run(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")
    harness.fake.fail_next(
        "SendBonus", "RequestError", n=1, message="Insufficient funds"
    )

    failed = harness.run("give-first-trial-bonus")
    assert failed.exit_code == 1
    assert "Insufficient funds" in failed.output
    assert [row.status for row in harness.payments("bonus")] == ["failed"]

    paid = harness.run("give-first-trial-bonus")
    assert paid.exit_code == 0, paid.output
    assert [row.status for row in harness.payments("bonus")] == ["paid"]
    assert len(harness.fake.payments) == 1


# --- consistency bonus -------------------------------------------------------------


@pytest.mark.parametrize(
    ("consistency", "expected"),
    [
        (1.0, Decimal("0.25")),
        (0.85, Decimal("0.13")),
        (0.8, Decimal("0.08")),
        (0.7, Decimal("0.00")),
        (0.2, Decimal("0.00")),
    ],
)
def test_consistency_bonus_formula(consistency: float, expected: Decimal) -> None:
    assert consistency_bonus(consistency, Decimal("0.25"), 0.7) == expected


@BOTH_DATABASES
def test_consistency_bonus_pays_above_threshold(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    hit_id = harness.hit_rows()[0].external_id
    high, high_assignment = harness.work(hit_id, "AWORKERONE")
    middle, middle_assignment = harness.work(hit_id, "AWORKERTWO")
    low, _ = harness.work(hit_id, "AWORKERTHREE")
    harness.consistency.scores = {high: 1.0, middle: 0.85, low: 0.7}

    result = harness.run("give-pairwise-consistency-bonus")
    again = harness.run("give-pairwise-consistency-bonus")

    assert result.exit_code == 0, result.output
    assert "2 bonus(es) paid now: $0.38" in result.output
    assert again.exit_code == 0, again.output
    paid = {payment.assignment_id: payment.amount for payment in harness.fake.payments}
    assert paid == {
        high_assignment: Decimal("0.25"),
        middle_assignment: Decimal("0.13"),
    }


def test_consistency_bonus_options(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    participant, _ = harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")
    harness.consistency.scores = {participant: 0.75}

    result = harness.run(
        "give-pairwise-consistency-bonus",
        "--max-bonus",
        "1.00",
        "--min-threshold",
        "0.5",
    )

    assert result.exit_code == 0, result.output
    assert [payment.amount for payment in harness.fake.payments] == [Decimal("0.50")]


def test_consistency_bonus_needs_a_scoring_plugin(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")

    result = harness.run("give-pairwise-consistency-bonus")

    assert result.exit_code == 1
    assert "No plugin scores the consistency of test type 'scale'" in result.output
    assert harness.payments() == []


def test_consistency_bonus_rejects_bad_scores(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    participant, _ = harness.work(harness.hit_rows()[0].external_id, "AWORKERONE")
    harness.consistency.scores = {participant: 1.5}

    result = harness.run("give-pairwise-consistency-bonus")

    assert result.exit_code == 1
    assert "outside 0 to 1" in result.output


# --- status and balance ------------------------------------------------------------


def test_status_summarises_study(harness: Harness) -> None:
    assert harness.run("create-hits", "2").exit_code == 0
    hit_id = harness.hit_rows()[0].external_id
    harness.work(hit_id, "AWORKERONE")
    harness.work(hit_id, "AWORKERTWO")
    assert harness.run("give-first-trial-bonus").exit_code == 0

    result = harness.run("status")

    assert result.exit_code == 0, result.output
    assert "HITs: 2 recorded (created 2)" in result.output
    assert "Assignments: Submitted 2" in result.output
    assert "Paid: $0.00 in rewards, $0.60 in bonuses" in result.output
    assert "Owed: $1.00 in rewards of 2 submitted assignment(s)" in result.output
    assert "Available balance: $9999.40" in result.output


def test_balance_prints_account(harness: Harness) -> None:
    result = harness.run("balance")

    assert result.exit_code == 0, result.output
    assert "Available balance: $10000.00" in result.output
    assert "Study scale-study: $0.00 in 0 unsettled ledger row(s)" in result.output


def test_ledger_rows_name_purpose_and_token(harness: Harness) -> None:
    assert harness.run("create-hits", "1").exit_code == 0
    participant, assignment = harness.work(
        harness.hit_rows()[0].external_id, "AWORKERONE"
    )
    assert harness.run("approve-all-hits").exit_code == 0
    assert harness.run("give-first-trial-bonus").exit_code == 0

    with harness.factory() as session:
        rows = session.scalars(select(Payment).order_by(Payment.id)).all()
        tokens = session.scalar(
            select(func.count(func.distinct(Payment.request_token)))
        )
    assert [(row.kind, row.purpose, row.reference, row.recipient) for row in rows] == [
        ("reward", f"reward:{assignment}", assignment, "AWORKERONE"),
        ("bonus", "first_hit_bonus:AWORKERONE", assignment, "AWORKERONE"),
    ]
    assert tokens == 2
    assert {row.participant_id for row in rows} == {participant}


def test_first_bonus_skips_missing_ids() -> None:
    from caqe_mturk.commands import plan_first_trial_bonuses

    rows = [
        Participant(id=1, external_id=None, external_data={"assignmentId": "ASG1"}),
        Participant(id=2, external_id="AWORKERTWO", external_data={}),
        Participant(
            id=3, external_id="AWORKERTHREE", external_data={"assignmentId": "ASG3"}
        ),
    ]
    statuses = {"ASG1": "Submitted", "ASG3": "Submitted"}

    planned = plan_first_trial_bonuses(rows, statuses, Decimal("0.50"), "thanks", set())

    assert [payment.worker_id for payment in planned] == ["AWORKERTHREE"]
    assert [payment.assignment_id for payment in planned] == ["ASG3"]
    assert [payment.participant_id for payment in planned] == [3]
