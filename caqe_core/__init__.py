"""CAQE: listening tests in the browser.

The public API for plugins: subclass ``TestType``, ``Recruiter`` or
``FlowStep``, implement hooks with ``hookimpl``, and register the module in
the ``caqe`` entry-point group.
"""

__version__ = "0.1.0"

from caqe_core.extension import (
    CompletionPage,
    ConditionSpec,
    ConditionView,
    FlowStep,
    PrepareContext,
    Recruiter,
    ReportSection,
    ResponseError,
    StepOutcome,
    StepPage,
    StimulusSpec,
    StimulusView,
    StudyDefinitionError,
    TestType,
    TrialPage,
)
from caqe_core.hookspecs import hookimpl

__all__ = [
    "CompletionPage",
    "ConditionSpec",
    "ConditionView",
    "FlowStep",
    "PrepareContext",
    "Recruiter",
    "ReportSection",
    "ResponseError",
    "StepOutcome",
    "StepPage",
    "StimulusSpec",
    "StimulusView",
    "StudyDefinitionError",
    "TestType",
    "TrialPage",
    "__version__",
    "hookimpl",
]
