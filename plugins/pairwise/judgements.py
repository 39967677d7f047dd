"""Judgement rows of many stored pages at once, built one column at a time.

:func:`judgement_frame` returns the rows that ``plugin.judgement_rows``
returns page by page, as one DataFrame. The core reads its ratings rows
through it, in the ``ratings_frame`` hook.

It has two ways to build the columns:

- with pyarrow, it parses the stored JSON texts of the whole batch with
  ``pyarrow.json`` straight into columns, and looks up each judgement's pair
  and signals with array operations. No Python object is made per
  judgement. For 10^6 judgements this took about 1 s less than the other
  way;
- without pyarrow, or when a document does not have the exact shape that
  the plugin stores (a missing key, a null, a number of another type, a
  pair index outside the page), it reads the decoded documents in Python:
  the fields of each page's judgements are read with ``operator.itemgetter``
  and transposed with ``zip``, and each column becomes one array. That way
  raises the same errors as ``judgement_rows`` on a broken document.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from caqe_core.results.tables import STRING_DTYPE

_JUDGEMENT_FIELDS = itemgetter("pair", "choice", "decision_time_ms", "played_seconds")
_PAIR_FIELDS = itemgetter("a", "b", "repeat")
_SIGNAL_FIELDS = itemgetter("id", "stimulus")
_PLAYED_A = itemgetter("a")
_PLAYED_B = itemgetter("b")


def judgement_frame(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return one row per judgement of ``trials``, in the order shown.

    Each trial is a mapping with ``condition`` (a ``ConditionView``),
    ``plan`` and ``response``, as ``TestType.export_rows`` receives it, and
    optionally ``plan_json`` and ``response_json``, the stored texts of the
    two documents. The columns are ``item``, ``scale`` and those of
    ``plugin.EXPORT_COLUMNS``, with the values of ``judgement_rows``. The
    index is the position of each row's trial in ``trials``.

    When a choice, signal id or stimulus name is not a string, the frame is
    built from the dicts of ``judgement_rows``, because those keep such a
    value as it is and a string column cannot.
    """
    parsed = _parsed_frame(trials)
    if parsed is not None:
        return parsed
    columns = _JudgementColumns()
    for trial in trials:
        response = trial["response"]
        columns.add(trial["plan"], response["judgements"])
        columns.restored.append(bool(response.get("restored", False)))
    if not columns.all_text():
        return _frame_of_rows(trials)

    n_rows = len(columns.pair)
    trial_of_row = np.repeat(np.arange(len(trials)), columns.counts)
    choice = _strings(columns.choice)
    chose_a = (choice == "a").to_numpy(dtype=bool, na_value=False)
    chose_b = (choice == "b").to_numpy(dtype=bool, na_value=False)
    # The chosen system is picked from arrays of the Python strings, because
    # a ``where`` on the string arrays took ten times as long.
    names_a = np.array(columns.stimulus_a, dtype=object)
    names_b = np.array(columns.stimulus_b, dtype=object)
    no_system = np.array(None, dtype=object)
    system = np.where(chose_a, names_a, np.where(chose_b, names_b, no_system))
    played_a = list(map(_PLAYED_A, columns.played))
    played_b = list(map(_PLAYED_B, columns.played))

    return _frame(
        trials,
        trial_of_row,
        {
            "order_shown": np.asarray(columns.pair, dtype=np.int64) + 1,
            "stimulus_a": _strings(names_a),
            "stimulus_b": _strings(names_b),
            "choice": choice,
            "system": _strings(system),
            "repeat": np.fromiter(map(bool, columns.repeat), dtype=bool, count=n_rows),
            "decision_time_ms": _floats(columns.decision_time_ms),
            "played_a_seconds": _floats(played_a),
            "played_b_seconds": _floats(played_b),
            "signal_a": _strings(columns.signal_a),
            "signal_b": _strings(columns.signal_b),
            "restored": np.repeat(
                np.array(columns.restored, dtype=bool), columns.counts
            ),
        },
    )


