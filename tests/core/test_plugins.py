"""Third-party plugins installed through a real ``caqe`` entry point.

Each test writes a package and its ``.dist-info`` metadata into a temporary
folder and runs the ``caqe`` command in a subprocess with that folder on
PYTHONPATH, so plugin discovery goes through importlib.metadata exactly as
for a plugin installed with pip.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from caqe_core.plugins import CORE_PLUGIN_NAMES
from tests.support.studies import write_tone

CAQE = shutil.which("caqe") or str(Path(sys.executable).with_name("caqe"))

ACME_PLUGIN = '''
"""A test type and a recruiter from a package the core has never seen."""

import json
import random
from typing import Any, Callable, Mapping

from flask import Blueprint, redirect, request, url_for
from markupsafe import escape
from pydantic import BaseModel, ConfigDict

from caqe_core import (
    CompletionPage, ConditionSpec, ConditionView, PrepareContext, Recruiter,
    ResponseError, StimulusSpec, TestType, TrialPage, hookimpl,
)
from caqe_core.flow import start_participant
from caqe_core.web import current_study, participant_token, state

__version__ = "1.2.3"


class AcmeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: dict[str, list[str]]


class PreferenceTest(TestType):
    name = "acme"
    title = "Pick the better of two sounds"
    config_model = AcmeConfig

    def build_conditions(self, context: PrepareContext) -> list[ConditionSpec]:
        return [
            ConditionSpec(
                key=name,
                item=name,
                stimuli=[
                    StimulusSpec(key=f"x{index}", role="system", path=context.resolve_audio(path),
                                 config_key=f"acme.pairs.{name}[{index}]")
                    for index, path in enumerate(paths)
                ],
                config_key=f"acme.pairs.{name}",
            )
            for name, paths in context.section.pairs.items()
        ]

    def plan_trial(self, condition: ConditionView, rng: random.Random, participant_sequence: int) -> dict[str, Any]:
        keys = sorted(condition.stimuli)
        rng.shuffle(keys)
        return {"signals": [{"id": label, "stimulus": key} for label, key in zip("AB", keys)]}

    def render_trial(self, page: TrialPage) -> str:
        data = {"submit": page.submit_url, "csrf": page.csrf_token, "urls": page.signal_urls}
        return f"<div id='acme'>{escape(json.dumps(data))}</div>"

    def validate_response(self, page: TrialPage, response: Any) -> dict[str, Any]:
        if not isinstance(response, dict) or response.get("choice") not in ("A", "B"):
            raise ResponseError("response.choice", "must be 'A' or 'B'.")
        return {"choice": response["choice"]}

    def export_rows(self, trial: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"choice": trial["response"]["choice"]}]


class PanelRecruiter(Recruiter):
    name = "acme_panel"
    title = "The ACME listening panel"
    entry_endpoint = "acme.enter"

    def render_completion(self, page: CompletionPage) -> str:
        return f"<p id='acme-done'>Thank you, panelist {escape(page.participant.external_id)}</p>"


bp = Blueprint("acme", __name__, url_prefix="/acme")


@bp.get("/enter")
def enter():
    panelist = request.args.get("panelist", "anonymous")
    participant = start_participant(state().session_factory, current_study(), "acme_panel", external_id=panelist)
    return redirect(url_for("participant.page", token=participant_token(participant.public_id)))


@hookimpl
def register_test_types(register: Callable[[Any], None]) -> None:
    register(PreferenceTest())


@hookimpl
def register_recruiters(register: Callable[[Any], None]) -> None:
    register(PanelRecruiter())


@hookimpl
def register_routes(app: Any) -> None:
    app.register_blueprint(bp)
'''

TYPO_PLUGIN = """
from caqe_core import hookimpl

@hookimpl
def register_test_type(register):
    pass
