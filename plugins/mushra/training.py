"""Opaque audio URLs for the low- and high-quality examples of the training page."""

from __future__ import annotations

from typing import Any

from caqe_core import TrialPage
from caqe_core.web import current_study

from .config import MushraConfig


def training_examples(section: MushraConfig, page: TrialPage) -> list[dict[str, Any]]:
    """Return ``{id, kind, label, url}`` for each configured training example."""
    lists = (
        ("low", "Low-quality example", section.training.low_quality_examples),
        ("high", "High-quality example", section.training.high_quality_examples),
    )
    study = current_study()
    examples = []
    for kind, label, paths in lists:
        for number, value in enumerate(paths, start=1):
            path = study.config.resolve_audio(value)
            examples.append(
                {
                    "id": f"{kind}{number}",
                    "kind": kind,
                    "label": f"{label} {number}",
                    "url": page.audio_url(path, f"training_{kind}"),
                }
            )
    return examples
