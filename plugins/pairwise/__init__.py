"""CAQE's built-in pairwise plugin.

The pairwise-comparison test type: a listener hears two stimuli, A and B,
and a reference where configured, and chooses which is better on a stated
quality. Analysis fits Bradley–Terry and Thurstone Case V scores and
measures each participant's consistency, which recruiters can read through
the core's ``participant_consistency`` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint

from caqe_core import TestType, hookimpl

from .plugin import PairwiseTestType

__version__ = "0.1.0"

bp = Blueprint(
    "pairwise",
    __name__,
    static_folder="static",
    static_url_path="/pairwise-static",
    template_folder="templates",
)


@hookimpl
def register_test_types(register: Callable[[TestType], None]) -> None:
    register(PairwiseTestType())


@hookimpl
def register_routes(app: Any) -> None:
    app.register_blueprint(bp)


@hookimpl
def report_sections(study: Any, data: Any) -> list[Any] | None:
    if study.config.core.test_type != PairwiseTestType.name:
        return None
    from .report import sections_for_study

    return sections_for_study(study, data)


@hookimpl
def ratings_frame(study: Any, trials: list[Any]) -> Any | None:
    if study.config.core.test_type != PairwiseTestType.name:
        return None
    from .judgements import judgement_frame

    return judgement_frame(trials)


@hookimpl
def participant_consistency(study: Any, session: Any) -> dict[int, float] | None:
    if study.config.core.test_type != PairwiseTestType.name:
        return None
    from .stored import participant_consistency as consistency_of

    return consistency_of(study, session)
