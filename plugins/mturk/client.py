"""MTurk through boto3: endpoints, credentials, retries, requests and listings.

Credentials come only from boto3's standard chain (environment variables,
the shared credentials file, ``--profile``), never from the study config or
the database. Nothing in this module logs them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import botocore.exceptions
from caqe_mturk.config import CENT, MTurkConfig, is_loopback_host

logger = logging.getLogger(__name__)

REGION = "us-east-1"
"""MTurk's requester API exists only in this AWS region."""
SANDBOX_ENDPOINT = "https://mturk-requester-sandbox.us-east-1.amazonaws.com"
PRODUCTION_ENDPOINT = "https://mturk-requester.us-east-1.amazonaws.com"
SANDBOX_SUBMIT_ORIGIN = "https://workersandbox.mturk.com"
PRODUCTION_SUBMIT_ORIGIN = "https://www.mturk.com"

ENDPOINT_ENV = "CAQE_MTURK_ENDPOINT_URL"
HOST_ENV = "MTURK_HOST"
"""CAQE's switch between sandbox and production. It accepts the boto 2 host
names that the original CAQE used as well as boto3's."""
PRODUCTION_HOSTS = frozenset(
    {"mechanicalturk.amazonaws.com", "mturk-requester.us-east-1.amazonaws.com"}
)
SANDBOX_HOSTS = frozenset(
    {
        "mechanicalturk.sandbox.amazonaws.com",
        "mturk-requester-sandbox.us-east-1.amazonaws.com",
    }
)

DEFAULT_MAX_ATTEMPTS = 8
"""Attempts per call under botocore's standard retry mode, which backs off
exponentially with jitter after throttling, 5xx responses and dropped
connections."""

# System qualification type IDs from the MTurk API reference
# (QualificationRequirement, "Qualification Type IDs").
PERCENT_ASSIGNMENTS_APPROVED = "000000000000000000L0"
NUMBER_HITS_APPROVED = "00000000000000000040"
WORKER_LOCALE = "00000000000000000071"

EXTERNAL_QUESTION_SCHEMA = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/"
    "2006-07-14/ExternalQuestion.xsd"
)

# MTurk's fees, from https://www.mturk.com/pricing: "20% fee on the reward and
# bonus amount (if any) you pay Workers. HITs with 10 or more assignments will
# be charged an additional 20% fee on the reward you pay Workers. The minimum
# fee is $0.01 per assignment or bonus payment."
BASE_FEE_RATE = Decimal("0.20")
LARGE_HIT_EXTRA_FEE_RATE = Decimal("0.20")
LARGE_HIT_ASSIGNMENTS = 10
MIN_FEE = CENT

UNCERTAIN_ERROR_TYPES: tuple[type[Exception], ...] = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
)
"""Errors after which it is unknown whether MTurk acted on the request."""

DEFINITIVE_ERROR_CODES = frozenset(
    {"RequestError", "ParameterValidationError", "ValidationException"}
)
"""Error codes with which MTurk rejects a request without acting on it."""


class MTurkSetupError(ValueError):
    """An invalid choice of endpoint, credentials or profile."""


@dataclass(frozen=True)
class Target:
    """An MTurk environment (sandbox or production) and its endpoint URL."""

    production: bool
    endpoint_url: str

    @property
    def custom_endpoint(self) -> bool:
        return self.endpoint_url not in (SANDBOX_ENDPOINT, PRODUCTION_ENDPOINT)

    @property
    def environment(self) -> str:
        return "production" if self.production else "sandbox"

    @property
    def key(self) -> str:
        """Label stored with each HIT so sandbox and production HITs stay apart."""
        if not self.custom_endpoint:
            return self.environment
        digest = hashlib.sha256(self.endpoint_url.encode()).hexdigest()[:12]
        return f"{self.environment}@{digest}"

    @property
    def submit_origin(self) -> str:
        """The ``turkSubmitTo`` origin MTurk gives workers of this environment."""
        return PRODUCTION_SUBMIT_ORIGIN if self.production else SANDBOX_SUBMIT_ORIGIN

    def describe(self) -> str:
        name = "PRODUCTION MTurk" if self.production else "the MTurk sandbox"
        return f"{name} ({self.endpoint_url})"


