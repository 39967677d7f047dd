"""Benchmark the participant API against a bare Flask endpoint served the same way.

Both apps run under gunicorn with the same workers and threads, on this
machine's loopback. Each of the concurrent clients is a closed loop with no
think time: the CAQE client fetches its current trial page and submits a
response to it (a new participant when one runs out of trials); the
baseline client sends a GET and a POST of the same JSON size to a bare
Flask endpoint. The figures are requests per second and latency
percentiles over all requests of each.

    python bench/bench_participant_api.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The database URL names a server where the benchmark may create and drop a
scratch database. Without one it uses SQLite in a temporary folder.
"""

from __future__ import annotations

import argparse
import html
import json
import multiprocessing
import os
import platform
import re
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("CAQE_PLUGINS", "local_lab")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_gunicorn(
    app_factory: Callable[[], Any], port: int, workers: int, threads: int
) -> None:
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"127.0.0.1:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")
            self.cfg.set("backlog", 2048)

        def load(self) -> Any:
            return app_factory()

    Application().run()


def bare_app() -> Any:
    from flask import Flask, request

    app = Flask("bare")

    @app.get("/trial")
    def trial() -> Any:
        return "<html><body>" + "x" * 2000 + "</body></html>"

    @app.post("/trial")
    def submit() -> Any:
        body = request.get_json()
        return {"stored": True, "key": body.get("idempotency_key")}

    return app


class CaqeFactory:
    """Builds the CAQE app inside each gunicorn worker's parent process."""

    def __init__(self, config_path: Path, database_url: str, data_dir: Path) -> None:
        self.config_path = config_path
        self.database_url = database_url
        self.data_dir = data_dir

    def __call__(self) -> Any:
        from caqe_core.config import load_config
        from caqe_core.db import make_engine, make_session_factory
        from caqe_core.plugins import build_registry
        from caqe_core.study import prepare_study
        from caqe_core.web import create_app
        from tests.support import scale_plugin

        registry = build_registry([("scale", scale_plugin)])
        config = load_config(self.config_path, registry)
        engine = make_engine(self.database_url)
        factory = make_session_factory(engine)
        study = prepare_study(config, registry, factory, self.data_dir)
        engine.dispose()
        return create_app(
            study, factory, b"bench-secret-key-0123456789abcdef", "admin", self.data_dir
        )


