"""Services the core offers plugins on top of the hooks."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.orm import Session


class ServiceError(ValueError):
    """A plugin returned a value the service cannot use."""


def participant_consistency(study: Any, session: Session) -> dict[int, float] | None:
    """Return every scored participant's consistency in [0, 1], by participant id.

    Merges what the ``participant_consistency`` hook implementations return,
    so a recruiter can pay a consistency bonus without importing the test
    type that scores it. Returns None when no plugin scores the study's test
    type. Raises ``ServiceError`` naming the value when a plugin returns
    something other than a number from 0 to 1, or two plugins disagree.
    """
    results = study.registry.hook.participant_consistency(study=study, session=session)
    if not results:
        return None
    merged: dict[int, float] = {}
    for result in results:
        for participant_id, value in result.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ServiceError(
                    f"A plugin returned consistency {value!r} for participant "
                    f"{participant_id}; expected a number from 0 to 1."
                )
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise ServiceError(
                    f"A plugin returned consistency {value!r} for participant "
                    f"{participant_id}, outside 0 to 1."
                )
            if participant_id in merged and merged[participant_id] != value:
                raise ServiceError(
                    "Two plugins returned different consistencies for participant "
                    f"{participant_id}: {merged[participant_id]!r} and {value!r}."
                )
            merged[int(participant_id)] = float(value)
    return merged
