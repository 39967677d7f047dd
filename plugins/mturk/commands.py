"""``caqe mturk``: post HITs, approve assignments, pay bonuses, clean up.

Every command acts on one study's HITs only: the RecruitmentJob rows that
``create-hits`` wrote, each tagged on MTurk with a RequesterAnnotation of
``caqe:<experiment>:<request token>``. Sandbox and production HITs are kept
apart by the target label stored in each row.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import click
from caqe_mturk import ledger
from caqe_mturk.client import (
    DEFAULT_MAX_ATTEMPTS,
    UNCERTAIN_ERROR_TYPES,
    MTurkSetupError,
    Target,
    annotation_for,
    create_hit_request,
    describe_error,
    error_code,
    format_money,
    is_definitive,
    is_duplicate_hit,
    list_assignments,
    list_hits,
    make_client,
    mturk_fee,
    qualification_requirements,
    resolve_target,
)
from caqe_mturk.config import CENT, MTurkConfig, parse_money
from caqe_mturk.web import ENTRY_PATH, NAME
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core.cli import Context, database_options, experiment_option, make_context
from caqe_core.models import Participant, Payment, RecruitmentJob
from caqe_core.services import ServiceError, participant_consistency
from caqe_core.study import Study

logger = logging.getLogger(__name__)

SERVER_ADDRESS_ENV = "SERVER_ADDRESS"
HIT_KIND = "hit"
QUALIFICATION_KIND = "exclusion_qualification"

PENDING = "pending"
CREATED = "created"
FAILED = "failed"
DISPOSED = "disposed"

EXPIRE_AT = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
"""A time in the past: UpdateExpirationForHIT with it expires a HIT at once."""
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException"}
)
THROTTLE_RETRIES = 10
"""Extra CreateHIT attempts after throttling outlasted botocore's retries,
whose per-client retry quota a long burst of throttling can use up."""
THROTTLE_BACKOFF_BASE_SECONDS = 0.5
THROTTLE_BACKOFF_MAX_SECONDS = 20.0
SUBMITTED_STATUSES = frozenset({"Submitted", "Approved"})
DEFAULT_CONCURRENCY = 8
"""CreateHIT requests in flight at once.

NOTE: MTurk does not publish its rate limits. 8 is a guess that stays well
below the throttling that bench/bench_create_hits.py simulates.
"""


@dataclass(frozen=True)
class MTurkOptions:
    """The ``caqe mturk`` group's options, shared by its commands."""

    debug: bool
    production: bool
    endpoint_url: str | None
    profile: str | None
    max_attempts: int


@dataclass
class MTurkStudy:
    """A study whose recruiter is MTurk, and where its HITs live."""

    context: Context
    study: Study
    section: MTurkConfig
    target: Target
    options: MTurkOptions

    def client(self, max_pool_connections: int = 10) -> Any:
        try:
            return make_client(
                self.target,
                profile=self.options.profile,
                max_attempts=self.options.max_attempts,
                max_pool_connections=max_pool_connections,
            )
        except MTurkSetupError as error:
            raise click.ClickException(str(error)) from None

    def hit_rows(self, session: Session, statuses: Iterable[str] | None = None) -> list:
        """Return this study's HIT rows on this target, oldest first."""
        rows = session.scalars(
            select(RecruitmentJob)
            .where(
                RecruitmentJob.experiment_id == self.study.experiment_id,
                RecruitmentJob.recruiter == NAME,
            )
            .order_by(RecruitmentJob.id)
        ).all()
        allowed = set(statuses) if statuses is not None else None
        return [
            row
            for row in rows
            if (row.data or {}).get("kind") == HIT_KIND
            and row.data.get("target") == self.target.key
            and (allowed is None or row.status in allowed)
        ]


def open_mturk_study(
    options: MTurkOptions, database_url: str | None, experiment: str | None
) -> MTurkStudy:
    """Load the study from the database and choose the MTurk target."""
    context = make_context(database_url)
    study = context.study(experiment)
    if study.config.core.recruiter != NAME:
        raise click.ClickException(
            f"Study {study.name!r} recruits with {study.config.core.recruiter!r}, not "
            f"MTurk. Set 'recruiter: {NAME}' in its config and serve it again."
        )
    section = study.config.section(NAME) or MTurkConfig()
    try:
        target = resolve_target(options.production, options.debug, options.endpoint_url)
    except MTurkSetupError as error:
        raise click.ClickException(str(error)) from None
    return MTurkStudy(context, study, section, target, options)


def _fail(message: str, error: BaseException) -> click.ClickException:
    return click.ClickException(f"{message}: {describe_error(error)}")


# --- the group ------------------------------------------------------------------


@click.group("mturk")
@click.option(
    "--debug",
    is_flag=True,
    help="Use the sandbox and post HITs without qualification requirements.",
)
@click.option(
    "--production",
    is_flag=True,
    help="Use production MTurk, which pays real money (MTURK_HOST set to a "
    "production host does the same). Without it every command uses the sandbox.",
)
@click.option(
    "--endpoint-url",
    envvar="CAQE_MTURK_ENDPOINT_URL",
    default=None,
    help="Requester API URL instead of AWS's, such as a local fake for tests "
    "[env CAQE_MTURK_ENDPOINT_URL].",
)
@click.option(
    "--profile",
    default=None,
    help="AWS profile from the shared credentials file [default: boto3's chain "
    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, then the default profile)].",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 20),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Attempts per API call, with exponential backoff between them.",
)
@click.pass_context
def mturk_group(
    ctx: click.Context,
    debug: bool,
    production: bool,
    endpoint_url: str | None,
    profile: str | None,
    max_attempts: int,
) -> None:
    """Recruit on Amazon Mechanical Turk: HITs, approvals and bonuses."""
    ctx.obj = MTurkOptions(debug, production, endpoint_url, profile, max_attempts)


