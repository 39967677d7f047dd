"""`caqe results export`: tidy tables that pandas reads with no options."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result

from caqe_core.plugins import Registry
from caqe_core.results.export import read_export, read_table
from caqe_core.results.tables import TABLE_NAMES
from tests.results.synthetic import SyntheticStudy, make_scale_study

TIME_COLUMNS = {
    "ratings": ["started_at", "completed_at"],
    "participants": ["started_at", "finished_at", "last_active_at"],
    "screening": ["created_at"],
    "surveys": ["answered_at"],
    "hits": ["created_at", "updated_at"],
    "payments": ["created_at", "updated_at"],
}


def _export(
    run_cli: Callable[..., Result], study: SyntheticStudy, out: Path, fmt: str
) -> None:
    result = run_cli(
        "results",
        "export",
        "--database-url",
        study.database_url,
        "--out",
        str(out),
        "--format",
        fmt,
    )
    assert result.exit_code == 0, result.output
    assert f"to {out}" in result.output


@pytest.fixture
def exported(
    run_cli: Callable[..., Result],
    database_url: str,
    tmp_path: Path,
    registry: Registry,
) -> tuple[SyntheticStudy, Path]:
    study = make_scale_study(tmp_path, database_url, registry, participants=40, items=4)
    out = tmp_path / "export"
    _export(run_cli, study, out, "csv")
    return study, out


def test_export_csv_dtypes_without_options(
    exported: tuple[SyntheticStudy, Path],
) -> None:
    _, out = exported
    ratings = pd.read_csv(out / "ratings.csv")
    participants = pd.read_csv(out / "participants.csv")
    payments = pd.read_csv(out / "payments.csv")
    screening = pd.read_csv(out / "screening.csv")
    events = pd.read_csv(out / "events.csv")

    assert list(ratings.columns[:6]) == [
        "participant",
        "condition",
        "item",
        "scale",
        "system",
        "value",
    ]
    assert ratings["value"].dtype == "float64"
    assert ratings["trial_position"].dtype == "int64"
    assert ratings["time_on_page_ms"].dtype == "float64"
    assert pd.api.types.is_string_dtype(ratings["participant"])
    assert participants["sequence"].dtype == "int64"
    assert participants["trials_completed"].dtype == "int64"
    assert participants["consent_passed"].dtype == "bool"
    assert (
        participants["pre_survey_age"].dtype == "float64"
    )  # missing for screened-out listeners
    assert participants["duration_s"].dtype == "float64"
    assert screening["passed"].dtype == "bool"
    assert screening["attempt"].dtype == "int64"
    assert payments["amount_cents"].dtype == "int64"
    assert events["sequence"].dtype == "int64"
    assert events["time_ms"].dtype == "float64"
    for frame in (ratings, participants, payments):
        assert not any(str(column).startswith("Unnamed") for column in frame.columns)


def test_export_ratings_equal_generated(exported: tuple[SyntheticStudy, Path]) -> None:
    study, out = exported
    ratings = pd.read_csv(out / "ratings.csv")
    got = sorted(
        zip(
            ratings["participant"],
            ratings["condition"],
            ratings["system"],
            ratings["value"],
        )
    )
    expected = sorted(
        (r["participant"], r["condition"], r["system"], r["value"])
        for r in study.ratings
    )
    assert got == expected
    times = ratings.drop_duplicates("trial").set_index("trial")["time_on_page_ms"]
    for trial, milliseconds in study.time_on_page_ms.items():
        assert times[trial] == pytest.approx(milliseconds)


def test_export_times_booleans_and_amounts(
    exported: tuple[SyntheticStudy, Path],
) -> None:
    study, out = exported
    for table, columns in TIME_COLUMNS.items():
        frame = pd.read_csv(out / f"{table}.csv")
        for column in columns:
            values = frame[column].dropna()
            assert values.str.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
            ).all(), (table, column)
            parsed = pd.to_datetime(values, format="ISO8601", utc=True)
            assert parsed.min().year == 2024, (table, column)
    with (out / "participants.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["consent_passed"] for row in rows} <= {"true", "false"}
    assert "false" in {row["consent_passed"] for row in rows}
    with (out / "payments.csv").open(newline="") as handle:
        payments = list(csv.DictReader(handle))
    assert len(payments) == len(study.payments)
    assert {row["amount"] for row in payments} <= {"1.50", "0.05"}
    for row in payments:
        assert int(row["amount_cents"]) == round(float(row["amount"]) * 100)
        assert row["reason"] == 'Thank you, with a comma, and "quotes"'
        assert row["reference"] == ""


def test_export_participants_columns(exported: tuple[SyntheticStudy, Path]) -> None:
    study, out = exported
    participants = pd.read_csv(out / "participants.csv").set_index("participant")
    assert set(participants.index) == set(study.statuses)
    for public_id, status in study.statuses.items():
        assert participants.loc[public_id, "status"] == status
    assert set(participants.index[participants["flags"] == "hearing"]) == study.flagged
    screened = participants.index[~participants["consent_passed"]]
    assert set(screened) == study.screened_out
    counts = (
        pd.Series([r["trial"] for r in study.ratings])
        .groupby([r["participant"] for r in study.ratings])
        .nunique()
    )
    for public_id, trials in counts.items():
        assert participants.loc[public_id, "trials_completed"] == trials
    for column in (
        "post_survey_gender",
        "post_survey_country",
        "pre_survey_hearing_disorder",
    ):
        assert column in participants.columns


def test_data_dictionary_covers_every_column(
    exported: tuple[SyntheticStudy, Path],
) -> None:
    _, out = exported
    dictionary = pd.read_csv(out / "data_dictionary.csv")
    markdown = (out / "data_dictionary.md").read_text()
    for table in TABLE_NAMES:
        columns = list(pd.read_csv(out / f"{table}.csv", nrows=0).columns)
        described = list(dictionary.loc[dictionary["table"] == table, "column"])
        assert columns == described, table
        assert f"## {table}" in markdown
        for column in columns:
            assert f"| `{column}` |" in markdown
    assert dictionary["description"].notna().all()


def test_export_manifest_and_config(exported: tuple[SyntheticStudy, Path]) -> None:
    study, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["experiment"] == study.study.name
    assert len(manifest["config_hash"]) == 64
    assert manifest["format"] == "csv"
    assert manifest["tables"]["ratings"]["rows"] == len(study.ratings)
    assert "password" not in manifest["database"]
    assert (out / "config.yaml").read_text() == study.study.config.text


def test_json_and_parquet_equal_csv(
    exported: tuple[SyntheticStudy, Path],
    run_cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    study, csv_out = exported
    json_out = tmp_path / "export-json"
    parquet_out = tmp_path / "export-parquet"
    _export(run_cli, study, json_out, "json")
    _export(run_cli, study, parquet_out, "parquet")
    _, from_csv = read_export(csv_out)
    _, from_json = read_export(json_out)
    _, from_parquet = read_export(parquet_out)
    for table in TABLE_NAMES:
        pd.testing.assert_frame_equal(
            from_csv[table], from_json[table], check_dtype=True, obj=table
        )
        pd.testing.assert_frame_equal(
            from_csv[table], from_parquet[table], check_dtype=True, obj=table
        )

    # The raw JSON records hold the same text as the CSV fields.
    for table in ("ratings", "participants", "payments", "events"):
        records = json.loads((json_out / f"{table}.json").read_text())
        with (csv_out / f"{table}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(records) == len(rows)
        for record, row in zip(records, rows):
            assert list(record) == list(row)
            for key, value in record.items():
                assert _as_csv_text(value) == row[key], (table, key)

    raw_parquet = pd.read_parquet(parquet_out / "ratings.parquet")
    assert str(raw_parquet["completed_at"].dtype) == "datetime64[us, UTC]"
    assert str(raw_parquet["value"].dtype) == "float64"


def _as_csv_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_read_table_keeps_na_like_text(
    tmp_path: Path, exported: tuple[SyntheticStudy, Path]
) -> None:
    _, out = exported
    _, tables = read_export(out)
    schema = tables.schemas["surveys"]
    path = tmp_path / "surveys.csv"
    path.write_text(
        "participant,survey,question,answer,answered_at\np1,post,country,NA,\n"
    )
    frame = read_table(path, schema, "csv")
    assert frame.loc[0, "answer"] == "NA"
    assert pd.isna(frame.loc[0, "answered_at"])


def test_export_finds_study_in_working_folder(
    run_cli: Callable[..., Result],
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CAQE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "caqe-data" / "caqe.sqlite"
    make_scale_study(
        tmp_path / "first", f"sqlite:///{database}", registry, participants=5, items=2
    )

    result = run_cli("results", "export")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scale-study-export" / "ratings.csv").is_file()
    assert str(database) in result.output

    make_scale_study(
        tmp_path / "second",
        f"sqlite:///{database}",
        registry,
        participants=3,
        items=2,
        name="other-study",
    )
    ambiguous = run_cli("results", "export")
    assert ambiguous.exit_code == 1
    assert "scale-study, other-study" in ambiguous.output
    assert "--experiment NAME" in ambiguous.output
    chosen = run_cli(
        "results", "export", "--experiment", "other-study", "--out", "other"
    )
    assert chosen.exit_code == 0, chosen.output
    assert len(pd.read_csv(tmp_path / "other" / "participants.csv")) == 3


def test_parquet_without_pyarrow_is_a_clear_error(
    run_cli: Callable[..., Result],
    small_study: SyntheticStudy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: object, **kwargs: object) -> object:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    result = run_cli(
        "results",
        "export",
        "--database-url",
        small_study.database_url,
        "--out",
        str(tmp_path / "p"),
        "--format",
        "parquet",
    )
    assert result.exit_code == 1
    assert "pip install 'caqe[parquet]'" in result.output
    assert "Traceback" not in result.output
