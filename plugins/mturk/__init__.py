"""Recruitment on Amazon Mechanical Turk: HITs, the worker's pages and payments.

``caqe mturk`` posts ExternalQuestion HITs that open the study. It approves
assignments and pays bonuses through a ledger that pays each worker once.
The ``mturk`` recruiter admits workers from MTurk's frame and sends them
back with MTurk's externalSubmit form. docs/mturk.md walks through a study.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caqe_mturk.commands import mturk_group
from caqe_mturk.config import MTurkConfig
from caqe_mturk.web import MTurkRecruiter, bp

from caqe_core import Recruiter, hookimpl

__version__ = "0.1.0"

__all__ = ["MTurkConfig", "MTurkRecruiter", "mturk_group"]


@hookimpl
def register_recruiters(register: Callable[[Recruiter], None]) -> None:
    register(MTurkRecruiter())


@hookimpl
def register_routes(app: Any) -> None:
    app.register_blueprint(bp)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(mturk_group)
