"""Study configuration: YAML into a validated, typed model.

Every error names the file, the line, the dotted key, the bad value and a fix.
Plugin sections (the test type's, the recruiter's, each step's) are validated
with the model the plugin registered.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from caqe_core.plugins import Registry
from caqe_core.screening.inclusion import CriterionError, QuestionInfo, check_criterion

DEMO_AUDIO_ROOT = "caqe:demo"

CORE_STEPS = ("consent", "pre_survey", "training", "trials", "post_survey")
"""Steps the core provides; plugins add screening steps."""


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


EXPERIMENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class ExperimentConfig(Strict):
    name: str
    """Identifier of the study in the database: lowercase letters, digits, _ and -."""
    title: str
    description: str = ""
    """Markdown shown on the landing page."""
    seed: int = 0
    """Seed of the per-participant randomisation, for reproducible designs."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not EXPERIMENT_NAME.fullmatch(name):
            raise ValueError(
                "must be at most 63 characters of lowercase letters, digits, '_' and "
                "'-', starting with a letter or digit, such as 'codec-mushra-2024'"
            )
        return name


class AssignmentConfig(Strict):
    conditions_per_participant: int = Field(default=4, ge=1, le=500)
    trials_per_condition: int = Field(default=20, ge=1, le=100_000)
    """Target number of completed trials for each condition."""
    condition_targets: dict[str, Annotated[int, Field(ge=0, le=100_000)]] = Field(
        default_factory=dict
    )
    """Per-condition targets by condition key, overriding the default."""
    reservation_minutes: float = Field(default=60, gt=0, le=7 * 24 * 60)
    """After this long an unfinished reservation expires and is reclaimed."""


class AudioConfig(Strict):
    root: str = "."
    """Folder of the audio files, relative to the config file; ``caqe:demo``
    names the demo music shipped with CAQE."""
    sample_rate: int | None = Field(default=None, ge=8000, le=192000)
    """When set, every stimulus must have this sample rate."""
    max_channels: int = Field(default=2, ge=1, le=2)
    length_tolerance_ms: float = Field(default=0, ge=0, le=1000)
    """Allowed length difference between the stimuli of one trial."""
    allow_clipping: bool = False
    serve_format: Literal["wav", "flac"] = "wav"
    """Format of the served copies. WAV gives every stimulus of a trial the
    same file size; FLAC halves the bytes, but its sizes follow the content
    and can reveal a low-pass anchor to a listener who reads file sizes."""


class FlowConfig(Strict):
    steps: list[str] = Field(
        default_factory=lambda: [
            "consent",
            "pre_survey",
            "training",
            "trials",
            "post_survey",
        ]
    )

    @field_validator("steps")
    @classmethod
    def _each_step_once(cls, steps: list[str]) -> list[str]:
        # Whether 'trials' is present is checked with the step names, so that
        # a misspelled 'trials' gets a did-you-mean hint.
        twice = sorted({step for step in steps if steps.count(step) > 1})
        if twice:
            names = ", ".join(map(repr, twice))
            raise ValueError(f"lists {names} twice; list each step once")
        return steps


class ConsentConfig(Strict):
    text: str = (
        "You are invited to take part in a listening test. You will listen to "
        "short audio excerpts over headphones and judge how they sound. Taking part "
        "is voluntary and you may stop at any time. Your answers are stored "
        "without your name.\n\nBy continuing you confirm that you are at least 18 "
        "years old and agree to take part."
    )
    """Markdown."""
    agree_label: str = "I agree"


CHOICE_TYPES = ("single", "multiple", "likert")


class SurveyQuestion(Strict):
    id: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    type: Literal["single", "multiple", "number", "text", "likert"]
    text: str
    required: bool = True
    options: list[str] = Field(default_factory=list)
    """Choices of single, multiple and likert questions."""
    min: float | None = None
    max: float | None = None
    integer: bool = False
    """For number questions: accept whole numbers only."""
    max_length: int = Field(default=2000, ge=1, le=20000)

    @model_validator(mode="after")
    def _check_type_fields(self) -> SurveyQuestion:
        if self.type in CHOICE_TYPES:
            if len(self.options) < 2:
                raise ValueError(
                    f"question {self.id!r} of type {self.type!r} needs at least two "
                    "options; list them under 'options'"
                )
            twice = sorted(
                {option for option in self.options if self.options.count(option) > 1}
            )
            if twice:
                raise ValueError(
                    f"question {self.id!r} lists the options {twice} twice"
                )
        elif self.options:
            raise ValueError(
                f"question {self.id!r} of type {self.type!r} takes no options; remove "
                "'options' or make it single, multiple or likert"
            )
        if self.type != "number" and (self.min is not None or self.max is not None):
            raise ValueError(
                f"question {self.id!r}: min and max apply to number questions only"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"question {self.id!r} has min {self.min:g} above max {self.max:g}"
            )
        return self


