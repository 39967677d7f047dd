"""The ``mturk`` config section: HIT settings, qualifications, rewards and bonuses.

The defaults are those of the original CAQE (``BaseConfig`` in its
``configuration.py``). The reward is $0.50, a worker's first assignment earns
a $0.30 bonus, and pairwise consistency above 0.7 earns up to $0.25. Workers
need at least 1000 approved HITs and 97 % approved assignments. An
assignment lasts 30 minutes, a HIT one week, and MTurk approves submitted
work after one day.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

CENT = Decimal("0.01")
MAX_SECONDS = 365 * 24 * 3600
"""MTurk's limit for an assignment's duration and a HIT's lifetime: one year."""
MAX_AUTO_APPROVAL_DELAY_SECONDS = 30 * 24 * 3600
"""MTurk's limit for AutoApprovalDelayInSeconds: 30 days."""

DEFAULT_TITLE = (
    "Critical audio listening task. Listen to audio recordings and rate them on "
    "various scales of quality."
)
DEFAULT_DESCRIPTION = (
    "Listen to short audio recordings over headphones and rate their quality. "
    "Use a recent version of Chrome, Firefox or Safari. Bonus available."
)
DEFAULT_FIRST_HIT_BONUS_REASON = (
    "Thank you for completing our listening task. This bonus pays for the extra "
    "time your first assignment took (instructions, screening and surveys)."
)
DEFAULT_CONSISTENCY_BONUS_REASON = (
    "Thank you for completing our listening task. This bonus rewards the "
    "consistency of your answers."
)


def parse_money(value: Any, name: str) -> Decimal:
    """Parse a US dollar amount into a Decimal of whole cents.

    Floats are converted through their shortest ``repr`` (0.3 becomes
    ``Decimal("0.3")``, not the binary value), and amounts with fractions of a
    cent are rejected instead of being rounded silently.
    """
    if isinstance(value, bool):
        # pydantic reports ValueError, not TypeError, as a validation error.
        message = f"{name} must be an amount in US dollars such as 0.50."
        raise ValueError(message)  # noqa: TRY004
    try:
        amount = (
            Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
        )
    except InvalidOperation:
        raise ValueError(
            f"{name}={value!r} is not an amount in US dollars; write it like 0.50."
        ) from None
    if not amount.is_finite():
        raise ValueError(f"{name}={value!r} must be a finite amount such as 0.50.")
    if amount != amount.quantize(CENT):
        raise ValueError(
            f"{name}={value!r} has fractions of a cent; MTurk pays whole cents, "
            f"for example {amount.quantize(CENT)}."
        )
    return amount.quantize(CENT)


def normalize_origin(value: str) -> str:
    """Return ``scheme://host[:port]`` of an origin, or raise ValueError.

    https is required, except for loopback hosts (127.0.0.0/8, ::1 and
    localhost), where http is allowed so tests can use a local fake of MTurk.
    """
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin such as 'https://www.mturk.com'")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{value!r} must be an origin without a path, query or fragment"
        )
    if parts.username or parts.password:
        raise ValueError(f"{value!r} must not contain a user name or password")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(
            f"{value!r} uses plain http, which only loopback addresses may use. Use https"
        )
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


def is_loopback_host(host: str) -> bool:
    """Return True for localhost and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MTurkConfig(BaseModel):
    """The ``mturk`` section of a study config."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(default=DEFAULT_TITLE, min_length=1, max_length=128)
    """HIT title shown in the workers' search results."""
    description: str = Field(default=DEFAULT_DESCRIPTION, min_length=1, max_length=2000)
    keywords: str = "audio, sound, music, listening, research"
    """Comma-separated search keywords."""
    reward: Decimal = Decimal("0.50")
    """US dollars paid for each approved assignment."""
    max_assignments: int = Field(default=200, ge=1, le=1_000_000)
    """Assignments per HIT. From 10 assignments on, MTurk's fee is 40 %, not 20 %."""
    assignment_duration_seconds: int = Field(default=30 * 60, ge=30, le=MAX_SECONDS)
    lifetime_seconds: int = Field(default=7 * 24 * 3600, ge=30, le=MAX_SECONDS)
    auto_approval_delay_seconds: int = Field(
        default=24 * 3600, ge=0, le=MAX_AUTO_APPROVAL_DELAY_SECONDS
    )
    frame_height: int = Field(default=1200, ge=1, le=100_000)
    """Height in pixels of the frame in which MTurk shows the study."""

    min_percent_assignments_approved: int | None = Field(default=97, ge=0, le=100)
    """None drops this qualification requirement."""
    min_number_hits_approved: int | None = Field(default=1000, ge=0)
    """None drops this qualification requirement."""
    locales: list[str] = Field(default_factory=list)
    """ISO 3166-1 country codes (``US``) or ``US-NY`` subdivisions workers must
    live in; empty allows every country."""
    exclusion_qualification: bool = True
    """Create a qualification for workers who took part and exclude its holders."""
    exclusion_qualification_id: str | None = Field(default=None, pattern=r"^[A-Z0-9]+$")
    """Use this existing qualification type instead of creating one, for
    example to exclude the workers of an earlier study as well."""
    max_assignments_per_worker: int = Field(default=1, ge=1, le=10_000)
    """Sessions a worker may complete before the study excludes them."""
    screening_validity_hours: float = Field(default=24, gt=0, le=24 * 365)
    """How long a passed screening step counts for a returning worker, and how
    long a worker who was screened out must wait before trying again."""
    submit_screened_out: bool = False
    """True lets screened-out workers submit the HIT (and so be paid the reward)."""
    bonus_flagged: bool = False
    """True pays bonuses to participants a quality check flagged (a failed
    headphone check or gold item, for example). By default they are approved
    and paid the reward, but get no bonus."""

    first_hit_bonus: Decimal = Decimal("0.30")
    first_hit_bonus_reason: str = Field(
        default=DEFAULT_FIRST_HIT_BONUS_REASON, min_length=1
    )
    max_consistency_bonus: Decimal = Decimal("0.25")
    min_consistency_threshold_for_bonus: float = Field(default=0.7, ge=0, lt=1)
    consistency_bonus_reason: str = Field(
        default=DEFAULT_CONSISTENCY_BONUS_REASON, min_length=1
    )
    approval_feedback: str = Field(default="Thank you!", max_length=1024)
    """RequesterFeedback sent with each approval, or none when empty."""

    allowed_submit_origins: list[str] = Field(default_factory=list)
    """Extra ``turkSubmitTo`` origins besides MTurk's own, for tests with a
    local fake of MTurk. Plain http is accepted for loopback addresses only."""

    @field_validator("reward", mode="before")
    @classmethod
    def _reward(cls, value: Any) -> Decimal:
        amount = parse_money(value, "reward")
        if amount < CENT:
            raise ValueError(
                f"reward={value!r} must be at least 0.01 (MTurk's minimum)."
            )
        return amount

    @field_validator("first_hit_bonus", "max_consistency_bonus", mode="before")
    @classmethod
    def _bonus(cls, value: Any) -> Decimal:
        amount = parse_money(value, "bonus")
        if amount < 0:
            raise ValueError(f"{value!r} must not be negative; use 0 to pay no bonus.")
        return amount

    @field_validator("locales")
    @classmethod
    def _locales(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[A-Z]{2}(-[A-Z0-9]{1,3})?", value):
                raise ValueError(
                    f"{value!r} is not an ISO 3166 country code such as 'US' or a "
                    "subdivision such as 'US-NY'"
                )
        return values

    @field_validator("allowed_submit_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return [normalize_origin(value) for value in values]
