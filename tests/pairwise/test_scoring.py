import itertools
import logging

import choix
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from caqe_pairwise import scoring
from caqe_pairwise.scoring import (
    DEFAULT_ALPHA,
    bradley_terry,
    consistency,
    plot_scores,
    simulate_judgements,
    thurstone_case_v,
    win_matrix,
)
from hypothesis import given, settings
from hypothesis import strategies as st

SYSTEMS = ["s0", "s1", "s2", "s3", "s4"]
TRUE_STRENGTHS = dict(zip(SYSTEMS, [-1.0, -0.5, 0.0, 0.5, 1.0]))


def judgement_frame(rows):
    """Build judgements from (participant, item, a, b, choice, repeat) tuples."""
    return pd.DataFrame(
        [
            {
                "participant": participant,
                "item": item,
                "scale": "quality",
                "stimulus_a": a,
                "stimulus_b": b,
                "choice": choice,
                "repeat": repeat,
            }
            for participant, item, a, b, choice, repeat in rows
        ]
    )


def choix_pairs(judgements, systems):
    """Convert strict judgements to choix's (winner, loser) list, row by row."""
    index = {name: i for i, name in enumerate(systems)}
    pairs = []
    for row in judgements.itertuples():
        if row.choice == "a":
            pairs.append((index[row.stimulus_a], index[row.stimulus_b]))
        elif row.choice == "b":
            pairs.append((index[row.stimulus_b], index[row.stimulus_a]))
    return pairs


# Win matrix


def test_win_matrix_counts():
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "y", "x", "a", False),
            ("p1", "i1", "x", "z", "b", False),
            ("p2", "i2", "z", "y", "none", False),
            ("p2", "i2", "x", "y", "a", True),
        ]
    )

    wins = win_matrix(judgements, ["x", "y", "z"])

    assert wins.loc["x", "y"] == 2
    assert wins.loc["y", "x"] == 1
    assert wins.loc["z", "x"] == 1
    assert wins.loc["x", "z"] == 0
    assert wins.loc["y", "z"] == 0.5
    assert wins.loc["z", "y"] == 0.5
    assert np.all(np.diag(wins) == 0)
    assert (wins + wins.T).to_numpy().sum() / 2 == len(judgements)


def test_win_matrix_without_repeats():
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "y", "x", "a", True),
        ]
    )

    wins = win_matrix(judgements, ["x", "y"], include_repeats=False)

    assert wins.loc["x", "y"] == 1
    assert wins.loc["y", "x"] == 0


def test_win_matrix_keeps_system_order():
    judgements = judgement_frame([("p1", "i1", "x", "y", "a", False)])

    wins = win_matrix(judgements, ["y", "x"])

    assert list(wins.index) == ["y", "x"]
    assert list(wins.columns) == ["y", "x"]
    assert wins.iloc[1, 0] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.assign(choice="left"), r"invalid choice values \['left'\]"),
        (lambda df: df.assign(stimulus_b="w"), r"not in systems: \['w'\]"),
        (lambda df: df.drop(columns="repeat"), r"missing the columns \['repeat'\]"),
        (lambda df: df.assign(stimulus_b="x"), "compares 'x' with itself"),
        (
            lambda df: df.assign(scale=["quality", "preference"]),
            "contain 2 scales",
        ),
    ],
)
def test_win_matrix_rejects_invalid_judgements(change, message):
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "x", "z", "b", False),
        ]
    )

    with pytest.raises(ValueError, match=message):
        win_matrix(change(judgements), ["x", "y", "z"])


def test_win_matrix_rejects_duplicate_systems():
    judgements = judgement_frame([("p1", "i1", "x", "y", "a", False)])

    with pytest.raises(ValueError, match=r"duplicate system names \['x'\]"):
        win_matrix(judgements, ["x", "y", "x"])


# Bradley–Terry