def _default_pre_survey() -> list[SurveyQuestion]:
    return [
        SurveyQuestion(
            id="age",
            type="number",
            text="Your age in years",
            min=18,
            max=120,
            integer=True,
        ),
        SurveyQuestion(
            id="hearing_disorder",
            type="single",
            text="Do you have a known hearing disorder?",
            options=["no", "yes"],
        ),
    ]


def _default_post_survey() -> list[SurveyQuestion]:
    return [
        SurveyQuestion(
            id="gender",
            type="single",
            text="Gender",
            options=["female", "male", "non-binary", "prefer not to say"],
            required=False,
        ),
        SurveyQuestion(
            id="country",
            type="text",
            text="Country you live in",
            required=False,
            max_length=100,
        ),
        SurveyQuestion(
            id="listening_device",
            type="single",
            text="What did you listen with?",
            options=[
                "closed headphones",
                "open headphones",
                "earbuds",
                "loudspeakers",
                "other",
            ],
        ),
        SurveyQuestion(
            id="critical_listening",
            type="likert",
            text="How much experience do you have with critical listening?",
            options=["none", "a little", "some", "much", "professional"],
        ),
        SurveyQuestion(
            id="environment_noise",
            type="likert",
            text="How noisy was your environment?",
            options=["silent", "quiet", "some noise", "noisy", "very noisy"],
        ),
        SurveyQuestion(id="comments", type="text", text="Comments", required=False),
    ]


