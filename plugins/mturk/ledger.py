"""The payment ledger: rewards and bonuses that pay each worker exactly once.

Every payment is a ``caqe_core.models.Payment`` row, committed with status
``pending`` before MTurk is called and marked ``paid`` after MTurk confirms.
Before a pending row is paid (again), MTurk's own records are read:
``ListBonusPayments`` for bonuses (each bonus's Reason carries the row's
request token) and the assignment's status for rewards. So a run that stops
at any point, even after MTurk paid but before the row was updated, can be
run again without paying anyone twice.

A bonus's ``UniqueRequestToken`` is the row's ``request_token``, so MTurk
itself also refuses a repeated bonus for 24 hours.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import botocore.exceptions
from caqe_mturk.client import (
    UNCERTAIN_ERROR_TYPES,
    describe_error,
    format_money,
    is_definitive,
    list_bonus_payments,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.models import Experiment, Payment

logger = logging.getLogger(__name__)

RECRUITER = "mturk"
REWARD = "reward"
BONUS = "bonus"

PAID = "paid"
PENDING = "pending"
FAILED = "failed"


class PaymentInterrupted(RuntimeError):
    """MTurk did not respond to a payment, so its row stays pending for a rerun."""

    def __init__(self, purpose: str, error: BaseException) -> None:
        super().__init__(
            f"Payment {purpose} is unconfirmed because MTurk did not answer "
            f"({describe_error(error)}). Run the command again: it checks MTurk's "
            "records first and pays nobody twice."
        )
        self.purpose = purpose


@dataclass(frozen=True)
class PlannedPayment:
    """A reward or bonus that a command intends to pay."""

    purpose: str
    """Unique per experiment, such as ``first_hit_bonus:A1B2C3``."""
    kind: str
    worker_id: str
    assignment_id: str
    amount: Decimal
    reason: str
    participant_id: int | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    """The result of one planned payment."""

    purpose: str
    worker_id: str
    amount: Decimal
    result: str
    """``paid``; ``recorded`` (MTurk had paid it, the ledger now agrees);
    ``already_paid``; ``would_pay`` and ``would_record`` (dry run); ``failed``;
    ``skipped``."""
    message: str = ""


def request_token(experiment: Experiment, purpose: str) -> str:
    """Return the idempotency token of a payment.

    It is derived from the experiment (name and creation time) and the
    purpose, so a payment computed again after its row was lost gets the same
    token, and MTurk's records can still be matched to it.
    """
    created = experiment.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    # PostgreSQL returns times in the connection's time zone: normalise to UTC.
    created = created.astimezone(dt.UTC)
    seed = f"{experiment.name}\x00{created.isoformat()}\x00{purpose}"
    return "caqe-" + hashlib.sha256(seed.encode()).hexdigest()[:40]


def reason_with_reference(reason: str, token: str) -> str:
    """Append the request token to a bonus's Reason, which ListBonusPayments returns."""
    return f"{reason} (reference {token})"


def find_payment(session: Session, experiment_id: int, purpose: str) -> Payment | None:
    return session.scalar(
        select(Payment).where(
            Payment.experiment_id == experiment_id, Payment.purpose == purpose
        )
    )


@dataclass(frozen=True)
class _Row:
    """The fields of a Payment row that paying needs, read inside its session."""

    id: int
    recipient: str
    reference: str
    amount: Decimal
    reason: str
    request_token: str
    status: str

    @classmethod
    def of(cls, payment: Payment) -> _Row:
        return cls(
            id=payment.id,
            recipient=payment.recipient,
            reference=payment.reference or "",
            amount=Decimal(payment.amount),
            reason=payment.reason,
            request_token=payment.request_token,
            status=payment.status,
        )


def _record(
    session_factory: sessionmaker[Session],
    experiment_id: int,
    planned: PlannedPayment,
    status: str,
) -> _Row:
    """Write the payment's row and commit it."""
    with session_factory() as session, session.begin():
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        token = request_token(experiment, planned.purpose)
        payment = Payment(
            experiment_id=experiment_id,
            participant_id=planned.participant_id,
            recruiter=RECRUITER,
            recipient=planned.worker_id,
            kind=planned.kind,
            purpose=planned.purpose,
            amount=planned.amount,
            currency="USD",
            request_token=token,
            reference=planned.assignment_id,
            reason=planned.reason,
            status=status,
        )
        session.add(payment)
        session.flush()
        row = _Row.of(payment)
    logger.info(
        "Ledger: %s %s of $%s to worker %s (%s)",
        status,
        planned.kind,
        format_money(planned.amount),
        planned.worker_id,
        planned.purpose,
    )
    return row


