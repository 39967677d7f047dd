"""The analysis report: exclusions, plugin sections, listeners, timing, provenance.

``build_report`` writes one self-contained HTML file and, in a folder next
to it (``report_files`` for ``report.html``), every figure as PNG and SVG
and every table as CSV.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
from markupsafe import Markup, escape
from matplotlib.figure import Figure

from caqe_core import __version__
from caqe_core.config import SurveyQuestion
from caqe_core.extension import ReportSection
from caqe_core.results import StudyData
from caqe_core.results.exclusions import (
    ExclusionRules,
    core_exclusions,
    exclusion_table,
)
from caqe_core.results.report import (
    file_stem,
    png_html,
    render_page,
    save_figure,
    save_table,
    slug,
    table_html,
)
from caqe_core.results.tables import TABLE_NAMES, StudyTables
from caqe_core.study import Study

logger = logging.getLogger(__name__)

REPORTED_PACKAGES = ("numpy", "scipy", "pandas", "matplotlib", "choix", "pyarrow")
CORE_STEPS = ("exclusions", "overview", "ratings", "listeners", "timing", "write")
MAX_HTML_ROWS = 200
"""Longer tables are cut in the HTML; the CSV next to the report has every row."""
SHORT_TEXT_ANSWER = 200
"""Text questions with at most this max_length have their common answers listed."""


@dataclass
class Provenance:
    """Source of the analysed data, for the reproducibility section."""

    source: str
    """``database`` or ``export``."""
    location: str
    """Database location without password, or the export folder."""
    config_hash: str
    config_text: str
    command: str = ""


@dataclass
class ReportResult:
    """Files that ``build_report`` wrote, and the exclusions it applied."""

    html_path: Path
    output_dir: Path
    files: list[Path]
    excluded: dict[str, list[str]]
    failures: list[str] = field(default_factory=list)
    """One message per plugin whose report_sections hook raised."""


class _Outputs:
    """Saves figures and tables into the report folder under unique stems."""

    def __init__(self, folder: Path) -> None:
        self.figures_dir = folder / "figures"
        self.tables_dir = folder / "tables"
        self.files: list[Path] = []
        self._stems: set[tuple[str, str]] = set()

    def _unique(self, kind: str, stem: str) -> str:
        base = file_stem(stem)
        candidate = base
        number = 2
        while (kind, candidate) in self._stems:
            candidate = f"{base}-{number}"
            number += 1
        if candidate != base:
            logger.warning(
                "Two report %ss are named %r; saving the second as %r.",
                kind,
                base,
                candidate,
            )
        self._stems.add((kind, candidate))
        return candidate

    def figure(self, figure: Figure, stem: str) -> bytes:
        """Save ``figure`` as PNG and SVG and return the PNG bytes."""
        png, svg = save_figure(figure, self.figures_dir, self._unique("figure", stem))
        self.files += [png, svg]
        return png.read_bytes()

    def table(self, table: Any, stem: str) -> None:
        self.files.append(
            save_table(table, self.tables_dir, self._unique("table", stem))
        )


def output_folder(html_path: Path) -> Path:
    """Return the folder for figures and tables next to ``html_path``."""
    return html_path.with_name(f"{html_path.stem}_files")


def report_step_count(study: Study) -> int:
    """Return the number of steps ``build_report`` reports to ``on_step``."""
    return len(CORE_STEPS) + len(study.registry.hook.report_sections.get_hookimpls())


def build_report(
    study: Study,
    tables: StudyTables,
    html_path: Path,
    rules: ExclusionRules,
    provenance: Provenance,
    on_step: Callable[[str], None] | None = None,
) -> ReportResult:
    """Apply the exclusion rules, collect every section and write the report."""
    step = on_step or (lambda _name: None)
    html_path = html_path.resolve()
    folder = output_folder(html_path)
    outputs = _Outputs(folder)
    frames = tables.frames

    excluded = core_exclusions(
        frames["participants"], frames["screening"], frames["ratings"], rules
    )
    data = StudyData(
        **{name: frames[name] for name in TABLE_NAMES},
        excluded=excluded,
        output_dir=folder,
        rules=rules,
    )
    step("exclusions")

    overview = _overview_section(study, data, outputs)
    step("overview")
    plugin_sections, failures = _plugin_sections(study, data, outputs, step)
    # The exclusion section is built after the plugins, which add their
    # post-screening exclusions to data.excluded.
    exclusions = _exclusion_section(data, outputs)
    sections = [overview, exclusions, *plugin_sections]
    if not any(not section["failed"] for section in plugin_sections):
        ratings = _ratings_section(data, outputs)
        if ratings is not None:
            sections.append(ratings)
    step("ratings")
    sections.append(_listeners_section(study, data, outputs))
    step("listeners")
    sections.append(_timing_section(data, outputs))
    step("timing")
    sections.append(_provenance_section(study, provenance, rules))

    page = render_page(
        {
            "title": study.config.core.experiment.title,
            "experiment": study.name,
            "test_type": study.config.core.test_type,
            "caqe_version": __version__,
            "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "sections": sections,
        }
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page, encoding="utf-8")
    step("write")
    logger.info("Wrote the report %s with %d sections", html_path, len(sections))
    return ReportResult(
        html_path=html_path,
        output_dir=folder,
        files=[html_path, *outputs.files],
        excluded={p: list(r) for p, r in data.excluded.items() if r},
        failures=failures,
    )


def _section(title: str, parts: list[Any], failed: bool = False) -> dict[str, Any]:
    return {
        "id": slug(title),
        "title": title,
        "html": Markup("\n").join(
            Markup(part) if isinstance(part, Markup) else part for part in parts
        ),
        "failed": failed,
    }


def _facts(pairs: list[tuple[str, Any]]) -> Markup:
    items = "".join(
        f"<dt>{escape(key)}</dt><dd>{escape(str(value))}</dd>" for key, value in pairs
    )
    return Markup(f"<dl class='facts'>{items}</dl>")


def _paragraph(text: str, css: str | None = None) -> Markup:
    attribute = f" class='{css}'" if css else ""
    return Markup(f"<p{attribute}>{escape(text)}</p>")


def _limited(frame: pd.DataFrame, stem: str, **options: Any) -> Markup:
    if len(frame) <= MAX_HTML_ROWS:
        return table_html(frame, **options)
    note = _paragraph(
        f"The first {MAX_HTML_ROWS} of {len(frame)} rows; tables/{stem}.csv has all of them.",
        "note",
    )
    return table_html(frame.head(MAX_HTML_ROWS), **options) + note


# --- plugin sections ----------------------------------------------------------------


def _plugin_sections(
    study: Study, data: StudyData, outputs: _Outputs, step: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Call each plugin's report_sections hook on its own, so one failure is isolated."""
    pm = study.registry.pm
    implementations = study.registry.hook.report_sections.get_hookimpls()
    plugins = [implementation.plugin for implementation in implementations]
    sections: list[dict[str, Any]] = []
    failures: list[str] = []
    for plugin in plugins:
        name = pm.get_name(plugin) or repr(plugin)
        others = [other for other in plugins if other is not plugin]
        caller = pm.subset_hook_caller("report_sections", remove_plugins=others)
        try:
            results = caller(study=study, data=data)
            returned = [section for result in results if result for section in result]
            for section in returned:
                if not isinstance(section, ReportSection):
                    raise TypeError(
                        f"report_sections returned {type(section).__name__}; expected "
                        "caqe_core.ReportSection instances."
                    )
            for section in returned:
                for stem, table in section.tables.items():
                    outputs.table(table, stem)
                for stem, figure in section.figures.items():
                    outputs.figure(figure, stem)
                sections.append(_section(section.title, [Markup(section.html)]))
        except Exception as error:
            message = f"Plugin {name!r} failed to build its report sections: {type(error).__name__}: {error}"
            # The message reaches the user through ReportResult.failures; the
            # traceback is for plugin authors, at debug level.
            logger.error("%s", message)
            logger.debug(
                "Traceback of plugin %s's report_sections", name, exc_info=True
            )
            failures.append(message)
            sections.append(
                _section(
                    f"Sections of plugin {name} (failed)",
                    [_paragraph(message, "error")],
                    failed=True,
                )
            )
        step(f"plugin {name}")
    return sections, failures


