"""HTML building blocks of the analysis report and the page template.

``figure_html`` and ``table_html`` are public so that a plugin's
``report_sections`` hook can build self-contained section HTML the same way
the core does.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import numbers
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup, escape
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

PNG_DPI = 150


def figure_png(figure: Figure) -> bytes:
    """Render a Matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
    return buffer.getvalue()


def figure_html(figure: Figure, alt: str, caption: str | None = None) -> Markup:
    """Return a ``<figure>`` with the figure embedded as a base64 PNG data URI."""
    return png_html(figure_png(figure), alt, caption)


def png_html(png: bytes, alt: str, caption: str | None = None) -> Markup:
    """Return a ``<figure>`` with PNG bytes embedded as a base64 data URI."""
    encoded = base64.b64encode(png).decode("ascii")
    caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Markup(
        f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'
        f"{caption_html}</figure>"
    )


def table_html(
    frame: pd.DataFrame, digits: int = 2, index: bool | None = None
) -> Markup:
    """Return ``frame`` as an escaped HTML table with floats rounded to ``digits``.

    The index is shown when ``index`` is True, or when it is None and the
    index is not the default 0, 1, 2, ...
    """
    if index is None:
        index = (
            not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None
        )
    header_cells = []
    if index:
        header_cells.append(f"<th>{escape(_index_title(frame))}</th>")
    header_cells += [f"<th>{escape(str(column))}</th>" for column in frame.columns]
    body = []
    for label, row in zip(frame.index, frame.itertuples(index=False, name=None)):
        cells = []
        if index:
            cells.append(f"<th scope='row'>{escape(_format_cell(label, digits))}</th>")
        cells += [
            f"<td class='{_cell_class(value)}'>{escape(_format_cell(value, digits))}</td>"
            for value in row
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return Markup(
        "<table class='caqe-table'><thead><tr>"
        + "".join(header_cells)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _index_title(frame: pd.DataFrame) -> str:
    names = [name for name in frame.index.names if name is not None]
    return " / ".join(str(name) for name in names)


def _cell_class(value: Any) -> str:
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, np.bool_)):
        return "number"
    return "text"


def _format_cell(value: Any, digits: int) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, tuple):
        return " / ".join(_format_cell(part, digits) for part in value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def save_figure(figure: Figure, folder: Path, stem: str) -> list[Path]:
    """Save a figure as PNG and SVG in ``folder`` and return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    svg = folder / f"{stem}.svg"
    figure.savefig(png, format="png", dpi=PNG_DPI, bbox_inches="tight")
    figure.savefig(svg, format="svg", bbox_inches="tight")
    return [png, svg]


def save_table(table: Any, folder: Path, stem: str) -> Path:
    """Save a DataFrame (or anything ``pandas.DataFrame`` accepts) as CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    path = folder / f"{stem}.csv"
    keep_index = (
        not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None
    )
    frame.to_csv(path, index=keep_index, lineterminator="\n")
    return path


def slug(text: str) -> str:
    """Return a lowercase HTML id made of ``text``'s letters and digits."""
    value = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return value or "section"


def file_stem(text: str) -> str:
    """Return ``text`` with every character unsafe in a file name replaced by ``-``."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
    return value or "unnamed"


def render_page(context: dict[str, Any]) -> str:
    """Render the report page from ``report_template.html``."""
    source = (
        resources.files("caqe_core.results")
        .joinpath("report_template.html")
        .read_text(encoding="utf-8")
    )
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(source).render(**context)
