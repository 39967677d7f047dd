"""Benchmark the participant API against a bare Flask endpoint served the same way.

Both apps run under gunicorn with the same workers and threads, on this
machine's loopback. The CAQE client fetches its current trial page and
submits a response to it (a new participant when one runs out of trials);
the baseline client sends a GET and a POST of the same JSON size to a bare
Flask endpoint. Before the clock starts, every CAQE client has started its
participant and been assigned its conditions.

Each server is measured with the same clients:

- closed loop: no think time, so the server is saturated; its requests per
  second give the throughput ratio. ``--rounds`` runs of each server
  alternate, and the ratio is the median of the paired runs, because the
  bare endpoint's rate varied up to threefold between runs here;
- with think time: each client waits a random time (exponential, mean
  ``--think`` seconds) before each request, as a listener does while
  listening; the latency percentiles show how the server responds to that
  many listeners.

For each run the script also reads the CPU time that the server's
processes, PostgreSQL's processes and the client process used, per request,
from /proc, so the figures show where the CPUs went. It also reads the
busy time of the whole machine from /proc/stat, which is the cost that
limits a run once it keeps the CPUs busy.

With a PostgreSQL URL, a third server, the database floor, runs the
closed-loop runs too: a Flask app that does only the database work of a
trial page and a response, with raw psycopg (see ``floor_app``). Its
ratio to the bare endpoint estimates the most that any participant API
built on Flask and PostgreSQL can reach in this set-up.

    python bench/bench_participant_api.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

The database URL names a server where the benchmark may create and drop a
scratch database. Without one it uses SQLite in a temporary folder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import html
import json
import multiprocessing
import os
import platform
import random
import re
import resource
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


FLOOR_TABLES = """
CREATE TABLE floor_trials (
    id serial PRIMARY KEY,
    reservation_id integer NOT NULL REFERENCES reservations (id),
    participant_id integer NOT NULL REFERENCES participants (id),
    condition_id integer NOT NULL REFERENCES conditions (id),
    idempotency_key varchar(100) NOT NULL,
    response json NOT NULL,
    acknowledgement json NOT NULL,
    time_on_page_ms double precision,
    created_at timestamptz NOT NULL,
    UNIQUE (participant_id, idempotency_key)
);
CREATE TABLE floor_events (
    id serial PRIMARY KEY,
    trial_id integer NOT NULL REFERENCES floor_trials (id),
    participant_id integer NOT NULL REFERENCES participants (id),
    sequence integer NOT NULL,
    type varchar(32) NOT NULL,
    time_ms double precision NOT NULL,
    data json NOT NULL
);
CREATE INDEX ON floor_events (trial_id);
"""

# The page read and the first-served mark in one statement.
FLOOR_PAGE = """
WITH page AS (
    SELECT p.id AS participant_id, p.step, r.id, r.public_id, r.status, r.plan,
           r.expires_at, r.first_served_at, r.position
    FROM participants p
    LEFT JOIN reservations r ON r.participant_id = p.id
    WHERE p.public_id = %(participant)s AND p.experiment_id = %(experiment)s
), served AS (
    UPDATE reservations SET first_served_at = now()
    WHERE id = (SELECT id FROM page WHERE status = 'active' ORDER BY position LIMIT 1)
      AND first_served_at IS NULL
)
SELECT * FROM page ORDER BY position
"""

FLOOR_RESPONSE_ROW = """
SELECT p.id, p.step, r.id AS reservation_id, r.participant_id, r.condition_id,
       r.status, r.plan, t.acknowledgement AS replayed
FROM participants p
LEFT JOIN reservations r ON r.public_id = %(reservation)s
LEFT JOIN floor_trials t ON t.participant_id = p.id
     AND t.idempotency_key = %(key)s AND t.reservation_id = r.id
