"""Fixtures for the browser tests: a loopback static server and Debian's Chromium."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STATIC_DIR = REPO_ROOT / "caqe_core" / "web" / "static"
PAGES_DIR = Path(__file__).resolve().parent / "pages"
CHROMIUM_PATH = Path("/usr/bin/chromium")
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


class _StaticHandler(SimpleHTTPRequestHandler):
    """Serves /static/, /pages/ and /audio/ from their folders, never cached.

    A `delay_ms` query parameter delays the response, so tests can make one
    file arrive after the others.
    """

    def __init__(self, *args, roots: dict[str, Path], **kwargs) -> None:
        self.roots = roots
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        url_path = urlsplit(path).path
        for prefix, root in self.roots.items():
            if url_path.startswith(f"/{prefix}/"):
                relative = url_path[len(prefix) + 2 :]
                candidate = (root / relative).resolve()
                if candidate.is_relative_to(root.resolve()):
                    return str(candidate)
        # A path outside every root: the handler then responds with 404.
        return str(REPO_ROOT / "nonexistent")

    def send_head(self) -> BinaryIO | None:
        query = parse_qs(urlsplit(self.path).query)
        delay_ms = float(query.get("delay_ms", ["0"])[0])
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)
        return super().send_head()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class StaticServer:
    """The running server: its base URL and the folder served at /audio/."""

    base_url: str
    audio_dir: Path

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@pytest.fixture(scope="session")
def static_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticServer]:
    """An HTTP server on 127.0.0.1 for the static files, harness pages and test audio."""
    audio_dir = tmp_path_factory.mktemp("audio")
    roots = {"static": STATIC_DIR, "pages": PAGES_DIR, "audio": audio_dir}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_StaticHandler, roots=roots))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield StaticServer(base_url=f"http://{host}:{port}", audio_dir=audio_dir)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def browser(playwright_instance: Any) -> Iterator[object]:
    """Debian's Chromium, headless, shared by the whole session.

    Skips when /usr/bin/chromium is missing, except under CI=true, where a
    missing browser fails the run.
    """
    if not CHROMIUM_PATH.exists():
        message = (
            f"Chromium not found at {CHROMIUM_PATH}; install Debian's chromium package "
            "to run the browser tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    playwright = playwright_instance
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def page(browser, static_server: StaticServer) -> Iterator[object]:
    """A fresh page on the engine harness, failing the test on uncaught page errors."""
    context = browser.new_context(viewport={"width": 960, "height": 640})
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    new_page.goto(static_server.url("/pages/engine.html"))
    new_page.wait_for_function("window.caqe !== undefined")
    try:
        yield new_page
    finally:
        context.close()
    assert not errors, f"Uncaught errors in the harness page: {errors}"
