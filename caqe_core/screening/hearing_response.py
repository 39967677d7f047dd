"""In-situ hearing response estimate by the method of adjustment.

Placed after the trials, the step plays a pulsed tone at each configured
frequency, and the listener lowers or raises its level in ``step_db`` steps
until the tone is just audible, then confirms. Each frequency is measured
``runs`` times from different starting levels, in a seeded random order.
The estimate per frequency is the mean of its runs, in dBFS of the tone's
RMS at the listener's own volume setting. It is not a threshold in dB HL:
it measures the listener's hearing through their device as set up for the
study, which is what the ratings were made with.

The files are written at ``reference_level_dbfs``; the page attenuates them
with a Web Audio GainNode in floating point, so levels far below the 16-bit
noise floor of the served copy remain exact.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flask import render_template
from pydantic import BaseModel, ConfigDict, Field, model_validator

from caqe_core.config import StudyConfig
from caqe_core.extension import FlowStep, StepOutcome, StepPage
from caqe_core.screening import tones
from caqe_core.screening.base import sample_rate

logger = logging.getLogger(__name__)


class HearingResponseConfig(BaseModel):
    """The ``hearing_response`` config section."""

    model_config = ConfigDict(extra="forbid")

    frequencies: list[float] = Field(
        default_factory=lambda: [250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0],
        min_length=1,
    )
    runs: int = Field(default=2, ge=1, le=5)
    """Measurements per frequency."""
    reference_level_dbfs: float = Field(default=-20, ge=-40, le=-3)
    """RMS level of the tone files; the page attenuates from here."""
    floor_db: float = Field(default=-80, ge=-120, le=-20)
    """Lowest attenuation the listener can reach, in dB below the reference."""
    start_db: list[float] = Field(
        default_factory=lambda: [-10.0, -20.0, -30.0], min_length=1
    )
    """Starting attenuations; each run starts at one of them at random."""
    step_db: float = Field(default=2, gt=0, le=10)
    pulse_ms: float = Field(default=250, ge=50, le=2000)
    """Length of each tone pulse and of the pause after it."""

    @model_validator(mode="after")
    def _check_levels(self) -> HearingResponseConfig:
        outside = [level for level in self.start_db if not self.floor_db <= level <= 0]
        if outside:
            raise ValueError(
                f"start_db {outside} lie outside floor_db ({self.floor_db:g}) to 0 dB; "
                "choose starting attenuations in that range"
            )
        return self


def frequency_label(frequency: float) -> str:
    return f"{frequency:g}".replace(".", "_")


class HearingResponseStep(FlowStep):
    name = "hearing_response"
    title = "Hearing check at the end"
    config_model = HearingResponseConfig

    def asset_dir(self, config: StudyConfig, generated_dir: Path) -> Path:
        return generated_dir / "screening" / self.name

    def prepare(self, section: Any, config: StudyConfig, generated_dir: Path) -> None:
        rate = sample_rate(config)
        folder = self.asset_dir(config, generated_dir)
        for index, frequency in enumerate(section.frequencies):
            problem = tones.check_frequency(
                frequency, rate, f"{self.name}.frequencies[{index}]"
            )
            if problem is not None:
                raise config.error(
                    f"{self.name}.frequencies[{index}]", problem.split(": ", 1)[1]
                )
            pulse = tones.tone(
                frequency,
                section.pulse_ms / 1000,
                rate,
                section.reference_level_dbfs,
                10,
            )
            pause = np.zeros(round(section.pulse_ms / 1000 * rate))
            tones.write_wav(
                folder / f"tone-{frequency_label(frequency)}.wav",
                np.concatenate([pulse, pause]),
                rate,
            )

    def measurements(self, page: StepPage) -> list[dict[str, Any]]:
        """Return the runs in page order, each with its frequency and starting attenuation."""
        section = page.section
        rng = random.Random(
            f"{page.config.core.experiment.seed}:{page.participant.public_id}:{self.name}"
        )
        runs = [
            {
                "frequency": frequency,
                "run": run,
                "start_db": rng.choice(section.start_db),
            }
            for frequency in section.frequencies
            for run in range(1, section.runs + 1)
        ]
        rng.shuffle(runs)
        for run in runs:
            run["field"] = f"level_{frequency_label(run['frequency'])}_{run['run']}"
        return runs

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        from caqe_core.study import generated_dir
        from caqe_core.web import state

        folder = self.asset_dir(
            page.config, generated_dir(state().data_dir, page.config.name)
        )
        runs = self.measurements(page)
        for run in runs:
            run["url"] = page.audio_url(
                folder / f"tone-{frequency_label(run['frequency'])}.wav"
            )
        # The first request for a generated file registers it; this GET is not otherwise committed.
        page.session.commit()
        return render_template(
            "caqe/screening/hearing_response.html",
            page=page,
            step=self,
            section=page.section,
            runs=runs,
            errors=errors or {},
        )

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        section = page.section
        levels: dict[float, list[float]] = {}
        errors: dict[str, str] = {}
        data: dict[str, Any] = {"reference_level_dbfs": section.reference_level_dbfs}
        floor_reached = 0
        for run in self.measurements(page):
            raw = form.get(run["field"], "")
            try:
                attenuation = float(raw)
            except (TypeError, ValueError):
                errors[run["field"]] = (
                    f"Missing or invalid level {raw!r}: adjust the tone and confirm."
                )
                continue
            if not np.isfinite(attenuation) or not section.floor_db <= attenuation <= 0:
                errors[run["field"]] = (
                    f"Level {attenuation:g} dB is outside {section.floor_db:g} to 0 dB."
                )
                continue
            level = section.reference_level_dbfs + attenuation
            floor_reached += attenuation <= section.floor_db
            levels.setdefault(run["frequency"], []).append(level)
            data[
                f"threshold_{frequency_label(run['frequency'])}hz_run{run['run']}_dbfs"
            ] = level
        if errors:
            logger.info(
                "Rejected hearing response levels of participant %s: %s",
                page.participant.id,
                errors,
            )
            return StepOutcome(done=False, errors=errors)
        for frequency, values in levels.items():
            data[f"threshold_{frequency_label(frequency)}hz_dbfs"] = float(
                np.mean(values)
            )
        data["floor_reached"] = floor_reached
        return StepOutcome(done=True, data=data)
