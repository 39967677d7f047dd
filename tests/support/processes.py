"""Several server processes on one study database, as under gunicorn workers.

Each process builds its own app and serves it on its own loopback port, so
nothing in one process's memory (a lock, a cache) protects another's
requests. Only the database is shared.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

Result = TypeVar("Result")

START_TIMEOUT_SECONDS = 120.0
"""Each process imports the plugins (numpy, scipy) and prepares the study."""


def _serve(
    config_path: str,
    database_url: str,
    data_dir: str,
    ports: Any,
    stop: Any,
) -> None:
    os.environ["CAQE_PLUGINS"] = "mushra,pairwise,mturk,local_lab"
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from werkzeug.serving import make_server

    from caqe_core.config import load_config
    from caqe_core.db import make_engine, make_session_factory
    from caqe_core.plugins import build_registry, set_registry
    from caqe_core.study import prepare_study
    from caqe_core.web import create_app
    from tests.support import scale_plugin
    from tests.support.server import ADMIN_PASSWORD, SECRET

    registry = build_registry([("scale", scale_plugin)])
    set_registry(registry)
    factory = make_session_factory(make_engine(database_url))
    config = load_config(Path(config_path), registry)
    study = prepare_study(config, registry, factory, Path(data_dir))
    app = create_app(study, factory, SECRET, ADMIN_PASSWORD, Path(data_dir))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    ports.put(server.server_port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop.wait()
    server.shutdown()
    server.server_close()


def _wait_for_ports(processes: list[Any], ports: Any) -> list[int]:
    found: list[int] = []
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while len(found) < len(processes):
        failed = [process.exitcode for process in processes if process.exitcode]
        if failed:
            raise RuntimeError(f"a server process exited with status {failed[0]}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(found)} of {len(processes)} server processes started "
                f"within {START_TIMEOUT_SECONDS:g} s"
            )
        try:
            found.append(ports.get(timeout=0.5))
        except queue.Empty:
            continue
    return found


@contextmanager
def serve_in_processes(
    config_path: Path, database_url: str, data_dir: Path, count: int
) -> Iterator[list[str]]:
    """Serve the study from ``count`` processes; yield their base URLs.

    The database must already contain the study (``build_study`` or
    ``prepare_study``), so the processes do not race to store it.
    """
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    stop = context.Event()
    processes = [
        context.Process(
            target=_serve,
            args=(str(config_path), database_url, str(data_dir), ports, stop),
            daemon=True,
        )
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    try:
        yield [f"http://127.0.0.1:{port}" for port in _wait_for_ports(processes, ports)]
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=20)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


def call_at_once(calls: Sequence[Callable[[], Result]]) -> list[Result]:
    """Run each call in its own thread, all released together, and return their results in order.

    The first exception a call raises is raised here after every thread ended.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[Exception] = []

    def run(index: int, call: Callable[[], Result]) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = call()
        except Exception as error:  # noqa: BLE001 - raised again below
            errors.append(error)
            barrier.abort()

    threads = [
        threading.Thread(target=run, args=(index, call))
        for index, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    if errors:
        raise errors[0]
    return results
