"""Opaque audio URLs for the low- and high-quality examples of the training page."""

from __future__ import annotations

import logging
from typing import Any

from flask import abort, request
from sqlalchemy import select

from caqe_core.models import Participant
from caqe_core.web import current_study, db_session, decode_participant_token
from caqe_core.web.audio import asset_url

from .config import MushraConfig

logger = logging.getLogger(__name__)


def training_examples(section: MushraConfig) -> list[dict[str, Any]]:
    """Return ``{id, kind, label, url}`` for each configured training example.

    Called while rendering the training page at ``/p/<token>/``: the token
    in the URL names the participant, whose opaque URLs the examples get.
    """
    lists = (
        ("low", "Low-quality example", section.training.low_quality_examples),
        ("high", "High-quality example", section.training.high_quality_examples),
    )
    if not any(paths for _, _, paths in lists):
        return []

    participant = _request_participant()
    session = db_session()
    study = current_study()
    examples = []
    for kind, label, paths in lists:
        for number, value in enumerate(paths, start=1):
            path = study.config.resolve_audio(value)
            examples.append(
                {
                    "id": f"{kind}{number}",
                    "kind": kind,
                    "label": f"{label} {number}",
                    "url": asset_url(
                        session, participant, path, role=f"training_{kind}"
                    ),
                }
            )
    # asset_url adds a stimulus row the first time it makes a URL for a file.
    session.commit()
    return examples


def _request_participant() -> Participant:
    token = (request.view_args or {}).get("token")
    public_id = decode_participant_token(token) if token else None
    participant = None
    if public_id is not None:
        participant = db_session().scalar(
            select(Participant).where(
                Participant.public_id == public_id,
                Participant.experiment_id == current_study().experiment_id,
            )
        )
    if participant is None:
        logger.error(
            "Training page rendered without a participant token in %s", request.path
        )
        abort(
            404, "This link is not valid. Open the study from the link you were given."
        )
    return participant
