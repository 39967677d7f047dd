"""Exact MTurk request shapes, pinned with botocore's Stubber (no network)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from caqe_mturk import ledger
from caqe_mturk.client import create_hit_request, qualification_requirements
from caqe_mturk.commands import post_hit
from caqe_mturk.config import MTurkConfig
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.db import make_engine, make_session_factory, upgrade
from caqe_core.models import Experiment, Payment

CREATED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
QUESTION = (
    '<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/'
    'AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd">'
    "<ExternalURL>https://caqe.example.org/mturk/</ExternalURL>"
    "<FrameHeight>1200</FrameHeight></ExternalQuestion>"
)


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "mturk",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[tuple[sessionmaker[Session], int]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    upgrade(engine)
    session_factory = make_session_factory(engine)
    with session_factory() as session, session.begin():
        experiment = Experiment(
            name="codec-study",
            title="Codec study",
            test_type="scale",
            recruiter="mturk",
            config_hash="0" * 64,
            config_text="",
            config_path="study.yaml",
            config_data={},
            created_at=CREATED,
        )
        session.add(experiment)
        session.flush()
        experiment_id = experiment.id
    yield session_factory, experiment_id
    engine.dispose()


def expected_token(purpose: str) -> str:
    seed = f"codec-study\x00{CREATED.isoformat()}\x00{purpose}"
    return "caqe-" + hashlib.sha256(seed.encode()).hexdigest()[:40]


def bonus(purpose: str = "first_hit_bonus:AWORKERONE") -> ledger.PlannedPayment:
    return ledger.PlannedPayment(
        purpose=purpose,
        kind=ledger.BONUS,
        worker_id="AWORKERONE",
        assignment_id="ASSIGNMENTONE",
        amount=Decimal("0.30"),
        reason="Thank you.",
    )


def test_create_hit_request_shape(client: Any) -> None:
    section = MTurkConfig(locales=["US", "CA-QC"])
    requirements = qualification_requirements(section, "EXCLUSIONTYPE")
    request = create_hit_request(
        section,
        "https://caqe.example.org/mturk/",
        "0123456789abcdef0123456789abcdef",
        "caqe:codec-study:0123456789abcdef0123456789abcdef",
        requirements,
    )
    hit = {"HITId": "HITONE", "HITTypeId": "TYPEONE"}
    with Stubber(client) as stub:
        stub.add_response(
            "create_hit",
            {"HIT": hit},
            {
                "Title": (
                    "Critical audio listening task. Listen to audio recordings and "
                    "rate them on various scales of quality."
                ),
                "Description": (
                    "Listen to short audio recordings over headphones and rate their "
                    "quality. Use a recent version of Chrome, Firefox or Safari. "
                    "Bonus available."
                ),
                "Keywords": "audio, sound, music, listening, research",
                "Reward": "0.50",
                "MaxAssignments": 200,
                "LifetimeInSeconds": 604800,
                "AssignmentDurationInSeconds": 1800,
                "AutoApprovalDelayInSeconds": 86400,
                "Question": QUESTION,
                "RequesterAnnotation": "caqe:codec-study:0123456789abcdef0123456789abcdef",
                "UniqueRequestToken": "0123456789abcdef0123456789abcdef",
                "QualificationRequirements": [
                    {
                        "QualificationTypeId": "000000000000000000L0",
                        "Comparator": "GreaterThanOrEqualTo",
                        "IntegerValues": [97],
                        "ActionsGuarded": "Accept",
                    },
                    {
                        "QualificationTypeId": "00000000000000000040",
                        "Comparator": "GreaterThanOrEqualTo",
                        "IntegerValues": [1000],
                        "ActionsGuarded": "Accept",
                    },
                    {
                        "QualificationTypeId": "00000000000000000071",
                        "Comparator": "In",
                        "LocaleValues": [
                            {"Country": "US"},
                            {"Country": "CA", "Subdivision": "QC"},
                        ],
                        "ActionsGuarded": "Accept",
                    },
                    {
                        "QualificationTypeId": "EXCLUSIONTYPE",
                        "Comparator": "DoesNotExist",
                        "ActionsGuarded": "DiscoverPreviewAndAccept",
                    },
                ],
            },
        )
        result = post_hit(client, request)
        stub.assert_no_pending_responses()
    assert result.hit == hit
    assert result.error is None


def test_create_hit_without_requirements_omits_them(client: Any) -> None:
    section = MTurkConfig(
        min_percent_assignments_approved=None,
        min_number_hits_approved=None,
        keywords=" ",
    )
    request = create_hit_request(
        section,
        "https://caqe.example.org/mturk/",
        "token",
        "caqe:codec-study:token",
        qualification_requirements(section, None),
    )

    assert "QualificationRequirements" not in request
    assert "Keywords" not in request


def test_send_bonus_request_shape(client: Any, factory: Any) -> None:
    session_factory, experiment_id = factory
    token = expected_token("first_hit_bonus:AWORKERONE")
    with Stubber(client) as stub:
        stub.add_response(
            "list_bonus_payments",
            {"BonusPayments": [], "NumResults": 0},
            {"AssignmentId": "ASSIGNMENTONE", "MaxResults": 100},
        )
        stub.add_response(
            "send_bonus",
            {},
            {
                "WorkerId": "AWORKERONE",
                "AssignmentId": "ASSIGNMENTONE",
                "BonusAmount": "0.30",
                "Reason": f"Thank you. (reference {token})",
                "UniqueRequestToken": token,
            },
        )
        outcomes = ledger.pay_bonuses(client, session_factory, experiment_id, [bonus()])
        stub.assert_no_pending_responses()

    assert [outcome.result for outcome in outcomes] == ["paid"]
    with session_factory() as session:
        row = session.scalars(select(Payment)).one()
    assert row.request_token == token
    assert row.status == "paid"
    assert row.amount == Decimal("0.30")


def test_send_bonus_duplicate_token_checks_listing(client: Any, factory: Any) -> None:
    session_factory, experiment_id = factory
    token = expected_token("first_hit_bonus:AWORKERONE")
    with Stubber(client) as stub:
        stub.add_response("list_bonus_payments", {"BonusPayments": [], "NumResults": 0})
        stub.add_client_error(
            "send_bonus",
            service_error_code="RequestError",
            service_message="The bonus already exists for this UniqueRequestToken",
            http_status_code=400,
        )
        stub.add_response(
            "list_bonus_payments",
            {
                "NumResults": 1,
                "BonusPayments": [
                    {
                        "WorkerId": "AWORKERONE",
                        "BonusAmount": "0.30",
                        "AssignmentId": "ASSIGNMENTONE",
                        "Reason": f"Thank you. (reference {token})",
                        "GrantTime": CREATED,
                    }
                ],
            },
        )
        outcomes = ledger.pay_bonuses(client, session_factory, experiment_id, [bonus()])
        stub.assert_no_pending_responses()

    assert [outcome.result for outcome in outcomes] == ["recorded"]


def test_bonus_listed_on_mturk_is_not_sent(client: Any, factory: Any) -> None:
    session_factory, experiment_id = factory
    token = expected_token("first_hit_bonus:AWORKERONE")
    with Stubber(client) as stub:
        stub.add_response(
            "list_bonus_payments",
            {
                "NumResults": 1,
                "BonusPayments": [
                    {
                        "WorkerId": "AWORKERONE",
                        "BonusAmount": "0.30",
                        "AssignmentId": "ASSIGNMENTONE",
                        "Reason": f"Thank you. (reference {token})",
                        "GrantTime": CREATED,
                    }
                ],
            },
        )
        outcomes = ledger.pay_bonuses(client, session_factory, experiment_id, [bonus()])
        stub.assert_no_pending_responses()

    assert [outcome.result for outcome in outcomes] == ["recorded"]


def test_approve_assignment_request_shape(client: Any, factory: Any) -> None:
    session_factory, experiment_id = factory
    assignment = {
        "AssignmentId": "ASSIGNMENTONE",
        "WorkerId": "AWORKERONE",
        "AssignmentStatus": "Submitted",
    }
    reward = ledger.PlannedPayment(
        purpose="reward:ASSIGNMENTONE",
        kind=ledger.REWARD,
        worker_id="AWORKERONE",
        assignment_id="ASSIGNMENTONE",
        amount=Decimal("0.50"),
        reason="Reward for the assignment",
    )
    with Stubber(client) as stub:
        stub.add_response(
            "approve_assignment",
            {},
            {"AssignmentId": "ASSIGNMENTONE", "RequesterFeedback": "Thank you!"},
        )
        outcomes = ledger.approve_assignments(
            client, session_factory, experiment_id, [(assignment, reward)], "Thank you!"
        )
        stub.assert_no_pending_responses()

    assert [outcome.result for outcome in outcomes] == ["paid"]
    with session_factory() as session:
        row = session.scalars(select(Payment)).one()
    assert (row.kind, row.purpose, row.amount, row.status) == (
        "reward",
        "reward:ASSIGNMENTONE",
        Decimal("0.50"),
        "paid",
    )


def test_approve_twice_rejected_checks_status(client: Any, factory: Any) -> None:
    session_factory, experiment_id = factory
    assignment = {
        "AssignmentId": "ASSIGNMENTONE",
        "WorkerId": "AWORKERONE",
        "AssignmentStatus": "Submitted",
    }
    reward = ledger.PlannedPayment(
        purpose="reward:ASSIGNMENTONE",
        kind=ledger.REWARD,
        worker_id="AWORKERONE",
        assignment_id="ASSIGNMENTONE",
        amount=Decimal("0.50"),
        reason="Reward for the assignment",
    )
    with Stubber(client) as stub:
        stub.add_client_error(
            "approve_assignment",
            service_error_code="RequestError",
            service_message="This operation can be called with a status of: Submitted",
            http_status_code=400,
        )
        stub.add_response(
            "get_assignment",
            {"Assignment": {**assignment, "AssignmentStatus": "Approved"}},
            {"AssignmentId": "ASSIGNMENTONE"},
        )
        outcomes = ledger.approve_assignments(
            client, session_factory, experiment_id, [(assignment, reward)], ""
        )
        stub.assert_no_pending_responses()

    assert [outcome.result for outcome in outcomes] == ["recorded"]


def test_interrupted_bonus_stays_pending(client: Any, factory: Any) -> None:
    session_factory, experiment_id = factory
    with Stubber(client) as stub:
        stub.add_response("list_bonus_payments", {"BonusPayments": [], "NumResults": 0})
        stub.add_client_error(
            "send_bonus", service_error_code="ServiceFault", http_status_code=500
        )
        with pytest.raises(ledger.PaymentInterrupted, match="Run the command again"):
            ledger.pay_bonuses(client, session_factory, experiment_id, [bonus()])

    with session_factory() as session:
        assert session.scalars(select(Payment.status)).all() == ["pending"]
