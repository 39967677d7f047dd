"""Fixtures for the MUSHRA plugin tests: generated studies and the demo config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

DEMO_CONFIG = (
    Path(__file__).resolve().parents[2] / "plugins" / "mushra" / "demo" / "demo.yaml"
)


def write_noise(
    path: Path, seconds: float, rate: int, seed: int, level: float = 0.2
) -> Path:
    """Write white noise, which has energy up to Nyquist for the anchors to remove."""
    rng = np.random.default_rng(seed)
    data = level * rng.standard_normal(round(seconds * rate))
    data = np.clip(data, -0.9, 0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype="PCM_24" if rate > 48000 else "PCM_16")
    return path


def mushra_study(
    folder: Path,
    *,
    items: int = 2,
    systems: int = 3,
    rate: int = 48000,
    seconds: float = 1.0,
    mushra: dict[str, Any] | None = None,
    **core: Any,
) -> Path:
    """Write a MUSHRA study of noise stimuli and return the config path.

    ``mushra`` entries replace keys of the ``mushra`` section; other keyword
    arguments replace top-level sections.
    """
    section: dict[str, Any] = {"items": [], "training": {"enabled": False}}
    for item in range(items):
        name = f"item{item}"
        entry: dict[str, Any] = {
            "name": name,
            "reference": f"{name}/reference.wav",
            "systems": {},
        }
        write_noise(folder / "audio" / name / "reference.wav", seconds, rate, seed=item)
        for index in range(systems):
            system = f"system{index}"
            write_noise(
                folder / "audio" / name / f"{system}.wav",
                seconds,
                rate,
                seed=100 * item + index + 1,
            )
            entry["systems"][system] = f"{name}/{system}.wav"
        section["items"].append(entry)
    section.update(mushra or {})
    config: dict[str, Any] = {
        "experiment": {"name": "mushra-study", "title": "MUSHRA test"},
        "test_type": "mushra",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": items, "trials_per_condition": 5},
        "flow": {"steps": ["consent", "trials"]},
        "mushra": section,
    }
    config.update(core)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def demo_copy(folder: Path, **mushra: Any) -> Path:
    """Copy the shipped demo config, replacing keys of its ``mushra`` section."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["mushra"].update(mushra)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def make_study() -> Any:
    """The :func:`mushra_study` writer."""
    return mushra_study


@pytest.fixture
def make_demo_copy() -> Any:
    """The :func:`demo_copy` writer."""
    return demo_copy


CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium(playwright_instance: Any) -> Iterator[Any]:
    """Debian's Chromium, headless, without an autoplay exemption.

    Audio starts only after a click or key press, as for a participant.
    Skips when /usr/bin/chromium is missing, except under CI=true.
    """
    if not CHROMIUM_PATH.exists():
        message = f"Chromium not found at {CHROMIUM_PATH}; install Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    playwright = playwright_instance
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()
