"""Benchmark the MUSHRA trial page until usable against plain fetch + decode.

`caqe run` serves a generated MUSHRA study in a subprocess (gunicorn, SQLite):
one page of 12 rated stimuli (hidden reference, two anchors, nine systems)
plus the open reference, each 10 s of mono 48 kHz FLAC. In one Chromium run,
each repeat measures

(a) the MUSHRA page, from navigation start until the page is usable: every
    stimulus decoded by the audio engine, the timeline drawn and the
    controls enabled. The page's `caqe-mushra-ready` performance mark gives
    this time. A second figure starts at the page's script
    (`caqe-mushra-start`, once the HTML, CSS and modules arrived).
(b) The baseline: a new AudioContext at 48 kHz and
    `Promise.all(fetch -> arrayBuffer -> decodeAudioData)` of the same 13
    audio URLs, run on another page of the same server.

The browser cache is disabled, the order of (a) and (b) alternates, one
warm-up pair is discarded, and the medians are compared.

Run: python bench/bench_mushra_page.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from scipy import signal

logger = logging.getLogger(__name__)

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
RATE = 48_000
SYSTEMS = 9
GOAL_RATIO = 1.2
READY = "#mushra[data-state=ready]"

BASELINE = """async (urls) => {
  const started = performance.now();
  const context = new AudioContext({ sampleRate: 48000 });
  const decode = async (url) => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status} for ${url}`);
    return context.decodeAudioData(await response.arrayBuffer());
  };
  await Promise.all(urls.map(decode));
  const elapsed = performance.now() - started;
  await context.close();
  return elapsed;
}"""


def write_study(folder: Path, seconds: float) -> Path:
    """Write the study: one item whose page has 12 rated stimuli of ``seconds``."""
    generator = np.random.default_rng(0)
    t = np.arange(round(seconds * RATE)) / RATE
    audio = folder / "audio"
    audio.mkdir(parents=True)
    systems = {}
    for index in range(SYSTEMS + 1):
        cutoff = 20000 if index == 0 else 3000 + 1800 * index
        b, a = signal.butter(4, cutoff, fs=RATE)
        noise = signal.lfilter(b, a, generator.standard_normal(len(t)))
        samples = 0.2 * noise / np.max(np.abs(noise)) + 0.3 * np.sin(
            2 * np.pi * (220 + 55 * index) * t
        )
        name = "reference" if index == 0 else f"system{index}"
        sf.write(audio / f"{name}.flac", samples, RATE, subtype="PCM_16")
        if index:
            systems[name] = f"{name}.flac"
    config = {
        "experiment": {"name": "bench-mushra-page", "title": "MUSHRA page benchmark"},
        "test_type": "mushra",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": 1, "trials_per_condition": 1000},
        "flow": {"steps": ["consent", "trials"]},
        "mushra": {
            "items": [
                {"name": "item", "reference": "reference.flac", "systems": systems}
            ],
            "training": {"enabled": False},
        },
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(config: Path, home: Path, port: int) -> subprocess.Popen[str]:
    """Start `caqe run` and return once it prints the participant URL."""
    executable = Path(sys.executable).parent / "caqe"
    env = {**os.environ, "CAQE_HOME": str(home), "CAQE_PLUGINS": "mushra,local_lab"}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [str(executable), "run", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    output = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if re.search(r"Participant URL:", line):
            return process
    process.terminate()
    raise RuntimeError("caqe run did not start:\n" + "".join(output))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(base: str, repeats: int) -> tuple[list[dict[str, float]], str]:
    """Return the milliseconds of each repeat (page, script, baseline), warm-up first."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.context.new_cdp_session(page).send(
            "Network.setCacheDisabled", {"cacheDisabled": True}
        )
        page.goto(f"{base}/lab/")
        page.click("#start")
        page.check("#agree")
        page.click("#continue")
        page.wait_for_selector(READY, timeout=60000)
        trial_url = page.url
        urls = page.evaluate(
            """() => {
                const settings = JSON.parse(
                    document.getElementById("mushra-settings").textContent);
                return [settings.reference, ...settings.signals].map(s => s.url);
            }"""
        )

        def time_page() -> tuple[float, float]:
            page.goto(trial_url)
            page.wait_for_selector(READY, timeout=60000)
            return page.evaluate(
                """() => {
                    const mark = (name) => performance.getEntriesByName(name)[0].startTime;
                    return [mark("caqe-mushra-ready"),
                            mark("caqe-mushra-ready") - mark("caqe-mushra-start")];
                }"""
            )

        def time_baseline(run: int) -> float:
            page.goto(f"{base}/lab/")
            fresh = [f"{url}?run={run}" for url in urls]
            return page.evaluate(BASELINE, fresh)

        pairs = []
        for run in range(repeats + 1):
            if run % 2 == 0:
                page_ms, script_ms = time_page()
                baseline_ms = time_baseline(run)
            else:
                baseline_ms = time_baseline(run)
                page_ms, script_ms = time_page()
            pairs.append(
                {"page": page_ms, "script": script_ms, "baseline": baseline_ms}
            )
        version = browser.version
        browser.close()
    return pairs, version


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=9, help="measured pairs after one warm-up pair"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each stimulus in s"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(CHROMIUM_PATH).exists():
        logger.error(
            "Chromium not found at %s; install Debian's chromium", CHROMIUM_PATH
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="caqe-bench-mushra-") as folder:
        config = write_study(Path(folder) / "study", args.seconds)
        total_bytes = sum(path.stat().st_size for path in config.parent.rglob("*.flac"))
        port = free_port()
        server = start_server(config, Path(folder) / "home", port)
        try:
            pairs, version = measure(f"http://127.0.0.1:{port}", args.repeats)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
            server.stdout.close()

    measured = pairs[1:]
    page_ms = [pair["page"] for pair in measured]
    script_ms = [pair["script"] for pair in measured]
    baseline_ms = [pair["baseline"] for pair in measured]
    page_median = statistics.median(page_ms)
    script_median = statistics.median(script_ms)
    baseline_median = statistics.median(baseline_ms)
    ratio = page_median / baseline_median
    script_ratio = script_median / baseline_median

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, Chromium {version} (headless)"
    )
    print(
        f"input: one MUSHRA page, 12 rated stimuli + the open reference (13 URLs), "
        f"{args.seconds:g} s mono at {RATE} Hz, 16-bit FLAC sources "
        f"({total_bytes / 1e6:.1f} MB for the 10 distinct files), served by "
        "'caqe run' (gunicorn, 1 worker, 8 threads, SQLite) on loopback"
    )
    print(f"repeats: {args.repeats} pairs after 1 warm-up pair, order alternating")
    print("page, navigation to usable ms: " + _row(page_ms))
    print("page, script start to usable ms: " + _row(script_ms))
    print("fetch+decode ms: " + _row(baseline_ms))
    print(f"median page, navigation to usable:   {page_median:.1f} ms")
    print(f"median page, script start to usable: {script_median:.1f} ms")
    print(f"median fetch+decode:                 {baseline_median:.1f} ms")
    print(f"ratio navigation-to-usable/baseline:   {ratio:.3f} (goal <= {GOAL_RATIO})")
    print(f"ratio script-start-to-usable/baseline: {script_ratio:.3f}")
    return 0 if ratio <= GOAL_RATIO else 1


def _row(values: list[float]) -> str:
    return " ".join(f"{value:.0f}" for value in values)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
