"""From the ``mushra`` config section to conditions: pages, stimuli and anchors.

A condition is one page: an item rated on one scale, or on a blocked design
one block of the item's systems. Every page has the open reference, the
hidden reference, the anchors and the systems under test.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from caqe_core import ConditionSpec, PrepareContext, StimulusSpec, StudyDefinitionError

from .anchors import LOW_ANCHOR_HZ, MID_ANCHOR_HZ, lowpass_anchor
from .config import BS1534_MAX_SIGNALS, ItemConfig, MushraConfig

logger = logging.getLogger(__name__)

SECTION = "mushra"

REFERENCE_KEY = "reference"
HIDDEN_REFERENCE_KEY = "hidden_reference"
LOW_ANCHOR_KEY = f"lowpass_{LOW_ANCHOR_HZ}"
MID_ANCHOR_KEY = f"lowpass_{MID_ANCHOR_HZ}"
RESERVED_KEYS = (REFERENCE_KEY, HIDDEN_REFERENCE_KEY, LOW_ANCHOR_KEY, MID_ANCHOR_KEY)
"""Stimulus keys of the plugin's own stimuli. Systems and anchors cannot use them."""

ANCHOR_ROLES = ("anchor_low", "anchor_mid", "anchor")
RATED_ROLES = ("hidden_reference", *ANCHOR_ROLES, "system")

_ANCHOR_FORMAT_VERSION = "1"
"""Part of each generated anchor's file name; change it when the filter changes."""


@dataclass(frozen=True)
class GeneratedAnchor:
    key: str
    role: str
    cutoff_hz: int
    config_key: str


def build_conditions(context: PrepareContext) -> list[ConditionSpec]:
    """Turn a validated ``mushra`` section into one condition per page.

    Raises ``StudyDefinitionError`` naming the config key for a page with
    too many signals, a name that collides with a reserved stimulus key, a
    missing training example, or an anchor that cannot be made at the
    reference's sample rate.
    """
    section: MushraConfig = context.section
    _check_conformance(section)
    _check_training(context, section)

    anchors = generated_anchors(section)
    specs: list[ConditionSpec] = []
    for index, item in enumerate(section.items):
        where = f"{SECTION}.items[{index}]"
        _check_names(item, where)
        blocks = split_systems(section, item, where, len(anchors))
        reference = context.resolve_audio(item.reference)
        anchor_stimuli = [
            StimulusSpec(
                key=anchor.key,
                role=anchor.role,
                path=make_anchor(
                    reference, anchor.cutoff_hz, context.generated_dir, where
                ),
                config_key=f"{where}.reference",
            )
            for anchor in anchors
        ]
        anchor_stimuli += [
            StimulusSpec(
                key=name,
                role="anchor",
                path=context.resolve_audio(path),
                config_key=f"{where}.anchors.{name}",
            )
            for name, path in item.anchors.items()
        ]
        for scale in section.scales:
            for block_index, systems in enumerate(blocks):
                stimuli = [
                    StimulusSpec(
                        REFERENCE_KEY, "reference", reference, f"{where}.reference"
                    ),
                    StimulusSpec(
                        HIDDEN_REFERENCE_KEY,
                        "hidden_reference",
                        reference,
                        f"{where}.reference",
                    ),
                    *anchor_stimuli,
                    *(
                        StimulusSpec(
                            key=name,
                            role="system",
                            path=context.resolve_audio(item.systems[name]),
                            config_key=f"{where}.systems.{name}",
                        )
                        for name in systems
                    ),
                ]
                key = f"{item.name}/{scale.name}"
                data: dict[str, Any] = {
                    "scale": scale.name,
                    "question": scale.question,
                    "description": scale.description,
                    "block": None,
                    "blocks": len(blocks),
                }
                if len(blocks) > 1:
                    key += f"/block{block_index + 1}"
                    data["block"] = block_index + 1
                    data["block_systems"] = list(systems)
                specs.append(
                    ConditionSpec(
                        key=key,
                        item=item.name,
                        scale=scale.name,
                        stimuli=stimuli,
                        data=data,
                        config_key=where,
                    )
                )
    return specs


def _check_conformance(section: MushraConfig) -> None:
    if section.allow_nonconforming:
        return
    if not section.anchors.low:
        raise StudyDefinitionError(
            f"{SECTION}.anchors.low",
            "ITU-R BS.1534-3 requires the 3.5 kHz low-pass anchor on every page. "
            f"Set it to true, or set {SECTION}.allow_nonconforming: true to run a "
            "test that does not conform (the report then says so).",
        )
    if section.max_signals_per_page > BS1534_MAX_SIGNALS:
        raise StudyDefinitionError(
            f"{SECTION}.max_signals_per_page",
            f"{section.max_signals_per_page} is above the {BS1534_MAX_SIGNALS} rated "
            "signals per page that ITU-R BS.1534-3 allows. Lower it and set "
            f"{SECTION}.blocked_design: true, or set {SECTION}.allow_nonconforming: true.",
        )


