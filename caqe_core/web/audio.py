"""Stimulus audio from opaque, per-participant URLs, with Range and caching."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, send_file, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core.audio import prepare_copy, read_audio
from caqe_core.models import Stimulus
from caqe_core.study import prepared_dir
from caqe_core.web import ParticipantKey, current_study, db_session, state

logger = logging.getLogger(__name__)

bp = Blueprint("audio", __name__)


def stimulus_url(participant_id: int, stimulus_id: int) -> str:
    token = state().audio_tokens.encode(participant_id, stimulus_id)
    return url_for("audio.serve", token=token)


def stimulus_urls(participant_id: int, stimulus_ids: list[int]) -> list[str]:
    """Return the participant's URL of each stimulus, as ``stimulus_url`` builds it.

    Flask builds only the first URL. The others reuse its prefix, because
    a token is URL-safe base64, which URL building leaves unquoted.
    """
    if not stimulus_ids:
        return []
    tokens = state().audio_tokens
    first_token = tokens.encode(participant_id, stimulus_ids[0])
    first_url = url_for("audio.serve", token=first_token)
    prefix = first_url[: len(first_url) - len(first_token)]
    return [first_url] + [
        prefix + tokens.encode(participant_id, stimulus_id)
        for stimulus_id in stimulus_ids[1:]
    ]


def asset_url(
    session: Session, participant: ParticipantKey, path: Path, role: str
) -> str:
    """URL of a generated file (a screening tone), registering it on first use."""
    path = Path(path).resolve()
    study = current_study()
    stimulus = session.scalar(
        select(Stimulus).where(
            Stimulus.experiment_id == study.experiment_id,
            Stimulus.condition_id.is_(None),
            Stimulus.source_path == str(path),
        )
    )
    if stimulus is None:
        data, rate = read_audio(path, str(path))
        served, digest = prepare_copy(data, rate, prepared_dir(state().data_dir))
        stimulus = Stimulus(
            experiment_id=study.experiment_id,
            condition_id=None,
            key=digest[:32],
            role=role,
            source_path=str(path),
            path=str(served),
            sha256=digest,
            sample_rate=rate,
            channels=data.shape[1],
            frames=data.shape[0],
        )
        session.add(stimulus)
        session.flush()
    return stimulus_url(participant.id, stimulus.id)


@bp.get("/a/<token>")
def serve(token: str) -> Any:
    decoded = state().audio_tokens.decode(token)
    if decoded is None:
        abort(404, "Unknown audio URL.")
    _participant_id, stimulus_id = decoded
    # The cache lives in the app, because two apps in one process (tests,
    # embedding) number the stimuli of their databases alike.
    paths = state().audio_paths
    path = paths.get(stimulus_id)
    if path is None:
        row = (
            db_session()
            .execute(
                select(Stimulus.path, Stimulus.experiment_id).where(
                    Stimulus.id == stimulus_id
                )
            )
            .first()
        )
        if row is None or row.experiment_id != current_study().experiment_id:
            abort(404, "Unknown audio URL.")
        path = Path(row.path)
        paths[stimulus_id] = path
    if not path.exists():
        logger.error(
            "Prepared audio file of stimulus %s is missing: %s", stimulus_id, path
        )
        abort(404, "The audio file is missing on the server.")
    mimetype = "audio/flac" if path.suffix == ".flac" else "audio/wav"
    response = send_file(
        path, mimetype=mimetype, conditional=True, etag=True, max_age=86400
    )
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"
    response.headers.pop("Content-Disposition", None)
    return response
