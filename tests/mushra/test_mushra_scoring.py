"""Tests for MUSHRA scoring: summaries, post-screening, tests and plots."""

from __future__ import annotations

import itertools
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from caqe_mushra.scoring import (
    RULE_MID_ANCHOR,
    RULE_REFERENCE,
    boxplot,
    check_ratings,
    ci_plot,
    friedman,
    holm,
    pairwise_wilcoxon,
    post_screening,
    summarize,
)

# Constructed ratings


def screening_ratings(
    n_pages: int,
    listeners: list[str],
    reference_failures: dict[str, list[int]] | None = None,
    anchor_failures: dict[str, list[int]] | None = None,
    failing_reference: float = 70.0,
    failing_anchor: float = 95.0,
) -> pd.DataFrame:
    """Ratings where each listener fails the given page numbers.

    Passing ratings are 100 for the hidden reference and 40 for the mid
    anchor. Pages are items ``i00`` .. on the single scale ``quality``.
    """
    reference_failures = reference_failures or {}
    anchor_failures = anchor_failures or {}
    rows = []
    for listener in listeners:
        for page in range(n_pages):
            item = f"i{page:02d}"
            base = {
                "participant": listener,
                "item": item,
                "scale": "quality",
                "condition": f"{item}-quality",
            }
            reference = (
                failing_reference
                if page in reference_failures.get(listener, [])
                else 100.0
            )
            anchor = (
                failing_anchor if page in anchor_failures.get(listener, []) else 40.0
            )
            rows.append(
                {**base, "system": "ref", "role": "reference", "rating": reference}
            )
            rows.append(
                {**base, "system": "lp7", "role": "anchor_mid", "rating": anchor}
            )
            rows.append({**base, "system": "codec", "role": "system", "rating": 60.0})

    return pd.DataFrame(rows)


def simulated_ratings(
    rng: np.random.Generator,
    n_participants: int = 20,
    n_items: int = 3,
    means: dict[str, float] | None = None,
    participant_sd: float = 6.0,
    noise_sd: float = 6.0,
) -> pd.DataFrame:
    """Ratings with a random offset per participant plus independent noise."""
    means = means or {"a": 50.0}
    rows = []
    for participant in range(n_participants):
        offset = rng.normal(0, participant_sd)
        for item in range(n_items):
            for system, mean in means.items():
                rating = mean + offset + rng.normal(0, noise_sd)
                rows.append(
                    {
                        "participant": f"p{participant:02d}",
                        "item": f"item{item}",
                        "scale": "quality",
                        "condition": f"item{item}-quality",
                        "system": system,
                        "role": "system",
                        "rating": float(np.clip(rating, 0, 100)),
                    }
                )

    return pd.DataFrame(rows)


def listener_row(result, participant: str, rule: str) -> pd.Series:
    rows = result.listeners
    match = rows.loc[(rows["participant"] == participant) & (rows["rule"] == rule)]
    assert len(match) == 1

    return match.iloc[0]


# Input validation


def test_check_ratings_missing_column():
    ratings = screening_ratings(2, ["a"]).drop(columns="condition")

    with pytest.raises(ValueError, match="missing columns \\['condition'\\]"):
        check_ratings(ratings)


def test_check_ratings_invalid_role():
    ratings = screening_ratings(2, ["a"])
    ratings.loc[0, "role"] = "hidden_ref"

    with pytest.raises(ValueError, match="hidden_ref"):
        check_ratings(ratings)


@pytest.mark.parametrize("value", [101.0, -0.5, np.nan, "good"])
def test_check_ratings_invalid_rating(value):
    ratings = screening_ratings(2, ["a"]).astype({"rating": object})
    ratings.loc[1, "rating"] = value

    with pytest.raises(ValueError, match="outside 0 to 100"):
        check_ratings(ratings)


# Post-screening


def test_reference_rule_boundary_at_15_percent():
    # 20 pages: 3 failures is exactly 15 % (kept), 4 is 20 % (excluded).
    # Failures sit on different pages so no page reaches the exemption.
    listeners = ["ok1", "ok2", "ok3", "ok4", "ok5", "edge", "over"]
    ratings = screening_ratings(
        20,
        listeners,
        reference_failures={"edge": [0, 1, 2], "over": [3, 4, 5, 6]},
    )

    result = post_screening(ratings)
    edge = listener_row(result, "edge", RULE_REFERENCE)
    over = listener_row(result, "over", RULE_REFERENCE)

    assert result.excluded_participants == ["over"]
    assert edge["n_failed"] == 3
    assert edge["fraction"] == pytest.approx(0.15)
    assert not edge["excluded"]
    assert over["n_failed"] == 4
    assert over["n_items"] == 20
    assert over["excluded"]
    assert result.exempted_items.empty


