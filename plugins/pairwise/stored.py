"""Judgements read back from the database, and each participant's consistency."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core.models import Participant, Reservation, Trial

from . import scoring
from .judgements import judgement_frame

logger = logging.getLogger(__name__)


def stored_judgements(study: Any, session: Session) -> pd.DataFrame:
    """Return every stored judgement of the study in the format of ``scoring``.

    The ``participant`` column contains the database id of the participant
    (``Participant.id``), not the public id of the exports.
    """
    if not study.conditions:
        study.load_conditions(session)
    query = (
        select(
            Trial.participant_id, Trial.condition_id, Trial.response, Reservation.plan
        )
        .join(Reservation, Trial.reservation_id == Reservation.id)
        .join(Participant, Trial.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(Trial.participant_id, Reservation.position)
    )
    participants: list[int] = []
    trials: list[dict[str, Any]] = []
    for participant_id, condition_id, response, plan in session.execute(query):
        participants.append(participant_id)
        trials.append(
            {
                "condition": study.conditions[condition_id],
                "plan": plan,
                "response": response,
            }
        )
    columns = [*scoring.JUDGEMENT_COLUMNS, "order_shown"]
    if not trials:
        return pd.DataFrame({column: [] for column in columns})
    judgements = judgement_frame(trials)
    owners = np.asarray(participants, dtype=np.int64)[judgements.index.to_numpy()]
    judgements.insert(0, "participant", owners)
    return judgements.reset_index(drop=True)


def participant_consistency(study: Any, session: Session) -> dict[int, float]:
    """Return each participant's consistency in [0, 1], by participant id.

    The value is the ``consistency`` column of ``scoring.consistency``. For
    a participant who judged repeats, it is the share of repeated pairs with
    the same choice both times. Otherwise it is the share of their judged
    triads that are not circular. Participants with neither (no repeats and
    no triad of three strict preferences) are left out, because there is
    nothing to measure.
    """
    judgements = stored_judgements(study, session)
    if judgements.empty:
        return {}
    measures = scoring.consistency(judgements)
    values = measures["consistency"].dropna()
    left_out = len(measures) - len(values)
    if left_out:
        logger.info(
            "No consistency measure for %d of %d participants of %s: they judged "
            "no repeats and no complete triad",
            left_out,
            len(measures),
            study.name,
        )
    return {int(participant): float(value) for participant, value in values.items()}
