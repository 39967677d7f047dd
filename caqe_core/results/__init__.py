"""Results: export tables, exclusion rules, the analysis report and merging.

``StudyData`` is what a plugin's ``report_sections`` hook receives. The
``caqe results`` and ``caqe analyze`` commands live in
``caqe_core.results_cli``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from caqe_core.results.exclusions import ExclusionRules


@dataclass
class StudyData:
    """The exported tables of a study, the exclusions and the report's folder.

    Every table is a DataFrame with the columns of the export's data
    dictionary (``docs/results.md``). Times are timezone-aware UTC
    timestamps, and booleans and integers use pandas' nullable dtypes.
    """

    ratings: pd.DataFrame
    """One row per rating or judgement, from the test type's ``export_rows``."""
    participants: pd.DataFrame
    screening: pd.DataFrame
    surveys: pd.DataFrame
    events: pd.DataFrame
    hits: pd.DataFrame
    payments: pd.DataFrame
    conditions: pd.DataFrame
    stimuli: pd.DataFrame
    excluded: dict[str, list[str]]
    """Reasons by participant public id. It holds the core rules' exclusions
    when the hook is called; add a test type's post-screening with
    ``exclude``."""
    output_dir: Path
    """Folder next to the report where figures and tables are saved."""
    rules: ExclusionRules = field(default_factory=ExclusionRules)

    def exclude(self, participant: str, reason: str) -> None:
        """Exclude ``participant`` for ``reason``; the report lists every reason."""
        reasons = self.excluded.setdefault(participant, [])
        if reason not in reasons:
            reasons.append(reason)

    def is_excluded(self, participant: str) -> bool:
        return bool(self.excluded.get(participant))

    def included(self, table: pd.DataFrame) -> pd.DataFrame:
        """Return the rows of ``table`` whose participant is not excluded."""
        if table.empty or "participant" not in table.columns:
            return table
        mask = ~table["participant"].isin([p for p, r in self.excluded.items() if r])
        return table[mask.to_numpy(dtype=bool)]


from caqe_core.results.report import figure_html, table_html  # noqa: E402 (imports this package)

__all__ = ["ExclusionRules", "StudyData", "figure_html", "table_html"]
