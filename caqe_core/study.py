"""From a validated config to a study in the database.

``check_study`` gets the conditions from the test type and checks every audio
file; ``prepare_study`` also writes the prepared copies and the database
rows, idempotently: the same config changes nothing, and a changed config is
refused while the database holds data of the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from caqe_core.audio import (
    AudioError,
    AudioInfo,
    find_clipping,
    find_non_finite,
    inspect_audio,
    prepare_copy,
    read_audio,
)
from caqe_core.config import (
    AudioConfig,
    ConfigError,
    StudyConfig,
    format_problem,
    line_for,
    parse_config,
    parse_dotted,
)
from caqe_core.extension import (
    ConditionSpec,
    ConditionView,
    PrepareContext,
    StimulusView,
    StudyDefinitionError,
    TestType,
)
from caqe_core.models import Condition, Experiment, Participant, Stimulus
from caqe_core.plugins import PluginError, Registry

logger = logging.getLogger(__name__)


class StudyConflictError(RuntimeError):
    """The database contains another config's data for this experiment name."""


@dataclass
class CheckedStudy:
    config: StudyConfig
    specs: list[ConditionSpec]
    infos: dict[Path, AudioInfo]


@dataclass
class Study:
    """A prepared study: its config, its experiment row id and the plugins."""

    config: StudyConfig
    experiment_id: int
    registry: Registry
    conditions: dict[int, ConditionView] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def test_type(self) -> TestType:
        return self.registry.test_type(self.config.core.test_type)

    @property
    def recruiter(self) -> Any:
        return self.registry.recruiter(self.config.core.recruiter)

    def test_type_has_training(self) -> bool:
        return self.test_type.has_training(self.config.test_type_section)

    def load_conditions(self, session: Session) -> None:
        rows = session.scalars(
            select(Condition).where(Condition.experiment_id == self.experiment_id)
        ).all()
        views = {}
        for row in rows:
            stimuli = {
                stimulus.key: StimulusView(
                    id=stimulus.id,
                    key=stimulus.key,
                    role=stimulus.role,
                    sample_rate=stimulus.sample_rate,
                    channels=stimulus.channels,
                    frames=stimulus.frames,
                )
                for stimulus in row.stimuli
            }
            views[row.id] = ConditionView(
                id=row.id,
                key=row.key,
                item=row.item,
                scale=row.scale,
                data=row.data,
                stimuli=stimuli,
            )
        self.conditions = views


def _where(config: StudyConfig, key: str | None) -> str:
    if not key:
        return str(config.path)
    line = line_for(config.positions, parse_dotted(key))
    return f"{config.path}:{line}: {key}" if line else f"{config.path}: {key}"


def check_study(
    config: StudyConfig, registry: Registry, generated_dir: Path
) -> CheckedStudy:
    """Build the conditions and check their audio; raise ConfigError listing every problem."""
    try:
        test_type = registry.test_type(config.core.test_type)
    except PluginError as error:
        raise ConfigError(
            [
                format_problem(
                    config.path, config.line_of("test_type"), "test_type", str(error)
                )
            ]
        ) from None
    root = config.audio_root
    if not root.is_dir():
        raise ConfigError(
            [
                format_problem(
                    config.path,
                    config.line_of("audio.root"),
                    "audio.root",
                    f"folder not found: {root} (from {config.core.audio.root!r}, "
                    "relative to the config file). Fix the path.",
                )
            ]
        )
    context = PrepareContext(
        config=config, section=config.test_type_section, generated_dir=generated_dir
    )
    try:
        specs = test_type.build_conditions(context)
    except StudyDefinitionError as error:
        raise ConfigError([f"{_where(config, error.key)}: {error.message}"]) from None
    except AudioError as error:
        raise ConfigError([str(error)]) from None

    problems: list[str] = []
    if not specs:
        problems.append(
            format_problem(
                config.path,
                config.line_of(config.core.test_type),
                config.core.test_type,
                "the study defines no conditions. Add at least one item.",
            )
        )
    seen: set[str] = set()
    for spec in specs:
        if spec.key in seen:
            problems.append(
                f"{_where(config, spec.config_key)}: condition {spec.key!r} is defined twice. Give each item a unique name."
            )
        seen.add(spec.key)
    for key in config.core.assignment.condition_targets:
        if key not in seen:
            problems.append(
                f"{_where(config, f'assignment.condition_targets.{key}')}: unknown condition {key!r}. "
                f"Conditions: {', '.join(sorted(seen))}."
            )

    infos: dict[Path, AudioInfo] = {}
    for spec in specs:
        problems.extend(_check_condition(config, spec, infos))
    for name in config.core.flow.steps:
        step = registry.flow_steps.get(name)
        if step is None:
            continue
        # Steps generate their signals here (tones, test stimuli), and a step
        # reports a config it cannot serve as a ConfigError.
        try:
            step.prepare(config.section(name), config, generated_dir)
        except ConfigError as error:
            problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)
    return CheckedStudy(config=config, specs=specs, infos=infos)


