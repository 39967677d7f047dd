"""Versioned static URLs, their cache headers and the import map of each page."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path

import requests
from flask import Flask, render_template_string

from caqe_core.web import static_files
from tests.support.server import ServedStudy

CORE_STATIC = Path(__file__).resolve().parents[2] / "caqe_core" / "web" / "static"
LONG_CACHE = "public, max-age=31536000, immutable"


def _import_map(page: str) -> dict:
    match = re.search(r'<script type="importmap">(.*?)</script>', page)
    assert match, "the page has an import map"
    return json.loads(html.unescape(match.group(1)))


def _version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[: static_files.VERSION_LENGTH]


def test_page_links_versioned_stylesheet(served_scale: ServedStudy) -> None:
    page = requests.get(f"{served_scale.url}/").text
    version = _version(CORE_STATIC / "caqe" / "base.css")

    assert f'href="/static/caqe/base.css?v={version}"' in page


def test_versioned_file_cached_for_year(served_scale: ServedStudy) -> None:
    version = _version(CORE_STATIC / "caqe" / "base.css")
    response = requests.get(f"{served_scale.url}/static/caqe/base.css?v={version}")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == LONG_CACHE
    assert response.content == (CORE_STATIC / "caqe" / "base.css").read_bytes()


def test_plain_or_stale_url_revalidated(served_scale: ServedStudy) -> None:
    plain = requests.get(f"{served_scale.url}/static/caqe/base.css")
    stale = requests.get(f"{served_scale.url}/static/caqe/base.css?v=000000000000")

    assert plain.status_code == 200
    assert plain.headers["Cache-Control"] == "no-cache"
    assert stale.status_code == 200
    assert stale.headers["Cache-Control"] == "no-cache"
    assert stale.content == plain.content


def test_missing_file_not_cached(served_scale: ServedStudy) -> None:
    response = requests.get(f"{served_scale.url}/static/caqe/missing.js?v=0")

    assert response.status_code == 404
    assert "immutable" not in response.headers.get("Cache-Control", "")


def test_import_map_versions_modules(served_scale: ServedStudy) -> None:
    imports = _import_map(requests.get(f"{served_scale.url}/").text)["imports"]
    engine_version = _version(CORE_STATIC / "caqe" / "audio-engine.js")
    player_version = _version(CORE_STATIC / "caqe" / "screening" / "player.js")

    assert imports["/static/caqe/audio-engine.js"] == (
        f"/static/caqe/audio-engine.js?v={engine_version}"
    )
    assert imports["/static/caqe/screening/player.js"] == (
        f"/static/caqe/screening/player.js?v={player_version}"
    )
    assert imports["/mushra-static/mushra.js"].startswith("/mushra-static/mushra.js?v=")
    assert all(url.endswith(".js") for url in imports)


def test_edited_file_gets_new_version(tmp_path: Path) -> None:
    folder = tmp_path / "static"
    folder.mkdir()
    script = folder / "page.js"
    script.write_text("export const answer = 1;\n")
    app = Flask(__name__, static_folder=str(folder))
    static_files.init_app(app)
    template = (
        "{{ url_for('static', filename='page.js') }} {{ static_import_map() | tojson }}"
    )

    with app.test_request_context():
        first = render_template_string(template)
    script.write_text("export const answer = 22;\n")
    # Some file systems store modification times in whole seconds.
    stat = script.stat()
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    with app.test_request_context():
        second = render_template_string(template)

    assert f"/static/page.js?v={_version(script)}" in second
    assert first != second
    assert second.count(_version(script)) == 2
