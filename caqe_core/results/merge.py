"""Merge the exports of two CAQE servers that ran the same study.

Two exports belong to the same study when their manifests give the same
experiment name and config hash (a hash of the config and of every prepared
audio file). Rows that appear in both, such as a participant copied with a
database backup, are kept once: the first export's row wins, and every
duplicate and every conflicting duplicate is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from caqe_core.results.export import (
    CONFIG_FILE,
    ExportManifest,
    now_iso,
    read_export,
    write_export,
)
from caqe_core.results.tables import TABLE_NAMES, StudyTables, TableSchema, conform

logger = logging.getLogger(__name__)

KEYS: dict[str, tuple[str, ...]] = {
    "ratings": ("participant", "idempotency_key"),
    "participants": ("participant",),
    "screening": ("participant", "step", "attempt"),
    "surveys": ("participant", "survey", "question"),
    "events": ("participant", "trial", "sequence"),
    "hits": ("request_token",),
    "payments": ("request_token",),
    "conditions": ("condition",),
    "stimuli": ("condition", "stimulus"),
}
"""Columns that identify a row of each table across servers. A ratings key
identifies a trial (all its rows), not a single rating."""


class MergeError(ValueError):
    """Exports that cannot be merged, such as exports of different studies."""


@dataclass
class MergeResult:
    """What ``merge_exports`` wrote and which duplicates it found."""

    out_dir: Path
    rows: dict[str, int]
    duplicates: dict[str, int]
    """Rows (for ratings: trials) of the second export already in the first."""
    duplicate_participants: list[str]
    conflicts: list[str] = field(default_factory=list)
    """Duplicates whose content differs between the exports."""


def merge_exports(first: Path, second: Path, out_dir: Path) -> MergeResult:
    """Merge two export folders of one study into ``out_dir``."""
    manifest_a, tables_a = read_export(first)
    manifest_b, tables_b = read_export(second)
    _check_same_study(first, manifest_a, second, manifest_b)
    if out_dir.resolve() in (first.resolve(), second.resolve()):
        raise MergeError(f"--out {out_dir} is one of the inputs; choose a new folder.")

    schemas = {
        name: _merge_schema(tables_a.schemas[name], tables_b.schemas[name])
        for name in TABLE_NAMES
    }
    frames: dict[str, pd.DataFrame] = {}
    duplicates: dict[str, int] = {}
    conflicts: list[str] = []
    for name in TABLE_NAMES:
        a = conform(tables_a.frames[name], schemas[name])
        b = conform(tables_b.frames[name], schemas[name])
        merged, count, table_conflicts = _merge_table(name, a, b)
        frames[name] = merged
        duplicates[name] = count
        conflicts.extend(table_conflicts)
    frames["conditions"] = _recount_conditions(frames["conditions"], frames["ratings"])

    shared = set(tables_a.frames["participants"]["participant"]) & set(
        tables_b.frames["participants"]["participant"]
    )
    manifest = ExportManifest(
        experiment=manifest_a["experiment"],
        title=manifest_a.get("title", ""),
        test_type=manifest_a.get("test_type", ""),
        recruiter=manifest_a.get("recruiter", ""),
        config_hash=manifest_a["config_hash"],
        format=manifest_a["format"],
        tables={},
        exported_at=now_iso(),
        database="",
        merged_from=[_source(first, manifest_a), _source(second, manifest_b)],
    )
    config_text = (
        (first / CONFIG_FILE).read_text(encoding="utf-8")
        if (first / CONFIG_FILE).is_file()
        else ""
    )
    write_export(
        StudyTables(frames=frames, schemas=schemas),
        out_dir,
        manifest_a["format"],
        manifest,
        config_text,
    )
    logger.info(
        "Merged %s and %s into %s (%d duplicate participants)",
        first,
        second,
        out_dir,
        len(shared),
    )
    return MergeResult(
        out_dir=out_dir,
        rows={name: len(frame) for name, frame in frames.items()},
        duplicates=duplicates,
        duplicate_participants=sorted(shared),
        conflicts=conflicts,
    )


def _check_same_study(
    first: Path, manifest_a: dict[str, Any], second: Path, manifest_b: dict[str, Any]
) -> None:
    if manifest_a["experiment"] != manifest_b["experiment"]:
        raise MergeError(
            f"The exports are of different studies: {first} holds experiment "
            f"{manifest_a['experiment']!r} and {second} holds {manifest_b['experiment']!r}. "
            "Only exports of the same study can be merged."
        )
    if manifest_a["config_hash"] != manifest_b["config_hash"]:
        raise MergeError(
            f"The exports of experiment {manifest_a['experiment']!r} come from different "
            f"configs or audio: config hash {manifest_a['config_hash'][:12]}... in {first} and "
            f"{manifest_b['config_hash'][:12]}... in {second}. Only exports of the same "
            "study can be merged; analyse them separately."
        )


def _source(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "folder": str(folder.resolve()),
        "exported_at": manifest.get("exported_at", ""),
        "database": manifest.get("database", ""),
        "rows": {name: entry.get("rows") for name, entry in manifest["tables"].items()},
    }


def _merge_schema(a: TableSchema, b: TableSchema) -> TableSchema:
    """Return the union of two schemas; a column's kind must agree unless one side is empty."""
    columns = list(a.columns)
    for column in b.columns:
        existing = a.column(column.name)
        if existing is None:
            columns.append(column)
        elif existing.kind != column.kind:
            if existing.kind == "string":
                columns[columns.index(existing)] = column
            elif column.kind != "string":
                raise MergeError(
                    f"Column {a.name}.{column.name} is {existing.kind} in the first export "
                    f"but {column.kind} in the second. Export both with the same CAQE and "
                    "plugin versions."
                )
    return TableSchema(a.name, a.description or b.description, columns)