def wait_until_up(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_loop(
    clients: int,
    seconds: float,
    warmup: float,
    one_client: Callable[[requests.Session, list[float], threading.Event], None],
) -> tuple[int, list[float], float]:
    """Run the clients for warmup + seconds; return figures of the measured part only."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    threads = []
    for index in range(clients):
        session = requests.Session()
        thread = threading.Thread(
            target=one_client, args=(session, latencies[index], stop), daemon=True
        )
        threads.append(thread)
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    marks = [len(values) for values in latencies]
    started = time.perf_counter()
    time.sleep(seconds)
    counts = [len(values) for values in latencies]
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    merged = [
        value
        for values, mark, count in zip(latencies, marks, counts)
        for value in values[mark:count]
    ]
    return len(merged), merged, elapsed


def caqe_client(
    base: str,
) -> Callable[[requests.Session, list[float], threading.Event], None]:
    def client(
        session: requests.Session, latencies: list[float], stop: threading.Event
    ) -> None:
        page_url = None
        while not stop.is_set():
            try:
                if page_url is None:
                    begun = session.post(
                        f"{base}/lab/", allow_redirects=False, timeout=30
                    )
                    page_url = base + begun.headers["Location"]
                started = time.perf_counter()
                page = session.get(page_url, timeout=30, allow_redirects=False)
                latencies.append(time.perf_counter() - started)
                match = re.search(
                    r"<script id='trial' type='application/json'>(.*?)</script>",
                    page.text,
                )
                if match is None:
                    page_url = None
                    continue
                trial = json.loads(html.unescape(match.group(1)))
                body = {
                    "idempotency_key": secrets.token_hex(12),
                    "response": {
                        "ratings": {signal["id"]: 5 for signal in trial["signals"]}
                    },
                    "events": [
                        {
                            "type": "play",
                            "time": 10.0,
                            "position": 0.0,
                            "signal": trial["signals"][0]["id"],
                        }
                    ],
                    "time_on_page_ms": 1000,
                }
                started = time.perf_counter()
                answer = session.post(
                    base + trial["submit"],
                    json=body,
                    headers={"X-CAQE-CSRF": trial["csrf"]},
                    timeout=30,
                )
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(
                        f"submit failed: {answer.status_code} {answer.text[:200]}"
                    )
            except requests.RequestException:
                page_url = None

    return client


def bare_client(
    base: str,
) -> Callable[[requests.Session, list[float], threading.Event], None]:
    def client(
        session: requests.Session, latencies: list[float], stop: threading.Event
    ) -> None:
        while not stop.is_set():
            try:
                started = time.perf_counter()
                session.get(f"{base}/trial", timeout=30)
                latencies.append(time.perf_counter() - started)
                started = time.perf_counter()
                session.post(
                    f"{base}/trial",
                    json={
                        "idempotency_key": secrets.token_hex(12),
                        "response": {"ratings": {"s1": 5, "s2": 5, "s3": 5}},
                    },
                    timeout=30,
                )
                latencies.append(time.perf_counter() - started)
            except requests.RequestException:
                pass

    return client


def scratch_postgres(admin_url: str) -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(admin_url).set(drivername="postgresql+psycopg")
    name = f"caqe_bench_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))

    return url.set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--seconds", type=float, default=20, help="measured seconds per server"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=10,
        help="unmeasured seconds before, while every client starts its first participant",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    from caqe_core.db import make_engine, upgrade
    from tests.support.studies import scale_study

    folder = Path(tempfile.mkdtemp(prefix="caqe-bench-"))

    def drop() -> None:
        return None

    if args.database_url:
        database_url, drop = scratch_postgres(args.database_url)
    else:
        database_url = f"sqlite:///{folder / 'bench.sqlite'}"
    config_path = scale_study(
        folder / "study",
        items=20,
        stimuli=4,
        assignment={"conditions_per_participant": 20, "trials_per_condition": 100_000},
        flow={"steps": ["trials"]},
    )
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    CaqeFactory(
        config_path, database_url, folder / "data"
    )()  # prepare once, before forking

    context = multiprocessing.get_context("fork")
    results = {}
    try:
        for name, factory, client in (
            ("bare Flask", bare_app, bare_client),
            (
                "CAQE participant API",
                CaqeFactory(config_path, database_url, folder / "data"),
                caqe_client,
            ),
        ):
            port = free_port()
            process = context.Process(
                target=run_gunicorn,
                args=(factory, port, args.workers, args.threads),
                daemon=True,
            )
            process.start()
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base + ("/trial" if name == "bare Flask" else "/lab/"))
            count, latencies, elapsed = load_loop(
                args.clients, args.seconds, args.warmup, client(base)
            )
            process.terminate()
            process.join(10)
            results[name] = {
                "requests": count,
                "rps": count / elapsed,
                "p50_ms": percentile(latencies, 0.50) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "mean_ms": statistics.fmean(latencies) * 1000,
            }
    finally:
        drop()

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"database: {'PostgreSQL' if args.database_url else 'SQLite'}; gunicorn {args.workers} workers x {args.threads} threads; {args.clients} closed-loop clients, {args.warmup:g} s warm-up, {args.seconds:g} s measured"
    )
    for name, figures in results.items():
        print(
            f"{name}: {figures['rps']:.0f} req/s, p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms ({figures['requests']} requests)"
        )
    ratio = results["CAQE participant API"]["rps"] / results["bare Flask"]["rps"]
    print(f"throughput ratio CAQE / bare Flask: {ratio:.2f}")


if __name__ == "__main__":
    main()
