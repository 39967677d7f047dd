"""Scoring of MUSHRA ratings (ITU-R BS.1534-3).

Every function takes a ratings table, a :class:`pandas.DataFrame` with one
row per rating and the columns

``participant`` (str)
    The listener.
``item`` (str)
    The test item (the programme material).
``scale`` (str)
    The rating scale, for example ``"quality"`` or ``"interference"``.
``condition`` (str)
    The id of the rated page.
``system`` (str)
    The rated stimulus: a system under test, the hidden reference or an
    anchor.
``role`` (str)
    One of :data:`ROLES`: ``"reference"`` (hidden reference),
    ``"anchor_low"`` (3.5 kHz anchor), ``"anchor_mid"`` (7 kHz anchor),
    ``"anchor"`` (any other anchor) or ``"system"`` (system under test).
``rating`` (float)
    The score, from 0 to 100.

A *page* is one (item, scale) pair: the unit that post-screening counts as
a test item.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

logger = logging.getLogger(__name__)

ROLES = ("reference", "anchor_low", "anchor_mid", "anchor", "system")
"""Valid values of the ``role`` column."""

REQUIRED_COLUMNS = (
    "participant",
    "item",
    "scale",
    "condition",
    "system",
    "role",
    "rating",
)

RULE_REFERENCE = "hidden_reference"
"""Post-screening rule: hidden reference rated below the threshold."""

RULE_MID_ANCHOR = "mid_anchor"
"""Post-screening rule: mid-range (7 kHz) anchor rated above the threshold."""

PAGE = ["item", "scale"]

# Fractions are compared with this slack so that a fraction equal to its
# limit (for example 3 of 20 items against 0.15) counts as equal despite
# floating-point rounding.
_FRACTION_TOLERANCE = 1e-9

_ROLE_ORDER = {"reference": 0, "system": 1, "anchor_mid": 2, "anchor_low": 3}
_ROLE_STYLE = {
    "reference": ("#2ca02c", "hidden reference", "s"),
    "system": ("#1f77b4", "system under test", "o"),
    "anchor_mid": ("#ff7f0e", "anchor, 7 kHz", "v"),
    "anchor_low": ("#d62728", "anchor, 3.5 kHz", "v"),
    "anchor": ("#7f7f7f", "other anchor", "D"),
}
_BOOTSTRAP_METHODS = ("BCa", "percentile", "basic")

# Maximum number of draw counts in one block of bootstrap resamples (32 MiB
# as float64), so memory stays bounded for many participants or resamples.
_BOOTSTRAP_BLOCK_VALUES = 4 * 1024 * 1024

# Intervals of the MUSHRA continuous quality scale (BS.1534-3).
_SCALE_LABELS = ("Bad", "Poor", "Fair", "Good", "Excellent")


def check_ratings(ratings: pd.DataFrame) -> None:
    """Validate a ratings table.

    Raises ``ValueError`` when a required column is missing, a ``role`` is
    not one of :data:`ROLES`, or a ``rating`` is missing, non-numeric or
    outside 0 to 100.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in ratings.columns]
    if missing:
        raise ValueError(
            f"Invalid ratings table: missing columns {missing}. Expected "
            f"the columns {list(REQUIRED_COLUMNS)}."
        )

    bad_roles = sorted(set(ratings["role"]) - set(ROLES))
    if bad_roles:
        raise ValueError(
            f"Invalid role values {bad_roles}: expected one of {list(ROLES)}."
        )

    values = pd.to_numeric(ratings["rating"], errors="coerce")
    invalid = ratings.loc[values.isna() | (values < 0) | (values > 100), "rating"]
    if len(invalid):
        raise ValueError(
            f"Invalid ratings: {len(invalid)} value(s) are missing, non-numeric "
            f"or outside 0 to 100, for example {invalid.iloc[0]!r}."
        )


def _system_roles(ratings: pd.DataFrame) -> pd.Series:
    """Map each system to its role, raising if a system has several roles."""
    roles = ratings.groupby("system")["role"].unique()
    mixed = {system: list(r) for system, r in roles.items() if len(r) > 1}
    if mixed:
        raise ValueError(
            f"Invalid ratings table: systems with more than one role {mixed}. "
            "Give each system a single role."
        )

    return roles.map(lambda r: r[0])


