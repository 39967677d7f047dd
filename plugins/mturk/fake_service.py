"""Fake MTurk requester service for tests, served over HTTP on loopback.

The fake speaks MTurk's JSON 1.1 protocol, so a real ``boto3.client("mturk")``
pointed at it behaves as it would against MTurk: botocore signs, retries and
parses responses exactly as in production. Every request is validated against
botocore's own service model for ``mturk``, and every response is checked
against the operation's output shape before it is sent.

Besides the requester API, the fake offers:

* simulated workers (``simulate_accept``, ``simulate_submit``, ``simulate_work``,
  ``simulate_return``) and the worker's ``/mturk/externalSubmit`` form endpoint;
* a ``FakeClock`` that drives HIT expiry, assignment deadlines and auto-approval,
  so tests advance time instead of sleeping;
* fault injection: ``latency``, ``throttle``, ``fail_next`` and ``crash_after``;
* records of every payment (``payments``) and API call (``calls``,
  ``recorded_calls``).

NOTE: The ``TurkErrorCode`` values follow the ``AWS.MechanicalTurk.*`` naming of
MTurk's legacy API. Only ``AWS.MechanicalTurk.HitAlreadyExists`` (CreateHIT with a
reused UniqueRequestToken) is documented for the current API, in botocore's
service model. Client code should branch on the error code (``RequestError``)
and on the state it reads back, not on ``TurkErrorCode``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import logging
import operator
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal, Self
from xml.etree import ElementTree

import boto3
import botocore.model
import botocore.session
from botocore.config import Config
from botocore.validate import ParamValidator
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

logger = logging.getLogger(__name__)

TARGET_PREFIX = "MTurkRequesterServiceV20170117"
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
EXTERNAL_SUBMIT_PATH = "/mturk/externalSubmit"

# System qualification type IDs, as listed in the MTurk API reference
# ("QualificationRequirement" data structure, section "Qualification Type IDs").
WORKER_LOCALE = "00000000000000000071"
WORKER_PERCENT_ASSIGNMENTS_APPROVED = "000000000000000000L0"
WORKER_NUMBER_HITS_APPROVED = "00000000000000000040"
WORKER_ADULT = "00000000000000000060"
MASTERS_PRODUCTION = "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH"
MASTERS_SANDBOX = "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"
SYSTEM_QUALIFICATION_TYPES = frozenset(
    {
        WORKER_LOCALE,
        WORKER_PERCENT_ASSIGNMENTS_APPROVED,
        WORKER_NUMBER_HITS_APPROVED,
        WORKER_ADULT,
        MASTERS_PRODUCTION,
        MASTERS_SANDBOX,
    }
)

# The idempotency window of UniqueRequestToken: "The unique token expires after
# 24 hours." (MTurk Requester guide, "Use request tokens").
REQUEST_TOKEN_LIFETIME = timedelta(hours=24)
# ApproveAssignment with OverrideRejection "only works on rejected assignments
# that were submitted within the previous 30 days" (botocore mturk model).
OVERRIDE_REJECTION_WINDOW = timedelta(days=30)
MAX_QUESTION_BYTES = 65535
MAX_QUALIFICATION_REQUIREMENTS = 10
MAX_NOTIFIED_WORKERS = 100
MAX_NOTIFY_SUBJECT_CHARS = 200
MAX_NOTIFY_MESSAGE_CHARS = 4096
# NOTE: MTurk documents neither the page size used when MaxResults is omitted
# nor the default auto-approval delay of the current API; 10 results and
# 30 days (the legacy API's default) are assumptions.
DEFAULT_PAGE_SIZE = 10
DEFAULT_AUTO_APPROVAL_DELAY_SECONDS = 30 * 24 * 3600
DEFAULT_BALANCE = Decimal("10000.00")

CENT = Decimal("0.01")
_WORKER_ID_PATTERN = re.compile(r"^A[A-Z0-9]+$")
_ID_ALPHABET = string.ascii_uppercase + string.digits
_ANSWER_NAMESPACE = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/"
    "2005-10-01/QuestionFormAnswers.xsd"
)
_QUESTION_ROOTS = {"QuestionForm", "ExternalQuestion", "HTMLQuestion"}

# Assignment states. Only the last three appear on the wire: MTurk's
# AssignmentStatus enum has no value for an accepted, unsubmitted assignment.
ACCEPTED = "Accepted"
RETURNED = "Returned"
ABANDONED = "Abandoned"
SUBMITTED = "Submitted"
APPROVED = "Approved"
REJECTED = "Rejected"
_VISIBLE_ASSIGNMENT_STATUSES = (SUBMITTED, APPROVED, REJECTED)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class MTurkServiceError(Exception):
    """An error response of the MTurk JSON protocol.

    ``error_type`` becomes the ``__type`` field, which botocore reports as
    ``ClientError.response["Error"]["Code"]``.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        turk_error_code: str | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.turk_error_code = turk_error_code
        self.status = status

    def to_body(self) -> dict[str, str]:
        """Return the JSON body of the error response."""
        body = {"__type": self.error_type, "Message": self.message}
        if self.turk_error_code is not None:
            body["TurkErrorCode"] = self.turk_error_code
        return body


def _request_error(message: str, turk_error_code: str) -> MTurkServiceError:
    return MTurkServiceError(
        "RequestError", message, turk_error_code=turk_error_code, status=400
    )


def make_error(
    error_type: str, message: str | None = None, turk_error_code: str | None = None
) -> MTurkServiceError:
    """Build an error response of a given type with MTurk's HTTP status for it.

    ``ServiceFault`` is a fault in botocore's model and is sent with status 500;
    every other type is sent with status 400.
    """
    status = 500 if error_type in {"ServiceFault", "InternalFailure"} else 400
    if message is None:
        message = f"Injected {error_type} from the fake MTurk service."
    return MTurkServiceError(
        error_type, message, turk_error_code=turk_error_code, status=status
    )


class SimulationError(Exception):
    """Raised when a simulated worker action is not possible in the current state."""


class _ConnectionDropped(ConnectionError):
    """Raised inside the WSGI app to drop the connection without a response."""


# --------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------


class FakeClock:
    """A settable UTC clock shared by the fake service and the tests.

    It starts at the real current time (or at ``start``) and only moves when a
    test calls ``advance`` or ``set``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime.now(UTC)
        self._now = _require_aware(start, "start")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the current fake time as an aware UTC datetime."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError(
                f"Cannot advance the clock by {seconds} s: the clock only moves "
                "forward. Use set() to jump to an earlier time."
            )
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, when: datetime) -> None:
        """Set the clock to ``when``, an aware datetime."""
        aware = _require_aware(when, "when")
        with self._lock:
            self._now = aware


def _require_aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(
            f"{name}={value!r} is a naive datetime; pass an aware one, "
            "for example datetime.now(UTC)."
        )
    return value.astimezone(UTC)


# --------------------------------------------------------------------------
# Records visible to tests
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """A payment from the requester's balance to a worker."""

    kind: Literal["reward", "bonus"]
    worker_id: str
    assignment_id: str
    hit_id: str
    amount: Decimal
    time: datetime
    unique_request_token: str | None = None
    reason: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class RecordedCall:
    """One API request that reached the fake, with the error it returned."""

    operation: str
    params: Mapping[str, Any]
    request_id: str
    error_code: str | None


@dataclass(frozen=True)
class Notification:
    """A NotifyWorkers request; the fake sends no email."""

    subject: str
    message_text: str
    worker_ids: tuple[str, ...]
    time: datetime


@dataclass
class WorkerProfile:
    """Values of the system qualifications that a simulated worker holds.

    Workers without an explicit profile get this default profile.
    """

    country: str = "US"
    subdivision: str | None = None
    percent_assignments_approved: int = 100
    number_hits_approved: int = 1000
    adult: bool = True
    masters: bool = False


# --------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------


@dataclass
class _HITType:
    hit_type_id: str
    hit_group_id: str
    title: str
    description: str
    reward: Decimal
    assignment_duration: int
    auto_approval_delay: int
    keywords: str | None
    qualification_requirements: list[dict[str, Any]]


@dataclass
class _HIT:
    hit_id: str
    hit_type: _HITType
    creation_time: datetime
    expiration: datetime
    max_assignments: int
    question: str
    requester_annotation: str | None
    assignment_ids: list[str] = field(default_factory=list)
    disposed: bool = False


@dataclass
class _Assignment:
    assignment_id: str
    hit_id: str
    worker_id: str
    status: str
    accept_time: datetime
    deadline: datetime
    submit_time: datetime | None = None
    auto_approval_time: datetime | None = None
    approval_time: datetime | None = None
    rejection_time: datetime | None = None
    answer: str | None = None
    requester_feedback: str | None = None


@dataclass
class _QualificationType:
    qualification_type_id: str
    creation_time: datetime
    name: str
    description: str
    keywords: str | None
    status: str
    retry_delay: int | None
    test: str | None
    answer_key: str | None
    test_duration: int | None
    auto_granted: bool
    auto_granted_value: int | None