def _settle(
    session_factory: sessionmaker[Session],
    payment_id: int,
    status: str,
    error: str | None = None,
) -> None:
    with session_factory() as session, session.begin():
        payment = session.get(Payment, payment_id)
        assert payment is not None
        payment.status = status
        payment.error = error
    logger.info("Ledger: payment %s is now %s", payment_id, status)


def _load(
    session_factory: sessionmaker[Session], experiment_id: int, purpose: str
) -> _Row | None:
    with session_factory() as session:
        payment = find_payment(session, experiment_id, purpose)
        return None if payment is None else _Row.of(payment)


# --- bonuses ------------------------------------------------------------------


def pay_bonuses(
    client: Any,
    session_factory: sessionmaker[Session],
    experiment_id: int,
    planned: Iterable[PlannedPayment],
    dry_run: bool = False,
    on_outcome: Callable[[PaymentOutcome], None] | None = None,
) -> list[PaymentOutcome]:
    """Pay each planned bonus once; return what happened to each.

    Raises PaymentInterrupted when MTurk's response to a SendBonus is lost
    (a dropped connection, or errors that outlasted the retries). The
    outcomes so far are passed to ``on_outcome`` as they happen.
    """
    outcomes: list[PaymentOutcome] = []
    for item in planned:
        outcome = _pay_bonus(client, session_factory, experiment_id, item, dry_run)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def _pay_bonus(
    client: Any,
    session_factory: sessionmaker[Session],
    experiment_id: int,
    planned: PlannedPayment,
    dry_run: bool,
) -> PaymentOutcome:
    payment = _load(session_factory, experiment_id, planned.purpose)
    if payment is not None and payment.status == PAID:
        return _outcome(planned, payment.amount, "already_paid")
    if dry_run:
        amount = payment.amount if payment is not None else planned.amount
        return _outcome(planned, amount, "would_pay")

    message = ""
    if payment is None:
        payment = _record(session_factory, experiment_id, planned, PENDING)
    elif payment.amount != planned.amount:
        # The row is the commitment made before MTurk was first called.
        message = (
            f"the ledger holds ${format_money(payment.amount)} from an earlier run, "
            f"not ${format_money(planned.amount)}; paying the ledger's amount"
        )
        logger.warning("Payment %s: %s", planned.purpose, message)

    if _bonus_on_mturk(client, payment, planned.purpose):
        _settle(session_factory, payment.id, PAID)
        return _outcome(planned, payment.amount, "recorded", message)

    try:
        client.send_bonus(
            WorkerId=payment.recipient,
            AssignmentId=payment.reference,
            BonusAmount=format_money(payment.amount),
            Reason=reason_with_reference(payment.reason, payment.request_token),
            UniqueRequestToken=payment.request_token,
        )
    except botocore.exceptions.ClientError as error:
        if not is_definitive(error):
            raise PaymentInterrupted(planned.purpose, error) from error
        # A repeated token is also a RequestError: MTurk may have paid after all.
        if _bonus_on_mturk(client, payment, planned.purpose):
            _settle(session_factory, payment.id, PAID)
            return _outcome(planned, payment.amount, "recorded", message)
        _settle(session_factory, payment.id, FAILED, describe_error(error))
        logger.error(
            "SendBonus for %s failed: %s", planned.purpose, describe_error(error)
        )
        return _outcome(planned, payment.amount, "failed", describe_error(error))
    except UNCERTAIN_ERROR_TYPES as error:
        raise PaymentInterrupted(planned.purpose, error) from error

    _settle(session_factory, payment.id, PAID)
    return _outcome(planned, payment.amount, "paid", message)


def _bonus_on_mturk(client: Any, payment: _Row, purpose: str) -> bool:
    """Return True when MTurk lists a bonus carrying the payment's token."""
    try:
        bonuses = list_bonus_payments(client, payment.reference)
    except botocore.exceptions.ClientError as error:
        if is_definitive(error):
            return False
        raise PaymentInterrupted(purpose, error) from error
    except UNCERTAIN_ERROR_TYPES as error:
        raise PaymentInterrupted(purpose, error) from error
    return any(payment.request_token in bonus.get("Reason", "") for bonus in bonuses)


# --- rewards ------------------------------------------------------------------


