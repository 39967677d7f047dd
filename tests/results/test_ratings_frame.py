"""The ratings_frame hook: a plugin returns the ratings rows of a batch at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from caqe_core import hookimpl
from caqe_core.plugins import Registry, build_registry
from caqe_core.results import tables
from caqe_core.results.tables import (
    ExportError,
    StoredTrial,
    StudyTables,
    load_tables,
)
from caqe_core.study import Study
from tests.results.synthetic import SyntheticStudy
from tests.support import scale_plugin

TRIAL_KEYS = {
    "participant",
    "condition",
    "plan",
    "response",
    "plan_json",
    "response_json",
    "started_at",
    "completed_at",
    "trial",
    "position",
    "time_on_page_ms",
}


class ScaleFrames:
    """Returns the scale test type's export_rows as one DataFrame per batch."""

    def __init__(self, change: Callable[[pd.DataFrame], Any] | None = None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.change = change

    @hookimpl
    def ratings_frame(self, study: Any, trials: list[Any]) -> Any:
        self.batches.append(trials)
        rows = []
        owners = []
        for position, trial in enumerate(trials):
            for row in study.test_type.export_rows(trial):
                rows.append(row)
                owners.append(position)
        frame = pd.DataFrame(rows, index=owners)
        return self.change(frame) if self.change else frame


def read_tables(study: SyntheticStudy, *plugins: tuple[str, object]) -> StudyTables:
    """Load the study's tables with the scale plugin and ``plugins`` registered."""
    registry: Registry = build_registry(
        extra_plugins=[("scale", scale_plugin), *plugins]
    )
    reloaded = Study(
        config=study.study.config,
        experiment_id=study.study.experiment_id,
        registry=registry,
    )
    with study.session_factory() as session:
        return load_tables(session, reloaded)


def test_hook_ratings_frame(
    small_study: SyntheticStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables, "TRIAL_BATCH_SIZE", 50)
    plugin = ScaleFrames()

    with_hook = read_tables(small_study, ("frames", plugin))
    without_hook = read_tables(small_study)

    pd.testing.assert_frame_equal(with_hook["ratings"], without_hook["ratings"])
    assert with_hook.schemas["ratings"] == without_hook.schemas["ratings"]
    sizes = [len(batch) for batch in plugin.batches]
    trials = without_hook["ratings"]["trial"].unique()
    assert sum(sizes) == len(trials)
    assert set(sizes[:-1]) == {50}
    assert [trial["trial"] for batch in plugin.batches for trial in batch] == list(
        trials
    )
    assert set(plugin.batches[0][0]) == TRIAL_KEYS


def test_ratings_frame_item_replaces_condition(small_study: SyntheticStudy) -> None:
    def rename_first_item(frame: pd.DataFrame) -> pd.DataFrame:
        frame["item"] = None
        frame.iloc[0, frame.columns.get_loc("item")] = "renamed"
        return frame

    ratings = read_tables(small_study, ("frames", ScaleFrames(rename_first_item)))[
        "ratings"
    ]

    assert ratings.loc[0, "item"] == "renamed"
    assert ratings.loc[1:, "item"].str.startswith("item").all()


def raise_error(frame: pd.DataFrame) -> Any:
    raise RuntimeError("the batch is broken")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (raise_error, "ratings_frame hook failed on .* the batch is broken"),
        (lambda frame: frame.to_dict("records"), "returned list .* expected a pandas"),
        (lambda frame: frame.set_axis(frame.index + 10**6), "invalid index"),
        (lambda frame: frame.iloc[::-1], "invalid index"),
        (lambda frame: frame.set_axis(frame.index.astype(str)), "invalid index"),
    ],
    ids=["raises", "not a frame", "out of range", "decreasing", "not integers"],
)
def test_ratings_frame_errors_name_hook(
    small_study: SyntheticStudy, change: Callable[[pd.DataFrame], Any], message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        read_tables(small_study, ("frames", ScaleFrames(change)))


def test_ratings_frame_from_two_plugins_rejected(small_study: SyntheticStudy) -> None:
    with pytest.raises(ExportError, match="2 plugins return a ratings_frame"):
        read_tables(small_study, ("one", ScaleFrames()), ("two", ScaleFrames()))


def test_stored_trial_decodes_documents_on_first_use() -> None:
    trial = StoredTrial(
        {"participant": "p1"}, plan_json='{"pairs": []}', response_json=None
    )

    assert len(trial) == 5
    assert set(trial) == {
        "participant",
        "plan_json",
        "response_json",
        "plan",
        "response",
    }
    assert trial["plan_json"] == '{"pairs": []}'
    assert trial["plan"] == {"pairs": []}
    assert trial["plan"] is trial["plan"]
    assert trial["response"] is None
    assert trial.get("missing") is None
    assert len(trial) == 5
    assert dict(trial)["plan"] == {"pairs": []}