def test_reference_rating_of_90_passes():
    listeners = ["a", "b", "c", "d", "e"]
    at_threshold = screening_ratings(
        4, listeners, reference_failures={"a": [0, 1]}, failing_reference=90.0
    )
    below = screening_ratings(
        4, listeners, reference_failures={"a": [0]}, failing_reference=89.99
    )

    result_at = post_screening(at_threshold)
    result_below = post_screening(below)

    assert result_at.excluded_participants == []
    assert listener_row(result_at, "a", RULE_REFERENCE)["n_failed"] == 0
    assert result_below.excluded_participants == ["a"]


def test_mid_anchor_rule_boundary():
    listeners = ["ok1", "ok2", "ok3", "ok4", "ok5", "edge", "over"]
    ratings = screening_ratings(
        20,
        listeners,
        anchor_failures={"edge": [0, 1, 2], "over": [3, 4, 5, 6]},
        failing_anchor=90.5,
    )
    at_threshold = screening_ratings(
        20, listeners, anchor_failures={"over": [3, 4, 5, 6]}, failing_anchor=90.0
    )

    result = post_screening(ratings)
    result_at = post_screening(at_threshold)

    assert result.excluded_participants == ["over"]
    assert list(result.excluded["rule"]) == [RULE_MID_ANCHOR]
    assert listener_row(result, "edge", RULE_MID_ANCHOR)["fraction"] == 0.15
    assert result_at.excluded_participants == []


def test_item_exemption_above_25_percent():
    # Page 0: 3 of 8 listeners (37.5 %) rate the anchor above 90, so it is
    # exempted. "x" also fails pages 1-3: 3 of 20 count, so x is kept.
    listeners = ["x", "y", "z", "a", "b", "c", "d", "e"]
    ratings = screening_ratings(
        20,
        listeners,
        anchor_failures={"x": [0, 1, 2, 3], "y": [0], "z": [0]},
    )

    result = post_screening(ratings)
    x_row = listener_row(result, "x", RULE_MID_ANCHOR)
    exempted = result.exempted_items

    assert result.excluded_participants == []
    assert x_row["n_failed"] == 3
    assert x_row["n_exempted"] == 1
    assert x_row["n_items"] == 20
    assert len(exempted) == 1
    assert exempted.iloc[0]["item"] == "i00"
    assert exempted.iloc[0]["rule"] == RULE_MID_ANCHOR
    assert exempted.iloc[0]["fraction"] == pytest.approx(3 / 8)


def test_item_exemption_not_at_25_percent():
    # Page 0 is failed by exactly 2 of 8 listeners (25 %): not exempted, so
    # "x" has 4 of 20 failures and is excluded.
    listeners = ["x", "y", "a", "b", "c", "d", "e", "f"]
    ratings = screening_ratings(
        20, listeners, anchor_failures={"x": [0, 1, 2, 3], "y": [0]}
    )

    result = post_screening(ratings)

    assert result.exempted_items.empty
    assert result.excluded_participants == ["x"]


def test_item_exemption_reference_opt_in():
    listeners = ["x", "y", "z", "a", "b", "c", "d", "e"]
    ratings = screening_ratings(
        20,
        listeners,
        reference_failures={"x": [0, 1, 2, 3], "y": [0], "z": [0]},
    )

    default = post_screening(ratings)
    both_rules = post_screening(ratings, exempt_rules=(RULE_REFERENCE, RULE_MID_ANCHOR))

    assert default.excluded_participants == ["x"]
    assert default.exempted_items.empty
    assert both_rules.excluded_participants == []
    assert list(both_rules.exempted_items["rule"]) == [RULE_REFERENCE]


def test_pages_are_item_scale_pairs():
    # Two scales on 10 items make 20 pages: 3 failures, all on one item's
    # two scales plus one more, is 15 % and keeps the listener.
    listeners = ["x", "a", "b", "c", "d", "e"]
    quality = screening_ratings(10, listeners, reference_failures={"x": [0, 1]})
    interference = screening_ratings(10, listeners, reference_failures={"x": [0]})
    interference["scale"] = "interference"
    ratings = pd.concat([quality, interference], ignore_index=True)

    result = post_screening(ratings)
    x_row = listener_row(result, "x", RULE_REFERENCE)

    assert x_row["n_items"] == 20
    assert x_row["n_failed"] == 3
    assert result.excluded_participants == []


