"""Hearing screening: count quiet tones after setting a comfortable volume.

The listener first plays a calibration tone and sets the volume to a
comfortable level. Each stimulus then contains 2 to 8 short tones (by
default) at random frequencies, levels below the calibration tone and
onsets, in a stimulus of fixed length, so neither the length nor a steady
rhythm gives the count away. The listener types how many tones they heard.

``prepare`` writes a pool of stimuli and their tone counts (``key.json``);
each attempt draws its stimuli from the pool with the participant's seeded
RNG, so the page never sees a count.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from caqe_core.config import StudyConfig
from caqe_core.extension import StepPage
from caqe_core.models import Participant
from caqe_core.screening import tones
from caqe_core.screening.base import (
    ScreeningConfig,
    ScreeningStep,
    parse_int,
    participant_rng,
)

logger = logging.getLogger(__name__)

MAX_COUNT_ANSWER = 50


class HearingScreeningConfig(ScreeningConfig):
    """The ``hearing_screening`` config section."""

    stimuli: int = Field(default=2, ge=1, le=10)
    """Stimuli per attempt."""
    min_correct: int | None = Field(default=None, ge=1)
    """Stimuli that must be counted right to pass; all of them by default."""
    min_tones: int = Field(default=2, ge=1, le=20)
    max_tones: int = Field(default=8, ge=1, le=20)
    frequencies: list[float] = Field(
        default_factory=lambda: [250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0],
        min_length=1,
    )
    """Tone frequencies in Hz; each tone gets one at random."""
    levels_db: list[float] = Field(default_factory=lambda: [-25.0, -35.0], min_length=1)
    """Tone levels in dB relative to the calibration tone; each tone gets one at random."""
    tone_ms: float = Field(default=200, ge=20, le=2000)
    ramp_ms: float = Field(default=20, ge=0, le=500)
    min_gap_ms: float = Field(default=300, ge=20, le=5000)
    """Shortest silence between tones, and before the first and after the last."""
    stimulus_seconds: float = Field(default=6, gt=0, le=60)
    pool: int = Field(default=16, ge=1, le=200)
    """Stimuli generated at preparation; attempts draw from them."""

    @model_validator(mode="after")
    def _check_timing(self) -> HearingScreeningConfig:
        if self.min_tones > self.max_tones:
            raise ValueError(
                f"min_tones ({self.min_tones}) is above max_tones ({self.max_tones})"
            )
        if self.min_correct is not None and self.min_correct > self.stimuli:
            raise ValueError(
                f"min_correct ({self.min_correct}) is above the {self.stimuli} stimuli per attempt"
            )
        if 2 * self.ramp_ms > self.tone_ms:
            raise ValueError(
                f"two ramps of {self.ramp_ms:g} ms do not fit in a {self.tone_ms:g} ms tone"
            )
        needed = self.max_tones * self.tone_ms + (self.max_tones + 1) * self.min_gap_ms
        if needed > self.stimulus_seconds * 1000:
            raise ValueError(
                f"{self.max_tones} tones of {self.tone_ms:g} ms with gaps of at least "
                f"{self.min_gap_ms:g} ms need {needed / 1000:g} s, more than "
                f"stimulus_seconds ({self.stimulus_seconds:g}); raise stimulus_seconds or "
                "shorten the tones"
            )
        if self.stimuli > self.pool:
            raise ValueError(
                f"pool ({self.pool}) must be at least stimuli ({self.stimuli})"
            )
        return self


def tone_onsets(
    count: int, section: HearingScreeningConfig, rng: np.random.Generator
) -> np.ndarray:
    """Return random tone onsets in seconds that keep ``min_gap_ms`` between tones."""
    tone = section.tone_ms / 1000
    gap = section.min_gap_ms / 1000
    spare = section.stimulus_seconds - count * tone - (count + 1) * gap
    # Split the spare time into count + 1 random extra gaps: before each tone and after the last.
    cuts = np.sort(rng.uniform(0, spare, count))
    extra = np.diff(np.concatenate(([0.0], cuts, [spare])))
    index = np.arange(count)
    return (index + 1) * gap + index * tone + np.cumsum(extra[:count])


def hearing_stimulus(
    count: int, section: HearingScreeningConfig, rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Return one stimulus with ``count`` tones and the tones' onset, frequency and level."""
    frames = round(section.stimulus_seconds * rate)
    signal = np.zeros(frames)
    tones_info = []
    for onset in tone_onsets(count, section, rng):
        frequency = float(rng.choice(section.frequencies))
        level = section.calibration_level_dbfs + float(rng.choice(section.levels_db))
        samples = tones.tone(
            frequency, section.tone_ms / 1000, rate, level, section.ramp_ms
        )
        start = round(onset * rate)
        signal[start : start + samples.size] += samples
        tones_info.append(
            {"onset": float(onset), "frequency": frequency, "level_dbfs": level}
        )
    return signal, tones_info


class HearingScreeningStep(ScreeningStep):
    name = "hearing_screening"
    title = "Hearing screening"
    config_model = HearingScreeningConfig
    template = "caqe/screening/hearing.html"
    field_prefix = "count"
    item_label = "sound"

    def generate(
        self, section: Any, config: StudyConfig, folder: Path, rate: int
    ) -> None:
        self.check_frequencies(config, f"{self.name}.frequencies", section.frequencies)
        seed = [config.core.experiment.seed, 0x4845]
        rng = np.random.default_rng(seed)
        counts = list(range(section.min_tones, section.max_tones + 1))
        stimuli = []
        order = rng.permutation(counts)
        for index in range(section.pool):
            # Cycle through every count, in shuffled order, so the pool covers the range.
            if index > 0 and index % len(counts) == 0:
                order = rng.permutation(counts)
            count = int(order[index % len(counts)])
            signal, tone_list = hearing_stimulus(count, section, rate, rng)
            file = f"stimulus-{index:03d}.wav"
            tones.write_wav(folder / file, signal, rate)
            stimuli.append({"file": file, "tones": count, "tone_list": tone_list})
        tones.write_key(folder, {"stimuli": stimuli, "sample_rate": rate})

    def pick(
        self,
        config: StudyConfig,
        participant: Participant,
        attempt: int,
        key: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Return the key entries of the stimuli one attempt plays, in page order."""
        section = config.section(self.name)
        rng = participant_rng(config, participant, self.name, attempt)
        chosen = rng.sample(range(len(key["stimuli"])), section.stimuli)
        return [key["stimuli"][index] for index in chosen]

    def items(self, page: StepPage) -> list[dict[str, Any]]:
        folder = self.served_dir(page)
        key = tones.read_key(folder)
        return [
            {"url": page.audio_url(folder / entry["file"]), "expected": entry["tones"]}
            for entry in self.pick(page.config, page.participant, page.attempt, key)
        ]

    def read_answers(
        self, page: StepPage, items: list[dict[str, Any]], form: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, str]]:
        answers: list[Any] = []
        errors: dict[str, str] = {}
        for index in range(1, len(items) + 1):
            field = f"count_{index}"
            raw = form.get(field, "")
            number = parse_int(raw, 0, MAX_COUNT_ANSWER)
            if number is None:
                errors[field] = (
                    "Enter how many tones you heard, as a whole number."
                    if not str(raw).strip()
                    else f"{str(raw).strip()!r} is not a whole number from 0 to {MAX_COUNT_ANSWER}."
                )
            answers.append(number)
        return answers, errors

    def required_correct(self, section: Any, items: int) -> int:
        return section.min_correct or items
