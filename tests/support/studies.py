"""Helpers that write small studies (config plus generated audio) for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

SAMPLE_RATE = 16000


def write_tone(
    path: Path,
    frequency: float,
    seconds: float = 1.0,
    rate: int = SAMPLE_RATE,
    level: float = 0.3,
    channels: int = 1,
) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    signal = level * np.sin(2 * np.pi * frequency * t)
    if channels > 1:
        signal = np.repeat(signal[:, None], channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), signal, rate)
    return path


def scale_study(
    folder: Path, items: int = 3, stimuli: int = 3, **overrides: Any
) -> Path:
    """Write a study of the test-only 'scale' test type and return the config path."""
    config: dict[str, Any] = {
        "experiment": {"name": "scale-study", "title": "Scale test"},
        "test_type": "scale",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": 2, "trials_per_condition": 5},
        "flow": {"steps": ["consent", "trials"]},
        "scale": {"items": []},
    }
    for item in range(items):
        entry = {"name": f"item{item}", "stimuli": {}}
        for index in range(stimuli):
            name = f"system{index}"
            write_tone(
                folder / "audio" / f"item{item}" / f"{name}.wav",
                220.0 * (index + 1) + item,
            )
            entry["stimuli"][name] = f"item{item}/{name}.wav"
        config["scale"]["items"].append(entry)
    for key, value in overrides.items():
        config[key] = value
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
