"""Tests of the fake MTurk service through a real boto3 client over HTTP."""

import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import botocore.exceptions
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from caqe_mturk.testing import (
    WORKER_LOCALE,
    FakeClock,
    FakeMTurk,
    SimulationError,
    WorkerProfile,
    build_answer_xml,
    parse_answer_xml,
)

EXTERNAL_QUESTION = (
    '<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/'
    'AWSMechanicalTurkDataSchemas/2006-07-14/ExternalQuestion.xsd">'
    "<ExternalURL>https://listening.example.org/trial?test=demo</ExternalURL>"
    "<FrameHeight>800</FrameHeight></ExternalQuestion>"
)
TARGET = "MTurkRequesterServiceV20170117"
WORKER = "AWORKER1"
OTHER_WORKER = "AWORKER2"


def create_hit(client, **overrides):
    params = {
        "Title": "Rate the audio quality",
        "Description": "Listen to short clips and rate them.",
        "Reward": "0.50",
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "AutoApprovalDelayInSeconds": 86400,
        "MaxAssignments": 1,
        "Question": EXTERNAL_QUESTION,
    }
    params.update(overrides)
    return client.create_hit(**params)["HIT"]


def error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return excinfo.value.response["Error"]["Code"]


def post_raw(fake: FakeMTurk, operation: str, body: str) -> requests.Response:
    return requests.post(
        fake.endpoint_url,
        data=body,
        headers={
            "X-Amz-Target": f"{TARGET}.{operation}",
            "Content-Type": "application/x-amz-json-1.1",
        },
        timeout=10,
    )


def no_retry_client(fake: FakeMTurk, **config):
    retries = {"mode": "standard", "total_max_attempts": 1}
    return fake.client(Config(retries=retries, **config))


# ---------------------------------------------------------------- CreateHIT


def test_create_hit_returns_hit(fake_mturk, mturk_client):
    requirement = {
        "QualificationTypeId": WORKER_LOCALE,
        "Comparator": "EqualTo",
        "LocaleValues": [{"Country": "US"}],
    }

    hit = create_hit(
        mturk_client,
        MaxAssignments=3,
        RequesterAnnotation="experiment=demo;batch=1",
        QualificationRequirements=[requirement],
        Keywords="audio, listening",
    )

    assert len(hit["HITId"]) == 30
    assert hit["Question"] == EXTERNAL_QUESTION
    assert hit["RequesterAnnotation"] == "experiment=demo;batch=1"
    assert hit["QualificationRequirements"] == [requirement]
    assert hit["MaxAssignments"] == 3
    assert hit["Reward"] == "0.50"
    assert hit["Keywords"] == "audio, listening"
    assert hit["HITStatus"] == "Assignable"
    assert hit["NumberOfAssignmentsAvailable"] == 3
    assert hit["NumberOfAssignmentsPending"] == 0
    assert hit["AutoApprovalDelayInSeconds"] == 86400
    assert hit["AssignmentDurationInSeconds"] == 600
    assert isinstance(hit["CreationTime"], datetime)
    assert hit["CreationTime"].tzinfo is not None
    assert hit["CreationTime"] == fake_mturk.clock.now()
    assert hit["Expiration"] - hit["CreationTime"] == timedelta(hours=1)


def test_create_hit_with_hit_type(mturk_client):
    type_params = {
        "Title": "Compare two clips",
        "Description": "Pick the clip that sounds better.",
        "Reward": "0.20",
        "AssignmentDurationInSeconds": 300,
    }

    first_type = mturk_client.create_hit_type(**type_params)["HITTypeId"]
    second_type = mturk_client.create_hit_type(**type_params)["HITTypeId"]
    other_type = mturk_client.create_hit_type(**{**type_params, "Reward": "0.30"})
    hit = mturk_client.create_hit_with_hit_type(
        HITTypeId=first_type, LifetimeInSeconds=600, Question=EXTERNAL_QUESTION
    )["HIT"]

    assert second_type == first_type
    assert other_type["HITTypeId"] != first_type
    assert hit["HITTypeId"] == first_type
    assert hit["Title"] == "Compare two clips"
    assert hit["Reward"] == "0.20"
    assert hit["MaxAssignments"] == 1