def test_rule_skipped_without_its_stimulus():
    listeners = ["a", "b", "c"]
    ratings = screening_ratings(5, listeners)
    ratings = ratings.loc[ratings["role"] != "anchor_mid"]

    result = post_screening(ratings)
    rules = set(result.listeners["rule"])

    assert rules == {RULE_REFERENCE}
    assert result.excluded_participants == []


def test_screening_apply_drops_excluded():
    listeners = ["ok1", "ok2", "ok3", "ok4", "ok5", "over"]
    ratings = screening_ratings(10, listeners, reference_failures={"over": [0, 1]})

    kept = post_screening(ratings).apply(ratings)

    assert sorted(kept["participant"].unique()) == ["ok1", "ok2", "ok3", "ok4", "ok5"]
    assert len(kept) == len(ratings) - 30


def test_screening_invalid_exempt_rule():
    ratings = screening_ratings(2, ["a"])

    with pytest.raises(ValueError, match="exempt_rules"):
        post_screening(ratings, exempt_rules=("reference",))


# Summaries


def test_summarize_descriptive_statistics():
    rng = np.random.default_rng(11)
    ratings = simulated_ratings(rng, means={"a": 40.0, "b": 70.0})

    summary = summarize(ratings, n_resamples=999).set_index("system")
    b_values = ratings.loc[ratings["system"] == "b", "rating"]

    assert list(summary.index) == ["a", "b"]
    assert summary.loc["b", "n"] == 60
    assert summary.loc["b", "n_participants"] == 20
    assert summary.loc["b", "mean"] == pytest.approx(b_values.mean())
    assert summary.loc["b", "median"] == pytest.approx(b_values.median())
    assert summary.loc["b", "std"] == pytest.approx(b_values.std(ddof=1))
    assert summary.loc["b", "ci_low"] < summary.loc["b", "mean"]
    assert summary.loc["b", "ci_high"] > summary.loc["b", "mean"]


def test_summarize_by_item():
    rng = np.random.default_rng(12)
    ratings = simulated_ratings(rng, n_items=2, means={"a": 40.0, "b": 70.0})

    summary = summarize(ratings, by_item=True, n_resamples=999)

    assert list(summary.columns[:3]) == ["item", "scale", "system"]
    assert len(summary) == 4
    assert (summary["n"] == 20).all()


def test_summarize_seed_reproducible():
    rng = np.random.default_rng(13)
    ratings = simulated_ratings(rng)

    first = summarize(ratings, n_resamples=999, seed=4)
    second = summarize(ratings, n_resamples=999, seed=4)

    pd.testing.assert_frame_equal(first, second)


def test_summarize_degenerate_groups():
    ratings = screening_ratings(3, ["a", "b"])
    single = ratings.loc[ratings["participant"] == "a"].copy()
    single.loc[single["system"] == "codec", "rating"] = [10.0, 20.0, 30.0]

    constant = summarize(ratings, n_resamples=999).set_index("system")
    one_listener = summarize(single, n_resamples=999).set_index("system")

    assert constant.loc["codec", "ci_low"] == 60.0
    assert constant.loc["codec", "ci_high"] == 60.0
    assert np.isnan(one_listener.loc["codec", "ci_low"])
    assert np.isnan(one_listener.loc["codec", "ci_high"])


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_bootstrap_ci_coverage(method):
    # Participants differ strongly, so the interval must resample whole
    # participants to cover the true mean in about 95 % of repeats.
    rng = np.random.default_rng(2024)
    true_mean = 50.0
    repeats = 150
    covered = 0
    for repeat in range(repeats):
        ratings = simulated_ratings(
            rng,
            n_participants=20,
            n_items=3,
            means={"a": true_mean},
            participant_sd=8.0,
            noise_sd=3.0,
        )
        row = summarize(ratings, n_resamples=499, method=method, seed=repeat).iloc[0]
        covered += row["ci_low"] <= true_mean <= row["ci_high"]

    coverage = covered / repeats

    assert 0.88 <= coverage <= 0.99, f"coverage {coverage:.3f}"


