"""Balanced assignment under concurrency, reservation expiry and full studies.

The concurrency tests run assignments from two spawned processes, each with
its own engine and threads, against SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import multiprocessing
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.assignment import ensure_reservations
from caqe_core.config import load_config
from caqe_core.db import make_engine, make_session_factory, upgrade
from caqe_core.flow import start_participant
from caqe_core.models import Condition, Participant, Reservation
from caqe_core.plugins import Registry, build_registry, set_registry
from caqe_core.study import Study, load_study_from_database, prepare_study
from tests.support import scale_plugin
from tests.support.server import build_study
from tests.support.studies import scale_study

PARTICIPANTS = 100
THREADS_PER_PROCESS = 8


def prepared(
    tmp_path: Path, database_url: str, registry: Registry, **overrides: Any
) -> tuple[Study, sessionmaker[Session]]:
    items = overrides.pop("items", 3)
    config_path = scale_study(tmp_path / "study", items=items, stimuli=2, **overrides)
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_session_factory(engine)
    study = prepare_study(
        load_config(config_path, registry), registry, factory, tmp_path / "data"
    )
    return study, factory


def arrive_and_assign(
    database_url: str, count: int, barrier: Any
) -> list[tuple[int, list[int]]]:
    """Start ``count`` participants in threads and assign each; run in a spawned process."""
    registry = build_registry(extra_plugins=[("scale", scale_plugin)])
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    study = load_study_from_database(factory, registry, "scale-study")
    barrier.wait(timeout=120)

    def one(_index: int) -> tuple[int, list[int]]:
        participant = start_participant(factory, study, "local_lab")
        reservations = ensure_reservations(factory, study, participant.id)
        return participant.id, [
            reservation.condition_id for reservation in reservations
        ]

    try:
        with ThreadPoolExecutor(THREADS_PER_PROCESS) as pool:
            return list(pool.map(one, range(count)))
    finally:
        engine.dispose()


def run_two_processes(database_url: str) -> list[tuple[int, list[int]]]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            halves = pool.starmap(
                arrive_and_assign,
                [(database_url, PARTICIPANTS // 2, barrier)] * 2,
            )
    return [result for half in halves for result in half]


def held_per_condition(session: Session, study: Study) -> dict[str, int]:
    rows = session.execute(
        select(Condition.key, func.count(Reservation.id))
        .outerjoin(
            Reservation,
            (Reservation.condition_id == Condition.id)
            & Reservation.status.in_(("active", "completed")),
        )
        .where(Condition.experiment_id == study.experiment_id)
        .group_by(Condition.key)
    ).all()
    return dict(rows)


def assert_load_matches_reservations(session: Session, study: Study) -> None:
    held = held_per_condition(session, study)
    for condition in session.scalars(
        select(Condition).where(Condition.experiment_id == study.experiment_id)
    ):
        assert condition.load == held[condition.key], f"load of {condition.key} drifted"


def test_concurrent_assignment_balanced(
    tmp_path: Path, database_url: str, registry: Registry
) -> None:
    study, factory = prepared(
        tmp_path,
        database_url,
        registry,
        items=5,
        assignment={"conditions_per_participant": 2, "trials_per_condition": 100},
    )

    results = run_two_processes(database_url)

    assert len(results) == PARTICIPANTS
    for participant_id, conditions in results:
        assert len(conditions) == 2, f"participant {participant_id} was starved"
        assert len(set(conditions)) == 2, (
            f"participant {participant_id} got a condition twice"
        )
    with factory() as session:
        held = held_per_condition(session, study)
        assert sum(held.values()) == 2 * PARTICIPANTS
        assert max(held.values()) - min(held.values()) <= 1, held
        sequences = sorted(session.scalars(select(Participant.sequence)))
        assert sequences == list(range(PARTICIPANTS))
        assert_load_matches_reservations(session, study)


def test_concurrent_assignment_respects_targets(
    tmp_path: Path, database_url: str, registry: Registry
) -> None:
    targets = {"item0": 20, "item1": 30, "item2": 40}
    study, factory = prepared(
        tmp_path,
        database_url,
        registry,
        items=3,
        assignment={
            "conditions_per_participant": 2,
            "trials_per_condition": 10,
            "condition_targets": targets,
        },
    )

    results = run_two_processes(database_url)

    assert len(results) == PARTICIPANTS
    for participant_id, conditions in results:
        assert len(set(conditions)) == len(conditions), f"participant {participant_id}"
    with factory() as session:
        held = held_per_condition(session, study)
        assert held == targets
        assert_load_matches_reservations(session, study)
        pairs = session.execute(
            select(Reservation.participant_id, Reservation.condition_id)
        ).all()
        assert len(pairs) == len(set(pairs))


def test_balanced_while_below_target(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    study, factory = prepared(
        tmp_path,
        sqlite_url,
        registry,
        items=4,
        assignment={"conditions_per_participant": 1, "trials_per_condition": 50},
    )

    for arrivals in range(1, 41):
        participant = start_participant(factory, study, "local_lab")
        assert len(ensure_reservations(factory, study, participant.id)) == 1
        with factory() as session:
            held = held_per_condition(session, study)
        assert max(held.values()) - min(held.values()) <= 1, (arrivals, held)
        assert sum(held.values()) == arrivals


def test_per_condition_targets(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    study, factory = prepared(
        tmp_path,
        sqlite_url,
        registry,
        items=3,
        assignment={
            "conditions_per_participant": 1,
            "trials_per_condition": 2,
            "condition_targets": {"item0": 3, "item2": 0},
        },
    )
    with factory() as session:
        stored = dict(session.execute(select(Condition.key, Condition.target)).all())
    assert stored == {"item0": 3, "item1": 2, "item2": 0}

    given = []
    for _ in range(7):
        participant = start_participant(factory, study, "local_lab")
        reservations = ensure_reservations(factory, study, participant.id)
        given.append([study.conditions[r.condition_id].key for r in reservations])

    assert Counter(key for keys in given for key in keys) == {"item0": 3, "item1": 2}
    assert given[5:] == [[], []]


def test_expired_reservation_reclaimed(
    tmp_path: Path, database_url: str, registry: Registry
) -> None:
    study, factory = prepared(
        tmp_path,
        database_url,
        registry,
        items=2,
        assignment={
            "conditions_per_participant": 1,
            "trials_per_condition": 1,
            "condition_targets": {"item1": 0},
            "reservation_minutes": 60,
        },
    )
    start = dt.datetime.now(dt.UTC)
    first = start_participant(factory, study, "local_lab")
    second = start_participant(factory, study, "local_lab")

    held = ensure_reservations(factory, study, first.id, now=start)
    blocked = ensure_reservations(
        factory, study, second.id, now=start + dt.timedelta(minutes=59)
    )
    taken = ensure_reservations(
        factory, study, second.id, now=start + dt.timedelta(minutes=61)
    )
    lost = ensure_reservations(
        factory, study, first.id, now=start + dt.timedelta(minutes=62)
    )

    assert [r.condition_id for r in held] == [
        study.conditions[r.condition_id].id for r in held
    ]
    assert len(held) == 1
    assert blocked == []
    assert [r.condition_id for r in taken] == [held[0].condition_id]
    assert lost == []
    with factory() as session:
        statuses = dict(
            session.execute(
                select(Reservation.participant_id, Reservation.status)
            ).all()
        )
        assert statuses == {first.id: "expired", second.id: "active"}
        assert_load_matches_reservations(session, study)


def test_expired_reservation_renewed(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    study, factory = prepared(
        tmp_path,
        sqlite_url,
        registry,
        items=2,
        assignment={"conditions_per_participant": 1, "trials_per_condition": 5},
    )
    start = dt.datetime.now(dt.UTC)
    participant = start_participant(factory, study, "local_lab")
    other = start_participant(factory, study, "local_lab")

    before = ensure_reservations(factory, study, participant.id, now=start)
    ensure_reservations(factory, study, other.id, now=start + dt.timedelta(minutes=90))
    after = ensure_reservations(
        factory, study, participant.id, now=start + dt.timedelta(minutes=91)
    )

    assert [r.public_id for r in after] == [r.public_id for r in before]
    with factory() as session:
        reservation = session.scalars(
            select(Reservation).where(Reservation.participant_id == participant.id)
        ).one()
        assert reservation.status == "active"
        assert_load_matches_reservations(session, study)


def test_reservation_extended_on_visit(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    study, factory = prepared(
        tmp_path,
        sqlite_url,
        registry,
        assignment={"conditions_per_participant": 1, "reservation_minutes": 60},
    )
    start = dt.datetime.now(dt.UTC)
    participant = start_participant(factory, study, "local_lab")

    ensure_reservations(factory, study, participant.id, now=start)
    ensure_reservations(
        factory, study, participant.id, now=start + dt.timedelta(minutes=45)
    )

    with factory() as session:
        expires = session.scalars(select(Reservation.expires_at)).one()
    expires = expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)
    assert expires >= start + dt.timedelta(minutes=104)


# --- Over HTTP ------------------------------------------------------------------


def _arrive(base: str) -> tuple[requests.Session, str]:
    http = requests.Session()
    begun = http.post(f"{base}/lab/", allow_redirects=False)
    page_url = base + begun.headers["Location"]
    consent = http.get(page_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent.text).group(1)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    return http, page_url


def test_full_study_shows_no_work_page(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    config = scale_study(
        tmp_path / "study",
        items=2,
        assignment={"conditions_per_participant": 2, "trials_per_condition": 1},
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        _arrive(served.url)
        http, page_url = _arrive(served.url)

        page = http.get(page_url)

        assert page.status_code == 200
        assert "The study is full" in page.text
        assert "completion-code" not in page.text
        with served.session_factory() as session:
            statuses = sorted(session.scalars(select(Participant.status)))
        assert statuses == ["active", "no_work"]
    finally:
        served.stop()
        set_registry(None)


def test_parallel_page_loads_one_assignment(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    """Two tabs of one participant opening the trials page at once get one set of pages."""
    config = scale_study(
        tmp_path / "study",
        items=4,
        assignment={"conditions_per_participant": 2, "trials_per_condition": 10},
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        http, page_url = _arrive(served.url)
        barrier = threading.Barrier(6)
        pages: list[str] = []

        def load() -> None:
            barrier.wait()
            pages.append(http.get(page_url).text)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert len(pages) == 6
        assert len(set(pages)) == 1
        with served.session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Reservation)) == 2
    finally:
        served.stop()
        set_registry(None)


def test_late_response_keeps_load_consistent(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    """A response for a reservation that expired and went to someone else is kept."""
    config = scale_study(
        tmp_path / "study",
        items=1,
        assignment={
            "conditions_per_participant": 1,
            "trials_per_condition": 1,
            "reservation_minutes": 0.01,
        },
    )
    served = build_study(config, sqlite_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    try:
        late, late_page = _arrive(served.url)
        match = re.search(
            r"<script id='trial' type='application/json'>(.*?)</script>",
            late.get(late_page).text,
        )
        trial = json.loads(html.unescape(match.group(1)))
        time.sleep(1.0)
        _arrive(served.url)

        answer = late.post(
            served.url + trial["submit"],
            json={
                "idempotency_key": "late-0123456789",
                "response": {
                    "ratings": {signal["id"]: 3 for signal in trial["signals"]}
                },
            },
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )

        assert answer.status_code == 200
        with served.session_factory() as session:
            statuses = sorted(session.scalars(select(Reservation.status)))
            assert statuses == ["active", "completed"]
            assert_load_matches_reservations(session, served.study)
    finally:
        served.stop()
        set_registry(None)


# --- Races between expiry, renewal and late responses -----------------------------


def test_expiry_keeps_reservation_completed_meanwhile(
    tmp_path: Path, postgres_url: str, registry: Registry
) -> None:
    """A response that commits between expiry's select and update keeps its trial counted."""
    study, factory = prepared(
        tmp_path,
        postgres_url,
        registry,
        items=2,
        assignment={"conditions_per_participant": 1, "reservation_minutes": 60},
    )
    start = dt.datetime.now(dt.UTC)
    slow = start_participant(factory, study, "local_lab")
    held = ensure_reservations(factory, study, slow.id, now=start)[0]
    engine = factory.kw["bind"]
    fired: list[str] = []

    def answer_meanwhile(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if (
            fired
            or "expires_at <" not in statement
            or not statement.lstrip().startswith("SELECT")
        ):
            return
        fired.append(statement)
        with engine.begin() as other:
            other.execute(
                update(Reservation)
                .where(Reservation.id == held.id)
                .values(status="completed")
            )

    event.listen(engine, "after_cursor_execute", answer_meanwhile)
    try:
        newcomer = start_participant(factory, study, "local_lab")
        ensure_reservations(
            factory, study, newcomer.id, now=start + dt.timedelta(minutes=61)
        )
    finally:
        event.remove(engine, "after_cursor_execute", answer_meanwhile)

    assert fired, "the expiry select ran"
    with factory() as session:
        assert session.get(Reservation, held.id).status == "completed"
        assert_load_matches_reservations(session, study)


def test_late_response_racing_expiry(
    tmp_path: Path, database_url: str, registry: Registry
) -> None:
    """A reservation that expires while its response is validated is counted once."""
    config = scale_study(
        tmp_path / "study",
        items=2,
        assignment={"conditions_per_participant": 1, "trials_per_condition": 3},
    )
    served = build_study(config, database_url, registry, tmp_path / "data")
    served.start()
    set_registry(registry)
    engine = served.session_factory.kw["bind"]
    fired: list[str] = []
    try:
        http, page_url = _arrive(served.url)
        match = re.search(
            r"<script id='trial' type='application/json'>(.*?)</script>",
            http.get(page_url).text,
        )
        trial = json.loads(html.unescape(match.group(1)))
        public_id = trial["submit"].rsplit("/", 1)[1]

        def expire_meanwhile(
            connection: Any, cursor: Any, statement: str, *_: Any
        ) -> None:
            if fired or "reservations.public_id" not in statement:
                return
            fired.append(statement)
            with engine.begin() as other:
                row = other.execute(
                    select(Reservation.id, Reservation.condition_id).where(
                        Reservation.public_id == public_id
                    )
                ).one()
                other.execute(
                    update(Reservation)
                    .where(Reservation.id == row.id)
                    .values(status="expired")
                )
                other.execute(
                    update(Condition)
                    .where(Condition.id == row.condition_id)
                    .values(load=Condition.load - 1)
                )

        event.listen(engine, "after_cursor_execute", expire_meanwhile)
        answer = http.post(
            served.url + trial["submit"],
            json={
                "idempotency_key": "racing-0123456789",
                "response": {
                    "ratings": {signal["id"]: 5 for signal in trial["signals"]}
                },
            },
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )
        event.remove(engine, "after_cursor_execute", expire_meanwhile)

        assert fired, "the reservation lookup ran"
        assert answer.status_code == 200, answer.text
        with served.session_factory() as session:
            assert session.scalars(select(Reservation.status)).one() == "completed"
            assert_load_matches_reservations(session, served.study)
    finally:
        served.stop()
        set_registry(None)


def test_renewal_keeps_late_response(
    tmp_path: Path, postgres_url: str, registry: Registry
) -> None:
    """A late response that commits while its participant's reservation is renewed wins."""
    study, factory = prepared(
        tmp_path,
        postgres_url,
        registry,
        items=2,
        assignment={
            "conditions_per_participant": 1,
            "trials_per_condition": 50,
            "condition_targets": {"item1": 0},
            "reservation_minutes": 60,
        },
    )
    start = dt.datetime.now(dt.UTC)
    slow = start_participant(factory, study, "local_lab")
    held = ensure_reservations(factory, study, slow.id, now=start)[0]
    newcomer = start_participant(factory, study, "local_lab")
    ensure_reservations(
        factory, study, newcomer.id, now=start + dt.timedelta(minutes=61)
    )
    engine = factory.kw["bind"]
    seen: list[str] = []
    fired: list[str] = []

    def answer_meanwhile(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if fired or "reservations.participant_id =" not in statement:
            return
        seen.append(statement)
        if len(seen) < 2:
            return  # the lock-free read before the assignment transaction
        fired.append(statement)
        with engine.begin() as other:
            other.execute(
                update(Reservation)
                .where(Reservation.id == held.id)
                .values(status="completed")
            )
            other.execute(
                update(Condition)
                .where(Condition.id == held.condition_id)
                .values(load=Condition.load + 1)
            )

    event.listen(engine, "after_cursor_execute", answer_meanwhile)
    try:
        active = ensure_reservations(
            factory, study, slow.id, now=start + dt.timedelta(minutes=62)
        )
    finally:
        event.remove(engine, "after_cursor_execute", answer_meanwhile)

    assert fired, "the participant's reservations were read"
    assert active == []
    with factory() as session:
        assert session.get(Reservation, held.id).status == "completed"
        assert_load_matches_reservations(session, study)


def test_returning_person_gets_new_conditions(
    scale_config: Path, sqlite_url: str, registry: Registry, tmp_path: Path
) -> None:
    """A second session with the same external id never repeats a completed condition."""
    from caqe_core.assignment import ensure_reservations
    from caqe_core.flow import start_participant
    from caqe_core.models import Reservation, utcnow
    from tests.support.server import build_study

    served = build_study(scale_config, sqlite_url, registry, tmp_path / "data")
    first = start_participant(
        served.session_factory, served.study, "local_lab", external_id="W1"
    )
    done = ensure_reservations(served.session_factory, served.study, first.id)
    with served.session_factory() as session, session.begin():
        for reservation in done:
            row = session.get(Reservation, reservation.id)
            row.status = "completed"
            row.completed_at = utcnow()
    second = start_participant(
        served.session_factory, served.study, "local_lab", external_id="W1"
    )
    again = ensure_reservations(served.session_factory, served.study, second.id)

    first_conditions = {reservation.condition_id for reservation in done}
    second_conditions = {reservation.condition_id for reservation in again}
    assert len(first_conditions) == 2
    assert len(second_conditions) == 1
    assert not first_conditions & second_conditions
