"""Gold (trapping) items with a known answer, shown between a test type's trials.

As in ITU-T P.808's trapping questions, a listener who answers a gold item
wrongly was not listening, so their ratings are doubtful. The ``gold`` step
works with every test type and needs no support from it:

* listed in ``flow.steps`` before ``trials``, the step shows a short notice
  that some pages check attention;
* during the trials, a ``before_request`` handler (added through the
  ``register_routes`` hook) serves a gold page instead of the next trial
  page when the participant's schedule says so. The schedule draws
  ``round(rate * assignment.conditions_per_participant)`` positions (at
  least one) among the trials with the participant's seeded RNG; a gold
  item at position k follows the k-th completed trial.
* Each answer is stored as a ``ScreeningResult`` of step ``gold``. ``passed``
  stays empty until the verdict is known: False as soon as more than
  ``max_errors`` answers are wrong, True with the last item otherwise. A
  failure flags the participant (``on_fail: flag``, the default) or ends the
  session (``on_fail: end``).

Gold items come from the config (``items``: an audio file, a question, the
options and the right answer, such as a recording that says "select Poor")
or, without items, are generated: a few beeps to count.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flask import Blueprint, Flask, abort, redirect, render_template, request, url_for
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from caqe_core.config import StudyConfig
from caqe_core.extension import FlowStep, StepOutcome, StepPage
from caqe_core.markdown import render_markdown
from caqe_core.models import Participant, ScreeningResult, Trial
from caqe_core.screening import tones
from caqe_core.screening.base import sample_rate

logger = logging.getLogger(__name__)

NAME = "gold"

bp = Blueprint("caqe_gold", __name__)


class GoldItem(BaseModel):
    """One configured gold item."""

    model_config = ConfigDict(extra="forbid")

    audio: str
    """Audio file, relative to audio.root."""
    question: str
    options: list[str] = Field(min_length=2)
    answer: str
    """The right option."""

    @model_validator(mode="after")
    def _answer_is_option(self) -> GoldItem:
        if self.answer not in self.options:
            raise ValueError(
                f"answer {self.answer!r} is not one of the options {self.options}; "
                "make it one of them"
            )
        return self


class GoldConfig(BaseModel):
    """The ``gold`` config section."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(default=0.25, gt=0, le=1)
    """Gold items per trial; at least one gold item is shown."""
    max_errors: int = Field(default=0, ge=0)
    """Wrong answers allowed before the participant fails."""
    on_fail: Literal["flag", "end"] = "flag"
    """``flag`` the participant and let them finish, or ``end`` the session."""
    flag: str = Field(default="gold", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    notice: str = (
        "Some pages of this test check that you are listening closely. They ask "
        "a simple question about a short sound. Please answer them carefully."
    )
    """Markdown shown before the trials."""
    items: list[GoldItem] = Field(default_factory=list)
    """Gold items from the config; without them, beep-counting items are generated."""
    beep_level_dbfs: float = Field(default=-20, ge=-60, le=-3)


def schedule(config: StudyConfig, participant: Participant) -> list[int]:
    """Return after how many completed trials each gold item comes, in order."""
    section = config.section(NAME)
    trials = config.core.assignment.conditions_per_participant
    count = min(trials, max(1, round(section.rate * trials)))
    rng = random.Random(f"{config.core.experiment.seed}:{participant.public_id}:{NAME}")
    return sorted(rng.sample(range(1, trials + 1), count))


def pick_items(
    config: StudyConfig, participant: Participant, key: dict[str, Any]
) -> list[dict[str, Any]]:
    """Return the key entries of the participant's gold items, in schedule order."""
    count = len(schedule(config, participant))
    rng = random.Random(
        f"{config.core.experiment.seed}:{participant.public_id}:{NAME}:items"
    )
    pool = list(range(len(key["items"])))
    chosen: list[int] = []
    while len(chosen) < count:
        rng.shuffle(pool)
        chosen.extend(pool)
    return [key["items"][index] for index in chosen[:count]]


def beeps(count: int, rate: int, level_dbfs: float) -> np.ndarray:
    """Return 2.5 s with ``count`` 1 kHz beeps of 150 ms, 350 ms apart."""
    signal = np.zeros(round(2.5 * rate))
    beep = tones.tone(1000.0, 0.15, rate, level_dbfs, ramp_ms=10)
    for index in range(count):
        start = round((0.25 + 0.5 * index) * rate)
        signal[start : start + beep.size] = beep
    return signal


class GoldStep(FlowStep):
    name = NAME
    title = "Attention checks"
    config_model = GoldConfig

    def asset_dir(self, config: StudyConfig, generated_dir: Path) -> Path:
        return generated_dir / "screening" / NAME

    def prepare(self, section: Any, config: StudyConfig, generated_dir: Path) -> None:
        steps = config.core.flow.steps
        if steps.index(NAME) > steps.index("trials"):
            raise config.error(
                "flow.steps",
                "lists 'gold' after 'trials', but gold items are shown between the "
                "trials; move 'gold' before 'trials'",
            )
        folder = self.asset_dir(config, generated_dir)
        items: list[dict[str, Any]] = []
        for index, item in enumerate(section.items):
            path = config.resolve_audio(item.audio)
            if not path.is_file():
                raise config.error(
                    f"gold.items[{index}].audio",
                    f"audio file not found: {path}. Check the path and audio.root",
                )
            items.append(
                {
                    "source": "config",
                    "item": f"items[{index}]",
                    "path": str(path),
                    "question": item.question,
                    "options": item.options,
                    "answer": item.answer,
                }
            )
        if not items:
            rate = sample_rate(config)
            for count in range(1, 5):
                file = folder / f"beeps-{count}.wav"
                tones.write_wav(file, beeps(count, rate, section.beep_level_dbfs), rate)
                items.append(
                    {
                        "source": "generated",
                        "item": f"beeps-{count}",
                        "path": str(file),
                        "question": "How many beeps do you hear?",
                        "options": ["1", "2", "3", "4"],
                        "answer": str(count),
                    }
                )
        tones.write_key(folder, {"items": items})

    def render(
        self,
        page: StepPage,
        values: Any = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        return render_template(
            "caqe/screening/gold_notice.html",
            page=page,
            step=self,
            notice=Markup(render_markdown(page.section.notice)),
        )

    def submit(self, page: StepPage, form: Any) -> StepOutcome:
        return StepOutcome(done=True)


# --- gold pages between the trials ---------------------------------------------


def _served_key(config: StudyConfig) -> dict[str, Any]:
    from caqe_core.study import generated_dir
    from caqe_core.web import state

    folder = GoldStep().asset_dir(config, generated_dir(state().data_dir, config.name))
    return tones.read_key(folder)


def _answered(session: Session, participant: Participant) -> list[ScreeningResult]:
    return list(
        session.scalars(
            select(ScreeningResult)
            .where(
                ScreeningResult.participant_id == participant.id,
                ScreeningResult.step == NAME,
            )
            .order_by(ScreeningResult.attempt)
        ).all()
    )


def due_item(
    session: Session, config: StudyConfig, participant: Participant
) -> int | None:
    """Return the index of the gold item the participant must answer now, or None."""
    if participant.step != "trials" or participant.status != "active":
        return None
    positions = schedule(config, participant)
    answered = len(_answered(session, participant))
    if answered >= len(positions):
        return None
    completed = session.scalar(
        select(func.count())
        .select_from(Trial)
        .where(Trial.participant_id == participant.id)
    )
    return answered if (completed or 0) >= positions[answered] else None


def _render_item(
    participant: Participant, token: str, index: int, error: str | None = None
) -> str:
    from caqe_core.web import csrf_token, current_study, db_session
    from caqe_core.web.audio import asset_url

    study = current_study()
    session = db_session()
    key = _served_key(study.config)
    entry = pick_items(study.config, participant, key)[index]
    url = asset_url(session, participant, Path(entry["path"]), NAME)
    # The first request for a file registers it; this GET is not otherwise committed.
    session.commit()
    return render_template(
        "caqe/screening/gold.html",
        entry=entry,
        url=url,
        submit_url=url_for("caqe_gold.answer", token=token),
        csrf=csrf_token(participant.public_id),
        error=error,
    )


def _participant(token: str) -> Participant | None:
    from caqe_core.web import current_study, db_session, decode_participant_token

    public_id = decode_participant_token(token)
    if public_id is None:
        return None
    return db_session().scalar(
        select(Participant).where(
            Participant.public_id == public_id,
            Participant.experiment_id == current_study().experiment_id,
        )
    )


def interpose_gold_page() -> Any:
    """Serve a due gold item in place of the participant's next trial page."""
    from caqe_core.web import current_study, db_session

    if request.method != "GET" or request.endpoint != "participant.page":
        return None
    config = current_study().config
    if NAME not in config.core.flow.steps:
        return None
    token = (request.view_args or {}).get("token", "")
    participant = _participant(token)
    if participant is None:
        return None
    index = due_item(db_session(), config, participant)
    if index is None:
        return None
    return _render_item(participant, token, index)


@bp.post("/p/<token>/gold")
def answer(token: str) -> Any:
    """Store the answer to the due gold item and go on with the trials."""
    from caqe_core.flow import end_session, notify_finished
    from caqe_core.web import check_csrf, current_study, db_session, state
    from caqe_core.web.participant import participant_url

    participant = _participant(token)
    if participant is None:
        abort(
            404, "This link is not valid. Open the study from the link you were given."
        )
    if not check_csrf(participant.public_id, request.form.get("csrf_token")):
        abort(
            403,
            "The form has expired or was not sent by this study's page. Reload the page.",
        )
    study = current_study()
    session = db_session()
    index = due_item(session, study.config, participant)
    if index is None:
        # A second submission, or a form from an older page: show the current page.
        return redirect(participant_url(participant), code=303)

    entry = pick_items(study.config, participant, _served_key(study.config))[index]
    choice = request.form.get("answer", "")
    if choice not in entry["options"]:
        return _render_item(
            participant, token, index, "Choose one of the answers."
        ), 422

    section = study.config.section(NAME)
    earlier = _answered(session, participant)
    correct = choice == entry["answer"]
    errors = sum(1 for row in earlier if not row.data.get("correct")) + (not correct)
    total = len(schedule(study.config, participant))
    failed = errors > section.max_errors
    last = index + 1 == total
    # The verdict is known once too many answers are wrong, or with the last item.
    passed: bool | None = None
    outcome = "pending"
    if failed:
        passed, outcome = False, "fail"
    elif last:
        passed, outcome = True, "pass"
    session.add(
        ScreeningResult(
            participant_id=participant.id,
            step=NAME,
            attempt=index + 1,
            passed=passed,
            data={
                "item": index + 1,
                "items_total": total,
                "source": entry["source"],
                "item_key": entry["item"],
                "expected": entry["answer"],
                "answer": choice,
                "correct": correct,
                "errors_so_far": errors,
                "outcome": outcome,
            },
        )
    )
    ended = False
    if failed:
        if section.on_fail == "end":
            end_session(participant, "screened_out")
            ended = True
            logger.info(
                "Participant %s failed the gold items; ending the session",
                participant.id,
            )
        elif section.flag not in participant.flags:
            participant.flags = [*participant.flags, section.flag]
            logger.info(
                "Participant %s failed the gold items and is flagged %r",
                participant.id,
                section.flag,
            )
    session.commit()
    if ended:
        notify_finished(state().session_factory, study, participant.id)
    return redirect(participant_url(participant), code=303)


def register(app: Flask) -> None:
    """Add the gold pages to the app."""
    app.register_blueprint(bp)
    app.before_request(interpose_gold_page)
