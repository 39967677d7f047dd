"""The pairwise-comparison test type: pages, responses and exported rows.

A condition is one item judged on one scale, and its page walks the
participant through that item's planned pairs one after another. The page
posts one response with a judgement per pair. One condition per pair would
not work on this core for two reasons:

- The core gives a participant at most one trial of each condition, so a
  repeated pair (shown again later, swapped, to measure consistency) cannot
  be a condition of its own.
- Balance and counterbalancing come from ``design.design_for_participant``,
  which plans a participant's pairs from their arrival index
  (``participant_sequence``). Over participants 0 to N-1 who each judge a
  condition, every pair is planned equally often (within one) and shown
  A-first in exactly half of its showings when that count is even. The
  core's condition assignment then balances pages, not pairs.

Balance is exact when every participant judges every condition
(``assignment.conditions_per_participant`` at least the number of
conditions). When participants get a subset of the conditions, the
participants who judge one condition have arrival indexes with gaps, and
the balance of that condition's pairs is only approximate.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import has_request_context, render_template, request, url_for

from caqe_core import (
    ConditionSpec,
    ConditionView,
    PrepareContext,
    TestType,
    TrialPage,
)

from . import conditions, responses
from .config import REFERENCE_KEY, PairwiseConfig
from .design import design_for_participant

logger = logging.getLogger(__name__)

REFERENCE_SIGNAL = "ref"
"""Signal id of the reference on pages of items that have one."""

DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "demo.yaml"

EXPORT_COLUMNS = {
    "order_shown": "1-based position of the pair on its page.",
    "stimulus_a": "System played as A.",
    "stimulus_b": "System played as B.",
    "choice": "Answer: a, b, or none for no preference.",
    "system": "System chosen; empty for no preference.",
    "value": "Same as choice, for tools that read a value column.",
    "repeat": "True for the second, swapped showing of a pair on the page.",
    "decision_time_ms": "Time from showing the pair to the final answer, in ms.",
    "played_a_seconds": "Seconds A was heard on this pair before the answer.",
    "played_b_seconds": "Seconds B was heard on this pair before the answer.",
    "signal_a": "Page label of A (opaque to the listener).",
    "signal_b": "Page label of B (opaque to the listener).",
    "restored": "True when the page was reloaded and its choices were restored "
    "from the browser's draft; the listening events before the reload are not "
    "stored.",
}


class PairwiseTestType(TestType):
    """Two stimuli, A and B, and a reference where configured: which is better?"""

    name = "pairwise"
    title = "Pairwise comparison"
    config_model = PairwiseConfig
    event_types = TestType.event_types | {"pair", "choice"}
    export_columns = EXPORT_COLUMNS

    def demo_config(self) -> Path | None:
        return DEMO_CONFIG

    def build_conditions(self, context: PrepareContext) -> list[ConditionSpec]:
        return conditions.build_conditions(context)

    def plan_trial(
        self, condition: ConditionView, rng: random.Random, participant_sequence: int
    ) -> dict[str, Any]:
        """Plan a participant's pairs of one condition and label their signals.

        The pairs and their A/B order come from ``design_for_participant``
        with the participant's arrival index and the condition's design
        seed. Each system the participant hears gets a label ``s1``, ``s2``,
        ... in an order shuffled with ``rng``, so a label reveals nothing about
        the system. The reference, when the item has one, is ``ref``.
        """
        data = condition.data
        planned = design_for_participant(
            data["systems"],
            participant_sequence,
            data["design_seed"],
            pairs_per_participant=data["pairs_per_participant"],
            repeats=data["repeats"],
        )
        shown = sorted({pair.a for pair in planned} | {pair.b for pair in planned})
        rng.shuffle(shown)
        labels = {system: f"s{number}" for number, system in enumerate(shown, start=1)}

        signals = []
        if REFERENCE_KEY in condition.stimuli:
            signals.append({"id": REFERENCE_SIGNAL, "stimulus": REFERENCE_KEY})
        signals += [{"id": labels[system], "stimulus": system} for system in shown]
        pairs = [
            {"a": labels[pair.a], "b": labels[pair.b], "repeat": pair.repeat}
            for pair in planned
        ]
        return {
            "signals": signals,
            "pairs": pairs,
            "participant_sequence": participant_sequence,
        }

    def render_trial(self, page: TrialPage) -> str:
        section: PairwiseConfig = page.section
        data = page.condition.data
        reference = None
        if REFERENCE_SIGNAL in page.signal_urls:
            reference = {
                "id": REFERENCE_SIGNAL,
                "url": page.signal_urls[REFERENCE_SIGNAL],
            }
        settings = {
            "reference": reference,
            "signals": [
                {"id": signal["id"], "url": page.signal_urls[signal["id"]]}
                for signal in page.plan["signals"]
                if signal["id"] != REFERENCE_SIGNAL
            ],
            # The repeat flags stay on the server: the listener must not know
            # which pairs are repeats.
            "pairs": [{"a": pair["a"], "b": pair["b"]} for pair in page.plan["pairs"]],
            "submitUrl": page.submit_url,
            "csrfToken": page.csrf_token,
            "minPlaySeconds": section.min_play_seconds,
            "requireBothPlayed": section.require_both_played,
            "allowNoPreference": section.allow_no_preference,
            "fadeMs": section.fade_ms,
        }
        return render_template(
            "caqe_pairwise/trial.html",
            page=page,
            question=data.get("question") or section.question,
            description=data.get("description") or "",
            pair_count=len(page.plan["pairs"]),
            has_reference=reference is not None,
            allow_no_preference=section.allow_no_preference,
            settings=settings,
            static=_static_urls(),
        )

    def validate_response(self, page: TrialPage, response: Any) -> dict[str, Any]:
        """Check the judgements of one page and return what is stored.

        See :mod:`caqe_pairwise.responses` for the response's shape and the
        checks. The listening events come from the request body, because
        the core passes only the response to this method.
        """
        return responses.validate_response(
            page.section, page.plan, response, _posted_events()
        )

    def export_rows(self, trial: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Return one row per judgement of a stored trial, in the order shown.

        The columns are described in :data:`EXPORT_COLUMNS`; the core adds
        the participant, condition, item, scale and trial columns.
        """
        condition: ConditionView = trial["condition"]
        return judgement_rows(
            condition.item, condition.scale, trial["plan"], trial["response"]
        )


