"""Broken study configs: each gives one clear message with file, line, key and value.

Every case runs ``caqe validate`` in-process through click's CliRunner with
the test-only 'scale' test type. A case's YAML marks with ``#<`` the line
that the message must point at. The test computes that line's number, so the
cases stay readable and the expected lines cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from caqe_core.cli import cli
from caqe_core.config import parse_yaml
from caqe_core.plugins import Registry, set_registry
from tests.support.studies import SAMPLE_RATE, write_tone

BASE = """\
experiment:
  name: scale-study
  title: Scale test
test_type: scale
audio:
  root: audio
assignment:
  conditions_per_participant: 2
  trials_per_condition: 5
flow:
  steps: [consent, trials]
scale:
  question: How good is each sound?
  items:
    - name: item0
      stimuli:
        system0: item0/system0.wav
        system1: item0/system1.wav
    - name: item1
      stimuli:
        system0: item1/system0.wav
        system1: item1/system1.wav
"""

MARK = "#<"


def edit(old: str, new: str) -> str:
    """Return BASE with ``old`` replaced once by ``new``."""
    assert BASE.count(old) == 1, f"{old!r} must occur once in BASE"
    return BASE.replace(old, new)


def write_wav(path: Path, data: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate)


def tone(
    seconds: float = 1.0, rate: int = SAMPLE_RATE, level: float = 0.3
) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return level * np.sin(2 * np.pi * 440.0 * t)


@dataclass
class Case:
    """One broken config and what its single error message must contain."""

    name: str
    yaml: str
    fragments: list[str]
    """Texts the message must contain: the key, the bad value, the fix."""
    audio: Callable[[Path], None] | None = None
    """Breaks the audio folder after the good files are written."""
    line_text: str | None = None
    """When the marked line cannot carry a comment (a YAML syntax case),
    the message points at the first line that contains this text."""
    extra: dict[str, str] = field(default_factory=dict)


def _clipped(root: Path) -> None:
    data = tone()
    data[4000:4010] = 1.0
    write_wav(root / "item1" / "system1.wav", data)


def _infinite_sample(root: Path) -> None:
    data = tone()
    data[6000] = np.inf
    sf.write(str(root / "item1" / "system1.wav"), data, SAMPLE_RATE, subtype="FLOAT")


def _truncated_flac(root: Path) -> None:
    # libsndfile detects the format from the content, not from the name.
    path = root / "item1" / "system0.wav"
    sf.write(str(path), tone(), SAMPLE_RATE, format="FLAC")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _three_channels(root: Path) -> None:
    write_wav(root / "item0" / "system1.wav", np.repeat(tone()[:, None], 3, axis=1))


def _stereo(root: Path) -> None:
    write_wav(root / "item0" / "system1.wav", np.repeat(tone()[:, None], 2, axis=1))


def _other_rate(root: Path) -> None:
    write_wav(root / "item0" / "system1.wav", tone(rate=22050), rate=22050)


def _shorter(root: Path) -> None:
    write_wav(root / "item1" / "system0.wav", tone(seconds=0.5))


def _missing(root: Path) -> None:
    (root / "item1" / "system1.wav").unlink()


def _not_audio(root: Path) -> None:
    (root / "item0" / "system0.wav").write_text("this is not a sound file\n")


def _empty_audio(root: Path) -> None:
    write_wav(root / "item0" / "system0.wav", np.zeros(0))


def _directory(root: Path) -> None:
    target = root / "item0" / "system0.wav"
    target.unlink()
    target.mkdir()


CASES = [
    Case(
        "missing experiment title",
        edit("  title: Scale test\n", ""),
        ["experiment.title", "missing required key 'title'"],
        line_text="experiment:",
    ),
    Case(
        "missing experiment section",
        edit("experiment:\n  name: scale-study\n  title: Scale test\n", ""),
        ["experiment", "missing required key 'experiment'"],
        line_text="test_type: scale",
    ),
    Case(
        "missing test_type",
        edit("test_type: scale\n", ""),
        ["test_type", "missing required key 'test_type'"],
        line_text="experiment:",
    ),
    Case(
        "misspelled top-level section",
        edit("assignment:\n", "asignment:  #<\n"),
        ["asignment", "Did you mean 'assignment'?"],
    ),
    Case(
        "misspelled required key",
        edit("  title: Scale test\n", "  titel: Scale test  #<\n"),
        ["experiment.titel", "unknown key 'titel'", "Did you mean 'title'?"],
    ),
    Case(
        "misspelled optional key",
        edit("  trials_per_condition: 5\n", "  trials_per_conditon: 5  #<\n"),
        ["assignment.trials_per_conditon", "Did you mean 'trials_per_condition'?"],
    ),
    Case(
        "misspelled plugin key",
        edit("  question: How", "  qestion: How"),
        ["scale.qestion", "Did you mean 'question'?"],
        line_text="qestion",
    ),
    Case(
        "text where a number belongs",
        edit("  trials_per_condition: 5\n", "  trials_per_condition: many  #<\n"),
        ["assignment.trials_per_condition", "'many'", "integer"],
    ),
    Case(
        "negative conditions per participant",
        edit(
            "  conditions_per_participant: 2\n",
            "  conditions_per_participant: -1  #<\n",
        ),
        ["assignment.conditions_per_participant", "-1", "greater than or equal to 1"],
    ),
    Case(
        "zero trials per condition",
        edit("  trials_per_condition: 5\n", "  trials_per_condition: 0  #<\n"),
        ["assignment.trials_per_condition", "0", "greater than or equal to 1"],
    ),
    Case(
        "negative reservation minutes",
        edit(
            "  trials_per_condition: 5\n",
            "  trials_per_condition: 5\n  reservation_minutes: -5  #<\n",
        ),
        ["assignment.reservation_minutes", "-5", "greater than 0"],
    ),
    Case(
        "negative condition target",
        edit(
            "  trials_per_condition: 5\n",
            "  trials_per_condition: 5\n  condition_targets:\n    item0: -3  #<\n",
        ),
        ["assignment.condition_targets.item0", "-3", "greater than or equal to 0"],
    ),
    Case(
        "condition target of an unknown condition",
        edit(
            "  trials_per_condition: 5\n",
            "  trials_per_condition: 5\n  condition_targets:\n    item9: 3  #<\n",
        ),
        [
            "assignment.condition_targets.item9",
            "unknown condition 'item9'",
            "item0, item1",
        ],
    ),
    Case(
        "condition targets as a list",
        edit(
            "  trials_per_condition: 5\n",
            "  trials_per_condition: 5\n  condition_targets: [1, 2]  #<\n",
        ),
        ["assignment.condition_targets", "[1, 2]", "dictionary"],
    ),
    Case(
        "experiment name with spaces",
        edit("  name: scale-study\n", "  name: Scale Study  #<\n"),
        ["experiment.name", "'Scale Study'", "lowercase letters, digits"],
    ),
    Case(
        "experiment name too long",
        edit("  name: scale-study\n", f"  name: {'a' * 70}  #<\n"),
        ["experiment.name", "a" * 70, "at most 63 characters"],
    ),
    Case(
        "title as a list",
        edit("  title: Scale test\n", "  title: [a, b]  #<\n"),
        ["experiment.title", "['a', 'b']", "string"],
    ),
    Case(
        "unknown test type",
        edit("test_type: scale\n", "test_type: scal  #<\n"),
        ["test_type", "unknown test type 'scal'", "Did you mean 'scale'?"],
    ),
    Case(
        "unknown recruiter",
        edit("test_type: scale\n", "test_type: scale\nrecruiter: local_labb  #<\n"),
        ["recruiter", "unknown recruiter 'local_labb'", "Did you mean 'local_lab'?"],
    ),
    Case(
        "unknown flow step",
        edit("  steps: [consent, trials]\n", "  steps: [consnt, trials]  #<\n"),
        ["flow.steps[0]", "unknown step 'consnt'", "Did you mean 'consent'?"],
    ),
    Case(
        "misspelled trials step",
        edit("  steps: [consent, trials]\n", "  steps: [consent, trails]  #<\n"),
        ["flow.steps[1]", "unknown step 'trails'", "Did you mean 'trials'?"],
    ),
    Case(
        "step listed twice",
        edit(
            "  steps: [consent, trials]\n", "  steps: [consent, consent, trials]  #<\n"
        ),
        ["flow.steps", "'consent'", "twice"],
    ),
    Case(
        "flow without trials",
        edit("  steps: [consent, trials]\n", "  steps: [consent]  #<\n"),
        ["flow.steps", "['consent']", "'trials'"],
    ),
    Case(
        "maximum channels out of range",
        edit("  root: audio\n", "  root: audio\n  max_channels: 3  #<\n"),
        ["audio.max_channels", "3", "less than or equal to 2"],
    ),
    Case(
        "negative length tolerance",
        edit("  root: audio\n", "  root: audio\n  length_tolerance_ms: -1  #<\n"),
        ["audio.length_tolerance_ms", "-1", "greater than or equal to 0"],
    ),
    Case(
        "clipping switch not a boolean",
        edit("  root: audio\n", "  root: audio\n  allow_clipping: maybe  #<\n"),
        ["audio.allow_clipping", "'maybe'", "boolean"],
    ),
    Case(
        "fractional seed",
        edit("  title: Scale test\n", "  title: Scale test\n  seed: 1.5  #<\n"),
        ["experiment.seed", "1.5", "integer"],
    ),
    Case(
        "survey question of an unknown type",
        edit(
            "flow:\n",
            "surveys:\n  pre:\n    - id: age\n      type: numbr  #<\n      text: Age\nflow:\n",
        ),
        ["surveys.pre[0].type", "'numbr'", "'number'"],
    ),
    Case(
        "frame ancestors as text",
        edit("flow:\n", "web:\n  frame_ancestors: self  #<\nflow:\n"),
        ["web.frame_ancestors", "'self'", "list"],
    ),
    Case(
        "frame ancestor keyword without quotes",
        edit("flow:\n", "web:\n  frame_ancestors:\n    - self  #<\nflow:\n"),
        ["web.frame_ancestors[0]", "'self'", "single quotes"],
    ),
    Case(
        "frame ancestor with a directive",
        edit(
            "flow:\n",
            "web:\n  frame_ancestors:\n    - \"'self'; script-src *\"  #<\nflow:\n",
        ),
        ["web.frame_ancestors[0]", "script-src", "';'"],
    ),
    Case(
        "frame ancestor 'none' with others",
        edit(
            "flow:\n",
            "web:\n  frame_ancestors:\n    - \"'self'\"\n    - \"'none'\"  #<\nflow:\n",
        ),
        ["web.frame_ancestors[1]", "only entry"],
    ),
    Case(
        "unclosed bracket",
        edit("  steps: [consent, trials]\n", "  steps: [consent, trials\n"),
        ["invalid YAML", "flow sequence", "line 11"],
        line_text="scale:",
    ),
    Case(
        "tab indentation",
        edit("  title: Scale test\n", "\ttitle: Scale test\n"),
        ["invalid YAML", "'\\t'"],
        line_text="\ttitle",
    ),
    Case(
        "tab after a colon",
        edit("  title: Scale test\n", "  title:\tScale test\n"),
        ["invalid YAML", "'\\t'"],
        line_text="title:\t",
    ),
    Case(
        "tab in a flow list",
        edit("  steps: [consent, trials]\n", "  steps: [consent,\ttrials]\n"),
        ["invalid YAML", "'\\t'"],
        line_text="steps: [consent,\t",
    ),
    Case(
        "date out of range",
        edit("  title: Scale test\n", "  title: 2024-13-45  #<\n"),
        [
            "invalid YAML",
            "'2024-13-45'",
            "timestamp",
            "month must be in 1..12",
            "Quote",
        ],
    ),
    Case(
        "duplicate merge key",
        edit(
            "assignment:\n",
            "defaults: &defaults\n  trials_per_condition: 5\nassignment:\n"
            "  <<: *defaults\n  <<: *defaults  #<\n",
        ),
        ["assignment.<<", "duplicate key '<<'"],
    ),
    Case(
        "duplicate top-level key",
        edit("audio:\n", "test_type: scale  #<\naudio:\n"),
        ["test_type", "duplicate key 'test_type'", "line 4"],
    ),
    Case(
        "duplicate nested key",
        edit("  title: Scale test\n", "  title: Scale test\n  title: Other  #<\n"),
        ["experiment.title", "duplicate key 'title'", "line 3"],
    ),
    Case(
        "config that is a list",
        "- experiment\n- test_type\n",
        ["YAML mapping"],
        line_text="- experiment",
    ),
    Case(
        "missing plugin section",
        BASE.split("scale:\n")[0],
        ["scale", "missing section 'scale'", "test_type"],
        line_text="test_type: scale",
    ),
    Case(
        "empty item list",
        edit(BASE.split("  items:\n")[1], "").replace(
            "  items:\n", "  items: []  #<\n"
        ),
        ["scale.items", "[]", "at least 1 item"],
    ),
    Case(
        "item with one stimulus",
        edit(
            "    - name: item1\n      stimuli:\n",
            "    - name: item1\n      stimuli:  #<\n",
        ).replace("        system1: item1/system1.wav\n", ""),
        ["scale.items[1].stimuli", "needs at least two stimuli"],
    ),
    Case(
        "item name given twice",
        edit("    - name: item1\n", "    - name: item0  #<\n"),
        ["'item0'", "defined twice"],
    ),
    Case(
        "audio root that does not exist",
        edit("  root: audio\n", "  root: sounds  #<\n"),
        ["audio.root", "sounds", "folder not found"],
    ),
    Case(
        "missing audio file",
        edit(
            "        system1: item1/system1.wav\n",
            "        system1: item1/system1.wav  #<\n",
        ),
        ["scale.items[1].stimuli.system1", "system1.wav", "not found"],
        audio=_missing,
    ),
    Case(
        "text file named as audio",
        edit(
            "        system0: item0/system0.wav\n",
            "        system0: item0/system0.wav  #<\n",
        ),
        ["scale.items[0].stimuli.system0", "system0.wav", "cannot read"],
        audio=_not_audio,
    ),
    Case(
        "audio file without samples",
        edit(
            "        system0: item0/system0.wav\n",
            "        system0: item0/system0.wav  #<\n",
        ),
        ["scale.items[0].stimuli.system0", "system0.wav", "no samples"],
        audio=_empty_audio,
    ),
    Case(
        "folder named as audio",
        edit(
            "        system0: item0/system0.wav\n",
            "        system0: item0/system0.wav  #<\n",
        ),
        ["scale.items[0].stimuli.system0", "system0.wav", "not a file"],
        audio=_directory,
    ),
    Case(
        "clipped audio",
        edit(
            "        system1: item1/system1.wav\n",
            "        system1: item1/system1.wav  #<\n",
        ),
        ["scale.items[1].stimuli.system1", "system1.wav", "clips at 0.250 s"],
        audio=_clipped,
    ),
    Case(
        "infinite sample",
        edit(
            "        system1: item1/system1.wav\n",
            "        system1: item1/system1.wav  #<\n",
        ),
        ["scale.items[1].stimuli.system1", "system1.wav", "0.375 s (frame 6000)"],
        audio=_infinite_sample,
    ),
    Case(
        "truncated flac with clipping allowed",
        edit("  root: audio\n", "  root: audio\n  allow_clipping: true\n").replace(
            "        system0: item1/system0.wav\n",
            "        system0: item1/system0.wav  #<\n",
        ),
        ["scale.items[1].stimuli.system0", "system0.wav", "cannot decode"],
        audio=_truncated_flac,
    ),
    Case(
        "too many channels",
        edit(
            "        system1: item0/system1.wav\n",
            "        system1: item0/system1.wav  #<\n",
        ),
        ["scale.items[0].stimuli.system1", "system1.wav", "3 channels", "max_channels"],
        audio=_three_channels,
    ),
    Case(
        "stereo next to mono",
        edit("    - name: item0\n", "    - name: item0  #<\n"),
        ["scale.items[0]", "'system1' has 2 channels", "'system0' has 1"],
        audio=_stereo,
    ),
    Case(
        "mismatched sample rates",
        edit("    - name: item0\n", "    - name: item0  #<\n"),
        ["scale.items[0]", "22050 Hz", "16000 Hz"],
        audio=_other_rate,
    ),
    Case(
        "sample rate other than required",
        edit("  root: audio\n", "  root: audio\n  sample_rate: 16000\n").replace(
            "        system1: item0/system1.wav\n",
            "        system1: item0/system1.wav  #<\n",
        ),
        ["scale.items[0].stimuli.system1", "22050 Hz", "audio.sample_rate is 16000 Hz"],
        audio=_other_rate,
    ),
    Case(
        "unequal lengths",
        edit("    - name: item1\n", "    - name: item1  #<\n"),
        ["scale.items[1]", "8000 frames", "16000 frames", "length_tolerance_ms"],
        audio=_shorter,
    ),
]


@pytest.fixture
def run_validate(registry: Registry) -> Iterator[Callable[..., tuple[int, str]]]:
    set_registry(registry)
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["validate", *args])
        return result.exit_code, result.output

    try:
        yield run
    finally:
        set_registry(None)


def write_study(folder: Path, text: str) -> Path:
    for item in ("item0", "item1"):
        for index, system in enumerate(("system0", "system1")):
            write_tone(folder / "audio" / item / f"{system}.wav", 220.0 * (index + 1))
    path = folder / "study.yaml"
    path.write_text(text)
    return path


def expected_line(case: Case) -> int:
    lines = case.yaml.splitlines()
    needle = case.line_text if case.line_text is not None else MARK
    matches = [number for number, line in enumerate(lines, start=1) if needle in line]
    assert len(matches) == 1, f"case {case.name!r} must mark exactly one line"
    return matches[0]


def test_base_config_is_valid(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    path = write_study(tmp_path, BASE)

    code, output = run_validate(str(path))

    assert code == 0, output
    assert "valid" in output
    assert "2 conditions, 4 stimuli" in output


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_broken_config_message(
    case: Case, tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    path = write_study(tmp_path, case.yaml)
    if case.audio is not None:
        case.audio(tmp_path / "audio")

    code, output = run_validate(str(path))

    assert code == 1, output
    assert "Traceback" not in output
    assert "(1 problem)" in output, output
    problem = output.splitlines()[-1]
    assert problem.startswith(f"{path.resolve()}:{expected_line(case)}: "), output
    for fragment in case.fragments:
        assert fragment in problem, f"{fragment!r} missing from: {problem}"


def test_every_problem_listed_at_once(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    text = edit("  title: Scale test\n", "  title: Scale test\n  seed: x\n").replace(
        "  trials_per_condition: 5\n", "  trials_per_condition: -2\n"
    )
    path = write_study(tmp_path, text)

    code, output = run_validate(str(path))

    assert code == 1
    assert "(2 problems)" in output
    assert "experiment.seed" in output
    assert "assignment.trials_per_condition" in output


def test_missing_config_file(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    code, output = run_validate(str(tmp_path / "nowhere.yaml"))

    assert code == 1
    assert "Traceback" not in output
    assert "nowhere.yaml" in output
    assert "not found" in output


def test_config_path_from_environment(
    tmp_path: Path,
    run_validate: Callable[..., tuple[int, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_study(tmp_path, BASE)
    monkeypatch.setenv("CAQE_CONFIG", str(path))

    code, output = run_validate()

    assert code == 0, output
    assert str(path.resolve()) in output


def test_config_option(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    path = write_study(tmp_path, BASE)

    code, output = run_validate("--config", str(path))

    assert code == 0, output
    assert str(path.resolve()) in output


def test_argument_overrides_environment(
    tmp_path: Path,
    run_validate: Callable[..., tuple[int, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_study(tmp_path, BASE)
    monkeypatch.setenv("CAQE_CONFIG", str(tmp_path / "other.yaml"))

    code, output = run_validate(str(path))

    assert code == 0, output
    assert str(path.resolve()) in output


def test_nested_aliases_walked_once() -> None:
    """Aliases of aliases are not expanded while line numbers are collected."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 6):
        lines.append(
            f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]"
        )

    data, positions = parse_yaml(Path("aliases.yaml"), "\n".join(lines) + "\n")

    assert len(data["a5"]) == 10
    assert len(positions) < 200
    assert positions[("a5",)] == 6