# --- overview and exclusions -----------------------------------------------------------


def _overview_section(
    study: Study, data: StudyData, outputs: _Outputs
) -> dict[str, Any]:
    participants = data.participants
    statuses = participants["status"].value_counts().sort_index()
    trials = data.ratings["trial"].nunique() if not data.ratings.empty else 0
    contributed = data.ratings["participant"].nunique() if not data.ratings.empty else 0
    facts = [
        ("Experiment", f"{study.name}: {study.config.core.experiment.title}"),
        ("Test type", study.config.core.test_type),
        ("Recruiter", study.config.core.recruiter),
        (
            "Participants",
            f"{len(participants)} ({', '.join(f'{s} {n}' for s, n in statuses.items()) or 'none'})",
        ),
        ("Participants with trials", contributed),
        ("Trials stored", trials),
        ("Rows in ratings", len(data.ratings)),
    ]
    progress = data.conditions[
        ["condition", "item", "scale", "completed", "target"]
    ].copy()
    outputs.table(progress, "conditions")
    return _section(
        "Study",
        [
            _facts(facts),
            Markup("<h3>Trials per condition</h3>"),
            _limited(progress, "conditions"),
        ],
    )


def _exclusion_section(data: StudyData, outputs: _Outputs) -> dict[str, Any]:
    table = exclusion_table(
        {p: r for p, r in data.excluded.items() if r}, data.participants
    )
    outputs.table(table, "exclusions")
    contributed = _participants_with_trials(data)
    rules: dict[str, set[str]] = {}
    for participant, reasons in data.excluded.items():
        for reason in reasons:
            rule = reason.split(":", 1)[0].strip()
            rules.setdefault(rule, set()).add(participant)
    counts = pd.DataFrame(
        [
            {
                "rule": rule,
                "participants": len(members),
                "with trials": len(members & contributed),
            }
            for rule, members in sorted(rules.items())
        ],
        columns=["rule", "participants", "with trials"],
    )
    outputs.table(counts, "exclusions_by_rule")
    excluded_with_data = {p for p in table["participant"] if p in contributed}
    parts: list[Any] = [
        Markup("<ul>")
        + Markup("").join(
            Markup("<li>{}</li>").format(line) for line in data.rules.describe()
        )
        + Markup("<li>Test types add their own post-screening rules below.</li></ul>"),
        _paragraph(
            f"{len(table)} participants are excluded; {len(excluded_with_data)} of them had "
            f"stored trials. {len(contributed - excluded_with_data)} participants with trials "
            "remain in the analysis."
        ),
    ]
    if len(counts):
        parts += [Markup("<h3>By rule</h3>"), table_html(counts)]
    if len(table):
        parts += [
            Markup("<h3>Excluded participants</h3>"),
            _limited(table, "exclusions"),
        ]
    return _section("Exclusions", parts)


