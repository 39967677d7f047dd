"""Benchmark ``caqe mturk create-hits`` against a sequential loop.

Both runs post the same number of HITs with the real command (CliRunner, in
this process) to the fake MTurk service over HTTP on loopback. The fake adds
a fixed latency to every call and throttles: it allows at most
``--throttle-rate`` CreateHIT calls per second (bursts of ``--throttle-burst``)
and returns ThrottlingException for the first ``--injected-throttles``
CreateHIT calls of each run. The baseline is the same command with
``--concurrency 1``, a sequential loop; each run gets a fresh fake and a
fresh SQLite database. The script prints the command, the machine, both
wall-clock times, the throttling each run met and the speed-up.

Run: python bench/bench_create_hits.py [--count 1000] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("CAQE_PLUGINS", "mturk,local_lab")

from caqe_mturk.commands import DEFAULT_CONCURRENCY
from caqe_mturk.testing import FakeMTurk

from caqe_core.cli import build_cli
from caqe_core.db import make_engine
from caqe_core.models import RecruitmentJob
from caqe_core.plugins import build_registry, set_registry
from tests.support import scale_plugin
from tests.support.server import build_study
from tests.support.studies import scale_study

GOAL_RATIO = 4.0


@dataclass
class Run:
    label: str
    concurrency: int
    seconds: float
    create_calls: int
    throttled: int
    hits: int


def run_once(
    args: argparse.Namespace, concurrency: int, label: str, folder: Path
) -> Run:
    """Prepare a fresh study and fake, run create-hits once and time it."""
    registry = build_registry(extra_plugins=[("scale", scale_plugin)])
    config = scale_study(
        folder / "study",
        items=2,
        stimuli=2,
        recruiter="mturk",
        mturk={"max_assignments": 3},
    )
    database_url = f"sqlite:///{folder / 'bench.sqlite'}"
    build_study(config, database_url, registry, folder / "data")
    set_registry(registry)

    with FakeMTurk() as fake:
        fake.latency = args.latency
        fake.throttle(
            rate=args.throttle_rate, burst=args.throttle_burst, operation="CreateHIT"
        )
        if args.injected_throttles:
            fake.fail_next(
                "CreateHIT", "ThrottlingException", n=args.injected_throttles
            )
        argv = [
            "mturk",
            "--endpoint-url",
            fake.endpoint_url,
            "create-hits",
            str(args.count),
            "--concurrency",
            str(concurrency),
            "--database-url",
            database_url,
        ]
        started = time.perf_counter()
        result = CliRunner().invoke(
            build_cli(), argv, env={"SERVER_ADDRESS": "caqe.example.org"}
        )
        seconds = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"{label} run failed:\n{result.output}")
        calls = [call for call in fake.recorded_calls if call.operation == "CreateHIT"]
    set_registry(None)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        created = connection.scalar(
            select(func.count())
            .select_from(RecruitmentJob)
            .where(
                RecruitmentJob.status == "created",
                RecruitmentJob.request_token.not_like("mturk-qualification-%"),
            )
        )
    engine.dispose()
    if created != args.count:
        raise SystemExit(f"{label} run recorded {created} of {args.count} HITs.")
    return Run(
        label=label,
        concurrency=concurrency,
        seconds=seconds,
        create_calls=len(calls),
        throttled=sum(call.error_code == "ThrottlingException" for call in calls),
        hits=created,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="HITs per run")
    parser.add_argument(
        "--latency", type=float, default=0.1, help="seconds per API call"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="the concurrent run's --concurrency (default: the command's)",
    )
    parser.add_argument(
        "--throttle-rate", type=float, default=50.0, help="CreateHIT calls/s allowed"
    )
    parser.add_argument(
        "--throttle-burst", type=int, default=10, help="token bucket size"
    )
    parser.add_argument(
        "--injected-throttles",
        type=int,
        default=5,
        help="CreateHIT calls that get ThrottlingException at the start of each run",
    )
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    print(
        f"Command: python {shlex.join(['bench/bench_create_hits.py', *sys.argv[1:]])}"
    )
    print(
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"Fake MTurk: {args.latency * 1000:.0f} ms per call, CreateHIT limited to "
        f"{args.throttle_rate:g}/s (burst {args.throttle_burst}), first "
        f"{args.injected_throttles} CreateHIT calls throttled"
    )
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        baseline = run_once(
            args, 1, "sequential loop (--concurrency 1)", root / "sequential"
        )
        concurrent = run_once(
            args,
            args.concurrency,
            f"create-hits (--concurrency {args.concurrency})",
            root / "concurrent",
        )

    print()
    print("| run | HITs | CreateHIT calls | throttled | seconds | HITs/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in (baseline, concurrent):
        print(
            f"| {run.label} | {run.hits} | {run.create_calls} | {run.throttled} | "
            f"{run.seconds:.1f} | {args.count / run.seconds:.1f} |"
        )
    ratio = baseline.seconds / concurrent.seconds
    verdict = "meets" if ratio >= GOAL_RATIO else "misses"
    print()
    print(
        f"Speed-up over the sequential loop: {ratio:.1f}x ({verdict} the goal of {GOAL_RATIO:g}x)"
    )


if __name__ == "__main__":
    main()