@pytest.mark.parametrize("alpha", [0.0, DEFAULT_ALPHA, 0.5])
def test_bradley_terry_matches_choix(alpha):
    judgements = simulate_judgements(TRUE_STRENGTHS, 20, 40, seed=3)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=0, alpha=alpha)

    expected = choix.ilsr_pairwise(
        len(SYSTEMS), choix_pairs(judgements, SYSTEMS), alpha=alpha
    )
    np.testing.assert_allclose(scores["score"], expected, atol=1e-7)
    assert abs(scores["score"].mean()) < 1e-12


def test_bradley_terry_matches_likelihood_optimum():
    judgements = simulate_judgements(TRUE_STRENGTHS, 20, 40, seed=4)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=0, alpha=0.0)

    optimum = choix.opt_pairwise(
        len(SYSTEMS), choix_pairs(judgements, SYSTEMS), alpha=0.0, tol=1e-10
    )
    np.testing.assert_allclose(scores["score"], optimum - optimum.mean(), atol=1e-5)


def test_bradley_terry_ties_count_half():
    judgements = simulate_judgements(TRUE_STRENGTHS, 20, 40, seed=5, none_rate=0.2)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=0, alpha=0.0)

    # Doubling every count leaves the maximum likelihood estimate unchanged,
    # so a tie is one win each way and a strict judgement counts twice.
    index = {name: i for i, name in enumerate(SYSTEMS)}
    doubled = choix_pairs(judgements, SYSTEMS) * 2
    for row in judgements[judgements["choice"] == "none"].itertuples():
        doubled.append((index[row.stimulus_a], index[row.stimulus_b]))
        doubled.append((index[row.stimulus_b], index[row.stimulus_a]))
    expected = choix.ilsr_pairwise(len(SYSTEMS), doubled, alpha=0.0)
    np.testing.assert_allclose(scores["score"], expected, atol=1e-7)


def test_default_alpha_shifts_scores_little():
    shifts = []
    for seed in range(40):
        judgements = simulate_judgements(TRUE_STRENGTHS, 30, 20, seed=seed)
        regularised = bradley_terry(judgements, SYSTEMS, n_bootstrap=0)
        plain = bradley_terry(judgements, SYSTEMS, n_bootstrap=0, alpha=0.0)
        shifts.append((regularised["score"] - plain["score"]).abs().max())

    assert max(shifts) < 0.002


def test_bradley_terry_recovers_true_strengths():
    judgements = simulate_judgements(TRUE_STRENGTHS, 100, 100, seed=7)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=0)

    truth = np.array(list(TRUE_STRENGTHS.values()))
    np.testing.assert_allclose(scores["score"], truth - truth.mean(), atol=0.06)


def test_bootstrap_intervals_cover_truth():
    n_simulations = 200
    truth = np.array(list(TRUE_STRENGTHS.values()))
    truth -= truth.mean()
    covered = np.zeros(len(SYSTEMS), dtype=int)

    for simulation in range(n_simulations):
        judgements = simulate_judgements(
            TRUE_STRENGTHS, 100, 60, seed=10_000 + simulation
        )
        scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=150, seed=simulation)
        covered += (scores["ci_low"] <= truth) & (truth <= scores["ci_high"])

    # Each system's coverage over independent simulations is binomial. The
    # bounds hold 99.9 % of the counts of a procedure with 95 % coverage.
    low, high = scipy.stats.binom.interval(0.999, n_simulations, 0.95)
    for name, count in zip(SYSTEMS, covered):
        assert low <= count <= high, f"{name}: {count} of {n_simulations} covered"


def test_bootstrap_resamples_participants():
    judgements = simulate_judgements(TRUE_STRENGTHS, 1, 300, seed=8)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=50)

    # Every resample of one participant is that participant, so the interval
    # collapses; a bootstrap over judgements would give it a width.
    np.testing.assert_allclose(scores["ci_low"], scores["score"], atol=1e-9)
    np.testing.assert_allclose(scores["ci_high"], scores["score"], atol=1e-9)


