"""The ``caqe`` command line."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from caqe_core import __version__
from caqe_core.config import ConfigError, StudyConfig, load_config
from caqe_core.db import (
    DEFAULT_POOL_SIZE,
    current_revision,
    data_dir,
    describe_database,
    has_tables,
    is_up_to_date,
    make_engine,
    make_session_factory,
    resolve_database_url,
    upgrade,
)
from caqe_core.plugins import PluginError, Registry, get_registry
from caqe_core.study import (
    Study,
    StudyConflictError,
    check_study,
    generated_dir,
    load_study_from_database,
    prepare_study,
)

logger = logging.getLogger(__name__)

SECRET_KEY_ENV = "CAQE_SECRET_KEY"
ADMIN_PASSWORD_ENV = "CAQE_ADMIN_PASSWORD"


@dataclass
class Context:
    """Registry and database of a command that works on a study."""

    registry: Registry
    database_url: str
    engine: Engine
    session_factory: sessionmaker[Session]

    def study(self, name: str | None = None) -> Study:
        """Load the study stored in the database (for results and recruiter commands).

        Without ``name``, a config given with ``--config`` or ``CAQE_CONFIG``
        picks the study by its ``experiment.name``; without either, the
        database must hold exactly one study.
        """
        ensure_schema(self.engine)
        name = experiment_name(name, self.registry)
        try:
            return load_study_from_database(self.session_factory, self.registry, name)
        except LookupError as error:
            raise click.ClickException(str(error)) from None
        except ConfigError as error:
            raise click.ClickException(
                "The config stored in the database no longer validates with the installed "
                f"plugins:\n{error}"
            ) from None


def open_database(
    database_url: str | None, pool_size: int = DEFAULT_POOL_SIZE
) -> tuple[str, Engine, sessionmaker[Session]]:
    url = resolve_database_url(database_url)
    try:
        engine = make_engine(url, pool_size)
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as error:
        raise click.ClickException(
            f"Invalid database URL {describe_database(url)!r}: {error}"
        ) from None
    return url, engine, make_session_factory(engine)


def ensure_schema(engine: Engine) -> None:
    """Create or migrate the schema; a database of a newer CAQE is an error."""
    from alembic.util import CommandError

    try:
        if not has_tables(engine) or not is_up_to_date(engine):
            upgrade(engine)
    except CommandError as error:
        # Alembic cannot find the database's revision among this version's
        # migrations: a newer CAQE created or migrated the database.
        location = describe_database(engine.url.render_as_string(hide_password=False))
        raise click.ClickException(
            f"The database at {location} has a schema this CAQE ({__version__}) does "
            f"not know: {error}. It was probably migrated by a newer CAQE. Upgrade "
            "CAQE, or use another database."
        ) from None
    except Exception as error:
        if (
            "OperationalError" in type(error).__name__
            or "connect" in str(error).lower()
        ):
            raise click.ClickException(
                f"Cannot use the database at {describe_database(engine.url.render_as_string(hide_password=False))}: "
                f"{error.__class__.__name__}: {str(error).splitlines()[0]}. Check DATABASE_URL "
                "or --database-url, and that the database server is running."
            ) from None
        raise


def database_options(function: Any) -> Any:
    function = click.option(
        "--database-url",
        envvar="DATABASE_URL",
        default=None,
        help="SQLAlchemy database URL [env DATABASE_URL; default: SQLite in ./caqe-data or $CAQE_HOME].",
    )(function)
    return function


def config_option(function: Any) -> Any:
    return click.option(
        "--config",
        "config_path",
        envvar="CAQE_CONFIG",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Study config (YAML) [env CAQE_CONFIG].",
    )(function)


CONFIG_META_KEY = "caqe.config_path"
"""Where ``experiment_option`` keeps the ``--config`` path for ``Context.study``."""


def _remember_config(
    context: click.Context, _parameter: Any, value: Path | None
) -> None:
    if value is not None:
        context.meta[CONFIG_META_KEY] = value


def experiment_option(function: Any) -> Any:
    """Add ``--experiment NAME`` and ``--config FILE`` to pick the study in the database.

    ``--config`` (env CAQE_CONFIG) is passed to ``Context.study`` through the
    click context, so commands keep their single ``experiment`` argument.
    """
    function = click.option(
        "--experiment",
        default=None,
        help="Name of the study when the database contains several.",
    )(function)
    return click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="CAQE_CONFIG",
        default=None,
        expose_value=False,
        callback=_remember_config,
        help="Study config (YAML) whose experiment.name picks the study [env CAQE_CONFIG].",
    )(function)


def experiment_name(name: str | None, registry: Registry) -> str | None:
    """Return ``name``, else the experiment name of the ``--config`` file, if any.

    Raise a usage error when both are given and differ.
    """
    context = click.get_current_context(silent=True)
    path = context.meta.get(CONFIG_META_KEY) if context is not None else None
    if path is None:
        return name
    from_config = load_study_config(path, registry).name
    if name is not None and name != from_config:
        raise click.UsageError(
            f"--experiment {name} does not match experiment.name {from_config!r} of "
            f"{path}. Give one of them."
        )
    return from_config


def make_context(
    database_url: str | None, pool_size: int = DEFAULT_POOL_SIZE
) -> Context:
    url, engine, factory = open_database(database_url, pool_size)
    return Context(
        registry=load_registry(),
        database_url=url,
        engine=engine,
        session_factory=factory,
    )


def load_registry() -> Registry:
    try:
        return get_registry()
    except PluginError as error:
        raise click.ClickException(str(error)) from None


def load_study_config(path: Path, registry: Registry) -> StudyConfig:
    try:
        return load_config(path, registry)
    except ConfigError as error:
        raise click.ClickException(
            f"The config is invalid ({len(error.problems)} problem"
            f"{'s' if len(error.problems) != 1 else ''}):\n" + "\n".join(error.problems)
        ) from None


def secret_key(home: Path) -> bytes:
    """Return the key that signs participant links: ``$CAQE_SECRET_KEY``, else a file in the data folder."""
    value = os.environ.get(SECRET_KEY_ENV)
    if value:
        if len(value) < 32:
            raise click.ClickException(
                f"{SECRET_KEY_ENV} must be at least 32 characters long."
            )
        return value.encode()
    path = home / "secret_key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


@click.group()
@click.version_option(__version__, prog_name="caqe")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """CAQE: listening tests (MUSHRA, pairwise comparison) in the browser."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Alembic logs every plugin it sets up and every migration step.
        logging.getLogger("alembic").setLevel(logging.WARNING)


