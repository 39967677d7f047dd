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
import warnings
from collections.abc import Collection, Sequence
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

    The confidence interval of the mean comes from
    ``scipy.stats.bootstrap`` (``method`` is ``"BCa"``, ``"percentile"`` or
    ``"basic"``). It resamples participants, not single ratings: each
    resample draws participants with replacement and takes the mean of all
    their ratings in the group. Ratings of one listener are correlated
    across items, so resampling them one by one would give intervals that
    are too narrow. ``seed`` makes the intervals reproducible.

    A group rated by a single participant gets a NaN interval. A group
    whose ratings are all equal gets the interval ``[mean, mean]``.
    """
    check_ratings(ratings)
    keys = ["item", "scale", "system"] if by_item else ["scale", "system"]
    roles = _system_roles(ratings)
    rng = np.random.default_rng(seed)

    rows = []
    for key, group in ratings.groupby(keys, sort=True):
        values = group["rating"].astype(float)
        ci_low, ci_high = _participant_bootstrap_ci(
            group, confidence_level, n_resamples, method, rng
        )
        rows.append(
            {
                **dict(zip(keys, key)),
                "role": roles[key[-1]],
                "n": len(values),
                "n_participants": group["participant"].nunique(),
                "mean": values.mean(),
                "median": values.median(),
                "std": values.std(ddof=1),
                "ci_low": ci_low,
                "ci_high": ci_high,
            }
        )

    columns = [*keys[:-1], "system", "role", "n", "n_participants", "mean"]
    columns += ["median", "std", "ci_low", "ci_high"]

    return pd.DataFrame(rows, columns=columns)


def _participant_bootstrap_ci(
    group: pd.DataFrame,
    confidence_level: float,
    n_resamples: int,
    method: str,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Bootstrap CI of the mean rating, resampling participants."""
    values = group["rating"].astype(float)
    if values.nunique() == 1:
        return float(values.iloc[0]), float(values.iloc[0])

    per_participant = values.groupby(group["participant"]).agg(["sum", "count"])
    if len(per_participant) < 2:
        return float("nan"), float("nan")

    def pooled_mean(sums, counts, axis=-1):
        return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)

    with warnings.catch_warnings():
        # A degenerate bootstrap distribution gives a NaN interval, which is
        # what this function returns for it.
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        result = scipy.stats.bootstrap(
            (
                per_participant["sum"].to_numpy(float),
                per_participant["count"].to_numpy(float),
            ),
            pooled_mean,
            n_resamples=n_resamples,
            vectorized=True,
            paired=True,
            confidence_level=confidence_level,
            method=method,
            rng=rng,
        )
    interval = result.confidence_interval

    return float(interval.low), float(interval.high)


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
    exempt_rules: Collection[str] = (RULE_REFERENCE, RULE_MID_ANCHOR),
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
    anchor. Pass ``exempt_rules=("mid_anchor",)`` to apply it to that rule
    only.

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
            ratings, "reference", lambda r: r.min() < reference_threshold
        ),
        RULE_MID_ANCHOR: _page_failures(
            ratings, "anchor_mid", lambda r: r.max() > anchor_threshold
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


def _page_failures(ratings: pd.DataFrame, role: str, fails) -> pd.DataFrame:
    """Return participant, item, scale, failed for each page with ``role``."""
    rated = ratings.loc[ratings["role"] == role]
    failed = rated.groupby(["participant", *PAGE])["rating"].agg(
        lambda r: bool(fails(r.astype(float)))
    )

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
