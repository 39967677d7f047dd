"""A minimal test type written the way a third party would write one.

Each condition is one item: the listener rates every stimulus on a 0–10
scale. It imports only caqe_core's public API, which proves that the core
serves a test type it knows nothing about.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from markupsafe import escape
from pydantic import BaseModel, ConfigDict, Field

from caqe_core import (
    ConditionSpec,
    ConditionView,
    PrepareContext,
    ResponseError,
    StimulusSpec,
    StudyDefinitionError,
    TestType,
    TrialPage,
    hookimpl,
)

__version__ = "9.9.9"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    stimuli: dict[str, str]


class ScaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = "How good is each sound?"
    items: list[Item] = Field(min_length=1)


class ScaleTestType(TestType):
    name = "scale"
    title = "Rate each stimulus from 0 to 10"
    config_model = ScaleConfig

    def build_conditions(self, context: PrepareContext) -> list[ConditionSpec]:
        specs = []
        for index, item in enumerate(context.section.items):
            if len(item.stimuli) < 2:
                raise StudyDefinitionError(
                    f"scale.items[{index}].stimuli", "needs at least two stimuli."
                )
            specs.append(
                ConditionSpec(
                    key=item.name,
                    item=item.name,
                    stimuli=[
                        StimulusSpec(
                            key=key,
                            role="system",
                            path=context.resolve_audio(path),
                            config_key=f"scale.items[{index}].stimuli.{key}",
                        )
                        for key, path in item.stimuli.items()
                    ],
                    data={"question": context.section.question},
                    config_key=f"scale.items[{index}]",
                )
            )
        return specs

    def plan_trial(
        self, condition: ConditionView, rng: random.Random, participant_sequence: int
    ) -> dict[str, Any]:
        keys = list(condition.stimuli)
        rng.shuffle(keys)
        return {
            "signals": [
                {"id": f"s{index + 1}", "stimulus": key}
                for index, key in enumerate(keys)
            ]
        }

    def render_trial(self, page: TrialPage) -> str:
        signals = [
            {"id": signal["id"], "url": page.signal_urls[signal["id"]]}
            for signal in page.plan["signals"]
        ]
        return (
            "<!doctype html><html><body>"
            f"<h1 id='question'>{escape(page.condition.data['question'])}</h1>"
            f"<p id='position'>{page.position + 1} of {page.total}</p>"
            f"<script id='trial' type='application/json'>{escape(json.dumps({'signals': signals, 'submit': page.submit_url, 'csrf': page.csrf_token}))}</script>"
            "</body></html>"
        )

    def validate_response(self, page: TrialPage, response: Any) -> dict[str, Any]:
        if not isinstance(response, dict):
            raise ResponseError("response", "must be an object.")
        ratings = response.get("ratings")
        if not isinstance(ratings, dict):
            raise ResponseError(
                "response.ratings", "must be an object of ratings by signal id."
            )
        expected = {signal["id"] for signal in page.plan["signals"]}
        for label in ratings:
            if label not in expected:
                raise ResponseError(
                    f"response.ratings.{label}", "is not a signal of this trial."
                )
        for label in sorted(expected):
            value = ratings.get(label)
            if label not in ratings:
                raise ResponseError(f"response.ratings.{label}", "is missing.")
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 10
            ):
                raise ResponseError(
                    f"response.ratings.{label}", "must be a number from 0 to 10."
                )
        return {"ratings": {label: float(ratings[label]) for label in sorted(expected)}}

    def export_rows(self, trial: Mapping[str, Any]) -> list[dict[str, Any]]:
        labels = {
            signal["id"]: signal["stimulus"] for signal in trial["plan"]["signals"]
        }
        return [
            {"system": labels[label], "value": value}
            for label, value in trial["response"]["ratings"].items()
        ]


@hookimpl
def register_test_types(register: Callable[[TestType], None]) -> None:
    register(ScaleTestType())
