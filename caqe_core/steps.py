"""The core's own flow steps: consent and the pre- and post-test surveys.

They register through the same hook as a plugin's screening steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from flask import render_template
from markupsafe import Markup
from sqlalchemy import select

from caqe_core.config import SurveyQuestion
from caqe_core.extension import FlowStep, StepOutcome, StepPage
from caqe_core.hookspecs import hookimpl
from caqe_core.markdown import render_markdown
from caqe_core.models import SurveyResponse
from caqe_core.screening.inclusion import failed_criteria

logger = logging.getLogger(__name__)


class ConsentStep(FlowStep):
    name = "consent"
    title = "Consent"
    one_time = True

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        consent = page.config.core.consent
        return render_template(
            "caqe/consent.html",
            page=page,
            text=Markup(render_markdown(consent.text)),
            agree_label=consent.agree_label,
            errors=errors or {},
        )

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        if form.get("agree") == "yes":
            return StepOutcome(done=True, passed=True, data={"agreed": True})
        if form.get("decline") == "yes":
            return StepOutcome(
                done=True, passed=False, data={"agreed": False}, end_session=True
            )
        return StepOutcome(
            done=False, errors={"agree": "Tick the box to agree, or decline."}
        )


def validate_answers(
    questions: list[SurveyQuestion],
    form: Mapping[str, Any],
    getlist: Callable[[str], list[str]],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check survey answers; return the cleaned answers and per-field errors."""
    answers: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for question in questions:
        raw = form.get(question.id, "")
        raw = raw.strip() if isinstance(raw, str) else raw
        if question.type == "multiple":
            values = list(
                dict.fromkeys(value for value in getlist(question.id) if value)
            )
            invalid = [value for value in values if value not in question.options]
            if invalid:
                errors[question.id] = f"{invalid[0]!r} is not one of the options."
            elif question.required and not values:
                errors[question.id] = "Choose at least one option."
            else:
                answers[question.id] = values
            continue
        if raw in ("", None):
            if question.required:
                errors[question.id] = "This answer is required."
            else:
                answers[question.id] = None
            continue
        if question.type in ("single", "likert"):
            if raw not in question.options:
                errors[question.id] = "Choose one of the options."
            else:
                answers[question.id] = raw
        elif question.type == "number":
            try:
                number = float(raw)
            except (TypeError, ValueError):
                errors[question.id] = f"{raw!r} is not a number."
                continue
            if not math.isfinite(number):
                errors[question.id] = "Enter a finite number."
            elif question.integer and not number.is_integer():
                errors[question.id] = f"Enter a whole number, not {raw}."
            elif question.min is not None and number < question.min:
                errors[question.id] = f"Enter a number of at least {question.min:g}."
            elif question.max is not None and number > question.max:
                errors[question.id] = f"Enter a number of at most {question.max:g}."
            else:
                answers[question.id] = int(number) if number.is_integer() else number
        else:
            if len(raw) > question.max_length:
                errors[question.id] = (
                    f"Keep the answer under {question.max_length} characters."
                )
            else:
                answers[question.id] = raw
    return answers, errors


class SurveyStep(FlowStep):
    one_time = True
    survey: str

    def questions(self, page: StepPage) -> list[SurveyQuestion]:
        return getattr(page.config.core.surveys, self.survey)

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        return render_template(
            "caqe/survey.html",
            page=page,
            title=self.title,
            questions=self.questions(page),
            values=values or {},
            errors=errors or {},
        )

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        getlist = getattr(
            form, "getlist", lambda key: [form[key]] if key in form else []
        )
        answers, errors = validate_answers(self.questions(page), form, getlist)
        if errors:
            return StepOutcome(done=False, errors=errors)
        existing = page.session.scalar(
            select(SurveyResponse).where(
                SurveyResponse.participant_id == page.participant.id,
                SurveyResponse.survey == self.survey,
            )
        )
        if existing is None:
            page.session.add(
                SurveyResponse(
                    participant_id=page.participant.id,
                    survey=self.survey,
                    answers=answers,
                )
            )
        else:
            existing.answers = answers
        return self.outcome(page, answers)

    def outcome(self, page: StepPage, answers: dict[str, Any]) -> StepOutcome:
        """Decide what follows valid answers; the base survey just moves on."""
        return StepOutcome(done=True)


class PreSurveyStep(SurveyStep):
    name = "pre_survey"
    title = "About you"
    survey = "pre"

    def outcome(self, page: StepPage, answers: dict[str, Any]) -> StepOutcome:
        """Apply ``surveys.inclusion``: a participant who fails a criterion is screened out."""
        criteria = page.config.core.surveys.inclusion
        if not criteria:
            return StepOutcome(done=True)
        failed = failed_criteria(criteria, answers)
        data = {
            "criteria": len(criteria),
            "failed_count": len(failed),
            "failed_criteria": "; ".join(failed),
        }
        if failed:
            logger.info(
                "Participant %s fails the inclusion criteria %s",
                page.participant.id,
                failed,
            )
        return StepOutcome(
            done=True, passed=not failed, data=data, end_session=bool(failed)
        )


class PostSurveyStep(SurveyStep):
    name = "post_survey"
    title = "A few last questions"
    survey = "post"


@hookimpl
def register_flow_steps(register: Callable[[FlowStep], None]) -> None:
    register(ConsentStep())
    register(PreSurveyStep())
    register(PostSurveyStep())
