"""The MUSHRA sections of ``caqe analyze``: conformance, post-screening, statistics.

:func:`build_sections` works on a plain table of export rows, so it can be
used (and tested) without a database. :func:`sections_for_study` adapts the
``report_sections`` hook's arguments to it.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import escape

from caqe_core import ReportSection
from caqe_core.results.report import table_html

from . import scoring
from .conditions import SECTION, generated_anchors, split_systems
from .config import BS1534_MAX_SIGNALS, MushraConfig

logger = logging.getLogger(__name__)

COLUMNS = ("participant", "item", "scale", "condition", "system", "role", "rating")
"""Columns :func:`build_sections` needs, as ``export_rows`` and the core name them."""

SCORING_ROLES = {
    "hidden_reference": "reference",
    "anchor_low": "anchor_low",
    "anchor_mid": "anchor_mid",
    "anchor": "anchor",
    "system": "system",
}
"""Export-row roles to the role names of :mod:`scoring`."""


def conformance(section: MushraConfig) -> tuple[bool, list[str]]:
    """Return whether the test conforms to ITU-R BS.1534-3, and why not or how.

    The statements cover the 3.5 kHz anchor, the number of signals per page,
    the 7 kHz anchor and every item whose systems a blocked design split.
    """
    conforming = True
    statements = []
    if not section.anchors.low:
        conforming = False
        statements.append(
            "Pages had no 3.5 kHz low-pass anchor, which ITU-R BS.1534-3 requires "
            f"({SECTION}.anchors.low was false)."
        )
    if section.max_signals_per_page > BS1534_MAX_SIGNALS:
        conforming = False
        statements.append(
            f"Pages could hold up to {section.max_signals_per_page} rated signals; "
            f"ITU-R BS.1534-3 allows at most {BS1534_MAX_SIGNALS}."
        )
    if not section.anchors.mid:
        statements.append(
            "Pages had no 7 kHz mid-range anchor, so the post-screening rule on it "
            "did not apply."
        )

    generated = len(generated_anchors(section))
    for index, item in enumerate(section.items):
        blocks = split_systems(section, item, f"{SECTION}.items[{index}]", generated)
        if len(blocks) > 1:
            parts = "; ".join(
                f"page {number}: {', '.join(systems)}"
                for number, systems in enumerate(blocks, start=1)
            )
            statements.append(
                f"Blocked design: the systems of item {item.name!r} were split over "
                f"{len(blocks)} pages ({parts}). Every page kept the hidden "
                "reference and the anchors, so systems on different pages were not "
                "rated side by side."
            )
    return conforming, statements


def build_sections(
    ratings: pd.DataFrame,
    section: MushraConfig,
    figure_dir: Path,
    excluded: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    exclude: Callable[[str, str], None] | None = None,
) -> list[ReportSection]:
    """Build the report sections from a table of MUSHRA export rows.

    ``ratings`` has the columns in :data:`COLUMNS`, with the roles of
    ``export_rows``. Participants in ``excluded`` (participant to reasons,
    such as a failed screening) are left out first. Post-screening
    (:func:`scoring.post_screening`) then runs on the rest, and the
    statistics use only the listeners it keeps. Box plots and confidence
    interval plots are written to ``figure_dir`` as PNG and SVG and embedded
    in the HTML. ``seed`` fixes the bootstrap intervals. ``exclude`` is
    called with each listener that post-screening excludes and the reason.
    """
    missing = [column for column in COLUMNS if column not in ratings.columns]
    if missing:
        raise ValueError(
            f"Invalid MUSHRA ratings table: missing columns {missing}. Expected "
            f"{list(COLUMNS)}."
        )
    conforming, statements = conformance(section)
    sections = [_conformance_section(conforming, statements)]

    table = ratings.loc[:, list(COLUMNS)].copy()
    table["participant"] = table["participant"].astype(str)
    table = table.loc[table["role"].isin(SCORING_ROLES)]
    table["role"] = table["role"].map(SCORING_ROLES)
    table["rating"] = table["rating"].astype(float)
    excluded_ids = {str(p) for p, reasons in (excluded or {}).items() if reasons}
    excluded_before = sorted(excluded_ids & set(table["participant"]))
    table = table.loc[~table["participant"].isin(excluded_before)]
    if table.empty:
        sections.append(
            ReportSection(
                title="MUSHRA ratings",
                html="<p>No ratings to analyse: no trial of a remaining participant "
                "was stored.</p>",
            )
        )
        return sections

    screening = scoring.post_screening(table)
    sections.append(_screening_section(screening, excluded_before, table))
    if exclude is not None:
        for row in screening.excluded.itertuples():
            exclude(row.participant, _exclusion_reason(row))
    removed = set(screening.excluded["participant"])
    screened = table.loc[~table["participant"].isin(removed)]
    if screened.empty:
        return sections

    figure_dir.mkdir(parents=True, exist_ok=True)
    summary = scoring.summarize(screened, seed=seed)
    by_item = scoring.summarize(screened, by_item=True, seed=seed)
    for scale in sorted(screened["scale"].unique()):
        sections.append(_scale_section(screened, scale, summary, by_item, figure_dir))
    return sections


def _exclusion_reason(row: Any) -> str:
    rule = (
        "rated the hidden reference below 90"
        if row.rule == scoring.RULE_REFERENCE
        else "rated the 7 kHz anchor above 90"
    )
    return (
        f"MUSHRA post-screening: {rule} on {row.n_failed} of {row.n_items} pages "
        f"({100 * row.fraction:.0f} %, more than 15 %)"
    )


def _conformance_section(conforming: bool, statements: list[str]) -> ReportSection:
    verdict = (
        "The test conforms to ITU-R BS.1534-3 in the settings CAQE checks: a "
        "hidden reference and a 3.5 kHz low-pass anchor on every page, and at "
        f"most {BS1534_MAX_SIGNALS} rated signals per page."
        if conforming
        else "The test does NOT conform to ITU-R BS.1534-3."
    )
    items = "".join(f"<li>{escape(statement)}</li>" for statement in statements)
    html = f"<p><strong>{escape(verdict)}</strong></p>"
    if items:
        html += f"<ul>{items}</ul>"
    return ReportSection(title="MUSHRA: conformance with ITU-R BS.1534-3", html=html)


def _screening_section(
    screening: scoring.ScreeningResult, excluded_before: list[str], table: pd.DataFrame
) -> ReportSection:
    listeners = screening.listeners
    removed = sorted(set(screening.excluded["participant"]))
    html = (
        "<p>Post-screening after ITU-R BS.1534-3: a listener is excluded who rates "
        "the hidden reference below 90 on more than 15 % of the pages, or the 7 kHz "
        "anchor above 90 on more than 15 % of the pages. A page on which more than "
        "25 % of the listeners rate the 7 kHz anchor above 90 counts against no one "
        "for that rule; every page counts for the hidden-reference rule.</p>"
    )
    html += (
        f"<p>{table['participant'].nunique()} listener(s) rated pages; "
        f"{len(removed)} excluded by post-screening"
    )
    if excluded_before:
        html += (
            f", after {len(excluded_before)} excluded before it (screening or flags)"
        )
    html += ".</p>"
    if removed:
        reasons = screening.excluded.assign(
            fraction=screening.excluded["fraction"].round(3)
        )
        html += "<h4>Excluded listeners</h4>" + _table(reasons, digits=3)
    if not screening.exempted_items.empty:
        html += "<h4>Pages exempted from a rule</h4>" + _table(
            screening.exempted_items, digits=3
        )
    return ReportSection(
        title="MUSHRA: post-screening",
        html=html,
        tables={
            "mushra_post_screening": listeners,
            "mushra_post_screening_exempted": screening.exempted_items,
        },
    )


def _scale_section(
    screened: pd.DataFrame,
    scale: str,
    summary: pd.DataFrame,
    by_item: pd.DataFrame,
    figure_dir: Path,
) -> ReportSection:
    stem = _stem(scale)
    scale_summary = summary.loc[summary["scale"] == scale]
    scale_by_item = by_item.loc[by_item["scale"] == scale]
    html = (
        "<p>Mean, median and 95 % bootstrap confidence interval (BCa, resampling "
        "listeners) of the ratings of each system.</p>"
    )
    html += _table(scale_summary, digits=1)

    html += "<h4>Friedman test (systems under test)</h4>"
    try:
        result = scoring.friedman(screened, scale)
        html += (
            f"<p>&chi;&sup2; = {result.statistic:.3f}, p = {result.pvalue:.4g}, "
            f"{result.n_blocks} complete (listener, item) blocks, systems: "
            f"{escape(', '.join(result.systems))}.</p>"
        )
    except ValueError as error:
        html += f"<p>Not computed: {escape(str(error))}</p>"

    html += "<h4>Wilcoxon signed-rank tests, Holm-corrected</h4>"
    tables = {
        f"mushra_summary_{stem}": scale_summary,
        f"mushra_summary_by_item_{stem}": scale_by_item,
    }
    try:
        pairs = scoring.pairwise_wilcoxon(screened, scale)
        formatted = pairs.assign(
            p=pairs["p"].map(_format_p), p_holm=pairs["p_holm"].map(_format_p)
        )
        html += _table(formatted, digits=2)
        tables[f"mushra_wilcoxon_{stem}"] = pairs
    except ValueError as error:
        html += f"<p>Not computed: {escape(str(error))}</p>"

    box = scoring.boxplot(screened, scale, figure_dir / f"mushra_boxplot_{stem}")
    ci = scoring.ci_plot(summary, scale, figure_dir / f"mushra_ci_{stem}")
    html += _figure_html(box[0], f"Ratings on the scale {scale}, per system")
    html += _figure_html(ci[0], f"Mean rating and 95 % confidence interval, {scale}")
    html += "<h4>Per item</h4>" + _table(scale_by_item, digits=1)
    return ReportSection(title=f"MUSHRA: scale {scale}", html=html, tables=tables)


def _format_p(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3g}"


def _table(frame: pd.DataFrame, digits: int) -> str:
    # A plain str, because adding a str to Markup would escape the str.
    return str(table_html(frame, digits=digits))


def _figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}" '
        f'style="max-width:100%"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def sections_for_study(study: Any, data: Any) -> list[ReportSection]:
    """Build the sections from the ``report_sections`` hook's arguments.

    ``data`` is a ``caqe_core.results.StudyData``. Listeners that
    post-screening excludes are added to ``data.excluded`` with the reason,
    so the rest of the report leaves them out too.
    """
    # NOTE: scoring's plot functions save their files instead of returning
    # the figures, so they are written next to the core's figures here and
    # are not in ReportSection.figures.
    return build_sections(
        data.ratings,
        study.config.test_type_section,
        Path(data.output_dir) / "figures",
        excluded=data.excluded,
        seed=study.config.core.experiment.seed,
        exclude=data.exclude,
    )