def _check_condition(
    config: StudyConfig, spec: ConditionSpec, infos: dict[Path, AudioInfo]
) -> list[str]:
    problems: list[str] = []
    audio = config.core.audio
    keys = [stimulus.key for stimulus in spec.stimuli]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        problems.append(
            f"{_where(config, spec.config_key)}: stimulus names {duplicates} appear twice in condition {spec.key!r}. Rename them."
        )
    good: list[tuple[str, AudioInfo]] = []
    for stimulus in spec.stimuli:
        where = _where(config, stimulus.config_key)
        try:
            info = infos.get(stimulus.path) or inspect_audio(stimulus.path, where)
        except AudioError as error:
            problems.append(str(error))
            continue
        infos[stimulus.path] = info
        # A file with a problem of its own is left out of the comparisons
        # between the stimuli below, so that it is reported once.
        reported = len(problems)
        if audio.sample_rate and info.sample_rate != audio.sample_rate:
            problems.append(
                f"{where}: {stimulus.path} has a sample rate of {info.sample_rate} Hz, but "
                f"audio.sample_rate is {audio.sample_rate} Hz. Resample the file or change audio.sample_rate."
            )
        if info.channels > audio.max_channels:
            problems.append(
                f"{where}: {stimulus.path} has {info.channels} channels; at most "
                f"{audio.max_channels} are allowed (audio.max_channels). Downmix the file."
            )
        problems.extend(_check_samples(stimulus.path, info, where, audio))
        if len(problems) == reported:
            good.append((stimulus.key, info))
    if len(good) < 2:
        return problems
    first_key, first = good[0]
    tolerance = round(audio.length_tolerance_ms / 1000 * first.sample_rate)
    for key, info in good[1:]:
        if info.sample_rate != first.sample_rate:
            problems.append(
                f"{_where(config, spec.config_key)}: in condition {spec.key!r}, {key!r} has "
                f"{info.sample_rate} Hz but {first_key!r} has {first.sample_rate} Hz. All stimuli of "
                "a trial need one sample rate: resample them."
            )
        elif abs(info.frames - first.frames) > tolerance:
            problems.append(
                f"{_where(config, spec.config_key)}: in condition {spec.key!r}, {key!r} is "
                f"{info.frames} frames ({info.duration:.3f} s) long but {first_key!r} is "
                f"{first.frames} frames ({first.duration:.3f} s). Trim them to one length, or "
                "raise audio.length_tolerance_ms."
            )
        if info.channels != first.channels:
            problems.append(
                f"{_where(config, spec.config_key)}: in condition {spec.key!r}, {key!r} has "
                f"{info.channels} channels but {first_key!r} has {first.channels}. Use one channel count."
            )
    return problems


