"""Headphone check: the antiphase test of Woods, Siegel, Traer and McDermott (2017).

Woods et al., "Headphone screening to facilitate web-based auditory
experiments", Attention, Perception, & Psychophysics 79(7), 2064-2072.
Each trial plays three 200 Hz tones in random order: one at the standard
level in phase on both channels, one 6 dB quieter in phase, and one at the
standard level with the right channel inverted (antiphase, L = -R). The
listener picks the quietest. Over headphones the antiphase tone sounds as
loud as the standard, so the 6 dB tone is easy to pick; over loudspeakers
the two channels partly cancel in the air, and the antiphase tone tends to
sound quietest. The default pass rule is 5 correct of 6 trials, as in the
paper, and each trial can be played once.

The six orders of the three tones are written as six stereo files at the
study's sample rate; ``key.json`` records the order of each file.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from caqe_core.config import StudyConfig
from caqe_core.extension import StepPage
from caqe_core.models import Participant
from caqe_core.screening import tones
from caqe_core.screening.base import ScreeningConfig, ScreeningStep, participant_rng

STANDARD = "standard"
QUIET = "quiet"
ANTIPHASE = "antiphase"
TONE_KINDS = (STANDARD, QUIET, ANTIPHASE)


class HeadphoneCheckConfig(ScreeningConfig):
    """The ``headphone_check`` config section."""

    attempts: int = Field(default=1, ge=1, le=10)
    trials: int = Field(default=6, ge=1, le=30)
    min_correct: int = Field(default=5, ge=1)
    frequency: float = Field(default=200, gt=0)
    """Tone frequency in Hz."""
    level_dbfs: float = Field(default=-20, ge=-60, le=-3)
    """RMS level of the standard and the antiphase tones, per channel."""
    attenuation_db: float = Field(default=6, gt=0, le=40)
    """How much quieter the quiet tone is, in dB."""
    tone_ms: float = Field(default=1000, ge=100, le=5000)
    ramp_ms: float = Field(default=100, ge=0, le=1000)
    gap_ms: float = Field(default=500, ge=0, le=5000)
    """Silence between the tones of a trial."""
    calibration_frequency: float = Field(default=200, gt=0)
    calibration_level_dbfs: float = Field(default=-20, ge=-60, le=-3)

    @model_validator(mode="after")
    def _check_rule(self) -> HeadphoneCheckConfig:
        if self.min_correct > self.trials:
            raise ValueError(
                f"min_correct ({self.min_correct}) is above trials ({self.trials})"
            )
        if 2 * self.ramp_ms > self.tone_ms:
            raise ValueError(
                f"two ramps of {self.ramp_ms:g} ms do not fit in a {self.tone_ms:g} ms tone"
            )
        return self


def antiphase_trial(
    order: tuple[str, ...], section: HeadphoneCheckConfig, rate: int
) -> np.ndarray:
    """Return one trial as a (frames, 2) array: the three tones in ``order`` with gaps."""
    seconds = section.tone_ms / 1000
    gap = np.zeros((round(section.gap_ms / 1000 * rate), 2))
    parts = []
    for position, kind in enumerate(order):
        level = section.level_dbfs - (section.attenuation_db if kind == QUIET else 0.0)
        mono = tones.tone(section.frequency, seconds, rate, level, section.ramp_ms)
        right = -mono if kind == ANTIPHASE else mono
        if position:
            parts.append(gap)
        parts.append(np.column_stack([mono, right]))
    return np.concatenate(parts)


class HeadphoneCheckStep(ScreeningStep):
    name = "headphone_check"
    title = "Headphone check"
    config_model = HeadphoneCheckConfig
    template = "caqe/screening/headphone.html"
    field_prefix = "quietest"
    item_label = "trial"
    play_once = True

    def generate(
        self, section: Any, config: StudyConfig, folder: Path, rate: int
    ) -> None:
        self.check_frequencies(config, f"{self.name}.frequency", [section.frequency])
        orders = []
        for index, order in enumerate(itertools.permutations(TONE_KINDS)):
            file = f"trial-{index}.wav"
            tones.write_wav(folder / file, antiphase_trial(order, section, rate), rate)
            orders.append(
                {"file": file, "order": list(order), "quiet": order.index(QUIET) + 1}
            )
        tones.write_key(folder, {"trials": orders, "sample_rate": rate})

    def pick(
        self,
        config: StudyConfig,
        participant: Participant,
        attempt: int,
        key: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Return the key entries of the trials one attempt plays, in page order."""
        section = config.section(self.name)
        rng = participant_rng(config, participant, self.name, attempt)
        chosen: list[int] = []
        # Every order once before any repeats, as in a balanced block design.
        while len(chosen) < section.trials:
            block = list(range(len(key["trials"])))
            rng.shuffle(block)
            chosen.extend(block)
        return [key["trials"][index] for index in chosen[: section.trials]]

    def items(self, page: StepPage) -> list[dict[str, Any]]:
        folder = self.served_dir(page)
        key = tones.read_key(folder)
        return [
            {"url": page.audio_url(folder / entry["file"]), "expected": entry["quiet"]}
            for entry in self.pick(page.config, page.participant, page.attempt, key)
        ]

    def read_answers(
        self, page: StepPage, items: list[dict[str, Any]], form: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, str]]:
        answers: list[Any] = []
        errors: dict[str, str] = {}
        for index in range(1, len(items) + 1):
            field = f"quietest_{index}"
            raw = form.get(field, "")
            if raw not in ("1", "2", "3"):
                errors[field] = "Choose which tone was the quietest: 1, 2 or 3."
                answers.append(None)
            else:
                answers.append(int(raw))
        return answers, errors

    def required_correct(self, section: Any, items: int) -> int:
        return section.min_correct
