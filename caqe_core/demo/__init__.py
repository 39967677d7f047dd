"""Demo stimuli shipped with CAQE, for trying a MUSHRA or pairwise test."""

from __future__ import annotations

import pathlib


def demo_audio_dir() -> pathlib.Path:
    """Return the folder that contains the demo stimuli (see README.md beside it)."""
    return pathlib.Path(__file__).resolve().parent / "audio"