def resolve_target(
    production: bool,
    debug: bool,
    endpoint_url: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Target:
    """Choose sandbox or production and the endpoint URL.

    The sandbox is the default. Production needs ``production=True`` or
    ``MTURK_HOST`` set to a production host. An explicit endpoint URL (from
    ``--endpoint-url`` or ``CAQE_MTURK_ENDPOINT_URL``) replaces AWS's endpoint,
    as tests do with a local fake, but it cannot reach production MTurk unless
    production was chosen as well.
    """
    host = environ.get(HOST_ENV, "").strip().lower()
    if host and host not in PRODUCTION_HOSTS | SANDBOX_HOSTS:
        raise MTurkSetupError(
            f"{HOST_ENV}={host!r} is not an MTurk requester host. Use one of "
            f"{', '.join(sorted(SANDBOX_HOSTS))} (sandbox) or "
            f"{', '.join(sorted(PRODUCTION_HOSTS))} (production), or unset it."
        )
    if host in PRODUCTION_HOSTS:
        production = True
    if debug and production:
        reason = (
            "--production" if host not in PRODUCTION_HOSTS else f"{HOST_ENV}={host}"
        )
        raise MTurkSetupError(
            f"--debug posts to the sandbox, but {reason} chooses production. "
            f"Drop one of them."
        )

    endpoint_url = endpoint_url or environ.get(ENDPOINT_ENV) or None
    if endpoint_url is None:
        return Target(
            production, PRODUCTION_ENDPOINT if production else SANDBOX_ENDPOINT
        )

    endpoint_url = endpoint_url.rstrip("/")
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise MTurkSetupError(
            f"Endpoint URL {endpoint_url!r} is not an http(s) URL. Give one such as "
            f"{SANDBOX_ENDPOINT}."
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise MTurkSetupError(
            f"Endpoint URL {endpoint_url!r} uses plain http, which would send signed "
            "requests unencrypted. Use https (http is allowed for loopback "
            "addresses only)."
        )
    if parts.hostname in PRODUCTION_HOSTS and not production:
        raise MTurkSetupError(
            f"Endpoint URL {endpoint_url!r} is production MTurk. Pass --production "
            "to post to production."
        )
    return Target(production, endpoint_url)


def make_client(
    target: Target,
    profile: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_pool_connections: int = 10,
) -> Any:
    """Return a boto3 MTurk client with standard retries for ``target``.

    Raises MTurkSetupError when the profile does not exist or boto3 finds no
    credentials.
    """
    # Imported here: boto3 adds about 0.08 s to the start of every caqe command.
    import boto3
    from botocore.config import Config

    _quiet_wire_logging()
    try:
        session = boto3.session.Session(profile_name=profile)
    except botocore.exceptions.ProfileNotFound:
        raise MTurkSetupError(
            f"AWS profile {profile!r} not found. Add it to ~/.aws/credentials "
            "(or $AWS_SHARED_CREDENTIALS_FILE), or drop --profile."
        ) from None
    if session.get_credentials() is None:
        raise MTurkSetupError(
            "No AWS credentials found. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or add a profile to ~/.aws/credentials and pass "
            "--profile NAME. Use an IAM user with the AmazonMechanicalTurkFullAccess "
            "policy."
        )
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max_pool_connections,
    )
    return session.client(
        "mturk", region_name=REGION, endpoint_url=target.endpoint_url, config=config
    )


def _quiet_wire_logging() -> None:
    """Keep botocore's DEBUG wire logs, which show signed headers, out of the log."""
    for name in ("botocore", "boto3", "urllib3"):
        wire_logger = logging.getLogger(name)
        if wire_logger.getEffectiveLevel() < logging.INFO:
            wire_logger.setLevel(logging.INFO)


# --- errors -------------------------------------------------------------------


def error_code(error: BaseException) -> str | None:
    """Return the MTurk error code (``RequestError``, ``ServiceFault``...) or None."""
    if isinstance(error, botocore.exceptions.ClientError):
        return error.response.get("Error", {}).get("Code")
    return None


def is_definitive(error: BaseException) -> bool:
    """Return True when MTurk rejected the request, so it certainly did not act."""
    return error_code(error) in DEFINITIVE_ERROR_CODES


def is_duplicate_hit(error: BaseException) -> bool:
    """Return True for CreateHIT's error on a reused UniqueRequestToken.

    botocore's model documents it as ``AWS.MechanicalTurk.HitAlreadyExists``.
    """
    if not isinstance(error, botocore.exceptions.ClientError):
        return False
    return error.response.get("TurkErrorCode") == "AWS.MechanicalTurk.HitAlreadyExists"


def describe_error(error: BaseException) -> str:
    """Return a one-line description of an MTurk or connection error."""
    if isinstance(error, botocore.exceptions.ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'Error')}: {details.get('Message', error)}"
    return f"{type(error).__name__}: {error}"


# --- requests -----------------------------------------------------------------


def format_money(amount: Decimal) -> str:
    """Return an amount as MTurk expects it on the wire, such as ``"0.30"``."""
    return str(amount.quantize(CENT))


def external_question(url: str, frame_height: int) -> str:
    """Return the ExternalQuestion XML that frames ``url`` on MTurk."""
    return (
        f'<ExternalQuestion xmlns="{EXTERNAL_QUESTION_SCHEMA}">'
        f"<ExternalURL>{escape(url)}</ExternalURL>"
        f"<FrameHeight>{frame_height}</FrameHeight>"
        "</ExternalQuestion>"
    )


