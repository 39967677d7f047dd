"""Benchmark the MUSHRA trial page until usable against plain fetch + decode.

`caqe run` serves a generated MUSHRA study in a subprocess (gunicorn, SQLite):
one page of 12 rated stimuli (hidden reference, two anchors, nine systems)
plus the open reference, each 10 s of mono 48 kHz audio, which the server
prepares and sends as 16-bit WAV. In one Chromium run, each repeat measures

(a) the MUSHRA page, from navigation start until the page is usable: every
    stimulus decoded by the audio engine, the timeline drawn and the
    controls enabled. The page's `caqe-mushra-ready` performance mark gives
    this time. A second figure starts at the page's module script
    (`caqe-mushra-start`).
(b) The baseline, from navigation start of a minimal page of the same
    server (its HTML "not found" page) until a new AudioContext at 48 kHz
    has finished `Promise.all(fetch -> arrayBuffer -> decodeAudioData)` of
    the same 13 audio URLs. The fetches start when the page's document is
    created, as an inline script at the top of its head would start them.
    The goal is judged on (a) / (b), because both are timed from their own
    navigation.
(c) The same fetch + decode started from a page that has already loaded,
    so it leaves out any page load. (a) / (c) is a stricter ratio, because
    (a) includes loading the page and (c) does not.
(d) The MUSHRA page as in (a), but on a second page with the HTTP cache
    on, which holds the page's stylesheets and modules and nothing else:
    a participant's later pages find them there, but not their new audio.

(a), (b) and (c) run with the browser cache disabled and emptied, and the
script logs a warning for any file of the page's own requests that came
from a cache where it should not. It
also reports when the HTML response of (a) and (b) ended. The order of
(a) to (d) rotates, one warm-up repeat is discarded, and the medians are
compared.

Run: python bench/bench_mushra_page.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
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
from string import Template
from typing import Any

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
KINDS = {
    "page": "page, navigation to usable",
    "script": "page, script start to usable",
    "cached": "page with cached static files, navigation to usable",
    "baseline": "baseline page, navigation to decoded",
    "in_page": "fetch+decode in a loaded page",
    "page_html": "page, navigation to the end of its HTML response",
    "baseline_html": "baseline page, navigation to the end of its HTML response",
}
"""Label of each figure that a repeat measures, in milliseconds."""

FETCH_AND_DECODE = """async (urls) => {
  const context = new AudioContext({ sampleRate: 48000 });
  const decode = async (url) => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status} for ${url}`);
    return context.decodeAudioData(await response.arrayBuffer());
  };
  await Promise.all(urls.map(decode));
  return context;
}"""

BASELINE_PATH = "/bench-baseline"
"""Path of the baseline page. The server has no such route, so it sends its
small HTML "not found" page, and the init script below does the work."""

BASELINE_INIT_SCRIPT = Template("""(() => {
  if (location.pathname !== "$path") return;
  const urls = $urls.map((url) => url + location.search);
  const fetchAndDecode = $function;
  window.caqeBaseline = fetchAndDecode(urls).then(async (context) => {
    const elapsed = performance.now();
    await context.close();
    return elapsed;
  });
})();""")

IN_PAGE_BASELINE = Template("""async (urls) => {
  const started = performance.now();
  const context = await ($function)(urls);
  const elapsed = performance.now() - started;
  await context.close();
  return elapsed;
}""").substitute(function=FETCH_AND_DECODE)


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


def measure(base: str, repeats: int) -> tuple[list[dict[str, float]], int, str]:
    """Time every repeat (see ``KINDS``), warm-up first.

    Returns the figures of each repeat in milliseconds, the bytes of the
    page's 13 audio responses and the browser version.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS
        )
        context = browser.new_context()
        page = context.new_page()
        session = context.new_cdp_session(page)
        # The DevTools session disables the cache only while its Network
        # domain is enabled. Without it, the page's audio came from the HTTP
        # cache and its static files from the renderer's memory cache.
        session.send("Network.enable")
        session.send("Network.setCacheDisabled", {"cacheDisabled": True})

        def clear_cache() -> None:
            # The page's fetch worker is a DevTools target of its own, which
            # the setting above does not reach, so the HTTP cache is emptied
            # before each run. With the audio's URLs counted at the server,
            # every run then requested all 13 files.
            session.send("Network.clearBrowserCache")

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
        served_bytes = page.evaluate(
            """async (urls) => {
                const sizes = await Promise.all(urls.map(async (url) => {
                    const response = await fetch(url, { method: "HEAD" });
                    return Number(response.headers.get("Content-Length"));
                }));
                return sizes.reduce((total, size) => total + size, 0);
            }""",
            urls,
        )
        static_urls = page.evaluate(
            """() => performance.getEntriesByType("resource")
                .filter((entry) => entry.initiatorType !== "fetch")
                .map((entry) => entry.name)"""
        )
        page.add_init_script(
            BASELINE_INIT_SCRIPT.substitute(
                path=BASELINE_PATH, urls=json.dumps(urls), function=FETCH_AND_DECODE
            )
        )
        # A page of its own, in the same browser context, with the cache on.
        cached_page = context.new_page()
        cached_session = context.new_cdp_session(cached_page)

        def time_page(run: int) -> dict[str, float]:
            clear_cache()
            page.goto(trial_url)
            page.wait_for_selector(READY, timeout=60000)
            _check_downloads(page, static_files_cached=False)
            return page.evaluate(
                """() => {
                    const mark = (name) => performance.getEntriesByName(name)[0].startTime;
                    const html = performance.getEntriesByType("navigation")[0];
                    return {page: mark("caqe-mushra-ready"),
                            script: mark("caqe-mushra-ready") - mark("caqe-mushra-start"),
                            page_html: html.responseEnd};
                }"""
            )

        def time_cached_page(run: int) -> dict[str, float]:
            # Only the static files are cached, as on a participant's later
            # pages: their audio URLs are new to the browser.
            cached_session.send("Network.clearBrowserCache")
            cached_page.goto(f"{base}/lab/")
            cached_page.evaluate(
                "(urls) => Promise.all(urls.map((url) => fetch(url).then((r) => r.blob())))",
                static_urls,
            )
            cached_page.goto(trial_url)
            cached_page.wait_for_selector(READY, timeout=60000)
            _check_downloads(cached_page, static_files_cached=True)
            return {
                "cached": cached_page.evaluate(
                    """() => performance.getEntriesByName("caqe-mushra-ready")[0].startTime"""
                )
            }

        def time_baseline(run: int) -> dict[str, float]:
            clear_cache()
            page.goto(f"{base}{BASELINE_PATH}?run={run}")
            return {
                "baseline": page.evaluate("window.caqeBaseline"),
                "baseline_html": page.evaluate(
                    """() => performance.getEntriesByType("navigation")[0].responseEnd"""
                ),
            }

        def time_in_page(run: int) -> dict[str, float]:
            clear_cache()
            page.goto(f"{base}/lab/")
            fresh = [f"{url}?in-page={run}" for url in urls]
            return {"in_page": page.evaluate(IN_PAGE_BASELINE, fresh)}

        timers = [time_page, time_cached_page, time_baseline, time_in_page]
        repeats_ms = []
        for run in range(repeats + 1):
            figures: dict[str, float] = {}
            for offset in range(len(timers)):
                figures.update(timers[(run + offset) % len(timers)](run))
            repeats_ms.append(figures)
        version = browser.version
        browser.close()
    return repeats_ms, served_bytes, version


def _check_downloads(page: Any, static_files_cached: bool) -> None:
    """Log the files of a loaded page that came from the wrong place.

    The audio must always be downloaded, and the static files only when
    ``static_files_cached`` is false.
    """
    sizes = page.evaluate(
        """() => performance.getEntriesByType("resource")
            .map((entry) => [entry.name, entry.initiatorType, entry.transferSize])"""
    )
    for url, initiator, size in sizes:
        downloaded = size > 0
        if initiator == "fetch" and not downloaded:
            logger.warning("Audio taken from a cache: %s", url)
        elif initiator != "fetch" and downloaded == static_files_cached:
            where = "downloaded" if downloaded else "taken from a cache"
            logger.warning("Static file %s: %s", where, url)


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
    load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
    if not Path(CHROMIUM_PATH).exists():
        logger.error(
            "Chromium not found at %s; install Debian's chromium", CHROMIUM_PATH
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="caqe-bench-mushra-") as folder:
        config = write_study(Path(folder) / "study", args.seconds)
        port = free_port()
        server = start_server(config, Path(folder) / "home", port)
        try:
            repeats_ms, served_bytes, version = measure(
                f"http://127.0.0.1:{port}", args.repeats
            )
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
            server.stdout.close()

    measured = repeats_ms[1:]
    medians = {
        kind: statistics.median(figures[kind] for figures in measured) for kind in KINDS
    }
    ratio = medians["page"] / medians["baseline"]

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, Chromium {version} (headless), "
        f"load average before the run {load_before}"
    )
    print(
        f"input: one MUSHRA page, 12 rated stimuli + the open reference (13 URLs), "
        f"{args.seconds:g} s mono at {RATE} Hz, served as 16-bit WAV "
        f"({served_bytes / 1e6:.1f} MB for the 13 URLs), by "
        "'caqe run' (gunicorn, 1 worker, 8 threads, SQLite) on loopback"
    )
    print(f"repeats: {args.repeats} after 1 warm-up repeat, order rotating")
    for kind, label in KINDS.items():
        print(f"{label} ms: " + _row([figures[kind] for figures in measured]))
    for kind, label in KINDS.items():
        print(f"median {label}: {medians[kind]:.1f} ms")
    print(
        f"ratio page from navigation / baseline page from navigation: {ratio:.3f} "
        f"(goal <= {GOAL_RATIO})"
    )
    print(
        "ratio page with cached static files / baseline page from navigation: "
        f"{medians['cached'] / medians['baseline']:.3f}"
    )
    print(
        "ratio page from navigation / fetch+decode in a loaded page: "
        f"{medians['page'] / medians['in_page']:.3f}"
    )
    print(
        "ratio page from script start / fetch+decode in a loaded page: "
        f"{medians['script'] / medians['in_page']:.3f}"
    )
    return 0 if ratio <= GOAL_RATIO else 1


def _row(values: list[float]) -> str:
    return " ".join(f"{value:.0f}" for value in values)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