def _frame(
    trials: Sequence[Mapping[str, Any]],
    trial_of_row: np.ndarray,
    columns: dict[str, Any],
) -> pd.DataFrame:
    """Add the item, scale and value columns to the judgement columns.

    ``columns`` has one value per judgement for each column of
    ``plugin.EXPORT_COLUMNS`` except ``value``, and ``trial_of_row`` gives
    each judgement's position in ``trials``, which becomes the index.
    """
    conditions = [trial["condition"] for trial in trials]
    items = _strings([condition.item for condition in conditions])
    scales = _strings([condition.scale for condition in conditions])
    return pd.DataFrame(
        {
            "item": items.take(trial_of_row),
            "scale": scales.take(trial_of_row),
            "order_shown": columns["order_shown"],
            "stimulus_a": columns["stimulus_a"],
            "stimulus_b": columns["stimulus_b"],
            "choice": columns["choice"],
            "system": columns["system"],
            # A copy, so that setting a value of one column leaves the other.
            "value": columns["choice"].copy(),
            "repeat": columns["repeat"],
            "decision_time_ms": columns["decision_time_ms"],
            "played_a_seconds": columns["played_a_seconds"],
            "played_b_seconds": columns["played_b_seconds"],
            "signal_a": columns["signal_a"],
            "signal_b": columns["signal_b"],
            "restored": columns["restored"],
        },
        index=pd.Index(trial_of_row),
        copy=False,
    )


