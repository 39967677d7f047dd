"""`caqe analyze`: exclusions, the report's numbers, figures and provenance."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from click.testing import CliRunner, Result
from matplotlib.figure import Figure

from caqe_core import ReportSection, hookimpl
from caqe_core.cli import build_cli
from caqe_core.plugins import Registry, build_registry, set_registry
from caqe_core.results import StudyData, figure_html, table_html
from tests.results.synthetic import SyntheticStudy, make_scale_study
from tests.support import scale_plugin

PARTICIPANTS = 1000
ITEMS = 20


@pytest.fixture(scope="module")
def big_study(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> SyntheticStudy:
    """1,000 listeners × 20 trials of the 'scale' test type."""
    folder = tmp_path_factory.mktemp("big")
    return make_scale_study(
        folder,
        f"sqlite:///{folder / 'big.sqlite'}",
        registry,
        participants=PARTICIPANTS,
        items=ITEMS,
    )


@pytest.fixture(scope="module")
def big_report(
    big_study: SyntheticStudy,
    registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    set_registry(registry)
    try:
        result = CliRunner().invoke(
            build_cli(),
            ["analyze", "--database-url", big_study.database_url, "--out", str(out)],
            catch_exceptions=False,
        )
    finally:
        set_registry(None)
    assert result.exit_code == 0, result.output
    return out, result


def _included(study: SyntheticStudy) -> pd.DataFrame:
    ratings = pd.DataFrame(study.ratings)
    excluded = study.flagged | study.screened_out
    return ratings[~ratings["participant"].isin(excluded)]


def test_report_ratings_match_numpy(
    big_study: SyntheticStudy, big_report: tuple[Path, Result]
) -> None:
    out, _ = big_report
    summary = pd.read_csv(
        out.with_name("report_files") / "tables" / "ratings_summary.csv"
    )
    summary = summary.set_index("system")
    included = _included(big_study)
    for system, group in included.groupby("system"):
        values = group["value"].to_numpy()
        listener_means = group.groupby("participant")["value"].mean().to_numpy()
        n = len(listener_means)
        half_width = (
            scipy.stats.t.ppf(0.975, n - 1) * listener_means.std(ddof=1) / np.sqrt(n)
        )
        row = summary.loc[system]
        assert row["ratings"] == len(values)
        assert row["listeners"] == n
        assert row["mean"] == pytest.approx(values.mean())
        assert row["sd"] == pytest.approx(values.std(ddof=1))
        assert row["median"] == pytest.approx(np.median(values))
        assert row["listener_mean"] == pytest.approx(listener_means.mean())
        assert row["ci95_low"] == pytest.approx(listener_means.mean() - half_width)
        assert row["ci95_high"] == pytest.approx(listener_means.mean() + half_width)
    html = out.read_text()
    for system in summary.index:
        assert f"{summary.loc[system, 'mean']:.2f}" in html


def test_report_lists_core_exclusions(
    big_study: SyntheticStudy, big_report: tuple[Path, Result]
) -> None:
    out, result = big_report
    exclusions = pd.read_csv(
        out.with_name("report_files") / "tables" / "exclusions.csv"
    )
    assert set(exclusions["participant"]) == big_study.flagged | big_study.screened_out
    reasons = exclusions.set_index("participant")["reasons"]
    for participant in big_study.flagged:
        assert reasons[participant] == "flag: hearing"
    for participant in big_study.screened_out:
        assert reasons[participant] == "screening: screened out at step 'consent'"
    by_rule = pd.read_csv(
        out.with_name("report_files") / "tables" / "exclusions_by_rule.csv"
    )
    assert dict(zip(by_rule["rule"], by_rule["participants"])) == {
        "flag": len(big_study.flagged),
        "screening": len(big_study.screened_out),
    }
    assert f"{len(exclusions)} participants excluded" in result.output


def test_report_listeners_and_timing(
    big_study: SyntheticStudy, big_report: tuple[Path, Result]
) -> None:
    out, _ = big_report
    tables = out.with_name("report_files") / "tables"
    included = _included(big_study)
    numeric = pd.read_csv(tables / "listeners_numeric.csv").set_index("question")
    assert (
        numeric.loc["Your age in years", "answers"] == included["participant"].nunique()
    )

    timing = pd.read_csv(tables / "time_per_condition.csv").set_index("condition")
    trials = included.drop_duplicates("trial")
    for condition, group in trials.groupby("condition"):
        seconds = (
            np.array([big_study.time_on_page_ms[t] for t in group["trial"]]) / 1000
        )
        assert timing.loc[condition, "trials"] == len(seconds)
        assert timing.loc[condition, "median_s"] == pytest.approx(np.median(seconds))
    all_seconds = (
        np.array([big_study.time_on_page_ms[t] for t in trials["trial"]]) / 1000
    )
    assert f"{np.median(all_seconds):.1f} s" in out.read_text()


def test_report_is_self_contained_and_reproducible(
    big_study: SyntheticStudy, big_report: tuple[Path, Result]
) -> None:
    out, _ = big_report
    html = out.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert not re.search(r"""<link[^>]+stylesheet""", html)
    assert html.count("data:image/png;base64,") >= 2
    with big_study.session_factory() as session:
        from caqe_core.models import Experiment

        config_hash = session.get(Experiment, big_study.study.experiment_id).config_hash
    assert config_hash in html
    assert big_study.database_url.removeprefix("sqlite:///") in html
    for package in ("numpy", "scipy", "pandas", "matplotlib", "choix"):
        assert f"<td class='text'>{package}</td>" in html


def test_report_figures_render(big_report: tuple[Path, Result]) -> None:
    out, _ = big_report
    figures = out.with_name("report_files") / "figures"
    stems = {path.stem for path in figures.glob("*.png")}
    assert {"ratings", "time_per_trial"} <= stems
    for stem in stems:
        image = matplotlib.image.imread(figures / f"{stem}.png")
        height, width = image.shape[:2]
        assert width > 400, stem
        assert height > 200, stem
        assert image[..., :3].std() > 0.05, f"{stem}.png is blank"
        root = ElementTree.parse(figures / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg"), stem


# --- report_sections hook and gold items --------------------------------------------


class ReportPlugin:
    """A plugin that excludes one participant and adds a section with a figure."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    @hookimpl
    def report_sections(self, study: Any, data: StudyData) -> list[ReportSection]:
        self.seen["excluded"] = {p: list(r) for p, r in data.excluded.items()}
        self.seen["ratings"] = len(data.ratings)
        self.seen["output_dir"] = data.output_dir
        first = min(data.included(data.ratings)["participant"].unique())
        data.exclude(first, "slow listener: took too long")
        means = (
            data.included(data.ratings)
            .groupby("system")["value"]
            .mean()
            .to_frame("mean")
        )
        figure = Figure(figsize=(4, 3))
        figure.subplots().bar(means.index, means["mean"])
        html = table_html(means) + figure_html(figure, "Means per system")
        return [
            ReportSection(
                title="Plugin statistics",
                html=str(html),
                tables={"plugin_means": means},
                figures={"plugin_means": figure},
            )
        ]