# Summary statistics


def summarize(
    ratings: pd.DataFrame,
    *,
    by_item: bool = False,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int | None = 0,
) -> pd.DataFrame:
    """Summarize ratings per scale and system, or per item, scale and system.

    Returns one row per group with the columns ``[item,] scale, system,
    role, n, n_participants, mean, median, std, ci_low, ci_high``. ``n``
    counts ratings and ``std`` is the sample standard deviation (ddof 1).

    The confidence interval of the mean comes from a bootstrap over
    participants, not single ratings: each of the ``n_resamples``
    resamples draws the group's participants with replacement and takes
    the mean of all their ratings in the group. Ratings of one listener are
    correlated across items, so resampling them one by one would give
    intervals that are too narrow. Groups rated by the same participants
    share their resamples, so one matrix product computes every group's
    resampled means (see :func:`participant_bootstrap`). ``method`` is
    ``"BCa"`` (bias-corrected and accelerated, with the acceleration from
    the jackknife over participants), ``"percentile"`` or ``"basic"``, as
    in ``scipy.stats.bootstrap``. ``seed`` makes the intervals
    reproducible.

    A group rated by a single participant gets a NaN interval, and so does
    a group whose BCa interval is undefined because every resample gives
    the same mean. A group whose ratings are all equal gets the interval
    ``[mean, mean]``.
    """
    check_ratings(ratings)
    if method not in _BOOTSTRAP_METHODS:
        raise ValueError(
            f"Invalid bootstrap method {method!r}: expected one of "
            f"{list(_BOOTSTRAP_METHODS)}."
        )
    if not 0 < confidence_level < 1:
        raise ValueError(
            f"Invalid confidence_level {confidence_level!r}: expected a number "
            "between 0 and 1, such as 0.95."
        )
    keys = ["item", "scale", "system"] if by_item else ["scale", "system"]
    roles = _system_roles(ratings)
    values = ratings["rating"].astype(float)
    grouped = values.groupby([ratings[key] for key in keys], sort=True)

    stats = grouped.agg(["size", "mean", "median", "std", "min", "max"])
    stats["n_participants"] = ratings.groupby(keys, sort=True)["participant"].nunique()
    low, high = participant_bootstrap(
        ratings.assign(rating=values),
        keys,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        method=method,
        seed=seed,
    )
    stats["ci_low"] = low.reindex(stats.index)
    stats["ci_high"] = high.reindex(stats.index)
    constant = stats["min"] == stats["max"]
    stats.loc[constant, "ci_low"] = stats.loc[constant, "mean"]
    stats.loc[constant, "ci_high"] = stats.loc[constant, "mean"]

    summary = stats.reset_index()
    summary["role"] = summary["system"].map(roles)
    summary = summary.rename(columns={"size": "n"})
    columns = [*keys[:-1], "system", "role", "n", "n_participants", "mean"]
    columns += ["median", "std", "ci_low", "ci_high"]

    return summary[columns].reset_index(drop=True)