WHERE p.public_id = %(participant)s AND p.experiment_id = %(experiment)s
"""

# The trial, its listening event and the reservation update in one statement.
# The reservation keeps its status, so that the same rows serve every request.
FLOOR_STORE = """
WITH trial AS (
    INSERT INTO floor_trials (reservation_id, participant_id, condition_id,
        idempotency_key, response, acknowledgement, time_on_page_ms, created_at)
    VALUES (%(reservation)s, %(participant)s, %(condition)s, %(key)s,
        %(response)s, %(acknowledgement)s, %(time)s, now())
    RETURNING id
), reservation AS (
    UPDATE reservations SET completed_at = now()
    WHERE id = %(reservation)s AND status = %(status)s
), event AS (
    INSERT INTO floor_events (trial_id, participant_id, sequence, type, time_ms, data)
    SELECT id, %(participant)s, 0, 'play', 10.0, %(event)s FROM trial
)
SELECT id FROM trial
"""


def floor_app(database_url: str) -> Any:
    """Return a Flask app that does only the database work of a stored trial.

    It is the floor of the participant API. It runs raw psycopg on one
    connection per thread, and psycopg prepares each statement on the
    server after its fifth use. The page read and its first-served mark are
    one statement, and the response's read and its three writes are two.
    It renders no page, validates nothing and signs nothing. The bare client drives it, and each request picks a random
    participant that the CAQE server started.
    """
    import psycopg
    from flask import Flask, request
    from psycopg.types.json import Json
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    connect_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    app = Flask("floor")
    local = threading.local()
    participants: list[tuple[str, int, list[str]]] = []
    lock = threading.Lock()

    def connection() -> Any:
        if getattr(local, "connection", None) is None:
            local.connection = psycopg.connect(connect_url, autocommit=True)
        return local.connection

    def pick() -> tuple[str, int, list[str]] | None:
        with lock:
            if not participants:
                rows = connection().execute(
                    "SELECT p.public_id, p.experiment_id, array_agg(r.public_id) "
                    "FROM participants p JOIN reservations r ON r.participant_id = p.id "
                    "GROUP BY p.public_id, p.experiment_id"
                )
                participants.extend(rows.fetchall())
            return random.choice(participants) if participants else None

    @app.get("/trial")
    def page() -> Any:
        picked = pick()
        if picked is None:
            # The start-up check comes before CAQE has started anyone.
            return "no participants yet", 503
        public_id, experiment, _ = picked
        rows = (
            connection()
            .execute(FLOOR_PAGE, {"participant": public_id, "experiment": experiment})
            .fetchall()
        )
        return "<html><body>" + "x" * 2000 + f"{len(rows)}</body></html>"

    @app.post("/trial")
    def submit() -> Any:
        body = request.get_json()
        picked = pick()
        if picked is None:
            return "no participants yet", 503
        public_id, experiment, reservations = picked
        database = connection()
        row = database.execute(
            FLOOR_RESPONSE_ROW,
            {
                "participant": public_id,
                "experiment": experiment,
                "reservation": random.choice(reservations),
                "key": body["idempotency_key"],
            },
        ).fetchone()
        acknowledgement = {"stored": True, "key": body["idempotency_key"]}
        database.execute(
            FLOOR_STORE,
            {
                "reservation": row[2],
                "participant": row[0],
                "condition": row[4],
                "key": body["idempotency_key"],
                "response": Json(body["response"]),
                "acknowledgement": Json(acknowledgement),
                "time": 1000.0,
                "status": row[5],
                "event": Json({"signal": "s1"}),
            },
        )
        return acknowledgement

    return app


FLOOR = "database floor"


class FloorFactory:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def __call__(self) -> Any:
        return floor_app(self.database_url)


class CaqeFactory:
    """Builds the CAQE app inside each gunicorn worker's parent process."""

    def __init__(
        self, config_path: Path, database_url: str, data_dir: Path, threads: int
    ) -> None:
        self.config_path = config_path
        self.database_url = database_url
        self.data_dir = data_dir
        self.threads = threads

    def __call__(self) -> Any:
        from caqe_core.config import load_config
        from caqe_core.db import make_engine, make_session_factory
        from caqe_core.plugins import build_registry
        from caqe_core.study import prepare_study
        from caqe_core.web import create_app
        from tests.support import scale_plugin

        registry = build_registry([("scale", scale_plugin)])
        config = load_config(self.config_path, registry)
        # Sized as `caqe run` sizes it: one pooled connection per thread.
        engine = make_engine(self.database_url, pool_size=self.threads)
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, str, float]]:
    """Return pid -> (parent pid, command line, CPU seconds used) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                name = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        table[int(entry)] = (int(fields[1]), name, cpu)
    return table


def cpu_seconds(server_pid: int, database: str) -> dict[str, dict[int, float]]:
    """Return the CPU seconds used so far by each process of the server, PostgreSQL and this one.

    PostgreSQL's part is its background processes plus the backends
    connected to ``database``, not those of other databases on the server.
    """
    table = process_table()
    tree = {server_pid}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _, _) in table.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "server": {pid: table[pid][2] for pid in tree if pid in table},
        "postgres": {
            pid: cpu
            for pid, (_, name, cpu) in table.items()
            if name.startswith("postgres")
            and (f" {database} " in name or "(" not in name)
        },
        "client": {os.getpid(): usage.ru_utime + usage.ru_stime},
    }


def machine_busy_seconds() -> float:
    """Return the CPU seconds that all of the machine's CPUs spent busy so far, from /proc/stat.

    Busy is every state but idle and iowait. Unlike the per-process figures,
    it also covers processes that ended and the kernel's work for all of them.
    """
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """Return the CPU seconds used between two readings by the processes alive at the second.

    A process that ended in between (a database connection closed by the
    pool) is left out, so the figure is a lower bound.
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


