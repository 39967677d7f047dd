"""Test signals for the screening steps: ramped pure tones and their sequences.

Levels are in dBFS of the RMS of a steady sine, so a tone at -20 dBFS has a
peak amplitude of ``sqrt(2) * 10 ** (-20 / 20)`` (about 0.141).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

DEFAULT_SAMPLE_RATE = 48000


def amplitude(level_dbfs: float) -> float:
    """Return the peak amplitude of a sine whose RMS is ``level_dbfs``."""
    return float(np.sqrt(2.0) * 10.0 ** (level_dbfs / 20.0))


def raised_cosine_ramps(frames: int, ramp_frames: int) -> np.ndarray:
    """Return an envelope of ``frames`` samples with raised-cosine onset and offset.

    The onset is the rising half of a Hann window of ``2 * ramp_frames + 1``
    points, so the first sample is 0 and the envelope reaches 1 after
    ``ramp_frames`` samples; the offset mirrors it.
    """
    if ramp_frames <= 0:
        return np.ones(frames)
    if 2 * ramp_frames > frames:
        raise ValueError(
            f"ramps of {ramp_frames} frames do not fit in a tone of {frames} frames; "
            "shorten the ramps or lengthen the tone"
        )
    # Imported here: scipy.signal adds about 0.1 s to every command's start.
    from scipy.signal.windows import hann

    window = hann(2 * ramp_frames + 1, sym=True)
    envelope = np.ones(frames)
    envelope[:ramp_frames] = window[:ramp_frames]
    envelope[frames - ramp_frames :] = window[ramp_frames + 1 :]
    return envelope


def tone(
    frequency: float,
    seconds: float,
    rate: int,
    level_dbfs: float,
    ramp_ms: float,
    phase: float = 0.0,
) -> np.ndarray:
    """Return a mono pure tone with raised-cosine ramps, as float64 samples."""
    frames = round(seconds * rate)
    t = np.arange(frames) / rate
    sine = np.sin(2.0 * np.pi * frequency * t + phase)
    envelope = raised_cosine_ramps(frames, round(ramp_ms / 1000.0 * rate))
    return amplitude(level_dbfs) * sine * envelope


def check_frequency(frequency: float, rate: int, key: str) -> str | None:
    """Return a problem message if ``frequency`` is too close to Nyquist, else None."""
    if frequency >= 0.45 * rate:
        return (
            f"{key}: {frequency:g} Hz is too high for the sample rate of {rate} Hz; "
            f"use frequencies below {0.45 * rate:g} Hz or raise audio.sample_rate"
        )
    return None


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write float samples as a 32-bit float WAV file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer: two processes may prepare a study at once.
    partial = path.with_name(
        f"{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.partial.wav"
    )
    sf.write(str(partial), samples.astype(np.float32), rate, subtype="FLOAT")
    partial.replace(path)
    return path


def write_key(folder: Path, key: dict[str, Any]) -> None:
    """Store a step's answer key next to its files; it is never sent to a page."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"key.json.{os.getpid()}.{secrets.token_hex(4)}.partial"
    partial.write_text(json.dumps(key, indent=1, sort_keys=True))
    partial.replace(folder / "key.json")


def read_key(folder: Path) -> dict[str, Any]:
    """Load the answer key that ``write_key`` stored in ``folder``."""
    path = folder / "key.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"screening files not found in {folder}; the study was not prepared with "
            "this config. Restart the server so that it prepares the study again"
        ) from None
