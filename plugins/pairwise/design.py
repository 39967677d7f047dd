"""Plan which system pairs a participant judges, in which A/B order and sequence.

The design is a function of the participant's sequence number (0, 1, 2, ... in
order of arrival) and a study seed, so the server can rebuild any participant's
trials without storing them, and a study can be replayed exactly.

Balance across participants comes from one study-wide shuffled list of all
unordered pairs, read as a ring. Participant ``k`` with ``m`` pairs gets ring
slots ``k*m`` to ``k*m + m - 1``. Over participants ``0 .. N-1`` the slots
cover the ring evenly, so every pair is planned ``floor(N*m/P)`` or
``ceil(N*m/P)`` times, where ``P`` is the number of pairs. Slot ``s`` is the
``s // P``-th showing of its pair. Its A/B order alternates with that count,
starting from a seeded side per pair, so every pair is shown A-first in exactly
half of its showings when that number is even.

Balance counts planned showings. A participant who leaves early leaves the
counts of the pairs in their slice one short, because the next sequence number
gets the next slice, not the abandoned one.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Distinct SeedSequence streams for the study-wide ring and the per-participant
# choices, so that neither depends on how many numbers the other draws.
_RING_STREAM = 0
_PARTICIPANT_STREAM = 1

# Maximum number of trial orders drawn before giving up on keeping each repeat
# away from the trial right after its first showing. In simulations of 2 to 8
# pairs with any number of repeats, 1/3 or more of the draws succeeded.
_MAX_ORDER_DRAWS = 200


@dataclass(frozen=True)
class PlannedPair:
    """One planned trial: two systems in the order shown.

    ``a`` is played as A (first, or on the left) and ``b`` as B. ``pair_key`` is
    the canonical unordered key from :func:`pair_key`, the same for both orders.
    ``repeat`` is true for the second, swapped showing of a pair that the
    participant already judged, used to measure consistency.
    """

    a: str
    b: str
    pair_key: tuple[str, str]
    repeat: bool


def pair_key(system_x: str, system_y: str) -> tuple[str, str]:
    """Return the canonical key of an unordered pair: both names, sorted."""
    if system_x == system_y:
        raise ValueError(f"a pair needs two different systems, got {system_x!r} twice")

    return (system_x, system_y) if system_x < system_y else (system_y, system_x)


def all_pairs(systems: Sequence[str]) -> list[tuple[str, str]]:
    """Return every unordered pair of ``systems`` as canonical keys, sorted."""
    names = _validate_systems(systems)

    return list(itertools.combinations(names, 2))


def design_for_participant(
    systems: Sequence[str],
    participant_index: int,
    seed: int,
    pairs_per_participant: int | None = None,
    repeats: int = 0,
) -> list[PlannedPair]:
    """Plan the pairwise trials of one participant for one item.

    :param systems: names of the item's systems; their order does not matter.
    :param participant_index: the participant's sequence number, 0 for the first.
    :param seed: study seed, a non-negative integer. Pass a different seed per
        item if the items should not share one ring and one A/B schedule.
    :param pairs_per_participant: number of distinct pairs each participant
        judges, from 1 to the number of pairs. ``None`` plans all pairs.
    :param repeats: number of the participant's pairs shown a second time with
        A and B swapped, from 0 to the number of distinct pairs.
    :returns: the trials in the order to show them: the distinct pairs and the
        repeats, shuffled with a generator seeded by ``seed`` and
        ``participant_index``. Each repeat comes after its first showing and,
        when the participant has two or more pairs, not directly after it.
    :raises ValueError: if an argument is out of range; the message names it.
    """
    names = _validate_systems(systems)
    pairs = list(itertools.combinations(names, 2))
    n_pairs = len(pairs)
    per_participant = _validate_pair_count(pairs_per_participant, n_pairs, names)
    _validate_non_negative_int("participant_index", participant_index)
    _validate_non_negative_int("seed", seed)
    _validate_non_negative_int("repeats", repeats)
    if repeats > per_participant:
        raise ValueError(
            f"repeats={repeats} exceeds the {per_participant} distinct pairs a "
            f"participant judges; set repeats to at most {per_participant}"
        )

    ring_rng = np.random.default_rng([seed, _RING_STREAM])
    ring = ring_rng.permutation(n_pairs)
    first_side = ring_rng.integers(0, 2, size=n_pairs)

    first_showings = []
    first_slot = participant_index * per_participant
    for slot in range(first_slot, first_slot + per_participant):
        position = slot % n_pairs
        showing = slot // n_pairs
        low, high = pairs[ring[position]]
        if (showing + first_side[position]) % 2 == 0:
            first_showings.append(PlannedPair(low, high, (low, high), repeat=False))
        else:
            first_showings.append(PlannedPair(high, low, (low, high), repeat=False))

    participant_rng = np.random.default_rng(
        [seed, _PARTICIPANT_STREAM, participant_index]
    )
    repeated = participant_rng.choice(per_participant, size=repeats, replace=False)
    swapped = []
    for index in repeated:
        first = first_showings[index]
        swapped.append(PlannedPair(first.b, first.a, first.pair_key, repeat=True))
    order = _draw_trial_order(per_participant, repeated, participant_rng)
    trials = first_showings + swapped

    return [trials[i] for i in order]


def _draw_trial_order(
    n_distinct: int, repeated: np.ndarray, rng: np.random.Generator
) -> list[int]:
    """Draw a trial order in which each repeat follows its first showing.

    Indices below ``n_distinct`` are first showings, and index
    ``n_distinct + k`` is the repeat of first showing ``repeated[k]``. The
    order is uniform among the orders where every repeat comes later than its
    first showing and, when ``n_distinct >= 2``, not directly after it.
    """
    n_trials = n_distinct + len(repeated)
    for _ in range(_MAX_ORDER_DRAWS):
        position = rng.permutation(n_trials)
        adjacent = False
        for k, original in enumerate(repeated):
            copy = n_distinct + k
            if position[copy] < position[original]:
                position[copy], position[original] = position[original], position[copy]
            if position[copy] == position[original] + 1:
                adjacent = True
        if not adjacent or n_distinct < 2:
            order = np.empty(n_trials, dtype=int)
            order[position] = np.arange(n_trials)
            return order.tolist()

    raise RuntimeError(
        f"failed to find a trial order for {n_distinct} pairs and {len(repeated)} "
        f"repeats that keeps every repeat apart from its first showing in "
        f"{_MAX_ORDER_DRAWS} draws; use another seed"
    )


def _validate_systems(systems: Sequence[str]) -> list[str]:
    if isinstance(systems, str):
        raise TypeError(
            f"systems must be a list of system names, got the string {systems!r}"
        )
    names = list(systems)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"invalid system name {name!r}: every name must be a non-empty str"
            )
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate system names {duplicates}; list each system once")
    if len(names) < 2:
        raise ValueError(f"a pairwise comparison needs at least 2 systems, got {names}")

    return sorted(names)


def _validate_pair_count(
    pairs_per_participant: int | None, n_pairs: int, names: list[str]
) -> int:
    if pairs_per_participant is None:
        return n_pairs
    _validate_non_negative_int("pairs_per_participant", pairs_per_participant)
    if not 1 <= pairs_per_participant <= n_pairs:
        raise ValueError(
            f"pairs_per_participant={pairs_per_participant} is out of range: "
            f"{len(names)} systems make {n_pairs} pairs, so use 1 to {n_pairs}, "
            f"or None for all pairs"
        )

    return operator.index(pairs_per_participant)


def _validate_non_negative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be 0 or greater, got {value}")
