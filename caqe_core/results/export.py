"""Write a study's tables as CSV, JSON or Parquet, and read an export back.

An export folder contains one file per table, ``data_dictionary.csv`` and
``data_dictionary.md`` (every column of every table), ``config.yaml`` (the
config as written) and ``manifest.json`` (experiment, config hash, format,
row counts). CSV files read into pandas and R with no options: no index
column, ISO 8601 UTC times ending in ``Z``, booleans as ``true``/``false``,
missing values as empty fields, amounts as decimal strings.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from caqe_core import __version__
from caqe_core.models import Experiment
from caqe_core.results.tables import (
    KINDS,
    TABLE_NAMES,
    Column,
    StudyTables,
    TableSchema,
    cast,
)
from caqe_core.study import Study

logger = logging.getLogger(__name__)

FORMATS = ("csv", "json", "parquet")
MANIFEST = "manifest.json"
DICTIONARY_CSV = "data_dictionary.csv"
DICTIONARY_MD = "data_dictionary.md"
CONFIG_FILE = "config.yaml"
MANIFEST_VERSION = 1

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

KIND_DESCRIPTIONS = {
    "string": "text",
    "integer": "whole number",
    "float": "number",
    "boolean": "true or false",
    "datetime": "ISO 8601 time in UTC, such as 2024-05-01T12:30:00.000000Z",
    "decimal": "exact decimal number written as text, such as 1.50",
    "json": "JSON document written as text",
}


class ExportFormatError(ValueError):
    """An export folder that cannot be read, or a format that cannot be written."""


@dataclass
class ExportManifest:
    """Contents of an export's ``manifest.json``."""

    experiment: str
    title: str
    test_type: str
    recruiter: str
    config_hash: str
    format: str
    tables: dict[str, dict[str, Any]]
    caqe_version: str = __version__
    exported_at: str = ""
    database: str = ""
    merged_from: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "manifest_version": MANIFEST_VERSION,
            "experiment": self.experiment,
            "title": self.title,
            "test_type": self.test_type,
            "recruiter": self.recruiter,
            "config_hash": self.config_hash,
            "format": self.format,
            "caqe_version": self.caqe_version,
            "exported_at": self.exported_at,
            "database": self.database,
            "python": platform.python_version(),
            "tables": self.tables,
        }
        if self.merged_from is not None:
            data["merged_from"] = self.merged_from
        return data


def experiment_manifest(
    session: Session, study: Study, fmt: str, database: str
) -> ExportManifest:
    """Return the manifest of an export of ``study`` (tables filled in on writing)."""
    experiment = session.scalar(
        select(Experiment).where(Experiment.id == study.experiment_id)
    )
    if experiment is None:
        raise LookupError(f"Experiment {study.name!r} is not in the database.")
    return ExportManifest(
        experiment=experiment.name,
        title=experiment.title,
        test_type=experiment.test_type,
        recruiter=experiment.recruiter,
        config_hash=experiment.config_hash,
        format=fmt,
        tables={},
        exported_at=now_iso(),
        database=database,
    )


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


def write_export(
    tables: StudyTables,
    out_dir: Path,
    fmt: str,
    manifest: ExportManifest,
    config_text: str,
) -> list[Path]:
    """Write every table, the data dictionary, the config and the manifest.

    Return the written paths. Raise ``ExportFormatError`` for an unknown
    format, or for Parquet without pyarrow installed.
    """
    if fmt not in FORMATS:
        raise ExportFormatError(
            f"Unknown export format {fmt!r}. Choose one of: {', '.join(FORMATS)}."
        )
    if fmt == "parquet":
        require_pyarrow()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    manifest.format = fmt
    manifest.tables = {}
    for name in TABLE_NAMES:
        frame = tables.frames[name]
        schema = tables.schemas[name]
        path = out_dir / f"{name}.{fmt}"
        write_table(frame, schema, path, fmt)
        written.append(path)
        manifest.tables[name] = {"file": path.name, "rows": len(frame)}
        logger.debug("Wrote %d rows to %s", len(frame), path)

    written.extend(write_dictionary(tables.schemas, out_dir))
    config_path = out_dir / CONFIG_FILE
    config_path.write_text(config_text, encoding="utf-8")
    written.append(config_path)
    manifest_path = out_dir / MANIFEST
    manifest_path.write_text(
        json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    written.append(manifest_path)
    return written


def require_pyarrow() -> None:
    """Raise ``ExportFormatError`` with the install command when pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ExportFormatError(
            "Parquet needs pyarrow, which is not installed. Install it with "
            "pip install 'caqe[parquet]', or export as CSV or JSON."
        ) from None


def write_table(frame: pd.DataFrame, schema: TableSchema, path: Path, fmt: str) -> None:
    """Write one table in ``fmt``."""
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
        return
    text = _text_form(frame, schema)
    if fmt == "csv":
        text.to_csv(path, index=False, na_rep="", lineterminator="\n", encoding="utf-8")
        return
    _write_json_records(text, schema, path)


def _text_form(frame: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Return a copy with times as ISO strings and booleans as true/false."""
    out = frame.copy()
    for column in schema.columns:
        values = out[column.name]
        if column.kind == "datetime":
            out[column.name] = (
                values.dt.strftime(TIME_FORMAT)
                .astype(object)
                .where(values.notna(), None)
            )
        elif column.kind == "boolean":
            out[column.name] = values.map({True: "true", False: "false"}).astype(object)
    return out


def _write_json_records(text: pd.DataFrame, schema: TableSchema, path: Path) -> None:
    """Write a JSON array of row objects; floats keep every digit (``repr``)."""
    kinds = [column.kind for column in schema.columns]
    names = [column.name for column in schema.columns]
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for index, row in enumerate(text.itertuples(index=False, name=None)):
            record = {
                name: _json_value(value, kind)
                for name, value, kind in zip(names, row, kinds)
            }
            handle.write(",\n" if index else "\n")
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False))
        handle.write("\n]\n")


