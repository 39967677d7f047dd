"""Benchmark `caqe analyze` on a large MUSHRA study and a large pairwise study.

The script writes two SQLite databases through the data layer with the
built-in test types, so plan_trial and validate_response shape every stored
trial:

- MUSHRA: 1,000 listeners × 20 pages (hidden reference, two anchors and
  four codecs: 7 ratings a page, 140,000 ratings);
- pairwise: 2,000 listeners × 20 pages × 25 pairs of 10 systems
  (1,000,000 judgements).

Each `caqe` command then runs in its own subprocess; wall time comes from
time.perf_counter and peak memory from the subprocess's resource usage
(os.wait4, ru_maxrss). The baseline, measured in the same run, is
`caqe results export --format csv` of the same database: reading every
table without any statistics or figures.

Usage: python bench/bench_analyze.py [--workdir DIR] [--keep] [--reuse] [--repeats N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sqlalchemy import func, insert, select, update

from caqe_core.config import load_config
from caqe_core.db import make_engine, make_session_factory, upgrade
from caqe_core.extension import TrialPage
from caqe_core.models import (
    Experiment,
    Participant,
    Reservation,
    ScreeningResult,
    Trial,
)
from caqe_core.plugins import build_registry
from caqe_core.study import Study, prepare_study

PLUGINS = "mushra,pairwise,mturk,local_lab"
CHORALES = ("bwv66_6", "bwv253", "bwv269")
CODECS = ("mp3_high", "mp3_low", "opus_high", "opus_low")
LIMIT_SECONDS = 10.0
LIMIT_BYTES = 1024**3
START = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)


def mushra_config(folder: Path, listeners: int) -> Path:
    items = [
        {
            "name": f"item{index:02d}",
            "reference": f"{chorale}/reference.flac",
            "systems": {codec: f"{chorale}/{codec}.flac" for codec in CODECS},
        }
        for index, chorale in ((i, CHORALES[i % 3]) for i in range(20))
    ]
    config = {
        "experiment": {"name": "bench-mushra", "title": "Benchmark: MUSHRA"},
        "test_type": "mushra",
        "audio": {"root": "caqe:demo"},
        "assignment": {
            "conditions_per_participant": 20,
            "trials_per_condition": listeners,
        },
        "flow": {"steps": ["consent", "trials"]},
        "mushra": {"items": items, "training": {"enabled": False}},
    }
    path = folder / "mushra.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pairwise_config(folder: Path, listeners: int) -> Path:
    # Ten systems per item; the demo has four codec files, so systems share files.
    items = [
        {
            "name": f"item{index:02d}",
            "systems": {
                f"sys{number}": f"{CHORALES[index % 3]}/{CODECS[number % 4]}.flac"
                for number in range(10)
            },
        }
        for index in range(20)
    ]
    config = {
        "experiment": {"name": "bench-pairwise", "title": "Benchmark: pairwise"},
        "test_type": "pairwise",
        "audio": {"root": "caqe:demo"},
        "assignment": {
            "conditions_per_participant": 20,
            "trials_per_condition": listeners,
        },
        "flow": {"steps": ["consent", "trials"]},
        "pairwise": {
            "items": items,
            "pairs_per_participant": 25,
            "allow_no_preference": True,
            "require_both_played": False,
        },
    }
    path = folder / "pairwise.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mushra_response(
    plan: dict[str, Any], view: Any, rng: np.random.Generator
) -> dict[str, Any]:
    means = {"hidden_reference": 95, "anchor_low": 15, "anchor_mid": 40}
    quality = {"mp3_high": 80, "opus_high": 85, "mp3_low": 45, "opus_low": 55}
    ratings = {}
    order = []
    for signal in plan["signals"]:
        if signal["id"] == "ref":
            continue
        role = view.stimuli[signal["stimulus"]].role
        mean = means.get(role, quality.get(signal["stimulus"], 60))
        ratings[signal["id"]] = float(np.clip(round(rng.normal(mean, 10)), 0, 100))
        order.append(signal["id"])
    return {"ratings": ratings, "order": order}


def pairwise_response(
    plan: dict[str, Any], view: Any, rng: np.random.Generator
) -> dict[str, Any]:
    labels = {signal["id"]: signal["stimulus"] for signal in plan["signals"]}
    judgements = []
    for index, pair in enumerate(plan["pairs"]):
        strength_a = int(labels[pair["a"]].removeprefix("sys"))
        strength_b = int(labels[pair["b"]].removeprefix("sys"))
        p_a = 1 / (1 + np.exp(-(strength_a - strength_b) * 0.3))
        if rng.random() < 0.05:
            choice = "none"
        elif rng.random() < p_a:
            choice = "a"
        else:
            choice = "b"
        judgements.append(
            {
                "pair": index,
                "a": pair["a"],
                "b": pair["b"],
                "choice": choice,
                "decision_time_ms": float(rng.uniform(2000, 9000)),
                "played_seconds": {"a": 2.0, "b": 2.0},
            }
        )
    return {"judgements": judgements}


def fill_database(
    study: Study,
    session_factory: Any,
    listeners: int,
    respond: Callable[[dict[str, Any], Any, np.random.Generator], dict[str, Any]],
) -> int:
    """Insert ``listeners`` completed participants; return the number of trials."""
    rng = random.Random(1)
    noise = np.random.default_rng(1)
    views = list(study.conditions.values())
    trials = 0
    for first in range(0, listeners, 200):
        batch = range(first, min(listeners, first + 200))
        with session_factory() as session, session.begin():
            people = [
                {
                    "experiment_id": study.experiment_id,
                    "public_id": secrets.token_urlsafe(12),
                    "sequence": index,
                    "recruiter": "local_lab",
                    "external_data": {},
                    "status": "completed",
                    "step": "done",
                    "flags": ["hearing"] if index % 50 == 7 else [],
                    "created_at": START + dt.timedelta(minutes=index),
                    "updated_at": START + dt.timedelta(minutes=index + 30),
                    "finished_at": START + dt.timedelta(minutes=index + 30),
                }
                for index in batch
            ]
            ids = session.scalars(
                insert(Participant).returning(
                    Participant.id, sort_by_parameter_order=True
                ),
                people,
            ).all()
            reservations, responses = [], []
            for person, participant_id in zip(people, ids):
                order = views[:]
                rng.shuffle(order)
                for position, view in enumerate(order):
                    plan = study.test_type.plan_trial(view, rng, person["sequence"])
                    page = TrialPage(
                        condition=view,
                        plan=plan,
                        signal_urls={},
                        submit_url="",
                        csrf_token="",
                        position=position,
                        total=len(order),
                        section=study.config.test_type_section,
                        study_title="",
                    )
                    stored = study.test_type.validate_response(
                        page, respond(plan, view, noise)
                    )
                    served = person["created_at"] + dt.timedelta(
                        seconds=60 + 30 * position
                    )
                    reservations.append(
                        {
                            "public_id": secrets.token_urlsafe(12),
                            "participant_id": participant_id,
                            "condition_id": view.id,
                            "position": position,
                            "status": "completed",
                            "plan": plan,
                            "created_at": served,
                            "expires_at": served + dt.timedelta(hours=1),
                            "completed_at": served + dt.timedelta(seconds=25),
                            "first_served_at": served,
                        }
                    )
                    responses.append((participant_id, view.id, stored, served))
            reservation_ids = session.scalars(
                insert(Reservation).returning(
                    Reservation.id, sort_by_parameter_order=True
                ),
                reservations,
            ).all()
            session.execute(
                insert(Trial),
                [
                    {
                        "reservation_id": reservation_id,
                        "participant_id": participant_id,
                        "condition_id": condition_id,
                        "idempotency_key": secrets.token_hex(10),
                        "response": stored,
                        "acknowledgement": {"stored": True},
                        "time_on_page_ms": float(noise.lognormal(np.log(25000), 0.4)),
                        "created_at": served + dt.timedelta(seconds=25),
                    }
                    for reservation_id, (
                        participant_id,
                        condition_id,
                        stored,
                        served,
                    ) in zip(reservation_ids, responses)
                ],
            )
            session.execute(
                insert(ScreeningResult),
                [
                    {
                        "participant_id": pid,
                        "step": "consent",
                        "attempt": 1,
                        "passed": True,
                        "data": {"agreed": True},
                        "created_at": person["created_at"],
                    }
                    for person, pid in zip(people, ids)
                ],
            )
            trials += len(responses)
    with session_factory() as session, session.begin():
        session.execute(
            update(Experiment)
            .where(Experiment.id == study.experiment_id)
            .values(participant_counter=listeners)
        )
    return trials


def build(
    folder: Path,
    config_path: Path,
    listeners: int,
    respond: Callable[..., Any],
    reuse: bool = False,
) -> tuple[str, int]:
    os.environ["CAQE_PLUGINS"] = PLUGINS
    registry = build_registry()
    database = folder / f"{config_path.stem}.sqlite"
    url = f"sqlite:///{database}"
    if reuse and database.exists():
        engine = make_engine(url)
        with engine.connect() as connection:
            trials = connection.scalar(select(func.count()).select_from(Trial)) or 0
        engine.dispose()
        print(f"  reused {trials} trials in {database}", flush=True)
        return url, trials
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    config = load_config(config_path, registry)
    study = prepare_study(config, registry, factory, folder / "data")
    started = time.perf_counter()
    trials = fill_database(study, factory, listeners, respond)
    print(
        f"  wrote {trials} trials to {database} in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    engine.dispose()
    return url, trials


def measure(command: list[str], cwd: Path) -> tuple[float, int]:
    """Run ``command``; return its wall time in s and peak resident memory in bytes."""
    env = {**os.environ, "CAQE_PLUGINS": PLUGINS, "CAQE_HOME": str(cwd / "home")}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(
            f"{' '.join(command)} failed ({process.returncode}):\n{output.decode()}"
        )
    return elapsed, usage.ru_maxrss * 1024


def run_case(name: str, url: str, folder: Path, repeats: int) -> dict[str, Any]:
    caqe = str(Path(sys.executable).with_name("caqe"))
    analyze = [
        caqe,
        "analyze",
        "--database-url",
        url,
        "--out",
        str(folder / f"{name}.html"),
    ]
    export = [
        caqe,
        "results",
        "export",
        "--database-url",
        url,
        "--out",
        str(folder / f"{name}-export"),
    ]
    results: dict[str, Any] = {"name": name}
    for label, command in (("export", export), ("analyze", analyze)):
        runs = [measure(command, folder) for _ in range(repeats)]
        results[label] = {
            "seconds": statistics.median(run[0] for run in runs),
            "peak_bytes": max(run[1] for run in runs),
            "command": " ".join(command),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, help="Folder for the databases and reports."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help=(
            "Reuse the databases that an earlier run left in --workdir instead of "
            "building them; the listener options must match that run."
        ),
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Runs of each command; the median time is reported.",
    )
    parser.add_argument("--mushra-listeners", type=int, default=1000)
    parser.add_argument("--pairwise-listeners", type=int, default=2000)
    options = parser.parse_args()

    if options.reuse and options.workdir is None:
        parser.error("--reuse needs --workdir, the folder of the earlier run.")
    folder = options.workdir or Path(tempfile.mkdtemp(prefix="caqe-bench-analyze-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"load average before the run: {os.getloadavg()[0]:.2f}")
    print("building the databases ...", flush=True)
    mushra_url, mushra_trials = build(
        folder,
        mushra_config(folder, options.mushra_listeners),
        options.mushra_listeners,
        mushra_response,
        options.reuse,
    )
    pairwise_url, pairwise_trials = build(
        folder,
        pairwise_config(folder, options.pairwise_listeners),
        options.pairwise_listeners,
        pairwise_response,
        options.reuse,
    )
    cases = [
        (
            f"MUSHRA, {options.mushra_listeners} listeners × 20 pages ({mushra_trials} trials)",
            "mushra",
            mushra_url,
        ),
        (
            (
                f"pairwise, {options.pairwise_listeners} listeners × 20 pages × 25 "
                f"pairs ({pairwise_trials * 25} judgements)"
            ),
            "pairwise",
            pairwise_url,
        ),
    ]
    print()
    print("| study | command | wall time (median) | peak RSS | time / export |")
    print("| --- | --- | --- | --- | --- |")
    failed = False
    for title, name, url in cases:
        result = run_case(name, url, folder, options.repeats)
        export, analyze = result["export"], result["analyze"]
        for label, figures in (
            ("caqe results export (baseline)", export),
            ("caqe analyze", analyze),
        ):
            ratio = figures["seconds"] / export["seconds"]
            print(
                f"| {title} | `{label}` | {figures['seconds']:.2f} s | "
                f"{figures['peak_bytes'] / 2**20:.0f} MiB | {ratio:.2f} |"
            )
        if analyze["seconds"] > LIMIT_SECONDS or analyze["peak_bytes"] > LIMIT_BYTES:
            failed = True
    print()
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")
    print(
        f"limits for caqe analyze: {LIMIT_SECONDS:.0f} s and {LIMIT_BYTES / 2**30:.0f} GiB peak RSS: "
        + ("EXCEEDED" if failed else "met")
    )
    if not options.keep and options.workdir is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"work folder: {folder}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