def test_create_hit_with_unknown_hit_type(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.create_hit_with_hit_type(
            HITTypeId="NOSUCHTYPE", LifetimeInSeconds=600, Question=EXTERNAL_QUESTION
        )

    assert error_code(excinfo) == "RequestError"
    assert "NOSUCHTYPE" in excinfo.value.response["Error"]["Message"]


def test_create_hit_reused_token_rejected(mturk_client):
    hit = create_hit(mturk_client, UniqueRequestToken="batch-1-hit-1")

    with pytest.raises(ClientError) as excinfo:
        create_hit(mturk_client, UniqueRequestToken="batch-1-hit-1")

    assert error_code(excinfo) == "RequestError"
    assert excinfo.value.response["TurkErrorCode"] == (
        "AWS.MechanicalTurk.HitAlreadyExists"
    )
    assert hit["HITId"] in excinfo.value.response["Error"]["Message"]
    assert mturk_client.list_hits()["NumResults"] == 1


@pytest.mark.parametrize(
    "question",
    [
        "<ExternalQuestion><ExternalURL>https://x.example",
        "<Survey>not a question form</Survey>",
        "<ExternalQuestion><ExternalURL>ftp://x.example/</ExternalURL></ExternalQuestion>",
    ],
)
def test_create_hit_invalid_question(mturk_client, question):
    with pytest.raises(ClientError) as excinfo:
        create_hit(mturk_client, Question=question)

    assert error_code(excinfo) == "RequestError"
    assert mturk_client.list_hits()["NumResults"] == 0


def test_create_hit_unknown_qualification_type(mturk_client):
    requirement = {"QualificationTypeId": "NOSUCHQUALTYPE", "Comparator": "Exists"}

    with pytest.raises(ClientError) as excinfo:
        create_hit(mturk_client, QualificationRequirements=[requirement])

    assert error_code(excinfo) == "RequestError"
    assert "NOSUCHQUALTYPE" in excinfo.value.response["Error"]["Message"]


# --------------------------------------------------------------- validation


def test_validation_rejects_bad_reward(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        create_hit(mturk_client, Reward="0.5 USD")

    assert error_code(excinfo) == "ParameterValidationError"
    assert "Reward" in excinfo.value.response["Error"]["Message"]
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_validation_rejects_missing_required(fake_mturk):
    # Client-side validation is off, so the request reaches the fake unchecked.
    client = no_retry_client(fake_mturk, parameter_validation=False)

    with pytest.raises(ClientError) as excinfo:
        client.create_hit(Title="Only a title")

    message = excinfo.value.response["Error"]["Message"]
    assert error_code(excinfo) == "ParameterValidationError"
    assert "LifetimeInSeconds" in message
    assert "Reward" in message
    assert fake_mturk.calls == ["CreateHIT"]


def test_validation_rejects_wrong_type(fake_mturk):
    client = no_retry_client(fake_mturk, parameter_validation=False)

    with pytest.raises(ClientError) as excinfo:
        client.list_hits(MaxResults="ten")

    assert error_code(excinfo) == "ParameterValidationError"
    assert "MaxResults" in excinfo.value.response["Error"]["Message"]


def test_validation_rejects_out_of_range(fake_mturk):
    client = no_retry_client(fake_mturk, parameter_validation=False)

    with pytest.raises(ClientError) as excinfo:
        client.list_hits(MaxResults=101)

    assert error_code(excinfo) == "ParameterValidationError"
    assert "maximum 100" in excinfo.value.response["Error"]["Message"]


def test_unknown_operation_rejected(fake_mturk):
    response = post_raw(fake_mturk, "LaunchRocket", "{}")

    assert response.status_code == 400
    assert response.json()["__type"] == "UnknownOperationException"
    assert fake_mturk.recorded_calls[0].error_code == "UnknownOperationException"


def test_invalid_json_rejected(fake_mturk):
    response = post_raw(fake_mturk, "ListHITs", "{not json")

    assert response.status_code == 400
    assert response.json()["__type"] == "SerializationException"


def test_unimplemented_operation_reported(fake_mturk, mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.create_worker_block(WorkerId=WORKER, Reason="spam")

    assert error_code(excinfo) == "NotImplemented"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert "CreateWorkerBlock" in excinfo.value.response["Error"]["Message"]


def test_unknown_path_not_found(fake_mturk):
    response = requests.get(fake_mturk.endpoint_url + "/nothing", timeout=10)

    assert response.status_code == 404


# ------------------------------------------------------------ GetHIT, ListHITs


def test_get_hit_returns_current_state(fake_mturk, mturk_client):
    hit = create_hit(mturk_client, MaxAssignments=2)
    fake_mturk.simulate_accept(hit["HITId"], WORKER)

    fetched = mturk_client.get_hit(HITId=hit["HITId"])["HIT"]

    assert fetched["HITId"] == hit["HITId"]
    assert fetched["NumberOfAssignmentsPending"] == 1
    assert fetched["NumberOfAssignmentsAvailable"] == 1


def test_get_hit_unknown(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.get_hit(HITId="NOSUCHHIT")

    assert error_code(excinfo) == "RequestError"
    assert "NOSUCHHIT" in excinfo.value.response["Error"]["Message"]


def test_list_hits_paginates(mturk_client):
    created = [create_hit(mturk_client)["HITId"] for _ in range(5)]

    first = mturk_client.list_hits(MaxResults=2)
    second = mturk_client.list_hits(MaxResults=2, NextToken=first["NextToken"])
    third = mturk_client.list_hits(MaxResults=2, NextToken=second["NextToken"])

    assert first["NumResults"] == 2
    assert second["NumResults"] == 2
    assert third["NumResults"] == 1
    assert "NextToken" not in third
    listed = [hit["HITId"] for page in (first, second, third) for hit in page["HITs"]]
    assert listed == created


def test_list_hits_paginator(mturk_client):
    created = {create_hit(mturk_client)["HITId"] for _ in range(3)}
    paginator = mturk_client.get_paginator("list_hits")

    pages = list(paginator.paginate(PaginationConfig={"PageSize": 2}))

    assert len(pages) == 2
    assert {hit["HITId"] for page in pages for hit in page["HITs"]} == created


def test_list_hits_invalid_token(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.list_hits(NextToken="not-a-token")

    assert error_code(excinfo) == "RequestError"


def test_list_hits_token_from_other_listing(fake_mturk, mturk_client):
    hit = create_hit(mturk_client, MaxAssignments=3)
    for worker in ("AWORKERA", "AWORKERB", "AWORKERC"):
        fake_mturk.simulate_work(hit["HITId"], worker, {"rating": "50"})
    token = mturk_client.list_assignments_for_hit(HITId=hit["HITId"], MaxResults=1)[
        "NextToken"
    ]

    with pytest.raises(ClientError) as excinfo:
        mturk_client.list_hits(NextToken=token)

    assert error_code(excinfo) == "RequestError"


# ---------------------------------------------------- UpdateExpirationForHIT


def test_update_expiration_expires_hit(fake_mturk, mturk_client):
    hit = create_hit(mturk_client)
    past = datetime(2015, 1, 1, tzinfo=UTC)

    mturk_client.update_expiration_for_hit(HITId=hit["HITId"], ExpireAt=past)
    expired = mturk_client.get_hit(HITId=hit["HITId"])["HIT"]

    assert expired["HITStatus"] == "Reviewable"
    assert expired["Expiration"] == fake_mturk.clock.now()
    assert expired["NumberOfAssignmentsAvailable"] == 0
    with pytest.raises(SimulationError):
        fake_mturk.simulate_accept(hit["HITId"], WORKER)


def test_update_expiration_extends_hit(fake_mturk, mturk_client):
    hit = create_hit(mturk_client, LifetimeInSeconds=60)
    fake_mturk.clock.advance(120)
    # The JSON protocol sends ExpireAt as whole epoch seconds.
    later = (fake_mturk.clock.now() + timedelta(hours=2)).replace(microsecond=0)

    expired_status = mturk_client.get_hit(HITId=hit["HITId"])["HIT"]["HITStatus"]
    mturk_client.update_expiration_for_hit(HITId=hit["HITId"], ExpireAt=later)
    extended = mturk_client.get_hit(HITId=hit["HITId"])["HIT"]

    assert expired_status == "Reviewable"
    assert extended["HITStatus"] == "Assignable"
    assert extended["Expiration"] == later


def test_update_expiration_unknown_hit(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.update_expiration_for_hit(
            HITId="NOSUCHHIT", ExpireAt=datetime(2015, 1, 1, tzinfo=UTC)
        )

    assert error_code(excinfo) == "RequestError"


# ---------------------------------------------------------- HIT status flow


def test_hit_status_transitions(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=2)["HITId"]

    def status() -> str:
        return mturk_client.get_hit(HITId=hit_id)["HIT"]["HITStatus"]

    first = fake_mturk.simulate_accept(hit_id, WORKER)
    after_one_accept = status()
    second = fake_mturk.simulate_accept(hit_id, OTHER_WORKER)
    after_two_accepts = status()
    fake_mturk.simulate_submit(first, {"rating": "70"})
    after_one_submit = status()
    fake_mturk.simulate_submit(second, {"rating": "40"})
    after_two_submits = status()

    assert after_one_accept == "Assignable"
    assert after_two_accepts == "Unassignable"
    assert after_one_submit == "Unassignable"
    assert after_two_submits == "Reviewable"


def test_returned_assignment_frees_slot(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    full_status = mturk_client.get_hit(HITId=hit_id)["HIT"]["HITStatus"]
    fake_mturk.simulate_return(assignment_id)
    freed = mturk_client.get_hit(HITId=hit_id)["HIT"]

    assert full_status == "Unassignable"
    assert freed["HITStatus"] == "Assignable"
    assert fake_mturk.assignment_status(assignment_id) == "Returned"


def test_worker_cannot_accept_twice(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=2)["HITId"]
    fake_mturk.simulate_accept(hit_id, WORKER)

    with pytest.raises(SimulationError, match="already has assignment"):
        fake_mturk.simulate_accept(hit_id, WORKER)


def test_simulate_accept_rejects_bad_worker_id(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]

    with pytest.raises(ValueError, match="not a valid MTurk worker ID"):
        fake_mturk.simulate_accept(hit_id, "worker-1")


def test_assignment_deadline_abandons(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, AssignmentDurationInSeconds=600)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    fake_mturk.clock.advance(601)

    assert fake_mturk.assignment_status(assignment_id) == "Abandoned"
    assert mturk_client.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Assignable"
    with pytest.raises(SimulationError, match="Abandoned"):
        fake_mturk.simulate_submit(assignment_id, {"rating": "10"})


def test_list_reviewable_hits(fake_mturk, mturk_client):
    done_hit = create_hit(mturk_client)["HITId"]
    open_hit = create_hit(mturk_client)["HITId"]
    fake_mturk.simulate_work(done_hit, WORKER, {"rating": "60"})

    reviewable = mturk_client.list_reviewable_hits()["HITs"]
    reviewing = mturk_client.list_reviewable_hits(Status="Reviewing")["HITs"]

    assert [hit["HITId"] for hit in reviewable] == [done_hit]
    assert open_hit not in [hit["HITId"] for hit in reviewable]
    assert reviewing == []


# ------------------------------------------------------------------ DeleteHIT


def test_delete_hit_assignable_rejected(mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]

    with pytest.raises(ClientError) as excinfo:
        mturk_client.delete_hit(HITId=hit_id)

    assert error_code(excinfo) == "RequestError"
    assert "Assignable" in excinfo.value.response["Error"]["Message"]
    assert mturk_client.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Assignable"


def test_delete_hit_expired_without_work(mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    mturk_client.update_expiration_for_hit(
        HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC)
    )

    mturk_client.delete_hit(HITId=hit_id)
    mturk_client.delete_hit(HITId=hit_id)

    assert mturk_client.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Disposed"
    assert mturk_client.list_hits()["NumResults"] == 0


def test_delete_hit_pending_assignment_rejected(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=2)["HITId"]
    fake_mturk.simulate_accept(hit_id, WORKER)
    mturk_client.update_expiration_for_hit(
        HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC)
    )

    with pytest.raises(ClientError) as excinfo:
        mturk_client.delete_hit(HITId=hit_id)

    assert error_code(excinfo) == "RequestError"
    assert "Unassignable" in excinfo.value.response["Error"]["Message"]


def test_delete_hit_needs_decided_assignments(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=2)["HITId"]
    first = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "80"})
    second = fake_mturk.simulate_work(hit_id, OTHER_WORKER, {"rating": "20"})

    with pytest.raises(ClientError) as excinfo:
        mturk_client.delete_hit(HITId=hit_id)
    mturk_client.approve_assignment(AssignmentId=first)
    mturk_client.reject_assignment(AssignmentId=second, RequesterFeedback="Blank.")
    mturk_client.delete_hit(HITId=hit_id)

    assert error_code(excinfo) == "RequestError"
    assert second in excinfo.value.response["Error"]["Message"]
    assert mturk_client.get_hit(HITId=hit_id)["HIT"]["HITStatus"] == "Disposed"


def test_delete_hit_blocks_override_rejection(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "1"})
    mturk_client.reject_assignment(AssignmentId=assignment_id, RequesterFeedback="No")
    mturk_client.delete_hit(HITId=hit_id)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.approve_assignment(
            AssignmentId=assignment_id, OverrideRejection=True
        )

    assert error_code(excinfo) == "RequestError"
    assert fake_mturk.payments == []


# ------------------------------------------------------------- assignments


def test_list_assignments_filters_status(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=4)["HITId"]
    approved = fake_mturk.simulate_work(hit_id, "AWORKERA", {"rating": "90"})
    rejected = fake_mturk.simulate_work(hit_id, "AWORKERB", {"rating": "0"})
    submitted = fake_mturk.simulate_work(hit_id, "AWORKERC", {"rating": "50"})
    fake_mturk.simulate_accept(hit_id, "AWORKERD")
    mturk_client.approve_assignment(AssignmentId=approved)
    mturk_client.reject_assignment(AssignmentId=rejected, RequesterFeedback="Spam.")

    def listed(**filters) -> list[str]:
        response = mturk_client.list_assignments_for_hit(HITId=hit_id, **filters)
        return [item["AssignmentId"] for item in response["Assignments"]]

    assert listed() == [approved, rejected, submitted]
    assert listed(AssignmentStatuses=["Submitted"]) == [submitted]
    assert listed(AssignmentStatuses=["Approved", "Rejected"]) == [approved, rejected]


def test_list_assignments_paginates(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=3)["HITId"]
    created = [
        fake_mturk.simulate_work(hit_id, worker, {"rating": "5"})
        for worker in ("AWORKERA", "AWORKERB", "AWORKERC")
    ]

    first = mturk_client.list_assignments_for_hit(HITId=hit_id, MaxResults=2)
    second = mturk_client.list_assignments_for_hit(
        HITId=hit_id, MaxResults=2, NextToken=first["NextToken"]
    )

    assert first["NumResults"] == 2
    assert second["NumResults"] == 1
    assert "NextToken" not in second
    pages = first["Assignments"] + second["Assignments"]
    assert [item["AssignmentId"] for item in pages] == created


def test_list_assignments_unknown_hit(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.list_assignments_for_hit(HITId="NOSUCHHIT")

    assert error_code(excinfo) == "RequestError"


def test_get_assignment_returns_answer(fake_mturk, mturk_client):
    hit = create_hit(mturk_client)
    assignment_id = fake_mturk.simulate_work(
        hit["HITId"], WORKER, {"rating": "73", "comment": "Clip 2 < clip 1 & clean"}
    )

    response = mturk_client.get_assignment(AssignmentId=assignment_id)
    assignment = response["Assignment"]

    assert assignment["WorkerId"] == WORKER
    assert assignment["HITId"] == hit["HITId"]
    assert assignment["AssignmentStatus"] == "Submitted"
    assert assignment["SubmitTime"] == fake_mturk.clock.now()
    assert assignment["AutoApprovalTime"] - assignment["SubmitTime"] == timedelta(
        days=1
    )
    assert assignment["Deadline"] - assignment["AcceptTime"] == timedelta(minutes=10)
    assert parse_answer_xml(assignment["Answer"]) == {
        "rating": ["73"],
        "comment": ["Clip 2 < clip 1 & clean"],
    }
    assert response["HIT"]["HITId"] == hit["HITId"]


def test_get_assignment_not_submitted(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.get_assignment(AssignmentId=assignment_id)

    assert error_code(excinfo) == "RequestError"
    assert "Reviewable,Approved,Rejected" in excinfo.value.response["Error"]["Message"]


def test_get_assignment_unknown(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.get_assignment(AssignmentId="NOSUCHASSIGNMENT")

    assert error_code(excinfo) == "RequestError"


def test_simulate_submit_accepts_answer_xml(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    answer_xml = build_answer_xml({"choice": ["A", "B"]})

    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, answer_xml)
    stored = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]

    assert stored["Answer"] == answer_xml
    assert parse_answer_xml(stored["Answer"]) == {"choice": ["A", "B"]}


def test_simulate_submit_rejects_bad_xml(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    with pytest.raises(SimulationError, match="not valid XML"):
        fake_mturk.simulate_submit(assignment_id, "<QuestionFormAnswers>")


# ------------------------------------------------------- approve and reject


def test_approve_assignment_pays_reward(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, Reward="1.25")["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})

    mturk_client.approve_assignment(AssignmentId=assignment_id, RequesterFeedback="Ok")
    assignment = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]
    balance = mturk_client.get_account_balance()["AvailableBalance"]

    assert assignment["AssignmentStatus"] == "Approved"
    assert assignment["ApprovalTime"] == fake_mturk.clock.now()
    assert assignment["RequesterFeedback"] == "Ok"
    assert [(p.kind, p.amount, p.worker_id) for p in fake_mturk.payments] == [
        ("reward", Decimal("1.25"), WORKER)
    ]
    assert balance == "9998.75"


def test_approve_assignment_twice_rejected(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    mturk_client.approve_assignment(AssignmentId=assignment_id)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.approve_assignment(AssignmentId=assignment_id)

    assert error_code(excinfo) == "RequestError"
    assert excinfo.value.response["Error"]["Message"].startswith(
        "This operation can be called with a status of: Submitted"
    )
    assert len(fake_mturk.payments) == 1


def test_approve_assignment_unknown(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.approve_assignment(AssignmentId="NOSUCHASSIGNMENT")

    assert error_code(excinfo) == "RequestError"


def test_approve_assignment_insufficient_funds():
    with FakeMTurk(balance="0.10") as fake:
        client = no_retry_client(fake)
        hit_id = create_hit(client, Reward="0.50")["HITId"]
        assignment_id = fake.simulate_work(hit_id, WORKER, {"rating": "1"})

        with pytest.raises(ClientError) as excinfo:
            client.approve_assignment(AssignmentId=assignment_id)

        assert error_code(excinfo) == "RequestError"
        assert "Insufficient funds" in excinfo.value.response["Error"]["Message"]
        assert fake.assignment_status(assignment_id) == "Submitted"
        assert fake.payments == []


def test_reject_assignment(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})

    mturk_client.reject_assignment(
        AssignmentId=assignment_id, RequesterFeedback="Failed the hidden reference."
    )
    assignment = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]

    assert assignment["AssignmentStatus"] == "Rejected"
    assert assignment["RejectionTime"] == fake_mturk.clock.now()
    assert assignment["RequesterFeedback"] == "Failed the hidden reference."
    assert fake_mturk.payments == []


def test_reject_assignment_twice_rejected(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    mturk_client.reject_assignment(AssignmentId=assignment_id, RequesterFeedback="No")

    with pytest.raises(ClientError) as excinfo:
        mturk_client.reject_assignment(
            AssignmentId=assignment_id, RequesterFeedback="No"
        )

    assert error_code(excinfo) == "RequestError"


def test_approve_rejected_needs_override(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    mturk_client.reject_assignment(AssignmentId=assignment_id, RequesterFeedback="No")

    with pytest.raises(ClientError) as excinfo:
        mturk_client.approve_assignment(AssignmentId=assignment_id)
    mturk_client.approve_assignment(AssignmentId=assignment_id, OverrideRejection=True)

    assert error_code(excinfo) == "RequestError"
    assert fake_mturk.assignment_status(assignment_id) == "Approved"
    assert [payment.kind for payment in fake_mturk.payments] == ["reward"]


def test_override_rejection_expires_after_30_days(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, AutoApprovalDelayInSeconds=3600)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    mturk_client.reject_assignment(AssignmentId=assignment_id, RequesterFeedback="No")
    fake_mturk.clock.advance(timedelta(days=31).total_seconds())

    with pytest.raises(ClientError) as excinfo:
        mturk_client.approve_assignment(
            AssignmentId=assignment_id, OverrideRejection=True
        )

    assert error_code(excinfo) == "RequestError"
    assert "30 days" in excinfo.value.response["Error"]["Message"]


# -------------------------------------------------------------- auto-approval


def test_auto_approval_follows_clock(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, AutoApprovalDelayInSeconds=3600)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    submitted = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]

    fake_mturk.clock.advance(3599)
    before = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]
    fake_mturk.clock.advance(1)
    after = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]

    assert before["AssignmentStatus"] == "Submitted"
    assert after["AssignmentStatus"] == "Approved"
    assert after["ApprovalTime"] == submitted["AutoApprovalTime"]
    assert [payment.kind for payment in fake_mturk.payments] == ["reward"]
    assert fake_mturk.payments[0].time == submitted["AutoApprovalTime"]


def test_auto_approval_blocks_later_reject(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, AutoApprovalDelayInSeconds=60)["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    fake_mturk.clock.advance(61)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.reject_assignment(
            AssignmentId=assignment_id, RequesterFeedback="No"
        )

    assert error_code(excinfo) == "RequestError"
    assert len(fake_mturk.payments) == 1


def test_default_auto_approval_delay(fake_mturk, mturk_client):
    params = {
        "Title": "t",
        "Description": "d",
        "Reward": "0.10",
        "LifetimeInSeconds": 60,
        "AssignmentDurationInSeconds": 60,
        "Question": EXTERNAL_QUESTION,
    }

    hit = mturk_client.create_hit(**params)["HIT"]

    assert hit["AutoApprovalDelayInSeconds"] == 30 * 24 * 3600
    assert hit["MaxAssignments"] == 1


# ------------------------------------------------------------------ bonuses


def submitted_assignment(fake, client, worker: str = WORKER) -> tuple[str, str]:
    hit_id = create_hit(client)["HITId"]
    assignment_id = fake.simulate_work(hit_id, worker, {"rating": "60"})
    return hit_id, assignment_id


def test_send_bonus_pays_worker(fake_mturk, mturk_client):
    hit_id, assignment_id = submitted_assignment(fake_mturk, mturk_client)

    mturk_client.send_bonus(
        WorkerId=WORKER,
        BonusAmount="2.5",
        AssignmentId=assignment_id,
        Reason="Consistent ratings.",
        UniqueRequestToken="bonus-1",
    )
    listed = mturk_client.list_bonus_payments(AssignmentId=assignment_id)

    payment = fake_mturk.payments[0]
    assert payment.kind == "bonus"
    assert payment.amount == Decimal("2.50")
    assert payment.unique_request_token == "bonus-1"
    assert payment.hit_id == hit_id
    assert listed["NumResults"] == 1
    assert listed["BonusPayments"][0]["BonusAmount"] == "2.50"
    assert listed["BonusPayments"][0]["Reason"] == "Consistent ratings."
    assert listed["BonusPayments"][0]["GrantTime"] == fake_mturk.clock.now()
    assert mturk_client.get_account_balance()["AvailableBalance"] == "9997.50"


def test_send_bonus_duplicate_token_pays_once(fake_mturk, mturk_client):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    bonus = {
        "WorkerId": WORKER,
        "BonusAmount": "1.00",
        "AssignmentId": assignment_id,
        "Reason": "Thanks.",
        "UniqueRequestToken": "bonus-dup",
    }
    first = mturk_client.send_bonus(**bonus)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.send_bonus(**bonus)

    first_request_id = first["ResponseMetadata"]["RequestId"]
    assert error_code(excinfo) == "RequestError"
    assert first_request_id in excinfo.value.response["Error"]["Message"]
    assert len(fake_mturk.payments) == 1
    assert mturk_client.get_account_balance()["AvailableBalance"] == "9999.00"


def test_send_bonus_token_expires_after_24_hours(fake_mturk, mturk_client):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    bonus = {
        "WorkerId": WORKER,
        "BonusAmount": "1.00",
        "AssignmentId": assignment_id,
        "Reason": "Thanks.",
        "UniqueRequestToken": "bonus-day",
    }
    mturk_client.send_bonus(**bonus)
    fake_mturk.clock.advance(timedelta(hours=24).total_seconds())

    mturk_client.send_bonus(**bonus)

    bonuses = [payment for payment in fake_mturk.payments if payment.kind == "bonus"]
    assert len(bonuses) == 2


@pytest.mark.parametrize(
    ("overrides", "expected_text"),
    [
        ({"WorkerId": OTHER_WORKER}, "belongs to worker"),
        ({"BonusAmount": "0"}, "greater than zero"),
        ({"BonusAmount": "20000"}, "Insufficient funds"),
        ({"AssignmentId": "NOSUCHASSIGNMENT"}, "does not exist"),
    ],
)
def test_send_bonus_invalid(fake_mturk, mturk_client, overrides, expected_text):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    bonus = {
        "WorkerId": WORKER,
        "BonusAmount": "1.00",
        "AssignmentId": assignment_id,
        "Reason": "Thanks.",
    }
    bonus.update(overrides)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.send_bonus(**bonus)

    assert error_code(excinfo) == "RequestError"
    assert expected_text in excinfo.value.response["Error"]["Message"]
    assert fake_mturk.payments == []


def test_send_bonus_unsubmitted_assignment(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.send_bonus(
            WorkerId=WORKER, BonusAmount="1", AssignmentId=assignment_id, Reason="x"
        )

    assert error_code(excinfo) == "RequestError"
    assert fake_mturk.payments == []


def test_list_bonus_payments_by_hit_paginates(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client, MaxAssignments=3)["HITId"]
    other_hit_id, other_assignment = submitted_assignment(fake_mturk, mturk_client)
    for worker in ("AWORKERA", "AWORKERB", "AWORKERC"):
        assignment_id = fake_mturk.simulate_work(hit_id, worker, {"rating": "1"})
        mturk_client.send_bonus(
            WorkerId=worker, BonusAmount="0.25", AssignmentId=assignment_id, Reason="x"
        )
    mturk_client.send_bonus(
        WorkerId=WORKER, BonusAmount="0.75", AssignmentId=other_assignment, Reason="y"
    )

    first = mturk_client.list_bonus_payments(HITId=hit_id, MaxResults=2)
    second = mturk_client.list_bonus_payments(
        HITId=hit_id, MaxResults=2, NextToken=first["NextToken"]
    )
    other = mturk_client.list_bonus_payments(HITId=other_hit_id)

    workers = [item["WorkerId"] for item in first["BonusPayments"]]
    workers += [item["WorkerId"] for item in second["BonusPayments"]]
    assert workers == ["AWORKERA", "AWORKERB", "AWORKERC"]
    assert "NextToken" not in second
    assert [item["BonusAmount"] for item in other["BonusPayments"]] == ["0.75"]


def test_list_bonus_payments_needs_filter(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.list_bonus_payments()

    assert error_code(excinfo) == "RequestError"


def test_account_balance_tracks_payments(fake_mturk, mturk_client):
    start = mturk_client.get_account_balance()
    hit_id = create_hit(mturk_client, Reward="0.40")["HITId"]
    assignment_id = fake_mturk.simulate_work(hit_id, WORKER, {"rating": "60"})
    mturk_client.approve_assignment(AssignmentId=assignment_id)
    mturk_client.send_bonus(
        WorkerId=WORKER, BonusAmount="0.35", AssignmentId=assignment_id, Reason="x"
    )

    end = mturk_client.get_account_balance()

    assert start["AvailableBalance"] == "10000.00"
    assert start["OnHoldBalance"] == "0.00"
    assert end["AvailableBalance"] == "9999.25"
    assert fake_mturk.balance == Decimal("9999.25")
    assert sum(payment.amount for payment in fake_mturk.payments) == Decimal("0.75")


# ----------------------------------------------------------- qualifications


def create_qualification_type(client, name: str = "Passed hearing screening"):
    response = client.create_qualification_type(
        Name=name,
        Description="Granted to listeners who passed the screening.",
        QualificationTypeStatus="Active",
    )
    return response["QualificationType"]["QualificationTypeId"]


def test_qualification_lifecycle(fake_mturk, mturk_client):
    type_id = create_qualification_type(mturk_client)

    mturk_client.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId=WORKER, IntegerValue=85
    )
    granted = mturk_client.list_workers_with_qualification_type(
        QualificationTypeId=type_id
    )["Qualifications"]
    mturk_client.disassociate_qualification_from_worker(
        QualificationTypeId=type_id, WorkerId=WORKER, Reason="Retest needed."
    )
    revoked = mturk_client.list_workers_with_qualification_type(
        QualificationTypeId=type_id, Status="Revoked"
    )["Qualifications"]
    still_granted = mturk_client.list_workers_with_qualification_type(
        QualificationTypeId=type_id, Status="Granted"
    )["Qualifications"]

    assert [(item["WorkerId"], item["IntegerValue"]) for item in granted] == [
        (WORKER, 85)
    ]
    assert granted[0]["Status"] == "Granted"
    assert granted[0]["GrantTime"] == fake_mturk.clock.now()
    assert [item["WorkerId"] for item in revoked] == [WORKER]
    assert still_granted == []


def test_qualification_type_fields(mturk_client):
    response = mturk_client.create_qualification_type(
        Name="Auto granted",
        Description="d",
        QualificationTypeStatus="Active",
        AutoGranted=True,
    )["QualificationType"]

    fetched = mturk_client.get_qualification_type(
        QualificationTypeId=response["QualificationTypeId"]
    )["QualificationType"]

    assert fetched == response
    assert fetched["AutoGranted"] is True
    assert fetched["AutoGrantedValue"] == 1
    assert fetched["IsRequestable"] is True
    assert isinstance(fetched["CreationTime"], datetime)


def test_qualification_type_duplicate_name(mturk_client):
    create_qualification_type(mturk_client, "Same name")

    with pytest.raises(ClientError) as excinfo:
        create_qualification_type(mturk_client, "Same name")

    assert error_code(excinfo) == "RequestError"


def test_disassociate_without_grant_rejected(mturk_client):
    type_id = create_qualification_type(mturk_client)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.disassociate_qualification_from_worker(
            QualificationTypeId=type_id, WorkerId=WORKER
        )

    assert error_code(excinfo) == "RequestError"


def test_associate_unknown_type_rejected(mturk_client):
    with pytest.raises(ClientError) as excinfo:
        mturk_client.associate_qualification_with_worker(
            QualificationTypeId="NOSUCHTYPE", WorkerId=WORKER
        )

    assert error_code(excinfo) == "RequestError"


def test_list_workers_paginates(mturk_client):
    type_id = create_qualification_type(mturk_client)
    workers = ["AWORKERA", "AWORKERB", "AWORKERC"]
    for worker in workers:
        mturk_client.associate_qualification_with_worker(
            QualificationTypeId=type_id, WorkerId=worker
        )

    first = mturk_client.list_workers_with_qualification_type(
        QualificationTypeId=type_id, MaxResults=2
    )
    second = mturk_client.list_workers_with_qualification_type(
        QualificationTypeId=type_id, MaxResults=2, NextToken=first["NextToken"]
    )

    listed = first["Qualifications"] + second["Qualifications"]
    assert [item["WorkerId"] for item in listed] == workers


def test_get_qualification_score(mturk_client):
    type_id = create_qualification_type(mturk_client)
    mturk_client.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId=WORKER, IntegerValue=3
    )

    score = mturk_client.get_qualification_score(
        QualificationTypeId=type_id, WorkerId=WORKER
    )["Qualification"]

    assert score["IntegerValue"] == 3
    with pytest.raises(ClientError):
        mturk_client.get_qualification_score(
            QualificationTypeId=type_id, WorkerId=OTHER_WORKER
        )


def test_custom_requirement_gates_accept(fake_mturk, mturk_client):
    type_id = create_qualification_type(mturk_client)
    requirement = {
        "QualificationTypeId": type_id,
        "Comparator": "GreaterThanOrEqualTo",
        "IntegerValues": [80],
    }
    hit_id = create_hit(
        mturk_client, MaxAssignments=3, QualificationRequirements=[requirement]
    )["HITId"]
    mturk_client.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId="AWORKERLOW", IntegerValue=50
    )
    mturk_client.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId="AWORKERHIGH", IntegerValue=90
    )

    with pytest.raises(SimulationError, match="qualification requirement"):
        fake_mturk.simulate_accept(hit_id, "AWORKERNONE")
    with pytest.raises(SimulationError, match="qualification requirement"):
        fake_mturk.simulate_accept(hit_id, "AWORKERLOW")
    assignment_id = fake_mturk.simulate_accept(hit_id, "AWORKERHIGH")

    assert fake_mturk.assignment_status(assignment_id) == "Accepted"


def test_does_not_exist_requirement(fake_mturk, mturk_client):
    type_id = create_qualification_type(mturk_client, "Already took part")
    requirement = {"QualificationTypeId": type_id, "Comparator": "DoesNotExist"}
    hit_id = create_hit(
        mturk_client, MaxAssignments=2, QualificationRequirements=[requirement]
    )["HITId"]
    mturk_client.associate_qualification_with_worker(
        QualificationTypeId=type_id, WorkerId=WORKER
    )

    with pytest.raises(SimulationError):
        fake_mturk.simulate_accept(hit_id, WORKER)
    assert fake_mturk.simulate_accept(hit_id, OTHER_WORKER)


def test_locale_requirement_uses_profile(fake_mturk, mturk_client):
    requirement = {
        "QualificationTypeId": WORKER_LOCALE,
        "Comparator": "In",
        "LocaleValues": [{"Country": "DE"}, {"Country": "AT"}],
    }
    hit_id = create_hit(
        mturk_client, MaxAssignments=2, QualificationRequirements=[requirement]
    )["HITId"]
    fake_mturk.set_worker_profile(OTHER_WORKER, WorkerProfile(country="AT"))

    with pytest.raises(SimulationError):
        fake_mturk.simulate_accept(hit_id, WORKER)
    assert fake_mturk.simulate_accept(hit_id, OTHER_WORKER)


def test_requirement_comparator_needs_values(mturk_client):
    type_id = create_qualification_type(mturk_client)
    requirement = {"QualificationTypeId": type_id, "Comparator": "GreaterThan"}

    with pytest.raises(ClientError) as excinfo:
        create_hit(mturk_client, QualificationRequirements=[requirement])

    assert error_code(excinfo) == "RequestError"


# ------------------------------------------------------------ NotifyWorkers


def test_notify_workers_records_message(fake_mturk, mturk_client):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    mturk_client.approve_assignment(AssignmentId=assignment_id)

    response = mturk_client.notify_workers(
        Subject="New listening test",
        MessageText="A follow-up test is online.",
        WorkerIds=[WORKER, OTHER_WORKER],
    )

    notification = fake_mturk.notifications[0]
    assert notification.subject == "New listening test"
    assert notification.worker_ids == (WORKER, OTHER_WORKER)
    failures = response["NotifyWorkersFailureStatuses"]
    assert [item["WorkerId"] for item in failures] == [OTHER_WORKER]
    assert failures[0]["NotifyWorkersFailureCode"] == "HardFailure"


def test_notify_workers_too_many(fake_mturk, mturk_client):
    workers = [f"AWORKER{index}" for index in range(101)]

    with pytest.raises(ClientError) as excinfo:
        mturk_client.notify_workers(Subject="s", MessageText="m", WorkerIds=workers)

    assert error_code(excinfo) == "RequestError"
    assert fake_mturk.notifications == []


# ------------------------------------------------------------ externalSubmit


def test_external_submit_marks_submitted(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    response = requests.post(
        fake_mturk.external_submit_url,
        data={"assignmentId": assignment_id, "rating": "64", "clip": ["a", "b"]},
        timeout=10,
    )
    assignment = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]

    assert fake_mturk.external_submit_url == (
        fake_mturk.turk_submit_to + "/mturk/externalSubmit"
    )
    assert response.status_code == 200
    assert assignment["AssignmentStatus"] == "Submitted"
    assert parse_answer_xml(assignment["Answer"]) == {
        "rating": ["64"],
        "clip": ["a", "b"],
    }


def test_external_submit_by_get(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)

    response = requests.get(
        fake_mturk.external_submit_url,
        params={"assignmentId": assignment_id, "rating": "12"},
        timeout=10,
    )

    assert response.status_code == 200
    assert fake_mturk.assignment_status(assignment_id) == "Submitted"


@pytest.mark.parametrize(
    "form",
    [
        {"rating": "64"},
        {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "rating": "64"},
        {"assignmentId": "NOSUCHASSIGNMENT", "rating": "64"},
    ],
)
def test_external_submit_invalid_form(fake_mturk, form):
    response = requests.post(fake_mturk.external_submit_url, data=form, timeout=10)

    assert response.status_code == 400
    assert "text/html" in response.headers["Content-Type"]


def test_external_submit_twice_rejected(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)
    form = {"assignmentId": assignment_id, "rating": "64"}
    requests.post(fake_mturk.external_submit_url, data=form, timeout=10)

    response = requests.post(fake_mturk.external_submit_url, data=form, timeout=10)

    assert response.status_code == 400
    assert "Submitted" in response.text


@pytest.mark.browser
def test_external_submit_from_browser(
    fake_mturk, mturk_client, tmp_path, playwright_instance: Any
):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")

    hit_id = create_hit(mturk_client)["HITId"]
    assignment_id = fake_mturk.simulate_accept(hit_id, WORKER)
    page_html = (
        f'<form method="post" action="{fake_mturk.external_submit_url}">'
        f'<input type="hidden" name="assignmentId" value="{assignment_id}">'
        '<input type="range" name="rating" min="0" max="100" value="37">'
        '<button type="submit">Submit</button></form>'
    )

    playwright = playwright_instance
    browser = playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
    try:
        page = browser.new_page()
        page.set_content(page_html)
        with page.expect_navigation():
            page.click("button")
        page.screenshot(path=str(tmp_path / "external-submit.png"))
        body_text = page.inner_text("body")
    finally:
        browser.close()

    assignment = mturk_client.get_assignment(AssignmentId=assignment_id)["Assignment"]
    assert f"Assignment {assignment_id} was submitted." in body_text
    assert parse_answer_xml(assignment["Answer"]) == {"rating": ["37"]}


# ------------------------------------------------------------ fault injection


def test_throttling_retried_by_standard_mode(fake_mturk):
    client = fake_mturk.client(
        Config(retries={"mode": "standard", "total_max_attempts": 3})
    )
    fake_mturk.throttle(2)

    response = client.get_account_balance()

    codes = [call.error_code for call in fake_mturk.recorded_calls]
    assert response["AvailableBalance"] == "10000.00"
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert codes == ["ThrottlingException", "ThrottlingException", None]


def test_throttling_error_without_retries(fake_mturk, mturk_client):
    fake_mturk.throttle(1)

    with pytest.raises(ClientError) as excinfo:
        mturk_client.get_account_balance()

    assert error_code(excinfo) == "ThrottlingException"
    assert excinfo.value.response["Error"]["Message"] == "Rate exceeded"
    assert mturk_client.get_account_balance()["AvailableBalance"] == "10000.00"


def test_throttle_rate_limits_calls(fake_mturk, mturk_client):
    # One call per 1000 s with a burst of 1: the first call passes, the next fails.
    fake_mturk.throttle(rate=0.001, burst=1)

    mturk_client.get_account_balance()
    with pytest.raises(ClientError) as excinfo:
        mturk_client.get_account_balance()
    fake_mturk.throttle()
    mturk_client.get_account_balance()

    assert error_code(excinfo) == "ThrottlingException"


def test_throttle_limited_to_operation(fake_mturk, mturk_client):
    fake_mturk.throttle(5, operation="SendBonus")

    balance = mturk_client.get_account_balance()

    assert balance["AvailableBalance"] == "10000.00"


def test_throttle_rejects_bad_arguments(fake_mturk):
    with pytest.raises(ValueError):
        fake_mturk.throttle(1, rate=1.0)
    with pytest.raises(ValueError):
        fake_mturk.throttle(rate=0)
    with pytest.raises(ValueError, match="Unknown MTurk operation"):
        fake_mturk.throttle(1, operation="SendBonuses")


def test_fail_next_service_fault(fake_mturk, mturk_client):
    fake_mturk.fail_next("CreateHIT", "ServiceFault", n=2)

    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            create_hit(mturk_client)
        assert error_code(excinfo) == "ServiceFault"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    create_hit(mturk_client)

    assert mturk_client.list_hits()["NumResults"] == 1


def test_fail_next_request_error_code(fake_mturk, mturk_client):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    fake_mturk.fail_next(
        "ApproveAssignment",
        "RequestError",
        message="Insufficient funds.",
        turk_error_code="AWS.MechanicalTurk.InsufficientFunds",
    )

    with pytest.raises(ClientError) as excinfo:
        mturk_client.approve_assignment(AssignmentId=assignment_id)

    assert error_code(excinfo) == "RequestError"
    assert excinfo.value.response["TurkErrorCode"] == (
        "AWS.MechanicalTurk.InsufficientFunds"
    )
    assert fake_mturk.assignment_status(assignment_id) == "Submitted"


def test_crash_after_send_bonus_pays_once(fake_mturk, mturk_client):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    bonus = {
        "WorkerId": WORKER,
        "BonusAmount": "1.00",
        "AssignmentId": assignment_id,
        "Reason": "Thanks.",
        "UniqueRequestToken": "bonus-crash",
    }
    fake_mturk.crash_after("SendBonus")

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        mturk_client.send_bonus(**bonus)
    paid_before_rerun = len(fake_mturk.payments)
    with pytest.raises(ClientError) as excinfo:
        mturk_client.send_bonus(**bonus)

    assert paid_before_rerun == 1
    assert error_code(excinfo) == "RequestError"
    assert len(fake_mturk.payments) == 1


def test_crash_retried_by_botocore_pays_once(fake_mturk):
    client = fake_mturk.client(
        Config(retries={"mode": "standard", "total_max_attempts": 3})
    )
    _, assignment_id = submitted_assignment(fake_mturk, client)
    fake_mturk.crash_after("SendBonus")

    with pytest.raises(ClientError) as excinfo:
        client.send_bonus(
            WorkerId=WORKER,
            BonusAmount="1.00",
            AssignmentId=assignment_id,
            Reason="Thanks.",
            UniqueRequestToken="bonus-retry",
        )

    assert error_code(excinfo) == "RequestError"
    assert fake_mturk.calls.count("SendBonus") == 2
    assert len(fake_mturk.payments) == 1


def test_crash_after_counts_calls(fake_mturk, mturk_client):
    fake_mturk.crash_after("CreateHIT", n=2)

    create_hit(mturk_client)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        create_hit(mturk_client)
    create_hit(mturk_client)

    assert mturk_client.list_hits()["NumResults"] == 3


def test_latency_triggers_read_timeout(fake_mturk):
    client = no_retry_client(fake_mturk, read_timeout=0.2, connect_timeout=5)
    fake_mturk.latency = 1.0

    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.get_account_balance()


def test_clear_faults(fake_mturk, mturk_client):
    fake_mturk.throttle(3)
    fake_mturk.fail_next("GetAccountBalance")
    fake_mturk.crash_after("GetAccountBalance")

    fake_mturk.clear_faults()

    assert mturk_client.get_account_balance()["AvailableBalance"] == "10000.00"


# -------------------------------------------------------- records, lifecycle


def test_calls_records_operations(fake_mturk, mturk_client):
    hit_id = create_hit(mturk_client)["HITId"]
    mturk_client.get_hit(HITId=hit_id)
    with pytest.raises(ClientError):
        mturk_client.get_hit(HITId="NOSUCHHIT")

    recorded = fake_mturk.recorded_calls

    assert fake_mturk.calls == ["CreateHIT", "GetHIT", "GetHIT"]
    assert recorded[1].params == {"HITId": hit_id}
    assert recorded[2].error_code == "RequestError"


def test_concurrent_create_hit(fake_mturk, mturk_client):
    hit_ids: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            hit_id = create_hit(mturk_client)["HITId"]
        except (ClientError, botocore.exceptions.BotoCoreError) as error:
            with lock:
                errors.append(error)
            return
        with lock:
            hit_ids.append(hit_id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(set(hit_ids)) == 8
    assert mturk_client.list_hits(MaxResults=100)["NumResults"] == 8


def test_concurrent_bonus_same_token(fake_mturk, mturk_client):
    _, assignment_id = submitted_assignment(fake_mturk, mturk_client)
    outcomes: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        try:
            mturk_client.send_bonus(
                WorkerId=WORKER,
                BonusAmount="1.00",
                AssignmentId=assignment_id,
                Reason="Thanks.",
                UniqueRequestToken="bonus-race",
            )
            outcome = "paid"
        except ClientError as error:
            outcome = error.response["Error"]["Code"]
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcomes) == ["RequestError"] * 5 + ["paid"]
    assert len(fake_mturk.payments) == 1


def test_lifecycle_errors():
    fake = FakeMTurk()

    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.endpoint_url
    fake.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            fake.start()
    finally:
        fake.stop()
    fake.stop()


def test_non_loopback_host_rejected():
    with pytest.raises(ValueError, match="loopback"):
        FakeMTurk(host="0.0.0.0")


def test_clock_rejects_bad_input():
    clock = FakeClock(datetime(2024, 5, 1, tzinfo=UTC))

    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="naive"):
        clock.set(datetime(2024, 5, 2))
    clock.set(datetime(2024, 5, 2, tzinfo=UTC))
    assert clock.advance(60) == datetime(2024, 5, 2, 0, 1, tzinfo=UTC)


def test_shared_clock_drives_fake():
    clock = FakeClock(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))

    with FakeMTurk(clock=clock) as fake:
        client = no_retry_client(fake)
        hit = create_hit(client, LifetimeInSeconds=60)
        clock.advance(61)
        status = client.get_hit(HITId=hit["HITId"])["HIT"]["HITStatus"]

    assert hit["CreationTime"] == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert status == "Reviewable"


# --------------------------------------------- request shapes (reference)


def test_send_bonus_request_shape_stubbed(fake_mturk):
    """Pin the SendBonus request that the MTurk plugin is expected to send."""
    client = no_retry_client(fake_mturk)
    expected = {
        "WorkerId": "A1B2C3D4E5F6G7",
        "BonusAmount": "0.75",
        "AssignmentId": "3AMW0RGHOD1P2L0EXAMPLE",
        "Reason": "Bonus for consistent ratings in the MUSHRA test.",
        "UniqueRequestToken": "caqe-bonus-3AMW0RGHOD1P2L0EXAMPLE",
    }

    with Stubber(client) as stubber:
        stubber.add_response("send_bonus", {}, expected_params=expected)
        client.send_bonus(**expected)
        stubber.assert_no_pending_responses()

    assert fake_mturk.calls == []


def test_create_hit_request_shape_stubbed(fake_mturk):
    """Pin the CreateHIT request shape, and check that the fake accepts it."""
    expected = {
        "MaxAssignments": 20,
        "LifetimeInSeconds": 7 * 24 * 3600,
        "AssignmentDurationInSeconds": 3600,
        "AutoApprovalDelayInSeconds": 3 * 24 * 3600,
        "Reward": "1.50",
        "Title": "Rate the quality of short audio clips",
        "Description": "MUSHRA listening test with headphones, about 20 minutes.",
        "Keywords": "audio, listening test, headphones",
        "Question": EXTERNAL_QUESTION,
        "RequesterAnnotation": "caqe:demo-test",
        "QualificationRequirements": [
            {
                "QualificationTypeId": "000000000000000000L0",
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [95],
                "ActionsGuarded": "Accept",
            }
        ],
        "UniqueRequestToken": "caqe-hit-demo-test-1",
    }
    stubbed_client = no_retry_client(fake_mturk)

    with Stubber(stubbed_client) as stubber:
        stubber.add_response(
            "create_hit", {"HIT": {"HITId": "3X0EXAMPLE"}}, expected_params=expected
        )
        stubbed = stubbed_client.create_hit(**expected)
        stubber.assert_no_pending_responses()
    real = no_retry_client(fake_mturk).create_hit(**expected)["HIT"]

    wire_body = fake_mturk.recorded_calls[0].params
    assert stubbed["HIT"]["HITId"] == "3X0EXAMPLE"
    assert wire_body == json.loads(json.dumps(expected))
    assert real["QualificationRequirements"] == expected["QualificationRequirements"]
    assert real["RequesterAnnotation"] == "caqe:demo-test"