def _participants_with_trials(data: StudyData) -> set[str]:
    # unique() first, because a set of every ratings row would create one
    # Python string per row.
    if data.ratings.empty:
        return set()
    return set(data.ratings["participant"].unique())


# --- ratings overview (test types without a report of their own) ------------------------------


def value_column(ratings: pd.DataFrame) -> str | None:
    """Return the numeric rating column of ``ratings`` (``value`` or ``rating``)."""
    for name in ("value", "rating"):
        if name in ratings.columns and pd.api.types.is_numeric_dtype(
            ratings[name].dtype
        ):
            return name
    return None


def ratings_summary(ratings: pd.DataFrame, column: str, by: list[str]) -> pd.DataFrame:
    """Summarise ``column`` per group of ``by``.

    ``mean``, ``sd`` and ``median`` are over all ratings. ``listener_mean``
    is the mean of each listener's mean rating, and ``ci95_low`` and
    ``ci95_high`` its 95 % t-interval, which treats listeners (not ratings)
    as the independent samples.
    """
    frame = ratings.dropna(subset=[column]).copy()
    for name in by:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), "")
    per_listener = frame.groupby([*by, "participant"], sort=True)[column].mean()
    rows = []
    for key, group in frame.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group[column].to_numpy(dtype=float)
        listener = per_listener.loc[key].to_numpy(dtype=float)
        mean = float(np.mean(listener))
        if len(listener) > 1:
            low, high = scipy.stats.t.interval(
                0.95, df=len(listener) - 1, loc=mean, scale=scipy.stats.sem(listener)
            )
        else:
            low = high = float("nan")
        rows.append(
            {
                **dict(zip(by, key)),
                "ratings": len(values),
                "listeners": len(listener),
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1))
                if len(values) > 1
                else float("nan"),
                "median": float(np.median(values)),
                "listener_mean": mean,
                "ci95_low": float(low),
                "ci95_high": float(high),
            }
        )
    columns = [
        *by,
        "ratings",
        "listeners",
        "mean",
        "sd",
        "median",
        "listener_mean",
        "ci95_low",
        "ci95_high",
    ]
    return pd.DataFrame(rows, columns=columns)


