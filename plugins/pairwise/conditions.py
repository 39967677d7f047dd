"""From the ``pairwise`` config section to conditions: one per item and scale.

A condition is one page: the pairs of one item that a participant judges on
one scale. The condition's ``data`` contains everything ``plan_trial`` needs to
rebuild a participant's pairs, because ``plan_trial`` gets the condition but
not the config.
"""

from __future__ import annotations

import hashlib
import logging
from math import comb

from caqe_core import ConditionSpec, PrepareContext, StimulusSpec, StudyDefinitionError

from .config import REFERENCE_KEY, ItemConfig, PairwiseConfig

logger = logging.getLogger(__name__)

SECTION = "pairwise"


def build_conditions(context: PrepareContext) -> list[ConditionSpec]:
    """Turn a validated ``pairwise`` section into one condition per item and scale.

    Raises ``StudyDefinitionError`` naming the config key when
    ``pairs_per_participant`` or ``repeats`` is too large for an item.
    """
    section: PairwiseConfig = context.section
    study_seed = context.config.core.experiment.seed
    specs: list[ConditionSpec] = []
    for index, item in enumerate(section.items):
        where = f"{SECTION}.items[{index}]"
        _check_design(section, item, where)
        stimuli = [
            StimulusSpec(
                key=name,
                role="system",
                path=context.resolve_audio(path),
                config_key=f"{where}.systems.{name}",
            )
            for name, path in item.systems.items()
        ]
        if item.reference is not None:
            stimuli.insert(
                0,
                StimulusSpec(
                    key=REFERENCE_KEY,
                    role="reference",
                    path=context.resolve_audio(item.reference),
                    config_key=f"{where}.reference",
                ),
            )
        for scale in section.scales:
            data = {
                "scale": scale.name,
                "question": scale.question,
                "description": scale.description,
                "systems": sorted(item.systems),
                "pairs_per_participant": section.pairs_per_participant,
                "repeats": section.repeats,
                "design_seed": design_seed(study_seed, item.name, scale.name),
            }
            specs.append(
                ConditionSpec(
                    key=f"{item.name}/{scale.name}",
                    item=item.name,
                    scale=scale.name,
                    stimuli=list(stimuli),
                    data=data,
                    config_key=where,
                )
            )
    return specs


def design_seed(study_seed: int, item: str, scale: str) -> int:
    """Derive the pair design's seed of one condition from the study seed.

    Each condition gets its own seed, so the conditions' pair subsets and A/B
    schedules are independent of each other. The seed is a non-negative
    63-bit integer from SHA-256, so it is the same on every platform and run.
    """
    text = f"caqe-pairwise:{study_seed}:{item}:{scale}".encode()
    digest = hashlib.sha256(text).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _check_design(section: PairwiseConfig, item: ItemConfig, where: str) -> None:
    systems = len(item.systems)
    pairs = comb(systems, 2)
    per_participant = section.pairs_per_participant or pairs
    if per_participant > pairs:
        raise StudyDefinitionError(
            f"{SECTION}.pairs_per_participant",
            f"{per_participant} is more than the {pairs} pairs that the {systems} "
            f"systems of item {item.name!r} ({where}) make. Set it to {pairs} or "
            "less, or remove it to show every pair.",
        )
    if section.repeats > per_participant:
        raise StudyDefinitionError(
            f"{SECTION}.repeats",
            f"{section.repeats} repeats are more than the {per_participant} distinct "
            f"pairs a participant judges of item {item.name!r} ({where}). Set "
            f"repeats to {per_participant} or less.",
        )