def _frame_of_rows(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Build the frame from ``judgement_rows``, one page at a time."""
    from .plugin import judgement_rows

    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    for index, trial in enumerate(trials):
        condition = trial["condition"]
        page_rows = judgement_rows(
            condition.item, condition.scale, trial["plan"], trial["response"]
        )
        rows += page_rows
        owners += [index] * len(page_rows)
    return pd.DataFrame(rows, index=pd.Index(owners, dtype=np.int64))


class _JudgementColumns:
    """The judgements of the pages added so far, one list per field."""

    def __init__(self) -> None:
        self.pair: list[int] = []
        self.choice: list[str] = []
        self.decision_time_ms: list[float] = []
        self.played: list[Mapping[str, float]] = []
        self.signal_a: list[str] = []
        self.signal_b: list[str] = []
        self.repeat: list[bool] = []
        self.stimulus_a: list[str] = []
        self.stimulus_b: list[str] = []
        self.counts: list[int] = []
        """Number of judgements of each page."""
        self.restored: list[bool] = []
        """Whether each page was restored from the browser's draft."""

    def all_text(self) -> bool:
        """Tell whether every choice, signal id and stimulus name is a string.

        A None choice also counts, because a string column keeps it as NA.
        """
        choices = (choice for choice in self.choice if choice is not None)
        return all(
            type(value) is str
            for values in (
                choices,
                self.signal_a,
                self.signal_b,
                self.stimulus_a,
                self.stimulus_b,
            )
            for value in values
        )

    def add(
        self, plan: Mapping[str, Any], judgements: Sequence[Mapping[str, Any]]
    ) -> None:
        """Append the judgements of one page, looking up each pair in ``plan``."""
        self.counts.append(len(judgements))
        # Read before the early return, because judgement_rows reads every
        # page's signals and so raises on a broken list of an unjudged page.
        stimulus_of = dict(map(_SIGNAL_FIELDS, plan["signals"]))
        if not judgements:
            return
        pairs, choices, decision_times, played = zip(
            *map(_JUDGEMENT_FIELDS, judgements), strict=True
        )
        # Indexing plan["pairs"] like judgement_rows, so a pair index beyond
        # the plan raises IndexError there and here.
        shown_pairs = map(plan["pairs"].__getitem__, pairs)
        signals_a, signals_b, repeats = zip(
            *map(_PAIR_FIELDS, shown_pairs), strict=True
        )
        self.pair += pairs
        self.choice += choices
        self.decision_time_ms += decision_times
        self.played += played
        self.signal_a += signals_a
        self.signal_b += signals_b
        self.repeat += repeats
        self.stimulus_a += map(stimulus_of.__getitem__, signals_a)
        self.stimulus_b += map(stimulus_of.__getitem__, signals_b)


def _floats(values: Sequence[Any]) -> np.ndarray:
    # float() on each value, as judgement_rows converts them.
    return np.fromiter(map(float, values), dtype=float, count=len(values))


def _strings(values: Sequence[str | None] | np.ndarray) -> Any:
    """Return ``values`` as an array of the export's string dtype."""
    if STRING_DTYPE.storage == "pyarrow":
        import pyarrow

        # pyarrow reads the list itself, without pandas' check of each value.
        return pd.arrays.ArrowStringArray(
            pyarrow.array(values, type=pyarrow.large_string())
        )
    return pd.array(values, dtype=STRING_DTYPE)


# --- parsing the stored texts with pyarrow ---------------------------------------


def _parsed_frame(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame | None:
    """Build the frame from the stored texts, or return None to decode them instead.

    None means that pyarrow is missing, that a trial has no stored texts, or
    that a document does not have the shape that the plugin stores.
    """
    if STRING_DTYPE.storage != "pyarrow" or not trials:
        return None
    import pyarrow

    plan_texts = [trial.get("plan_json") for trial in trials]
    response_texts = [trial.get("response_json") for trial in trials]
    plans = _read_documents(plan_texts, _plan_schema())
    responses = _read_documents(response_texts, _response_schema())
    if plans is None or responses is None:
        return None
    try:
        columns = _parsed_columns(plans, responses)
    except pyarrow.ArrowException:
        return None
    if columns is None:
        return None

    trial_of_row = columns.pop("trial_of_row")
    return _frame(trials, trial_of_row, columns)


def _read_documents(texts: list[Any], schema: Any) -> Any | None:
    """Parse one JSON object per text into a pyarrow table with ``schema``.

    Returns None when a text is missing or not a one-line string, or when
    pyarrow cannot parse the texts into ``schema``.
    """
    import pyarrow
    import pyarrow.json

    if not all(type(text) is str and text for text in texts):
        return None
    joined = "\n".join(texts)
    # Each text must be one line, so that line i is the document of trial i.
    # pyarrow also ends a line at a carriage return.
    if joined.count("\n") != len(texts) - 1 or "\r" in joined:
        return None
    # orjson rejects a text that starts with a byte order mark, but pyarrow
    # skips it. A mark anywhere in the batch sends it to the decoding path.
    if "\ufeff" in joined:
        return None
    try:
        table = pyarrow.json.read_json(
            io.BytesIO(joined.encode()),
            parse_options=pyarrow.json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pyarrow.ArrowException, UnicodeEncodeError):
        return None
    if table.num_rows != len(texts):
        return None
    return table.combine_chunks()


def _plan_schema() -> Any:
    import pyarrow

    string = pyarrow.large_string()
    return pyarrow.schema(
        [
            (
                "signals",
                pyarrow.list_(pyarrow.struct([("id", string), ("stimulus", string)])),
            ),
            (
                "pairs",
                pyarrow.list_(
                    pyarrow.struct(
                        [("a", string), ("b", string), ("repeat", pyarrow.bool_())]
                    )
                ),
            ),
        ]
    )


def _response_schema() -> Any:
    import pyarrow

    seconds = pyarrow.struct([("a", pyarrow.float64()), ("b", pyarrow.float64())])
    judgement = pyarrow.struct(
        [
            ("pair", pyarrow.int64()),
            ("choice", pyarrow.large_string()),
            ("decision_time_ms", pyarrow.float64()),
            ("played_seconds", seconds),
        ]
    )
    return pyarrow.schema(
        [("judgements", pyarrow.list_(judgement)), ("restored", pyarrow.bool_())]
    )


def _parsed_columns(plans: Any, responses: Any) -> dict[str, Any] | None:
    """Return the judgement columns of parsed plans and responses.

    Returns None where ``judgement_rows`` would raise on a document or read
    it differently. That is a null or missing field, a pair index outside the
    page's pairs, a signal that the page does not list, or a signal listed
    twice. Python's indexing would also accept a negative pair index.
    """
    import pyarrow
    import pyarrow.compute as pc

    judgements = responses.column("judgements").chunk(0)
    if judgements.null_count:
        return None
    flat = _list_values(judgements)
    if flat.null_count:
        return None
    played = flat.field("played_seconds")
    fields = {name: flat.field(name) for name in ("pair", "choice", "decision_time_ms")}
    fields["played_a"] = played.field("a")
    fields["played_b"] = played.field("b")
    if played.null_count or any(values.null_count for values in fields.values()):
        return None
    # pyarrow reads NaN and Infinity, which orjson rejects, and reads the
    # integer -0 as -0.0, which orjson reads as 0. Such pages are decoded.
    for name in ("decision_time_ms", "played_a", "played_b"):
        numbers = fields[name].to_numpy()
        if not np.isfinite(numbers).all() or np.signbit(numbers[numbers == 0]).any():
            return None
    n_trials = len(judgements)
    trial_of_row = np.repeat(np.arange(n_trials), judgements.value_lengths().to_numpy())
    if trial_of_row.size == 0:
        return None

    pairs = plans.column("pairs").chunk(0)
    signals = plans.column("signals").chunk(0)
    # judgement_rows reads the signals of every page, but the pairs only of
    # pages with judgements.
    if signals.null_count:
        return None
    judged = np.zeros(n_trials, dtype=bool)
    judged[trial_of_row] = True
    if (pairs.is_null().to_numpy(zero_copy_only=False) & judged).any():
        return None
    pair_list = _list_values(pairs)
    signal_list = _list_values(signals)
    for values in (
        pair_list,
        pair_list.field("a"),
        pair_list.field("b"),
        pair_list.field("repeat"),
        signal_list,
        signal_list.field("id"),
        signal_list.field("stimulus"),
    ):
        if values.null_count:
            return None

    pair = fields["pair"].to_numpy()
    pair_count = pairs.value_lengths().fill_null(0).to_numpy()
    if ((pair < 0) | (pair >= pair_count[trial_of_row])).any():
        return None
    pair_row = _list_starts(pairs)[trial_of_row] + pair
    signal_a = pair_list.field("a").take(pyarrow.array(pair_row))
    signal_b = pair_list.field("b").take(pyarrow.array(pair_row))

    signal_trial = np.repeat(
        np.arange(n_trials), signals.value_lengths().fill_null(0).to_numpy()
    )
    signal_positions = _signal_rows(
        signal_trial,
        signal_list.field("id"),
        [(trial_of_row, signal_a), (trial_of_row, signal_b)],
    )
    if signal_positions is None:
        return None
    stimuli = signal_list.field("stimulus")
    stimulus_a = stimuli.take(pyarrow.array(signal_positions[0]))
    stimulus_b = stimuli.take(pyarrow.array(signal_positions[1]))
    choice = fields["choice"]
    system = pc.if_else(
        pc.equal(choice, "a"),
        stimulus_a,
        pc.if_else(pc.equal(choice, "b"), stimulus_b, None),
    )
    repeat = pair_list.field("repeat").take(pyarrow.array(pair_row))
    # A response without the key, stored before it existed or not restored,
    # reads as null.
    restored = responses.column("restored").chunk(0).fill_null(False)

    return {
        "trial_of_row": trial_of_row,
        "order_shown": pair + 1,
        "stimulus_a": _string_array(stimulus_a),
        "stimulus_b": _string_array(stimulus_b),
        "choice": _string_array(choice),
        "system": _string_array(system),
        "repeat": repeat.to_numpy(zero_copy_only=False),
        "decision_time_ms": fields["decision_time_ms"].to_numpy(),
        "played_a_seconds": fields["played_a"].to_numpy(),
        "played_b_seconds": fields["played_b"].to_numpy(),
        "signal_a": _string_array(signal_a),
        "signal_b": _string_array(signal_b),
        "restored": restored.to_numpy(zero_copy_only=False)[trial_of_row],
    }


def _list_values(lists: Any) -> Any:
    """Return the values of all lists of ``lists``, from the first list's start.

    Unlike ``flatten()``, it keeps values behind null lists, so that
    :func:`_list_starts` gives each list's position in them.
    """
    offsets = lists.offsets.to_numpy()
    return lists.values.slice(offsets[0], offsets[-1] - offsets[0])


def _list_starts(lists: Any) -> np.ndarray:
    """Return the position in :func:`_list_values` of each list's first value."""
    offsets = lists.offsets.to_numpy()
    return (offsets[:-1] - offsets[0]).astype(np.int64)


def _signal_rows(
    signal_trial: np.ndarray, signal_ids: Any, lookups: list[tuple[np.ndarray, Any]]
) -> list[np.ndarray] | None:
    """Find each looked-up signal among the signals of its own page.

    ``signal_trial`` and ``signal_ids`` give each listed signal's page and
    id, and each lookup gives the pages and ids to find. Returns, per lookup,
    the position of each id in ``signal_ids``, or None when an id is not
    listed on its page or a page lists an id twice.
    """
    import pyarrow

    names = pyarrow.concat_arrays(
        [signal_ids, *(ids for _, ids in lookups)]
    ).dictionary_encode()
    codes = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_names = max(len(names.dictionary), 1)
    keys = signal_trial * n_names + codes[: len(signal_ids)]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if (sorted_keys[1:] == sorted_keys[:-1]).any():
        return None
    found = []
    start = len(signal_ids)
    for pages, ids in lookups:
        lookup_keys = pages * n_names + codes[start : start + len(ids)]
        start += len(ids)
        slots = np.searchsorted(sorted_keys, lookup_keys)
        if (slots >= len(sorted_keys)).any():
            return None
        if (sorted_keys[slots] != lookup_keys).any():
            return None
        found.append(order[slots])
    return found


def _string_array(values: Any) -> Any:
    import pyarrow

    return pd.arrays.ArrowStringArray(values.cast(pyarrow.large_string()))