def test_merge_key_override_is_valid(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    """A key that overrides one merged in with ``<<`` is no duplicate."""
    text = edit(
        "    - name: item1\n      stimuli:\n",
        "    - <<: *item0\n      name: item1\n      stimuli:\n",
    ).replace("    - name: item0\n", "    - &item0\n      name: item0\n")

    data, positions = parse_yaml(Path("merge.yaml"), text)
    code, output = run_validate(str(write_study(tmp_path, text)))

    assert [item["name"] for item in data["scale"]["items"]] == ["item0", "item1"]
    assert positions[("scale", "items", 1, "<<")] == 20
    assert positions[("scale", "items", 1, "name")] == 21
    assert code == 0, output


def test_deep_nesting_is_config_error(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    path = write_study(tmp_path, BASE + "deep: " + "[" * 5000 + "]" * 5000 + "\n")

    code, output = run_validate(str(path))

    assert code == 1, output
    assert "Traceback" not in output
    assert str(path.resolve()) in output
    assert "nested too deeply" in output


def test_non_utf8_config_names_line(
    tmp_path: Path, run_validate: Callable[..., tuple[int, str]]
) -> None:
    path = write_study(tmp_path, BASE)
    latin1 = BASE.replace("  title: Scale test\n", "  title: Caf\xe9 test\n")
    path.write_bytes(latin1.encode("latin-1"))

    code, output = run_validate(str(path))

    assert code == 1, output
    assert "Traceback" not in output
    assert f"{path.resolve()}:3: " in output
    assert "invalid UTF-8" in output
    assert "\\xe9" in output
