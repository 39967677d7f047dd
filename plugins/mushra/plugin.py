"""The MUSHRA test type (ITU-R BS.1534-3): pages, responses and exported rows."""

from __future__ import annotations

import logging
import math
import random
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from flask import render_template, url_for

from caqe_core import (
    ConditionSpec,
    ConditionView,
    PrepareContext,
    ResponseError,
    TestType,
    TrialPage,
)

from . import conditions
from .config import MushraConfig

logger = logging.getLogger(__name__)

REFERENCE_SIGNAL = "ref"
"""Signal id of the open reference on every page."""

RATING_MIN = 0.0
RATING_MAX = 100.0

SCALE_LABELS = ("Bad", "Poor", "Fair", "Good", "Excellent")
"""The five intervals of the continuous quality scale, from 0 to 100."""

RESPONSE_KEYS = frozenset({"ratings", "order", "loop", "dropped_events", "restored"})

DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "demo.yaml"


class MushraTestType(TestType):
    """Multi-stimulus test with hidden reference and anchors (ITU-R BS.1534-3)."""

    name = "mushra"
    title = "MUSHRA (ITU-R BS.1534-3)"
    config_model = MushraConfig
    export_columns: ClassVar[dict[str, str]] = {
        "block": "Page of a blocked design, from 1; empty when the item's systems "
        "fit on one page.",
        "system": "Rated stimulus: a system's name, hidden_reference, lowpass_3500, "
        "lowpass_7000 or an extra anchor's name.",
        "role": "hidden_reference, anchor_low (3.5 kHz), anchor_mid (7 kHz), anchor "
        "(from the config) or system.",
        "is_hidden_reference": "True for the hidden reference.",
        "is_anchor": "True for every anchor.",
        "rating": "Rating on the continuous quality scale, 0 (bad) to 100 (excellent).",
        "signal": "Opaque label of the stimulus on the page (s1, s2, ...).",
        "position": "Column of the stimulus on the page, from 1 (left).",
        "restored": "True when the page was reloaded and its ratings were restored "
        "from the browser's draft; the listening events before the reload are "
        "not stored.",
    }
    """Descriptions of the columns ``export_rows`` adds, for the data dictionary."""

    def demo_config(self) -> Path | None:
        return DEMO_CONFIG

    def build_conditions(self, context: PrepareContext) -> list[ConditionSpec]:
        return conditions.build_conditions(context)

    def plan_trial(
        self, condition: ConditionView, rng: random.Random, participant_sequence: int
    ) -> dict[str, Any]:
        """Shuffle the rated signals and label them ``s1`` to ``sN`` in shown order.

        The labels are given after shuffling, so a label reveals nothing about
        the stimulus behind it. The open reference is always ``ref``.
        """
        rated = sorted(
            key
            for key, stimulus in condition.stimuli.items()
            if stimulus.role in conditions.RATED_ROLES
        )
        rng.shuffle(rated)
        signals = [{"id": REFERENCE_SIGNAL, "stimulus": conditions.REFERENCE_KEY}]
        signals += [
            {"id": f"s{position}", "stimulus": key}
            for position, key in enumerate(rated, start=1)
        ]
        return {"signals": signals}

    def render_trial(self, page: TrialPage) -> str:
        section: MushraConfig = page.section
        data = page.condition.data
        rated = rated_signals(page.plan)
        settings = {
            "reference": {
                "id": REFERENCE_SIGNAL,
                "url": page.signal_urls[REFERENCE_SIGNAL],
            },
            "signals": [
                {"id": signal_id, "url": page.signal_urls[signal_id]}
                for signal_id in rated
            ],
            "submitUrl": page.submit_url,
            "csrfToken": page.csrf_token,
            # The core checks that every stimulus of a page has this rate.
            "sampleRate": next(iter(page.condition.stimuli.values())).sample_rate,
            "minPlaySeconds": section.min_play_seconds,
            "fadeMs": section.fade_ms,
        }
        return render_template(
            "caqe_mushra/trial.html",
            page=page,
            question=data.get("question") or section.question,
            description=data.get("description") or "",
            signals=rated,
            scale_labels=SCALE_LABELS,
            settings=settings,
            audio_urls=_audio_urls(settings),
            static=_static_urls(),
        )

    def validate_response(self, page: TrialPage, response: Any) -> dict[str, Any]:
        """Check the ratings of one page and return what is stored.

        The response needs a rating from 0 to 100 for every rated signal of
        the page and nothing else, and ``order``, the signal ids in the order
        the page showed them. ``loop`` (the loop region at submission, or
        null), ``dropped_events`` and ``restored`` (true when ratings came
        from the page's draft after a reload) are optional.
        """
        if not isinstance(response, dict):
            raise ResponseError(
                "response", "must be an object with 'ratings' and 'order'."
            )
        unknown = sorted(set(response) - RESPONSE_KEYS)
        if unknown:
            raise ResponseError(
                f"response.{unknown[0]}",
                f"is not a field of a MUSHRA response; expected {sorted(RESPONSE_KEYS)}.",
            )

        expected = rated_signals(page.plan)
        ratings = _validate_ratings(response.get("ratings"), expected)
        order = _validate_order(response.get("order"), expected)
        cleaned: dict[str, Any] = {
            "ratings": ratings,
            "order": order,
            "loop": _validate_loop(response.get("loop")),
        }
        dropped = response.get("dropped_events", 0)
        if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
            raise ResponseError(
                "response.dropped_events", "must be a non-negative integer."
            )
        if dropped:
            cleaned["dropped_events"] = dropped
        restored = response.get("restored", False)
        if not isinstance(restored, bool):
            raise ResponseError("response.restored", "must be true or false.")
        if restored:
            cleaned["restored"] = True
        return cleaned

    def has_training(self, section: Any) -> bool:
        return bool(section is not None and section.training.enabled)

    def render_training(self, page: TrialPage) -> str:
        from .training import training_examples

        section: MushraConfig = page.section
        rated = rated_signals(page.plan)
        settings = {
            "reference": {
                "id": REFERENCE_SIGNAL,
                "url": page.signal_urls[REFERENCE_SIGNAL],
            },
            "signals": [
                {"id": signal_id, "url": page.signal_urls[signal_id]}
                for signal_id in rated
            ],
            "examples": training_examples(section, page),
            "fadeMs": section.fade_ms,
        }
        return render_template(
            "caqe_mushra/training.html",
            page=page,
            question=page.condition.data.get("question") or section.question,
            instructions=section.training.instructions,
            signals=rated,
            examples=settings["examples"],
            scale_labels=SCALE_LABELS,
            settings=settings,
            static=_static_urls(),
        )

    def export_rows(self, trial: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Return one row per rating of a stored trial.

        The rows have ``item``, ``scale`` and the columns that
        ``export_columns`` describes: ``block``, ``system``, ``role``,
        ``is_hidden_reference``, ``is_anchor``, ``rating``, ``signal``,
        ``position`` and ``restored``.
        """
        condition: ConditionView = trial["condition"]
        response = trial["response"]
        stimuli = {
            signal["id"]: signal["stimulus"] for signal in trial["plan"]["signals"]
        }
        order = response.get("order") or rated_signals(trial["plan"])
        rows = []
        for position, signal_id in enumerate(order, start=1):
            key = stimuli[signal_id]
            role = condition.stimuli[key].role
            rows.append(
                {
                    "item": condition.item,
                    "scale": condition.scale,
                    "block": condition.data.get("block"),
                    "system": key,
                    "role": role,
                    "is_hidden_reference": role == "hidden_reference",
                    "is_anchor": role in conditions.ANCHOR_ROLES,
                    "rating": float(response["ratings"][signal_id]),
                    "signal": signal_id,
                    "position": position,
                    "restored": bool(response.get("restored", False)),
                }
            )
        return rows


def rated_signals(plan: Mapping[str, Any]) -> list[str]:
    """Return the ids of the rated signals of a plan, in the order shown."""
    return [
        signal["id"] for signal in plan["signals"] if signal["id"] != REFERENCE_SIGNAL
    ]


def _audio_urls(settings: Mapping[str, Any]) -> list[str]:
    """Return the page's stimulus URLs in load order, the reference first."""
    return [settings["reference"]["url"]] + [
        signal["url"] for signal in settings["signals"]
    ]


def _static_urls() -> dict[str, Any]:
    names = ("mushra.css", "mushra.js", "training.js")
    urls: dict[str, Any] = {
        name: url_for("mushra.static", filename=name) for name in names
    }
    urls["engine_css"] = url_for("static", filename="caqe/engine.css")
    urls["modules"] = [urls["mushra.js"]] + [
        url_for("static", filename=f"caqe/{name}")
        for name in (
            "audio-engine.js",
            "wav.js",
            "timeline.js",
            "response-queue.js",
            "trial-draft.js",
        )
    ]
    return urls


def _validate_ratings(ratings: Any, expected: list[str]) -> dict[str, float]:
    if not isinstance(ratings, dict):
        raise ResponseError(
            "response.ratings",
            'must be an object of ratings by signal id, such as {"s1": 80}.',
        )
    for signal_id in ratings:
        if signal_id not in expected:
            raise ResponseError(
                f"response.ratings.{signal_id}",
                f"is not a rated signal of this page; the page rates {', '.join(expected)}.",
            )
    cleaned = {}
    for signal_id in expected:
        if signal_id not in ratings:
            raise ResponseError(
                f"response.ratings.{signal_id}",
                "is missing; rate every stimulus of the page.",
            )
        value = ratings[signal_id]
        if not _is_finite_number(value) or not RATING_MIN <= value <= RATING_MAX:
            raise ResponseError(
                f"response.ratings.{signal_id}",
                f"must be a number from {RATING_MIN:g} to {RATING_MAX:g}, "
                f"got {reprlib.repr(value)}.",
            )
        cleaned[signal_id] = float(value)
    return cleaned


def _is_finite_number(value: Any) -> bool:
    """Return True for an int or float that converts to a finite float.

    JSON integers have no size limit, and ``math.isfinite`` raises
    OverflowError on an int beyond the float range (about 1.8e308).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _validate_order(order: Any, expected: list[str]) -> list[str]:
    if (
        not isinstance(order, list)
        or len(order) != len(expected)
        or sorted(map(str, order)) != sorted(expected)
    ):
        raise ResponseError(
            "response.order",
            f"must list each rated signal of the page once ({', '.join(expected)}), "
            "in the order the page showed them.",
        )
    return list(order)


def _validate_loop(loop: Any) -> dict[str, float] | None:
    if loop is None:
        return None
    if not isinstance(loop, dict) or set(loop) != {"start", "end"}:
        raise ResponseError(
            "response.loop",
            "must be null or an object with 'start' and 'end' in seconds.",
        )
    values = {}
    for key in ("start", "end"):
        value = loop[key]
        if not _is_finite_number(value) or value < 0:
            raise ResponseError(
                f"response.loop.{key}", "must be a non-negative number of seconds."
            )
        values[key] = float(value)
    if values["end"] <= values["start"]:
        raise ResponseError("response.loop.end", "must be after response.loop.start.")
    return values