def _check_samples(
    path: Path, info: AudioInfo, where: str, audio: AudioConfig
) -> list[str]:
    """Decode a stimulus and report undecodable data, NaN or infinity, and clipping.

    The header alone does not show a truncated or corrupt file, so every
    stimulus is decoded here, even with audio.allow_clipping set.
    """
    try:
        data, _ = read_audio(path, where)
    except AudioError as error:
        return [str(error)]
    frame = find_non_finite(data)
    if frame is not None:
        message = (
            f"{where}: {path} has a NaN or infinite sample at "
            f"{frame / info.sample_rate:.3f} s (frame {frame}), which has no "
            "16-bit PCM value for the served copy. Export the file again from "
            "its source."
        )
        return [message]
    if audio.allow_clipping:
        return []
    frame = find_clipping(data)
    if frame is not None:
        message = (
            f"{where}: {path} clips at {frame / info.sample_rate:.3f} s "
            f"(frame {frame}). Lower its level, or set audio.allow_clipping: true."
        )
        return [message]
    return []


def prepared_dir(data_dir: Path) -> Path:
    return data_dir / "prepared"


def generated_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "generated" / name


def prepare_study(
    config: StudyConfig,
    registry: Registry,
    session_factory: sessionmaker[Session],
    data_dir: Path,
) -> Study:
    """Check the study, write prepared audio and store it in the database."""
    checked = check_study(config, registry, generated_dir(data_dir, config.name))

    # Every stimulus of a condition gets a file of its own, even where two
    # share a source (the reference and the hidden reference), so that no
    # URL, ETag or file size distinguishes them.
    prepared: dict[tuple[str, str], tuple[Path, str]] = {}
    decoded: dict[Path, tuple[Any, int]] = {}
    for spec in checked.specs:
        for stimulus in spec.stimuli:
            if stimulus.path not in decoded:
                decoded[stimulus.path] = read_audio(stimulus.path, str(stimulus.path))
            data, rate = decoded[stimulus.path]
            prepared[spec.key, stimulus.key] = prepare_copy(
                data,
                rate,
                prepared_dir(data_dir),
                salt=f"{config.name}\0{spec.key}\0{stimulus.key}",
                serve_format=config.core.audio.serve_format,
            )

    study_hash = _study_hash(config, checked, prepared)
    try:
        experiment_id = _store_study(
            session_factory, config, checked, prepared, study_hash
        )
    except IntegrityError:
        # Another process stored the same new experiment at the same moment
        # (two first starts); storing again finds its rows.
        logger.info(
            "Experiment %s was stored concurrently; reading it again", config.name
        )
        experiment_id = _store_study(
            session_factory, config, checked, prepared, study_hash
        )

    study = Study(config=config, experiment_id=experiment_id, registry=registry)
    with session_factory() as session:
        study.load_conditions(session)
    return study


def _store_study(
    session_factory: sessionmaker[Session],
    config: StudyConfig,
    checked: CheckedStudy,
    prepared: dict[tuple[str, str], tuple[Path, str]],
    study_hash: str,
) -> int:
    """Write the experiment and its conditions unless the same study is stored; return its id."""
    with session_factory() as session, session.begin():
        experiment = session.scalar(
            select(Experiment).where(Experiment.name == config.name)
        )
        if experiment is not None and experiment.config_hash == study_hash:
            experiment_id = experiment.id
        else:
            if experiment is not None:
                participants = session.scalar(
                    select(func.count())
                    .select_from(Participant)
                    .where(Participant.experiment_id == experiment.id)
                )
                if participants:
                    raise StudyConflictError(
                        f"The database already contains {participants} participant(s) of experiment "
                        f"{config.name!r} under a different config or different audio (stored config: "
                        f"{experiment.config_path}). Serving this config would mix two studies' data. "
                        "Give the changed study a new experiment.name, or back up and clear the "
                        "database with 'caqe db reset'."
                    )
                session.execute(
                    delete(Stimulus).where(Stimulus.experiment_id == experiment.id)
                )
                session.execute(
                    delete(Condition).where(Condition.experiment_id == experiment.id)
                )
            else:
                experiment = Experiment(name=config.name)
                session.add(experiment)
            _fill_experiment(experiment, config, study_hash)
            session.flush()
            _store_conditions(session, experiment, config, checked, prepared)
            experiment_id = experiment.id
            logger.info(
                "Prepared experiment %s (%d conditions)",
                config.name,
                len(checked.specs),
            )
    return experiment_id