def test_bootstrap_widens_with_disagreement():
    agree = simulate_judgements(TRUE_STRENGTHS, 10, 100, seed=9)
    reversed_strengths = {name: -value for name, value in TRUE_STRENGTHS.items()}
    same = simulate_judgements(TRUE_STRENGTHS, 5, 100, seed=9)
    opposite = simulate_judgements(reversed_strengths, 5, 100, seed=19)
    opposite["participant"] = opposite["participant"] + "_opposite"
    mixed = pd.concat([same, opposite], ignore_index=True)

    narrow = bradley_terry(agree, SYSTEMS, n_bootstrap=200, seed=1)
    wide = bradley_terry(mixed, SYSTEMS, n_bootstrap=200, seed=1)

    # Listeners who disagree widen the intervals of the systems they disagree
    # on, s0 and s4 most, even with the same number of judgements.
    for name in ["s0", "s4"]:
        narrow_width = narrow.loc[name, "ci_high"] - narrow.loc[name, "ci_low"]
        wide_width = wide.loc[name, "ci_high"] - wide.loc[name, "ci_low"]
        assert wide_width > 2 * narrow_width, name


def test_bootstrap_is_reproducible():
    judgements = simulate_judgements(TRUE_STRENGTHS, 15, 20, seed=11)

    first = bradley_terry(judgements, SYSTEMS, n_bootstrap=50, seed=2)
    again = bradley_terry(judgements, SYSTEMS, n_bootstrap=50, seed=2)
    other = bradley_terry(judgements, SYSTEMS, n_bootstrap=50, seed=3)

    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["ci_low"], other["ci_low"])


def test_bradley_terry_result_layout():
    judgements = simulate_judgements(TRUE_STRENGTHS, 15, 20, seed=12)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=20, ci_level=0.9)

    assert list(scores.columns) == ["score", "ci_low", "ci_high"]
    assert list(scores.index) == SYSTEMS
    assert scores.index.name == "system"
    assert (scores["ci_low"] <= scores["ci_high"]).all()
    assert scores.attrs == {
        "n_participants": 15,
        "n_bootstrap": 20,
        "alpha": DEFAULT_ALPHA,
        "ci_level": 0.9,
    }


def test_bradley_terry_without_bootstrap():
    judgements = simulate_judgements(TRUE_STRENGTHS, 5, 20, seed=13)

    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=0)

    assert scores["ci_low"].isna().all()
    assert scores["ci_high"].isna().all()


def test_unjudged_system_gets_nan():
    judgements = simulate_judgements(TRUE_STRENGTHS, 10, 40, seed=17)

    scores = bradley_terry(judgements, [*SYSTEMS, "unused"], n_bootstrap=20)
    reference = bradley_terry(judgements, SYSTEMS, n_bootstrap=20)

    assert scores.loc["unused"].isna().all()
    pd.testing.assert_frame_equal(scores.loc[SYSTEMS], reference)


def test_unbeaten_system_needs_alpha():
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "x", "z", "a", False),
            ("p1", "i1", "y", "z", "a", False),
            ("p1", "i1", "z", "y", "a", False),
        ]
    )

    with pytest.raises(ValueError, match="use alpha > 0"):
        bradley_terry(judgements, ["x", "y", "z"], n_bootstrap=0, alpha=0.0)
    scores = bradley_terry(judgements, ["x", "y", "z"], n_bootstrap=0)
    assert np.isfinite(scores["score"]).all()
    assert scores["score"].idxmax() == "x"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_bootstrap": -1}, ValueError, "n_bootstrap must be 0 or greater"),
        ({"n_bootstrap": 1.5}, TypeError, "n_bootstrap must be an int"),
        ({"ci_level": 95}, ValueError, "ci_level must be between 0 and 1"),
        ({"alpha": -0.1}, ValueError, "alpha must be 0 or greater"),
    ],
)
def test_bradley_terry_rejects_arguments(kwargs, error, message):
    judgements = simulate_judgements(TRUE_STRENGTHS, 2, 10, seed=14)

    with pytest.raises(error, match=message):
        bradley_terry(judgements, SYSTEMS, **kwargs)


def test_bradley_terry_rejects_empty_judgements():
    judgements = judgement_frame([("p1", "i1", "x", "y", "a", False)]).iloc[:0]

    with pytest.raises(ValueError, match="no judgements to fit"):
        bradley_terry(judgements, ["x", "y"])