@cli.command("plugins")
def plugins_command() -> None:
    """List the loaded plugins, their versions and what each provides."""
    registry = load_registry()
    for info in registry.plugin_infos():
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name}{version}")
        for kind, names in sorted(info.provides.items()):
            click.echo(f"  {kind.replace('_', ' ')}: {', '.join(names)}")
        click.echo(f"  hooks: {', '.join(info.hooks)}")


@cli.command("validate")
@click.argument(
    "config_argument",
    metavar="[CONFIG]",
    type=click.Path(dir_okay=False, path_type=Path),
    required=False,
)
@config_option
def validate_command(config_argument: Path | None, config_path: Path | None) -> None:
    """Check a study config and its audio without serving it."""
    from_option = (
        click.get_current_context().get_parameter_source("config_path")
        == click.core.ParameterSource.COMMANDLINE
    )
    if config_argument is not None and from_option and config_argument != config_path:
        raise click.UsageError(
            f"Two configs given: {config_argument} and --config {config_path}. "
            "Give one."
        )
    config_path = config_argument or config_path
    if config_path is None:
        raise click.UsageError(
            "Give the config file: caqe validate CONFIG, --config CONFIG or CAQE_CONFIG."
        )
    registry = load_registry()
    config = load_study_config(config_path, registry)
    try:
        checked = check_study(config, registry, generated_dir(data_dir(), config.name))
    except ConfigError as error:
        raise click.ClickException(
            f"The study is invalid ({len(error.problems)} problem"
            f"{'s' if len(error.problems) != 1 else ''}):\n" + "\n".join(error.problems)
        ) from None
    stimuli = sum(len(spec.stimuli) for spec in checked.specs)
    click.echo(
        f"{config.path}: valid. Experiment {config.name!r}, test type {config.core.test_type!r}, "
        f"{len(checked.specs)} conditions, {stimuli} stimuli."
    )


def resolve_config_path(
    plugin: str | None, config_path: Path | None, registry: Registry
) -> Path:
    if config_path is not None:
        return config_path
    if plugin is None:
        raise click.UsageError(
            "Give --config FILE, or --plugin NAME to serve that plugin's demo."
        )
    try:
        test_type = registry.test_type(plugin)
    except PluginError as error:
        raise click.ClickException(str(error)) from None
    demo = test_type.demo_config()
    if demo is None:
        raise click.ClickException(
            f"Test type {plugin!r} ships no demo config; give --config FILE."
        )
    return demo


def prepare(context: Context, config: StudyConfig) -> Study:
    ensure_schema(context.engine)
    try:
        return prepare_study(
            config, context.registry, context.session_factory, data_dir()
        )
    except ConfigError as error:
        raise click.ClickException(
            "The study is invalid:\n" + "\n".join(error.problems)
        ) from None
    except StudyConflictError as error:
        raise click.ClickException(str(error)) from None


