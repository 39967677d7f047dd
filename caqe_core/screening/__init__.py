"""Listener screening and quality-control steps.

The steps register through the same hook as a third-party plugin's steps.
They are imported when the registry is built, not when this package is
imported, so ``caqe_core.config`` can use ``screening.inclusion`` without
loading Flask views or numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caqe_core.extension import FlowStep
from caqe_core.hookspecs import hookimpl


@hookimpl
def register_flow_steps(register: Callable[[FlowStep], None]) -> None:
    from caqe_core.screening.gold import GoldStep
    from caqe_core.screening.headphone import HeadphoneCheckStep
    from caqe_core.screening.hearing import HearingScreeningStep
    from caqe_core.screening.hearing_response import HearingResponseStep

    register(HearingScreeningStep())
    register(HeadphoneCheckStep())
    register(GoldStep())
    register(HearingResponseStep())


@hookimpl
def register_routes(app: Any) -> None:
    from caqe_core.screening import gold

    gold.register(app)
