"""What the listening screening steps share: config, files, attempts and verdicts.

A screening step generates its signals in ``prepare`` into a folder named
after the step and a digest of everything that shapes the signals, so a
changed config never serves stale files. The answer key is stored next to
the files (``key.json``) and read on the server only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from flask import render_template
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from caqe_core.config import StudyConfig
from caqe_core.extension import FlowStep, StepOutcome, StepPage
from caqe_core.models import Participant, ScreeningResult, utcnow
from caqe_core.screening import tones

logger = logging.getLogger(__name__)


class ScreeningConfig(BaseModel):
    """Settings every screening step has."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=2, ge=1, le=10)
    """How many times a listener may take the test; each attempt has new signals."""
    on_fail: Literal["end", "flag"] = "end"
    """After the last failed attempt: ``end`` the session (screened out), or
    ``flag`` the participant and let them continue."""
    flag: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,40}$")
    """Name of the quality flag set by ``on_fail: flag``; the step name by default."""
    valid_hours: float | None = Field(default=24, gt=0, le=24 * 365)
    """How long a pass counts for the same person (same external id, such as
    an MTurk worker id) in a later session; null never reuses a pass."""
    calibration_frequency: float = Field(default=1000, gt=0)
    """Frequency of the tone played to set a comfortable volume, in Hz."""
    calibration_level_dbfs: float = Field(default=-20, ge=-60, le=-3)
    """RMS level of the calibration tone in dBFS."""
    calibration_seconds: float = Field(default=2, gt=0, le=30)


def sample_rate(config: StudyConfig) -> int:
    """Return the study's sample rate, or 48 kHz when the config sets none."""
    return config.core.audio.sample_rate or tones.DEFAULT_SAMPLE_RATE


def participant_rng(
    config: StudyConfig, participant: Participant, step: str, attempt: int
) -> random.Random:
    """Return the RNG that picks one participant's signals for one attempt.

    Seeded by the study seed, the participant, the step and the attempt, so a
    reload shows the same signals and the server can score the answers.
    """
    seed = config.core.experiment.seed
    return random.Random(f"{seed}:{participant.public_id}:{step}:{attempt}")