pass_options = click.make_pass_decorator(MTurkOptions)


def _confirm_production(mturk: MTurkStudy, question: str, yes: bool) -> None:
    if mturk.target.production and not yes:
        click.confirm(question, abort=True)


# --- create-hits ------------------------------------------------------------------


@mturk_group.command("create-hits")
@click.argument("count", type=click.IntRange(1, 100_000), required=False)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish the HITs an interrupted run left pending, with their original "
    "request tokens, instead of creating new ones.",
)
@click.option(
    "--server-address",
    envvar=SERVER_ADDRESS_ENV,
    default=None,
    help="Public host[:port] of the CAQE server; HITs open "
    f"https://HOST{ENTRY_PATH} [env {SERVER_ADDRESS_ENV}].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="HITs created at the same time.",
)
@click.option("--yes", is_flag=True, help="Post to production without asking.")
@database_options
@experiment_option
@pass_options
def create_hits_command(
    options: MTurkOptions,
    count: int | None,
    resume: bool,
    server_address: str | None,
    concurrency: int,
    yes: bool,
    database_url: str | None,
    experiment: str | None,
) -> None:
    """Create COUNT HITs whose ExternalQuestion opens this study.

    Each HIT is recorded in the database before it is sent, so an interrupted
    run loses none: finish it with --resume.
    """
    mturk = open_mturk_study(options, database_url, experiment)
    factory = mturk.context.session_factory
    with factory() as session:
        pending = mturk.hit_rows(session, [PENDING])
    if resume and count is not None:
        raise click.UsageError("Give COUNT or --resume, not both.")
    if pending and not resume:
        raise click.ClickException(
            f"{len(pending)} HIT(s) of an earlier create-hits run are pending: the run "
            "stopped before MTurk confirmed them. Run 'caqe mturk create-hits "
            "--resume' to finish them first."
        )
    if resume and not pending:
        click.echo(
            f"No pending HITs of {mturk.study.name} on {mturk.target.describe()}."
        )
        return
    if not resume and count is None:
        raise click.UsageError("Give the number of HITs to create, or --resume.")

    client = mturk.client(max_pool_connections=concurrency + 2)
    if resume:
        requests = [row.data["request"] for row in pending]
    else:
        assert count is not None
        question_url = question_url_for(server_address)
        requirements = _requirements(mturk, client, options.debug)
        requests = [
            _new_request(mturk, question_url, requirements) for _ in range(count)
        ]

    _show_cost(mturk, client, requests)
    _confirm_production(mturk, f"Post {len(requests)} HIT(s) to PRODUCTION MTurk?", yes)
    if not resume:
        _write_pending_rows(mturk, requests, options.debug)
    summary = post_hits(mturk, client, requests, concurrency, reconcile_first=resume)
    _report_hits(mturk, summary)