def participant_bootstrap(
    ratings: pd.DataFrame,
    keys: Sequence[str],
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int | np.random.Generator | None = 0,
) -> tuple[pd.Series, pd.Series]:
    """Compute bootstrap intervals of the mean rating per group of ``keys``.

    A group's statistic is the pooled mean of its ratings. Each resample
    draws as many participants as rated the group, with replacement, and
    weights each participant's sum and count of ratings by the number of
    times it was drawn. The resampled means of all groups rated by the same
    participants are therefore one product of a (resamples x participants)
    matrix of draw counts with the participants' sums and counts.

    The interval ends are quantiles of the resampled means (``numpy``'s
    default linear interpolation, as ``scipy.stats.bootstrap`` uses):

    * ``"percentile"``: the ``(1 - level) / 2`` and ``(1 + level) / 2``
      quantiles;
    * ``"basic"``: twice the mean minus the percentile interval, reversed;
    * ``"BCa"``: quantiles at ``Phi(z0 + (z0 + z) / (1 - a * (z0 + z)))``
      for the two normal quantiles ``z`` of the percentile interval, where
      ``z0 = Phi^-1(share of resampled means below the mean, ties counted
      half)`` and the acceleration ``a = sum(d**3) / (6 * sum(d**2) **
      1.5)`` with ``d`` the deviations of the leave-one-participant-out
      means from their average.

    Returns the lower and upper ends as two Series indexed by the group
    keys. A group with fewer than two participants gets NaN, and so does a
    BCa interval whose resampled means are all on one side of the mean.
    """
    level = confidence_level
    rng = np.random.default_rng(seed)
    grouped = ratings.groupby(list(keys), sort=True)
    group_codes = grouped.ngroup().to_numpy()
    index = grouped.size().index
    participant_codes, _ = pd.factorize(ratings["participant"])
    n_groups = len(index)
    n_participants = int(participant_codes.max()) + 1 if len(ratings) else 0

    sums = np.zeros((n_participants, n_groups))
    counts = np.zeros((n_participants, n_groups))
    np.add.at(sums, (participant_codes, group_codes), ratings["rating"].to_numpy(float))
    np.add.at(counts, (participant_codes, group_codes), 1.0)

    low = np.full(n_groups, np.nan)
    high = np.full(n_groups, np.nan)
    rated = counts > 0
    patterns, pattern_of_group = np.unique(rated.T, axis=0, return_inverse=True)
    for pattern_code, pattern in enumerate(patterns):
        members = np.flatnonzero(pattern)
        if members.size < 2:
            continue
        groups = np.flatnonzero(pattern_of_group.reshape(-1) == pattern_code)
        group_sums = sums[np.ix_(members, groups)]
        group_counts = counts[np.ix_(members, groups)]
        means = _resampled_means(group_sums, group_counts, n_resamples, rng)
        estimate = group_sums.sum(axis=0) / group_counts.sum(axis=0)
        low[groups], high[groups] = _interval(
            means, estimate, group_sums, group_counts, level, method
        )

    return pd.Series(low, index=index), pd.Series(high, index=index)


