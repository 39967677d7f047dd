"""Synthetic studies written through the data layer, for results tests.

The helper prepares a real study of the test-only 'scale' test type, then
inserts participants, reservations, trials (validated by the test type),
listening events, screening results, survey answers, recruitment jobs and
payments with the SQLAlchemy models. It returns the generated ratings so a
test can recompute every statistic on its own.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, update
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.config import load_config
from caqe_core.db import make_engine, make_session_factory, upgrade
from caqe_core.extension import TrialPage
from caqe_core.models import (
    Experiment,
    ListeningEvent,
    Participant,
    Payment,
    RecruitmentJob,
    Reservation,
    ScreeningResult,
    SurveyResponse,
    Trial,
)
from caqe_core.plugins import Registry
from caqe_core.study import Study, prepare_study
from tests.support.studies import scale_study

START = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)
SYSTEM_MEANS = {"system0": 2.5, "system1": 5.0, "system2": 7.5}
"""True mean rating of each system of the scale study."""


@dataclass
class SyntheticStudy:
    study: Study
    session_factory: sessionmaker[Session]
    database_url: str
    ratings: list[dict[str, Any]]
    """Every stored rating: participant, condition, system, value."""
    statuses: dict[str, str]
    flagged: set[str]
    screened_out: set[str]
    incomplete: set[str]
    payments: list[dict[str, Any]] = field(default_factory=list)
    time_on_page_ms: dict[str, float] = field(default_factory=dict)
    """Time on page by trial (reservation public id)."""


def make_scale_study(
    folder: Path,
    database_url: str,
    registry: Registry,
    participants: int = 1000,
    items: int = 20,
    seed: int = 7,
    name: str = "scale-study",
    target: int | None = None,
) -> SyntheticStudy:
    """Prepare a scale study and fill it with ``participants`` listeners.

    ``target`` is the config's trials_per_condition, by default ``participants``.
    """
    config_path = scale_study(
        folder / "study",
        items=items,
        stimuli=len(SYSTEM_MEANS),
        experiment={"name": name, "title": "Synthetic scale study"},
        assignment={
            "conditions_per_participant": items,
            "trials_per_condition": target or participants,
        },
        flow={"steps": ["consent", "pre_survey", "trials", "post_survey"]},
    )
    config = load_config(config_path, registry)
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    study = prepare_study(config, registry, factory, folder / "data")
    generator = _Generator(study, participants, seed)
    with factory() as session, session.begin():
        generator.write(session)
    return SyntheticStudy(
        study=study,
        session_factory=factory,
        database_url=database_url,
        ratings=generator.ratings,
        statuses=generator.statuses,
        flagged=generator.flagged,
        screened_out=generator.screened_out,
        incomplete=generator.incomplete,
        payments=generator.payments,
        time_on_page_ms=generator.times,
    )


class _Generator:
    def __init__(self, study: Study, participants: int, seed: int) -> None:
        self.study = study
        self.count = participants
        self.rng = random.Random(seed)
        self.noise = np.random.default_rng(seed)
        self.ratings: list[dict[str, Any]] = []
        self.statuses: dict[str, str] = {}
        self.flagged: set[str] = set()
        self.screened_out: set[str] = set()
        self.incomplete: set[str] = set()
        self.payments: list[dict[str, Any]] = []
        self.times: dict[str, float] = {}

    def write(self, session: Session) -> None:
        people = [self._participant(index) for index in range(self.count)]
        ids = session.scalars(
            insert(Participant).returning(Participant.id, sort_by_parameter_order=True),
            people,
        ).all()
        session.execute(
            update(Experiment)
            .where(Experiment.id == self.study.experiment_id)
            .values(participant_counter=self.count)
        )
        reservations: list[dict[str, Any]] = []
        trials: list[dict[str, Any]] = []
        screening: list[dict[str, Any]] = []
        surveys: list[dict[str, Any]] = []
        for person, participant_id in zip(people, ids):
            self._session_rows(
                person, participant_id, reservations, trials, screening, surveys
            )

        reservation_ids = session.scalars(
            insert(Reservation).returning(Reservation.id, sort_by_parameter_order=True),
            [row for row, _ in reservations],
        ).all()
        trial_rows = []
        for (row, trial), reservation_id in zip(reservations, reservation_ids):
            if trial is not None:
                trial["reservation_id"] = reservation_id
                trial_rows.append(trial)
        trial_ids = session.scalars(
            insert(Trial).returning(Trial.id, sort_by_parameter_order=True),
            [
                {k: v for k, v in trial.items() if k != "_events"}
                for trial in trial_rows
            ],
        ).all()
        events = []
        for trial, trial_id in zip(trial_rows, trial_ids):
            for event in trial["_events"]:
                events.append({**event, "trial_id": trial_id})
        if events:
            session.execute(insert(ListeningEvent), events)
        if screening:
            session.execute(insert(ScreeningResult), screening)
        if surveys:
            session.execute(insert(SurveyResponse), surveys)
        self._recruitment_rows(session, people, ids)

    def _participant(self, index: int) -> dict[str, Any]:
        public_id = secrets.token_urlsafe(12)
        # A fixed pattern, so that even a small study has every kind of participant.
        status = "completed"
        flags: list[str] = []
        if index % 25 == 3:
            status = "screened_out"
            self.screened_out.add(public_id)
        elif index % 20 == 5:
            status = "active"
            self.incomplete.add(public_id)
        elif index % 33 == 7:
            flags = ["hearing"]
            self.flagged.add(public_id)
        self.statuses[public_id] = status
        created = START + dt.timedelta(minutes=index)
        finished = None
        if status != "active":
            finished = created + dt.timedelta(minutes=20 + self.rng.random() * 10)
        return {
            "experiment_id": self.study.experiment_id,
            "public_id": public_id,
            "sequence": index,
            "recruiter": "local_lab",
            "external_id": f"LAB{index:05d}",
            "external_data": {"code": f"LAB{index:05d}"},
            "status": status,
            "step": "trials" if status == "active" else "done",
            "flags": flags,
            "created_at": created,
            "updated_at": finished or created,
            "finished_at": finished,
        }

    def _session_rows(
        self,
        person: dict[str, Any],
        participant_id: int,
        reservations: list[Any],
        trials: list[dict[str, Any]],
        screening: list[dict[str, Any]],
        surveys: list[dict[str, Any]],
    ) -> None:
        public_id = person["public_id"]
        created = person["created_at"]
        agreed = person["status"] != "screened_out"
        screening.append(
            {
                "participant_id": participant_id,
                "step": "consent",
                "attempt": 1,
                "passed": agreed,
                "data": {"agreed": agreed},
                "created_at": created + dt.timedelta(seconds=20),
            }
        )
        if not agreed:
            return
        surveys.append(
            {
                "participant_id": participant_id,
                "survey": "pre",
                "answers": {
                    "age": self.rng.randint(18, 70),
                    "hearing_disorder": self.rng.choice(["no"] * 9 + ["yes"]),
                },
                "created_at": created + dt.timedelta(seconds=60),
            }
        )
        conditions = list(self.study.conditions.values())
        self.rng.shuffle(conditions)
        done = len(conditions)
        if person["status"] == "active":
            done = self.rng.randint(1, min(5, len(conditions) - 1))
        bias = float(self.noise.normal(0, 0.5))
        clock = created + dt.timedelta(seconds=90)
        for position, condition in enumerate(conditions[:done]):
            plan = self.study.test_type.plan_trial(
                condition, self.rng, person["sequence"]
            )
            values = {}
            for signal in plan["signals"]:
                mean = SYSTEM_MEANS[signal["stimulus"]] + bias
                values[signal["id"]] = round(
                    float(np.clip(mean + self.noise.normal(0, 1.2), 0, 10)), 1
                )
            page = TrialPage(
                condition=condition,
                plan=plan,
                signal_urls={},
                submit_url="",
                csrf_token="",
                position=position,
                total=len(conditions),
                section=self.study.config.test_type_section,
                study_title="",
            )
            response = self.study.test_type.validate_response(page, {"ratings": values})
            seconds = float(self.noise.lognormal(np.log(25), 0.4))
            reservation_public = secrets.token_urlsafe(12)
            self.times[reservation_public] = seconds * 1000
            served = clock
            clock = clock + dt.timedelta(seconds=seconds + 2)
            labels = [signal["id"] for signal in plan["signals"]]
            events = [
                {
                    "participant_id": participant_id,
                    "sequence": 0,
                    "type": "play",
                    "time_ms": 500.0,
                    "position": 0.0,
                    "signal": labels[0],
                    "stimulus_key": plan["signals"][0]["stimulus"],
                    "data": {},
                },
                {
                    "participant_id": participant_id,
                    "sequence": 1,
                    "type": "switch",
                    "time_ms": 3500.0,
                    "position": 3.0,
                    "signal": labels[1],
                    "stimulus_key": plan["signals"][1]["stimulus"],
                    "data": {"from": labels[0]},
                },
                {
                    "participant_id": participant_id,
                    "sequence": 2,
                    "type": "stop",
                    "time_ms": 9000.0,
                    "position": 8.5,
                    "signal": labels[1],
                    "stimulus_key": plan["signals"][1]["stimulus"],
                    "data": {},
                },
            ]
            reservations.append(
                (
                    {
                        "public_id": reservation_public,
                        "participant_id": participant_id,
                        "condition_id": condition.id,
                        "position": position,
                        "status": "completed",
                        "plan": plan,
                        "created_at": served - dt.timedelta(seconds=1),
                        "expires_at": served + dt.timedelta(hours=1),
                        "completed_at": clock,
                        "first_served_at": served,
                    },
                    {
                        "participant_id": participant_id,
                        "condition_id": condition.id,
                        "idempotency_key": f"key-{reservation_public}",
                        "response": response,
                        "acknowledgement": {
                            "stored": True,
                            "trial": reservation_public,
                        },
                        "time_on_page_ms": seconds * 1000,
                        "created_at": clock,
                        "_events": events,
                    },
                )
            )
            for signal in plan["signals"]:
                self.ratings.append(
                    {
                        "participant": public_id,
                        "condition": condition.key,
                        "item": condition.item,
                        "system": signal["stimulus"],
                        "value": response["ratings"][signal["id"]],
                        "trial": reservation_public,
                    }
                )
        if person["status"] == "active":
            condition = conditions[done]
            reservations.append(
                (
                    {
                        "public_id": secrets.token_urlsafe(12),
                        "participant_id": participant_id,
                        "condition_id": condition.id,
                        "position": done,
                        "status": "active",
                        "plan": self.study.test_type.plan_trial(
                            condition, self.rng, person["sequence"]
                        ),
                        "created_at": clock,
                        "expires_at": clock + dt.timedelta(hours=1),
                    },
                    None,
                )
            )
            return
        surveys.append(
            {
                "participant_id": participant_id,
                "survey": "post",
                "answers": {
                    "gender": self.rng.choice(["female", "male", "non-binary", None]),
                    "country": self.rng.choice(["Germany", "germany ", "USA", "India"]),
                    "listening_device": self.rng.choice(
                        ["closed headphones", "earbuds"]
                    ),
                    "critical_listening": self.rng.choice(["none", "a little", "some"]),
                    "environment_noise": self.rng.choice(["silent", "quiet"]),
                    "comments": None,
                },
                "created_at": clock + dt.timedelta(seconds=30),
            }
        )

    def _recruitment_rows(
        self, session: Session, people: list[dict[str, Any]], ids: list[int]
    ) -> None:
        jobs = [
            {
                "experiment_id": self.study.experiment_id,
                "recruiter": "local_lab",
                "request_token": f"code-{secrets.token_hex(8)}",
                "external_id": None,
                "status": "issued",
                "data": {"batch": index // 5},
                "created_at": START,
                "updated_at": START,
            }
            for index in range(12)
        ]
        session.execute(insert(RecruitmentJob), jobs)
        payments = []
        for index, (person, participant_id) in enumerate(zip(people, ids)):
            if person["status"] != "completed" or index % 10:
                continue
            amount = Decimal("1.50") if index % 20 else Decimal("0.05")
            payments.append(
                {
                    "experiment_id": self.study.experiment_id,
                    "participant_id": participant_id,
                    "recruiter": "local_lab",
                    "recipient": person["external_id"],
                    "kind": "bonus",
                    "purpose": f"bonus:{person['public_id']}",
                    "amount": amount,
                    "currency": "USD",
                    "request_token": f"pay-{secrets.token_hex(8)}",
                    "reference": None,
                    "reason": 'Thank you, with a comma, and "quotes"',
                    "status": "paid",
                    "error": None,
                    "created_at": person["finished_at"],
                    "updated_at": person["finished_at"],
                }
            )
        if payments:
            session.execute(insert(Payment), payments)
        self.payments = payments