def question_url_for(server_address: str | None) -> str:
    """Return the HTTPS URL of the ExternalQuestion page on ``server_address``."""
    if not server_address or not server_address.strip():
        raise click.ClickException(
            f"{SERVER_ADDRESS_ENV} is not set. Set it to the public host name of the "
            "CAQE server (for example caqe.example.org), which must serve HTTPS, or "
            "pass --server-address."
        )
    value = server_address.strip()
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme != "https":
            raise click.ClickException(
                f"{SERVER_ADDRESS_ENV}={value!r} uses {scheme}; MTurk frames HITs over "
                "HTTPS only. Give the host name alone, such as caqe.example.org."
            )
        value = value.split("://", 1)[1]
    value = value.rstrip("/")
    parts = urlsplit(f"https://{value}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or parts.path or parts.query or parts.username or port == -1:
        raise click.ClickException(
            f"{SERVER_ADDRESS_ENV}={server_address!r} is not a host name with an "
            "optional port, such as caqe.example.org or caqe.example.org:8443."
        )
    return f"https://{value}{ENTRY_PATH}"


def _new_request(
    mturk: MTurkStudy, question_url: str, requirements: list[dict[str, Any]]
) -> dict[str, Any]:
    token = uuid.uuid4().hex
    return create_hit_request(
        mturk.section,
        question_url,
        token,
        annotation_for(mturk.study.name, token),
        requirements,
    )


def _requirements(mturk: MTurkStudy, client: Any, debug: bool) -> list[dict[str, Any]]:
    if debug:
        return []
    exclusion = ensure_exclusion_qualification(mturk, client)
    return qualification_requirements(mturk.section, exclusion)


def _show_cost(mturk: MTurkStudy, client: Any, requests: list[dict[str, Any]]) -> None:
    assignments = sum(request["MaxAssignments"] for request in requests)
    rewards = [Decimal(request["Reward"]) for request in requests]
    total = sum(
        (
            (reward + mturk_fee(reward, request["MaxAssignments"]))
            * request["MaxAssignments"]
            for reward, request in zip(rewards, requests)
        ),
        Decimal("0.00"),
    )
    first = requests[0]
    reward = rewards[0]
    fee = mturk_fee(reward, first["MaxAssignments"])
    click.echo(f"Target: {mturk.target.describe()}")
    click.echo(
        f"{len(requests)} HIT(s) x {first['MaxAssignments']} assignment(s) x "
        f"(${format_money(reward)} reward + ${format_money(fee)} MTurk fee) = "
        f"${format_money(total)} at most, for {assignments} assignment(s)."
    )
    click.echo(
        "Bonuses are extra, with MTurk's 20 % fee on each (https://www.mturk.com/pricing)."
    )
    if mturk.target.production:
        try:
            balance = client.get_account_balance()
        except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
            raise _fail("Could not read the account balance", error) from None
        click.echo(f"Available balance: ${balance['AvailableBalance']}")


def _write_pending_rows(
    mturk: MTurkStudy, requests: list[dict[str, Any]], debug: bool
) -> None:
    with mturk.context.session_factory() as session, session.begin():
        for request in requests:
            session.add(
                RecruitmentJob(
                    experiment_id=mturk.study.experiment_id,
                    recruiter=NAME,
                    request_token=request["UniqueRequestToken"],
                    status=PENDING,
                    data={
                        "kind": HIT_KIND,
                        "target": mturk.target.key,
                        "debug": debug,
                        "reward": request["Reward"],
                        "request": request,
                    },
                )
            )
    logger.info(
        "Recorded %d pending HITs of %s on %s",
        len(requests),
        mturk.study.name,
        mturk.target.key,
    )


@dataclass
class HitResult:
    """The outcome of one CreateHIT request."""

    token: str
    hit: dict[str, Any] | None = None
    duplicate: bool = False
    """MTurk already has a HIT for this token (an earlier attempt succeeded)."""
    error: BaseException | None = None


@dataclass
class PostSummary:
    """Outcome of one create-hits run."""

    created: list[dict[str, Any]]
    failed: list[tuple[str, str]]
    """(request token, error) of HITs MTurk rejected."""
    pending: list[tuple[str, str]]
    """(request token, error) of HITs whose creation is unconfirmed."""


def post_hit(
    client: Any,
    request: dict[str, Any],
    sleep: Callable[[float], None] = time.sleep,
) -> HitResult:
    """Send one CreateHIT, backing off while MTurk throttles.

    MTurk's errors and connection errors are returned in the result, not raised.
    """
    token = request["UniqueRequestToken"]
    for attempt in range(THROTTLE_RETRIES + 1):
        try:
            return HitResult(token, hit=client.create_hit(**request)["HIT"])
        except botocore.exceptions.ClientError as error:
            if is_duplicate_hit(error):
                return HitResult(token, duplicate=True)
            if error_code(error) in THROTTLING_CODES and attempt < THROTTLE_RETRIES:
                ceiling = min(
                    THROTTLE_BACKOFF_MAX_SECONDS,
                    THROTTLE_BACKOFF_BASE_SECONDS * 2**attempt,
                )
                sleep(random.uniform(0, ceiling))
                continue
            return HitResult(token, error=error)
        except UNCERTAIN_ERROR_TYPES as error:
            return HitResult(token, error=error)
    raise AssertionError("unreachable: the last attempt returns")


def post_hits(
    mturk: MTurkStudy,
    client: Any,
    requests: list[dict[str, Any]],
    concurrency: int,
    reconcile_first: bool = False,
) -> PostSummary:
    """Create the HITs of ``requests`` (already recorded as pending rows).

    Requests run ``concurrency`` at a time, and only this thread writes to the
    database, one commit per HIT. With ``reconcile_first``, HITs that MTurk
    already has (found by their RequesterAnnotation) are recorded without a
    new request, which matters once the 24-hour token window has passed.
    """
    summary = PostSummary(created=[], failed=[], pending=[])
    by_token = {request["UniqueRequestToken"]: request for request in requests}
    if reconcile_first:
        found = _posted_hits(mturk, client)
        for token in list(by_token):
            hit = found.get(by_token[token]["RequesterAnnotation"])
            if hit is not None:
                _mark_created(mturk, token, hit)
                summary.created.append(hit)
                del by_token[token]
        if summary.created:
            click.echo(f"{len(summary.created)} pending HIT(s) were already on MTurk.")

    duplicates: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {
            pool.submit(post_hit, client, request): token
            for token, request in by_token.items()
        }
        stopped = False
        with click.progressbar(length=len(futures), label="Creating HITs") as bar:
            for future in concurrent.futures.as_completed(futures):
                bar.update(1)
                if future.cancelled():
                    continue
                result = future.result()
                if result.hit is not None:
                    _mark_created(mturk, result.token, result.hit)
                    summary.created.append(result.hit)
                elif result.duplicate:
                    duplicates.append(result.token)
                elif result.error is not None and is_definitive(result.error):
                    _mark_failed(mturk, result.token, describe_error(result.error))
                    summary.failed.append((result.token, describe_error(result.error)))
                    if not stopped:
                        # The same request would be rejected again: stop sending.
                        stopped = True
                        for other in futures:
                            other.cancel()
                elif result.error is not None:
                    summary.pending.append((result.token, describe_error(result.error)))
        for future, token in futures.items():
            if future.cancelled():
                summary.pending.append((token, "not sent after MTurk rejected a HIT"))

    if duplicates:
        found = _posted_hits(mturk, client)
        for token in duplicates:
            hit = found.get(by_token[token]["RequesterAnnotation"])
            if hit is None:
                summary.pending.append(
                    (
                        token,
                        "MTurk reports the HIT exists, but ListHITs does not show it",
                    )
                )
                continue
            _mark_created(mturk, token, hit)
            summary.created.append(hit)
    return summary


def _posted_hits(mturk: MTurkStudy, client: Any) -> dict[str, dict[str, Any]]:
    """Return this study's HITs on MTurk by RequesterAnnotation."""
    prefix = annotation_for(mturk.study.name, "")
    try:
        hits = list_hits(client)
    except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
        raise _fail("Could not list the HITs on MTurk", error) from None
    return {
        hit["RequesterAnnotation"]: hit
        for hit in hits
        if hit.get("RequesterAnnotation", "").startswith(prefix)
    }


def _mark_created(mturk: MTurkStudy, token: str, hit: dict[str, Any]) -> None:
    with mturk.context.session_factory() as session, session.begin():
        row = session.scalar(
            select(RecruitmentJob).where(RecruitmentJob.request_token == token)
        )
        assert row is not None
        row.external_id = hit["HITId"]
        row.status = CREATED
        expiration = hit.get("Expiration")
        row.data = {
            **row.data,
            "hit_type_id": hit.get("HITTypeId"),
            "hit_group_id": hit.get("HITGroupId"),
            "expiration": expiration.isoformat() if expiration else None,
        }
    logger.info("Created HIT %s (request token %s)", hit["HITId"], token)


def _mark_failed(mturk: MTurkStudy, token: str, message: str) -> None:
    with mturk.context.session_factory() as session, session.begin():
        row = session.scalar(
            select(RecruitmentJob).where(RecruitmentJob.request_token == token)
        )
        assert row is not None
        row.status = FAILED
        row.data = {**row.data, "error": message}
    logger.error("MTurk rejected HIT request %s: %s", token, message)


def _report_hits(mturk: MTurkStudy, summary: PostSummary) -> None:
    click.echo(f"Created {len(summary.created)} HIT(s) on {mturk.target.describe()}.")
    groups: set[str] = {
        hit["HITGroupId"] for hit in summary.created if hit.get("HITGroupId")
    }
    if groups and not mturk.target.custom_endpoint:
        for group in sorted(groups):
            click.echo(
                f"  Preview: {mturk.target.submit_origin}/mturk/preview?groupId={group}"
            )
    if summary.failed:
        click.echo(
            f"MTurk rejected {len(summary.failed)} HIT(s): {summary.failed[0][1]}"
        )
    if summary.pending:
        click.echo(
            f"{len(summary.pending)} HIT(s) are unconfirmed ({summary.pending[0][1]}). "
            "Run 'caqe mturk create-hits --resume' to finish them."
        )
    if summary.failed or summary.pending:
        raise click.exceptions.Exit(1)


# --- the exclusion qualification -------------------------------------------------


def _qualification_row(session: Session, mturk: MTurkStudy) -> RecruitmentJob | None:
    return session.scalar(
        select(RecruitmentJob).where(
            RecruitmentJob.request_token == _qualification_token(mturk)
        )
    )


def _qualification_token(mturk: MTurkStudy) -> str:
    return f"mturk-qualification-{mturk.study.experiment_id}-{mturk.target.key}"


def ensure_exclusion_qualification(mturk: MTurkStudy, client: Any) -> str | None:
    """Return the ID of the qualification that marks workers who took part.

    It is ``exclusion_qualification_id`` from the config, or a qualification
    type created once per study and target, recorded in a RecruitmentJob row
    written before the request.
    """
    section = mturk.section
    if not section.exclusion_qualification:
        return None
    factory = mturk.context.session_factory
    with factory() as session, session.begin():
        row = _qualification_row(session, mturk)
        if row is None:
            row = RecruitmentJob(
                experiment_id=mturk.study.experiment_id,
                recruiter=NAME,
                request_token=_qualification_token(mturk),
                status=PENDING,
                data={
                    "kind": QUALIFICATION_KIND,
                    "target": mturk.target.key,
                    "granted": {},
                },
            )
            session.add(row)
            session.flush()
        if section.exclusion_qualification_id:
            return section.exclusion_qualification_id
        if row.external_id:
            return row.external_id
        row_id = row.id

    name = f"CAQE {mturk.study.name}: took part (study record {row_id})"
    try:
        response = client.create_qualification_type(
            Name=name,
            Description=(
                f"Granted to workers who took part in the listening study "
                f"{mturk.study.name!r}; its HITs exclude them."
            ),
            QualificationTypeStatus="Active",
        )
    except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
        # NOTE: CreateQualificationType has no idempotency token. If an earlier
        # run created the type but stopped before recording it, MTurk rejects
        # the name, and the researcher has to set exclusion_qualification_id.
        raise click.ClickException(
            f"Could not create the qualification type {name!r} that excludes workers "
            f"who took part: {describe_error(error)}. If it already exists in your "
            "account, set mturk.exclusion_qualification_id to its ID in the config; "
            "or set mturk.exclusion_qualification: false."
        ) from None
    type_id = response["QualificationType"]["QualificationTypeId"]
    with factory() as session, session.begin():
        row = session.get(RecruitmentJob, row_id)
        assert row is not None
        row.external_id = type_id
        row.status = CREATED
    logger.info("Created qualification type %s (%s)", type_id, name)
    return type_id


def grant_exclusions(mturk: MTurkStudy, client: Any, dry_run: bool) -> list[str]:
    """Give the exclusion qualification to workers at their session limit.

    Best effort: a failure is logged and reported, and the next run tries
    again. Returns one message per worker that could not be handled.
    """
    section = mturk.section
    if not section.exclusion_qualification:
        return []
    factory = mturk.context.session_factory
    with factory() as session:
        row = _qualification_row(session, mturk)
        type_id = section.exclusion_qualification_id or (
            row.external_id if row else None
        )
        if row is None or type_id is None:
            return []
        row_id = row.id
        granted = set((row.data or {}).get("granted", {}).get(type_id, []))
        counts = Counter(
            participant.external_id
            for participant in _completed_participants(session, mturk)
            if participant.external_id is not None
        )
    due = sorted(
        worker
        for worker, count in counts.items()
        if count >= section.max_assignments_per_worker and worker not in granted
    )
    problems: list[str] = []
    for worker in due:
        if dry_run:
            click.echo(f"Would exclude worker {worker} from further HITs.")
            continue
        try:
            client.associate_qualification_with_worker(
                QualificationTypeId=type_id,
                WorkerId=worker,
                IntegerValue=1,
                SendNotification=False,
            )
        except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
            logger.error(
                "Could not give qualification %s to worker %s: %s",
                type_id,
                worker,
                describe_error(error),
            )
            problems.append(f"worker {worker}: {describe_error(error)}")
            continue
        with factory() as session, session.begin():
            stored = session.get(RecruitmentJob, row_id)
            assert stored is not None
            granted_by_type = dict(stored.data.get("granted", {}))
            granted_by_type[type_id] = [*granted_by_type.get(type_id, []), worker]
            stored.data = {**stored.data, "granted": granted_by_type}
        logger.info("Gave worker %s the exclusion qualification %s", worker, type_id)
    if due and not dry_run:
        click.echo(f"Excluded {len(due) - len(problems)} worker(s) from further HITs.")
    return problems


# --- expire and dispose -------------------------------------------------------------


@mturk_group.command("expire-all-hits")
@database_options
@experiment_option
@pass_options
def expire_all_hits_command(
    options: MTurkOptions, database_url: str | None, experiment: str | None
) -> None:
    """Expire this study's HITs so that no worker can accept them any more."""
    mturk = open_mturk_study(options, database_url, experiment)
    with mturk.context.session_factory() as session:
        hits = [(row.id, row.external_id) for row in mturk.hit_rows(session, [CREATED])]
    client = mturk.client()
    problems = []
    for row_id, hit_id in hits:
        try:
            client.update_expiration_for_hit(HITId=hit_id, ExpireAt=EXPIRE_AT)
        except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
            problems.append(f"{hit_id}: {describe_error(error)}")
            logger.error("Could not expire HIT %s: %s", hit_id, describe_error(error))
            continue
        _update_row(mturk, row_id, expired_at=dt.datetime.now(dt.UTC).isoformat())
        logger.info("Expired HIT %s", hit_id)
    click.echo(
        f"Expired {len(hits) - len(problems)} of {len(hits)} HIT(s) on {mturk.target.describe()}."
    )
    _exit_with_problems("Could not expire", problems)


@mturk_group.command("dispose-all-hits")
@database_options
@experiment_option
@pass_options
def dispose_all_hits_command(
    options: MTurkOptions, database_url: str | None, experiment: str | None
) -> None:
    """Delete this study's finished HITs from MTurk.

    MTurk deletes only HITs that are Reviewable (expired or full) and whose
    submitted assignments were all approved or rejected. The command lists
    the other HITs with what to do first.
    """
    mturk = open_mturk_study(options, database_url, experiment)
    with mturk.context.session_factory() as session:
        hits = [(row.id, row.external_id) for row in mturk.hit_rows(session, [CREATED])]
    client = mturk.client()
    disposed = 0
    problems = []
    for row_id, hit_id in hits:
        problem = _dispose(client, hit_id)
        if problem is None:
            _update_row(mturk, row_id, status=DISPOSED)
            disposed += 1
            logger.info("Disposed HIT %s", hit_id)
        else:
            problems.append(f"{hit_id}: {problem}")
    click.echo(
        f"Disposed {disposed} of {len(hits)} HIT(s) on {mturk.target.describe()}."
    )
    _exit_with_problems("Could not dispose", problems)


def _dispose(client: Any, hit_id: str) -> str | None:
    """Delete one HIT if MTurk allows it, or return the reason it cannot."""
    try:
        hit = client.get_hit(HITId=hit_id)["HIT"]
        status = hit["HITStatus"]
        if status == "Disposed":
            return None
        if status == "Assignable":
            return (
                "it is still Assignable. Expire it first with "
                "'caqe mturk expire-all-hits'"
            )
        if status == "Unassignable":
            return (
                f"{hit.get('NumberOfAssignmentsPending', 0)} worker(s) are still working "
                "on it. Wait until they submit or their time runs out"
            )
        undecided = [
            assignment
            for assignment in list_assignments(client, hit_id)
            if assignment["AssignmentStatus"] == "Submitted"
        ]
        if undecided:
            return (
                f"{len(undecided)} submitted assignment(s) are not approved yet. Run "
                "'caqe mturk approve-all-hits' first"
            )
        client.delete_hit(HITId=hit_id)
    except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
        return describe_error(error)
    return None


def _update_row(
    mturk: MTurkStudy, row_id: int, status: str | None = None, **data: Any
) -> None:
    with mturk.context.session_factory() as session, session.begin():
        row = session.get(RecruitmentJob, row_id)
        assert row is not None
        if status is not None:
            row.status = status
        if data:
            row.data = {**row.data, **data}


def _exit_with_problems(verb: str, problems: list[str]) -> None:
    if not problems:
        return
    click.echo(f"{verb} {len(problems)} HIT(s):")
    for problem in problems:
        click.echo(f"  {problem}")
    raise click.exceptions.Exit(1)


# --- assignments and participants ------------------------------------------------


@dataclass(frozen=True)
class StudyAssignment:
    """An MTurk assignment of one of the study's HITs, with its HIT's reward."""

    assignment: dict[str, Any]
    reward: Decimal

    @property
    def id(self) -> str:
        return self.assignment["AssignmentId"]

    @property
    def status(self) -> str:
        return self.assignment["AssignmentStatus"]

    @property
    def worker_id(self) -> str:
        return self.assignment["WorkerId"]


def study_assignments(mturk: MTurkStudy, client: Any) -> list[StudyAssignment]:
    """Return the submitted, approved and rejected assignments of the study's HITs."""
    with mturk.context.session_factory() as session:
        hits = [
            (row.external_id, Decimal(row.data.get("reward", mturk.section.reward)))
            for row in mturk.hit_rows(session, [CREATED])
        ]
    found: list[StudyAssignment] = []
    for hit_id, reward in hits:
        try:
            assignments = list_assignments(client, hit_id)
        except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
            raise _fail(
                f"Could not list the assignments of HIT {hit_id}", error
            ) from None
        found.extend(StudyAssignment(assignment, reward) for assignment in assignments)
    return found


def _completed_participants(session: Session, mturk: MTurkStudy) -> list[Participant]:
    rows = session.scalars(
        select(Participant)
        .where(
            Participant.experiment_id == mturk.study.experiment_id,
            Participant.recruiter == NAME,
            Participant.status == "completed",
        )
        .order_by(Participant.finished_at, Participant.id)
    ).all()
    return [
        row
        for row in rows
        if row.external_id and (row.external_data or {}).get("assignmentId")
    ]


def _without_flagged(
    participants: list[Participant], mturk: MTurkStudy
) -> list[Participant]:
    """Leave out participants a quality check flagged, unless bonus_flagged is set."""
    if mturk.section.bonus_flagged:
        return participants
    kept = [participant for participant in participants if not participant.flags]
    skipped = len(participants) - len(kept)
    if skipped:
        click.echo(
            f"Note: {skipped} flagged participant(s) get no bonus (quality flags; "
            "set mturk.bonus_flagged: true to pay them)."
        )
    return kept


def _participants_by_assignment(session: Session, mturk: MTurkStudy) -> dict[str, int]:
    rows = session.scalars(
        select(Participant).where(
            Participant.experiment_id == mturk.study.experiment_id,
            Participant.recruiter == NAME,
        )
    ).all()
    return {
        row.external_data["assignmentId"]: row.id
        for row in rows
        if (row.external_data or {}).get("assignmentId")
    }


# --- approve-all-hits ------------------------------------------------------------------


def _payment_options(function: Any) -> Any:
    function = click.option(
        "--yes", is_flag=True, help="Pay on production without asking."
    )(function)
    function = click.option(
        "--dry-run",
        is_flag=True,
        help="Show what would be paid; write nothing and pay nothing.",
    )(function)
    return function


@mturk_group.command("approve-all-hits")
@_payment_options
@database_options
@experiment_option
@pass_options
def approve_all_hits_command(
    options: MTurkOptions,
    dry_run: bool,
    yes: bool,
    database_url: str | None,
    experiment: str | None,
) -> None:
    """Approve this study's submitted assignments, which pays their rewards.

    Each reward is written to the ledger before MTurk is asked to approve it;
    rewards MTurk paid already (auto-approval) are recorded as paid.
    """
    mturk = open_mturk_study(options, database_url, experiment)
    client = mturk.client()
    assignments = study_assignments(mturk, client)
    with mturk.context.session_factory() as session:
        participants = _participants_by_assignment(session, mturk)
    unknown = [item.id for item in assignments if item.id not in participants]
    planned = [
        (
            item.assignment,
            ledger.PlannedPayment(
                purpose=f"reward:{item.id}",
                kind=ledger.REWARD,
                worker_id=item.worker_id,
                assignment_id=item.id,
                amount=item.reward,
                reason="Reward for the assignment",
                participant_id=participants.get(item.id),
            ),
        )
        for item in assignments
    ]
    submitted = [
        payment
        for assignment, payment in planned
        if assignment["AssignmentStatus"] == "Submitted"
    ]
    total = sum((payment.amount for payment in submitted), Decimal("0.00"))
    click.echo(
        f"{len(submitted)} submitted assignment(s) to approve on {mturk.target.describe()}: "
        f"${format_money(total)} in rewards."
    )
    if unknown:
        click.echo(
            f"Note: {len(unknown)} assignment(s) have no participant in this database "
            f"(first: {unknown[0]})."
        )
    if submitted and not dry_run:
        _confirm_production(mturk, f"Approve and pay ${format_money(total)}?", yes)
    outcomes = _run_payments(
        lambda on_outcome: ledger.approve_assignments(
            client,
            mturk.context.session_factory,
            mturk.study.experiment_id,
            planned,
            mturk.section.approval_feedback,
            dry_run,
            on_outcome,
        )
    )
    problems = grant_exclusions(mturk, client, dry_run)
    _report_payments("reward(s)", outcomes, dry_run)
    for problem in problems:
        click.echo(f"Could not exclude {problem}")
    if any(outcome.result == "failed" for outcome in outcomes) or problems:
        raise click.exceptions.Exit(1)


def _run_payments(
    run: Callable[
        [Callable[[ledger.PaymentOutcome], None]], list[ledger.PaymentOutcome]
    ],
) -> list[ledger.PaymentOutcome]:
    """Run a ledger operation. On an interruption, report what was done and exit."""
    done: list[ledger.PaymentOutcome] = []
    try:
        return run(done.append)
    except ledger.PaymentInterrupted as error:
        _report_payments("payment(s)", done, dry_run=False)
        raise click.ClickException(str(error)) from None


def _report_payments(
    noun: str, outcomes: list[ledger.PaymentOutcome], dry_run: bool
) -> None:
    counts = Counter(outcome.result for outcome in outcomes)
    sums: dict[str, Decimal] = {}
    for outcome in outcomes:
        sums[outcome.result] = (
            sums.get(outcome.result, Decimal("0.00")) + outcome.amount
        )
    labels = [
        ("paid", "paid now"),
        ("recorded", "already paid on MTurk, now in the ledger"),
        ("already_paid", "paid earlier"),
        ("would_pay", "would be paid"),
        ("would_record", "paid on MTurk, would be added to the ledger"),
        ("skipped", "skipped"),
        ("failed", "failed"),
    ]
    for result, label in labels:
        if counts[result]:
            click.echo(
                f"  {counts[result]} {noun} {label}: ${format_money(sums[result])}"
            )
    for outcome in outcomes:
        noteworthy = bool(outcome.message) and outcome.result != "recorded"
        if outcome.result == "failed" or noteworthy:
            click.echo(
                f"  {outcome.purpose} ({outcome.worker_id}): {outcome.result}, "
                f"{outcome.message}"
            )
    if dry_run:
        click.echo("Dry run: nothing was written or paid.")


# --- bonuses ------------------------------------------------------------------------


@mturk_group.command("give-first-trial-bonus")
@click.argument("amount", required=False)
@_payment_options
@database_options
@experiment_option
@pass_options
def give_first_trial_bonus_command(
    options: MTurkOptions,
    amount: str | None,
    dry_run: bool,
    yes: bool,
    database_url: str | None,
    experiment: str | None,
) -> None:
    """Pay each worker one bonus of AMOUNT US dollars for their first assignment.

    The first assignment takes longer (consent, screening, surveys). AMOUNT
    defaults to the config's first_hit_bonus.
    """
    mturk = open_mturk_study(options, database_url, experiment)
    bonus = _bonus_amount(amount, mturk.section.first_hit_bonus, "AMOUNT")
    client = mturk.client()
    statuses = {item.id: item.status for item in study_assignments(mturk, client)}
    with mturk.context.session_factory() as session:
        participants = _without_flagged(_completed_participants(session, mturk), mturk)
        already = {
            payment.purpose
            for payment in session.scalars(
                select(Payment).where(
                    Payment.experiment_id == mturk.study.experiment_id,
                    Payment.purpose.like("first_hit_bonus:%"),
                )
            )
        }
    planned = plan_first_trial_bonuses(
        participants, statuses, bonus, mturk.section.first_hit_bonus_reason, already
    )
    _pay(mturk, client, planned, dry_run, yes)


def plan_first_trial_bonuses(
    participants: list[Participant],
    statuses: dict[str, str],
    amount: Decimal,
    reason: str,
    already_planned: set[str],
) -> list[ledger.PlannedPayment]:
    """Plan one bonus per worker, for their first completed, submitted assignment.

    ``participants`` are completed sessions in the order they finished, and
    ``statuses`` maps assignment IDs to MTurk's status. Workers whose bonus is
    in the ledger already keep their planned purpose, so the ledger decides.
    A participant without a worker ID or an assignment ID gets no bonus.
    """
    planned: dict[str, ledger.PlannedPayment] = {}
    for participant in participants:
        worker = participant.external_id
        assignment_id = participant.external_data.get("assignmentId")
        if worker is None or assignment_id is None:
            continue
        purpose = f"first_hit_bonus:{worker}"
        if worker in planned:
            continue
        if (
            purpose not in already_planned
            and statuses.get(assignment_id) not in SUBMITTED_STATUSES
        ):
            continue
        planned[worker] = ledger.PlannedPayment(
            purpose=purpose,
            kind=ledger.BONUS,
            worker_id=worker,
            assignment_id=assignment_id,
            amount=amount,
            reason=reason,
            participant_id=participant.id,
        )
    return list(planned.values())


@mturk_group.command("give-pairwise-consistency-bonus")
@click.option(
    "--max-bonus",
    default=None,
    help="Bonus in US dollars for a consistency of 1 [default: max_consistency_bonus].",
)
@click.option(
    "--min-threshold",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Consistency above which a bonus is paid "
    "[default: min_consistency_threshold_for_bonus].",
)
@_payment_options
@database_options
@experiment_option
@pass_options
def give_consistency_bonus_command(
    options: MTurkOptions,
    max_bonus: str | None,
    min_threshold: float | None,
    dry_run: bool,
    yes: bool,
    database_url: str | None,
    experiment: str | None,
) -> None:
    """Pay a bonus for each assignment whose responses were consistent.

    The bonus is MAX x (c - T) / (1 - T) for a consistency c above the
    threshold T, rounded half up to the cent. Consistency comes from the
    plugins that implement the participant_consistency hook (the pairwise
    plugin for pairwise comparison studies).
    """
    mturk = open_mturk_study(options, database_url, experiment)
    maximum = _bonus_amount(
        max_bonus, mturk.section.max_consistency_bonus, "--max-bonus"
    )
    threshold = (
        min_threshold
        if min_threshold is not None
        else mturk.section.min_consistency_threshold_for_bonus
    )
    client = mturk.client()
    statuses = {item.id: item.status for item in study_assignments(mturk, client)}
    with mturk.context.session_factory() as session:
        scores = collect_consistency(mturk.study, session)
        participants = _without_flagged(_completed_participants(session, mturk), mturk)
    planned = []
    unscored = 0
    for participant in participants:
        consistency = scores.get(participant.id)
        if consistency is None:
            unscored += 1
            continue
        amount = consistency_bonus(consistency, maximum, threshold)
        assignment_id = participant.external_data["assignmentId"]
        if amount <= 0 or statuses.get(assignment_id) not in SUBMITTED_STATUSES:
            continue
        planned.append(
            ledger.PlannedPayment(
                purpose=f"consistency_bonus:{assignment_id}",
                kind=ledger.BONUS,
                worker_id=participant.external_id,
                assignment_id=assignment_id,
                amount=amount,
                reason=f"{mturk.section.consistency_bonus_reason} Consistency: {consistency:.2f}.",
                participant_id=participant.id,
            )
        )
    if unscored:
        click.echo(
            f"Note: {unscored} completed participant(s) have no consistency score."
        )
    _pay(mturk, client, planned, dry_run, yes)


def consistency_bonus(
    consistency: float, maximum: Decimal, threshold: float
) -> Decimal:
    """Return MAX x (c - T) / (1 - T) for c > T, else 0, rounded half up to the cent.

    Half cents round up, in the worker's favour. The values enter as their
    shortest decimal form, so 0.85 is exactly 0.85.
    """
    c = Decimal(repr(float(consistency)))
    t = Decimal(repr(float(threshold)))
    if c <= t:
        return Decimal("0.00")
    raw = maximum * (c - t) / (Decimal(1) - t)
    return raw.quantize(CENT, rounding=ROUND_HALF_UP)


def collect_consistency(study: Study, session: Session) -> dict[int, float]:
    """Merge the participant_consistency results of every plugin that scores the study."""
    try:
        merged = participant_consistency(study, session)
    except ServiceError as error:
        raise click.ClickException(str(error)) from None
    if merged is None:
        raise click.ClickException(
            f"No plugin scores the consistency of test type {study.config.core.test_type!r}; "
            "the pairwise plugin scores pairwise comparison studies."
        )
    return merged


def _bonus_amount(value: str | None, default: Decimal, name: str) -> Decimal:
    if value is None:
        amount = default
    else:
        try:
            amount = parse_money(value, name)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=name) from None
    if amount <= 0:
        raise click.BadParameter(
            f"{name} must be more than 0.00 (got {value or default}).", param_hint=name
        )
    return amount


