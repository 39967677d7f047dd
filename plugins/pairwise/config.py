"""The ``pairwise`` section of a study config.

Every model rejects unknown keys, so a misspelt key is an error with the
valid keys listed, not a silently ignored setting.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Item, scale and system names: letters, digits, '_', '.' and '-'."""

REFERENCE_KEY = "reference"
"""Stimulus key of an item's reference; no system may take this name."""

DEFAULT_QUESTION = "Which of the two stimuli, A or B, sounds better?"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemConfig(_Strict):
    """One programme item: the systems to compare and an optional reference."""

    name: str = Field(pattern=NAME_PATTERN)
    systems: dict[str, str] = Field(min_length=2)
    """Systems to compare: name to audio file, relative to ``audio.root``."""
    reference: str | None = None
    """Audio file of a reference the listener can play next to A and B; none
    when unset."""

    @field_validator("systems")
    @classmethod
    def _check_names(cls, systems: dict[str, str]) -> dict[str, str]:
        for name in systems:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"invalid system name {name!r}: use 1 to 63 letters, digits, "
                    "'_', '.' or '-', starting with a letter or digit"
                )
            if name == REFERENCE_KEY:
                raise ValueError(
                    f"{REFERENCE_KEY!r} is the stimulus key of the item's reference; "
                    "give the system another name"
                )
        return systems


class ScaleConfig(_Strict):
    """One quality scale; each scale of an item is a page of its own."""

    name: str = Field(pattern=NAME_PATTERN)
    """Identifier in the results, for example ``quality`` or ``artifacts``."""
    question: str | None = None
    """Question shown above the pair; defaults to ``pairwise.question``."""
    description: str = ""
    """Further explanation shown below the question."""


class PairwiseConfig(_Strict):
    """The ``pairwise`` section: items, scales, the pair design and page rules."""

    items: list[ItemConfig] = Field(min_length=1)
    scales: list[ScaleConfig] = Field(
        default_factory=lambda: [ScaleConfig(name="quality")], min_length=1
    )
    question: str = DEFAULT_QUESTION
    """Question of every scale that sets none of its own."""
    pairs_per_participant: int | None = Field(default=None, ge=1)
    """Distinct pairs of an item that one participant judges on a page. Unset
    means every pair; a smaller number gives each participant a balanced
    subset, so that over participants every pair is judged about equally
    often."""
    repeats: int = Field(default=0, ge=0)
    """Pairs of each page shown a second time, with A and B swapped, later on
    the same page. They measure each participant's consistency."""
    allow_no_preference: bool = False
    """True adds a "No preference" choice; false forces a choice of A or B."""
    require_both_played: bool = True
    """True accepts a choice only after A and B were each heard for
    ``min_play_seconds`` (or at all, when that is 0)."""
    min_play_seconds: float = Field(default=1.0, ge=0, le=60)
    """Seconds each of A and B must be heard before a choice counts."""
    fade_ms: float = Field(default=5, ge=0, le=100)
    """Raised-cosine fade at each switch, play and stop, in milliseconds."""

    @field_validator("items")
    @classmethod
    def _unique_items(cls, items: list[ItemConfig]) -> list[ItemConfig]:
        names = [item.name for item in items]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"item names {repeated} appear twice; give each item a unique name"
            )
        return items

    @field_validator("scales")
    @classmethod
    def _unique_scales(cls, scales: list[ScaleConfig]) -> list[ScaleConfig]:
        names = [scale.name for scale in scales]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"scale names {repeated} appear twice; give each scale a unique name"
            )
        return scales

    @model_validator(mode="after")
    def _fill_questions(self) -> PairwiseConfig:
        for scale in self.scales:
            if scale.question is None:
                scale.question = self.question
        return self