class FailingPlugin:
    @hookimpl
    def report_sections(self, study: Any, data: StudyData) -> list[ReportSection]:
        raise RuntimeError("the statistics failed")


@pytest.fixture
def runner_with() -> Iterator[Callable[..., Result]]:
    def run(registry: Registry, *args: str) -> Result:
        set_registry(registry)
        return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)

    try:
        yield run
    finally:
        set_registry(None)


def test_plugin_section_and_exclusion(
    small_study: SyntheticStudy, tmp_path: Path, runner_with: Callable[..., Result]
) -> None:
    plugin = ReportPlugin()
    registry = build_registry(
        extra_plugins=[("scale", scale_plugin), ("report-test", plugin)]
    )
    out = tmp_path / "out" / "study.html"
    result = runner_with(
        registry,
        "analyze",
        "--database-url",
        small_study.database_url,
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output

    assert plugin.seen["ratings"] == len(small_study.ratings)
    assert (
        set(plugin.seen["excluded"]) == small_study.flagged | small_study.screened_out
    )
    assert plugin.seen["output_dir"] == out.with_name("study_files").resolve()
    html = out.read_text()
    assert "Plugin statistics" in html
    assert "slow listener: took too long" in html
    assert "<h2>Ratings</h2>" not in html, (
        "the generic summary is only for test types without a report"
    )
    files = out.with_name("study_files")
    assert (files / "figures" / "plugin_means.png").is_file()
    assert (files / "figures" / "plugin_means.svg").is_file()
    means = pd.read_csv(files / "tables" / "plugin_means.csv")
    assert list(means.columns) == ["system", "mean"]
    exclusions = pd.read_csv(files / "tables" / "exclusions.csv")
    assert len(exclusions) == len(small_study.flagged | small_study.screened_out) + 1
    assert (exclusions["reasons"] == "slow listener: took too long").sum() == 1


def test_failing_plugin_still_writes_report(
    small_study: SyntheticStudy,
    tmp_path: Path,
    runner_with: Callable[..., Result],
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = build_registry(
        extra_plugins=[("scale", scale_plugin), ("broken-report", FailingPlugin())]
    )
    out = tmp_path / "report.html"
    result = runner_with(
        registry,
        "analyze",
        "--database-url",
        small_study.database_url,
        "--out",
        str(out),
    )
    assert result.exit_code == 1
    assert "broken-report" in result.output
    assert "the statistics failed" in result.output
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any("the statistics failed" in record.getMessage() for record in errors)
    assert not any(record.exc_info for record in errors)
    html = out.read_text()
    assert "Sections of plugin broken-report (failed)" in html
    assert "<h2>Ratings</h2>" in html


class GoldScale(scale_plugin.ScaleTestType):
    """The scale test type with item0 as a gold check: system2 must get the top rating."""

    def export_rows(self, trial: Any) -> list[dict[str, Any]]:
        rows = super().export_rows(trial)
        if trial["condition"].item != "item0":
            return rows
        best = max(rows, key=lambda row: row["value"])["system"]
        for row in rows:
            row["gold"] = True
            row["correct"] = best == "system2"
        return rows


class GoldPlugin:
    @hookimpl
    def register_test_types(self, register: Callable[[Any], None]) -> None:
        register(GoldScale())


def test_gold_items_exclude_participants(
    small_study: SyntheticStudy, tmp_path: Path, runner_with: Callable[..., Result]
) -> None:
    registry = build_registry(extra_plugins=[("gold", GoldPlugin())])
    out = tmp_path / "report.html"
    result = runner_with(
        registry,
        "analyze",
        "--database-url",
        small_study.database_url,
        "--out",
        str(out),
        "--gold-min-correct",
        "1",
    )
    assert result.exit_code == 0, result.output

    ratings = pd.DataFrame(small_study.ratings)
    gold = ratings[ratings["item"] == "item0"]
    best = gold.loc[gold.groupby("trial")["value"].idxmax()]
    wrong = set(best.loc[best["system"] != "system2", "participant"])
    assert wrong, "the synthetic data has listeners who fail the gold item"
    exclusions = pd.read_csv(
        out.with_name("report_files") / "tables" / "exclusions.csv"
    )
    reasons = exclusions["reasons"]
    gold_excluded = set(exclusions.loc[reasons.str.contains("gold: "), "participant"])
    assert gold_excluded == wrong
    # Each gold trial has three gold rows, one per system.
    assert "gold: 0 of 3 gold answers correct (0%), below the minimum of 100%" in set(
        reasons
    )


def test_analyze_from_export(
    small_study: SyntheticStudy, tmp_path: Path, run_cli: Callable[..., Result]
) -> None:
    export = tmp_path / "export"
    assert (
        run_cli(
            "results",
            "export",
            "--database-url",
            small_study.database_url,
            "--out",
            str(export),
        ).exit_code
        == 0
    )
    from_db = tmp_path / "db.html"
    from_export = tmp_path / "export.html"
    assert (
        run_cli(
            "analyze", "--database-url", small_study.database_url, "--out", str(from_db)
        ).exit_code
        == 0
    )
    result = run_cli("analyze", "--from-export", str(export), "--out", str(from_export))
    assert result.exit_code == 0, result.output
    summary_db = pd.read_csv(tmp_path / "db_files" / "tables" / "ratings_summary.csv")
    summary_export = pd.read_csv(
        tmp_path / "export_files" / "tables" / "ratings_summary.csv"
    )
    pd.testing.assert_frame_equal(summary_db, summary_export)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["config_hash"] in from_export.read_text()