def _check_training(context: PrepareContext, section: MushraConfig) -> None:
    if not section.training.enabled:
        return
    lists = {
        "low_quality_examples": section.training.low_quality_examples,
        "high_quality_examples": section.training.high_quality_examples,
    }
    for name, paths in lists.items():
        for index, value in enumerate(paths):
            key = f"{SECTION}.training.{name}[{index}]"
            _require_audio(context.resolve_audio(value), key)


def _require_audio(path: Path, key: str) -> sf._SoundFileInfo:
    if not path.is_file():
        raise StudyDefinitionError(
            key, f"audio file not found: {path}. Check the path and audio.root."
        )
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise StudyDefinitionError(
            key, f"cannot read {path} as audio ({error}). Use WAV, FLAC, OGG or MP3."
        ) from None


def generated_anchors(section: MushraConfig) -> list[GeneratedAnchor]:
    anchors = []
    if section.anchors.low:
        anchors.append(
            GeneratedAnchor(
                LOW_ANCHOR_KEY, "anchor_low", LOW_ANCHOR_HZ, f"{SECTION}.anchors.low"
            )
        )
    if section.anchors.mid:
        anchors.append(
            GeneratedAnchor(
                MID_ANCHOR_KEY, "anchor_mid", MID_ANCHOR_HZ, f"{SECTION}.anchors.mid"
            )
        )
    return anchors


def _check_names(item: ItemConfig, where: str) -> None:
    for group in ("systems", "anchors"):
        for name in getattr(item, group):
            if name in RESERVED_KEYS:
                raise StudyDefinitionError(
                    f"{where}.{group}.{name}",
                    f"{name!r} is a name the MUSHRA plugin uses for its own stimuli "
                    f"({', '.join(RESERVED_KEYS)}). Rename it.",
                )
    shared = sorted(set(item.systems) & set(item.anchors))
    if shared:
        raise StudyDefinitionError(
            f"{where}.anchors.{shared[0]}",
            f"{shared[0]!r} names both a system and an anchor of item {item.name!r}. "
            "Rename one of them.",
        )


def split_systems(
    section: MushraConfig, item: ItemConfig, where: str, generated: int
) -> list[list[str]]:
    """Return the systems of each page of ``item``: one list without blocking."""
    systems = list(item.systems)
    fixed = 1 + generated + len(item.anchors)
    total = fixed + len(systems)
    limit = section.max_signals_per_page
    if total <= limit:
        return [systems]

    counts = f"the hidden reference, {fixed - 1} anchor(s) and {len(systems)} system(s)"
    if not section.blocked_design:
        raise StudyDefinitionError(
            f"{where}.systems",
            f"item {item.name!r} puts {total} rated signals on one page ({counts}), "
            f"but {SECTION}.max_signals_per_page is {limit}. Remove systems or "
            f"anchors, or set {SECTION}.blocked_design: true to split the systems "
            "over several pages.",
        )
    capacity = limit - fixed
    if capacity < 1:
        raise StudyDefinitionError(
            f"{SECTION}.max_signals_per_page",
            f"item {item.name!r} has {fixed} signals on every page besides its "
            f"systems (the hidden reference and {fixed - 1} anchor(s)), which leaves "
            f"no room for a system within max_signals_per_page {limit}. Raise it or "
            "use fewer anchors.",
        )
    blocks = math.ceil(len(systems) / capacity)
    # Balanced blocks: sizes differ by at most one.
    return [
        list(block) for block in np.array_split(np.array(systems, dtype=object), blocks)
    ]


def make_anchor(reference: Path, cutoff_hz: int, folder: Path, where: str) -> Path:
    """Write the low-pass anchor of ``reference`` once and return its path.

    The file name is a hash of the reference's content and the cut-off, so a
    changed reference gets a new anchor and an unchanged one is reused.
    Samples outside [-1, 1] are clipped when written, which the core's
    clipping check then reports.
    """
    info = _require_audio(reference, f"{where}.reference")
    digest = hashlib.sha256()
    digest.update(f"caqe-mushra-anchor:{_ANCHOR_FORMAT_VERSION}:{cutoff_hz}\0".encode())
    digest.update(reference.read_bytes())
    target = folder / "anchors" / f"lowpass-{cutoff_hz}-{digest.hexdigest()[:32]}.flac"
    if target.exists():
        return target

    data, rate = sf.read(str(reference), dtype="float64", always_2d=True)
    try:
        anchor = lowpass_anchor(data, rate, cutoff_hz)
    except ValueError as error:
        key = "mid" if cutoff_hz == MID_ANCHOR_HZ else "low"
        raise StudyDefinitionError(
            f"{SECTION}.anchors.{key}",
            f"cannot make the {cutoff_hz} Hz anchor of {reference} "
            f"({info.samplerate} Hz): {error} Set {SECTION}.anchors.{key}: false "
            "for audio at this sample rate.",
        ) from None

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    sf.write(
        str(partial), np.clip(anchor, -1.0, 1.0), rate, format="FLAC", subtype="PCM_24"
    )
    partial.replace(target)
    logger.info("Generated the %d Hz anchor of %s: %s", cutoff_hz, reference, target)
    return target