@pytest.mark.parametrize("method", ["BCa", "percentile", "basic"])
def test_bootstrap_matches_scipy(method):
    # Same statistic and resampling scheme as scipy.stats.bootstrap on the
    # participants' (sum, count) pairs, so the ends agree up to Monte Carlo
    # error (about 0.05 rating points with 9999 resamples here).
    rng = np.random.default_rng(31)
    ratings = simulated_ratings(
        rng, n_participants=30, n_items=4, participant_sd=8.0, noise_sd=4.0
    )
    row = summarize(ratings, method=method, seed=1).iloc[0]
    group = ratings.loc[ratings["system"] == row["system"]]
    per_participant = group.groupby("participant")["rating"].agg(["sum", "count"])

    reference = scipy.stats.bootstrap(
        (
            per_participant["sum"].to_numpy(float),
            per_participant["count"].to_numpy(float),
        ),
        lambda sums, counts, axis=-1: sums.sum(axis) / counts.sum(axis),
        paired=True,
        vectorized=True,
        method=method,
        n_resamples=9999,
        rng=np.random.default_rng(2),
    ).confidence_interval

    assert row["ci_low"] == pytest.approx(reference.low, abs=0.2)
    assert row["ci_high"] == pytest.approx(reference.high, abs=0.2)


def test_bootstrap_groups_with_other_participants():
    # Listener "late" rated only item 1, so the two items' groups resample
    # different participants; each interval must match its group alone.
    rng = np.random.default_rng(32)
    ratings = simulated_ratings(rng, n_participants=12, n_items=2)
    extra = ratings.loc[
        (ratings["participant"] == ratings["participant"].iloc[0])
        & (ratings["item"] == ratings["item"].iloc[0])
    ].assign(participant="late", rating=5.0)
    combined = pd.concat([ratings, extra], ignore_index=True)

    together = summarize(combined, by_item=True, n_resamples=1999, seed=3)
    alone = pd.concat(
        [
            summarize(group, by_item=True, n_resamples=1999, seed=4)
            for _, group in combined.groupby("item")
        ],
        ignore_index=True,
    )
    widths = together["ci_high"] - together["ci_low"]
    expected_widths = alone["ci_high"] - alone["ci_low"]

    assert together["n_participants"].tolist() == [13, 12]
    assert np.isfinite(together[["ci_low", "ci_high"]].to_numpy()).all()
    assert widths.iloc[0] > 1.5 * widths.iloc[1]
    np.testing.assert_allclose(widths, expected_widths, rtol=0.2)


# Significance tests


def block_ratings() -> pd.DataFrame:
    rng = np.random.default_rng(21)
    ratings = simulated_ratings(
        rng,
        n_participants=8,
        n_items=2,
        means={"s1": 60.0, "s2": 55.0, "s3": 40.0, "s4": 58.0},
        noise_sd=10.0,
    )
    hidden = ratings.loc[ratings["system"] == "s1"].assign(
        system="ref", role="reference", rating=100.0
    )
    ratings = pd.concat([ratings, hidden], ignore_index=True)
    # One block misses s3 and another misses s4.
    missing = ((ratings["participant"] == "p00") & (ratings["item"] == "item0")) & (
        ratings["system"] == "s3"
    )
    missing |= ((ratings["participant"] == "p01") & (ratings["item"] == "item1")) & (
        ratings["system"] == "s4"
    )

    return ratings.loc[~missing].reset_index(drop=True)


def direct_block_array(ratings: pd.DataFrame, system: str, blocks) -> np.ndarray:
    values = []
    for participant, item in blocks:
        match = ratings.loc[
            (ratings["participant"] == participant)
            & (ratings["item"] == item)
            & (ratings["system"] == system),
            "rating",
        ]
        values.append(float(match.iloc[0]))

    return np.array(values)


def complete_blocks(ratings: pd.DataFrame, systems) -> list[tuple[str, str]]:
    blocks = []
    for (participant, item), group in ratings.groupby(["participant", "item"]):
        if set(systems) <= set(group["system"]):
            blocks.append((participant, item))

    return blocks


def test_friedman_matches_scipy():
    ratings = block_ratings()
    systems = ["s1", "s2", "s3", "s4"]
    blocks = complete_blocks(ratings, systems)
    expected = scipy.stats.friedmanchisquare(
        *(direct_block_array(ratings, s, blocks) for s in systems)
    )

    result = friedman(ratings, "quality")

    assert result.systems == tuple(systems)
    assert result.n_blocks == 14
    assert result.n_blocks == len(blocks)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-12)