Client = Callable[[requests.Session, list[float], threading.Event, float], None]


def load_loop(
    clients: int,
    seconds: float,
    warmup: float,
    think: float,
    one_client: Client,
    server_pid: int,
    database: str,
    sessions: list[requests.Session],
) -> dict[str, Any]:
    """Run the clients for warmup + seconds; return figures of the measured part only."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=one_client,
            args=(sessions[index], latencies[index], stop, think),
            daemon=True,
        )
        for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    marks = [len(values) for values in latencies]
    cpu_before = cpu_seconds(server_pid, database)
    busy_before = machine_busy_seconds()
    started = time.perf_counter()
    time.sleep(seconds)
    counts = [len(values) for values in latencies]
    elapsed = time.perf_counter() - started
    busy_after = machine_busy_seconds()
    cpu_after = cpu_seconds(server_pid, database)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    merged = [
        value
        for values, mark, count in zip(latencies, marks, counts)
        for value in values[mark:count]
    ]
    count = len(merged)
    return {
        "requests": count,
        "rps": count / elapsed,
        "p50_ms": percentile(merged, 0.50) * 1000,
        "p99_ms": percentile(merged, 0.99) * 1000,
        "cpu_ms": {
            part: cpu_used(cpu_before[part], cpu_after[part]) / max(count, 1) * 1000
            for part in cpu_after
        },
        "machine_cpu_ms": (busy_after - busy_before) / max(count, 1) * 1000,
        "machine_busy": (busy_after - busy_before) / elapsed / (os.cpu_count() or 1),
    }


def pause(think: float, stop: threading.Event) -> None:
    if think > 0:
        stop.wait(random.expovariate(1 / think))


def start_participant(session: requests.Session, base: str) -> str:
    """Start a participant through the lab entry and return their page's URL."""
    begun = session.post(f"{base}/lab/", allow_redirects=False, timeout=60)
    return base + begun.headers["Location"]


def caqe_client(base: str, page_urls: list[str]) -> Client:
    """Return a client function; each client starts at the next participant of ``page_urls``."""
    handed = iter(page_urls)
    lock = threading.Lock()

    def client(
        session: requests.Session,
        latencies: list[float],
        stop: threading.Event,
        think: float,
    ) -> None:
        with lock:
            page_url: str | None = next(handed)
        while not stop.is_set():
            try:
                if page_url is None:
                    page_url = start_participant(session, base)
                pause(think, stop)
                started = time.perf_counter()
                page = session.get(page_url, timeout=60, allow_redirects=False)
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
                pause(think, stop)
                started = time.perf_counter()
                answer = session.post(
                    base + trial["submit"],
                    json=body,
                    headers={"X-CAQE-CSRF": trial["csrf"]},
                    timeout=60,
                )
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(
                        f"submit failed: {answer.status_code} {answer.text[:200]}"
                    )
            except requests.RequestException:
                page_url = None

    return client


def bare_client(base: str, _page_urls: list[str]) -> Client:
    def client(
        session: requests.Session,
        latencies: list[float],
        stop: threading.Event,
        think: float,
    ) -> None:
        while not stop.is_set():
            try:
                pause(think, stop)
                started = time.perf_counter()
                session.get(f"{base}/trial", timeout=60)
                latencies.append(time.perf_counter() - started)
                pause(think, stop)
                started = time.perf_counter()
                session.post(
                    f"{base}/trial",
                    json={
                        "idempotency_key": secrets.token_hex(12),
                        "response": {"ratings": {"s1": 5, "s2": 5, "s3": 5}},
                    },
                    timeout=60,
                )
                latencies.append(time.perf_counter() - started)
            except requests.RequestException:
                pass

    return client