# Thurstone Case V

# Standard normal quantiles from printed tables: z(0.75), z(0.90) and z(0.99).
Z_075 = 0.6744898
Z_090 = 1.2815516
Z_099 = 2.3263479


def repeated_rows(a, b, wins_a, wins_b):
    return [("p", "i", a, b, "a", False)] * wins_a + [
        ("p", "i", a, b, "b", False)
    ] * wins_b


def test_thurstone_known_example():
    judgements = judgement_frame(
        repeated_rows("A", "B", 30, 10)
        + repeated_rows("A", "C", 36, 4)
        + repeated_rows("B", "C", 20, 20)
    )

    scores = thurstone_case_v(judgements, ["A", "B", "C"])

    expected = [(Z_075 + Z_090) / 3, -Z_075 / 3, -Z_090 / 3]
    np.testing.assert_allclose(scores["score"], expected, atol=1e-6)


def test_thurstone_clips_unanimous_pairs():
    judgements = judgement_frame(repeated_rows("A", "B", 10, 0))

    scores = thurstone_case_v(judgements, ["A", "B"])
    wider = thurstone_case_v(judgements, ["A", "B"], clip=0.1)

    np.testing.assert_allclose(scores["score"], [Z_099 / 2, -Z_099 / 2], atol=1e-6)
    np.testing.assert_allclose(wider["score"], [Z_090 / 2, -Z_090 / 2], atol=1e-6)


def test_thurstone_leaves_out_unjudged_pairs():
    judgements = judgement_frame(
        repeated_rows("A", "B", 30, 10) + repeated_rows("B", "C", 10, 30)
    )

    scores = thurstone_case_v(judgements, ["A", "B", "C", "D"])

    raw = np.array([Z_075 / 2, -2 * Z_075 / 3, Z_075 / 2])
    np.testing.assert_allclose(scores["score"][:3], raw - raw.mean(), atol=1e-6)
    assert np.isnan(scores.loc["D", "score"])


def test_thurstone_from_wins_equals_judgements():
    judgements = simulate_judgements(TRUE_STRENGTHS, 20, 30, seed=21, none_rate=0.1)
    wins = win_matrix(judgements, SYSTEMS)

    scores = scoring.thurstone_from_wins(wins, clip=0.05)

    expected = thurstone_case_v(judgements, SYSTEMS, clip=0.05)
    pd.testing.assert_frame_equal(scores, expected)
    with pytest.raises(ValueError, match="clip must be between 0 and 0.5"):
        scoring.thurstone_from_wins(wins, clip=0)


def test_thurstone_rejects_invalid_clip():
    judgements = judgement_frame(repeated_rows("A", "B", 1, 1))

    with pytest.raises(ValueError, match="clip must be between 0 and 0.5"):
        thurstone_case_v(judgements, ["A", "B"], clip=0.5)


# Consistency


def test_repeat_agreement_counts_same_system():
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "y", "x", "b", True),
            ("p1", "i1", "x", "z", "none", False),
            ("p1", "i1", "z", "x", "none", True),
            ("p1", "i1", "y", "z", "a", False),
            ("p1", "i1", "z", "y", "a", True),
            ("p1", "i2", "x", "y", "a", False),
            ("p1", "i2", "y", "x", "a", True),
        ]
    )

    result = consistency(judgements)

    assert result.loc["p1", "n_repeats"] == 4
    assert result.loc["p1", "repeat_agreement"] == 0.5
    assert result.loc["p1", "consistency"] == 0.5


def test_consistency_falls_back_to_transitivity():
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "y", "z", "a", False),
            ("p1", "i1", "z", "x", "a", False),
            ("p2", "i1", "x", "y", "a", False),
            ("p2", "i1", "y", "z", "a", False),
            ("p2", "i1", "x", "z", "a", False),
            ("p3", "i1", "x", "y", "none", False),
        ]
    )

    result = consistency(judgements)

    assert result.loc["p1", "transitivity"] == 0.0
    assert result.loc["p1", "consistency"] == 0.0
    assert result.loc["p2", "transitivity"] == 1.0
    assert result.loc["p2", "consistency"] == 1.0
    assert result.loc["p3", "n_triads"] == 0
    assert np.isnan(result.loc["p3", "consistency"])


