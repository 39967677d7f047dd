"""Versioned static URLs that browsers cache for a year.

``url_for("static", ...)`` and ``url_for("<blueprint>.static", ...)`` get a
``v`` query argument: the first characters of the SHA-256 of the file. The
response to a request whose ``v`` matches the file's current digest has
``Cache-Control: public, max-age=31536000, immutable``, so a participant's
later pages take the file from the browser cache without a request. Any
other request for the file keeps Flask's default, a conditional request
each time.

JavaScript modules import each other by plain relative URLs. The import
map from ``static_import_map()`` maps those URLs to the versioned ones, so
an import and a ``<link rel="modulepreload">`` of the same file share one
download.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from flask import Flask, current_app, request, url_for

VERSION_ARG = "v"
VERSION_LENGTH = 12
"""Hex digits of the SHA-256 in ``v``: 48 bits, so two versions of one file
collide with a probability of about 2**-48."""

MAX_AGE_SECONDS = 365 * 24 * 3600

_versions: dict[tuple[str, str], tuple[str, int, int, str]] = {}
"""Path, modification time, size and digest of each static file by static
folder and filename. An edited file gets a new version without a restart."""


def init_app(app: Flask) -> None:
    """Version the app's static URLs and send versioned files with long caching."""
    app.url_defaults(_add_version)
    app.after_request(_cache_versioned)
    app.jinja_env.globals["static_import_map"] = static_import_map


def static_version(endpoint: str, filename: str) -> str | None:
    """Return the ``v`` value of a static file, or None if it does not exist."""
    folder = _static_folder(endpoint)
    if folder is None:
        return None
    cached = _versions.get((folder, filename))
    if cached is not None:
        path, mtime_ns, size, digest = cached
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if (stat.st_mtime_ns, stat.st_size) == (mtime_ns, size):
            return digest

    root = Path(folder).resolve()
    try:
        resolved = (root / filename).resolve()
        stat = resolved.stat()
    except OSError:
        return None
    # The same containment check as Flask's send_from_directory.
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    digest = hashlib.sha256(resolved.read_bytes()).hexdigest()[:VERSION_LENGTH]
    _versions[(folder, filename)] = (
        str(resolved),
        stat.st_mtime_ns,
        stat.st_size,
        digest,
    )
    return digest


def static_import_map() -> dict[str, dict[str, str]]:
    """Return an import map from each static JavaScript file's plain URL to its versioned one."""
    files = _javascript_files()
    versions = tuple(
        static_version(endpoint, filename) for _, endpoint, filename in files
    )
    key = (request.script_root, versions)
    cached = current_app.extensions.get("caqe_import_map")
    if cached is not None and cached[0] == key:
        return cached[1]

    imports = {
        plain: f"{plain}?{VERSION_ARG}={version}"
        for (plain, _, _), version in zip(files, versions, strict=True)
        if version is not None
    }
    import_map = {"imports": imports}
    current_app.extensions["caqe_import_map"] = (key, import_map)
    return import_map


def _javascript_files() -> list[tuple[str, str, str]]:
    """Return the plain URL, static endpoint and filename of every JavaScript file.

    The list is built on first use. A file added later gets no entry until
    the server restarts, but its plain URL still works.
    """
    files = current_app.extensions.get("caqe_static_javascript")
    if files is None:
        files = []
        for endpoint, folder in _static_folders():
            for root, _directories, names in os.walk(folder):
                for name in sorted(names):
                    if not name.endswith(".js"):
                        continue
                    filename = Path(root, name).relative_to(folder).as_posix()
                    plain = url_for(endpoint, filename=filename, **{VERSION_ARG: None})
                    files.append((plain, endpoint, filename))
        current_app.extensions["caqe_static_javascript"] = files
    return files


def _static_folders() -> list[tuple[str, str]]:
    app = current_app
    folders = []
    if app.static_folder:
        folders.append(("static", app.static_folder))
    for name, blueprint in app.blueprints.items():
        if blueprint.static_folder:
            folders.append((f"{name}.static", blueprint.static_folder))
    return folders


def _static_folder(endpoint: str | None) -> str | None:
    if endpoint == "static":
        return current_app.static_folder
    if endpoint and endpoint.endswith(".static"):
        blueprint = current_app.blueprints.get(endpoint.removesuffix(".static"))
        if blueprint is not None:
            return blueprint.static_folder
    return None


def _add_version(endpoint: str, values: dict[str, Any]) -> None:
    if VERSION_ARG in values or "filename" not in values:
        return
    version = static_version(endpoint, values["filename"])
    if version is not None:
        values[VERSION_ARG] = version


def _cache_versioned(response: Any) -> Any:
    if response.status_code not in (200, 304) or request.view_args is None:
        return response
    # The filename first: most responses are not files, and reading it
    # costs less than parsing the query string.
    filename = request.view_args.get("filename")
    if not isinstance(filename, str) or request.endpoint is None:
        return response
    version = request.args.get(VERSION_ARG)
    if not version:
        return response
    if version == static_version(request.endpoint, filename):
        response.headers["Cache-Control"] = (
            f"public, max-age={MAX_AGE_SECONDS}, immutable"
        )
    return response