def prepare_caqe_clients(
    base: str, clients: int
) -> tuple[list[requests.Session], list[str]]:
    """Start one participant per client and load their first page, before the clock starts.

    Eight threads at a time, so that assignment, which is serialised per
    experiment, does not queue 200 requests.
    """
    sessions = [requests.Session() for _ in range(clients)]
    page_urls = [""] * clients

    def begin(index: int) -> None:
        page_urls[index] = start_participant(sessions[index], base)
        sessions[index].get(page_urls[index], timeout=60, allow_redirects=False)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(begin, range(clients)))
    return sessions, page_urls


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
        "--seconds", type=float, default=20, help="measured seconds per run"
    )
    parser.add_argument(
        "--warmup", type=float, default=5, help="unmeasured seconds before each run"
    )
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="mean think time in seconds of each server's think-time run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="closed-loop runs of each server, alternating (the ratio is their median)",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    from sqlalchemy.engine import make_url

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
    if args.database_url:
        with engine.begin() as connection:
            connection.exec_driver_sql(FLOOR_TABLES)
    engine.dispose()
    CaqeFactory(
        config_path, database_url, folder / "data", args.threads
    )()  # prepare once, before forking

    context = multiprocessing.get_context("fork")
    servers: dict[str, tuple[Any, str, Any]] = {}
    # Run i of each server is paired with run i of the other, in alternating
    # order, so that both see the same background load.
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    try:
        candidates: list[tuple[str, Callable[[], Any], Callable[..., Client]]] = [
            ("bare Flask", bare_app, bare_client),
            (
                "CAQE participant API",
                CaqeFactory(config_path, database_url, folder / "data", args.threads),
                caqe_client,
            ),
        ]
        if args.database_url:
            candidates.append((FLOOR, FloorFactory(database_url), bare_client))
        for name, factory, client in candidates:
            port = free_port()
            process = context.Process(
                target=run_gunicorn,
                args=(factory, port, args.workers, args.threads),
                daemon=True,
            )
            process.start()
            base = f"http://127.0.0.1:{port}"
            wait_until_up(
                base + ("/lab/" if name == "CAQE participant API" else "/trial")
            )
            servers[name] = (process, base, client)
        if FLOOR in servers:
            # The floor server serves the participants that CAQE started.
            prepare_caqe_clients(servers["CAQE participant API"][1], args.clients)
        schedule = [
            (think, name)
            for think in (0.0, args.think)
            for round_index in range(args.rounds if think == 0 else 1)
            for name in (
                list(servers) if round_index % 2 == 0 else list(reversed(servers))
            )
            if think == 0 or name != FLOOR
        ]
        for think, name in schedule:
            process, base, client = servers[name]
            if name != "CAQE participant API":
                sessions = [requests.Session() for _ in range(args.clients)]
                page_urls: list[str] = []
            else:
                sessions, page_urls = prepare_caqe_clients(base, args.clients)
            figures = load_loop(
                args.clients,
                args.seconds,
                args.warmup,
                think,
                client(base, page_urls),
                process.pid or 0,
                make_url(database_url).database or "",
                sessions,
            )
            runs.setdefault((name, think), []).append(figures)
            print(
                f"{name}, think time {think:g} s: {figures['rps']:.0f} req/s",
                file=sys.stderr,
            )
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.join(10)
        drop()

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"database: {'PostgreSQL' if args.database_url else 'SQLite'}; gunicorn {args.workers} workers x {args.threads} threads; {args.clients} clients, {args.warmup:g} s warm-up, {args.seconds:g} s measured per run; {args.rounds} closed-loop runs of each server, alternating"
    )
    for (name, think), figures_list in runs.items():
        for figures in figures_list:
            cpu = figures["cpu_ms"]
            print(
                f"{name}, think time {think:g} s: {figures['rps']:.0f} req/s, "
                f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms "
                f"({figures['requests']} requests); CPU ms per request: "
                f"server {cpu['server']:.2f}, PostgreSQL {cpu['postgres']:.2f}, client {cpu['client']:.2f}, "
                f"whole machine {figures['machine_cpu_ms']:.2f} ({figures['machine_busy']:.0%} busy)"
            )
    for name, think in runs:
        if name == "bare Flask":
            continue
        pairs = zip(runs[name, think], runs["bare Flask", think], strict=True)
        ratios = [served["rps"] / bare["rps"] for served, bare in pairs]
        print(
            f"throughput ratio {name} / bare Flask, think time {think:g} s: "
            f"median {statistics.median(ratios):.2f} of "
            f"{', '.join(f'{ratio:.2f}' for ratio in ratios)}"
        )


if __name__ == "__main__":
    main()
