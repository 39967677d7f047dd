"""The ``mushra`` section of a study config.

Every model rejects unknown keys, so a misspelt key is an error with the
valid keys listed, not a silently ignored setting.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Item, scale, system and anchor names: letters, digits, '_', '.' and '-'."""

BS1534_MAX_SIGNALS = 12
"""Maximum rated signals on one page (hidden reference, anchors and systems)."""

DEFAULT_QUESTION = (
    "Rate the basic audio quality of each stimulus compared with the reference."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemConfig(_Strict):
    """One programme item: its reference and the processed versions of it."""

    name: str = Field(pattern=NAME_PATTERN)
    reference: str
    """Audio file of the unprocessed reference, relative to ``audio.root``."""
    systems: dict[str, str] = Field(min_length=1)
    """Systems under test: name to audio file."""
    anchors: dict[str, str] = Field(default_factory=dict)
    """Extra anchors (for example source-separation anchors): name to file."""

    @field_validator("systems", "anchors")
    @classmethod
    def _check_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"invalid name {name!r}: use 1 to 63 letters, digits, '_', '.' "
                    "or '-', starting with a letter or digit"
                )
        return value


class ScaleConfig(_Strict):
    """One rating scale; each scale of an item is a page of its own."""

    name: str = Field(pattern=NAME_PATTERN)
    """Identifier in the results, for example ``quality`` or ``interference``."""
    question: str | None = None
    """Question shown above the sliders; defaults to ``mushra.question``."""
    description: str = ""
    """Further explanation shown below the question."""


class AnchorsConfig(_Strict):
    """The low-pass anchors the server generates from each reference."""

    low: bool = True
    """3.5 kHz low-pass anchor. BS.1534-3 requires it: turning it off needs
    ``mushra.allow_nonconforming: true``."""
    mid: bool = True
    """7 kHz low-pass anchor, recommended by BS.1534-3. Needs a sample rate
    above 16 kHz."""


class TrainingConfig(_Strict):
    """The training page shown before the rated pages."""

    enabled: bool = True
    low_quality_examples: list[str] = Field(default_factory=list)
    """Audio files of clearly impaired examples, relative to ``audio.root``."""
    high_quality_examples: list[str] = Field(default_factory=list)
    """Audio files of examples indistinguishable from their reference."""
    instructions: str = (
        "Listen to the reference and to every stimulus below. The stimuli "
        "include the reference itself and clearly impaired versions of it, so "
        "you hear the range of quality the test covers. You do not rate "
        "anything on this page."
    )


class MushraConfig(_Strict):
    """The ``mushra`` section: items, scales, anchors and page rules."""

    items: list[ItemConfig] = Field(min_length=1)
    scales: list[ScaleConfig] = Field(
        default_factory=lambda: [ScaleConfig(name="quality")], min_length=1
    )
    question: str = DEFAULT_QUESTION
    """Question of every scale that sets none of its own."""
    anchors: AnchorsConfig = Field(default_factory=AnchorsConfig)
    allow_nonconforming: bool = False
    """True allows settings that break BS.1534-3: no 3.5 kHz anchor, or more
    than 12 signals on a page. The report then states that the test does not
    conform."""
    max_signals_per_page: int = Field(default=BS1534_MAX_SIGNALS, ge=2, le=30)
    """Rated signals per page: hidden reference, anchors and systems."""
    blocked_design: bool = False
    """True splits the systems of an item over several pages when they do not
    fit on one. Each page keeps the hidden reference and the anchors."""
    min_play_seconds: float = Field(default=1.0, ge=0, le=60)
    """Seconds a stimulus must be heard before its slider can move."""
    fade_ms: float = Field(default=5, ge=0, le=100)
    """Raised-cosine fade at each switch, play and stop, in milliseconds."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)

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
    def _fill_questions(self) -> MushraConfig:
        for scale in self.scales:
            if scale.question is None:
                scale.question = self.question
        return self
