"""The classes a plugin subclasses or receives: test types, recruiters, steps."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from flask import Response
    from sqlalchemy.orm import Session

    from caqe_core.config import StudyConfig
    from caqe_core.models import Participant


class ResponseError(ValueError):
    """A trial response or form that fails validation.

    ``field`` names the offending field with a dotted path, for example
    ``ratings.s3``; the participant API returns it in the JSON error.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StudyDefinitionError(ValueError):
    """A config that is well-formed but describes an impossible study.

    ``key`` is the dotted config path (``mushra.items[2].systems``) so the
    error can be reported with its file and line.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass
class StimulusSpec:
    """One audio signal of a condition, as a test type defines it."""

    key: str
    """Name unique within the condition, usually the system's name."""
    role: str
    """Kind of signal, such as ``reference``, ``hidden_reference``,
    ``anchor`` or ``system``. A test type may define more roles."""
    path: Path
    """The audio file, from the config or generated at preparation."""
    config_key: str | None = None
    """Dotted config path of the value that named the file, for errors."""


@dataclass
class ConditionSpec:
    """One assignable unit of a study, such as a MUSHRA page or a set of pairs."""

    key: str
    """Identifier unique within the study and stable across runs."""
    item: str
    stimuli: list[StimulusSpec]
    scale: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable data the test type needs to build the page."""
    config_key: str | None = None


@dataclass
class StimulusView:
    """A prepared stimulus as stored in the database."""

    id: int
    key: str
    role: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class ConditionView:
    """A condition as stored in the database, with its stimuli by key."""

    id: int
    key: str
    item: str
    scale: str | None
    data: dict[str, Any]
    stimuli: dict[str, StimulusView]


@dataclass
class PrepareContext:
    """Input of ``TestType.build_conditions``."""

    config: StudyConfig
    section: Any
    """The test type's validated config section (its ``config_model``)."""
    generated_dir: Path
    """Folder for files the test type generates, such as anchors."""

    def resolve_audio(self, value: str | Path) -> Path:
        """Resolve a config's audio path against ``audio_root``."""
        return self.config.resolve_audio(value)


@dataclass
class TrialPage:
    """Everything a test type needs to render one trial page."""

    condition: ConditionView
    plan: dict[str, Any]
    """The plan ``TestType.plan_trial`` returned for this participant."""
    signal_urls: dict[str, str]
    """Opaque audio URL for each signal id of the plan."""
    submit_url: str
    csrf_token: str
    position: int
    """Zero-based position of this page among the participant's pages."""
    total: int
    section: Any
    study_title: str
    training: bool = False
    continue_url: str | None = None
    """For training pages: where the form that ends training posts."""
    audio_url: Any = None
    """Callable taking a path to an extra file (a training example) and a
    role, returning an opaque URL; the core commits after the page renders."""


@dataclass
class StepPage:
    """Input of a flow step's ``render`` and ``submit``."""

    participant: Participant
    section: Any
    """The step's validated config section, or None if it has no model."""
    config: StudyConfig
    submit_url: str
    csrf_token: str
    attempt: int
    """How many times this participant submitted this step before."""
    audio_url: Any
    """Callable taking a path to a generated file, returning an opaque URL."""
    session: Session


@dataclass
class StepOutcome:
    """The result of a step submission."""

    done: bool
    """True moves the participant to the next step."""
    passed: bool | None = None
    """For screening steps: the verdict, stored with ``data``."""
    data: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    """Per-field messages to show when ``done`` is False."""
    end_session: bool = False
    """True ends the participant's session (screened out)."""
    flag: str | None = None
    """A quality flag to put on the participant, such as ``hearing``."""


@dataclass
class CompletionPage:
    """Input of ``Recruiter.render_completion``."""

    participant: Participant
    section: Any
    config: StudyConfig
    completed: bool
    """False when the participant was screened out or no work was left."""
    reason: str | None
    session: Session