def _ratings_section(data: StudyData, outputs: _Outputs) -> dict[str, Any] | None:
    column = value_column(data.ratings)
    if column is None or "system" not in data.ratings.columns:
        return None
    ratings = data.included(data.ratings)
    if ratings.empty:
        return _section("Ratings", [_paragraph("No ratings of included participants.")])
    summary = ratings_summary(ratings, column, ["scale", "system"])
    by_item = ratings_summary(ratings, column, ["scale", "item", "system"])
    outputs.table(summary, "ratings_summary")
    outputs.table(by_item, "ratings_summary_by_item")
    parts: list[Any] = [
        _paragraph(
            f"Column {column!r} of the ratings of included participants, per scale and "
            "system. The 95 % confidence interval is a t-interval over each listener's "
            "mean rating. The test type adds no report of its own."
        ),
        table_html(summary),
    ]
    for scale, group in summary.groupby("scale", sort=True):
        figure = _summary_figure(group, column, str(scale))
        stem = f"ratings_{scale}" if scale else "ratings"
        png = outputs.figure(figure, stem)
        parts.append(
            png_html(png, f"Mean {column} per system with 95 % confidence intervals")
        )
    parts.append(
        _paragraph(
            "tables/ratings_summary_by_item.csv has the same summary per item.", "note"
        )
    )
    return _section("Ratings", parts)


def _summary_figure(summary: pd.DataFrame, column: str, scale: str) -> Figure:
    ordered = summary.sort_values("listener_mean")
    figure = Figure(figsize=(6.4, 0.45 * len(ordered) + 1.4))
    axes = figure.subplots()
    positions = np.arange(len(ordered))
    means = ordered["listener_mean"].to_numpy()
    errors = np.vstack(
        [
            means - ordered["ci95_low"].to_numpy(),
            ordered["ci95_high"].to_numpy() - means,
        ]
    )
    axes.errorbar(means, positions, xerr=errors, fmt="o", color="#1f5fa8", capsize=4)
    axes.set_yticks(positions, ordered["system"].astype(str))
    axes.set_xlabel(f"mean {column} (95 % CI over listeners)")
    axes.set_title(f"Scale {scale}" if scale else "Ratings")
    axes.grid(axis="x", color="#dddddd")
    figure.tight_layout()
    return figure


# --- listeners (survey answers) ----------------------------------------------------------------