def test_consistency_keeps_missing_item():
    judgements = judgement_frame(
        [
            ("p1", None, "x", "y", "a", False),
            ("p1", None, "y", "z", "a", False),
            ("p1", None, "z", "x", "a", False),
            ("p1", None, "y", "x", "a", True),
        ]
    )

    result = consistency(judgements)

    assert result.loc["p1", "n_triads"] == 1
    assert result.loc["p1", "circular_triads"] == 1
    assert result.loc["p1", "n_repeats"] == 1
    assert result.loc["p1", "repeat_agreement"] == 0.0


def test_repeat_without_first_showing_is_logged(caplog):
    judgements = judgement_frame(
        [
            ("p1", "i1", "x", "y", "a", False),
            ("p1", "i1", "z", "y", "a", True),
        ]
    )

    with caplog.at_level(logging.WARNING, logger="caqe_pairwise.scoring"):
        result = consistency(judgements)

    assert result.loc["p1", "n_repeats"] == 0
    assert np.isnan(result.loc["p1", "repeat_agreement"])
    assert "1 repeated judgements without a first showing" in caplog.text


@st.composite
def random_repeats(draw):
    """Draw judgements with repeats, some without a first showing or shown twice."""
    pairs = list(itertools.permutations(["x", "y", "z"], 2))
    rows = []
    for _ in range(draw(st.integers(1, 30))):
        a, b = draw(st.sampled_from(pairs))
        rows.append(
            (
                draw(st.sampled_from(["p1", "p2"])),
                draw(st.sampled_from(["i1", "i2"])),
                a,
                b,
                draw(st.sampled_from(["a", "b", "none"])),
                draw(st.booleans()),
            )
        )
    return rows


def count_agreement_by_enumeration(rows):
    """Count each participant's repeats with a first showing, and the agreeing ones."""
    firsts = {}
    for participant, item, a, b, choice, repeat in rows:
        if not repeat:
            key = (participant, item, frozenset((a, b)))
            firsts.setdefault(key, {"a": a, "b": b}.get(choice))
    totals = {}
    for participant, item, a, b, choice, repeat in rows:
        key = (participant, item, frozenset((a, b)))
        if repeat and key in firsts:
            agreed, repeats = totals.get(participant, (0, 0))
            same = {"a": a, "b": b}.get(choice) == firsts[key]
            totals[participant] = (agreed + same, repeats + 1)
    return totals


@settings(max_examples=60, deadline=None)
@given(random_repeats())
def test_repeat_agreement_matches_enumeration(rows):
    result = consistency(judgement_frame(rows))

    expected = count_agreement_by_enumeration(rows)
    for participant in result.index:
        agreed, repeats = expected.get(participant, (0, 0))
        assert result.loc[participant, "n_repeats"] == repeats
        if repeats:
            share = result.loc[participant, "repeat_agreement"]
            assert share == pytest.approx(agreed / repeats)
        else:
            assert np.isnan(result.loc[participant, "repeat_agreement"])


@st.composite
def random_tournaments(draw):
    """Draw judgements of random pair subsets, choices and A/B orders."""
    rows = []
    for participant in range(draw(st.integers(1, 3))):
        for item in range(draw(st.integers(1, 2))):
            n_systems = draw(st.integers(3, 6))
            pairs = list(itertools.combinations(range(n_systems), 2))
            judged = draw(st.lists(st.sampled_from(pairs), unique=True))
            for x, y in judged:
                swap = draw(st.booleans())
                a, b = (y, x) if swap else (x, y)
                choice = draw(st.sampled_from(["a", "b", "none"]))
                rows.append((f"p{participant}", f"i{item}", f"s{a}", f"s{b}", choice))
    return rows