def judgement_rows(
    item: str,
    scale: str | None,
    plan: Mapping[str, Any],
    response: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Turn one stored page into rows with the columns of :data:`EXPORT_COLUMNS`."""
    systems = {signal["id"]: signal["stimulus"] for signal in plan["signals"]}
    rows = []
    for judgement in response["judgements"]:
        index = judgement["pair"]
        pair = plan["pairs"][index]
        stimulus_a = systems[pair["a"]]
        stimulus_b = systems[pair["b"]]
        choice = judgement["choice"]
        chosen = {"a": stimulus_a, "b": stimulus_b}.get(choice)
        rows.append(
            {
                "item": item,
                "scale": scale,
                "order_shown": index + 1,
                "stimulus_a": stimulus_a,
                "stimulus_b": stimulus_b,
                "choice": choice,
                "system": chosen,
                "value": choice,
                "repeat": bool(pair["repeat"]),
                "decision_time_ms": float(judgement["decision_time_ms"]),
                "played_a_seconds": float(judgement["played_seconds"]["a"]),
                "played_b_seconds": float(judgement["played_seconds"]["b"]),
                "signal_a": pair["a"],
                "signal_b": pair["b"],
                "restored": bool(response.get("restored", False)),
            }
        )
    return rows


def _posted_events() -> list[Any] | None:
    """Return the listening events of the request being handled, if any.

    Returns None outside a request, or when the body has no event list. The
    core rejects a body whose ``events`` is not a list after this call.
    """
    if not has_request_context():
        return None
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return None
    events = body.get("events", [])
    return events if isinstance(events, list) else None


def _static_urls() -> dict[str, str]:
    return {
        "css": url_for("pairwise.static", filename="pairwise.css"),
        "js": url_for("pairwise.static", filename="pairwise.js"),
        "engine_css": url_for("static", filename="caqe/engine.css"),
    }