def _pay(
    mturk: MTurkStudy,
    client: Any,
    planned: list[ledger.PlannedPayment],
    dry_run: bool,
    yes: bool,
) -> None:
    total = sum((payment.amount for payment in planned), Decimal("0.00"))
    fees = sum((mturk_fee(payment.amount) for payment in planned), Decimal("0.00"))
    click.echo(
        f"{len(planned)} bonus(es) planned on {mturk.target.describe()}: "
        f"${format_money(total)} plus about ${format_money(fees)} in MTurk fees "
        "(bonuses paid earlier are skipped)."
    )
    if planned and not dry_run:
        _confirm_production(mturk, f"Pay up to ${format_money(total)} in bonuses?", yes)
    outcomes = _run_payments(
        lambda on_outcome: ledger.pay_bonuses(
            client,
            mturk.context.session_factory,
            mturk.study.experiment_id,
            planned,
            dry_run,
            on_outcome,
        )
    )
    _report_payments("bonus(es)", outcomes, dry_run)
    if any(outcome.result == "failed" for outcome in outcomes):
        raise click.exceptions.Exit(1)


# --- status and balance ----------------------------------------------------------------


@mturk_group.command("status")
@database_options
@experiment_option
@pass_options
def status_command(
    options: MTurkOptions, database_url: str | None, experiment: str | None
) -> None:
    """Print the study's HITs, assignments by status, money owed and paid, and the balance."""
    mturk = open_mturk_study(options, database_url, experiment)
    client = mturk.client()
    with mturk.context.session_factory() as session:
        rows = mturk.hit_rows(session)
        by_status = Counter(row.status for row in rows)
        totals = ledger.ledger_totals(session, mturk.study.experiment_id)
    on_mturk = {hit["HITId"]: hit for hit in _posted_hits(mturk, client).values()}
    hit_states = Counter(
        on_mturk[row.external_id]["HITStatus"]
        if row.external_id in on_mturk
        else "Disposed"
        for row in rows
        if row.status in (CREATED, DISPOSED)
    )
    assignments = study_assignments(mturk, client)
    assignment_states = Counter(item.status for item in assignments)
    owed = sum(
        (item.reward for item in assignments if item.status == "Submitted"),
        Decimal("0.00"),
    )

    click.echo(f"Study {mturk.study.name} on {mturk.target.describe()}")
    click.echo(
        f"HITs: {len(rows)} recorded ("
        + ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
        + ")"
        if rows
        else "HITs: none yet"
    )
    if hit_states:
        click.echo(
            "  on MTurk: "
            + ", ".join(
                f"{state} {count}" for state, count in sorted(hit_states.items())
            )
        )
    click.echo(
        "Assignments: "
        + (
            ", ".join(
                f"{state} {count}" for state, count in sorted(assignment_states.items())
            )
            or "none submitted yet"
        )
    )
    click.echo(
        f"Paid: ${format_money(totals.paid_rewards)} in rewards, "
        f"${format_money(totals.paid_bonuses)} in bonuses"
    )
    click.echo(
        f"Owed: ${format_money(owed)} in rewards of "
        f"{assignment_states['Submitted']} submitted assignment(s) awaiting approval"
    )
    if totals.unsettled_rows:
        click.echo(
            f"Unsettled: {totals.unsettled_rows} ledger row(s), "
            f"${format_money(totals.unsettled)} (pending or failed; rerun the paying command)"
        )
    _echo_balance(client)