def _json_value(value: Any, kind: str) -> Any:
    if value is None or value is pd.NA:
        return None
    if kind == "boolean":
        return value == "true"
    if kind == "integer":
        return int(value)
    if kind == "float":
        number = float(value)
        return None if math.isnan(number) else number
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def write_dictionary(schemas: dict[str, TableSchema], out_dir: Path) -> list[Path]:
    """Write the data dictionary as CSV and as Markdown."""
    rows = [
        {
            "table": name,
            "column": column.name,
            "kind": column.kind,
            "description": column.description,
        }
        for name in TABLE_NAMES
        for column in schemas[name].columns
    ]
    csv_path = out_dir / DICTIONARY_CSV
    pd.DataFrame(rows, columns=["table", "column", "kind", "description"]).to_csv(
        csv_path, index=False, lineterminator="\n"
    )

    lines = [
        "# Data dictionary",
        "",
        "Column kinds:",
        "",
        *[f"- `{kind}`: {KIND_DESCRIPTIONS[kind]}" for kind in KINDS],
        "",
        "An empty field is a missing value.",
    ]
    for name in TABLE_NAMES:
        schema = schemas[name]
        lines += ["", f"## {name}", "", schema.description, ""]
        lines += ["| column | kind | description |", "| --- | --- | --- |"]
        for column in schema.columns:
            description = column.description.replace("|", "\\|")
            lines.append(f"| `{column.name}` | {column.kind} | {description} |")
    md_path = out_dir / DICTIONARY_MD
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [csv_path, md_path]


# --- reading an export back -----------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """Return the manifest of an export folder."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ExportFormatError(
            f"{folder} is not a CAQE export: {MANIFEST} is missing. Give the folder "
            "that 'caqe results export' wrote."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ExportFormatError(f"{path} is not valid JSON: {error}") from None
    for key in ("experiment", "config_hash", "format", "tables"):
        if key not in manifest:
            raise ExportFormatError(
                f"{path} lacks the key {key!r}; re-export the study."
            )
    return manifest


def read_schemas(folder: Path) -> dict[str, TableSchema]:
    """Return the table schemas recorded in an export's data dictionary."""
    path = folder / DICTIONARY_CSV
    if not path.is_file():
        raise ExportFormatError(f"{path} is missing; re-export the study.")
    dictionary = pd.read_csv(path, dtype=str, keep_default_na=False)
    schemas: dict[str, TableSchema] = {}
    for row in dictionary.itertuples(index=False):
        if row.kind not in KINDS:
            raise ExportFormatError(
                f"{path}: column {row.table}.{row.column} has the unknown kind {row.kind!r}."
            )
        schema = schemas.setdefault(row.table, TableSchema(row.table, ""))
        schema.columns.append(Column(row.column, row.kind, row.description))
    return schemas


def read_export(folder: Path) -> tuple[dict[str, Any], StudyTables]:
    """Read an export folder back into typed tables."""
    manifest = read_manifest(folder)
    schemas = read_schemas(folder)
    fmt = manifest["format"]
    if fmt not in FORMATS:
        raise ExportFormatError(f"{folder / MANIFEST}: unknown format {fmt!r}.")
    frames = {}
    for name in TABLE_NAMES:
        entry = manifest["tables"].get(name)
        if entry is None or name not in schemas:
            raise ExportFormatError(
                f"{folder} has no table {name!r}; re-export the study."
            )
        frames[name] = read_table(folder / entry["file"], schemas[name], fmt)
    return manifest, StudyTables(frames=frames, schemas=schemas)


def read_table(path: Path, schema: TableSchema, fmt: str) -> pd.DataFrame:
    """Read one exported table and give its columns the schema's dtypes."""
    if fmt == "parquet":
        require_pyarrow()
        raw = pd.read_parquet(path)
    elif fmt == "csv":
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    else:
        raw = pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    missing = [
        column.name for column in schema.columns if column.name not in raw.columns
    ]
    if missing and len(raw):
        raise ExportFormatError(f"{path} lacks the columns {', '.join(missing)}.")
    out = {}
    for column in schema.columns:
        values = (
            raw[column.name]
            if column.name in raw.columns
            else pd.Series([], dtype=object)
        )
        if column.kind == "boolean" and fmt == "csv":
            values = values.map({"true": True, "false": False}, na_action="ignore")
        out[column.name] = cast(
            values.astype(object).where(values.notna(), None), column.kind
        )
    return pd.DataFrame(out, index=pd.RangeIndex(len(raw)))
