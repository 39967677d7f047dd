"""Read a study's data from the database into tidy pandas tables.

Every table has a fixed schema (``SCHEMAS``): a column name, a kind and a
description, which is also the data dictionary of an export. Two tables have
columns that depend on the study: ``ratings`` adds the columns that the test
type's ``export_rows`` (or a plugin's ``ratings_frame`` hook) returns, and
``participants`` adds one column per screening step and per survey question.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Text, func, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from caqe_core.models import (
    Condition,
    ListeningEvent,
    Participant,
    Payment,
    RecruitmentJob,
    Reservation,
    ScreeningResult,
    Stimulus,
    SurveyResponse,
    Trial,
)
from caqe_core.study import Study

logger = logging.getLogger(__name__)

KINDS = ("string", "integer", "float", "boolean", "datetime", "decimal", "json")
"""Column kinds. ``decimal`` is an exact amount kept as a string such as
``"1.50"``, and ``json`` is a JSON document kept as a string."""

STRING_DTYPE = pd.StringDtype(na_value=pd.NA)
"""Dtype of text columns: pandas' nullable string, stored by pyarrow when it is
installed (compact for a million rows) and as Python objects otherwise."""


def use_system_allocator() -> None:
    """Make pyarrow allocate with the C library's malloc instead of jemalloc.

    The export and analysis commands call it before they read a study.
    pyarrow's jemalloc pool returns freed pages to the system after a
    decay time, and the next million-row column faults them in again. On
    ``caqe analyze`` of 10^6 pairwise judgements this cost about 0.6 s of
    system time out of 9.5 s, and the peak memory was 40 MiB higher. Without
    pyarrow it does nothing.
    """
    try:
        import pyarrow
    except ImportError:
        return
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


TABLE_NAMES = (
    "ratings",
    "participants",
    "screening",
    "surveys",
    "events",
    "hits",
    "payments",
    "conditions",
    "stimuli",
)

# Trials read and converted per batch. Each batch becomes columns before the
# next is read, so the decoded documents of at most one batch are alive.
TRIAL_BATCH_SIZE = 1000

RESERVED_RATING_COLUMNS = frozenset(
    {
        "participant",
        "trial",
        "idempotency_key",
        "condition",
        "trial_position",
        "started_at",
        "completed_at",
        "time_on_page_ms",
    }
)
"""Columns of ``ratings`` that the core fills. A test type's values for them are
ignored."""


@dataclass(frozen=True)
class Column:
    """One column of an exported table."""

    name: str
    kind: str
    description: str


@dataclass
class TableSchema:
    """The columns of one table, in order."""

    name: str
    description: str
    columns: list[Column] = field(default_factory=list)

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None


def _schema(name: str, description: str, *columns: tuple[str, str, str]) -> TableSchema:
    return TableSchema(name, description, [Column(*column) for column in columns])


PARTICIPANT_ID = ("participant", "string", "Public id of the participant (session).")

SCHEMAS: dict[str, TableSchema] = {
    "ratings": _schema(
        "ratings",
        "One row per rating or judgement, as the test type's export_rows returns "
        "them, with the trial it belongs to.",
        PARTICIPANT_ID,
        ("condition", "string", "Key of the condition (page) that was rated."),
        ("item", "string", "Test item (programme material) of the condition."),
        ("scale", "string", "Rating scale of the condition; empty when it has none."),
        ("trial", "string", "Public id of the trial (its reservation)."),
        (
            "idempotency_key",
            "string",
            "Key the browser sent with the response; unique per participant.",
        ),
        (
            "trial_position",
            "integer",
            "Zero-based position of the trial among the participant's trials.",
        ),
        (
            "started_at",
            "datetime",
            (
                "When the trial page was first served (UTC), or when it was "
                "reserved if it was never served."
            ),
        ),
        ("completed_at", "datetime", "When the response was stored (UTC)."),
        (
            "time_on_page_ms",
            "float",
            "Time the page was open before submitting, in ms, as the browser measured it.",
        ),
    ),
    "participants": _schema(
        "participants",
        "One row per participant (session), with screening outcomes and survey "
        "answers as columns.",
        PARTICIPANT_ID,
        ("sequence", "integer", "Arrival order within the study, from 0."),
        (
            "recruiter",
            "string",
            "Recruiter that brought the participant (mturk, local_lab).",
        ),
        (
            "external_id",
            "string",
            "The recruiter's id of the person, such as an MTurk worker id or a lab code.",
        ),
        ("status", "string", "active, completed, screened_out or no_work."),
        ("step", "string", "Flow step the participant is at; done when finished."),
        ("flags", "string", "Quality flags set by flow steps, separated by '; '."),
        ("started_at", "datetime", "When the participant arrived (UTC)."),
        (
            "finished_at",
            "datetime",
            "When the participant finished or was screened out (UTC).",
        ),
        (
            "last_active_at",
            "datetime",
            "Last change of the participant's record (UTC).",
        ),
        (
            "duration_s",
            "float",
            "Seconds from arrival to finishing; empty if not finished.",
        ),
        ("trials_completed", "integer", "Number of stored trial responses."),
        (
            "external_data",
            "json",
            "Recruiter data of the session, such as the MTurk assignment and HIT ids.",
        ),
    ),
    "screening": _schema(
        "screening",
        "One row per submission of a flow step that records an outcome (consent, "
        "screening tests, post-test steps).",
        PARTICIPANT_ID,
        ("step", "string", "Name of the flow step."),
        (
            "attempt",
            "integer",
            "1 for the first submission of the step, 2 for the second, ...",
        ),
        (
            "passed",
            "boolean",
            "Verdict of a screening step; empty when the step gives none.",
        ),
        ("data", "json", "What the step recorded, such as thresholds or answers."),
        ("created_at", "datetime", "When the submission was stored (UTC)."),
    ),
    "surveys": _schema(
        "surveys",
        "One row per survey answer (long format).",
        PARTICIPANT_ID,
        ("survey", "string", "pre or post."),
        ("question", "string", "Question id from the config's surveys section."),
        (
            "answer",
            "string",
            (
                "The answer as text. The options of a multiple-choice answer are "
                "separated by '; '. Empty when skipped."
            ),
        ),
        ("answered_at", "datetime", "When the survey was submitted (UTC)."),
    ),
    "events": _schema(
        "events",
        "One row per listening event (play, stop, switch, loop, seek) of a stored trial.",
        PARTICIPANT_ID,
        ("trial", "string", "Public id of the trial."),
        ("condition", "string", "Key of the trial's condition."),
        ("sequence", "integer", "Order of the event within the trial, from 0."),
        ("type", "string", "Event type, such as play, stop, switch, loop or seek."),
        ("time_ms", "float", "Time since the page loaded, in ms."),
        ("position_s", "float", "Playback position in the signal, in seconds."),
        (
            "signal",
            "string",
            "The page's label of the signal; for switch, the new signal.",
        ),
        ("stimulus", "string", "Stimulus key (system) behind signal."),
        (
            "from_signal",
            "string",
            "For switch events: the label of the previous signal.",
        ),
        ("from_stimulus", "string", "Stimulus key behind from_signal."),
        ("data", "json", "Every other field the page sent with the event."),
    ),
    "hits": _schema(
        "hits",
        "One row per unit of work posted to a recruiter: an MTurk HIT, a lab code.",
        ("recruiter", "string", "Recruiter that posted the job."),
        ("request_token", "string", "Token written before the recruiter was called."),
        ("external_id", "string", "The recruiter's id of the job, such as the HIT id."),
        ("status", "string", "Status of the job as the recruiter plugin records it."),
        ("data", "json", "Recruiter data of the job (reward, assignments, ...)."),
        ("created_at", "datetime", "When the job was recorded (UTC)."),
        ("updated_at", "datetime", "Last change of the job (UTC)."),
    ),
    "payments": _schema(
        "payments",
        "The payment ledger: one row per reward or bonus.",
        (
            "participant",
            "string",
            "Public id of the participant paid; empty when the payment is not tied to one.",
        ),
        ("recruiter", "string", "Recruiter that sends the money."),
        (
            "recipient",
            "string",
            "The recruiter's id of the person paid, such as a worker id.",
        ),
        ("kind", "string", "reward or bonus."),
        ("purpose", "string", "What the payment is for; unique within the study."),
        ("amount", "decimal", "Amount as an exact decimal string, such as 1.50."),
        (
            "amount_cents",
            "integer",
            "Amount in hundredths of the currency unit, such as 150.",
        ),
        ("currency", "string", "ISO 4217 currency code."),
        ("request_token", "string", "Idempotency token sent to the payment service."),
        (
            "reference",
            "string",
            "The recruiter's reference, such as the assignment id.",
        ),
        ("reason", "string", "Message sent with the payment."),
        ("status", "string", "pending, paid or failed."),
        ("error", "string", "Error of the last failed attempt."),
        ("created_at", "datetime", "When the payment was recorded (UTC)."),
        ("updated_at", "datetime", "Last change of the payment (UTC)."),
    ),
    "conditions": _schema(
        "conditions",
        "One row per condition (page) of the study.",
        ("condition", "string", "Key of the condition."),
        ("item", "string", "Test item of the condition."),
        ("scale", "string", "Rating scale of the condition; empty when it has none."),
        ("position", "integer", "Order of the condition in the config, from 0."),
        ("target", "integer", "Number of completed trials the study aims for."),
        ("completed", "integer", "Number of stored trials."),
        ("data", "json", "The test type's data for the condition."),
    ),
    "stimuli": _schema(
        "stimuli",
        "One row per stimulus of a condition.",
        ("condition", "string", "Key of the condition."),
        (
            "stimulus",
            "string",
            "Key of the stimulus within the condition (the system).",
        ),
        ("role", "string", "reference, hidden_reference, anchor, system, ..."),
        ("position", "integer", "Order within the condition, from 0."),
        ("sample_rate", "integer", "Sample rate in Hz."),
        ("channels", "integer", "Number of channels."),
        ("duration_s", "float", "Duration in seconds."),
        ("sha256", "string", "SHA-256 of the prepared (served) file."),
        ("source_path", "string", "The file the config named, or the generated file."),
    ),
}


@dataclass
class StudyTables:
    """The exported tables of one study and the schemas that describe them."""

    frames: dict[str, pd.DataFrame]
    schemas: dict[str, TableSchema]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """Return ``value`` as an aware UTC datetime; SQLite returns naive UTC values."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def count_trials(session: Session, study: Study) -> int:
    """Return the number of stored trials of the study."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Trial)
            .join(Participant, Trial.participant_id == Participant.id)
            .where(Participant.experiment_id == study.experiment_id)
        )
        or 0
    )


def load_tables(
    session: Session,
    study: Study,
    on_trials: Callable[[int], None] | None = None,
) -> StudyTables:
    """Read every table of ``study`` from the database.

    ``on_trials`` is called with the number of trials converted after each
    batch, for a progress bar (``count_trials`` gives the total).
    """
    if not study.conditions:
        study.load_conditions(session)
    participant_ids = dict(
        session.execute(
            select(Participant.id, Participant.public_id).where(
                Participant.experiment_id == study.experiment_id
            )
        ).all()
    )
    schemas = {name: _copy_schema(schema) for name, schema in SCHEMAS.items()}
    frames: dict[str, pd.DataFrame] = {}

    frames["ratings"] = _load_ratings(
        session, study, participant_ids, schemas, on_trials
    )
    frames["participants"] = _load_participants(session, study, schemas)
    frames["screening"] = _load_screening(session, study, participant_ids)
    frames["surveys"] = _load_surveys(session, study, participant_ids)
    frames["events"] = _load_events(session, study, participant_ids)
    frames["hits"] = _load_hits(session, study)
    frames["payments"] = _load_payments(session, study, participant_ids)
    frames["conditions"] = _load_conditions(session, study)
    frames["stimuli"] = _load_stimuli(session, study)

    for name, frame in frames.items():
        frames[name] = conform(frame, schemas[name])
    return StudyTables(frames=frames, schemas=schemas)


def _copy_schema(schema: TableSchema) -> TableSchema:
    return TableSchema(schema.name, schema.description, list(schema.columns))


# --- ratings ------------------------------------------------------------------


def _load_ratings(
    session: Session,
    study: Study,
    participant_ids: dict[int, str],
    schemas: dict[str, TableSchema],
    on_trials: Callable[[int], None] | None,
) -> pd.DataFrame:
    test_type = study.test_type
    # Only the ids are sorted: sorting the rows themselves made SQLite copy
    # every JSON document through a temporary b-tree.
    trial_ids = session.scalars(
        select(Trial.id)
        .join(Reservation, Trial.reservation_id == Reservation.id)
        .join(Participant, Trial.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(Participant.sequence, Reservation.position)
    ).all()
    query = select(
        Trial.id,
        Trial.participant_id,
        Trial.condition_id,
        Trial.idempotency_key,
        # The documents are read as text and decoded with orjson when
        # it is installed: SQLAlchemy's JSON type decodes them with the
        # json module, which took about 5 s for 40,000 pairwise trials.
        sql_cast(Trial.response, Text).label("response_text"),
        Trial.time_on_page_ms,
        Trial.created_at,
        Reservation.public_id,
        Reservation.position,
        sql_cast(Reservation.plan, Text).label("plan_text"),
        Reservation.first_served_at,
        Reservation.created_at.label("reserved_at"),
    ).join(Reservation, Trial.reservation_id == Reservation.id)
    trial_batches: list[pd.DataFrame] = []
    row_batches: list[dict[str, pd.Series]] = []
    owner_batches: list[np.ndarray] = []
    trial_count = 0
    extra_columns: dict[str, None] = {}
    ignored: set[str] = set()
    with _gc_paused():
        for start in range(0, len(trial_ids), TRIAL_BATCH_SIZE):
            batch_ids = trial_ids[start : start + TRIAL_BATCH_SIZE]
            found = {
                row.id: row
                for row in session.execute(query.where(Trial.id.in_(batch_ids)))
            }
            # A trial deleted since the ids were read is left out.
            partition = [found[trial_id] for trial_id in batch_ids if trial_id in found]
            if not partition:
                continue
            trials, rows, owners = _ratings_batch(
                partition, study, test_type, participant_ids, extra_columns, ignored
            )
            trial_batches.append(trials)
            row_batches.append(rows)
            owner_batches.append(owners + trial_count)
            trial_count += len(trials)
            if on_trials is not None:
                on_trials(len(partition))

    schema = schemas["ratings"]
    core = [column.name for column in schema.columns]
    extra = [name for name in extra_columns if name not in core]
    if not trial_batches:
        return pd.DataFrame({name: [] for name in core})
    ratings = _join_trials(
        pd.concat(trial_batches, ignore_index=True),
        owner_batches,
        row_batches,
        [*core, *extra],
    )
    for name in extra:
        description = getattr(test_type, "export_columns", {}).get(
            name, f"Value from the {test_type.name!r} test type's export_rows."
        )
        schema.columns.insert(
            core.index("trial"), Column(name, infer_kind(ratings[name]), description)
        )
        core.insert(core.index("trial"), name)
    return ratings[core]


def _join_trials(
    trials: pd.DataFrame,
    owner_batches: list[np.ndarray],
    row_batches: list[dict[str, pd.Series]],
    names: list[str],
) -> pd.DataFrame:
    """Build the ratings table from the trial columns and the exported rows.

    ``owner_batches`` gives, per batch, the row of ``trials`` of each
    exported row. Each trial column is repeated with one ``take`` over the
    whole table. The exported columns are concatenated one at a time, and
    each batch's column is dropped once copied: a plain ``pd.concat`` would
    hold every batch and the result at once, twice the memory of a
    million-row table.
    """
    lengths = [len(owners) for owners in owner_batches]
    owners = np.concatenate(owner_batches)
    columns: dict[str, Any] = {}
    for name in names:
        if name not in trials.columns:
            columns[name] = _concat_batches(row_batches, lengths, name)
            continue
        values = trials[name].take(owners).reset_index(drop=True)
        if name in ("item", "scale") and any(name in rows for rows in row_batches):
            # A test type's item and scale replace the condition's, where given.
            exported = _concat_batches(row_batches, lengths, name)
            values = exported.where(exported.notna(), values)
        columns[name] = values
    row_batches.clear()
    # The columns are new arrays that nothing else refers to, so the frame
    # takes them without the copy that a dict of columns gets by default.
    return pd.DataFrame(columns, copy=False)


def _concat_batches(
    row_batches: list[dict[str, pd.Series]], lengths: list[int], name: str
) -> pd.Series:
    parts = []
    for rows, length in zip(row_batches, lengths, strict=True):
        if name in rows:
            parts.append(rows.pop(name).reset_index(drop=True))
        else:
            parts.append(pd.Series([None] * length, dtype=object))
    return pd.concat(parts, ignore_index=True)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector in the block.

    A batch of 1,000 pairwise trials keeps about 10^5 decoded JSON dicts
    alive until it ends, and the collections that new allocations trigger
    walk them again and again. In a profile of 40,000 such trials, decoding
    took three times as long with the collector running, and a full
    collection between two batches took 0.4 s. The decoded documents form
    no reference cycles, so reference counting frees them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _ratings_batch(
    partition: Iterable[Any],
    study: Study,
    test_type: Any,
    participant_ids: dict[int, str],
    extra_columns: dict[str, None],
    ignored: set[str],
) -> tuple[pd.DataFrame, dict[str, pd.Series], np.ndarray]:
    """Read one batch of trials: their columns, their exported rows and the owners.

    The owners give the position in the batch of each exported row's trial.
    """
    exported: list[StoredTrial] = []
    trials: list[dict[str, Any]] = []
    for row in partition:
        condition = study.conditions[row.condition_id]
        started = utc(row.first_served_at) or utc(row.reserved_at)
        completed = utc(row.created_at)
        participant = participant_ids[row.participant_id]
        exported.append(
            StoredTrial(
                {
                    "participant": participant,
                    "condition": condition,
                    "started_at": started,
                    "completed_at": completed,
                    "trial": row.public_id,
                    "position": row.position,
                    "time_on_page_ms": row.time_on_page_ms,
                },
                plan_json=row.plan_text,
                response_json=row.response_text,
            )
        )
        trials.append(
            {
                "participant": participant,
                "condition": condition.key,
                "item": condition.item,
                "scale": condition.scale,
                "trial": row.public_id,
                "idempotency_key": row.idempotency_key,
                "trial_position": row.position,
                "started_at": started,
                "completed_at": completed,
                "time_on_page_ms": row.time_on_page_ms,
            }
        )
    produced_frame, owners = _export_batch(study, test_type, exported)
    del exported

    trial_frame = pd.DataFrame(trials)
    for name in ("started_at", "completed_at"):
        trial_frame[name] = pd.to_datetime(trial_frame[name], utc=True)
    for name in produced_frame.columns:
        if name in RESERVED_RATING_COLUMNS and name not in ignored:
            ignored.add(name)
            logger.warning(
                "The %r test type's export_rows returns the column %r, which the "
                "core fills; its value is ignored.",
                test_type.name,
                name,
            )
        elif name not in RESERVED_RATING_COLUMNS:
            extra_columns.setdefault(name, None)
    rows = {
        name: values
        for name, values in _compact(produced_frame).items()
        if name not in RESERVED_RATING_COLUMNS
    }
    return _compact(trial_frame), rows, owners


class StoredTrial(Mapping[str, Any]):
    """One stored trial, as ``export_rows`` and ``ratings_frame`` receive it.

    ``plan`` and ``response`` are the decoded JSON documents, decoded on
    first use. ``plan_json`` and ``response_json`` are the stored texts, for
    a ``ratings_frame`` hook that parses a whole batch at once and so never
    needs the decoded ones.
    """

    __slots__ = ("_fields",)

    def __init__(
        self, fields: dict[str, Any], plan_json: str | None, response_json: str | None
    ) -> None:
        self._fields = fields
        fields["plan_json"] = plan_json
        fields["response_json"] = response_json

    def __getitem__(self, key: str) -> Any:
        try:
            return self._fields[key]
        except KeyError:
            if key not in _DECODED:
                raise
        value = _decode_json(self._fields[_DECODED[key]])
        self._fields[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        yield from self._fields
        yield from (key for key in _DECODED if key not in self._fields)

    def __len__(self) -> int:
        return len(self._fields) + sum(key not in self._fields for key in _DECODED)


_DECODED = {"plan": "plan_json", "response": "response_json"}
"""The decoded keys of a ``StoredTrial`` and the text each is decoded from."""


def _export_batch(
    study: Study, test_type: Any, trials: list[StoredTrial]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Turn a batch of trials into ratings rows and the index of each row's trial.

    A plugin's ``ratings_frame`` hook returns the rows of the whole batch.
    Without one, the test type's ``export_rows`` is called once per trial.
    """
    try:
        frames = study.registry.hook.ratings_frame(study=study, trials=trials)
    except Exception as error:
        # export_rows names the broken trial, where the hook can only name
        # the batch, so its error is raised when it fails too.
        _rows_of_trials(test_type, trials)
        first = trials[0]
        raise ExportError(
            f"The ratings_frame hook failed on {len(trials)} trials of the "
            f"{test_type.name!r} test type, from trial {first['trial']} of "
            f"participant {first['participant']}: {type(error).__name__}: {error}"
        ) from error
    if len(frames) > 1:
        raise ExportError(
            f"{len(frames)} plugins return a ratings_frame for the {test_type.name!r} "
            "test type; expected at most one. Keep one of them out with CAQE_PLUGINS."
        )
    if frames:
        return _checked_ratings_frame(frames[0], len(trials), test_type)
    return _rows_of_trials(test_type, trials)