def _merge_table(
    name: str, a: pd.DataFrame, b: pd.DataFrame
) -> tuple[pd.DataFrame, int, list[str]]:
    keys = list(KEYS[name])
    if b.empty:
        return a, 0, []
    if a.empty:
        return b, 0, []
    key_a = _key_index(a, keys)
    key_b = _key_index(b, keys)
    seen = key_b.isin(set(key_a))
    conflicts: list[str] = []
    if seen.any() and name != "ratings":
        conflicts = _conflicts(name, a, b, key_a, key_b, seen)
    count = int(key_b[seen].nunique()) if name == "ratings" else int(seen.sum())
    merged = pd.concat([a, b[~seen.to_numpy()]], ignore_index=True)
    return merged, count, conflicts


def _key_index(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    parts = [
        frame[key].astype(object).where(frame[key].notna(), "").astype(str)
        for key in keys
    ]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + "\x1f" + part
    return joined.reset_index(drop=True)


def _conflicts(
    name: str,
    a: pd.DataFrame,
    b: pd.DataFrame,
    key_a: pd.Series,
    key_b: pd.Series,
    seen: pd.Series,
) -> list[str]:
    ignored = {"last_active_at", "updated_at", "completed"}
    compared = [column for column in a.columns if column not in ignored]
    rows_a = a.assign(_key=key_a.to_numpy()).set_index("_key")
    messages = []
    for index in seen[seen].index:
        key = key_b[index]
        row_b = b.iloc[index]
        row_a = rows_a.loc[key]
        if isinstance(row_a, pd.DataFrame):
            row_a = row_a.iloc[0]
        differing = [
            column
            for column in compared
            if not (pd.isna(row_a[column]) and pd.isna(row_b[column]))
            and str(row_a[column]) != str(row_b[column])
        ]
        if differing:
            shown = key.replace("\x1f", "/")
            messages.append(
                f"{name} {shown}: the exports differ in {', '.join(differing)}; the first "
                "export's row is kept."
            )
    return messages


def _recount_conditions(
    conditions: pd.DataFrame, ratings: pd.DataFrame
) -> pd.DataFrame:
    if conditions.empty:
        return conditions
    counts = ratings.drop_duplicates(["participant", "idempotency_key"])[
        "condition"
    ].value_counts()
    out = conditions.copy()
    out["completed"] = out["condition"].map(counts).fillna(0).astype("Int64")
    return out