def _resampled_means(
    sums: np.ndarray, counts: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Return one row of resampled pooled means per resample, one column per group."""
    n_participants = sums.shape[0]
    block = max(1, _BOOTSTRAP_BLOCK_VALUES // n_participants)
    means = np.empty((n_resamples, sums.shape[1]))
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        drawn = rng.integers(0, n_participants, size=(size, n_participants))
        offsets = np.arange(size)[:, None] * n_participants
        weights = (
            np.bincount((drawn + offsets).reshape(-1), minlength=size * n_participants)
            .reshape(size, n_participants)
            .astype(float)
        )
        means[start : start + size] = (weights @ sums) / (weights @ counts)

    return means


def _interval(
    means: np.ndarray,
    estimate: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    level: float,
    method: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the interval ends of each column of ``means`` by ``method``."""
    tail = (1 - level) / 2
    if method == "percentile":
        return tuple(np.percentile(means, [100 * tail, 100 * (1 - tail)], axis=0))
    if method == "basic":
        upper, lower = np.percentile(means, [100 * tail, 100 * (1 - tail)], axis=0)
        return 2 * estimate - lower, 2 * estimate - upper

    below = (means < estimate).sum(axis=0) + 0.5 * (means == estimate).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bias = scipy.stats.norm.ppf(below / means.shape[0])
        # Leave-one-participant-out means: every participant here rated
        # every group, so no denominator is zero.
        jackknife = (sums.sum(axis=0) - sums) / (counts.sum(axis=0) - counts)
        deviations = jackknife.mean(axis=0) - jackknife
        acceleration = (deviations**3).sum(axis=0) / (
            6 * ((deviations**2).sum(axis=0)) ** 1.5
        )
        z = scipy.stats.norm.ppf([tail, 1 - tail])[:, None]
        adjusted = scipy.stats.norm.cdf(
            bias + (bias + z) / (1 - acceleration * (bias + z))
        )
    low = np.full(means.shape[1], np.nan)
    high = np.full(means.shape[1], np.nan)
    valid = np.isfinite(adjusted).all(axis=0)
    for column in np.flatnonzero(valid):
        low[column], high[column] = np.percentile(
            means[:, column], 100 * adjusted[:, column]
        )

    return low, high


# Post-screening


@dataclass(frozen=True)
class ScreeningResult:
    """Outcome of :func:`post_screening`.

    ``listeners`` has one row per participant and rule with the columns
    ``participant, rule, n_items, n_failed, n_exempted, fraction,
    excluded``. ``n_items`` counts the pages on which the participant rated
    the rule's stimulus, ``n_failed`` the pages that count against them
    (failed and not exempted), ``n_exempted`` the failed pages that were
    exempted, and ``fraction`` is ``n_failed / n_items``.

    ``excluded`` contains the rows of ``listeners`` that exclude a participant,
    so a participant excluded by both rules appears twice.

    ``exempted_items`` has one row per exempted page and rule with the
    columns ``item, scale, rule, n_listeners, n_failed, fraction``.
    """

    listeners: pd.DataFrame
    excluded: pd.DataFrame
    exempted_items: pd.DataFrame

    @property
    def excluded_participants(self) -> list[str]:
        """Excluded participants, sorted."""
        return sorted(self.excluded["participant"].unique())

    def apply(self, ratings: pd.DataFrame) -> pd.DataFrame:
        """Return ``ratings`` without the rows of excluded participants."""
        keep = ~ratings["participant"].isin(self.excluded_participants)

        return ratings.loc[keep]


def post_screening(
    ratings: pd.DataFrame,
    reference_threshold: float = 90,
    anchor_threshold: float = 90,
    max_fraction: float = 0.15,
    item_exemption_fraction: float = 0.25,
    exempt_rules: Collection[str] = (RULE_MID_ANCHOR,),
) -> ScreeningResult:
    """Find listeners to exclude by the post-screening rules of BS.1534-3.

    A test item is a page, an (item, scale) pair. Two rules are applied:

    * ``"hidden_reference"``: a listener fails a page if any of their
      ratings of the hidden reference (role ``"reference"``) on it is below
      ``reference_threshold`` (strictly: a rating of exactly 90 passes).
    * ``"mid_anchor"``: a listener fails a page if any of their ratings of
      the mid-range anchor (role ``"anchor_mid"``) on it is above
      ``anchor_threshold`` (strictly: exactly 90 passes).

    Item exemption: for each rule in ``exempt_rules`` and each page, if more
    than ``item_exemption_fraction`` of the listeners who rated that page's
    stimulus fail it, the page is exempted from that rule, and failing it
    counts against no listener. A page failed by exactly that fraction is
    not exempted. Exemption is decided once, from all listeners, before
    anyone is excluded. BS.1534-3 states the exemption for the mid-range
    anchor only: when more than 25 % of the listeners rate it above 90, the
    anchor processing may not have degraded that item enough, so those
    ratings exclude no one. The default therefore exempts pages from the
    ``"mid_anchor"`` rule only, and every hidden-reference failure counts.
    ``exempt_rules=("hidden_reference", "mid_anchor")`` also exempts pages
    whose hidden reference most listeners rated below the threshold, which
    the standard does not provide for.

    For each rule a listener's fraction is the number of failed, non-exempt
    pages divided by the number of pages on which they rated the rule's
    stimulus. Exempted pages stay in that denominator, because they are
    still test items the listener rated. A listener is excluded if the
    fraction is more than ``max_fraction`` for either rule. Exactly
    ``max_fraction`` (for example 3 of 20 pages at 0.15) does not exclude.
    A rule does not apply to a listener who never rated its stimulus.
    """
    check_ratings(ratings)
    unknown = sorted(set(exempt_rules) - {RULE_REFERENCE, RULE_MID_ANCHOR})
    if unknown:
        raise ValueError(
            f"Invalid exempt_rules {unknown}: expected a subset of "
            f"{[RULE_REFERENCE, RULE_MID_ANCHOR]}."
        )

    rules = {
        RULE_REFERENCE: _page_failures(
            ratings, "reference", "min", lambda lowest: lowest < reference_threshold
        ),
        RULE_MID_ANCHOR: _page_failures(
            ratings, "anchor_mid", "max", lambda highest: highest > anchor_threshold
        ),
    }

    listener_frames = []
    exempted_frames = []
    for rule, failures in rules.items():
        exempted = _exempted_pages(
            failures, rule, item_exemption_fraction, rule in exempt_rules
        )
        exempted_frames.append(exempted)
        listener_frames.append(_listener_fractions(failures, exempted, rule))

    listeners = pd.concat(listener_frames, ignore_index=True)
    listeners["excluded"] = (
        listeners["fraction"] > max_fraction + _FRACTION_TOLERANCE
    ) & (listeners["n_items"] > 0)
    excluded = listeners.loc[listeners["excluded"]].reset_index(drop=True)
    exempted_items = pd.concat(exempted_frames, ignore_index=True)

    for row in excluded.itertuples():
        logger.info(
            "Post-screening excludes participant %s: rule %s failed on %d of %d "
            "items (%.1f %%)",
            row.participant,
            row.rule,
            row.n_failed,
            row.n_items,
            100 * row.fraction,
        )

    return ScreeningResult(
        listeners=listeners, excluded=excluded, exempted_items=exempted_items
    )


def _page_failures(
    ratings: pd.DataFrame,
    role: str,
    extreme: str,
    fails: Callable[[pd.Series], pd.Series],
) -> pd.DataFrame:
    """Return participant, item, scale, failed for each page with ``role``.

    ``extreme`` (``"min"`` or ``"max"``) picks the participant's lowest or
    highest rating of the role on the page, and ``fails`` tests it.
    """
    rated = ratings.loc[ratings["role"] == role]
    extremes = (
        rated["rating"]
        .astype(float)
        .groupby([rated["participant"], *(rated[k] for k in PAGE)])
        .agg(extreme)
    )
    failed = fails(extremes).astype(bool)

    return failed.rename("failed").reset_index()


def _exempted_pages(
    failures: pd.DataFrame, rule: str, exemption_fraction: float, enabled: bool
) -> pd.DataFrame:
    columns = [*PAGE, "rule", "n_listeners", "n_failed", "fraction"]
    if not enabled or failures.empty:
        return pd.DataFrame(columns=columns)

    pages = failures.groupby(PAGE)["failed"].agg(["count", "sum"]).reset_index()
    pages = pages.rename(columns={"count": "n_listeners", "sum": "n_failed"})
    pages["fraction"] = pages["n_failed"] / pages["n_listeners"]
    pages["rule"] = rule
    exempt = pages["fraction"] > exemption_fraction + _FRACTION_TOLERANCE

    return pages.loc[exempt, columns].reset_index(drop=True)


def _listener_fractions(
    failures: pd.DataFrame, exempted: pd.DataFrame, rule: str
) -> pd.DataFrame:
    columns = ["participant", "rule", "n_items", "n_failed", "n_exempted"]
    if failures.empty:
        return pd.DataFrame(columns=[*columns, "fraction"])

    marked = failures.merge(
        exempted[PAGE].assign(exempt=True), on=PAGE, how="left"
    ).fillna({"exempt": False})
    marked["exempt"] = marked["exempt"].astype(bool)
    marked["counts"] = marked["failed"] & ~marked["exempt"]
    marked["excused"] = marked["failed"] & marked["exempt"]
    listeners = marked.groupby("participant").agg(
        n_items=("failed", "size"),
        n_failed=("counts", "sum"),
        n_exempted=("excused", "sum"),
    )
    listeners = listeners.reset_index().assign(rule=rule)[columns]
    listeners["fraction"] = listeners["n_failed"] / listeners["n_items"]

    return listeners


# Significance tests


@dataclass(frozen=True)
class FriedmanResult:
    """Result of :func:`friedman`."""

    statistic: float
    pvalue: float
    n_blocks: int
    systems: tuple[str, ...]


def _blocks(
    ratings: pd.DataFrame, scale: str, roles: Collection[str] | None
) -> pd.DataFrame:
    """Pivot one scale to a blocks-by-systems table of ratings.

    A block is a (participant, item) pair. Repeated ratings of a system in
    one block are averaged. Missing ratings are NaN.
    """
    check_ratings(ratings)
    subset = ratings.loc[ratings["scale"] == scale]
    if roles is not None:
        subset = subset.loc[subset["role"].isin(roles)]
    if subset.empty:
        scales = sorted(ratings["scale"].unique())
        raise ValueError(
            f"No ratings for scale {scale!r} with roles {roles!r}. Scales "
            f"present: {scales}."
        )

    return subset.pivot_table(
        index=["participant", "item"],
        columns="system",
        values="rating",
        aggfunc="mean",
    ).sort_index(axis=1)


def friedman(
    ratings: pd.DataFrame,
    scale: str,
    *,
    roles: Collection[str] | None = ("system",),
) -> FriedmanResult:
    """Run the Friedman test across systems on one scale.

    Blocks are (participant, item) pairs; only blocks that rated every
    system are used. ``roles`` selects the systems compared, by default the
    systems under test only. Pass ``None`` to include the hidden reference
    and the anchors. Repeated ratings of a system in one block are
    averaged. The test is ``scipy.stats.friedmanchisquare``.

    Raises ``ValueError`` with fewer than three systems or no complete
    block.
    """
    table = _blocks(ratings, scale, roles)
    systems = tuple(table.columns)
    if len(systems) < 3:
        raise ValueError(
            f"The Friedman test needs at least 3 systems, found {list(systems)} "
            f"on scale {scale!r}. Use pairwise_wilcoxon for two systems."
        )

    complete = table.dropna()
    if complete.empty:
        raise ValueError(
            f"No (participant, item) block on scale {scale!r} rated all of "
            f"{list(systems)}."
        )

    result = scipy.stats.friedmanchisquare(*(complete[s].to_numpy() for s in systems))

    return FriedmanResult(
        statistic=float(result.statistic),
        pvalue=float(result.pvalue),
        n_blocks=len(complete),
        systems=systems,
    )


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Adjust p-values for multiple comparisons with Holm's step-down method.

    With the m p-values sorted in ascending order, the i-th smallest
    (i = 1..m) becomes ``max over j <= i of min(1, (m - j + 1) * p_(j))``,
    so adjusted values keep the order of the raw ones. scipy only provides
    Benjamini-Hochberg and Benjamini-Yekutieli (``false_discovery_control``),
    so the procedure is written out here. NaN p-values are left NaN and do
    not count in m.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]

    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))

    return adjusted


