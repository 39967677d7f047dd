"""Server-side checks of a pairwise page's response.

A response contains one judgement per pair the page showed, in the shape::

    {"judgements": [{"pair": 0, "a": "s2", "b": "s1", "choice": "a",
                     "decision_time_ms": 5210.0,
                     "played_seconds": {"a": 2.4, "b": 1.9}}, ...],
     "dropped_events": 0, "restored": true}

``pair`` is the 0-based index of the pair in the plan, and ``a`` and ``b``
are the signal ids the page played as A and B, which must match the plan.
``played_seconds`` is how long A and B were audible on this pair before the
final choice, as the browser's audio engine measured it. ``dropped_events``
(optional) counts listening events the page left out to stay under the
core's limit. ``restored`` (optional) is true when choices came from the
page's draft after a reload; the listening events before the reload are not
posted.

When choices require listening, the server checks the reported seconds
against ``min_play_seconds`` and also recomputes a lower bound from the
listening events the page posts with the response (see
:func:`heard_seconds_from_events`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from caqe_core import ResponseError

from .config import PairwiseConfig

logger = logging.getLogger(__name__)

CHOICES = ("a", "b", "none")
RESPONSE_KEYS = frozenset({"judgements", "dropped_events", "restored"})
JUDGEMENT_KEYS = frozenset(
    {"pair", "a", "b", "choice", "decision_time_ms", "played_seconds"}
)

EVENT_TOLERANCE_FRACTION = 0.1
EVENT_TOLERANCE_SECONDS = 0.25
"""The listening events may show up to 10 % plus 0.25 s less listening than
``min_play_seconds``. Event times come from the page's clock, but the
engine measures audible time on the audio clock. Each play, stop and switch
also becomes audible about 30 ms after its event, plus the fade, so the two
measures differ slightly."""


def validate_response(
    section: PairwiseConfig,
    plan: Mapping[str, Any],
    response: Any,
    events: Sequence[Any] | None,
) -> dict[str, Any]:
    """Check the judgements of one page and return what is stored.

    ``events`` is the list of listening events posted with the response, or
    None when they are not available; then only the reported seconds are
    checked. Raises ``ResponseError`` naming the field of the first problem.
    """
    if not isinstance(response, dict):
        raise ResponseError(
            "response", "must be an object with 'judgements', one per pair shown."
        )
    unknown = sorted(set(response) - RESPONSE_KEYS)
    if unknown:
        raise ResponseError(
            f"response.{unknown[0]}",
            f"is not a field of a pairwise response; expected {sorted(RESPONSE_KEYS)}.",
        )
    pairs = plan["pairs"]
    judgements = response.get("judgements")
    if not isinstance(judgements, list):
        raise ResponseError(
            "response.judgements",
            f"must be a list with one judgement for each of the {len(pairs)} pairs "
            "shown.",
        )

    cleaned: list[dict[str, Any]] = []
    seen: set[int] = set()
    for position, judgement in enumerate(judgements):
        entry = _validate_judgement(section, pairs, judgement, position)
        if entry["pair"] in seen:
            raise ResponseError(
                f"response.judgements[{position}].pair",
                f"judges pair {entry['pair']} a second time; send one judgement "
                "per pair.",
            )
        seen.add(entry["pair"])
        cleaned.append(entry)
    missing = [index for index in range(len(pairs)) if index not in seen]
    if missing:
        raise ResponseError(
            "response.judgements",
            f"has no judgement of pair {missing[0]}; judge every pair shown "
            f"({len(pairs)} pairs).",
        )
    cleaned.sort(key=lambda entry: entry["pair"])

    if section.require_both_played and events is not None:
        _check_events(section, pairs, cleaned, events)

    stored: dict[str, Any] = {"judgements": cleaned}
    dropped = response.get("dropped_events", 0)
    if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
        raise ResponseError(
            "response.dropped_events", "must be a non-negative integer."
        )
    if dropped:
        stored["dropped_events"] = dropped
    restored = response.get("restored", False)
    if not isinstance(restored, bool):
        raise ResponseError("response.restored", "must be true or false.")
    if restored:
        stored["restored"] = True
    return stored


def _validate_judgement(
    section: PairwiseConfig,
    pairs: Sequence[Mapping[str, Any]],
    judgement: Any,
    position: int,
) -> dict[str, Any]:
    where = f"response.judgements[{position}]"
    if not isinstance(judgement, dict):
        raise ResponseError(where, "must be an object with 'pair' and 'choice'.")
    unknown = sorted(set(judgement) - JUDGEMENT_KEYS)
    if unknown:
        raise ResponseError(
            f"{where}.{unknown[0]}",
            f"is not a field of a judgement; expected {sorted(JUDGEMENT_KEYS)}.",
        )

    index = judgement.get("pair")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ResponseError(f"{where}.pair", "must be the integer index of a pair.")
    if not 0 <= index < len(pairs):
        raise ResponseError(
            f"{where}.pair",
            f"pair {index} was not shown on this page; it showed pairs 0 to "
            f"{len(pairs) - 1}.",
        )
    shown = pairs[index]
    if judgement.get("a") != shown["a"] or judgement.get("b") != shown["b"]:
        raise ResponseError(
            f"{where}.pair",
            f"the pair ({judgement.get('a')!r}, {judgement.get('b')!r}) was not shown "
            f"as pair {index} on this page; reload the page.",
        )

    allowed = CHOICES if section.allow_no_preference else CHOICES[:2]
    choice = judgement.get("choice")
    if choice not in allowed:
        raise ResponseError(
            f"{where}.choice",
            f"must be one of {', '.join(map(repr, allowed))}, got {choice!r}"
            + (
                "; this study has no 'No preference' choice."
                if choice == "none"
                else "."
            ),
        )

    decision = judgement.get("decision_time_ms")
    if not _is_number(decision) or decision < 0:
        raise ResponseError(
            f"{where}.decision_time_ms",
            "must be a non-negative number of milliseconds.",
        )

    played = judgement.get("played_seconds")
    if not isinstance(played, dict) or set(played) != {"a", "b"}:
        raise ResponseError(
            f"{where}.played_seconds",
            "must be an object with the seconds A and B were heard, "
            'such as {"a": 2.1, "b": 1.8}.',
        )
    seconds = {}
    for side in ("a", "b"):
        value = played[side]
        if not _is_number(value) or value < 0:
            raise ResponseError(
                f"{where}.played_seconds.{side}",
                "must be a non-negative number of seconds.",
            )
        seconds[side] = float(value)
        if section.require_both_played and not _heard_enough(
            seconds[side], section.min_play_seconds
        ):
            raise ResponseError(
                f"{where}.played_seconds.{side}",
                f"{side.upper()} of pair {index} was heard for {value:.2f} s before "
                f"the choice; {_requirement(section)}",
            )

    return {
        "pair": index,
        "choice": choice,
        "decision_time_ms": float(decision),
        "played_seconds": seconds,
    }


def heard_seconds_from_events(events: Sequence[Any]) -> dict[tuple[int, str], float]:
    """Sum, per pair and signal, the seconds the events show it playing.

    Events are read in the order sent. ``play`` and ``stop`` start and end
    playback, ``switch`` changes the audible signal to its ``to``, and other
    events carry the audible signal in ``signal``. Each event names its pair
    in ``pair``. The time from one event to the next counts for the audible
    signal while playing, but only up to the pair's last ``choice`` event,
    so listening after the final choice does not count. Malformed events are
    skipped, since the core rejects them after this check.
    """
    timed = [
        event
        for event in events
        if isinstance(event, dict) and _is_number(event.get("time"))
    ]
    last_choice: dict[int, int] = {}
    for position, event in enumerate(timed):
        if event.get("type") == "choice" and _is_index(event.get("pair")):
            last_choice[event["pair"]] = position

    heard: dict[tuple[int, str], float] = defaultdict(float)
    playing = False
    current: str | None = None
    for position, event in enumerate(timed):
        kind = event.get("type")
        if kind == "play":
            playing = True
        elif kind == "stop":
            playing = False
        if kind == "switch":
            current = event.get("to") if isinstance(event.get("to"), str) else current
        elif kind != "choice" and isinstance(event.get("signal"), str):
            current = event["signal"]

        pair = event.get("pair")
        if not playing or current is None or position + 1 >= len(timed):
            continue
        if not _is_index(pair) or position >= last_choice.get(pair, -1):
            continue
        elapsed = (timed[position + 1]["time"] - event["time"]) / 1000
        if elapsed > 0:
            heard[(pair, current)] += elapsed
    return dict(heard)


def _check_events(
    section: PairwiseConfig,
    pairs: Sequence[Mapping[str, Any]],
    judgements: list[dict[str, Any]],
    events: Sequence[Any],
) -> None:
    heard = heard_seconds_from_events(events)
    minimum = section.min_play_seconds
    required = max(
        0.0, minimum * (1 - EVENT_TOLERANCE_FRACTION) - EVENT_TOLERANCE_SECONDS
    )
    for judgement in judgements:
        index = judgement["pair"]
        for side in ("a", "b"):
            signal = pairs[index][side]
            seconds = heard.get((index, signal), 0.0)
            enough = seconds > required if required == 0 else seconds >= required
            if not enough:
                reported = judgement["played_seconds"][side]
                raise ResponseError(
                    "events",
                    f"the listening events show {side.upper()} of pair {index} "
                    f"playing for {seconds:.2f} s before the choice, but the page "
                    f"reported {reported:.2f} s; {_requirement(section)}",
                )


def _heard_enough(seconds: float, minimum: float) -> bool:
    return seconds >= minimum if minimum > 0 else seconds > 0


def _requirement(section: PairwiseConfig) -> str:
    if section.min_play_seconds > 0:
        return (
            f"this study requires {section.min_play_seconds:g} s of each of A and B "
            "before an answer."
        )
    return "this study requires playing both A and B before an answer."


def _is_number(value: Any) -> TypeGuard[int | float]:
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


def _is_index(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