def _study_hash(
    config: StudyConfig,
    checked: CheckedStudy,
    prepared: dict[tuple[str, str], tuple[Path, str]],
) -> str:
    parts = [config.hash()]
    for spec in checked.specs:
        parts.append(
            json.dumps(
                [spec.key, spec.item, spec.scale, spec.data],
                sort_keys=True,
                default=str,
            )
        )
        for stimulus in spec.stimuli:
            digest = prepared[spec.key, stimulus.key][1]
            parts.append(f"{stimulus.key}:{stimulus.role}:{digest}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _fill_experiment(
    experiment: Experiment, config: StudyConfig, study_hash: str
) -> None:
    experiment.title = config.core.experiment.title
    experiment.test_type = config.core.test_type
    experiment.recruiter = config.core.recruiter
    experiment.config_hash = study_hash
    experiment.config_text = config.text
    experiment.config_path = str(config.path)
    experiment.config_data = {
        "core": config.core.model_dump(mode="json"),
        "sections": {
            name: section.model_dump(mode="json")
            for name, section in config.sections.items()
        },
    }


def _store_conditions(
    session: Session,
    experiment: Experiment,
    config: StudyConfig,
    checked: CheckedStudy,
    prepared: dict[tuple[str, str], tuple[Path, str]],
) -> None:
    targets = config.core.assignment.condition_targets
    default_target = config.core.assignment.trials_per_condition
    for position, spec in enumerate(checked.specs):
        condition = Condition(
            experiment_id=experiment.id,
            key=spec.key,
            item=spec.item,
            scale=spec.scale,
            data=spec.data,
            target=targets.get(spec.key, default_target),
            position=position,
        )
        session.add(condition)
        session.flush()
        for index, stimulus in enumerate(spec.stimuli):
            info = checked.infos[stimulus.path]
            path, digest = prepared[spec.key, stimulus.key]
            session.add(
                Stimulus(
                    experiment_id=experiment.id,
                    condition_id=condition.id,
                    key=stimulus.key,
                    role=stimulus.role,
                    source_path=str(stimulus.path),
                    path=str(path),
                    sha256=digest,
                    sample_rate=info.sample_rate,
                    channels=info.channels,
                    frames=info.frames,
                    position=index,
                )
            )


def load_study_from_database(
    session_factory: sessionmaker[Session], registry: Registry, name: str | None
) -> Study:
    """Find a study by name, or the only one, from the config snapshot it stored."""
    with session_factory() as session:
        experiments = session.scalars(select(Experiment).order_by(Experiment.id)).all()
        if not experiments:
            raise LookupError(
                "The database contains no study. Run 'caqe run' first, or pass --database-url "
                "to point at the database the study ran on."
            )
        names = [experiment.name for experiment in experiments]
        if name is None:
            if len(experiments) > 1:
                raise LookupError(
                    f"The database contains {len(experiments)} studies: {', '.join(names)}. "
                    "Choose one with --experiment NAME."
                )
            experiment = experiments[0]
        else:
            matches = [
                experiment for experiment in experiments if experiment.name == name
            ]
            if not matches:
                raise LookupError(
                    f"No study named {name!r}. Studies in the database: {', '.join(names)}."
                )
            experiment = matches[0]
        config = parse_config(
            Path(experiment.config_path), experiment.config_text, registry
        )
        study = Study(config=config, experiment_id=experiment.id, registry=registry)
        study.load_conditions(session)
        return study


def snapshot_yaml(config: StudyConfig) -> str:
    return yaml.safe_dump(config.raw, sort_keys=False)