@cli.command("run")
@click.option(
    "--plugin",
    default=None,
    help="Serve this test type's demo when no config is given.",
)
@config_option
@database_options
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
)
@click.option(
    "--port",
    default=5000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Gunicorn worker processes.",
)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Threads per worker. On PostgreSQL each worker keeps one connection per thread.",
)
def run_command(
    plugin: str | None,
    config_path: Path | None,
    database_url: str | None,
    host: str,
    port: int,
    workers: int,
    threads: int,
) -> None:
    """Prepare the study and serve it with gunicorn."""
    # Each worker's threads share its pool, so the pool keeps one connection
    # per thread.
    context = make_context(database_url, pool_size=threads)
    path = resolve_config_path(plugin, config_path, context.registry)
    if plugin is not None and config_path is not None:
        config = load_study_config(path, context.registry)
        if config.core.test_type != plugin:
            raise click.ClickException(
                f"--plugin {plugin} does not match the config's test_type {config.core.test_type!r}. "
                "Drop --plugin or use a config of that test type."
            )
    config = load_study_config(path, context.registry)
    study = prepare(context, config)
    if make_url(context.database_url).get_backend_name() == "sqlite" and workers > 1:
        click.echo(
            "Note: several workers on SQLite serialise writes; use PostgreSQL to scale out.",
            err=True,
        )

    from caqe_core.serve import serve

    admin_password = os.environ.get(ADMIN_PASSWORD_ENV) or secrets.token_urlsafe(16)
    home = data_dir()
    serve(
        study=study,
        engine=context.engine,
        session_factory=context.session_factory,
        secret=secret_key(home),
        admin_password=admin_password,
        home=home,
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        database=describe_database(context.database_url),
    )


@cli.command("status")
@database_options
@experiment_option
def status_command(database_url: str | None, experiment: str | None) -> None:
    """Print progress per condition, completion and screening rates, exclusions."""
    from caqe_core.progress import format_progress, progress_summary

    context = make_context(database_url)
    study = context.study(experiment)
    with context.session_factory() as session:
        summary = progress_summary(session, study)
    click.echo(f"Experiment {study.name} ({describe_database(context.database_url)})")
    click.echo(format_progress(summary))


@cli.group("db")
def db_group() -> None:
    """Create, migrate or clear the database."""


@db_group.command("upgrade")
@database_options
def db_upgrade(database_url: str | None) -> None:
    """Apply the database migrations."""
    url, engine, _ = open_database(database_url)
    before = current_revision(engine) if has_tables(engine) else None
    ensure_schema(engine)
    after = current_revision(engine)
    if before == after:
        click.echo(f"Database {describe_database(url)} is up to date ({after}).")
    else:
        click.echo(
            f"Upgraded database {describe_database(url)} from {before or 'empty'} to {after}."
        )


@db_group.command("reset")
@database_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def db_reset(database_url: str | None, yes: bool) -> None:
    """Back up the database, then clear it (do this before a production run)."""
    url, engine, _ = open_database(database_url)
    location = describe_database(url)
    backup = _backup(url, engine)
    click.echo(f"Backed up {location} to {backup}.")
    if not yes:
        click.confirm(
            f"Delete every study, participant and payment record in {location}?",
            abort=True,
        )
    from caqe_core.models import Base

    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    ensure_schema(engine)
    click.echo(f"Cleared {location}.")


def _backup(url: str, engine: Engine) -> Path:
    import datetime as dt

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = data_dir() / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        import sqlite3

        source = Path(parsed.database or "")
        target = folder / f"{source.stem}-{stamp}.sqlite"
        if source.exists():
            # sqlite3's context manager only commits, so the connections are
            # closed explicitly (an open handle keeps the file locked on Windows).
            with (
                closing(sqlite3.connect(source)) as src,
                closing(sqlite3.connect(target)) as dst,
            ):
                src.backup(dst)
        else:
            target.touch()
        return target
    target = folder / f"{parsed.database}-{stamp}.json"
    _dump_tables(engine, target)
    return target


def _dump_tables(engine: Engine, target: Path) -> None:
    """Write every table as JSON rows: a portable backup that needs no pg_dump."""
    import json

    from sqlalchemy import MetaData

    metadata = MetaData()
    metadata.reflect(engine)
    dump: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            dump[table.name] = [
                dict(row._mapping) for row in connection.execute(table.select())
            ]
    target.write_text(json.dumps(dump, default=str, indent=1))


def build_cli() -> click.Group:
    """Return the root group with every plugin's commands added."""
    from caqe_core.results_cli import add_commands

    add_commands(cli)
    registry = load_registry()
    registry.hook.register_commands(cli=cli)
    return cli


def main() -> None:
    try:
        group = build_cli()
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    group(prog_name="caqe")


__all__ = [
    "Context",
    "cli",
    "config_option",
    "database_options",
    "experiment_name",
    "experiment_option",
    "main",
    "make_context",
]
