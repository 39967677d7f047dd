"""A real HTTP server around a CAQE app, for tests that go over the network."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from caqe_core.config import load_config
from caqe_core.db import make_engine, make_session_factory, upgrade
from caqe_core.plugins import Registry, set_registry
from caqe_core.study import Study, prepare_study
from caqe_core.web import create_app

SECRET = b"test-secret-key-of-at-least-32-bytes!!"
ADMIN_PASSWORD = "admin-test-password"


@dataclass
class ServedStudy:
    study: Study
    session_factory: sessionmaker[Session]
    app: Flask
    data_dir: Path
    url: str = ""
    _server: Any = None
    _thread: threading.Thread | None = None

    def start(self) -> str:
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def build_study(
    config_path: Path, database_url: str, registry: Registry, data_dir: Path
) -> ServedStudy:
    """Load, prepare and wrap a study in an app (not yet listening)."""
    config = load_config(config_path, registry)
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    study = prepare_study(config, registry, factory, data_dir)
    app = create_app(study, factory, SECRET, ADMIN_PASSWORD, data_dir)
    return ServedStudy(study=study, session_factory=factory, app=app, data_dir=data_dir)


@contextmanager
def serve(
    config: Path, database_url: str, registry: Registry, data_dir: Path
) -> Iterator[ServedStudy]:
    """Serve a study over real HTTP on loopback for the duration of the block."""
    served = build_study(config, database_url, registry, data_dir)
    served.start()
    set_registry(registry)
    try:
        yield served
    finally:
        served.stop()
        set_registry(None)