def pairwise_wilcoxon(
    ratings: pd.DataFrame,
    scale: str,
    *,
    roles: Collection[str] | None = ("system",),
    alpha: float = 0.05,
    zero_method: str = "wilcox",
) -> pd.DataFrame:
    """Compare every pair of systems on one scale with the Wilcoxon test.

    For each pair, the blocks ((participant, item) pairs) that rated both
    systems are paired, and ``scipy.stats.wilcoxon`` (two-sided, the given
    ``zero_method``) tests their differences. The p-values of all pairs are
    adjusted together with :func:`holm`, and ``significant`` is
    ``p_holm < alpha``. ``roles`` selects the systems as in
    :func:`friedman`. A pair with no common block gets NaN results and is
    left out of the Holm family.

    Returns a table with the columns ``system_a, system_b, n, statistic,
    p, p_holm, significant``, one row per pair in sorted system order.
    """
    table = _blocks(ratings, scale, roles)

    rows = []
    for system_a, system_b in itertools.combinations(table.columns, 2):
        paired = table[[system_a, system_b]].dropna()
        statistic, pvalue = float("nan"), float("nan")
        if len(paired):
            result = scipy.stats.wilcoxon(
                paired[system_a].to_numpy(),
                paired[system_b].to_numpy(),
                zero_method=zero_method,
            )
            statistic, pvalue = float(result.statistic), float(result.pvalue)
        rows.append(
            {
                "system_a": system_a,
                "system_b": system_b,
                "n": len(paired),
                "statistic": statistic,
                "p": pvalue,
            }
        )

    columns = ["system_a", "system_b", "n", "statistic", "p"]
    pairs = pd.DataFrame(rows, columns=columns)
    pairs["p_holm"] = holm(pairs["p"].to_numpy())
    pairs["significant"] = pairs["p_holm"] < alpha

    return pairs


