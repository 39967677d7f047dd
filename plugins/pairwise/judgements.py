"""Judgement rows of many stored pages at once, built one column at a time.

:func:`judgement_frame` returns the rows that ``plugin.judgement_rows``
returns page by page, as one DataFrame. It creates no dict per judgement:
the fields of each page's judgements are read with ``operator.itemgetter``
and transposed with ``zip``, and each column becomes one array. The core
reads its ratings rows through it, in the ``ratings_frame`` hook.
"""

from __future__ import annotations

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
    ``plan`` and ``response``, as ``TestType.export_rows`` receives it. The
    columns are ``item``, ``scale`` and those of ``plugin.EXPORT_COLUMNS``,
    with the values of ``judgement_rows``. The index is the position of
    each row's trial in ``trials``.
    """
    columns = _JudgementColumns()
    for trial in trials:
        columns.add(trial["plan"], trial["response"]["judgements"])

    n_rows = len(columns.pair)
    trial_of_row = np.repeat(np.arange(len(trials)), columns.counts)
    conditions = [trial["condition"] for trial in trials]
    items = _strings([condition.item for condition in conditions])
    scales = _strings([condition.scale for condition in conditions])
    choice = _strings(columns.choice)
    chose_a = (choice == "a").to_numpy(dtype=bool, na_value=False)
    chose_b = (choice == "b").to_numpy(dtype=bool, na_value=False)
    # The chosen system is picked from arrays of the Python strings: a
    # ``where`` on the string arrays took ten times as long.
    names_a = np.array(columns.stimulus_a, dtype=object)
    names_b = np.array(columns.stimulus_b, dtype=object)
    system = np.where(chose_a, names_a, np.where(chose_b, names_b, None))
    played_a = list(map(_PLAYED_A, columns.played))
    played_b = list(map(_PLAYED_B, columns.played))

    return pd.DataFrame(
        {
            "item": items.take(trial_of_row),
            "scale": scales.take(trial_of_row),
            "order_shown": np.asarray(columns.pair, dtype=np.int64) + 1,
            "stimulus_a": _strings(names_a),
            "stimulus_b": _strings(names_b),
            "choice": choice,
            "system": _strings(system),
            # A copy, so that setting a value of one column leaves the other.
            "value": choice.copy(),
            "repeat": np.fromiter(map(bool, columns.repeat), dtype=bool, count=n_rows),
            "decision_time_ms": _floats(columns.decision_time_ms),
            "played_a_seconds": _floats(played_a),
            "played_b_seconds": _floats(played_b),
            "signal_a": _strings(columns.signal_a),
            "signal_b": _strings(columns.signal_b),
        },
        index=pd.Index(trial_of_row),
        copy=False,
    )


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

    def add(
        self, plan: Mapping[str, Any], judgements: Sequence[Mapping[str, Any]]
    ) -> None:
        """Append the judgements of one page, looking up each pair in ``plan``."""
        self.counts.append(len(judgements))
        if not judgements:
            return
        stimulus_of = dict(map(_SIGNAL_FIELDS, plan["signals"]))
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