class SurveysConfig(Strict):
    pre: list[SurveyQuestion] = Field(default_factory=_default_pre_survey)
    post: list[SurveyQuestion] = Field(default_factory=_default_post_survey)
    inclusion: list[str] = Field(default_factory=list)
    """Criteria over pre-survey answers, such as ``age >= 18``; a participant
    who fails one is screened out. See caqe_core/screening/inclusion.py."""

    @model_validator(mode="after")
    def _check_ids_and_criteria(self) -> SurveysConfig:
        problems: list[InitErrorDetails] = []
        for survey in ("pre", "post"):
            questions: list[SurveyQuestion] = getattr(self, survey)
            seen: set[str] = set()
            for index, question in enumerate(questions):
                if question.id in seen:
                    problems.append(
                        _custom_error(
                            (survey, index, "id"),
                            question.id,
                            f"the {survey}-survey lists question id {question.id!r} twice; "
                            "give each question its own id",
                        )
                    )
                seen.add(question.id)
        infos = {
            question.id: QuestionInfo(question.type, tuple(question.options))
            for question in self.pre
        }
        for index, criterion in enumerate(self.inclusion):
            try:
                check_criterion(criterion, infos)
            except CriterionError as error:
                problems.append(
                    _custom_error(("inclusion", index), criterion, str(error))
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def _custom_error(loc: tuple[Any, ...], value: Any, message: str) -> InitErrorDetails:
    """One located validation error, for validators that check several items."""
    return InitErrorDetails(
        type=PydanticCustomError("invalid_item", "{message}", {"message": message}),
        loc=loc,
        input=value,
    )


_CSP_SCHEME = r"[a-z][a-z0-9+.\-]*"
_CSP_HOST = r"(?:\*|(?:\*\.)?[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.?)"
_CSP_PORT = r"(?:[0-9]+|\*)"
_CSP_PATH = r"/[a-z0-9\-._~%!$&()*+=:@/]*"
CSP_ANCESTOR_SOURCE = re.compile(
    rf"'self'|'none'|{_CSP_SCHEME}:"
    rf"|(?:{_CSP_SCHEME}://)?{_CSP_HOST}(?::{_CSP_PORT})?(?:{_CSP_PATH})?",
    re.IGNORECASE,
)
"""Pattern of one source of the CSP frame-ancestors directive: 'self', 'none',
a scheme-source or a host-source, as MDN's frame-ancestors reference lists
them. Whitespace, ';' and ',' never match, so a value cannot end the
directive or start another header line."""


class WebConfig(Strict):
    frame_ancestors: list[str] = Field(
        default_factory=lambda: [
            "'self'",
            "https://worker.mturk.com",
            "https://workersandbox.mturk.com",
            "https://www.mturk.com",
        ]
    )
    """Origins allowed to frame participant pages (CSP frame-ancestors)."""

    @model_validator(mode="after")
    def _check_frame_ancestors(self) -> WebConfig:
        problems: list[InitErrorDetails] = []
        for index, source in enumerate(self.frame_ancestors):
            message = _frame_ancestor_problem(source, len(self.frame_ancestors))
            if message is not None:
                problems.append(
                    _custom_error(("frame_ancestors", index), source, message)
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def _frame_ancestor_problem(source: str, count: int) -> str | None:
    """Return why ``source`` is not a CSP frame-ancestors source, or None."""
    if source.lower() in ("self", "none"):
        return (
            f"a bare {source} is read as a host name, so write the keyword in single "
            f"quotes, as \"'{source.lower()}'\" in YAML"
        )
    if not CSP_ANCESTOR_SOURCE.fullmatch(source):
        return (
            "not a Content-Security-Policy frame-ancestors source. Use 'self', "
            "'none', a scheme such as 'https:' or a host such as "
            "'https://*.example.org:8443', without spaces, ';' or ','"
        )
    if source.lower() == "'none'" and count > 1:
        return "'none' forbids all framing, so it must be the only entry"
    return None


class CoreConfig(Strict):
    experiment: ExperimentConfig
    test_type: str
    recruiter: str = "local_lab"
    audio: AudioConfig = Field(default_factory=AudioConfig)
    assignment: AssignmentConfig = Field(default_factory=AssignmentConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    consent: ConsentConfig = Field(default_factory=ConsentConfig)
    surveys: SurveysConfig = Field(default_factory=SurveysConfig)
    web: WebConfig = Field(default_factory=WebConfig)


CORE_KEYS = tuple(CoreConfig.model_fields)


class ConfigError(ValueError):
    """An invalid config. ``problems`` contains one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class StudyConfig:
    """A loaded, validated study config."""

    path: Path
    core: CoreConfig
    sections: dict[str, Any]
    """Validated plugin sections by name."""
    raw: dict[str, Any]
    text: str
    positions: dict[tuple[Any, ...], int]

    @property
    def name(self) -> str:
        return self.core.experiment.name

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def audio_root(self) -> Path:
        if self.core.audio.root == DEMO_AUDIO_ROOT:
            from caqe_core.demo import demo_audio_dir

            return demo_audio_dir()
        return (self.directory / self.core.audio.root).resolve()

    def resolve_audio(self, value: str | Path) -> Path:
        return (self.audio_root / value).resolve()

    def section(self, name: str) -> Any:
        return self.sections.get(name)

    @property
    def test_type_section(self) -> Any:
        return self.sections.get(self.core.test_type)

    def hash(self) -> str:
        """SHA-256 of the validated config (not its formatting)."""
        canonical = json.dumps(
            {
                "core": self.core.model_dump(mode="json"),
                "sections": {
                    name: section.model_dump(mode="json")
                    if isinstance(section, BaseModel)
                    else section
                    for name, section in sorted(self.sections.items())
                },
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def line_of(self, key: str) -> int | None:
        return line_for(self.positions, parse_dotted(key))

    def error(self, key: str, message: str) -> ConfigError:
        """Build a ConfigError located at a dotted key."""
        return ConfigError([format_problem(self.path, self.line_of(key), key, message)])


# --- YAML with line numbers ---------------------------------------------------


def _positions(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    duplicates: list[tuple[tuple[Any, ...], int, int]],
    visited: set[int] | None = None,
) -> None:
    """Record the line of every key and item, and every key given twice in a mapping."""
    out[path] = node.start_mark.line + 1
    # An alias (*name) points at a node that was already walked. Walking it
    # again would take exponential time for aliases of aliases.
    visited = set() if visited is None else visited
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, Any], int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, key)
            if identity in seen:
                duplicates.append((path + (key,), line, seen[identity]))
                continue
            seen[identity] = line
            _positions(value_node, path + (key,), out, duplicates, visited)
            out[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _positions(child, path + (index,), out, duplicates, visited)


def parse_yaml(path: Path, text: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML; return the data and the line of each dotted location.

    A key given twice in one mapping is an error, because YAML loaders
    silently keep the last value and the study would differ from what the
    researcher reads first.
    """
    # libyaml accepts a tab as the space between tokens (after "key:", inside
    # [...], before a comment), where PyYAML's parser rejects it. A text with
    # a tab is read by PyYAML, so that one config is valid with or without
    # libyaml.
    fast_loader = _PythonLoader if "\t" in text else _FAST_LOADER
    try:
        try:
            data, positions, duplicates = _load_yaml(text, fast_loader)
        except (yaml.YAMLError, UnicodeEncodeError):
            # libyaml words its errors differently, so PyYAML's own parser
            # gives the messages and marks that the error below describes. It
            # also reports a lone surrogate, which libyaml cannot take as UTF-8.
            data, positions, duplicates = _load_yaml(text, _PythonLoader)
        if duplicates:
            raise ConfigError(
                [
                    format_problem(
                        path,
                        line,
                        dotted(loc),
                        f"duplicate key {loc[-1]!r} (first given on line {first}). "
                        "Remove one of them.",
                    )
                    for loc, line, first in duplicates
                ]
            )
    except yaml.MarkedYAMLError as error:
        raise ConfigError([_describe_yaml_error(path, error)]) from None
    except yaml.YAMLError as error:
        raise ConfigError(
            [format_problem(path, None, None, f"invalid YAML: {error}")]
        ) from None
    except RecursionError:
        message = (
            "invalid YAML: the lists or mappings are nested too deeply to parse. "
            "Flatten the nesting."
        )
        raise ConfigError([format_problem(path, None, None, message)]) from None
    return data, positions


class _CheckedValues:
    """Constructor mixin that reports a scalar its tag cannot convert, with its mark.

    PyYAML's own constructors raise a bare ValueError, without a line, for a
    timestamp such as ``2024-13-45`` or a value such as ``!!int abc``.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, TypeError, OverflowError) as error:
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {node.value!r} as {kind}: {error}. "
                "Quote the value to keep it as text",
                node.start_mark,
            ) from None


class _PythonLoader(_CheckedValues, yaml.SafeLoader):
    """PyYAML's pure-Python safe loader."""


class _LibyamlLoader(
    _CheckedValues,
    getattr(yaml, "CSafeLoader", yaml.SafeLoader),  # type: ignore[misc]
):
    """libyaml's safe loader where PyYAML was built with it.

    It parsed a 7 KB study config about ten times as fast as the pure-Python
    one."""


_FAST_LOADER: Any = _LibyamlLoader


def _load_yaml(
    text: str, loader_class: Any
) -> tuple[Any, dict[tuple[Any, ...], int], list[tuple[tuple[Any, ...], int, int]]]:
    """Parse ``text`` once into the data, the lines and the duplicate keys.

    The lines are read from the node tree before the data is built. Building
    the data rewrites each mapping that has a merge key (``<<``) in place, so
    afterwards the merged keys would look like duplicates of the keys that
    override them.
    """
    positions: dict[tuple[Any, ...], int] = {}
    duplicates: list[tuple[tuple[Any, ...], int, int]] = []
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions, duplicates
        _positions(node, (), positions, duplicates)
        if duplicates:
            return None, positions, duplicates
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, positions, duplicates


def _describe_yaml_error(path: Path, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark else None
    message = f"invalid YAML: {error.problem or error}"
    context = error.context_mark
    if error.context and context is not None and context.line + 1 != line:
        # An unclosed bracket or quote is reported where the parser gave up;
        # the line where it opened is the one to fix.
        message += f" ({error.context} that starts on line {context.line + 1})"
    return format_problem(path, line, None, message + ". Fix the syntax.")


def line_for(positions: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest part of ``loc`` that the file contains."""
    for end in range(len(loc), -1, -1):
        line = positions.get(tuple(loc[:end]))
        if line is not None:
            return line
    return None


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_dotted(key: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
        parts.append(int(index) if index else name)
    return tuple(parts)


def format_problem(path: Path, line: int | None, key: str | None, message: str) -> str:
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {key}: {message}" if key else f"{where}: {message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_pydantic_error(
    error: Any, model: type[BaseModel], loc: tuple[Any, ...], data: Any
) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return f"missing required key {loc[-1]!r}. Add it."
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1], data)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown key {loc[-1]!r}.{hint} Valid keys here: {', '.join(sorted(allowed))}."
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"invalid value {_short(value)}; expected one of {expected}."
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return f"invalid value {_short(value)}: {message}. Fix the value."


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...], data: Any) -> list[str]:
    """Field names of the model found by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field_info = current.model_fields.get(part)
        if field_info is None:
            return []
        current = _inner_model(field_info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(argument)
        if found is not None:
            return found
    return None


def _validate(
    model: type[BaseModel],
    data: Any,
    prefix: tuple[Any, ...],
    path: Path,
    positions: dict[tuple[Any, ...], int],
    problems: list[str],
) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        errors = error.errors()
        misspelled = _misspelled_required_keys(errors, model, data)
        for item in errors:
            if item["type"] == "missing" and tuple(item["loc"]) in misspelled:
                continue
            loc = prefix + tuple(item["loc"])
            message = _describe_pydantic_error(item, model, tuple(item["loc"]), data)
            problems.append(
                format_problem(path, line_for(positions, loc), dotted(loc), message)
            )
        return None


def _misspelled_required_keys(
    errors: list[Any], model: type[BaseModel], data: Any
) -> set[tuple[Any, ...]]:
    """Locations of missing keys that an unknown sibling key probably misspells.

    ``titel`` next to a missing ``title`` is one mistake, so only the unknown
    key is reported, with its did-you-mean hint.
    """
    missing = {tuple(item["loc"]) for item in errors if item["type"] == "missing"}
    found: set[tuple[Any, ...]] = set()
    for item in errors:
        if item["type"] != "extra_forbidden":
            continue
        loc = tuple(item["loc"])
        allowed = _allowed_keys(model, loc[:-1], data)
        for close in difflib.get_close_matches(str(loc[-1]), allowed, n=1):
            if loc[:-1] + (close,) in missing:
                found.add(loc[:-1] + (close,))
    return found


def load_config(path: str | Path, registry: Registry) -> StudyConfig:
    """Load and validate a study config; raise ConfigError with every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found. Check the path."]) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the config file: {error}."]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        bad = raw[error.start : error.end]
        message = f"invalid UTF-8 byte {bad!r}. Save the config file as UTF-8."
        problem = format_problem(path.resolve(), line, None, message)
        raise ConfigError([problem]) from None
    return parse_config(path.resolve(), text, registry)


def parse_config(path: Path, text: str, registry: Registry) -> StudyConfig:
    data, positions = parse_yaml(path, text)
    if not isinstance(data, dict):
        raise ConfigError(
            [
                format_problem(
                    path,
                    1,
                    None,
                    "the config must be a YAML mapping of keys such as 'experiment' and 'test_type'.",
                )
            ]
        )
    problems: list[str] = []
    non_string = [key for key in data if not isinstance(key, str)]
    for key in non_string:
        problems.append(
            format_problem(
                path, line_for(positions, (key,)), str(key), "keys must be strings."
            )
        )
    if problems:
        raise ConfigError(problems)

    plugin_sections = _plugin_section_models(registry)
    core_data = {key: value for key, value in data.items() if key in CORE_KEYS}
    misspelled_sections: set[str] = set()
    for key in data:
        if key in CORE_KEYS or key in plugin_sections:
            continue
        allowed = list(CORE_KEYS) + list(plugin_sections)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        misspelled_sections.update(close)
        problems.append(
            format_problem(
                path,
                line_for(positions, (key,)),
                key,
                f"unknown section {key!r}.{hint} Valid sections: {', '.join(sorted(allowed))}.",
            )
        )

    core = _validate(CoreConfig, core_data, (), path, positions, problems)
    sections: dict[str, Any] = {}
    if core is not None:
        names_known = _check_plugin_names(core, registry, path, positions, problems)
        for name, activated_by in _active_sections(core):
            model = plugin_sections.get(name)
            if model is None:
                continue
            if name not in data and name in misspelled_sections:
                # Reported above as an unknown section with a did-you-mean hint.
                continue
            if name not in data:
                value = _validate_missing_section(
                    model, name, activated_by, path, positions, problems
                )
            else:
                section_data = data[name] if data[name] is not None else {}
                value = _validate(
                    model, section_data, (name,), path, positions, problems
                )
            if value is not None:
                sections[name] = value
        active = {name for name, _ in _active_sections(core)}
        for name in data:
            # With an unknown plugin name, its section is reported through that name.
            if names_known and name in plugin_sections and name not in active:
                problems.append(
                    format_problem(
                        path,
                        line_for(positions, (name,)),
                        name,
                        f"section {name!r} belongs to a plugin this study does not use "
                        f"(test_type {core.test_type!r}, recruiter {core.recruiter!r}, "
                        f"steps {core.flow.steps}). Remove it or use that plugin.",
                    )
                )
    if problems:
        raise ConfigError(problems)
    return StudyConfig(
        path=path,
        core=core,
        sections=sections,
        raw=data,
        text=text,
        positions=positions,
    )


def _validate_missing_section(
    model: type[BaseModel],
    name: str,
    activated_by: str,
    path: Path,
    positions: dict[tuple[Any, ...], int],
    problems: list[str],
) -> Any:
    """Validate an absent plugin section as empty; report one problem if it cannot be."""
    try:
        return model.model_validate({})
    except ValidationError as error:
        required = sorted(
            {str(item["loc"][0]) for item in error.errors() if item["loc"]}
        )
        problems.append(
            format_problem(
                path,
                line_for(positions, parse_dotted(activated_by)),
                activated_by,
                f"missing section {name!r}, which {activated_by} {name!r} needs. Add "
                f"a top-level '{name}:' section with at least the keys "
                f"{', '.join(required)}.",
            )
        )
        return None


def _plugin_section_models(registry: Registry) -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for group in (registry.test_types, registry.recruiters, registry.flow_steps):
        for name, obj in group.items():
            if obj.config_model is not None and name not in CORE_KEYS:
                models[name] = obj.config_model
    return models


def _active_sections(core: CoreConfig) -> list[tuple[str, str]]:
    """Plugin sections the study uses, each with the dotted key that names it."""
    return [
        (core.test_type, "test_type"),
        (core.recruiter, "recruiter"),
        *((step, f"flow.steps[{index}]") for index, step in enumerate(core.flow.steps)),
    ]


def _check_plugin_names(
    core: CoreConfig,
    registry: Registry,
    path: Path,
    positions: dict[tuple[Any, ...], int],
    problems: list[str],
) -> bool:
    """Report unknown test type, recruiter and step names; return True if none."""
    count = len(problems)
    checks: list[tuple[str, str, dict[str, Any]]] = [
        ("test_type", core.test_type, registry.test_types),
        ("recruiter", core.recruiter, registry.recruiters),
    ]
    for key, value, known in checks:
        if value not in known:
            close = difflib.get_close_matches(value, list(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(
                format_problem(
                    path,
                    line_for(positions, (key,)),
                    key,
                    f"unknown {key.replace('_', ' ')} {value!r}.{hint} Loaded: "
                    f"{', '.join(sorted(known)) or 'none'}.",
                )
            )
    for index, step in enumerate(core.flow.steps):
        if step in CORE_STEPS or step in registry.flow_steps:
            continue
        known_steps = list(CORE_STEPS) + list(registry.flow_steps)
        close = difflib.get_close_matches(step, known_steps, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        problems.append(
            format_problem(
                path,
                line_for(positions, ("flow", "steps", index)),
                f"flow.steps[{index}]",
                f"unknown step {step!r}.{hint} Available steps: {', '.join(known_steps)}.",
            )
        )
    if len(problems) == count and "trials" not in core.flow.steps:
        problems.append(
            format_problem(
                path,
                line_for(positions, ("flow", "steps")),
                "flow.steps",
                f"invalid value {_short(core.flow.steps)}: the steps must include "
                "'trials'. Add it.",
            )
        )
    return len(problems) == count
