"""SQLAlchemy models: experiments, conditions, participants, trials, payments."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        dt.datetime: DateTime(timezone=True),
    }


class Experiment(Base):
    """A study: one config, its conditions and its participants."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    test_type: Mapped[str] = mapped_column(String(64))
    recruiter: Mapped[str] = mapped_column(String(64))
    config_hash: Mapped[str] = mapped_column(String(64))
    config_text: Mapped[str] = mapped_column(Text)
    """The YAML as written, kept so results need only the database."""
    config_path: Mapped[str] = mapped_column(Text)
    config_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The validated config with defaults filled in."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    prepared_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lock_counter: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped at the start of each assignment transaction to serialise them."""
    participant_counter: Mapped[int] = mapped_column(Integer, default=0)

    conditions: Mapped[list[Condition]] = relationship(
        back_populates="experiment", order_by="Condition.position"
    )


class Condition(Base):
    """One assignable unit, such as a MUSHRA page or a set of pairs."""

    __tablename__ = "conditions"
    __table_args__ = (UniqueConstraint("experiment_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(String(200))
    item: Mapped[str] = mapped_column(String(200))
    scale: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    load: Mapped[int] = mapped_column(Integer, default=0)
    """Completed plus actively reserved trials, kept by the assignment
    transactions so that assigning reads one row per condition."""

    experiment: Mapped[Experiment] = relationship(back_populates="conditions")
    stimuli: Mapped[list[Stimulus]] = relationship(
        back_populates="condition", order_by="Stimulus.position"
    )


class Stimulus(Base):
    """A prepared audio file; ``condition_id`` is None for step audio (tones)."""

    __tablename__ = "stimuli"
    __table_args__ = (UniqueConstraint("experiment_id", "condition_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    condition_id: Mapped[int | None] = mapped_column(
        ForeignKey("conditions.id", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(64))
    source_path: Mapped[str] = mapped_column(Text)
    """The file the config named, or the generated file."""
    path: Mapped[str] = mapped_column(Text)
    """The prepared copy that is served: FLAC without metadata, named by hash."""
    sha256: Mapped[str] = mapped_column(String(64))
    sample_rate: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)

    condition: Mapped[Condition | None] = relationship(back_populates="stimuli")


class Participant(Base):
    """One session of a listener; a returning MTurk worker gets a new row."""

    __tablename__ = "participants"
    __table_args__ = (
        Index("ix_participants_external", "experiment_id", "external_id"),
        Index(
            "ix_participants_idempotency_key",
            "experiment_id",
            "recruiter",
            "idempotency_key",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    public_id: Mapped[str] = mapped_column(String(64), unique=True)
    sequence: Mapped[int] = mapped_column(Integer)
    """Arrival order within the experiment, from 0; designs counterbalance on it."""
    recruiter: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(200))
    """The recruiter's id of the person, such as an MTurk worker id or a lab code."""
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    """The recruiter's key of the request that started the participant, such as
    an MTurk assignment id or the nonce of a lab start page. Unique per
    experiment and recruiter, so a repeated or concurrent start with the same
    key finds this participant."""
    external_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="active")
    """active, completed, screened_out or no_work."""
    step: Mapped[str] = mapped_column(String(64))
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()

    experiment: Mapped[Experiment] = relationship()
    reservations: Mapped[list[Reservation]] = relationship(
        back_populates="participant", order_by="Reservation.position"
    )


class Reservation(Base):
    """A condition held for one participant until it is completed or expires."""

    __tablename__ = "reservations"
    __table_args__ = (
        UniqueConstraint("participant_id", "condition_id"),
        Index("ix_reservations_condition_status", "condition_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(64), unique=True)
    participant_id: Mapped[int] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE")
    )
    condition_id: Mapped[int] = mapped_column(
        ForeignKey("conditions.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    """active, completed or expired."""
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    completed_at: Mapped[dt.datetime | None] = mapped_column()
    first_served_at: Mapped[dt.datetime | None] = mapped_column()

    participant: Mapped[Participant] = relationship(back_populates="reservations")
    condition: Mapped[Condition] = relationship()


class Trial(Base):
    """A stored trial response."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("participant_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    reservation_id: Mapped[int] = mapped_column(
        ForeignKey("reservations.id", ondelete="CASCADE"), unique=True
    )
    participant_id: Mapped[int] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE")
    )
    condition_id: Mapped[int] = mapped_column(
        ForeignKey("conditions.id", ondelete="CASCADE")
    )
    idempotency_key: Mapped[str] = mapped_column(String(100))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    acknowledgement: Mapped[dict[str, Any]] = mapped_column(JSON)
    time_on_page_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    reservation: Mapped[Reservation] = relationship()


class ListeningEvent(Base):
    """A play, stop, switch, loop or seek event reported by a trial page."""

    __tablename__ = "listening_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[int] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE")
    )
    sequence: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    time_ms: Mapped[float] = mapped_column(Float)
    position: Mapped[float | None] = mapped_column(Float)
    signal: Mapped[str | None] = mapped_column(String(64))
    """The page's label of the signal (for switch: the new one)."""
    stimulus_key: Mapped[str | None] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ScreeningResult(Base):
    """The outcome of one submission of a flow step (consent, screening, ...)."""

    __tablename__ = "screening_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SurveyResponse(Base):
    """A participant's answers to the pre- or post-test survey."""

    __tablename__ = "survey_responses"
    __table_args__ = (UniqueConstraint("participant_id", "survey"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE")
    )
    survey: Mapped[str] = mapped_column(String(32))
    answers: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RecruitmentJob(Base):
    """A unit of work posted to a recruiter, such as an MTurk HIT.

    The row is written with its request token before the recruiter is called,
    so a crash between the two can be resumed without losing track of a job.
    """

    __tablename__ = "recruitment_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    recruiter: Mapped[str] = mapped_column(String(64))
    request_token: Mapped[str] = mapped_column(String(64), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(32), default="pending")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Payment(Base):
    """A ledger row: one reward or bonus, written before the money is sent.

    ``purpose`` is unique per experiment, so a command that computes the same
    payment again finds the existing row instead of paying twice.
    ``request_token`` is sent to the payment service as its idempotency token.
    """

    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("experiment_id", "purpose"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    participant_id: Mapped[int | None] = mapped_column(
        ForeignKey("participants.id", ondelete="SET NULL")
    )
    recruiter: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(200))
    """The recruiter's id of the person paid, such as an MTurk worker id."""
    kind: Mapped[str] = mapped_column(String(32))
    """reward (approving an assignment) or bonus."""
    purpose: Mapped[str] = mapped_column(String(200))
    """Purpose of the payment, such as ``first_hit_bonus:A1B2C3``."""
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    request_token: Mapped[str] = mapped_column(String(64), unique=True)
    reference: Mapped[str | None] = mapped_column(String(200))
    """The recruiter's reference, such as the MTurk assignment id."""
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, paid or failed."""
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