def count_triads_by_enumeration(rows):
    """Count triads with three strict preferences, and the circular ones."""
    wins_by_group = {}
    for participant, item, a, b, choice in rows:
        wins = wins_by_group.setdefault((participant, item), set())
        if choice == "a":
            wins.add((a, b))
        elif choice == "b":
            wins.add((b, a))
    systems = sorted({row[2] for row in rows} | {row[3] for row in rows})

    totals = {row[0]: (0, 0) for row in rows}
    for (participant, _), wins in wins_by_group.items():
        triads = circular = 0
        for x, y, z in itertools.combinations(systems, 3):
            edges = [(x, y), (y, z), (x, z)]
            if not all((u, v) in wins or (v, u) in wins for u, v in edges):
                continue
            triads += 1
            forward = {(x, y), (y, z), (z, x)}
            backward = {(x, z), (z, y), (y, x)}
            if forward <= wins or backward <= wins:
                circular += 1
        previous = totals[participant]
        totals[participant] = (previous[0] + triads, previous[1] + circular)
    return totals


@settings(max_examples=60, deadline=None)
@given(random_tournaments())
def test_transitivity_matches_enumeration(rows):
    judgements = judgement_frame([(*row, False) for row in rows])
    if judgements.empty:
        return

    result = consistency(judgements)

    for participant, (triads, circular) in count_triads_by_enumeration(rows).items():
        assert result.loc[participant, "n_triads"] == triads
        assert result.loc[participant, "circular_triads"] == circular
        if triads:
            expected = 1 - circular / triads
            assert result.loc[participant, "transitivity"] == pytest.approx(expected)
        else:
            assert np.isnan(result.loc[participant, "transitivity"])


# Plots and simulation


def test_plot_scores_writes_png_and_svg(tmp_path):
    judgements = simulate_judgements(TRUE_STRENGTHS, 10, 30, seed=15)
    scores = bradley_terry(judgements, SYSTEMS, n_bootstrap=50)

    png_path, svg_path = plot_scores(scores, tmp_path / "scores.png")

    assert png_path == tmp_path / "scores.png"
    assert svg_path == tmp_path / "scores.svg"
    assert png_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    svg = svg_path.read_text()
    assert "<svg" in svg
    for name in SYSTEMS:
        assert name in svg


def test_plot_scores_without_intervals(tmp_path):
    scores = pd.DataFrame({"score": [0.2, -0.2]}, index=["x", "y"])

    png_path, svg_path = plot_scores(
        scores, tmp_path / "plain", label="Thurstone Case V score"
    )

    assert png_path.name == "plain.png"
    assert png_path.exists()
    assert "Thurstone Case V score" in svg_path.read_text()


def test_plot_scores_rejects_missing_column(tmp_path):
    with pytest.raises(ValueError, match="no 'score' column"):
        plot_scores(pd.DataFrame({"value": [1.0]}), tmp_path / "x")


def test_simulated_preferences_follow_model():
    strengths = {"x": 1.0, "y": 0.0}

    judgements = simulate_judgements(strengths, 50, 200, seed=16, none_rate=0.1)

    none_share = (judgements["choice"] == "none").mean()
    strict = judgements[judgements["choice"] != "none"]
    x_preferred = np.where(
        strict["choice"] == "a", strict["stimulus_a"], strict["stimulus_b"]
    )
    x_share = (x_preferred == "x").mean()
    assert none_share == pytest.approx(0.1, abs=0.01)
    assert x_share == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.015)
    assert (judgements["stimulus_a"] == "x").mean() == pytest.approx(0.5, abs=0.015)
    assert not judgements["repeat"].any()


def test_transitivity_same_in_small_blocks(monkeypatch):
    # One preference matrix of 5 systems has 25 values, so a block limit of
    # 60 values splits the 40 groups into blocks of 2.
    judgements = simulate_judgements(
        {f"s{i}": 0.3 * i for i in range(5)}, 20, 30, seed=8
    )
    judgements = pd.concat(
        [judgements, judgements.assign(item="item_2")], ignore_index=True
    )
    whole = consistency(judgements)

    monkeypatch.setattr(scoring, "_TRIAD_BLOCK_VALUES", 60)
    blocked = consistency(judgements)

    assert whole["n_triads"].sum() > 0
    pd.testing.assert_frame_equal(blocked, whole)