# Plots


def _plot_order(systems: pd.DataFrame, center: str) -> list[str]:
    """Order systems: hidden reference, systems by ``center``, then anchors."""
    ranked = systems.assign(
        role_rank=systems["role"].map(_ROLE_ORDER).fillna(len(_ROLE_ORDER))
    )
    ranked = ranked.sort_values(["role_rank", center], ascending=[True, False])

    return list(ranked["system"])


def _style_axes(axes, scale: str, n_participants: int, roles: Collection[str]) -> None:
    axes.set_ylim(0, 100)
    axes.set_yticks(range(0, 101, 20))
    axes.grid(axis="y", color="#dddddd", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.set_ylabel("rating")
    axes.set_title(f"{scale} ({n_participants} participants)")
    for index, label in enumerate(_SCALE_LABELS):
        axes.text(
            1.01,
            (index * 20 + 10) / 100,
            label,
            transform=axes.transAxes,
            va="center",
            fontsize=8,
            color="#555555",
        )
    handles = [
        Patch(color=color, label=label)
        for role, (color, label, _) in _ROLE_STYLE.items()
        if role in roles
    ]
    axes.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.28),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )


def _save(figure: Figure, path: str | Path) -> list[Path]:
    """Save ``figure`` as PNG and SVG next to ``path`` (its suffix is replaced)."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    written = []
    for suffix in (".png", ".svg"):
        target = base.with_suffix(suffix)
        figure.savefig(target, dpi=150, bbox_inches="tight")
        written.append(target)

    return written


def boxplot(ratings: pd.DataFrame, scale: str, path: str | Path) -> list[Path]:
    """Draw a box plot of the ratings of each system on one scale.

    The hidden reference comes first, then the systems under test by
    descending median, then the anchors. Colours mark the role, and a legend
    explains them. Writes ``path`` with the suffixes ``.png`` and ``.svg``
    and returns both paths.
    """
    check_ratings(ratings)
    subset = ratings.loc[ratings["scale"] == scale]
    if subset.empty:
        raise ValueError(
            f"No ratings for scale {scale!r}. Scales present: "
            f"{sorted(ratings['scale'].unique())}."
        )

    medians = subset.groupby("system")["rating"].median().rename("median")
    systems = pd.concat([medians, _system_roles(subset).rename("role")], axis=1)
    order = _plot_order(systems.reset_index(names="system"), "median")
    data = [subset.loc[subset["system"] == s, "rating"].to_numpy(float) for s in order]

    figure = Figure(figsize=(max(6.0, 1.0 * len(order) + 2), 4.8))
    axes = figure.add_subplot()
    boxes = axes.boxplot(data, patch_artist=True, widths=0.6)
    for patch, system in zip(boxes["boxes"], order):
        patch.set_facecolor(_ROLE_STYLE[systems.loc[system, "role"]][0])
        patch.set_alpha(0.75)
    for median in boxes["medians"]:
        median.set_color("black")
    axes.set_xticks(range(1, len(order) + 1), order, rotation=30, ha="right")
    _style_axes(axes, scale, subset["participant"].nunique(), set(systems["role"]))

    return _save(figure, path)


def ci_plot(summary: pd.DataFrame, scale: str, path: str | Path) -> list[Path]:
    """Plot the mean rating and its confidence interval per system on one scale.

    ``summary`` is the output of :func:`summarize` with ``by_item=False``.
    The order, colours and legend match :func:`boxplot`, and marker shapes
    also mark the role. Writes ``path`` with the suffixes ``.png`` and
    ``.svg`` and returns both paths.
    """
    if "item" in summary.columns:
        raise ValueError(
            "Invalid summary: it has an 'item' column. Pass the output of "
            "summarize(ratings) with by_item=False."
        )
    subset = summary.loc[summary["scale"] == scale]
    if subset.empty:
        raise ValueError(
            f"No summary rows for scale {scale!r}. Scales present: "
            f"{sorted(summary['scale'].unique())}."
        )

    order = _plot_order(subset, "mean")
    rows = subset.set_index("system").loc[order]

    figure = Figure(figsize=(max(6.0, 1.0 * len(order) + 2), 4.8))
    axes = figure.add_subplot()
    for position, (system, row) in enumerate(rows.iterrows(), start=1):
        color, _, marker = _ROLE_STYLE[row["role"]]
        below = row["mean"] - row["ci_low"]
        above = row["ci_high"] - row["mean"]
        axes.errorbar(
            position,
            row["mean"],
            yerr=[[below], [above]],
            fmt=marker,
            color=color,
            markersize=8,
            capsize=6,
            linewidth=1.5,
        )
    axes.set_xlim(0.5, len(order) + 0.5)
    axes.set_xticks(range(1, len(order) + 1), order, rotation=30, ha="right")
    _style_axes(axes, scale, int(rows["n_participants"].max()), set(rows["role"]))
    axes.set_ylabel("mean rating and bootstrap CI")

    return _save(figure, path)