@dataclass
class _Qualification:
    qualification_type_id: str
    worker_id: str
    grant_time: datetime
    integer_value: int
    status: str


@dataclass
class _BonusToken:
    request_id: str
    time: datetime


# --------------------------------------------------------------------------
# Service model: validation and output checks
# --------------------------------------------------------------------------


@functools.cache
def load_service_model() -> botocore.model.ServiceModel:
    """Return botocore's service model for ``mturk`` (loaded once)."""
    return botocore.session.get_session().get_service_model("mturk")


def _check_constraints(
    value: Any, shape: botocore.model.Shape, path: str, problems: list[str]
) -> None:
    """Append violations of ``pattern``, ``max`` and ``enum`` to ``problems``.

    botocore's ParamValidator checks types, required members and ``min`` only;
    MTurk itself also enforces these constraints of the model.
    """
    metadata = shape.metadata
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member_value in value.items():
            member_shape = shape.members.get(name)
            if member_shape is not None:
                child_path = f"{path}.{name}" if path else name
                _check_constraints(member_value, member_shape, child_path, problems)
    elif shape.type_name == "list" and isinstance(value, list):
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(
                f"{path} has {len(value)} items, more than the maximum "
                f"{metadata['max']}."
            )
        for index, item in enumerate(value):
            _check_constraints(item, shape.member, f"{path}[{index}]", problems)
    elif shape.type_name == "string" and isinstance(value, str):
        pattern = metadata.get("pattern")
        if pattern is not None and re.search(pattern, value) is None:
            problems.append(
                f"Value {value!r} at {path} failed to satisfy the pattern {pattern}."
            )
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append(
                f"Value at {path} has length {len(value)}, more than the maximum "
                f"{metadata['max']}."
            )
        if shape.enum and value not in shape.enum:
            problems.append(
                f"Value {value!r} at {path} is not one of {', '.join(shape.enum)}."
            )
    elif (
        shape.type_name in {"integer", "long"}
        and isinstance(value, int)
        and "max" in metadata
        and value > metadata["max"]
    ):
        problems.append(
            f"Value {value} at {path} is greater than the maximum {metadata['max']}."
        )


def _decode_timestamps(value: Any, shape: botocore.model.Shape) -> Any:
    """Convert epoch-second timestamps of a validated request to datetimes."""
    if shape.type_name == "structure" and isinstance(value, dict):
        decoded = {}
        for name, member_value in value.items():
            member_shape = shape.members.get(name)
            if member_shape is None:
                decoded[name] = member_value
            else:
                decoded[name] = _decode_timestamps(member_value, member_shape)
        return decoded
    if shape.type_name == "list" and isinstance(value, list):
        return [_decode_timestamps(item, shape.member) for item in value]
    if shape.type_name == "timestamp" and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return value


def _json_default(value: Any) -> Any:
    # The JSON protocol sends timestamps as epoch seconds (botocore's
    # JSONSerializer and JSONParser use this format for ``mturk``).
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"Cannot serialise {value!r} of type {type(value).__name__}")