"""

BROKEN_PLUGIN = """
import caqe_core.no_such_module
"""


def install(site: Path, name: str, module: str, source: str, version: str) -> None:
    """Write package ``module`` with a ``caqe`` entry point ``name`` into ``site``."""
    package = site / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{module}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: {version}\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[caqe]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    install(folder, "acme", "caqe_acme", ACME_PLUGIN, "1.2.3")
    return folder


def run_caqe(
    site: Path, home: Path, plugins: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAQE, *args],
        check=False,
        env=caqe_env(site, home, plugins),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home.parent,
    )


def caqe_env(site: Path, home: Path, plugins: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CAQE_CONFIG", "PYTHONPATH")
    }
    env.update(PYTHONPATH=str(site), CAQE_PLUGINS=plugins, CAQE_HOME=str(home))
    return env


def acme_study(folder: Path) -> Path:
    for name in ("one", "two"):
        for index in range(2):
            write_tone(folder / "audio" / name / f"{index}.wav", 300.0 + 100 * index)
    config = {
        "experiment": {"name": "acme-study", "title": "ACME preference test"},
        "test_type": "acme",
        "recruiter": "acme_panel",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": 1, "trials_per_condition": 3},
        "flow": {"steps": ["trials"]},
        "acme": {
            "pairs": {
                name: [f"{name}/0.wav", f"{name}/1.wav"] for name in ("one", "two")
            }
        },
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served_acme(site: Path, tmp_path: Path) -> Iterator[str]:
    """``caqe run`` of the ACME study in a subprocess; yields its base URL."""
    config = acme_study(tmp_path / "study")
    home = tmp_path / "home"
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            CAQE,
            "run",
            "--config",
            str(config),
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp_path / 'acme.sqlite'}",
        ],
        env=caqe_env(site, home, "acme"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(base + "/", allow_redirects=False, timeout=2)
                break
            except requests.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(
                        f"caqe run did not start:\n{(tmp_path / 'server.log').read_text()}"
                    )
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_plugins_lists_entry_point(site: Path, tmp_path: Path) -> None:
    result = run_caqe(site, tmp_path / "home", "acme,local_lab", "plugins")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "acme 1.2.3" in lines
    block = re.split(r"\n(?=\S)", result.stdout.split("acme 1.2.3\n", 1)[1])[0]
    assert "  test types: acme" in block
    assert "  recruiters: acme_panel" in block
    assert "register_routes" in block
    assert any(line.startswith("local_lab") for line in lines)


def test_validate_third_party_study(site: Path, tmp_path: Path) -> None:
    config = acme_study(tmp_path / "study")

    result = run_caqe(site, tmp_path / "home", "acme", "validate", str(config))

    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "test type 'acme', 2 conditions, 4 stimuli" in result.stdout


def test_third_party_study_serves_trial(served_acme: str) -> None:
    http = requests.Session()

    entry = http.get(served_acme + "/", allow_redirects=False)
    page = http.get(served_acme + "/acme/enter?panelist=P-17")
    match = re.search(r"<div id='acme'>(.*?)</div>", page.text)
    assert match, page.text
    trial = json.loads(html.unescape(match.group(1)))
    audio = http.get(served_acme + trial["urls"]["A"])
    stored = http.post(
        served_acme + trial["submit"],
        json={"idempotency_key": "acme-0123456789", "response": {"choice": "B"}},
        headers={"X-CAQE-CSRF": trial["csrf"]},
    )
    rejected = http.post(
        served_acme + trial["submit"],
        json={"idempotency_key": "acme-9876543210", "response": {"choice": "C"}},
        headers={"X-CAQE-CSRF": trial["csrf"]},
    )
    final = http.get(page.url)

    assert entry.status_code == 302
    assert entry.headers["Location"].endswith("/acme/enter")
    assert audio.status_code == 200
    assert audio.content.startswith(b"RIFF")
    assert audio.content[8:12] == b"WAVE"
    assert stored.status_code == 200
    assert stored.json()["stored"] is True
    assert rejected.status_code in (409, 422)
    assert "Thank you, panelist P-17" in final.text


def test_misspelled_hook_fails_at_load(site: Path, tmp_path: Path) -> None:
    install(site, "typo", "caqe_typo", TYPO_PLUGIN, "0.0.1")

    result = run_caqe(site, tmp_path / "home", "acme,typo", "plugins")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Plugin 'typo'" in result.stderr
    assert "'register_test_type'" in result.stderr
    assert "Did you mean 'register_test_types'?" in result.stderr
    assert result.stdout == ""


def test_misspelled_hook_fails_every_command(site: Path, tmp_path: Path) -> None:
    install(site, "typo", "caqe_typo", TYPO_PLUGIN, "0.0.1")
    config = acme_study(tmp_path / "study")

    result = run_caqe(site, tmp_path / "home", "acme,typo", "validate", str(config))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "'register_test_type'" in result.stderr


def test_plugin_import_error(site: Path, tmp_path: Path) -> None:
    install(site, "broken", "caqe_broken", BROKEN_PLUGIN, "0.0.1")

    result = run_caqe(site, tmp_path / "home", "broken", "plugins")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Plugin 'broken'" in result.stderr
    assert "caqe_core.no_such_module" in result.stderr
    assert "CAQE_PLUGINS" in result.stderr


def test_caqe_plugins_restricts_loading(site: Path, tmp_path: Path) -> None:
    install(site, "typo", "caqe_typo", TYPO_PLUGIN, "0.0.1")

    result = run_caqe(site, tmp_path / "home", "local_lab", "plugins")

    assert result.returncode == 0, result.stderr
    names = [
        line.split()[0]
        for line in result.stdout.splitlines()
        if not line.startswith(" ")
    ]
    assert names == sorted([*CORE_PLUGIN_NAMES, "local_lab"])


def test_unlisted_plugin_unknown_to_config(site: Path, tmp_path: Path) -> None:
    config = acme_study(tmp_path / "study")

    result = run_caqe(site, tmp_path / "home", "local_lab", "validate", str(config))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "unknown test type 'acme'" in result.stderr
    assert "unknown recruiter 'acme_panel'" in result.stderr
