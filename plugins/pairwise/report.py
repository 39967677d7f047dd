"""The pairwise sections of ``caqe analyze``: scores, win counts, consistency.

:func:`build_sections` works on a plain table of judgements, so it can be
used (and tested) without a database. :func:`sections_for_study` adapts the
``report_sections`` hook's arguments to it.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
from markupsafe import escape

from caqe_core import ReportSection
from caqe_core.results import table_html

from . import scoring

logger = logging.getLogger(__name__)

N_BOOTSTRAP = 1000
"""Bootstrap replicates of the Bradley–Terry intervals in the report."""

MAX_HTML_ROWS = 200
"""Longer per-participant tables are cut in the HTML; the CSV has every row."""


def build_sections(
    judgements: pd.DataFrame, figure_dir: Path, seed: int = 0
) -> list[ReportSection]:
    """Build the report sections from judgements in the format of ``scoring``.

    One section gives the counts and the position bias, one per scale gives
    the Bradley–Terry scores with 95 % bootstrap intervals over participants,
    the Thurstone Case V scores and the win matrix, and one gives each
    participant's consistency. Score plots are written to ``figure_dir`` as
    PNG and SVG and embedded in the HTML. ``seed`` fixes the bootstrap.
    """
    missing = [
        column for column in scoring.JUDGEMENT_COLUMNS if column not in judgements
    ]
    if missing:
        raise ValueError(
            f"Invalid pairwise judgements table: missing columns {missing}. Expected "
            f"{list(scoring.JUDGEMENT_COLUMNS)}, as export_rows writes them."
        )
    table = _normalise(judgements)
    if table.empty:
        return [
            ReportSection(
                title="Pairwise comparison",
                html="<p>No judgements to analyse: no trial of a remaining "
                "participant was stored.</p>",
            )
        ]

    sections = [_overview_section(table)]
    figure_dir.mkdir(parents=True, exist_ok=True)
    scales = sorted(table["scale"].unique())
    for scale in scales:
        if len(scales) == 1:
            scale_judgements = table
        else:
            scale_judgements = table[table["scale"] == scale]
        sections.append(_scale_section(scale_judgements, scale, figure_dir, seed))
    sections.append(_consistency_section(table))
    return sections


def sections_for_study(study: Any, data: Any) -> list[ReportSection]:
    """Build the sections from the ``report_sections`` hook's arguments.

    Participants that the core's rules excluded (``data.excluded``) are left
    out.
    """
    # Select the scoring columns before the exclusions, so the filter copies
    # only them and not the whole ratings table.
    columns = [name for name in scoring.JUDGEMENT_COLUMNS if name in data.ratings]
    ratings = data.included(data.ratings[columns])
    return build_sections(
        ratings,
        Path(data.output_dir) / "figures",
        seed=study.config.core.experiment.seed,
    )


def position_bias(judgements: pd.DataFrame) -> pd.DataFrame:
    """Test, per scale, whether A is chosen more or less often than B.

    Counterbalancing puts each system first as often as second, so without a
    bias toward the first or the second stimulus, A wins half of the strict
    choices. The p-value is a two-sided exact binomial test of that half.
    """
    rows = []
    for scale, group in judgements.groupby("scale", sort=True):
        chose_a = int((group["choice"] == "a").sum())
        chose_b = int((group["choice"] == "b").sum())
        strict = chose_a + chose_b
        pvalue = (
            scipy.stats.binomtest(chose_a, strict, 0.5).pvalue if strict else np.nan
        )
        rows.append(
            {
                "scale": scale,
                "judgements": len(group),
                "chose_a": chose_a,
                "chose_b": chose_b,
                "no_preference": len(group) - strict,
                "share_a": chose_a / strict if strict else np.nan,
                "p_value": pvalue,
            }
        )
    return pd.DataFrame(rows)


def _normalise(judgements: pd.DataFrame) -> pd.DataFrame:
    """Return the judgements with their text columns as categoricals.

    The scoring functions number the participants, systems and choices
    again and again. On categoricals pandas reuses the codes, which saved
    about 0.5 s on 10^6 judgements against text columns. Both stimulus
    columns share one list of categories, so that they can be compared.
    """
    table = judgements.loc[:, list(scoring.JUDGEMENT_COLUMNS)].copy()
    table = table.dropna(subset=["stimulus_a", "stimulus_b", "choice"])
    for column in ("participant", "item", "choice"):
        table[column] = table[column].astype(str).astype("category")
    stimuli = pd.CategoricalDtype(
        pd.unique(pd.concat([table["stimulus_a"], table["stimulus_b"]]).astype(str))
    )
    for column in ("stimulus_a", "stimulus_b"):
        table[column] = table[column].astype(str).astype(stimuli)
    scale = table["scale"]
    if isinstance(scale.dtype, pd.StringDtype):
        # Filled in place of going through Python objects, one per row.
        table["scale"] = scale.fillna("").astype(str)
    else:
        table["scale"] = scale.astype(object).where(scale.notna(), "").astype(str)
    table["scale"] = table["scale"].astype("category")
    table["repeat"] = table["repeat"].fillna(False).astype(bool)
    return table.reset_index(drop=True)


def _overview_section(table: pd.DataFrame) -> ReportSection:
    bias = position_bias(table)
    html = (
        f"<p>{len(table)} judgements by {table['participant'].nunique()} "
        f"participant(s) on {table['item'].nunique()} item(s), "
        f"{int(table['repeat'].sum())} of them repeated pairs. A 'none' choice "
        "(no preference) counts as half a win for each system of its pair.</p>"
        "<h4>Position bias</h4>"
        "<p>Share of the strict choices that went to A, the stimulus presented "
        "first, with a two-sided exact binomial test against one half.</p>"
    )
    html += _table_html(bias, 3)
    return ReportSection(
        title="Pairwise comparison: judgements",
        html=html,
        tables={"pairwise_position_bias": bias},
    )


def _scale_section(
    judgements: pd.DataFrame, scale: str, figure_dir: Path, seed: int
) -> ReportSection:
    stimuli = pd.concat([judgements["stimulus_a"], judgements["stimulus_b"]])
    systems = sorted(pd.unique(stimuli))
    stem = _stem(scale or "all")
    label = f"scale {scale}" if scale else "all judgements"
    wins = scoring.win_matrix(judgements, systems)
    thurstone = scoring.thurstone_from_wins(wins)
    html = ""
    tables: dict[str, Any] = {
        f"pairwise_wins_{stem}": wins,
        f"pairwise_thurstone_{stem}": thurstone,
    }

    html += (
        "<h4>Bradley–Terry scores</h4><p>Log-strengths centred to mean 0: under "
        "the model, system i is preferred over system j with probability "
        "1 / (1 + exp(score_j − score_i)). The 95 % intervals are percentile "
        f"intervals of {N_BOOTSTRAP} bootstrap refits over participants.</p>"
    )
    try:
        bradley_terry = scoring.bradley_terry(
            judgements, systems, n_bootstrap=N_BOOTSTRAP, seed=seed
        )
    except ValueError as error:
        html += f"<p>Not computed: {escape(str(error))}</p>"
    else:
        tables[f"pairwise_bradley_terry_{stem}"] = bradley_terry
        html += _table_html(bradley_terry.sort_values("score", ascending=False), 3)
        png, _ = scoring.plot_scores(
            bradley_terry, figure_dir / f"pairwise_bradley_terry_{stem}"
        )
        html += _figure_html(png, f"Bradley–Terry scores, {label}")

    html += (
        "<h4>Thurstone Case V scores</h4><p>Mean z-score of each system's "
        "preference proportions against the others, with proportions clipped "
        "to [0.01, 0.99]; the unit is the standard deviation of the "
        "difference between two systems' perceived values.</p>"
    )
    html += _table_html(thurstone.sort_values("score", ascending=False), 3)
    png, _ = scoring.plot_scores(
        thurstone,
        figure_dir / f"pairwise_thurstone_{stem}",
        label="Thurstone Case V score",
    )
    html += _figure_html(png, f"Thurstone Case V scores, {label}")

    html += (
        "<h4>Win matrix</h4><p>Row system preferred over column system, counted "
        "over all judgements including repeats.</p>"
    )
    html += _table_html(wins, 1)
    return ReportSection(
        title=f"Pairwise comparison: {label}", html=html, tables=tables
    )


def _consistency_section(table: pd.DataFrame) -> ReportSection:
    measures = scoring.consistency(table)
    html = (
        "<p>Repeat agreement is the share of repeated pairs answered the same way "
        "both times. Transitivity is the share of triads of systems, among those "
        "with three strict preferences on one item and scale, that do not form a "
        "cycle. Consistency is the repeat agreement where repeats exist, else the "
        "transitivity. Chance levels differ: a participant who answers at random "
        "agrees on half the repeats, but 3 in 4 of their triads are "
        "transitive.</p>"
    )
    summary = pd.DataFrame(
        {
            "measure": ["repeat_agreement", "transitivity", "consistency"],
            "participants": [
                int(measures[name].notna().sum())
                for name in ("repeat_agreement", "transitivity", "consistency")
            ],
            "median": [
                measures[name].median()
                for name in ("repeat_agreement", "transitivity", "consistency")
            ],
        }
    )
    html += _table_html(summary, 3)
    html += "<h4>Per participant</h4>" + _table_html(measures.head(MAX_HTML_ROWS), 3)
    if len(measures) > MAX_HTML_ROWS:
        html += (
            f"<p>The first {MAX_HTML_ROWS} of {len(measures)} participants; "
            "tables/pairwise_consistency.csv has all of them.</p>"
        )
    return ReportSection(
        title="Pairwise comparison: consistency",
        html=html,
        tables={"pairwise_consistency": measures},
    )


def _table_html(frame: pd.DataFrame, digits: int) -> str:
    # str() first: adding a plain str to the Markup that table_html returns
    # would escape the str.
    return str(table_html(frame, digits=digits))


def _figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}" '
        f'style="max-width:100%"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)