def _listeners_section(
    study: Study, data: StudyData, outputs: _Outputs
) -> dict[str, Any]:
    contributed = _participants_with_trials(data)
    participants = data.participants[data.participants["participant"].isin(contributed)]
    participants = data.included(participants)
    surveys = study.config.core.surveys
    numeric_rows: list[dict[str, Any]] = []
    choice_rows: list[dict[str, Any]] = []
    text_parts: list[Any] = []
    for survey, questions in (("pre", surveys.pre), ("post", surveys.post)):
        for question in questions:
            name = f"{survey}_survey_{question.id}"
            if name not in participants.columns:
                continue
            answers = participants[name]
            if question.type == "number":
                numeric_rows.append(_numeric_summary(question, answers))
            elif question.type in ("single", "likert", "multiple"):
                choice_rows.extend(_choice_counts(question, answers))
            else:
                text_parts.append(_text_summary(question, answers))
    numeric = pd.DataFrame(
        numeric_rows,
        columns=["question", "answers", "mean", "sd", "median", "min", "max"],
    )
    choices = pd.DataFrame(
        choice_rows, columns=["question", "option", "count", "percent"]
    )
    outputs.table(numeric, "listeners_numeric")
    outputs.table(choices, "listeners_choices")
    parts: list[Any] = [
        _paragraph(
            f"Survey answers of the {len(participants)} included participants with trials. "
            "Percentages are of the participants who answered the question."
        )
    ]
    if len(numeric):
        parts += [Markup("<h3>Numbers</h3>"), table_html(numeric)]
    if len(choices):
        parts += [
            Markup("<h3>Choices</h3>"),
            _limited(choices, "listeners_choices", digits=1),
        ]
    parts += text_parts
    return _section("Listeners", parts)