@mturk_group.command("balance")
@database_options
@experiment_option
@pass_options
def balance_command(
    options: MTurkOptions, database_url: str | None, experiment: str | None
) -> None:
    """Print the requester account's balance.

    With --database-url (or DATABASE_URL) or --experiment, also print the
    study's unsettled ledger rows.
    """
    try:
        target = resolve_target(options.production, options.debug, options.endpoint_url)
    except MTurkSetupError as error:
        raise click.ClickException(str(error)) from None
    try:
        client = make_client(target, options.profile, options.max_attempts)
    except MTurkSetupError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Account on {target.describe()}")
    _echo_balance(client)
    if database_url is None and experiment is None:
        return
    mturk = open_mturk_study(options, database_url, experiment)
    with mturk.context.session_factory() as session:
        totals = ledger.ledger_totals(session, mturk.study.experiment_id)
    click.echo(
        f"Study {mturk.study.name}: ${format_money(totals.unsettled)} in "
        f"{totals.unsettled_rows} unsettled ledger row(s)"
    )


def _echo_balance(client: Any) -> None:
    try:
        balance = client.get_account_balance()
    except (botocore.exceptions.ClientError, *UNCERTAIN_ERROR_TYPES) as error:
        raise _fail("Could not read the account balance", error) from None
    line = f"Available balance: ${balance['AvailableBalance']}"
    if balance.get("OnHoldBalance"):
        line += f" (on hold: ${balance['OnHoldBalance']})"
    click.echo(line)
