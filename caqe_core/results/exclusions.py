"""The core's exclusion rules: screening failures, quality flags and gold answers.

Test types add their own post-screening (such as the MUSHRA hidden-reference
rule) from their ``report_sections`` hook with ``StudyData.exclude``. The
live dashboard applies the rules that need no test type, through
``participant_reasons``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class ExclusionRules:
    """Switches and limits of the core's exclusion rules."""

    screening: bool = True
    """Exclude participants who were screened out or whose last attempt of a
    screening step failed."""
    flags: bool = True
    """Exclude participants with a quality flag, except ``allowed_flags``."""
    allowed_flags: frozenset[str] = field(default_factory=frozenset)
    gold_min_correct: float = 0.8
    """Minimum share of correct gold answers. A gold answer is a ratings row
    with ``gold`` true, a rating or judgement with a known right answer, and
    ``correct`` tells whether it was right. Test types that export no
    ``gold`` and ``correct`` columns have no gold answers."""
    incomplete: bool = False
    """Exclude participants who did not complete the study."""

    def describe(self) -> list[str]:
        """Return the rules as sentences for the report."""
        lines = []
        if self.screening:
            lines.append(
                "Participants who were screened out, or whose last attempt of a "
                "screening step failed, are excluded."
            )
        if self.flags:
            allowed = (
                f" (except {', '.join(sorted(self.allowed_flags))})"
                if self.allowed_flags
                else ""
            )
            lines.append(f"Participants with a quality flag{allowed} are excluded.")
        lines.append(
            "Participants with less than "
            f"{self.gold_min_correct:.0%} of their gold answers correct are excluded."
        )
        if self.incomplete:
            lines.append("Participants who did not complete the study are excluded.")
        return lines


def participant_reasons(
    rules: ExclusionRules,
    status: str,
    flags: Iterable[str],
    failed_steps: Iterable[str],
    screened_out_at: str | None = None,
) -> list[str]:
    """Return why the core rules exclude one participant (empty: included).

    Each reason reads ``rule: detail``; the report counts participants per rule.

    ``failed_steps`` are the steps whose last attempt failed, and
    ``screened_out_at`` the step that ended the session of a screened-out
    participant, when known.
    """
    reasons: list[str] = []
    if rules.screening:
        if status == "screened_out":
            where = f" at step {screened_out_at!r}" if screened_out_at else ""
            reasons.append(f"screening: screened out{where}")
        for step in failed_steps:
            if step != screened_out_at:
                reasons.append(f"screening: failed step {step!r}")
    if rules.flags:
        for flag in flags:
            if flag not in rules.allowed_flags:
                reasons.append(f"flag: {flag}")
    if rules.incomplete and status != "completed" and status != "screened_out":
        reasons.append(f"incomplete: status {status}")
    return reasons


def core_exclusions(
    participants: pd.DataFrame,
    screening: pd.DataFrame,
    ratings: pd.DataFrame,
    rules: ExclusionRules,
) -> dict[str, list[str]]:
    """Apply the core rules to exported tables; return reasons by participant."""
    failed: dict[str, list[str]] = {}
    if not screening.empty:
        last = (
            screening.sort_values(["participant", "step", "attempt"])
            .groupby(["participant", "step"], sort=False)
            .tail(1)
        )
        failing = last[last["passed"].eq(False).fillna(False).astype(bool)]
        ordered = failing.sort_values(["participant", "created_at"])
        for participant, step in zip(ordered["participant"], ordered["step"]):
            failed.setdefault(participant, []).append(step)

    excluded: dict[str, list[str]] = {}
    for row in participants.itertuples(index=False):
        flags = (
            [flag for flag in (row.flags or "").split("; ") if flag]
            if isinstance(row.flags, str)
            else []
        )
        steps = failed.get(row.participant, [])
        screened_at = steps[-1] if row.status == "screened_out" and steps else None
        reasons = participant_reasons(rules, row.status, flags, steps, screened_at)
        if reasons:
            excluded[row.participant] = reasons

    for participant, reason in gold_failures(ratings, rules.gold_min_correct).items():
        excluded.setdefault(participant, []).append(reason)
    return excluded


def gold_failures(ratings: pd.DataFrame, min_correct: float) -> dict[str, str]:
    """Return a reason for each participant below ``min_correct`` on gold answers."""
    if "gold" not in ratings.columns or "correct" not in ratings.columns:
        return {}
    gold = ratings[ratings["gold"].fillna(False).astype(bool)]
    if gold.empty:
        return {}
    correct = gold["correct"].fillna(False).astype(bool)
    summary = correct.groupby(gold["participant"]).agg(["sum", "count"])
    reasons: dict[str, str] = {}
    for participant, row in summary.iterrows():
        share = row["sum"] / row["count"]
        if share < min_correct:
            reasons[str(participant)] = (
                f"gold: {int(row['sum'])} of {int(row['count'])} gold answers correct "
                f"({share:.0%}), below the minimum of {min_correct:.0%}"
            )
    return reasons


def exclusion_table(
    excluded: dict[str, list[str]], participants: pd.DataFrame
) -> pd.DataFrame:
    """Return one row per excluded participant with their reasons."""
    info: dict[str, Any] = {}
    if not participants.empty:
        info = participants.set_index("participant")[["status", "external_id"]].to_dict(
            "index"
        )
    rows = [
        {
            "participant": participant,
            "external_id": info.get(participant, {}).get("external_id"),
            "status": info.get(participant, {}).get("status"),
            "reasons": "; ".join(reasons),
        }
        for participant, reasons in sorted(excluded.items())
    ]
    return pd.DataFrame(
        rows, columns=["participant", "external_id", "status", "reasons"]
    )
