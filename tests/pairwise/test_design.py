from collections import Counter

import pytest
from caqe_pairwise.design import (
    PlannedPair,
    all_pairs,
    design_for_participant,
    pair_key,
)
from hypothesis import given
from hypothesis import strategies as st


@st.composite
def study_designs(draw, max_systems=8, max_participants=40):
    """Draw systems, a pair count per participant and a number of participants."""
    n_systems = draw(st.integers(2, max_systems))
    systems = [f"system_{i}" for i in range(n_systems)]
    n_pairs = n_systems * (n_systems - 1) // 2
    per_participant = draw(st.none() | st.integers(1, n_pairs))
    n_participants = draw(st.integers(1, max_participants))
    seed = draw(st.integers(0, 2**32 - 1))
    return systems, per_participant, n_participants, seed


def first_showings(systems, per_participant, n_participants, seed, repeats=0):
    """Return every participant's trials that are not repeats, concatenated."""
    trials = []
    for index in range(n_participants):
        design = design_for_participant(
            systems, index, seed, pairs_per_participant=per_participant, repeats=repeats
        )
        trials.extend(trial for trial in design if not trial.repeat)
    return trials


def test_pair_key_is_order_free():
    assert pair_key("b", "a") == ("a", "b")
    assert pair_key("a", "b") == ("a", "b")


def test_pair_key_rejects_same_system():
    with pytest.raises(ValueError, match="'a' twice"):
        pair_key("a", "a")


def test_all_pairs_lists_each_pair_once():
    pairs = all_pairs(["c", "a", "b"])

    assert pairs == [("a", "b"), ("a", "c"), ("b", "c")]


def test_default_design_shows_every_pair_once():
    systems = ["ref", "mp3_low", "mp3_high", "opus_low", "opus_high"]

    design = design_for_participant(systems, participant_index=3, seed=11)

    assert len(design) == 10
    assert sorted(trial.pair_key for trial in design) == all_pairs(systems)
    assert not any(trial.repeat for trial in design)
    for trial in design:
        assert pair_key(trial.a, trial.b) == trial.pair_key


@given(study_designs())
def test_subsets_balance_pair_counts(design):
    systems, per_participant, n_participants, seed = design

    trials = first_showings(systems, per_participant, n_participants, seed)

    counts = Counter(trial.pair_key for trial in trials)
    per_pair = [counts[key] for key in all_pairs(systems)]
    expected_total = n_participants * (per_participant or len(per_pair))
    assert sum(per_pair) == expected_total
    assert max(per_pair) - min(per_pair) <= 1


@given(study_designs())
def test_order_counterbalanced_per_pair(design):
    systems, per_participant, n_participants, seed = design

    trials = first_showings(systems, per_participant, n_participants, seed)

    showings = Counter(trial.pair_key for trial in trials)
    low_first = Counter(trial.pair_key for trial in trials if trial.a < trial.b)
    for key, count in showings.items():
        if count % 2 == 0:
            assert low_first[key] == count // 2, key
        else:
            assert abs(2 * low_first[key] - count) == 1, key


@given(study_designs(max_participants=6), st.data())
def test_repeats_are_swapped_later_copies(design, data):
    systems, per_participant, n_participants, seed = design
    n_distinct = per_participant or len(systems) * (len(systems) - 1) // 2
    repeats = data.draw(st.integers(0, n_distinct))

    for index in range(n_participants):
        trials = design_for_participant(
            systems, index, seed, pairs_per_participant=per_participant, repeats=repeats
        )

        originals = [t for t in trials if not t.repeat]
        copies = [t for t in trials if t.repeat]
        assert len(originals) == n_distinct
        assert len(copies) == repeats
        assert len({t.pair_key for t in originals}) == n_distinct
        assert len({t.pair_key for t in copies}) == repeats
        position = {(t.pair_key, t.repeat): i for i, t in enumerate(trials)}
        for copy in copies:
            first = trials[position[(copy.pair_key, False)]]
            assert (copy.a, copy.b) == (first.b, first.a)
            gap = position[(copy.pair_key, True)] - position[(copy.pair_key, False)]
            assert gap >= 1
            if n_distinct >= 2:
                assert gap >= 2, "repeat directly follows its first showing"


@given(study_designs(max_participants=4), st.data())
def test_design_is_reproducible(design, data):
    systems, per_participant, _, seed = design
    index = data.draw(st.integers(0, 1000))
    shuffled = data.draw(st.permutations(systems))
    n_distinct = per_participant or len(systems) * (len(systems) - 1) // 2
    repeats = data.draw(st.integers(0, n_distinct))

    first = design_for_participant(systems, index, seed, per_participant, repeats)
    again = design_for_participant(shuffled, index, seed, per_participant, repeats)

    assert first == again


def test_trial_order_differs_between_participants():
    systems = [f"s{i}" for i in range(6)]

    orders = {
        tuple(t.pair_key for t in design_for_participant(systems, index, seed=5))
        for index in range(20)
    }

    assert len(orders) > 15


def test_seed_changes_design():
    systems = [f"s{i}" for i in range(6)]

    first = design_for_participant(systems, 0, seed=1, pairs_per_participant=4)
    other = design_for_participant(systems, 0, seed=2, pairs_per_participant=4)

    assert first != other


def test_single_pair_repeat_follows_directly():
    trials = design_for_participant(["x", "y"], 0, seed=0, repeats=1)

    assert trials[0].repeat is False
    assert trials[1] == PlannedPair(trials[0].b, trials[0].a, ("x", "y"), True)


@pytest.mark.parametrize(
    ("systems", "kwargs", "message"),
    [
        (["a"], {}, "at least 2 systems"),
        (["a", "b", "a"], {}, r"duplicate system names \['a'\]"),
        (["a", ""], {}, "invalid system name ''"),
        (["a", "b", "c"], {"pairs_per_participant": 4}, "use 1 to 3"),
        (["a", "b", "c"], {"pairs_per_participant": 0}, "use 1 to 3"),
        (["a", "b", "c"], {"pairs_per_participant": 2, "repeats": 3}, "at most 2"),
        (["a", "b", "c"], {"repeats": -1}, "repeats must be 0 or greater"),
        (["a", "b", "c"], {"participant_index": -1}, "participant_index must be"),
        (["a", "b", "c"], {"seed": -5}, "seed must be 0 or greater"),
    ],
)
def test_invalid_arguments_raise(systems, kwargs, message):
    arguments = {"participant_index": 0, "seed": 0} | kwargs

    with pytest.raises(ValueError, match=message):
        design_for_participant(systems, **arguments)


def test_string_systems_raise_type_error():
    with pytest.raises(TypeError, match="list of system names"):
        design_for_participant("abc", 0, 0)


def test_bool_index_raises_type_error():
    with pytest.raises(TypeError, match="participant_index must be an int"):
        design_for_participant(["a", "b"], True, 0)
