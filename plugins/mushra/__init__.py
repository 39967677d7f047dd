"""CAQE's built-in mushra plugin.

The MUSHRA test type of ITU-R BS.1534-3: an open reference, a hidden
reference, 3.5 kHz and 7 kHz low-pass anchors generated from the reference,
and up to 12 rated signals per page on continuous 0-100 sliders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint

from caqe_core import TestType, hookimpl

from .plugin import MushraTestType

__version__ = "0.1.0"

bp = Blueprint(
    "mushra",
    __name__,
    static_folder="static",
    static_url_path="/mushra-static",
    template_folder="templates",
)


@hookimpl
def register_test_types(register: Callable[[TestType], None]) -> None:
    register(MushraTestType())


@hookimpl
def register_routes(app: Any) -> None:
    app.register_blueprint(bp)


@hookimpl
def report_sections(study: Any, data: Any) -> list[Any] | None:
    if study.config.core.test_type != MushraTestType.name:
        return None
    from .report import sections_for_study

    return sections_for_study(study, data)