def _numeric_summary(question: SurveyQuestion, answers: pd.Series) -> dict[str, Any]:
    values = pd.to_numeric(answers, errors="coerce").dropna().to_numpy(dtype=float)
    if len(values) == 0:
        return {"question": question.text, "answers": 0}
    return {
        "question": question.text,
        "answers": len(values),
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def _choice_counts(
    question: SurveyQuestion, answers: pd.Series
) -> list[dict[str, Any]]:
    given = answers.dropna().astype(str)
    given = given[given != ""]
    if question.type == "multiple":
        chosen = given.str.split("; ").explode()
    else:
        chosen = given
    counts = chosen.value_counts()
    options = list(question.options) + sorted(set(counts.index) - set(question.options))
    total = len(given)
    rows = [
        {
            "question": question.text,
            "option": option,
            "count": int(counts.get(option, 0)),
            "percent": 100.0 * counts.get(option, 0) / total if total else float("nan"),
        }
        for option in options
    ]
    rows.append(
        {
            "question": question.text,
            "option": "(no answer)",
            "count": int(len(answers) - total),
            "percent": float("nan"),
        }
    )
    return rows


def _text_summary(question: SurveyQuestion, answers: pd.Series) -> Markup:
    given = answers.dropna().astype(str).str.strip()
    given = given[given != ""]
    heading = Markup("<h3>{}</h3>").format(question.text)
    summary = _paragraph(f"{len(given)} participants answered.")
    if question.max_length > SHORT_TEXT_ANSWER or given.empty:
        return heading + summary
    common = given.str.casefold().value_counts().head(10)
    table = pd.DataFrame(
        {"answer (lowercase)": common.index, "count": common.to_numpy()}
    )
    return heading + summary + table_html(table)


# --- timing ------------------------------------------------------------------------------------


def _timing_section(data: StudyData, outputs: _Outputs) -> dict[str, Any]:
    # Keep one row per trial before applying the exclusions, so the filter
    # copies four columns of one row per trial. All rows of a trial belong to
    # one participant, so the result equals filtering first.
    columns = ["participant", "trial", "condition", "time_on_page_ms"]
    first_rows = data.ratings[columns].drop_duplicates("trial")
    trials = data.included(first_rows)[["trial", "condition", "time_on_page_ms"]]
    if trials.empty:
        return _section("Timing", [_paragraph("No trials of included participants.")])
    seconds = trials["time_on_page_ms"].astype(float) / 1000.0
    by_condition = (
        seconds.groupby(trials["condition"])
        .agg(
            trials="count",
            median_s="median",
            q25_s=lambda s: s.quantile(0.25),
            q75_s=lambda s: s.quantile(0.75),
        )
        .reset_index()
    )
    order = {key: index for index, key in enumerate(data.conditions["condition"])}
    by_condition = by_condition.sort_values(
        "condition", key=lambda keys: keys.map(order).fillna(len(order))
    ).reset_index(drop=True)
    outputs.table(by_condition, "time_per_condition")
    completed = data.included(data.participants)
    durations = (
        completed.loc[completed["status"] == "completed", "duration_s"]
        .dropna()
        .astype(float)
    )
    present = seconds.dropna()
    facts = [
        ("Trials with a measured time", f"{len(present)} of {len(trials)}"),
        (
            "Median time per trial",
            _seconds(present.median()) if len(present) else "n/a",
        ),
        (
            "Interquartile range",
            f"{_seconds(present.quantile(0.25))} to {_seconds(present.quantile(0.75))}"
            if len(present)
            else "n/a",
        ),
        (
            "Median session (completed)",
            _seconds(durations.median()) if len(durations) else "n/a",
        ),
    ]
    parts: list[Any] = [_facts(facts)]
    if len(present):
        figure = _time_histogram(present.to_numpy())
        png = outputs.figure(figure, "time_per_trial")
        parts.append(png_html(png, "Histogram of the time per trial"))
    parts += [
        Markup("<h3>Per condition</h3>"),
        _limited(by_condition, "time_per_condition", digits=1),
    ]
    return _section("Timing", parts)


def _seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _time_histogram(seconds: np.ndarray) -> Figure:
    upper = float(np.quantile(seconds, 0.99))
    shown = seconds[seconds <= upper]
    figure = Figure(figsize=(6.4, 3.2))
    axes = figure.subplots()
    axes.hist(shown, bins=40, color="#1f5fa8", edgecolor="white")
    axes.axvline(float(np.median(seconds)), color="#d62728", label="median")
    axes.set_xlabel("time on page (s)")
    axes.set_ylabel("trials")
    axes.set_title(
        f"Time per trial ({len(seconds) - len(shown)} above the 99th percentile not shown)"
    )
    axes.legend()
    figure.tight_layout()
    return figure


# --- provenance ---------------------------------------------------------------------------------


def package_versions(study: Study) -> dict[str, str]:
    """Return the versions of Python, CAQE, the analysis packages and the plugins."""
    versions = {"python": platform.python_version(), "caqe": __version__}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    for name, version in sorted(study.registry.versions.items()):
        versions[f"plugin {name}"] = version or "unknown"
    return versions


def _provenance_section(
    study: Study, provenance: Provenance, rules: ExclusionRules
) -> dict[str, Any]:
    facts = [
        ("Data source", f"{provenance.source}: {provenance.location}"),
        ("Config hash (SHA-256 of config and audio)", provenance.config_hash),
        ("Config file", str(study.config.path)),
        ("Command", provenance.command or " ".join(sys.argv)),
        ("Gold items: minimum correct", f"{rules.gold_min_correct:.0%}"),
        ("Allowed flags", ", ".join(sorted(rules.allowed_flags)) or "none"),
    ]
    versions = pd.DataFrame(
        list(package_versions(study).items()), columns=["package", "version"]
    )
    return _section(
        "Reproducibility",
        [
            _facts(facts),
            Markup("<h3>Versions</h3>"),
            table_html(versions),
            Markup(
                "<details><summary>Config as written</summary><pre>{}</pre></details>"
            ).format(provenance.config_text),
        ],
    )