def test_friedman_roles_none_includes_reference():
    ratings = block_ratings()

    result = friedman(ratings, "quality", roles=None)

    assert result.systems == ("ref", "s1", "s2", "s3", "s4")


def test_friedman_rejects_two_systems():
    ratings = block_ratings()
    two = ratings.loc[ratings["system"].isin(["s1", "s2"])]

    with pytest.raises(ValueError, match="at least 3 systems"):
        friedman(two, "quality")


def test_friedman_unknown_scale():
    with pytest.raises(ValueError, match="No ratings for scale 'loudness'"):
        friedman(block_ratings(), "loudness")


def test_pairwise_wilcoxon_matches_scipy():
    ratings = block_ratings()
    systems = ["s1", "s2", "s3", "s4"]

    pairs = pairwise_wilcoxon(ratings, "quality", alpha=0.05)

    assert list(zip(pairs["system_a"], pairs["system_b"])) == list(
        itertools.combinations(systems, 2)
    )
    for row in pairs.itertuples():
        blocks = complete_blocks(ratings, [row.system_a, row.system_b])
        expected = scipy.stats.wilcoxon(
            direct_block_array(ratings, row.system_a, blocks),
            direct_block_array(ratings, row.system_b, blocks),
        )
        assert row.n == len(blocks)
        assert row.statistic == pytest.approx(expected.statistic)
        assert row.p == pytest.approx(expected.pvalue, rel=1e-12)
    np.testing.assert_allclose(pairs["p_holm"], holm(pairs["p"]))
    assert list(pairs["significant"]) == list(pairs["p_holm"] < 0.05)
    assert pairs.loc[pairs["system_b"] == "s4", "n"].tolist() == [15, 15, 14]


def test_pairwise_wilcoxon_detects_clear_difference():
    ratings = block_ratings()

    pairs = pairwise_wilcoxon(ratings, "quality").set_index(["system_a", "system_b"])

    assert pairs.loc[("s1", "s3"), "significant"]
    assert pairs.loc[("s1", "s3"), "p_holm"] >= pairs.loc[("s1", "s3"), "p"]


def test_holm_hand_checked_example():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04,
    # and the last is raised to 0.06 to keep the order.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])

    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one():
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])


def test_holm_skips_nan():
    adjusted = holm([0.01, np.nan, 0.04])

    assert adjusted[0] == pytest.approx(0.02)
    assert np.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)


def test_holm_empty():
    assert holm([]).shape == (0,)


# Plots


def plot_ratings() -> pd.DataFrame:
    rng = np.random.default_rng(31)
    ratings = simulated_ratings(
        rng, n_participants=6, means={"codec_a": 70.0, "codec_b": 50.0}
    )
    extra = []
    for system, role, value in [
        ("reference", "reference", 97.0),
        ("lp7000", "anchor_mid", 45.0),
        ("lp3500", "anchor_low", 20.0),
    ]:
        extra.append(
            ratings.loc[ratings["system"] == "codec_a"].assign(
                system=system, role=role, rating=value
            )
        )

    return pd.concat([ratings, *extra], ignore_index=True)


def assert_png_and_svg(paths, stem):
    png, svg = paths

    assert png.name == f"{stem}.png"
    assert svg.name == f"{stem}.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert ElementTree.parse(svg).getroot().tag.endswith("svg")


def test_boxplot_writes_png_and_svg(tmp_path):
    paths = boxplot(plot_ratings(), "quality", tmp_path / "plots" / "box.png")

    assert_png_and_svg(paths, "box")


def test_ci_plot_writes_png_and_svg(tmp_path):
    summary = summarize(plot_ratings(), n_resamples=499)

    paths = ci_plot(summary, "quality", tmp_path / "ci")

    assert_png_and_svg(paths, "ci")


def test_ci_plot_rejects_item_summary(tmp_path):
    summary = summarize(plot_ratings(), by_item=True, n_resamples=499)

    with pytest.raises(ValueError, match="by_item=False"):
        ci_plot(summary, "quality", tmp_path / "ci")


def test_boxplot_unknown_scale(tmp_path):
    with pytest.raises(ValueError, match="Scales present"):
        boxplot(plot_ratings(), "loudness", tmp_path / "box")