def _rows_of_trials(
    test_type: Any, trials: list[StoredTrial]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Call ``export_rows`` on each trial, and raise ExportError naming any it fails on."""
    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    for index, trial in enumerate(trials):
        try:
            produced = test_type.export_rows(trial)
        except Exception as error:
            raise ExportError(
                f"The {test_type.name!r} test type's export_rows failed on trial "
                f"{trial['trial']} of participant {trial['participant']} (condition "
                f"{trial['condition'].key!r}): {type(error).__name__}: {error}"
            ) from error
        for produced_row in produced:
            rows.append(produced_row)
            owners.append(index)
    produced_frame = pd.DataFrame(rows) if rows else pd.DataFrame(index=range(0))
    return produced_frame, np.asarray(owners, dtype=np.intp)


def _checked_ratings_frame(
    frame: Any, n_trials: int, test_type: Any
) -> tuple[pd.DataFrame, np.ndarray]:
    if not isinstance(frame, pd.DataFrame):
        raise ExportError(
            f"The ratings_frame hook returned {type(frame).__name__} for the "
            f"{test_type.name!r} test type; expected a pandas DataFrame or None."
        )
    index = frame.index.to_numpy()
    valid = (
        pd.api.types.is_integer_dtype(index.dtype)
        and (len(index) == 0 or (index.min() >= 0 and index.max() < n_trials))
        and bool(np.all(index[1:] >= index[:-1]))
    )
    if not valid:
        raise ExportError(
            f"The ratings_frame hook returned an invalid index for the "
            f"{test_type.name!r} test type; expected the position of each row's "
            f"trial in the batch, non-decreasing integers from 0 to {n_trials - 1}."
        )
    return frame.reset_index(drop=True), index.astype(np.intp)


def _json_decoder() -> Callable[[str], Any]:
    """Return orjson's ``loads`` when it is installed, else the json module's."""
    try:
        import orjson
    except ImportError:
        return json.loads
    return orjson.loads


_loads_json = _json_decoder()


def _decode_json(text: str | None) -> Any:
    return None if text is None else _loads_json(text)


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    """Store text columns as pandas strings instead of Python objects."""
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_object_dtype(values.dtype):
            if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
                frame[name] = values.astype(STRING_DTYPE)
        elif pd.api.types.is_string_dtype(values.dtype):
            frame[name] = values.astype(STRING_DTYPE)
    return frame


class ExportError(RuntimeError):
    """The study's data cannot be turned into tables."""


# --- participants ---------------------------------------------------------------


def _load_participants(
    session: Session, study: Study, schemas: dict[str, TableSchema]
) -> pd.DataFrame:
    trial_counts = dict(
        session.execute(
            select(Trial.participant_id, func.count())
            .join(Participant, Trial.participant_id == Participant.id)
            .where(Participant.experiment_id == study.experiment_id)
            .group_by(Trial.participant_id)
        ).all()
    )
    records = []
    for participant in session.scalars(
        select(Participant)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(Participant.sequence)
    ):
        started = utc(participant.created_at)
        finished = utc(participant.finished_at)
        duration = (
            (finished - started).total_seconds() if started and finished else None
        )
        records.append(
            {
                "id": participant.id,
                "participant": participant.public_id,
                "sequence": participant.sequence,
                "recruiter": participant.recruiter,
                "external_id": participant.external_id,
                "status": participant.status,
                "step": participant.step,
                "flags": "; ".join(str(flag) for flag in participant.flags or [])
                or None,
                "started_at": started,
                "finished_at": finished,
                "last_active_at": utc(participant.updated_at),
                "duration_s": duration,
                "trials_completed": trial_counts.get(participant.id, 0),
                "external_data": _json_text(participant.external_data or {}),
            }
        )
    schema = schemas["participants"]
    frame = pd.DataFrame(records, columns=["id", *[c.name for c in schema.columns]])
    frame = _add_screening_columns(session, study, frame, schema)
    frame = _add_survey_columns(session, study, frame, schema)
    return frame.drop(columns="id")


def _add_screening_columns(
    session: Session, study: Study, frame: pd.DataFrame, schema: TableSchema
) -> pd.DataFrame:
    rows = session.execute(
        select(
            ScreeningResult.participant_id,
            ScreeningResult.step,
            ScreeningResult.attempt,
            ScreeningResult.passed,
        )
        .join(Participant, ScreeningResult.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(
            ScreeningResult.participant_id,
            ScreeningResult.step,
            ScreeningResult.attempt,
        )
    ).all()
    order = list(study.config.core.flow.steps)
    steps = sorted(
        {row.step for row in rows},
        key=lambda s: (s not in order, order.index(s) if s in order else 0, s),
    )
    last: dict[tuple[int, str], Any] = {}
    attempts: dict[tuple[int, str], int] = {}
    for row in rows:
        last[(row.participant_id, row.step)] = row.passed
        attempts[(row.participant_id, row.step)] = max(
            row.attempt, attempts.get((row.participant_id, row.step), 0)
        )
    for step in steps:
        passed = f"{step}_passed"
        count = f"{step}_attempts"
        frame[passed] = [last.get((pid, step)) for pid in frame["id"]]
        frame[count] = [attempts.get((pid, step), 0) for pid in frame["id"]]
        schema.columns.append(
            Column(
                passed,
                "boolean",
                f"Verdict of the last submission of the {step!r} step; empty if the "
                "participant did not reach it or it gives no verdict.",
            )
        )
        schema.columns.append(
            Column(count, "integer", f"Number of submissions of the {step!r} step.")
        )
    return frame


def _add_survey_columns(
    session: Session, study: Study, frame: pd.DataFrame, schema: TableSchema
) -> pd.DataFrame:
    answers: dict[tuple[int, str], dict[str, Any]] = {}
    for response in session.execute(
        select(
            SurveyResponse.participant_id, SurveyResponse.survey, SurveyResponse.answers
        )
        .join(Participant, SurveyResponse.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
    ):
        answers[(response.participant_id, response.survey)] = response.answers or {}
    surveys = study.config.core.surveys
    for survey, questions in (("pre", surveys.pre), ("post", surveys.post)):
        known = {question.id for question in questions}
        ids = [question.id for question in questions]
        texts = {question.id: question.text for question in questions}
        # Answers to questions no longer in the config (kept in the database).
        for (_, name), values in answers.items():
            if name == survey:
                ids.extend(key for key in values if key not in known and key not in ids)
        for question in ids:
            column = f"{survey}_survey_{question}"
            column_values = [
                _answer_value(answers.get((pid, survey), {}).get(question))
                for pid in frame["id"]
            ]
            frame[column] = column_values
            text = texts.get(question, "a question no longer in the config")
            schema.columns.append(
                Column(
                    column,
                    infer_kind(frame[column]),
                    f"Answer to the {survey}-test survey question {question!r} "
                    f"({text}); multiple options are separated by '; '.",
                )
            )
    return frame


def _answer_value(value: Any) -> Any:
    if isinstance(value, list):
        return "; ".join(str(option) for option in value)
    return value


# --- the other tables --------------------------------------------------------------


def _load_screening(
    session: Session, study: Study, participant_ids: dict[int, str]
) -> pd.DataFrame:
    rows = session.execute(
        select(ScreeningResult)
        .join(Participant, ScreeningResult.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(Participant.sequence, ScreeningResult.id)
    ).scalars()
    return pd.DataFrame(
        [
            {
                "participant": participant_ids[row.participant_id],
                "step": row.step,
                "attempt": row.attempt,
                "passed": row.passed,
                "data": _json_text(row.data or {}),
                "created_at": utc(row.created_at),
            }
            for row in rows
        ]
    )


def _load_surveys(
    session: Session, study: Study, participant_ids: dict[int, str]
) -> pd.DataFrame:
    records = []
    for row in session.scalars(
        select(SurveyResponse)
        .join(Participant, SurveyResponse.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(Participant.sequence, SurveyResponse.survey)
    ):
        for question, answer in (row.answers or {}).items():
            value = _answer_value(answer)
            records.append(
                {
                    "participant": participant_ids[row.participant_id],
                    "survey": row.survey,
                    "question": question,
                    "answer": None if value is None else str(value),
                    "answered_at": utc(row.created_at),
                }
            )
    return pd.DataFrame(records)


def _load_events(
    session: Session, study: Study, participant_ids: dict[int, str]
) -> pd.DataFrame:
    query = (
        select(
            ListeningEvent.participant_id,
            ListeningEvent.sequence,
            ListeningEvent.type,
            ListeningEvent.time_ms,
            ListeningEvent.position,
            ListeningEvent.signal,
            ListeningEvent.stimulus_key,
            ListeningEvent.data,
            Reservation.public_id,
            Reservation.condition_id,
            Reservation.plan,
        )
        .join(Trial, ListeningEvent.trial_id == Trial.id)
        .join(Reservation, Trial.reservation_id == Reservation.id)
        .join(Participant, ListeningEvent.participant_id == Participant.id)
        .where(Participant.experiment_id == study.experiment_id)
        .order_by(Participant.sequence, Reservation.position, ListeningEvent.sequence)
    )
    records = []
    # Rows come ordered by trial, so the labels of the previous row's trial are
    # the only ones worth keeping.
    trial: str | None = None
    labels: dict[str, str] = {}
    for row in session.execute(query.execution_options(yield_per=20000)):
        if row.public_id != trial:
            trial = row.public_id
            signals = (row.plan or {}).get("signals", [])
            labels = {signal["id"]: signal["stimulus"] for signal in signals}
        data = dict(row.data or {})
        from_signal = data.pop("from", None)
        for key in ("to", "signal"):
            data.pop(key, None)
        records.append(
            {
                "participant": participant_ids[row.participant_id],
                "trial": row.public_id,
                "condition": study.conditions[row.condition_id].key,
                "sequence": row.sequence,
                "type": row.type,
                "time_ms": row.time_ms,
                "position_s": row.position,
                "signal": row.signal,
                "stimulus": row.stimulus_key,
                "from_signal": from_signal,
                "from_stimulus": labels.get(from_signal) if from_signal else None,
                "data": _json_text(data) if data else None,
            }
        )
    return pd.DataFrame(records)


def _load_hits(session: Session, study: Study) -> pd.DataFrame:
    rows = session.scalars(
        select(RecruitmentJob)
        .where(RecruitmentJob.experiment_id == study.experiment_id)
        .order_by(RecruitmentJob.id)
    )
    return pd.DataFrame(
        [
            {
                "recruiter": row.recruiter,
                "request_token": row.request_token,
                "external_id": row.external_id,
                "status": row.status,
                "data": _json_text(row.data or {}),
                "created_at": utc(row.created_at),
                "updated_at": utc(row.updated_at),
            }
            for row in rows
        ]
    )


def _load_payments(
    session: Session, study: Study, participant_ids: dict[int, str]
) -> pd.DataFrame:
    rows = session.scalars(
        select(Payment)
        .where(Payment.experiment_id == study.experiment_id)
        .order_by(Payment.id)
    )
    return pd.DataFrame(
        [
            {
                "participant": participant_ids.get(row.participant_id)
                if row.participant_id is not None
                else None,
                "recruiter": row.recruiter,
                "recipient": row.recipient,
                "kind": row.kind,
                "purpose": row.purpose,
                "amount": format_amount(row.amount),
                "amount_cents": int(Decimal(str(row.amount)) * 100),
                "currency": row.currency,
                "request_token": row.request_token,
                "reference": row.reference,
                "reason": row.reason,
                "status": row.status,
                "error": row.error,
                "created_at": utc(row.created_at),
                "updated_at": utc(row.updated_at),
            }
            for row in rows
        ]
    )


def format_amount(amount: Decimal | float | str | None) -> str | None:
    """Return an amount as a decimal string with two places, such as ``"1.50"``."""
    if amount is None:
        return None
    return str(Decimal(str(amount)).quantize(Decimal("0.01")))


def _load_conditions(session: Session, study: Study) -> pd.DataFrame:
    completed = dict(
        session.execute(
            select(Trial.condition_id, func.count())
            .join(Condition, Trial.condition_id == Condition.id)
            .where(Condition.experiment_id == study.experiment_id)
            .group_by(Trial.condition_id)
        ).all()
    )
    rows = session.scalars(
        select(Condition)
        .where(Condition.experiment_id == study.experiment_id)
        .order_by(Condition.position)
    )
    return pd.DataFrame(
        [
            {
                "condition": row.key,
                "item": row.item,
                "scale": row.scale,
                "position": row.position,
                "target": row.target,
                "completed": completed.get(row.id, 0),
                "data": _json_text(row.data or {}),
            }
            for row in rows
        ]
    )


def _load_stimuli(session: Session, study: Study) -> pd.DataFrame:
    rows = session.execute(
        select(Stimulus, Condition.key)
        .join(Condition, Stimulus.condition_id == Condition.id)
        .where(Stimulus.experiment_id == study.experiment_id)
        .order_by(Condition.position, Stimulus.position)
    )
    return pd.DataFrame(
        [
            {
                "condition": key,
                "stimulus": stimulus.key,
                "role": stimulus.role,
                "position": stimulus.position,
                "sample_rate": stimulus.sample_rate,
                "channels": stimulus.channels,
                "duration_s": stimulus.frames / stimulus.sample_rate,
                "sha256": stimulus.sha256,
                "source_path": stimulus.source_path,
            }
            for stimulus, key in rows
        ]
    )


# --- types ----------------------------------------------------------------------------


def infer_kind(values: pd.Series) -> str:
    """Return the column kind that fits the non-missing values of ``values``."""
    present = values.dropna()
    if present.empty:
        return "string"
    dtype = present.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "datetime"
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return "string"
    # pandas' own type inference runs in C; iterating a million values in
    # Python would dominate the export.
    return _INFERRED_KINDS.get(pd.api.types.infer_dtype(present, skipna=True), "json")


_INFERRED_KINDS = {
    "boolean": "boolean",
    "integer": "integer",
    "floating": "float",
    "mixed-integer-float": "float",
    "decimal": "float",
    "datetime": "datetime",
    "string": "string",
    "empty": "string",
}


def conform(frame: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Return ``frame`` with exactly the schema's columns, in order, in their dtypes.

    Columns are converted one at a time and replace the originals, so a large
    table is not held twice.
    """
    length = len(frame)
    frame = frame.reset_index(drop=True)
    names = [column.name for column in schema.columns]
    frame = frame.drop(columns=[name for name in frame.columns if name not in names])
    for column in schema.columns:
        if column.name in frame.columns:
            values = frame[column.name]
        else:
            values = pd.Series([None] * length, dtype=object)
        frame[column.name] = cast(values, column.kind)
    return frame[names]


def cast(values: pd.Series, kind: str) -> pd.Series:
    """Convert ``values`` to the pandas dtype of ``kind``."""
    values = values.reset_index(drop=True)
    if kind == "boolean":
        return values.astype("boolean")
    if kind == "integer":
        return values.astype("Int64")
    if kind == "float":
        return pd.to_numeric(values, errors="raise").astype("float64")
    if kind == "datetime":
        return pd.to_datetime(values, utc=True, format="ISO8601")
    if kind == "json":
        return values.map(
            lambda value: (
                value if value is None or isinstance(value, str) else _json_text(value)
            ),
            na_action="ignore",
        ).astype(STRING_DTYPE)
    return values.astype(STRING_DTYPE)
