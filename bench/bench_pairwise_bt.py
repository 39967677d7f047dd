"""Time the Bradley–Terry fit with participant-bootstrap intervals.

Simulates judgements from known strengths, runs ``bradley_terry`` with its
bootstrap intervals, and, as the baseline in the same run, one
``choix.ilsr_pairwise`` fit on the pooled judgements without a bootstrap. The
baseline gets the data already in choix's (winner, loser) list format, so its
time is the fit alone.

Run from the repository root:

    python3 bench/bench_pairwise_bt.py
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time

import choix
import numpy as np
import pandas as pd
import scipy
from caqe_pairwise.scoring import DEFAULT_ALPHA, bradley_terry, simulate_judgements


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--participants", type=int, default=2000, help="simulated participants"
    )
    parser.add_argument(
        "--judgements", type=int, default=500, help="judgements per participant"
    )
    parser.add_argument("--systems", type=int, default=50, help="number of systems")
    parser.add_argument(
        "--n-bootstrap", type=int, default=1000, help="bootstrap replicates"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each method"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the simulated data"
    )
    return parser.parse_args()


def choix_pairs(judgements: pd.DataFrame, systems: list[str]) -> list[tuple[int, int]]:
    """Convert strict judgements to choix's list of (winner, loser) indices."""
    index = pd.Index(systems)
    a = index.get_indexer(judgements["stimulus_a"])
    b = index.get_indexer(judgements["stimulus_b"])
    prefer_a = (judgements["choice"] == "a").to_numpy()
    winners = np.where(prefer_a, a, b)
    losers = np.where(prefer_a, b, a)
    return list(zip(winners.tolist(), losers.tolist()))


def time_runs(function, repeats: int) -> tuple[list[float], object]:
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    arguments = parse_arguments()
    rng = np.random.default_rng(arguments.seed)
    systems = [f"system_{i:02d}" for i in range(arguments.systems)]
    strengths = dict(zip(systems, rng.normal(0.0, 1.0, size=len(systems))))
    judgements = simulate_judgements(
        strengths,
        arguments.participants,
        arguments.judgements,
        seed=arguments.seed,
    )
    pairs = choix_pairs(judgements, systems)

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("machine:", platform.platform(), platform.machine())
    print("cpu_count:", os.cpu_count())
    print("load average (1, 5, 15 min) before timing:", os.getloadavg())
    print(
        "versions: python",
        platform.python_version(),
        "numpy",
        np.__version__,
        "scipy",
        scipy.__version__,
        "pandas",
        pd.__version__,
        "choix",
        importlib.metadata.version("choix"),
    )
    print(
        f"data: {len(judgements)} judgements, {arguments.participants} participants, "
        f"{len(systems)} systems, no 'none' choices"
    )

    baseline_times, baseline = time_runs(
        lambda: choix.ilsr_pairwise(len(systems), pairs, alpha=DEFAULT_ALPHA),
        arguments.repeats,
    )
    point_times, _ = time_runs(
        lambda: bradley_terry(judgements, systems, n_bootstrap=0), arguments.repeats
    )
    full_times, scores = time_runs(
        lambda: bradley_terry(
            judgements, systems, n_bootstrap=arguments.n_bootstrap, seed=1
        ),
        arguments.repeats,
    )

    baseline_median = statistics.median(baseline_times)
    full_median = statistics.median(full_times)
    difference = np.abs(scores["score"].to_numpy() - baseline).max()
    widths = scores["ci_high"] - scores["ci_low"]

    def show(times: list[float]) -> str:
        runs = ", ".join(f"{value:.3f}" for value in times)
        return f"median {statistics.median(times):.3f} s (runs: {runs})"

    print(f"baseline choix.ilsr_pairwise, pooled, no bootstrap: {show(baseline_times)}")
    print(f"bradley_terry, n_bootstrap=0: {show(point_times)}")
    print(f"bradley_terry, n_bootstrap={arguments.n_bootstrap}: {show(full_times)}")
    print(
        f"ratio bradley_terry with bootstrap / baseline fit: "
        f"{full_median / baseline_median:.2f}"
    )
    print("load average (1, 5, 15 min) after timing:", os.getloadavg())
    print(f"max |score difference| to baseline: {difference:.2e}")
    print(f"95% interval width: median {widths.median():.4f}, max {widths.max():.4f}")


if __name__ == "__main__":
    main()
