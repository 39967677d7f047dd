"""Benchmark AudioEngine.load() against plain fetch + decodeAudioData in Chromium.

Both sides load the same audio files (16-bit WAV, the format `caqe run`
serves by default, or FLAC with --format flac) over a loopback HTTP server
in one Chromium run: (a) `await engine.load(items)` on a new AudioEngine, until it is
playable, and (b) a new AudioContext at the files' rate with
`Promise.all(fetch -> arrayBuffer -> decodeAudioData)`. Both include creating
their AudioContext. Every run uses fresh URLs, the server sends
`Cache-Control: no-store` and the browser cache is disabled. The order of (a)
and (b) alternates between repeats, one warm-up pair is discarded, and the
medians are compared.

Run: python bench/bench_engine_load.py [--repeats 9] [--files 12] [--seconds 10]
     [--format wav]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf
from scipy import signal

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STATIC_DIR = REPO_ROOT / "caqe_core" / "web" / "static"
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
GOAL_RATIO = 1.2

HARNESS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>Engine load benchmark</title></head><body>
<script type="module">
  import { AudioEngine } from "/static/caqe/audio-engine.js";

  async function timeEngine(urls) {
    const items = urls.map((url, index) => ({ id: `s${index}`, url }));
    const started = performance.now();
    const engine = new AudioEngine();
    await engine.load(items);
    const elapsed = performance.now() - started;
    if (!engine.ready) throw new Error("engine.load() resolved before the engine was ready");
    await engine.close();
    return elapsed;
  }

  async function timeBaseline(urls, sampleRate) {
    const started = performance.now();
    const context = new AudioContext({ sampleRate });
    const decode = async (url) => {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`HTTP ${response.status} for ${url}`);
      return context.decodeAudioData(await response.arrayBuffer());
    };
    await Promise.all(urls.map(decode));
    const elapsed = performance.now() - started;
    await context.close();
    return elapsed;
  }

  window.measurePair = async (names, run, sampleRate, engineFirst) => {
    const urlsFor = (kind) => names.map((name) => `/bench/${name}?run=${run}-${kind}`);
    const result = {};
    const order = engineFirst ? ["engine", "baseline"] : ["baseline", "engine"];
    for (const kind of order) {
      const urls = urlsFor(kind);
      result[kind] = kind === "engine" ? await timeEngine(urls) : await timeBaseline(urls, sampleRate);
    }
    return result;
  };
</script></body></html>
"""


class _BenchHandler(SimpleHTTPRequestHandler):
    """Serves the harness page, /static/ and the generated files at /bench/."""

    def __init__(self, *args, audio_dir: Path, **kwargs) -> None:
        self.audio_dir = audio_dir
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/harness.html":
            body = HARNESS_PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        url_path = urlsplit(path).path
        for prefix, root in (("/static/", STATIC_DIR), ("/bench/", self.audio_dir)):
            if url_path.startswith(prefix):
                candidate = (root / url_path[len(prefix) :]).resolve()
                if candidate.is_relative_to(root.resolve()):
                    return str(candidate)
        return str(self.audio_dir / "not-found")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def write_stimuli(
    directory: Path, count: int, seconds: float, file_format: str
) -> list[str]:
    """Write `count` mono 48 kHz 16-bit files of band-limited noise with tones."""
    generator = np.random.default_rng(0)
    b, a = signal.butter(4, 4000, fs=RATE)
    t = np.arange(round(seconds * RATE)) / RATE
    names = []
    for index in range(count):
        noise = signal.lfilter(b, a, generator.standard_normal(len(t)))
        samples = 0.2 * noise / np.max(np.abs(noise)) + 0.3 * np.sin(
            2 * np.pi * (220 + 55 * index) * t
        )
        name = f"stimulus{index:02d}.{file_format}"
        sf.write(directory / name, samples, RATE, subtype="PCM_16")
        names.append(name)
    return names


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="number of measured pairs after one warm-up pair",
    )
    parser.add_argument("--files", type=int, default=12, help="number of audio files")
    parser.add_argument(
        "--format",
        choices=("wav", "flac"),
        default="wav",
        help="file format; caqe run serves WAV unless audio.serve_format is flac",
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each file in s"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
    if not Path(CHROMIUM_PATH).exists():
        logger.error(
            "Chromium not found at %s; install Debian's chromium package", CHROMIUM_PATH
        )
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        audio_dir = Path(folder)
        names = write_stimuli(audio_dir, args.files, args.seconds, args.format)
        total_bytes = sum((audio_dir / name).stat().st_size for name in names)
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_BenchHandler, audio_dir=audio_dir)
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS
                )
                page = browser.new_page()
                session = page.context.new_cdp_session(page)
                # The cache stays in use unless the Network domain is enabled.
                session.send("Network.enable")
                session.send("Network.setCacheDisabled", {"cacheDisabled": True})
                page.goto(f"{base_url}/harness.html")
                page.wait_for_function("window.measurePair !== undefined")
                pairs = []
                for run in range(args.repeats + 1):
                    pairs.append(
                        page.evaluate(
                            "([names, run, rate, engineFirst]) =>"
                            " window.measurePair(names, run, rate, engineFirst)",
                            [names, run, RATE, run % 2 == 0],
                        )
                    )
                browser_version = browser.version
                browser.close()
        finally:
            server.shutdown()
            server.server_close()

    measured = pairs[1:]
    engine_ms = [pair["engine"] for pair in measured]
    baseline_ms = [pair["baseline"] for pair in measured]
    engine_median = statistics.median(engine_ms)
    baseline_median = statistics.median(baseline_ms)
    ratio = engine_median / baseline_median

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, Chromium {browser_version} (headless), "
        f"load average before the run {load_before}"
    )
    print(
        f"input: {args.files} mono {args.format.upper()} files, {args.seconds:g} s at "
        f"{RATE} Hz, 16 bit, "
        f"{total_bytes / 1e6:.1f} MB in total, loopback HTTP"
    )
    print(f"repeats: {args.repeats} pairs after 1 warm-up pair, order alternating")
    print("engine.load ms:    " + " ".join(f"{value:.0f}" for value in engine_ms))
    print("fetch+decode ms:   " + " ".join(f"{value:.0f}" for value in baseline_ms))
    print(f"median engine.load:  {engine_median:.1f} ms")
    print(f"median fetch+decode: {baseline_median:.1f} ms")
    print(f"ratio engine/baseline: {ratio:.3f} (goal <= {GOAL_RATIO})")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