def qualification_requirements(
    section: MTurkConfig, exclusion_type_id: str | None
) -> list[dict[str, Any]]:
    """Return the QualificationRequirements of the config's HITs."""
    requirements: list[dict[str, Any]] = []
    if section.min_percent_assignments_approved is not None:
        requirements.append(
            {
                "QualificationTypeId": PERCENT_ASSIGNMENTS_APPROVED,
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [section.min_percent_assignments_approved],
                "ActionsGuarded": "Accept",
            }
        )
    if section.min_number_hits_approved is not None:
        requirements.append(
            {
                "QualificationTypeId": NUMBER_HITS_APPROVED,
                "Comparator": "GreaterThanOrEqualTo",
                "IntegerValues": [section.min_number_hits_approved],
                "ActionsGuarded": "Accept",
            }
        )
    if section.locales:
        locale_values = []
        for locale in section.locales:
            country, _, subdivision = locale.partition("-")
            value = {"Country": country}
            if subdivision:
                value["Subdivision"] = subdivision
            locale_values.append(value)
        requirements.append(
            {
                "QualificationTypeId": WORKER_LOCALE,
                "Comparator": "In",
                "LocaleValues": locale_values,
                "ActionsGuarded": "Accept",
            }
        )
    if exclusion_type_id is not None:
        # Workers who hold it neither see nor preview the HITs.
        requirements.append(
            {
                "QualificationTypeId": exclusion_type_id,
                "Comparator": "DoesNotExist",
                "ActionsGuarded": "DiscoverPreviewAndAccept",
            }
        )
    return requirements


def annotation_for(experiment: str, token: str) -> str:
    """Return the RequesterAnnotation that tags a HIT with its study and row."""
    return f"caqe:{experiment}:{token}"


def create_hit_request(
    section: MTurkConfig,
    question_url: str,
    token: str,
    annotation: str,
    requirements: list[dict[str, Any]],
) -> dict[str, Any]:
    """Return the CreateHIT parameters of one HIT of the study."""
    request: dict[str, Any] = {
        "Title": section.title,
        "Description": section.description,
        "Reward": format_money(section.reward),
        "MaxAssignments": section.max_assignments,
        "LifetimeInSeconds": section.lifetime_seconds,
        "AssignmentDurationInSeconds": section.assignment_duration_seconds,
        "AutoApprovalDelayInSeconds": section.auto_approval_delay_seconds,
        "Question": external_question(question_url, section.frame_height),
        "RequesterAnnotation": annotation,
        "UniqueRequestToken": token,
    }
    if section.keywords.strip():
        request["Keywords"] = section.keywords
    if requirements:
        request["QualificationRequirements"] = requirements
    return request


# --- money --------------------------------------------------------------------


def mturk_fee(amount: Decimal, assignments_per_hit: int | None = None) -> Decimal:
    """Estimate MTurk's fee on a reward (with its HIT size) or a bonus (None).

    NOTE: MTurk does not document how it rounds fees. This rounds half up to
    the cent, so a total may differ from the bill by a cent per payment.
    """
    rate = BASE_FEE_RATE
    if assignments_per_hit is not None and assignments_per_hit >= LARGE_HIT_ASSIGNMENTS:
        rate += LARGE_HIT_EXTRA_FEE_RATE
    fee = (amount * rate).quantize(CENT, rounding=ROUND_HALF_UP)
    return max(fee, MIN_FEE)


# --- listings -----------------------------------------------------------------


def list_hits(client: Any) -> list[dict[str, Any]]:
    """Return every HIT of the account (MTurk omits disposed HITs)."""
    hits: list[dict[str, Any]] = []
    for page in client.get_paginator("list_hits").paginate(
        PaginationConfig={"PageSize": 100}
    ):
        hits.extend(page.get("HITs", []))
    return hits


def list_assignments(client: Any, hit_id: str) -> list[dict[str, Any]]:
    """Return a HIT's submitted, approved and rejected assignments."""
    assignments: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_assignments_for_hit")
    for page in paginator.paginate(
        HITId=hit_id,
        AssignmentStatuses=["Submitted", "Approved", "Rejected"],
        PaginationConfig={"PageSize": 100},
    ):
        assignments.extend(page.get("Assignments", []))
    return assignments


def list_bonus_payments(client: Any, assignment_id: str) -> list[dict[str, Any]]:
    """Return the bonuses paid for one assignment."""
    bonuses: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_bonus_payments")
    for page in paginator.paginate(
        AssignmentId=assignment_id, PaginationConfig={"PageSize": 100}
    ):
        bonuses.extend(page.get("BonusPayments", []))
    return bonuses