def approve_assignments(
    client: Any,
    session_factory: sessionmaker[Session],
    experiment_id: int,
    assignments: Iterable[tuple[dict[str, Any], PlannedPayment]],
    feedback: str,
    dry_run: bool = False,
    on_outcome: Callable[[PaymentOutcome], None] | None = None,
) -> list[PaymentOutcome]:
    """Approve submitted assignments and record every reward in the ledger.

    ``assignments`` pairs each MTurk assignment (as ListAssignmentsForHIT
    returns it) with its planned reward. Assignments MTurk already approved
    (auto-approval, the requester website, an interrupted run) get a paid
    row without a call; rejected ones are skipped.
    """
    outcomes: list[PaymentOutcome] = []
    for assignment, planned in assignments:
        outcome = _approve(
            client,
            session_factory,
            experiment_id,
            assignment,
            planned,
            feedback,
            dry_run,
        )
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def _approve(
    client: Any,
    session_factory: sessionmaker[Session],
    experiment_id: int,
    assignment: dict[str, Any],
    planned: PlannedPayment,
    feedback: str,
    dry_run: bool,
) -> PaymentOutcome:
    status = assignment["AssignmentStatus"]
    payment = _load(session_factory, experiment_id, planned.purpose)
    if payment is not None and payment.status == PAID:
        return _outcome(planned, payment.amount, "already_paid")

    if status == "Rejected":
        if payment is not None and not dry_run:
            _settle(session_factory, payment.id, FAILED, "rejected on MTurk")
        return _outcome(planned, planned.amount, "skipped", "rejected on MTurk")
    if status == "Approved":
        if dry_run:
            return _outcome(
                planned, planned.amount, "would_record", "approved on MTurk already"
            )
        if payment is None:
            _record(session_factory, experiment_id, planned, PAID)
        else:
            _settle(session_factory, payment.id, PAID)
        return _outcome(
            planned, planned.amount, "recorded", "approved on MTurk already"
        )
    if dry_run:
        return _outcome(planned, planned.amount, "would_pay")

    if payment is None:
        payment = _record(session_factory, experiment_id, planned, PENDING)
    request: dict[str, Any] = {"AssignmentId": planned.assignment_id}
    if feedback:
        request["RequesterFeedback"] = feedback
    try:
        client.approve_assignment(**request)
    except botocore.exceptions.ClientError as error:
        if not is_definitive(error):
            raise PaymentInterrupted(planned.purpose, error) from error
        # Approving an approved assignment is a RequestError: check which it was.
        if _assignment_status(client, planned) == "Approved":
            _settle(session_factory, payment.id, PAID)
            return _outcome(
                planned, payment.amount, "recorded", "approved on MTurk already"
            )
        _settle(session_factory, payment.id, FAILED, describe_error(error))
        logger.error(
            "ApproveAssignment %s failed: %s",
            planned.assignment_id,
            describe_error(error),
        )
        return _outcome(planned, payment.amount, "failed", describe_error(error))
    except UNCERTAIN_ERROR_TYPES as error:
        raise PaymentInterrupted(planned.purpose, error) from error

    _settle(session_factory, payment.id, PAID)
    return _outcome(planned, payment.amount, "paid")


def _assignment_status(client: Any, planned: PlannedPayment) -> str | None:
    try:
        response = client.get_assignment(AssignmentId=planned.assignment_id)
    except botocore.exceptions.ClientError as error:
        if is_definitive(error):
            return None
        raise PaymentInterrupted(planned.purpose, error) from error
    except UNCERTAIN_ERROR_TYPES as error:
        raise PaymentInterrupted(planned.purpose, error) from error
    return response["Assignment"]["AssignmentStatus"]


def _outcome(
    planned: PlannedPayment, amount: Decimal, result: str, message: str = ""
) -> PaymentOutcome:
    return PaymentOutcome(
        purpose=planned.purpose,
        worker_id=planned.worker_id,
        amount=amount,
        result=result,
        message=message,
    )


# --- summaries ----------------------------------------------------------------


@dataclass(frozen=True)
class LedgerTotals:
    """Sums of an experiment's ledger by kind and status."""

    paid_rewards: Decimal
    paid_bonuses: Decimal
    unsettled: Decimal
    """Pending and failed rows: payments begun but not confirmed."""
    unsettled_rows: int


def ledger_totals(session: Session, experiment_id: int) -> LedgerTotals:
    """Sum an experiment's MTurk payments."""
    rows = session.scalars(
        select(Payment).where(
            Payment.experiment_id == experiment_id, Payment.recruiter == RECRUITER
        )
    ).all()
    zero = Decimal("0.00")
    paid_rewards = sum(
        (row.amount for row in rows if row.status == PAID and row.kind == REWARD), zero
    )
    paid_bonuses = sum(
        (row.amount for row in rows if row.status == PAID and row.kind == BONUS), zero
    )
    unsettled = [row for row in rows if row.status != PAID]
    return LedgerTotals(
        paid_rewards=paid_rewards,
        paid_bonuses=paid_bonuses,
        unsettled=sum((row.amount for row in unsettled), zero),
        unsettled_rows=len(unsettled),
    )