def format_money(amount: Decimal) -> str:
    """Format an amount of US dollars as MTurk's CurrencyAmount string."""
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def _parse_money(text: str, name: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _request_error(
            f"{name} {text!r} is not a US dollar amount such as '0.50'.",
            "AWS.MechanicalTurk.InvalidParameterValue",
        ) from None
    return amount.quantize(CENT)


def build_answer_xml(answers: Mapping[str, str | Sequence[str]]) -> str:
    """Build a QuestionFormAnswers document from field names and values.

    Each value becomes a FreeText answer, the form MTurk uses for the fields of
    an ExternalQuestion form. A sequence of strings gives one answer per item.
    """
    ElementTree.register_namespace("", _ANSWER_NAMESPACE)
    root = ElementTree.Element(f"{{{_ANSWER_NAMESPACE}}}QuestionFormAnswers")
    for name, value in answers.items():
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            answer = ElementTree.SubElement(root, f"{{{_ANSWER_NAMESPACE}}}Answer")
            identifier = ElementTree.SubElement(
                answer, f"{{{_ANSWER_NAMESPACE}}}QuestionIdentifier"
            )
            identifier.text = name
            free_text = ElementTree.SubElement(
                answer, f"{{{_ANSWER_NAMESPACE}}}FreeText"
            )
            free_text.text = str(item)
    declaration = '<?xml version="1.0" encoding="UTF-8"?>\n'
    return declaration + ElementTree.tostring(root, encoding="unicode")


def parse_answer_xml(answer_xml: str) -> dict[str, list[str]]:
    """Return the FreeText answers of a QuestionFormAnswers document by field name."""
    root = ElementTree.fromstring(answer_xml)
    answers: dict[str, list[str]] = {}
    for answer in root.iter(f"{{{_ANSWER_NAMESPACE}}}Answer"):
        name = answer.findtext(f"{{{_ANSWER_NAMESPACE}}}QuestionIdentifier", "")
        text = answer.findtext(f"{{{_ANSWER_NAMESPACE}}}FreeText", "")
        answers.setdefault(name, []).append(text)
    return answers


def _new_id(length: int = 30) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _status_error(allowed: str, now: datetime) -> MTurkServiceError:
    # MTurk words state errors this way and appends the epoch milliseconds;
    # public client code matches on "This operation can be called with a status
    # of: Submitted" to detect an assignment that is already approved.
    millis = int(now.timestamp() * 1000)
    return _request_error(
        f"This operation can be called with a status of: {allowed} ({millis})",
        "AWS.MechanicalTurk.InvalidAssignmentState",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------


@dataclass
class _ThrottleRule:
    operation: str | None
    remaining: int | None
    rate: float | None
    burst: float
    tokens: float
    last_refill: float


@dataclass
class _FailRule:
    operation: str
    error: MTurkServiceError
    remaining: int


@dataclass
class _CrashRule:
    operation: str
    calls_left: int


class _Faults:
    """Fault injection state, consulted once per API call."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self.throttle_rule: _ThrottleRule | None = None
        self.fail_rules: list[_FailRule] = []
        self.crash_rules: list[_CrashRule] = []

    def clear(self) -> None:
        with self._lock:
            self.throttle_rule = None
            self.fail_rules.clear()
            self.crash_rules.clear()

    def set_throttle(self, rule: _ThrottleRule | None) -> None:
        with self._lock:
            self.throttle_rule = rule

    def add_fail(self, rule: _FailRule) -> None:
        with self._lock:
            self.fail_rules.append(rule)

    def add_crash(self, rule: _CrashRule) -> None:
        with self._lock:
            self.crash_rules.append(rule)

    def error_for(self, operation: str) -> MTurkServiceError | None:
        """Return the injected error for this call, consuming one use of its rule."""
        with self._lock:
            if self._is_throttled(operation):
                # MTurk's throttling response, as reported by boto3 users:
                # "An error occurred (ThrottlingException) when calling the
                # CreateHITWithHITType operation (reached max retries: 4): Rate
                # exceeded" (allenai/amti pull request 12). botocore's standard
                # retry mode treats ThrottlingException as retryable.
                return make_error("ThrottlingException", "Rate exceeded")
            for rule in self.fail_rules:
                if rule.operation == operation and rule.remaining > 0:
                    rule.remaining -= 1
                    return rule.error
        return None

    def should_crash(self, operation: str) -> bool:
        """Count this call against crash rules; return True on the chosen call."""
        with self._lock:
            for rule in self.crash_rules:
                if rule.operation == operation and rule.calls_left > 0:
                    rule.calls_left -= 1
                    if rule.calls_left == 0:
                        return True
        return False

    def _is_throttled(self, operation: str) -> bool:
        rule = self.throttle_rule
        if rule is None:
            return False
        if rule.operation is not None and rule.operation != operation:
            return False
        if rule.remaining is not None:
            if rule.remaining <= 0:
                return False
            rule.remaining -= 1
            return True
        # Token bucket: ``rate`` tokens per second, at most ``burst`` stored.
        assert rule.rate is not None
        now = self._monotonic()
        elapsed = now - rule.last_refill
        rule.tokens = min(rule.burst, rule.tokens + elapsed * rule.rate)
        rule.last_refill = now
        if rule.tokens >= 1:
            rule.tokens -= 1
            return False
        return True


class _QuietRequestHandler(WSGIRequestHandler):
    """Send werkzeug's per-request log lines to this module's logger at DEBUG."""

    def log(self, log_type: str, message: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), message % args)


# --------------------------------------------------------------------------
# The fake service
# --------------------------------------------------------------------------


class FakeMTurk:
    """A stateful fake of the MTurk requester API, served on 127.0.0.1.

    Use it as a context manager, or call ``start()`` and ``stop()``::

        with FakeMTurk() as fake:
            client = fake.client()
            hit = client.create_hit(...)["HIT"]
            assignment_id = fake.simulate_work(hit["HITId"], "AWORKER1", {"q": "1"})

    All state lives in memory and is guarded by one lock, so concurrent
    requests and test threads see consistent state.
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        balance: Decimal | str = DEFAULT_BALANCE,
        host: str = "127.0.0.1",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(
                f"host={host!r} is not a loopback address; the fake MTurk service "
                "only listens on loopback, for example 127.0.0.1."
            )
        self.clock = clock if clock is not None else FakeClock()
        self.latency = 0.0
        self._host = host
        self._lock = threading.RLock()
        self._faults = _Faults(monotonic)
        self._monotonic = monotonic
        self._model = load_service_model()
        self._validator = ParamValidator()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._endpoint_url: str | None = None

        self._balance = Decimal(balance).quantize(CENT)
        self._hit_types: dict[str, _HITType] = {}
        self._hits: dict[str, _HIT] = {}
        self._assignments: dict[str, _Assignment] = {}
        self._qualification_types: dict[str, _QualificationType] = {}
        self._qualifications: dict[tuple[str, str], _Qualification] = {}
        self._worker_profiles: dict[str, WorkerProfile] = {}
        self._payments: list[Payment] = []
        self._bonus_tokens: dict[str, _BonusToken] = {}
        self._hit_tokens: dict[str, tuple[str, datetime]] = {}
        self._calls: list[RecordedCall] = []
        self._notifications: list[Notification] = []

        self._handlers: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "ApproveAssignment": self._approve_assignment,
            "AssociateQualificationWithWorker": self._associate_qualification,
            "CreateHIT": self._create_hit,
            "CreateHITType": self._create_hit_type,
            "CreateHITWithHITType": self._create_hit_with_hit_type,
            "CreateQualificationType": self._create_qualification_type,
            "DeleteHIT": self._delete_hit,
            "DisassociateQualificationFromWorker": self._disassociate_qualification,
            "GetAccountBalance": self._get_account_balance,
            "GetAssignment": self._get_assignment,
            "GetHIT": self._get_hit,
            "GetQualificationScore": self._get_qualification_score,
            "GetQualificationType": self._get_qualification_type,
            "ListAssignmentsForHIT": self._list_assignments_for_hit,
            "ListBonusPayments": self._list_bonus_payments,
            "ListHITs": self._list_hits,
            "ListReviewableHITs": self._list_reviewable_hits,
            "ListWorkersWithQualificationType": self._list_workers_with_qualification,
            "NotifyWorkers": self._notify_workers,
            "RejectAssignment": self._reject_assignment,
            "SendBonus": self._send_bonus,
            "UpdateExpirationForHIT": self._update_expiration_for_hit,
        }

    # ---------------------------------------------------------------- server

    def start(self) -> str:
        """Serve the fake on an ephemeral port in a background thread.

        Returns the endpoint URL, for example ``http://127.0.0.1:40123``.
        """
        if self._server is not None:
            raise RuntimeError(
                f"The fake MTurk service is already running at {self._endpoint_url}; "
                "call stop() before starting it again."
            )
        server = make_server(
            self._host,
            0,
            self.wsgi_app,
            threaded=True,
            request_handler=_QuietRequestHandler,
        )
        host = self._host if ":" not in self._host else f"[{self._host}]"
        self._endpoint_url = f"http://{host}:{server.server_port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-mturk",
            daemon=True,
        )
        self._thread.start()
        logger.info("Fake MTurk service started at %s", self._endpoint_url)
        return self._endpoint_url

    def stop(self) -> None:
        """Stop the server and wait for its thread; a no-op when not running."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        logger.info("Fake MTurk service at %s stopped", self._endpoint_url)
        self._server = None
        self._thread = None
        self._endpoint_url = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """Base URL of the running service, used as boto3's ``endpoint_url``."""
        if self._endpoint_url is None:
            raise RuntimeError(
                "The fake MTurk service is not running; call start() first."
            )
        return self._endpoint_url

    @property
    def turk_submit_to(self) -> str:
        """The ``turkSubmitTo`` value MTurk passes to an ExternalQuestion page."""
        return self.endpoint_url

    @property
    def external_submit_url(self) -> str:
        """URL of the worker's submit form: ``{turkSubmitTo}/mturk/externalSubmit``."""
        return self.endpoint_url + EXTERNAL_SUBMIT_PATH

    def client(self, config: Config | None = None) -> Any:
        """Return a real boto3 MTurk client for this fake, with dummy credentials.

        ``config`` is passed to boto3 unchanged. For one attempt per call, use
        ``Config(retries={"mode": "standard", "total_max_attempts": 1})``:
        botocore's ``max_attempts`` counts retries, not attempts.
        """
        session = boto3.session.Session()
        return session.client(
            "mturk",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    # ------------------------------------------------------- fault injection

    def throttle(
        self,
        count: int | None = None,
        *,
        rate: float | None = None,
        burst: int = 1,
        operation: str | None = None,
    ) -> None:
        """Return ThrottlingException for some API calls.

        With ``count``, the next ``count`` calls are throttled. With ``rate``,
        calls beyond ``rate`` per second (real, monotonic time) are throttled,
        with up to ``burst`` calls allowed at once. ``operation`` limits the
        throttling to one operation. A new call replaces the previous setting;
        ``throttle()`` with no arguments turns throttling off.
        """
        if count is not None and rate is not None:
            raise ValueError("Pass either count or rate to throttle(), not both.")
        if count is None and rate is None:
            self._faults.set_throttle(None)
            return
        if count is not None and count < 0:
            raise ValueError(f"count={count} is negative; pass 0 or more calls.")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate={rate} must be a positive number of calls/s.")
        if burst < 1:
            raise ValueError(f"burst={burst} must be at least 1 call.")
        self._check_operation_name(operation)
        self._faults.set_throttle(
            _ThrottleRule(
                operation=operation,
                remaining=count,
                rate=rate,
                burst=float(burst),
                tokens=float(burst),
                last_refill=self._monotonic(),
            )
        )

    def fail_next(
        self,
        operation: str,
        error: str | MTurkServiceError = "ServiceFault",
        n: int = 1,
        *,
        message: str | None = None,
        turk_error_code: str | None = None,
    ) -> None:
        """Make the next ``n`` calls of ``operation`` return ``error``.

        ``error`` is an error type such as ``"ServiceFault"`` or
        ``"RequestError"``, or a complete ``MTurkServiceError``. The calls have
        no effect on the fake's state.
        """
        self._check_operation_name(operation)
        if n < 1:
            raise ValueError(f"n={n} must be at least 1 call.")
        if isinstance(error, str):
            error = make_error(error, message, turk_error_code)
        self._faults.add_fail(_FailRule(operation, error, n))

    def crash_after(self, operation: str, n: int = 1) -> None:
        """Drop the connection after the ``n``-th next call of ``operation`` acts.

        That call changes the fake's state as usual, but the client receives no
        response, as when a client crashes or the network fails after MTurk
        acted. botocore then raises ``ConnectionClosedError``, or retries.
        """
        self._check_operation_name(operation)
        if n < 1:
            raise ValueError(f"n={n} must be at least 1 call.")
        self._faults.add_crash(_CrashRule(operation, n))

    def clear_faults(self) -> None:
        """Remove all throttling, injected errors and crashes; keep the latency."""
        self._faults.clear()

    def _check_operation_name(self, operation: str | None) -> None:
        if operation is not None and operation not in self._model.operation_names:
            raise ValueError(
                f"Unknown MTurk operation {operation!r}; use an operation name "
                "from botocore's model, such as 'SendBonus'."
            )

    # --------------------------------------------------------------- records

    @property
    def payments(self) -> list[Payment]:
        """Every approved reward and bonus paid so far, oldest first."""
        with self._lock:
            self._refresh()
            return list(self._payments)

    @property
    def calls(self) -> list[str]:
        """Operation names of all API calls received, including failed ones."""
        with self._lock:
            return [call.operation for call in self._calls]

    @property
    def recorded_calls(self) -> list[RecordedCall]:
        """All API calls received, with their parameters and error codes."""
        with self._lock:
            return list(self._calls)

    @property
    def notifications(self) -> list[Notification]:
        """Every NotifyWorkers request received."""
        with self._lock:
            return list(self._notifications)

    @property
    def balance(self) -> Decimal:
        """The requester's available balance in US dollars."""
        with self._lock:
            self._refresh()
            return self._balance

    def assignment_status(self, assignment_id: str) -> str:
        """Return an assignment's internal status, including Accepted, Returned
        and Abandoned, which the API does not expose."""
        with self._lock:
            self._refresh()
            return self._require_assignment_for_simulation(assignment_id).status

    # ------------------------------------------------------ simulated workers

    def set_worker_profile(self, worker_id: str, profile: WorkerProfile) -> None:
        """Set the system qualifications of a simulated worker."""
        _require_worker_id(worker_id)
        with self._lock:
            self._worker_profiles[worker_id] = profile

    def simulate_accept(self, hit_id: str, worker_id: str) -> str:
        """Let a worker accept a HIT, as on the MTurk website.

        Returns the new assignment ID. Raises SimulationError when the HIT is
        not Assignable, the worker already has an assignment for it, or the
        worker does not meet its qualification requirements.
        """
        _require_worker_id(worker_id)
        with self._lock:
            self._refresh()
            now = self.clock.now()
            hit = self._hits.get(hit_id)
            if hit is None or hit.disposed:
                raise SimulationError(f"HIT {hit_id!r} does not exist.")
            status = self._hit_status(hit, now)
            if status != "Assignable":
                raise SimulationError(
                    f"HIT {hit_id} is {status}; workers can accept only an "
                    "Assignable HIT."
                )
            for existing_id in hit.assignment_ids:
                existing = self._assignments[existing_id]
                if existing.worker_id == worker_id and existing.status not in {
                    RETURNED,
                    ABANDONED,
                }:
                    raise SimulationError(
                        f"Worker {worker_id} already has assignment {existing_id} "
                        f"for HIT {hit_id}; MTurk lets a worker do a HIT once."
                    )
            for requirement in hit.hit_type.qualification_requirements:
                if not self._meets_requirement(worker_id, requirement):
                    raise SimulationError(
                        f"Worker {worker_id} does not meet the qualification "
                        f"requirement {requirement!r} of HIT {hit_id}."
                    )
            assignment = _Assignment(
                assignment_id=_new_id(),
                hit_id=hit_id,
                worker_id=worker_id,
                status=ACCEPTED,
                accept_time=now,
                deadline=now + timedelta(seconds=hit.hit_type.assignment_duration),
            )
            self._assignments[assignment.assignment_id] = assignment
            hit.assignment_ids.append(assignment.assignment_id)
            return assignment.assignment_id

    def simulate_submit(
        self, assignment_id: str, answers: str | Mapping[str, str | Sequence[str]]
    ) -> None:
        """Submit an accepted assignment with its answers.

        ``answers`` is a QuestionFormAnswers XML document or a mapping from
        field names to values, which becomes such a document.
        """
        if isinstance(answers, str):
            answer_xml = answers
            try:
                ElementTree.fromstring(answer_xml)
            except ElementTree.ParseError as error:
                raise SimulationError(
                    f"The answer for assignment {assignment_id} is not valid XML "
                    f"({error}); pass a QuestionFormAnswers document or a dict."
                ) from None
        else:
            answer_xml = build_answer_xml(answers)
        with self._lock:
            self._refresh()
            assignment = self._require_assignment_for_simulation(assignment_id)
            if assignment.status != ACCEPTED:
                raise SimulationError(
                    f"Assignment {assignment_id} is {assignment.status}; only an "
                    "Accepted assignment can be submitted."
                )
            hit = self._hits[assignment.hit_id]
            now = self.clock.now()
            assignment.status = SUBMITTED
            assignment.submit_time = now
            assignment.auto_approval_time = now + timedelta(
                seconds=hit.hit_type.auto_approval_delay
            )
            assignment.answer = answer_xml
            self._refresh()

    def simulate_work(
        self,
        hit_id: str,
        worker_id: str,
        answers: str | Mapping[str, str | Sequence[str]],
    ) -> str:
        """Accept and submit a HIT as one worker; returns the assignment ID."""
        assignment_id = self.simulate_accept(hit_id, worker_id)
        self.simulate_submit(assignment_id, answers)
        return assignment_id

    def simulate_return(self, assignment_id: str) -> None:
        """Return an accepted assignment, which frees its slot on the HIT."""
        with self._lock:
            self._refresh()
            assignment = self._require_assignment_for_simulation(assignment_id)
            if assignment.status != ACCEPTED:
                raise SimulationError(
                    f"Assignment {assignment_id} is {assignment.status}; only an "
                    "Accepted assignment can be returned."
                )
            assignment.status = RETURNED

    def _require_assignment_for_simulation(self, assignment_id: str) -> _Assignment:
        assignment = self._assignments.get(assignment_id)
        if assignment is None:
            raise SimulationError(f"Assignment {assignment_id!r} does not exist.")
        return assignment

    # ------------------------------------------------------------- WSGI app

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable) -> Any:
        """Route a WSGI request to the API at ``/`` or to the worker submit form."""
        request = Request(environ)
        if request.path == EXTERNAL_SUBMIT_PATH:
            response = self._handle_external_submit(request)
        elif request.path == "/" and request.method == "POST":
            response = self._handle_api(request, environ)
        else:
            response = Response(
                f"Not found: {request.method} {request.path}. The fake MTurk "
                f"service serves POST / and {EXTERNAL_SUBMIT_PATH}.",
                status=404,
                mimetype="text/plain",
            )
        return response(environ, start_response)

    def _handle_api(self, request: Request, environ: dict[str, Any]) -> Response:
        request_id = str(uuid.uuid4())
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.partition(".")
        if prefix != TARGET_PREFIX or operation not in self._model.operation_names:
            error = make_error(
                "UnknownOperationException",
                f"Unknown operation {target!r}; expected X-Amz-Target "
                f"'{TARGET_PREFIX}.<Operation>' with an MTurk operation name.",
            )
            self._record(operation or target, {}, request_id, error)
            return self._error_response(error, request_id)

        try:
            params = json.loads(request.get_data(as_text=True) or "{}")
        except json.JSONDecodeError as decode_error:
            error = make_error(
                "SerializationException",
                f"The request body is not valid JSON: {decode_error}.",
            )
            self._record(operation, {}, request_id, error)
            return self._error_response(error, request_id)

        if self.latency > 0:
            time.sleep(self.latency)

        injected = self._faults.error_for(operation)
        if injected is not None:
            logger.info(
                "Fake MTurk injected %s for %s (request %s)",
                injected.error_type,
                operation,
                request_id,
            )
            self._record(operation, params, request_id, injected)
            return self._error_response(injected, request_id)

        try:
            result = self._call_operation(operation, params, request_id)
        except MTurkServiceError as error:
            self._record(operation, params, request_id, error)
            return self._error_response(error, request_id)
        self._record(operation, params, request_id, None)

        if self._faults.should_crash(operation):
            logger.info(
                "Fake MTurk dropped the connection after %s acted (request %s)",
                operation,
                request_id,
            )
            connection = environ.get("werkzeug.socket")
            if connection is not None:
                connection.shutdown(socket.SHUT_RDWR)
            raise _ConnectionDropped(f"{operation} response dropped on purpose")

        body = json.dumps(result, default=_json_default)
        return Response(
            body,
            status=200,
            headers={"x-amzn-RequestId": request_id},
            content_type=JSON_CONTENT_TYPE,
        )

    def _call_operation(
        self, operation: str, params: Any, request_id: str
    ) -> dict[str, Any]:
        operation_model = self._model.operation_model(operation)
        input_shape = operation_model.input_shape
        report = self._validator.validate(params, input_shape)
        problems: list[str] = []
        if report.has_errors():
            problems.append(report.generate_report())
        else:
            _check_constraints(params, input_shape, "", problems)
        if problems:
            # A real MTurk 400 response quoted in the boto/boto3 GitHub issue
            # "Unable to add Test to HIT using UpdateQualificationType" begins
            # {"__type":"ParameterValid. NOTE: The rest of the name is inferred.
            raise make_error("ParameterValidationError", " ".join(problems))

        handler = self._handlers.get(operation)
        if handler is None:
            raise MTurkServiceError(
                "NotImplemented",
                f"The fake MTurk service does not implement {operation}; it "
                f"implements {', '.join(sorted(self._handlers))}.",
                status=501,
            )
        decoded = _decode_timestamps(params, input_shape)
        with self._lock:
            self._refresh()
            result = handler(decoded, request_id)

        output_report = self._validator.validate(result, operation_model.output_shape)
        if output_report.has_errors():
            logger.error(
                "Fake MTurk built an invalid %s response: %s",
                operation,
                output_report.generate_report(),
            )
            raise make_error(
                "InternalFailure",
                f"The fake built a {operation} response that does not match the "
                f"model: {output_report.generate_report()}",
            )
        return result

    def _record(
        self,
        operation: str,
        params: Any,
        request_id: str,
        error: MTurkServiceError | None,
    ) -> None:
        recorded_params = params if isinstance(params, dict) else {}
        call = RecordedCall(
            operation=operation,
            params=recorded_params,
            request_id=request_id,
            error_code=None if error is None else error.error_type,
        )
        with self._lock:
            self._calls.append(call)
        if error is not None:
            logger.debug(
                "Fake MTurk %s returned %s: %s", operation, error.error_type, error
            )

    @staticmethod
    def _error_response(error: MTurkServiceError, request_id: str) -> Response:
        return Response(
            json.dumps(error.to_body()),
            status=error.status,
            headers={"x-amzn-RequestId": request_id},
            content_type=JSON_CONTENT_TYPE,
        )

    def _handle_external_submit(self, request: Request) -> Response:
        # MTurk accepts the worker's form by POST or GET; every field except
        # assignmentId becomes a FreeText answer.
        if request.method not in {"GET", "POST"}:
            return _html_response(405, "Use POST or GET to submit an assignment.")
        fields = request.form if request.method == "POST" else request.args
        assignment_id = fields.get("assignmentId", "")
        if not assignment_id or assignment_id == "ASSIGNMENT_ID_NOT_AVAILABLE":
            return _html_response(
                400,
                "The form has no assignmentId. A HIT that is only being "
                "previewed cannot be submitted; accept it first.",
            )
        answers = {
            name: fields.getlist(name) for name in fields if name != "assignmentId"
        }
        try:
            self.simulate_submit(assignment_id, answers)
        except SimulationError as error:
            logger.info("Fake MTurk rejected an external submit: %s", error)
            return _html_response(400, str(error))
        return _html_response(200, f"Assignment {assignment_id} was submitted.")

    # ------------------------------------------------------- state changes

    def _refresh(self) -> None:
        """Apply what the clock implies: abandoned assignments and auto-approvals."""
        now = self.clock.now()
        due: list[_Assignment] = []
        for assignment in self._assignments.values():
            if assignment.status == ACCEPTED and now >= assignment.deadline:
                assignment.status = ABANDONED
            elif (
                assignment.status == SUBMITTED
                and assignment.auto_approval_time is not None
                and now >= assignment.auto_approval_time
            ):
                due.append(assignment)
        due.sort(key=lambda item: item.auto_approval_time or now)
        for assignment in due:
            assert assignment.auto_approval_time is not None
            # The fake reserves no funds when a HIT is created, so auto-approval
            # pays even when the balance is too low and can take it negative.
            self._pay_reward(assignment, assignment.auto_approval_time, None)

    def _pay_reward(
        self, assignment: _Assignment, when: datetime, request_id: str | None
    ) -> None:
        hit = self._hits[assignment.hit_id]
        reward = hit.hit_type.reward
        assignment.status = APPROVED
        assignment.approval_time = when
        self._balance -= reward
        self._payments.append(
            Payment(
                kind="reward",
                worker_id=assignment.worker_id,
                assignment_id=assignment.assignment_id,
                hit_id=hit.hit_id,
                amount=reward,
                time=when,
                request_id=request_id,
            )
        )

    def _hit_counts(self, hit: _HIT) -> tuple[int, int, int]:
        """Return (pending, submitted or decided, approved or rejected)."""
        pending = submitted = completed = 0
        for assignment_id in hit.assignment_ids:
            status = self._assignments[assignment_id].status
            if status == ACCEPTED:
                pending += 1
            elif status in _VISIBLE_ASSIGNMENT_STATUSES:
                submitted += 1
                if status != SUBMITTED:
                    completed += 1
        return pending, submitted, completed

    def _hit_status(self, hit: _HIT, now: datetime) -> str:
        if hit.disposed:
            return "Disposed"
        pending, submitted, _ = self._hit_counts(hit)
        available = hit.max_assignments - pending - submitted
        if now < hit.expiration and available > 0:
            return "Assignable"
        if pending > 0:
            return "Unassignable"
        return "Reviewable"

    def _meets_requirement(
        self, worker_id: str, requirement: Mapping[str, Any]
    ) -> bool:
        type_id = requirement["QualificationTypeId"]
        comparator = requirement["Comparator"]
        integer_value, locale = self._worker_qualification_value(worker_id, type_id)
        has_qualification = integer_value is not None or locale is not None
        if comparator == "Exists":
            return has_qualification
        if comparator == "DoesNotExist":
            return not has_qualification
        if not has_qualification:
            return False

        if locale is not None:
            required_locales = [
                (item["Country"], item.get("Subdivision"))
                for item in requirement.get("LocaleValues", [])
            ]
            matches = any(
                country == locale[0] and (subdivision in (None, locale[1]))
                for country, subdivision in required_locales
            )
            if comparator in {"EqualTo", "In"}:
                return matches
            if comparator in {"NotEqualTo", "NotIn"}:
                return not matches
            return False

        values = list(requirement.get("IntegerValues", []))
        assert integer_value is not None
        if comparator == "In":
            return integer_value in values
        if comparator == "NotIn":
            return integer_value not in values
        if not values:
            return False
        compare: dict[str, Callable[[int, int], bool]] = {
            "LessThan": operator.lt,
            "LessThanOrEqualTo": operator.le,
            "GreaterThan": operator.gt,
            "GreaterThanOrEqualTo": operator.ge,
            "EqualTo": operator.eq,
            "NotEqualTo": operator.ne,
        }
        return compare[comparator](integer_value, values[0])

    def _worker_qualification_value(
        self, worker_id: str, type_id: str
    ) -> tuple[int | None, tuple[str, str | None] | None]:
        """Return (integer value, (country, subdivision)) of a held qualification."""
        if type_id in SYSTEM_QUALIFICATION_TYPES:
            profile = self._worker_profiles.get(worker_id, WorkerProfile())
            if type_id == WORKER_LOCALE:
                return None, (profile.country, profile.subdivision)
            if type_id == WORKER_PERCENT_ASSIGNMENTS_APPROVED:
                return profile.percent_assignments_approved, None
            if type_id == WORKER_NUMBER_HITS_APPROVED:
                return profile.number_hits_approved, None
            if type_id == WORKER_ADULT:
                return (1 if profile.adult else None), None
            return (1 if profile.masters else None), None
        qualification = self._qualifications.get((type_id, worker_id))
        if qualification is None or qualification.status != "Granted":
            return None, None
        return qualification.integer_value, None

    # ----------------------------------------------------- lookups and views

    def _require_hit(self, hit_id: str) -> _HIT:
        hit = self._hits.get(hit_id)
        if hit is None:
            raise _request_error(
                f"Hit {hit_id} does not exist.", "AWS.MechanicalTurk.HITDoesNotExist"
            )
        return hit

    def _require_assignment(self, assignment_id: str) -> _Assignment:
        assignment = self._assignments.get(assignment_id)
        if assignment is None:
            raise _request_error(
                f"Assignment {assignment_id} does not exist.",
                "AWS.MechanicalTurk.AssignmentDoesNotExist",
            )
        return assignment

    def _require_qualification_type(self, type_id: str) -> _QualificationType:
        qualification_type = self._qualification_types.get(type_id)
        if qualification_type is None:
            raise _request_error(
                f"QualificationType {type_id} does not exist or was not created "
                "by this requester.",
                "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
            )
        return qualification_type

    def _hit_view(self, hit: _HIT) -> dict[str, Any]:
        now = self.clock.now()
        pending, submitted, completed = self._hit_counts(hit)
        status = self._hit_status(hit, now)
        available = 0
        if status == "Assignable":
            available = hit.max_assignments - pending - submitted
        hit_type = hit.hit_type
        view: dict[str, Any] = {
            "HITId": hit.hit_id,
            "HITTypeId": hit_type.hit_type_id,
            "HITGroupId": hit_type.hit_group_id,
            "CreationTime": hit.creation_time,
            "Title": hit_type.title,
            "Description": hit_type.description,
            "Question": hit.question,
            "HITStatus": status,
            "MaxAssignments": hit.max_assignments,
            "Reward": format_money(hit_type.reward),
            "AutoApprovalDelayInSeconds": hit_type.auto_approval_delay,
            "Expiration": hit.expiration,
            "AssignmentDurationInSeconds": hit_type.assignment_duration,
            "QualificationRequirements": hit_type.qualification_requirements,
            "HITReviewStatus": "NotReviewed",
            "NumberOfAssignmentsPending": pending,
            "NumberOfAssignmentsAvailable": available,
            "NumberOfAssignmentsCompleted": completed,
        }
        if hit_type.keywords is not None:
            view["Keywords"] = hit_type.keywords
        if hit.requester_annotation is not None:
            view["RequesterAnnotation"] = hit.requester_annotation
        return view

    @staticmethod
    def _assignment_view(assignment: _Assignment) -> dict[str, Any]:
        view: dict[str, Any] = {
            "AssignmentId": assignment.assignment_id,
            "WorkerId": assignment.worker_id,
            "HITId": assignment.hit_id,
            "AssignmentStatus": assignment.status,
            "AcceptTime": assignment.accept_time,
            "Deadline": assignment.deadline,
        }
        optional = {
            "AutoApprovalTime": assignment.auto_approval_time,
            "SubmitTime": assignment.submit_time,
            "ApprovalTime": assignment.approval_time,
            "RejectionTime": assignment.rejection_time,
            "Answer": assignment.answer,
            "RequesterFeedback": assignment.requester_feedback,
        }
        view.update(
            {key: value for key, value in optional.items() if value is not None}
        )
        return view

    @staticmethod
    def _qualification_type_view(
        qualification_type: _QualificationType,
    ) -> dict[str, Any]:
        view: dict[str, Any] = {
            "QualificationTypeId": qualification_type.qualification_type_id,
            "CreationTime": qualification_type.creation_time,
            "Name": qualification_type.name,
            "Description": qualification_type.description,
            "QualificationTypeStatus": qualification_type.status,
            "IsRequestable": qualification_type.test is not None
            or qualification_type.auto_granted,
            "AutoGranted": qualification_type.auto_granted,
        }
        optional = {
            "Keywords": qualification_type.keywords,
            "Test": qualification_type.test,
            "AnswerKey": qualification_type.answer_key,
            "TestDurationInSeconds": qualification_type.test_duration,
            "RetryDelayInSeconds": qualification_type.retry_delay,
            "AutoGrantedValue": qualification_type.auto_granted_value,
        }
        view.update(
            {key: value for key, value in optional.items() if value is not None}
        )
        return view

    @staticmethod
    def _qualification_view(qualification: _Qualification) -> dict[str, Any]:
        return {
            "QualificationTypeId": qualification.qualification_type_id,
            "WorkerId": qualification.worker_id,
            "GrantTime": qualification.grant_time,
            "IntegerValue": qualification.integer_value,
            "Status": qualification.status,
        }

    @staticmethod
    def _bonus_view(payment: Payment) -> dict[str, Any]:
        view: dict[str, Any] = {
            "WorkerId": payment.worker_id,
            "BonusAmount": format_money(payment.amount),
            "AssignmentId": payment.assignment_id,
            "GrantTime": payment.time,
        }
        if payment.reason is not None:
            view["Reason"] = payment.reason
        return view

    def _page(
        self, operation: str, items: Sequence[Any], params: Mapping[str, Any]
    ) -> tuple[list[Any], str | None]:
        """Slice one page of ``items`` according to NextToken and MaxResults."""
        start = 0
        token = params.get("NextToken")
        if token is not None:
            start = _decode_page_token(operation, token)
        size = params.get("MaxResults", DEFAULT_PAGE_SIZE)
        end = start + size
        next_token = _encode_page_token(operation, end) if end < len(items) else None
        return list(items[start:end]), next_token

    # ------------------------------------------------------------ HIT handlers

    def _create_hit_type(self, params: dict[str, Any], request_id: str) -> dict:
        hit_type = self._register_hit_type(params)
        return {"HITTypeId": hit_type.hit_type_id}

    def _register_hit_type(self, params: Mapping[str, Any]) -> _HITType:
        """Return the HIT type with these properties, creating it if needed.

        "If you register a HIT type with values that match an existing HIT type,
        the HIT type ID of the existing type will be returned" (MTurk API
        reference, CreateHITType).
        """
        reward = _parse_money(params["Reward"], "Reward")
        duration = params["AssignmentDurationInSeconds"]
        auto_approval_delay = params.get(
            "AutoApprovalDelayInSeconds", DEFAULT_AUTO_APPROVAL_DELAY_SECONDS
        )
        if duration <= 0:
            raise _request_error(
                f"AssignmentDurationInSeconds={duration} must be positive.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if auto_approval_delay < 0:
            raise _request_error(
                f"AutoApprovalDelayInSeconds={auto_approval_delay} must not be "
                "negative.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        requirements = [
            dict(item) for item in params.get("QualificationRequirements", [])
        ]
        self._validate_requirements(requirements)
        for hit_type in self._hit_types.values():
            if (
                hit_type.title == params["Title"]
                and hit_type.description == params["Description"]
                and hit_type.reward == reward
                and hit_type.assignment_duration == duration
                and hit_type.auto_approval_delay == auto_approval_delay
                and hit_type.keywords == params.get("Keywords")
                and hit_type.qualification_requirements == requirements
            ):
                return hit_type
        hit_type = _HITType(
            hit_type_id=_new_id(),
            hit_group_id=_new_id(),
            title=params["Title"],
            description=params["Description"],
            reward=reward,
            assignment_duration=duration,
            auto_approval_delay=auto_approval_delay,
            keywords=params.get("Keywords"),
            qualification_requirements=requirements,
        )
        self._hit_types[hit_type.hit_type_id] = hit_type
        return hit_type

    def _validate_requirements(self, requirements: list[dict[str, Any]]) -> None:
        if len(requirements) > MAX_QUALIFICATION_REQUIREMENTS:
            raise _request_error(
                f"A HIT can have at most {MAX_QUALIFICATION_REQUIREMENTS} "
                f"qualification requirements; {len(requirements)} were given.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        for requirement in requirements:
            type_id = requirement["QualificationTypeId"]
            if (
                type_id not in SYSTEM_QUALIFICATION_TYPES
                and type_id not in self._qualification_types
            ):
                raise _request_error(
                    f"QualificationType {type_id} in QualificationRequirements "
                    "does not exist.",
                    "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
                )
            comparator = requirement["Comparator"]
            has_values = "IntegerValues" in requirement or "LocaleValues" in requirement
            if comparator in {"Exists", "DoesNotExist"} and has_values:
                raise _request_error(
                    f"Comparator {comparator} takes no IntegerValues or LocaleValues "
                    f"(QualificationTypeId {type_id}).",
                    "AWS.MechanicalTurk.InvalidParameterValue",
                )
            if comparator not in {"Exists", "DoesNotExist"} and not has_values:
                raise _request_error(
                    f"Comparator {comparator} needs IntegerValues or LocaleValues "
                    f"(QualificationTypeId {type_id}).",
                    "AWS.MechanicalTurk.InvalidParameterValue",
                )

    def _create_hit(self, params: dict[str, Any], request_id: str) -> dict:
        duplicate = self._find_hit_by_token(params.get("UniqueRequestToken"))
        if duplicate is not None:
            raise duplicate
        hit_type = self._register_hit_type(params)
        return {"HIT": self._hit_view(self._add_hit(hit_type, params))}

    def _create_hit_with_hit_type(
        self, params: dict[str, Any], request_id: str
    ) -> dict:
        duplicate = self._find_hit_by_token(params.get("UniqueRequestToken"))
        if duplicate is not None:
            raise duplicate
        hit_type = self._hit_types.get(params["HITTypeId"])
        if hit_type is None:
            raise _request_error(
                f"HITType {params['HITTypeId']} does not exist; create it with "
                "CreateHITType first.",
                "AWS.MechanicalTurk.HITTypeDoesNotExist",
            )
        return {"HIT": self._hit_view(self._add_hit(hit_type, params))}

    def _find_hit_by_token(self, token: str | None) -> MTurkServiceError | None:
        if token is None:
            return None
        entry = self._hit_tokens.get(token)
        if entry is None:
            return None
        hit_id, created = entry
        if self.clock.now() - created >= REQUEST_TOKEN_LIFETIME:
            return None
        # Documented in botocore's model (CreateHITRequest.UniqueRequestToken).
        return _request_error(
            f"The HIT with ID {hit_id} already exists for UniqueRequestToken "
            f"{token!r}.",
            "AWS.MechanicalTurk.HitAlreadyExists",
        )

    def _add_hit(self, hit_type: _HITType, params: Mapping[str, Any]) -> _HIT:
        question = params.get("Question")
        if question is None:
            raise _request_error(
                "CreateHIT needs a Question; the fake does not support HITLayoutId.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        _validate_question(question)

        lifetime = params["LifetimeInSeconds"]
        max_assignments = params.get("MaxAssignments", 1)
        if lifetime <= 0:
            raise _request_error(
                f"LifetimeInSeconds={lifetime} must be positive.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if max_assignments < 1:
            raise _request_error(
                f"MaxAssignments={max_assignments} must be at least 1.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )

        now = self.clock.now()
        hit = _HIT(
            hit_id=_new_id(),
            hit_type=hit_type,
            creation_time=now,
            expiration=now + timedelta(seconds=lifetime),
            max_assignments=max_assignments,
            question=question,
            requester_annotation=params.get("RequesterAnnotation"),
        )
        self._hits[hit.hit_id] = hit

        token = params.get("UniqueRequestToken")
        if token is not None:
            self._hit_tokens[token] = (hit.hit_id, now)
        return hit

    def _get_hit(self, params: dict[str, Any], request_id: str) -> dict:
        return {"HIT": self._hit_view(self._require_hit(params["HITId"]))}

    def _list_hits(self, params: dict[str, Any], request_id: str) -> dict:
        # "Disposed HITs are not returned in results for the ListHITs operation"
        # (botocore mturk model, DeleteHIT).
        hits = [hit for hit in self._hits.values() if not hit.disposed]
        page, next_token = self._page("ListHITs", hits, params)
        result: dict[str, Any] = {
            "NumResults": len(page),
            "HITs": [self._hit_view(hit) for hit in page],
        }
        if next_token is not None:
            result["NextToken"] = next_token
        return result

    def _list_reviewable_hits(self, params: dict[str, Any], request_id: str) -> dict:
        requested_status = params.get("Status", "Reviewable")
        now = self.clock.now()
        hits = [
            hit
            for hit in self._hits.values()
            if self._hit_status(hit, now) == requested_status
            and params.get("HITTypeId") in (None, hit.hit_type.hit_type_id)
        ]
        page, next_token = self._page("ListReviewableHITs", hits, params)
        result: dict[str, Any] = {
            "NumResults": len(page),
            "HITs": [self._hit_view(hit) for hit in page],
        }
        if next_token is not None:
            result["NextToken"] = next_token
        return result

    def _update_expiration_for_hit(
        self, params: dict[str, Any], request_id: str
    ) -> dict:
        hit = self._require_hit(params["HITId"])
        if hit.disposed:
            raise _request_error(
                f"HIT {hit.hit_id} is Disposed; its expiration cannot change.",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        now = self.clock.now()
        # "If you update it to a time in the past, the HIT will be immediately
        # expired" (botocore mturk model, UpdateExpirationForHIT).
        hit.expiration = max(params["ExpireAt"], now)
        return {}

    def _delete_hit(self, params: dict[str, Any], request_id: str) -> dict:
        hit = self._require_hit(params["HITId"])
        if hit.disposed:
            # DeleteHIT is marked idempotent in botocore's model.
            return {}

        now = self.clock.now()
        status = self._hit_status(hit, now)
        millis = int(now.timestamp() * 1000)
        # "You can only dispose of HITs that are in the Reviewable state, with
        # all of their submitted assignments already either approved or
        # rejected" (botocore mturk model, DeleteHIT).
        if status != "Reviewable":
            raise _request_error(
                f"This HIT is currently in the state '{status}'. This operation "
                f"can be called with a status of: Reviewable ({millis})",
                "AWS.MechanicalTurk.InvalidHITState",
            )

        undecided = [
            assignment_id
            for assignment_id in hit.assignment_ids
            if self._assignments[assignment_id].status == SUBMITTED
        ]
        if undecided:
            raise _request_error(
                f"HIT {hit.hit_id} has submitted assignments that are neither "
                f"approved nor rejected: {', '.join(undecided)}. Approve or "
                f"reject them before deleting the HIT. ({millis})",
                "AWS.MechanicalTurk.InvalidHITState",
            )

        hit.disposed = True
        return {}

    # ----------------------------------------------------- assignment handlers

    def _list_assignments_for_hit(
        self, params: dict[str, Any], request_id: str
    ) -> dict:
        hit = self._require_hit(params["HITId"])
        statuses = set(params.get("AssignmentStatuses", _VISIBLE_ASSIGNMENT_STATUSES))
        assignments = [
            self._assignments[assignment_id]
            for assignment_id in hit.assignment_ids
            if self._assignments[assignment_id].status in statuses
        ]
        page, next_token = self._page("ListAssignmentsForHIT", assignments, params)
        result: dict[str, Any] = {
            "NumResults": len(page),
            "Assignments": [self._assignment_view(item) for item in page],
        }
        if next_token is not None:
            result["NextToken"] = next_token
        return result

    def _get_assignment(self, params: dict[str, Any], request_id: str) -> dict:
        assignment = self._require_assignment(params["AssignmentId"])
        if assignment.status not in _VISIBLE_ASSIGNMENT_STATUSES:
            # MTurk's message for an assignment that is not yet submitted, as
            # matched by public client code (facebookresearch/ParlAI).
            raise _request_error(
                "This operation can be called with a status of: "
                "Reviewable,Approved,Rejected",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        hit = self._hits[assignment.hit_id]
        return {
            "Assignment": self._assignment_view(assignment),
            "HIT": self._hit_view(hit),
        }

    def _approve_assignment(self, params: dict[str, Any], request_id: str) -> dict:
        assignment = self._require_assignment(params["AssignmentId"])
        hit = self._hits[assignment.hit_id]
        now = self.clock.now()
        override = params.get("OverrideRejection", False)
        if assignment.status == REJECTED and override:
            assert assignment.submit_time is not None
            if hit.disposed:
                raise _request_error(
                    f"HIT {hit.hit_id} was deleted, so the rejection of "
                    f"assignment {assignment.assignment_id} cannot be overridden.",
                    "AWS.MechanicalTurk.InvalidHITState",
                )
            if now - assignment.submit_time > OVERRIDE_REJECTION_WINDOW:
                raise _request_error(
                    f"Assignment {assignment.assignment_id} was submitted more "
                    "than 30 days ago; its rejection can no longer be overridden.",
                    "AWS.MechanicalTurk.InvalidAssignmentState",
                )
        elif assignment.status != SUBMITTED:
            # Approving twice is an error on MTurk, although botocore's model
            # marks ApproveAssignment idempotent: client code in public
            # repositories catches "This operation can be called with a status
            # of: Submitted" when it approves an assignment a second time.
            raise _status_error(SUBMITTED, now)
        reward = hit.hit_type.reward
        if self._balance < reward:
            raise _request_error(
                f"Insufficient funds: approving assignment "
                f"{assignment.assignment_id} needs ${format_money(reward)}, the "
                f"available balance is ${format_money(self._balance)}.",
                "AWS.MechanicalTurk.InsufficientFunds",
            )
        if "RequesterFeedback" in params:
            assignment.requester_feedback = params["RequesterFeedback"]
        self._pay_reward(assignment, now, request_id)
        return {}

    def _reject_assignment(self, params: dict[str, Any], request_id: str) -> dict:
        assignment = self._require_assignment(params["AssignmentId"])
        now = self.clock.now()
        if assignment.status != SUBMITTED:
            raise _status_error(SUBMITTED, now)
        assignment.status = REJECTED
        assignment.rejection_time = now
        assignment.requester_feedback = params["RequesterFeedback"]
        return {}

    # ---------------------------------------------------------- money handlers

    def _send_bonus(self, params: dict[str, Any], request_id: str) -> dict:
        now = self.clock.now()
        token = params.get("UniqueRequestToken")
        if token is not None:
            previous = self._bonus_tokens.get(token)
            if previous is not None and now - previous.time < REQUEST_TOKEN_LIFETIME:
                # "If the bonus already exists in the system from a previous
                # call using the same UniqueRequestToken, subsequent calls will
                # return an error with a message containing the request ID"
                # (botocore mturk model, SendBonusRequest).
                raise _request_error(
                    f"A bonus was already granted with UniqueRequestToken "
                    f"{token!r} by request {previous.request_id}.",
                    "AWS.MechanicalTurk.DuplicateRequest",
                )

        assignment = self._require_assignment(params["AssignmentId"])
        if assignment.worker_id != params["WorkerId"]:
            raise _request_error(
                f"Assignment {assignment.assignment_id} belongs to worker "
                f"{assignment.worker_id}, not {params['WorkerId']}.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if assignment.status not in _VISIBLE_ASSIGNMENT_STATUSES:
            raise _status_error("Submitted,Approved,Rejected", now)

        amount = _parse_money(params["BonusAmount"], "BonusAmount")
        if amount <= 0:
            raise _request_error(
                f"BonusAmount {params['BonusAmount']!r} must be greater than zero.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if self._balance < amount:
            raise _request_error(
                f"Insufficient funds: the bonus needs ${format_money(amount)}, the "
                f"available balance is ${format_money(self._balance)}.",
                "AWS.MechanicalTurk.InsufficientFunds",
            )

        self._balance -= amount
        self._payments.append(
            Payment(
                kind="bonus",
                worker_id=assignment.worker_id,
                assignment_id=assignment.assignment_id,
                hit_id=assignment.hit_id,
                amount=amount,
                time=now,
                unique_request_token=token,
                reason=params["Reason"],
                request_id=request_id,
            )
        )
        if token is not None:
            self._bonus_tokens[token] = _BonusToken(request_id, now)
        return {}

    def _list_bonus_payments(self, params: dict[str, Any], request_id: str) -> dict:
        hit_id = params.get("HITId")
        assignment_id = params.get("AssignmentId")
        if hit_id is None and assignment_id is None:
            raise _request_error(
                "ListBonusPayments needs HITId or AssignmentId.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        if hit_id is not None:
            self._require_hit(hit_id)
        if assignment_id is not None:
            self._require_assignment(assignment_id)
        bonuses = [
            payment
            for payment in self._payments
            if payment.kind == "bonus"
            and hit_id in (None, payment.hit_id)
            and assignment_id in (None, payment.assignment_id)
        ]
        page, next_token = self._page("ListBonusPayments", bonuses, params)
        result: dict[str, Any] = {
            "NumResults": len(page),
            "BonusPayments": [self._bonus_view(payment) for payment in page],
        }
        if next_token is not None:
            result["NextToken"] = next_token
        return result

    def _get_account_balance(self, params: dict[str, Any], request_id: str) -> dict:
        # The fake charges no MTurk fees, so the balance drops only by the
        # amounts paid to workers.
        return {
            "AvailableBalance": format_money(self._balance),
            "OnHoldBalance": format_money(Decimal(0)),
        }

    # ------------------------------------------------- qualification handlers

    def _create_qualification_type(
        self, params: dict[str, Any], request_id: str
    ) -> dict:
        name = params["Name"]
        if any(item.name == name for item in self._qualification_types.values()):
            raise _request_error(
                f"You have already created a QualificationType named {name!r}; "
                "names must be unique among your QualificationTypes.",
                "AWS.MechanicalTurk.QualificationTypeAlreadyExists",
            )
        if "Test" in params and "TestDurationInSeconds" not in params:
            raise _request_error(
                "TestDurationInSeconds is required when Test is given.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        auto_granted = params.get("AutoGranted", False)
        if "Test" in params and auto_granted:
            raise _request_error(
                "A QualificationType cannot have both a Test and AutoGranted=true.",
                "AWS.MechanicalTurk.InvalidParameterValue",
            )
        qualification_type = _QualificationType(
            qualification_type_id=_new_id(),
            creation_time=self.clock.now(),
            name=name,
            description=params["Description"],
            keywords=params.get("Keywords"),
            status=params["QualificationTypeStatus"],
            retry_delay=params.get("RetryDelayInSeconds"),
            test=params.get("Test"),
            answer_key=params.get("AnswerKey"),
            test_duration=params.get("TestDurationInSeconds"),
            auto_granted=auto_granted,
            auto_granted_value=(
                params.get("AutoGrantedValue", 1) if auto_granted else None
            ),
        )
        type_id = qualification_type.qualification_type_id
        self._qualification_types[type_id] = qualification_type
        return {"QualificationType": self._qualification_type_view(qualification_type)}

    def _get_qualification_type(self, params: dict[str, Any], request_id: str) -> dict:
        qualification_type = self._require_qualification_type(
            params["QualificationTypeId"]
        )
        return {"QualificationType": self._qualification_type_view(qualification_type)}

    def _associate_qualification(self, params: dict[str, Any], request_id: str) -> dict:
        type_id = params["QualificationTypeId"]
        self._require_qualification_type(type_id)
        worker_id = params["WorkerId"]
        self._qualifications[(type_id, worker_id)] = _Qualification(
            qualification_type_id=type_id,
            worker_id=worker_id,
            grant_time=self.clock.now(),
            integer_value=params.get("IntegerValue", 1),
            status="Granted",
        )
        return {}

    def _disassociate_qualification(
        self, params: dict[str, Any], request_id: str
    ) -> dict:
        type_id = params["QualificationTypeId"]
        self._require_qualification_type(type_id)
        worker_id = params["WorkerId"]
        qualification = self._qualifications.get((type_id, worker_id))
        if qualification is None or qualification.status != "Granted":
            raise _request_error(
                f"Worker {worker_id} does not hold a granted qualification of "
                f"type {type_id}.",
                "AWS.MechanicalTurk.QualificationDoesNotExist",
            )
        qualification.status = "Revoked"
        return {}

    def _get_qualification_score(self, params: dict[str, Any], request_id: str) -> dict:
        type_id = params["QualificationTypeId"]
        self._require_qualification_type(type_id)
        qualification = self._qualifications.get((type_id, params["WorkerId"]))
        if qualification is None:
            raise _request_error(
                f"Worker {params['WorkerId']} has no qualification of type {type_id}.",
                "AWS.MechanicalTurk.QualificationDoesNotExist",
            )
        return {"Qualification": self._qualification_view(qualification)}

    def _list_workers_with_qualification(
        self, params: dict[str, Any], request_id: str
    ) -> dict:
        type_id = params["QualificationTypeId"]
        self._require_qualification_type(type_id)
        status = params.get("Status")
        qualifications = [
            qualification
            for (
                qualification_type_id,
                _,
            ), qualification in self._qualifications.items()
            if qualification_type_id == type_id
            and status in (None, qualification.status)
        ]
        page, next_token = self._page(
            "ListWorkersWithQualificationType", qualifications, params
        )
        result: dict[str, Any] = {
            "NumResults": len(page),
            "Qualifications": [self._qualification_view(item) for item in page],
        }
        if next_token is not None:
            result["NextToken"] = next_token
        return result

    def _notify_workers(self, params: dict[str, Any], request_id: str) -> dict:
        worker_ids = params["WorkerIds"]
        limits = [
            (len(worker_ids), MAX_NOTIFIED_WORKERS, "WorkerIds"),
            (len(params["Subject"]), MAX_NOTIFY_SUBJECT_CHARS, "Subject"),
            (len(params["MessageText"]), MAX_NOTIFY_MESSAGE_CHARS, "MessageText"),
        ]
        for size, maximum, name in limits:
            if size > maximum:
                raise _request_error(
                    f"{name} has size {size}, more than the maximum {maximum}.",
                    "AWS.MechanicalTurk.InvalidParameterValue",
                )
        self._notifications.append(
            Notification(
                subject=params["Subject"],
                message_text=params["MessageText"],
                worker_ids=tuple(worker_ids),
                time=self.clock.now(),
            )
        )
        # "The NotifyWorkers operation will send a notification email to a
        # Worker only if you have previously approved or rejected work from the
        # Worker" (botocore mturk model).
        decided_workers = {
            assignment.worker_id
            for assignment in self._assignments.values()
            if assignment.status in {APPROVED, REJECTED}
        }
        failures = [
            {
                "NotifyWorkersFailureCode": "HardFailure",
                "NotifyWorkersFailureMessage": (
                    f"No approved or rejected work from worker {worker_id}."
                ),
                "WorkerId": worker_id,
            }
            for worker_id in worker_ids
            if worker_id not in decided_workers
        ]
        return {"NotifyWorkersFailureStatuses": failures}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _require_worker_id(worker_id: str) -> None:
    if not _WORKER_ID_PATTERN.match(worker_id) or len(worker_id) > 64:
        raise ValueError(
            f"worker_id={worker_id!r} is not a valid MTurk worker ID; it must "
            "match ^A[A-Z0-9]+$ and be at most 64 characters, such as 'AWORKER1'."
        )


def _validate_question(question: str) -> None:
    if len(question.encode("utf-8")) > MAX_QUESTION_BYTES:
        raise _request_error(
            f"The Question is {len(question.encode('utf-8'))} bytes; the maximum "
            f"is {MAX_QUESTION_BYTES} bytes.",
            "AWS.MechanicalTurk.XMLParseError",
        )
    try:
        root = ElementTree.fromstring(question)
    except ElementTree.ParseError as error:
        raise _request_error(
            f"The Question is not well-formed XML: {error}.",
            "AWS.MechanicalTurk.XMLParseError",
        ) from None
    local_name = root.tag.rpartition("}")[2]
    if local_name not in _QUESTION_ROOTS:
        raise _request_error(
            f"The Question root element is {local_name!r}; it must be one of "
            f"{', '.join(sorted(_QUESTION_ROOTS))}.",
            "AWS.MechanicalTurk.XMLParseError",
        )
    if local_name == "ExternalQuestion":
        url = "".join(
            element.text or ""
            for element in root
            if element.tag.rpartition("}")[2] == "ExternalURL"
        ).strip()
        # The fake accepts http as well as https, so that end-to-end tests can
        # serve the ExternalQuestion page from a local server.
        if not url.startswith(("https://", "http://")):
            raise _request_error(
                f"ExternalURL {url!r} must be an http(s) URL.",
                "AWS.MechanicalTurk.XMLParseError",
            )


def _encode_page_token(operation: str, offset: int) -> str:
    raw = json.dumps({"operation": operation, "offset": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_page_token(operation: str, token: str) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        offset = decoded["offset"]
        token_operation = decoded["operation"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        raise _request_error(
            f"NextToken {token!r} is not a pagination token from this service.",
            "AWS.MechanicalTurk.InvalidParameterValue",
        ) from None
    if token_operation != operation or not isinstance(offset, int) or offset < 0:
        raise _request_error(
            f"NextToken {token!r} was issued for {token_operation}, not {operation}.",
            "AWS.MechanicalTurk.InvalidParameterValue",
        )
    return offset


def _html_response(status: int, text: str) -> Response:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    page = (
        "<!doctype html><html><head><title>Fake MTurk</title></head>"
        f"<body><p>{escaped}</p></body></html>"
    )
    return Response(page, status=status, mimetype="text/html")


__all__ = [
    "ABANDONED",
    "ACCEPTED",
    "APPROVED",
    "EXTERNAL_SUBMIT_PATH",
    "MASTERS_PRODUCTION",
    "MASTERS_SANDBOX",
    "REJECTED",
    "RETURNED",
    "SUBMITTED",
    "WORKER_ADULT",
    "WORKER_LOCALE",
    "WORKER_NUMBER_HITS_APPROVED",
    "WORKER_PERCENT_ASSIGNMENTS_APPROVED",
    "FakeClock",
    "FakeMTurk",
    "MTurkServiceError",
    "Notification",
    "Payment",
    "RecordedCall",
    "SimulationError",
    "WorkerProfile",
    "build_answer_xml",
    "format_money",
    "load_service_model",
    "make_error",
    "parse_answer_xml",
]
