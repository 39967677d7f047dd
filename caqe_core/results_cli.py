"""The ``caqe results`` commands (export, merge) and ``caqe analyze``."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import click
from sqlalchemy import select

from caqe_core.cli import (
    database_options,
    experiment_name,
    experiment_option,
    load_registry,
    make_context,
)
from caqe_core.config import ConfigError, parse_config
from caqe_core.db import describe_database
from caqe_core.models import Experiment
from caqe_core.plugins import Registry
from caqe_core.results.analyze import (
    Provenance,
    ReportResult,
    build_report,
    report_step_count,
)
from caqe_core.results.exclusions import ExclusionRules
from caqe_core.results.export import (
    CONFIG_FILE,
    FORMATS,
    ExportFormatError,
    experiment_manifest,
    read_export,
    write_export,
)
from caqe_core.results.merge import MergeError, merge_exports
from caqe_core.results.tables import (
    ExportError,
    StudyTables,
    count_trials,
    load_tables,
    use_system_allocator,
)
from caqe_core.study import Study

logger = logging.getLogger(__name__)


def add_commands(cli: click.Group) -> None:
    """Add ``results export``, ``results merge`` and ``analyze`` to ``cli``."""
    cli.add_command(results_group)
    cli.add_command(analyze_command)


def _read_tables(context: object, study: Study) -> StudyTables:
    use_system_allocator()
    session_factory = context.session_factory  # type: ignore[attr-defined]
    with session_factory() as session:
        total = count_trials(session, study)
        with click.progressbar(
            length=total, label=f"Reading {total} trials", file=sys.stderr
        ) as bar:
            try:
                return load_tables(session, study, on_trials=bar.update)
            except ExportError as error:
                raise click.ClickException(str(error)) from None


@click.group("results")
def results_group() -> None:
    """Export the study's data as tables, or merge two servers' exports."""


@results_group.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="csv",
    show_default=True,
    help="File format of the tables (parquet needs pip install 'caqe[parquet]').",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write the tables to [default: ./<experiment>-export].",
)
@database_options
@experiment_option
def export_command(
    fmt: str, out_dir: Path | None, experiment: str | None, database_url: str | None
) -> None:
    """Write every table of the study, a data dictionary and a manifest."""
    context = make_context(database_url)
    study = context.study(experiment)
    out_dir = out_dir or Path(f"{study.name}-export")
    tables = _read_tables(context, study)
    location = describe_database(context.database_url)
    with context.session_factory() as session:
        manifest = experiment_manifest(session, study, fmt, location)
    try:
        written = write_export(tables, out_dir, fmt, manifest, study.config.text)
    except ExportFormatError as error:
        raise click.ClickException(str(error)) from None
    counts = ", ".join(
        f"{name} {entry['rows']}" for name, entry in manifest.tables.items()
    )
    click.echo(
        f"Exported {study.name} from {location} to {out_dir} ({len(written)} files)."
    )
    click.echo(f"Rows: {counts}.")


@results_group.command("merge")
@click.argument("first", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("second", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the merged export to.",
)
def merge_command(first: Path, second: Path, out_dir: Path) -> None:
    """Merge the exports FIRST and SECOND of one study run on two servers.

    Rows found in both (the same participant public id, the same trial
    idempotency key) are kept once, and reported.
    """
    try:
        result = merge_exports(first, second, out_dir)
    except (MergeError, ExportFormatError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Merged {first} and {second} into {out_dir}.")
    click.echo(
        "Rows: "
        + ", ".join(f"{name} {count}" for name, count in result.rows.items())
        + "."
    )
    duplicates = {name: count for name, count in result.duplicates.items() if count}
    if not duplicates:
        click.echo("No duplicates.")
        return
    click.echo(
        "Duplicates kept once: "
        + ", ".join(
            f"{count} {'trials' if name == 'ratings' else name + ' rows'}"
            for name, count in duplicates.items()
        )
        + "."
    )
    if result.duplicate_participants:
        shown = ", ".join(result.duplicate_participants[:20])
        more = len(result.duplicate_participants) - 20
        click.echo(
            f"Participants in both exports ({len(result.duplicate_participants)}): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    for conflict in result.conflicts:
        click.echo(f"Conflict: {conflict}", err=True)


@click.command("analyze")
@click.option(
    "--out",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML report; figures and tables go to the folder <name>_files next to it.",
)
@database_options
@experiment_option
@click.option(
    "--from-export",
    "export_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Analyse an export folder (such as a merged one) instead of the database.",
)
@click.option(
    "--gold-min-correct",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help="Minimum share of correct gold answers (ratings rows with gold true).",
)
@click.option(
    "--allow-flag",
    "allowed_flags",
    multiple=True,
    help="A quality flag that does not exclude a participant (repeatable).",
)
@click.option(
    "--keep-screened",
    is_flag=True,
    help="Keep participants who failed a screening step.",
)
@click.option(
    "--exclude-incomplete",
    is_flag=True,
    help="Exclude participants who did not complete the study.",
)
def analyze_command(
    html_path: Path,
    experiment: str | None,
    database_url: str | None,
    export_dir: Path | None,
    gold_min_correct: float,
    allowed_flags: tuple[str, ...],
    keep_screened: bool,
    exclude_incomplete: bool,
) -> None:
    """Apply the exclusion rules and write the HTML analysis report."""
    rules = ExclusionRules(
        screening=not keep_screened,
        allowed_flags=frozenset(allowed_flags),
        gold_min_correct=gold_min_correct,
        incomplete=exclude_incomplete,
    )
    command = shlex.join(["caqe", *sys.argv[1:]]) if sys.argv else ""
    if export_dir is not None:
        study, tables, provenance = _from_export(export_dir, experiment, command)
    else:
        context = make_context(database_url)
        study = context.study(experiment)
        tables = _read_tables(context, study)
        with context.session_factory() as session:
            row = session.scalar(
                select(Experiment).where(Experiment.id == study.experiment_id)
            )
        provenance = Provenance(
            source="database",
            location=describe_database(context.database_url),
            config_hash=row.config_hash if row else "",
            config_text=study.config.text,
            command=command,
        )

    steps = report_step_count(study)
    with click.progressbar(
        length=steps, label="Building the report", file=sys.stderr
    ) as bar:
        result = build_report(
            study,
            tables,
            html_path,
            rules,
            provenance,
            on_step=lambda _name: bar.update(1),
        )
    _print_result(result)
    if result.failures:
        raise click.ClickException(
            "The report was written, but some sections failed:\n"
            + "\n".join(result.failures)
        )


def _from_export(
    export_dir: Path, experiment: str | None, command: str
) -> tuple[Study, StudyTables, Provenance]:
    registry: Registry = load_registry()
    experiment = experiment_name(experiment, registry)
    use_system_allocator()
    try:
        manifest, tables = read_export(export_dir)
    except ExportFormatError as error:
        raise click.ClickException(str(error)) from None
    if experiment is not None and experiment != manifest["experiment"]:
        raise click.ClickException(
            f"{export_dir} contains experiment {manifest['experiment']!r}, not "
            f"{experiment!r}. Drop --experiment and --config, or give the export of "
            "that study."
        )
    config_path = export_dir / CONFIG_FILE
    try:
        config = parse_config(
            config_path, config_path.read_text(encoding="utf-8"), registry
        )
    except (OSError, ConfigError) as error:
        raise click.ClickException(
            f"The config of the export ({config_path}) cannot be loaded with the installed "
            f"plugins:\n{error}"
        ) from None
    study = Study(config=config, experiment_id=-1, registry=registry)
    provenance = Provenance(
        source="export",
        location=str(export_dir.resolve()),
        config_hash=manifest["config_hash"],
        config_text=config.text,
        command=command,
    )
    return study, tables, provenance


def _print_result(result: ReportResult) -> None:
    # Plugins may also write files into the folder themselves, so count them there.
    files = list(result.output_dir.rglob("*")) if result.output_dir.is_dir() else []
    figures = sum(1 for path in files if path.suffix == ".png")
    tables = sum(1 for path in files if path.suffix == ".csv")
    excluded = len(result.excluded)
    click.echo(f"Wrote {result.html_path}")
    click.echo(
        f"  {_count(figures, 'figure')} (PNG and SVG) and {_count(tables, 'table')} "
        f"(CSV) in {result.output_dir}"
    )
    click.echo(f"  {_count(excluded, 'participant')} excluded")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