class ScreeningStep(FlowStep):
    """Base of a listening test with a calibration tone, attempts and a verdict."""

    config_model: ClassVar[type[BaseModel]] = ScreeningConfig
    template: ClassVar[str]
    field_prefix: ClassVar[str]
    """Form fields are named ``<field_prefix>_<item number>``, from 1."""
    item_label: ClassVar[str] = "sound"
    play_once: ClassVar[bool] = False
    """True lets the page play each item only once."""

    # --- files ---------------------------------------------------------------

    def asset_dir(self, section: Any, config: StudyConfig, generated_dir: Path) -> Path:
        """Return the folder of this step's generated files for this config."""
        shape = {
            "section": section.model_dump(mode="json"),
            "rate": sample_rate(config),
            "seed": config.core.experiment.seed,
        }
        digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[
            :12
        ]
        return generated_dir / "screening" / f"{self.name}-{digest}"

    def served_dir(self, page: StepPage) -> Path:
        """Return the folder of the generated files for the study being served."""
        from caqe_core.study import generated_dir
        from caqe_core.web import state

        base = generated_dir(state().data_dir, page.config.name)
        return self.asset_dir(page.section, page.config, base)

    def prepare(self, section: Any, config: StudyConfig, generated_dir: Path) -> None:
        rate = sample_rate(config)
        problem = tones.check_frequency(
            section.calibration_frequency, rate, f"{self.name}.calibration_frequency"
        )
        if problem is not None:
            raise config.error(
                f"{self.name}.calibration_frequency", problem.split(": ", 1)[1]
            )
        folder = self.asset_dir(section, config, generated_dir)
        calibration = tones.tone(
            section.calibration_frequency,
            section.calibration_seconds,
            rate,
            section.calibration_level_dbfs,
            ramp_ms=20,
        )
        tones.write_wav(folder / "calibration.wav", calibration, rate)
        self.generate(section, config, folder, rate)
        logger.info("Generated the %s signals in %s", self.name, folder)

    def generate(
        self, section: Any, config: StudyConfig, folder: Path, rate: int
    ) -> None:
        """Write the step's signals and its ``key.json`` into ``folder``."""
        raise NotImplementedError

    def check_frequencies(
        self, config: StudyConfig, key: str, frequencies: list[float]
    ) -> None:
        """Raise ConfigError for a frequency the study's sample rate cannot carry."""
        rate = sample_rate(config)
        for index, frequency in enumerate(frequencies):
            where = f"{key}[{index}]"
            problem = tones.check_frequency(frequency, rate, where)
            if problem is not None:
                raise config.error(where, problem.split(": ", 1)[1])

    # --- pages -----------------------------------------------------------------

    def items(self, page: StepPage) -> list[dict[str, Any]]:
        """Return this attempt's items, each with at least ``url`` and its answer key."""
        raise NotImplementedError

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        folder = self.served_dir(page)
        earlier = self.earlier_pass(page)
        items = self.items(page)
        calibration_url = page.audio_url(folder / "calibration.wav")
        # The first request for a generated file registers it in the database,
        # and a GET request is not committed by the flow.
        page.session.commit()
        return render_template(
            self.template,
            page=page,
            step=self,
            section=page.section,
            calibration_url=calibration_url,
            items=[
                {"index": index + 1, "url": item["url"]}
                for index, item in enumerate(items)
            ],
            attempt_number=page.attempt + 1,
            earlier=earlier,
            # A new attempt has new sounds, so the old answers are not shown again.
            values={} if errors and "attempt" in errors else values or {},
            errors=errors or {},
        )

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        if form.get("reuse") == "yes":
            earlier = self.earlier_pass(page)
            if earlier is not None:
                return StepOutcome(
                    done=True,
                    passed=True,
                    data={"outcome": "reused", "reused_result_id": earlier.id},
                )
        items = self.items(page)
        answers, errors = self.read_answers(page, items, form)
        if errors:
            return StepOutcome(done=False, errors=errors)
        correct = [
            self.is_correct(item, answer) for item, answer in zip(items, answers)
        ]
        required = self.required_correct(page.section, len(items))
        passed = sum(correct) >= required
        data: dict[str, Any] = {
            "items": len(items),
            "correct": sum(correct),
            "required": required,
        }
        for index, (item, answer, right) in enumerate(
            zip(items, answers, correct), start=1
        ):
            data[f"item_{index}_expected"] = item["expected"]
            data[f"item_{index}_answer"] = answer
            data[f"item_{index}_correct"] = right
        return self.verdict(page, passed, data)

    def read_answers(
        self, page: StepPage, items: list[dict[str, Any]], form: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, str]]:
        """Parse one answer per item from the form; return answers and per-field errors."""
        raise NotImplementedError

    def is_correct(self, item: dict[str, Any], answer: Any) -> bool:
        return bool(answer == item["expected"])

    def required_correct(self, section: Any, items: int) -> int:
        """Return how many correct answers pass, for an attempt of ``items`` items."""
        return items

    def verdict(
        self, page: StepPage, passed: bool, data: dict[str, Any]
    ) -> StepOutcome:
        """Turn an attempt's result into the flow's next move."""
        section = page.section
        attempt = page.attempt + 1
        data["attempt"] = attempt
        if passed:
            data["outcome"] = "pass"
            return StepOutcome(done=True, passed=True, data=data)
        if attempt < section.attempts:
            data["outcome"] = "retry"
            left = section.attempts - attempt
            return StepOutcome(
                done=False,
                passed=False,
                data=data,
                errors={
                    "attempt": (
                        f"{data['correct']} of {data['items']} answers were right, and "
                        f"{data['required']} are needed. Please try again with new "
                        f"sounds ({left} {'try' if left == 1 else 'tries'} left)."
                    )
                },
            )
        if section.on_fail == "flag":
            data["outcome"] = "flag"
            flag = section.flag or self.name
            logger.info(
                "Participant %s failed %s and is flagged %r",
                page.participant.id,
                self.name,
                flag,
            )
            return StepOutcome(done=True, passed=False, data=data, flag=flag)
        data["outcome"] = "fail"
        logger.info(
            "Participant %s failed %s; ending the session",
            page.participant.id,
            self.name,
        )
        return StepOutcome(done=True, passed=False, data=data, end_session=True)

    def earlier_pass(self, page: StepPage) -> ScreeningResult | None:
        """Return this person's latest pass of this step that is still valid.

        A person is recognised by the recruiter's external id (an MTurk worker
        id, a lab code) in an earlier session of the same experiment.
        """
        section = page.section
        participant = page.participant
        if section.valid_hours is None or not participant.external_id:
            return None
        since = utcnow() - dt.timedelta(hours=section.valid_hours)
        rows = page.session.scalars(
            select(ScreeningResult)
            .join(Participant, ScreeningResult.participant_id == Participant.id)
            .where(
                Participant.experiment_id == participant.experiment_id,
                Participant.external_id == participant.external_id,
                Participant.id != participant.id,
                ScreeningResult.step == self.name,
                ScreeningResult.passed.is_(True),
            )
            .order_by(ScreeningResult.created_at.desc())
        ).all()
        for row in rows:
            created = row.created_at
            if created.tzinfo is None:
                # SQLite returns naive datetimes; the core stores UTC.
                created = created.replace(tzinfo=dt.UTC)
            if created >= since:
                return row
        return None


def parse_int(value: Any, low: int, high: int) -> int | None:
    """Return ``value`` as an int in [low, high], or None when it is not one."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text.lstrip("-").isdigit():
        return None
    number = int(text)
    return number if low <= number <= high else None
