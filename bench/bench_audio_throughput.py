"""Benchmark stimulus bytes per second through opaque URLs against a plain static route.

One gunicorn server serves a prepared study. The same app also gets a plain
route that sends the same prepared files by name, with no token to decode
and no database lookup. Concurrent clients download whole files from each
route in turn; the figure is bytes per second.

    python bench/bench_audio_throughput.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("CAQE_PLUGINS", "local_lab")

from bench.bench_participant_api import free_port, run_gunicorn, wait_until_up  # noqa: E402


class AppFactory:
    def __init__(self, config_path: Path, database_url: str, data_dir: Path) -> None:
        self.config_path = config_path
        self.database_url = database_url
        self.data_dir = data_dir

    def __call__(self) -> Any:
        from flask import send_from_directory

        from bench.bench_participant_api import CaqeFactory

        app = CaqeFactory(self.config_path, self.database_url, self.data_dir)()
        prepared = self.data_dir / "prepared"

        @app.get("/plain/<name>")
        def plain(name: str) -> Any:
            return send_from_directory(
                prepared, name, mimetype="audio/flac", conditional=True
            )

        return app


def download_all(urls: list[str], clients: int, seconds: float) -> tuple[int, float]:
    stop = threading.Event()
    totals = [0] * clients

    def client(index: int) -> None:
        session = requests.Session()
        position = index
        while not stop.is_set():
            response = session.get(urls[position % len(urls)], timeout=30)
            response.raise_for_status()
            totals[index] += len(response.content)
            position += 1

    threads = [
        threading.Thread(target=client, args=(index,), daemon=True)
        for index in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return sum(totals), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    from caqe_core.audio import AudioTokens
    from caqe_core.db import make_engine, make_session_factory, upgrade
    from caqe_core.models import Stimulus
    from tests.support.studies import scale_study

    folder = Path(tempfile.mkdtemp(prefix="caqe-bench-audio-"))
    database_url = f"sqlite:///{folder / 'bench.sqlite'}"
    config_path = scale_study(
        folder / "study", items=4, stimuli=4, flow={"steps": ["trials"]}
    )
    # Real music (the demo's codec stimuli, 48 kHz FLAC) in place of the test tones.
    import soundfile

    from caqe_core.demo import demo_audio_dir

    music = sorted(path for path in demo_audio_dir().glob("*/*.flac"))
    for index, path in enumerate(sorted((folder / "study" / "audio").rglob("*.wav"))):
        data, rate = soundfile.read(music[index % len(music)])
        soundfile.write(path, data, rate)
    engine = make_engine(database_url)
    upgrade(engine)
    factory = AppFactory(config_path, database_url, folder / "data")
    factory()
    session_factory = make_session_factory(engine)
    with session_factory() as session:
        stimuli = session.query(Stimulus.id, Stimulus.path).all()
    tokens = AudioTokens(b"bench-secret-key-0123456789abcdef")

    port = free_port()
    process = multiprocessing.get_context("fork").Process(
        target=run_gunicorn, args=(factory, port, args.workers, 4), daemon=True
    )
    process.start()
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base + "/lab/")
    opaque = [f"{base}/a/{tokens.encode(1, stimulus_id)}" for stimulus_id, _ in stimuli]
    plain = [f"{base}/plain/{Path(path).name}" for _, path in stimuli]
    size = statistics.fmean(Path(path).stat().st_size for _, path in stimuli)

    rates: dict[str, list[float]] = {"plain static route": [], "opaque URLs": []}
    try:
        for _ in range(args.rounds):
            for name, urls in (("plain static route", plain), ("opaque URLs", opaque)):
                total, elapsed = download_all(urls, args.clients, args.seconds)
                rates[name].append(total / elapsed)
    finally:
        process.terminate()
        process.join(10)

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"gunicorn {args.workers} workers; {args.clients} clients; {len(stimuli)} files of {size / 1e6:.2f} MB on average; {args.rounds} alternating rounds of {args.seconds:g} s"
    )
    for name, values in rates.items():
        print(
            f"{name}: median {statistics.median(values) / 1e6:.1f} MB/s (rounds: {', '.join(f'{v / 1e6:.1f}' for v in values)})"
        )
    ratio = statistics.median(rates["opaque URLs"]) / statistics.median(
        rates["plain static route"]
    )
    print(f"ratio opaque / plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
