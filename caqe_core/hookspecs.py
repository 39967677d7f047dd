"""Hook specifications: every point where a plugin extends CAQE.

Built-in and third-party plugins implement these hooks with
``caqe_core.hookimpl`` and are loaded from the ``caqe`` entry-point group.
docs/plugins.md documents each hook with an example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("caqe")
hookimpl = pluggy.HookimplMarker("caqe")


@hookspec
def register_test_types(register: Callable[[Any], None]) -> None:
    """Register test types (MUSHRA, pairwise comparison, ...).

    Called once, when the plugin manager is built. ``register`` takes one
    ``caqe_core.TestType`` instance; call it once per test type. Return
    nothing. A test type's ``name`` is its config section and the value of
    the config's ``test_type`` key.
    """


@hookspec
def register_recruiters(register: Callable[[Any], None]) -> None:
    """Register recruitment backends (lab, MTurk, ...).

    Called once, when the plugin manager is built. ``register`` takes one
    ``caqe_core.Recruiter`` instance; call it once per recruiter. Return
    nothing. A recruiter's ``name`` is its config section and the value of
    the config's ``recruiter`` key.
    """


@hookspec
def register_flow_steps(register: Callable[[Any], None]) -> None:
    """Register participant-flow steps such as a hearing screening.

    Called once, when the plugin manager is built. ``register`` takes one
    ``caqe_core.FlowStep`` instance. A config lists the step by its ``name``
    in ``flow.steps``, and configures it in a top-level section of that name.
    Return nothing.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``caqe`` command line.

    Called once, after the core commands exist and before the command line is
    parsed. ``cli`` is the root ``click.Group``; add commands or groups with
    ``cli.add_command``. Return nothing.
    """


@hookspec
def register_routes(app: Any) -> None:
    """Add web routes to the Flask app.

    Called once by the app factory, after the core blueprints are registered.
    ``app`` is the ``flask.Flask`` application; register blueprints on it.
    ``caqe_core.web.current_study()`` gives the study inside a request.
    Return nothing.
    """


@hookspec
def participant_started(participant: Any, experiment: Any, session: Any) -> None:
    """React to a new participant.

    Called after a participant row is created and committed. ``participant``
    is the ``caqe_core.models.Participant``, ``experiment`` its
    ``Experiment`` and ``session`` an open SQLAlchemy session the plugin may
    use (the caller commits it afterwards). Return nothing.
    """


@hookspec
def trial_stored(trial: Any, participant: Any, experiment: Any, session: Any) -> None:
    """React to a trial response that was validated and stored.

    Called once per accepted response, after its transaction committed, and
    never for a replayed submission. ``trial`` is the stored
    ``caqe_core.models.Trial``; the caller commits ``session`` afterwards.
    Return nothing.
    """


@hookspec
def participant_finished(participant: Any, experiment: Any, session: Any) -> None:
    """React to a participant who reached the completion step.

    Called once per participant, after the status change committed.
    ``participant.status`` is ``completed``, ``screened_out`` or ``no_work``
    (the study was full when they reached the trials); the caller commits
    ``session`` afterwards. Return nothing.
    """


@hookspec
def report_sections(study: Any, data: Any) -> list[Any] | None:
    """Contribute sections to the analysis report.

    Called by ``caqe analyze`` once per report. ``study`` is the
    ``caqe_core.study.Study`` (config and experiment row) and ``data`` the
    ``caqe_core.results.StudyData`` with the exported tables and the
    participants excluded so far. Return a list of
    ``caqe_core.ReportSection``, or None when the plugin has nothing to add.
    """


@hookspec
def ratings_frame(study: Any, trials: list[Any]) -> Any | None:
    """Return the ratings rows of a batch of stored trials as one DataFrame.

    Called by ``caqe results export`` and ``caqe analyze`` once per batch of
    up to 1,000 trials, in export order. ``study`` is the
    ``caqe_core.study.Study`` and ``trials`` a list of the mappings that
    ``TestType.export_rows`` receives. Their ``plan`` and ``response`` are
    decoded on first use, and ``plan_json`` and ``response_json`` are the
    stored JSON texts, for a plugin that parses a whole batch at once. Return
    a ``pandas.DataFrame`` with the rows and columns that ``export_rows``
    returns for these trials, indexed by the position of each row's trial in
    ``trials`` (non-decreasing), or None to let the core call ``export_rows``
    once per trial. At most one plugin may return a DataFrame for a batch.
    """


@hookspec
def participant_consistency(study: Any, session: Any) -> dict[int, float] | None:
    """Return each participant's response consistency in [0, 1].

    Called through ``caqe_core.services.participant_consistency``, which
    merges the results of every implementation, by recruiters that pay a
    consistency bonus such as ``caqe mturk give-pairwise-consistency-bonus``.
    ``study`` is the ``caqe_core.study.Study`` and ``session`` an open
    SQLAlchemy session. Return a dict from participant id to consistency,
    or None when the plugin does not score this study's test type.
    """