@dataclass
class ReportSection:
    """A titled part of the analysis report."""

    title: str
    html: str
    """Self-contained HTML (figures embedded as data URIs)."""
    tables: dict[str, Any] = field(default_factory=dict)
    """Tables to save as CSV next to the report, by file stem."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Matplotlib figures to save as PNG and SVG, by file stem."""


class TestType:
    """Base class of a test type plugin.

    Subclasses set the class attributes and implement the methods that raise
    ``NotImplementedError``.
    """

    __test__ = False  # keeps pytest from collecting this class

    name: ClassVar[str]
    title: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    event_types: ClassVar[frozenset[str]] = frozenset(
        {"play", "stop", "switch", "loop", "seek", "loop-set"}
    )

    def demo_config(self) -> Path | None:
        """Return the path of a demo config served by ``caqe run --plugin NAME``."""
        return None

    def build_conditions(self, context: PrepareContext) -> list[ConditionSpec]:
        """Turn the validated config section into conditions.

        Raise ``StudyDefinitionError`` for a config that cannot make a study.
        """
        raise NotImplementedError

    def plan_trial(
        self, condition: ConditionView, rng: random.Random, participant_sequence: int
    ) -> dict[str, Any]:
        """Randomise one participant's page for ``condition``.

        ``rng`` is seeded by the study seed, the participant and the
        condition. ``participant_sequence`` is the participant's arrival
        index (0, 1, ...), for designs counterbalanced across participants.

        Return a JSON-serialisable dict with at least ``signals``: a list of
        ``{"id": ..., "stimulus": ...}`` where ``id`` is the opaque label
        the page uses and ``stimulus`` a stimulus key of the condition.
        """
        raise NotImplementedError

    def render_trial(self, page: TrialPage) -> str:
        """Return the HTML of a trial page."""
        raise NotImplementedError

    def validate_response(self, page: TrialPage, response: Any) -> dict[str, Any]:
        """Check a posted response and return the cleaned value to store.

        Raise ``ResponseError`` naming the field for any invalid value.
        """
        raise NotImplementedError

    def has_training(self, section: Any) -> bool:
        """Return True when the study's config enables a training page."""
        return False

    def render_training(self, page: TrialPage) -> str:
        """Return the HTML of the training page (called when ``has_training``)."""
        raise NotImplementedError

    def export_rows(self, trial: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Turn one stored trial into tidy rows (one per rating or judgement).

        ``trial`` has ``participant``, ``condition`` (a ``ConditionView``),
        ``plan``, ``response``, ``started_at`` and ``completed_at``, and
        also ``trial``, ``position``, ``time_on_page_ms`` and the stored
        JSON texts ``plan_json`` and ``response_json``.
        """
        raise NotImplementedError


class Recruiter:
    """Base class of a recruitment backend plugin."""

    name: ClassVar[str]
    title: ClassVar[str]
    config_model: ClassVar[type[BaseModel] | None] = None
    entry_endpoint: ClassVar[str]
    """Flask endpoint of the page where participants arrive; ``/`` redirects
    there."""

    def render_completion(self, page: CompletionPage) -> str | Response:
        """Return the page that ends a session."""
        raise NotImplementedError

    def skip_step(
        self, participant: Participant, step: str, session: Session, config: StudyConfig
    ) -> bool:
        """Return True to skip a one-time step, for example for a returning worker."""
        return False


class FlowStep:
    """Base class of a participant-flow step such as a screening test."""

    name: ClassVar[str]
    title: ClassVar[str]
    config_model: ClassVar[type[BaseModel] | None] = None
    one_time: ClassVar[bool] = False
    """True for steps a returning participant may skip (consent, surveys)."""

    def render(
        self,
        page: StepPage,
        values: Mapping[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> str:
        """Return the step's page; ``values`` and ``errors`` refill a rejected form."""
        raise NotImplementedError

    def submit(self, page: StepPage, form: Mapping[str, Any]) -> StepOutcome:
        raise NotImplementedError

    def prepare(self, section: Any, config: StudyConfig, generated_dir: Path) -> None:
        """Generate the step's files (tones, test signals) before serving."""
