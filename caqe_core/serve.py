"""Serving a prepared study with gunicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
from gunicorn.app.base import BaseApplication
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.study import Study
from caqe_core.web import create_app

logger = logging.getLogger(__name__)


class _Application(BaseApplication):  # type: ignore[misc]
    """Gunicorn application around an app built before the workers fork."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # Gunicorn 25.1 and newer open one control socket per user at a
            # fixed path, which two studies served at once would share.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Any:
        return self.application


def serve(
    study: Study,
    engine: Engine,
    session_factory: sessionmaker[Session],
    secret: bytes,
    admin_password: str,
    home: Path,
    host: str,
    port: int,
    workers: int,
    threads: int,
    database: str,
) -> None:
    app = create_app(study, session_factory, secret, admin_password, home)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown_host}:{port}"

    def when_ready(_server: Any) -> None:
        click.echo("")
        click.echo(
            f"Serving {study.name!r} ({study.config.core.test_type}, recruiter {study.config.core.recruiter})"
        )
        click.echo(f"  Participant URL: {base}/")
        click.echo(f"  Admin URL:       {base}/admin/?token={admin_password}")
        click.echo(f"  Database:        {database}")
        click.echo(f"  Data folder:     {home}")
        click.echo("Press Ctrl+C to stop.", nl=True)

    def post_fork(_server: Any, _worker: Any) -> None:
        # Connections opened before the fork belong to the master process.
        engine.dispose(close=False)

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "when_ready": when_ready,
        "post_fork": post_fork,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "graceful_timeout": 10,
        "timeout": 60,
        "proc_name": f"caqe-{study.name}",
    }
    _Application(app, options).run()
