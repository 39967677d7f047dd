"""Live progress of a study, for the admin dashboard and ``caqe status``.

``progress_summary`` returns plain JSON-serialisable data: per-condition
progress, active reservations, the completion rate, the median time per
trial, screening pass rates and the exclusions so far. Exclusions here are
the core rules only (screening, flags); a test type's post-screening runs in
``caqe analyze``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core.assignment import as_utc
from caqe_core.models import (
    Condition,
    Participant,
    Reservation,
    ScreeningResult,
    Trial,
    utcnow,
)
from caqe_core.results.exclusions import ExclusionRules, participant_reasons
from caqe_core.study import Study


def progress_summary(
    session: Session, study: Study, rules: ExclusionRules | None = None
) -> dict[str, Any]:
    """Return the study's progress as JSON-serialisable data.

    ``completion_rate`` is completed participants over all participants who
    started, or None before anyone started. Times are in seconds, from the
    time on page that trial pages report.
    """
    rules = rules or ExclusionRules()
    now = utcnow()
    conditions = session.execute(
        select(
            Condition.id,
            Condition.key,
            Condition.item,
            Condition.scale,
            Condition.target,
        )
        .where(Condition.experiment_id == study.experiment_id)
        .order_by(Condition.position)
    ).all()
    ids = [row.id for row in conditions]

    times: dict[int, list[float]] = {condition_id: [] for condition_id in ids}
    completed: dict[int, int] = dict.fromkeys(ids, 0)
    for condition_id, milliseconds in session.execute(
        select(Trial.condition_id, Trial.time_on_page_ms).where(
            Trial.condition_id.in_(ids)
        )
    ):
        completed[condition_id] += 1
        if milliseconds is not None:
            times[condition_id].append(milliseconds / 1000.0)

    reserved: dict[int, int] = dict.fromkeys(ids, 0)
    for condition_id, expires_at in session.execute(
        select(Reservation.condition_id, Reservation.expires_at).where(
            Reservation.status == "active", Reservation.condition_id.in_(ids)
        )
    ):
        if as_utc(expires_at) >= now:
            reserved[condition_id] += 1

    participants = session.execute(
        select(Participant.id, Participant.status, Participant.flags).where(
            Participant.experiment_id == study.experiment_id
        )
    ).all()
    statuses: dict[str, int] = {}
    for row in participants:
        statuses[row.status] = statuses.get(row.status, 0) + 1

    screening, failed = _screening(session, study)
    all_times = [value for values in times.values() for value in values]
    return {
        "experiment": study.name,
        "title": study.config.core.experiment.title,
        "generated_at": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "conditions": [
            {
                "key": row.key,
                "item": row.item,
                "scale": row.scale,
                "target": row.target,
                "completed": completed[row.id],
                "reserved": reserved[row.id],
                "median_seconds": _median(times[row.id]),
            }
            for row in conditions
        ],
        "participants": statuses,
        "participants_total": len(participants),
        "completion_rate": (
            statuses.get("completed", 0) / len(participants) if participants else None
        ),
        "completed_trials": sum(completed.values()),
        "target_trials": sum(row.target for row in conditions),
        "active_reservations": sum(reserved.values()),
        "median_trial_seconds": _median(all_times),
        "screening": screening,
        "exclusions": _exclusions(participants, failed, rules),
    }


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _screening(
    session: Session, study: Study
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Return pass rates per step and the steps each participant failed last.

    A participant's verdict on a step is that of their last attempt; steps
    without a verdict (``passed`` is None) are left out.
    """
    rows = session.execute(
        select(
            ScreeningResult.participant_id,
            ScreeningResult.step,
            ScreeningResult.attempt,
            ScreeningResult.passed,
        )
        .join(Participant, ScreeningResult.participant_id == Participant.id)
        .where(
            Participant.experiment_id == study.experiment_id,
            ScreeningResult.passed.is_not(None),
        )
        .order_by(ScreeningResult.attempt, ScreeningResult.id)
    ).all()
    last: dict[tuple[int, str], bool] = {}
    for row in rows:
        last[(row.participant_id, row.step)] = bool(row.passed)
    order = list(study.config.core.flow.steps)
    steps = sorted(
        {step for _, step in last},
        key=lambda step: (order.index(step) if step in order else len(order), step),
    )
    summary = []
    failed: dict[int, list[str]] = {}
    for step in steps:
        verdicts = [passed for (_, name), passed in last.items() if name == step]
        passed = sum(verdicts)
        summary.append(
            {
                "step": step,
                "participants": len(verdicts),
                "passed": passed,
                "failed": len(verdicts) - passed,
                "pass_rate": passed / len(verdicts),
            }
        )
    for (participant_id, step), passed in last.items():
        if not passed:
            failed.setdefault(participant_id, []).append(step)
    return summary, failed


def _exclusions(
    participants: Sequence[Any], failed: dict[int, list[str]], rules: ExclusionRules
) -> dict[str, Any]:
    by_rule: dict[str, int] = {}
    excluded = 0
    for row in participants:
        steps = failed.get(row.id, [])
        screened_at = steps[-1] if row.status == "screened_out" and steps else None
        reasons = participant_reasons(
            rules,
            row.status,
            [str(flag) for flag in row.flags or []],
            steps,
            screened_at,
        )
        if not reasons:
            continue
        excluded += 1
        for rule in {reason.split(":", 1)[0] for reason in reasons}:
            by_rule[rule] = by_rule.get(rule, 0) + 1
    return {"participants": excluded, "by_rule": dict(sorted(by_rule.items()))}


def format_progress(summary: dict[str, Any]) -> str:
    """Return ``summary`` as the text that ``caqe status`` prints."""
    lines = []
    statuses = summary["participants"]
    total = summary["participants_total"]
    if total:
        counts = ", ".join(
            f"{status} {count}" for status, count in sorted(statuses.items())
        )
        lines.append(f"Participants: {total} ({counts})")
    else:
        lines.append("Participants: none yet")
    rate = summary["completion_rate"]
    lines.append(
        "Completion rate: "
        + (f"{rate:.0%} of participants who started" if rate is not None else "n/a")
    )
    lines.append(
        f"Trials: {summary['completed_trials']} of {summary['target_trials']} completed, "
        f"{summary['active_reservations']} reserved now"
    )
    median = summary["median_trial_seconds"]
    lines.append(
        "Median time per trial: " + (f"{median:.1f} s" if median is not None else "n/a")
    )
    for step in summary["screening"]:
        lines.append(
            f"Screening {step['step']}: {step['passed']} of {step['participants']} passed "
            f"({step['pass_rate']:.0%})"
        )
    exclusions = summary["exclusions"]
    rules = ", ".join(
        f"{rule} {count}" for rule, count in exclusions["by_rule"].items()
    )
    lines.append(
        f"Excluded so far: {exclusions['participants']}"
        + (f" ({rules})" if rules else "")
    )
    lines.append("")
    width = max((len(row["key"]) for row in summary["conditions"]), default=9)
    width = max(width, len("condition"))
    lines.append(f"{'condition':<{width}}  completed  reserved  target  median s")
    for row in summary["conditions"]:
        median_text = (
            f"{row['median_seconds']:.1f}" if row["median_seconds"] is not None else "-"
        )
        lines.append(
            f"{row['key']:<{width}}  {row['completed']:>9}  {row['reserved']:>8}  "
            f"{row['target']:>6}  {median_text:>8}"
        )
    return "\n".join(lines)
