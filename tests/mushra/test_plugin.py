"""The MUSHRA test type: config, conditions, anchors, responses, export, report,
and the served pages over real HTTP."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import scipy.signal
import soundfile as sf
import yaml
from caqe_mushra.config import MushraConfig
from caqe_mushra.plugin import MushraTestType
from caqe_mushra.report import build_sections, conformance
from click.testing import CliRunner
from sqlalchemy import func, select

from caqe_core import ConditionView, ResponseError, StimulusView, TrialPage
from caqe_core.cli import build_cli, cli
from caqe_core.config import load_config
from caqe_core.models import ListeningEvent, Reservation, Trial
from caqe_core.plugins import Registry, set_registry
from caqe_core.study import check_study
from tests.support.server import ServedStudy, build_study

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
DEMO_NAMES = (
    "bwv66_6",
    "bwv253",
    "bwv269",
    "mp3_high",
    "mp3_low",
    "opus_high",
    "opus_low",
    "lowpass_3500",
    "lowpass_7000",
    "hidden_reference",
    "reference.flac",
    ".flac",
    "bwv66_6/quality",
)


# --- helpers -----------------------------------------------------------------


def settings_of(html: str) -> dict[str, Any]:
    """Return the JSON settings a MUSHRA page passes to its script."""
    match = re.search(
        r'<script type="application/json" id="mushra-settings">(.*?)</script>',
        html,
        re.DOTALL,
    )
    assert match, "the page carries its settings"
    return json.loads(match.group(1))


def begin_session(http: requests.Session, base: str) -> str:
    """Start as a lab participant and return the participant's page URL."""
    started = http.post(f"{base}/lab/", allow_redirects=False)
    assert started.status_code == 302
    return base + started.headers["Location"]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def agree(http: requests.Session, page_url: str) -> requests.Response:
    csrf = csrf_of(http.get(page_url).text)
    return http.post(
        page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"}
    )


def post_response(
    http: requests.Session, base: str, settings: dict[str, Any], response: Any
) -> requests.Response:
    body = {
        "idempotency_key": f"key-{random.random():.12f}",
        "response": response,
        "events": [],
        "time_on_page_ms": 1000,
    }
    return http.post(
        base + settings["submitUrl"],
        json=body,
        headers={"X-CAQE-CSRF": settings["csrfToken"]},
    )


def complete_response(settings: dict[str, Any], value: float = 50) -> dict[str, Any]:
    ids = [signal["id"] for signal in settings["signals"]]
    return {
        "ratings": {signal_id: value for signal_id in ids},
        "order": ids,
        "loop": None,
    }


def count_trials(served: ServedStudy) -> int:
    with served.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Trial))


def high_band_energy(data: np.ndarray, rate: int, above_hz: float) -> float:
    """Fraction of the signal's power above ``above_hz`` (Welch estimate)."""
    freqs, power = scipy.signal.welch(data, fs=rate, nperseg=4096)
    return float(power[freqs > above_hz].sum() / power.sum())


@pytest.fixture
def use_registry(registry: Registry) -> Iterator[Registry]:
    set_registry(registry)
    try:
        yield registry
    finally:
        set_registry(None)


@pytest.fixture
def run_validate(use_registry: Registry) -> Callable[[Path], tuple[int, str]]:
    runner = CliRunner()

    def run(path: Path) -> tuple[int, str]:
        result = runner.invoke(cli, ["validate", str(path)])
        return result.exit_code, result.output

    return run


def line_of(path: Path, text: str) -> int:
    lines = path.read_text().splitlines()
    matches = [number for number, line in enumerate(lines, start=1) if text in line]
    assert len(matches) == 1, f"{text!r} must occur on one line of {path}"
    return matches[0]


# --- config and conditions ---------------------------------------------------


def test_conditions_have_every_role(
    make_study: Callable[..., Path], tmp_path: Path, registry: Registry
) -> None:
    path = make_study(tmp_path / "study", items=2, systems=3)
    config = load_config(path, registry)
    checked = check_study(config, registry, tmp_path / "generated")

    assert [spec.key for spec in checked.specs] == ["item0/quality", "item1/quality"]
    spec = checked.specs[0]
    roles = {stimulus.key: stimulus.role for stimulus in spec.stimuli}
    assert roles == {
        "reference": "reference",
        "hidden_reference": "hidden_reference",
        "lowpass_3500": "anchor_low",
        "lowpass_7000": "anchor_mid",
        "system0": "system",
        "system1": "system",
        "system2": "system",
    }
    by_key = {stimulus.key: stimulus for stimulus in spec.stimuli}
    assert by_key["hidden_reference"].path == by_key["reference"].path
    assert by_key["system1"].config_key == "mushra.items[0].systems.system1"
    assert by_key["reference"].config_key == "mushra.items[0].reference"
    assert all(stimulus.config_key for stimulus in spec.stimuli)
    assert spec.scale == "quality"
    assert spec.data["block"] is None


def test_anchors_are_lowpassed_and_made_once(
    make_study: Callable[..., Path], tmp_path: Path, registry: Registry
) -> None:
    path = make_study(tmp_path / "study", items=1, systems=2, seconds=2.0)
    config = load_config(path, registry)
    generated = tmp_path / "generated"
    first = check_study(config, registry, generated)
    anchors = {
        stimulus.role: stimulus.path
        for stimulus in first.specs[0].stimuli
        if stimulus.role.startswith("anchor")
    }
    assert set(anchors) == {"anchor_low", "anchor_mid"}
    for anchor in anchors.values():
        assert anchor.is_relative_to(generated)
    modified = {role: anchor.stat().st_mtime_ns for role, anchor in anchors.items()}

    second = check_study(config, registry, generated)
    again = {
        stimulus.role: stimulus.path
        for stimulus in second.specs[0].stimuli
        if stimulus.role.startswith("anchor")
    }
    assert again == anchors
    assert {role: path.stat().st_mtime_ns for role, path in again.items()} == modified
    assert len(list((generated / "anchors").iterdir())) == 2

    reference, rate = sf.read(str(first.specs[0].stimuli[0].path))
    low, low_rate = sf.read(str(anchors["anchor_low"]))
    mid, _ = sf.read(str(anchors["anchor_mid"]))
    assert low_rate == rate
    assert len(low) == len(reference)
    assert high_band_energy(reference, rate, 4500) > 0.5
    assert high_band_energy(low, rate, 4500) < 1e-5
    assert high_band_energy(mid, rate, 9000) < 1e-5
    assert high_band_energy(mid, rate, 4500) > 0.05


def test_changed_reference_gets_new_anchor(
    make_study: Callable[..., Path], tmp_path: Path, registry: Registry
) -> None:
    path = make_study(tmp_path / "study", items=1, systems=2)
    config = load_config(path, registry)
    generated = tmp_path / "generated"
    before = check_study(config, registry, generated).specs[0].stimuli[2].path
    reference = tmp_path / "study" / "audio" / "item0" / "reference.wav"
    data, rate = sf.read(str(reference))
    sf.write(str(reference), 0.5 * data, rate)

    after = check_study(config, registry, generated).specs[0].stimuli[2].path
    assert after != before
    assert before.exists()


def test_low_anchor_off_needs_nonconforming_switch(
    make_study: Callable[..., Path],
    tmp_path: Path,
    registry: Registry,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    path = make_study(tmp_path / "a", mushra={"anchors": {"low": False}})
    code, output = run_validate(path)
    assert code != 0
    assert f"{path}:{line_of(path, 'low: false')}: mushra.anchors.low" in output
    assert "allow_nonconforming" in output

    allowed = make_study(
        tmp_path / "b", mushra={"anchors": {"low": False}, "allow_nonconforming": True}
    )
    config = load_config(allowed, registry)
    checked = check_study(config, registry, tmp_path / "generated")
    roles = {stimulus.role for stimulus in checked.specs[0].stimuli}
    assert "anchor_low" not in roles
    assert "anchor_mid" in roles
    conforming, statements = conformance(config.test_type_section)
    assert conforming is False
    assert any("3.5 kHz" in statement for statement in statements)


def test_thirteen_signals_rejected_by_validate(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    # Hidden reference + 2 anchors + 10 systems = 13 rated signals.
    path = make_study(tmp_path / "study", items=1, systems=10, seconds=0.5)
    code, output = run_validate(path)
    assert code != 0
    item_line = line_of(path, "systems:")
    assert f"{path}:{item_line}: mushra.items[0].systems" in output
    assert "13 rated signals" in output
    assert "max_signals_per_page is 12" in output
    assert "blocked_design" in output


def test_twelve_signals_accepted_by_validate(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    path = make_study(tmp_path / "study", items=1, systems=9, seconds=0.5)
    code, output = run_validate(path)
    assert code == 0, output
    assert "valid" in output


def test_unequal_lengths_rejected_by_validate(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    path = make_study(tmp_path / "study", items=2, systems=2, seconds=1.0)
    shorter = tmp_path / "study" / "audio" / "item1" / "system1.wav"
    data, rate = sf.read(str(shorter))
    sf.write(str(shorter), data[: rate // 2], rate)

    code, output = run_validate(path)
    assert code != 0
    assert f"{path}:{line_of(path, '- name: item1')}: mushra.items[1]" in output
    assert "'system1' is 24000 frames" in output
    assert "48000 frames" in output


def test_blocked_design_splits_systems(
    make_study: Callable[..., Path], tmp_path: Path, registry: Registry
) -> None:
    path = make_study(
        tmp_path / "study",
        items=1,
        systems=14,
        seconds=0.5,
        mushra={"blocked_design": True},
    )
    config = load_config(path, registry)
    specs = check_study(config, registry, tmp_path / "generated").specs

    # 9 systems fit next to the hidden reference and 2 anchors: 2 pages of 7.
    assert [spec.key for spec in specs] == [
        "item0/quality/block1",
        "item0/quality/block2",
    ]
    seen: list[str] = []
    for number, spec in enumerate(specs, start=1):
        roles = Counter(stimulus.role for stimulus in spec.stimuli)
        assert roles["hidden_reference"] == 1
        assert roles["anchor_low"] == 1
        assert roles["anchor_mid"] == 1
        assert roles["system"] == 7
        systems = [s.key for s in spec.stimuli if s.role == "system"]
        assert spec.data["block"] == number
        assert spec.data["blocks"] == 2
        assert spec.data["block_systems"] == systems
        seen += systems
    assert sorted(seen) == sorted(f"system{index}" for index in range(14))

    conforming, statements = conformance(config.test_type_section)
    assert conforming is True
    assert any("split over 2 pages" in statement for statement in statements)


def test_scales_make_one_page_each(
    make_study: Callable[..., Path], tmp_path: Path, registry: Registry
) -> None:
    scales = [
        {"name": "overall", "question": "Rate the overall quality."},
        {"name": "interference", "question": "Rate the suppression of other sounds."},
    ]
    path = make_study(tmp_path / "study", items=2, systems=2, mushra={"scales": scales})
    config = load_config(path, registry)
    specs = check_study(config, registry, tmp_path / "generated").specs
    assert [spec.key for spec in specs] == [
        "item0/overall",
        "item0/interference",
        "item1/overall",
        "item1/interference",
    ]
    assert specs[1].data["question"] == "Rate the suppression of other sounds."


@pytest.mark.parametrize("rate", [16000, 44100, 96000])
def test_sample_rates_validate(
    make_study: Callable[..., Path],
    tmp_path: Path,
    registry: Registry,
    rate: int,
) -> None:
    anchors = {"low": True, "mid": rate > 16000}
    path = make_study(
        tmp_path / "study", items=1, systems=2, rate=rate, mushra={"anchors": anchors}
    )
    config = load_config(path, registry)
    checked = check_study(config, registry, tmp_path / "generated")
    for stimulus in checked.specs[0].stimuli:
        assert checked.infos[stimulus.path].sample_rate == rate
    low = next(s.path for s in checked.specs[0].stimuli if s.role == "anchor_low")
    data, low_rate = sf.read(str(low))
    assert low_rate == rate
    assert high_band_energy(data, rate, 4500) < 1e-5


def test_mid_anchor_at_16k_rejected(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    path = make_study(tmp_path / "study", items=1, systems=2, rate=16000)
    code, output = run_validate(path)
    assert code != 0
    assert "mushra.anchors.mid" in output
    assert "16000 Hz" in output
    assert "mid: false" in output


def test_reserved_system_name_rejected(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    path = make_study(tmp_path / "study", items=1, systems=2)
    text = path.read_text().replace("system1:", "hidden_reference:")
    path.write_text(text)
    code, output = run_validate(path)
    assert code != 0
    assert "mushra.items[0].systems.hidden_reference" in output
    assert "Rename it" in output


def test_unknown_key_lists_valid_keys(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    path = make_study(tmp_path / "study", mushra={"min_play_second": 2})
    code, output = run_validate(path)
    assert code != 0
    line = line_of(path, "min_play_second:")
    assert f"{path}:{line}: mushra.min_play_second: unknown key" in output
    assert "Did you mean 'min_play_seconds'?" in output


def test_missing_training_example_rejected(
    make_study: Callable[..., Path],
    tmp_path: Path,
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    training = {"enabled": True, "low_quality_examples": ["missing.wav"]}
    path = make_study(tmp_path / "study", mushra={"training": training})
    code, output = run_validate(path)
    assert code != 0
    assert "mushra.training.low_quality_examples[0]" in output
    assert "audio file not found" in output


@pytest.mark.parametrize(
    "name", ["general_mushra.yaml", "sourceseparation_mushra.yaml"]
)
def test_shipped_configs_validate(
    run_validate: Callable[[Path], tuple[int, str]], name: str
) -> None:
    code, output = run_validate(CONFIGS / name)
    assert code == 0, output
    assert "valid" in output


def test_demo_config_validates(
    run_validate: Callable[[Path], tuple[int, str]],
) -> None:
    demo = MushraTestType().demo_config()
    assert demo is not None and demo.is_file()
    code, output = run_validate(demo)
    assert code == 0, output
    assert "3 conditions" in output


def test_separation_config_has_four_scales(registry: Registry, tmp_path: Path) -> None:
    config = load_config(CONFIGS / "sourceseparation_mushra.yaml", registry)
    specs = check_study(config, registry, tmp_path / "generated").specs
    assert len({spec.scale for spec in specs}) == 4
    roles = Counter(stimulus.role for stimulus in specs[0].stimuli)
    assert roles["anchor"] == 3
    assert roles["system"] == 3
    reference = next(s.path for s in specs[0].stimuli if s.role == "reference")
    assert reference.parent.name == "sep"


# --- plan, response, export ----------------------------------------------------


def condition_view(roles: dict[str, str], block: int | None = None) -> ConditionView:
    stimuli = {
        key: StimulusView(
            id=index, key=key, role=role, sample_rate=48000, channels=1, frames=48000
        )
        for index, (key, role) in enumerate(roles.items(), start=1)
    }
    return ConditionView(
        id=1,
        key="item0/quality",
        item="item0",
        scale="quality",
        data={"block": block, "question": "Rate."},
        stimuli=stimuli,
    )


ROLES = {
    "reference": "reference",
    "hidden_reference": "hidden_reference",
    "lowpass_3500": "anchor_low",
    "lowpass_7000": "anchor_mid",
    "codec_a": "system",
    "codec_b": "system",
    "codec_c": "system",
}


def trial_page(plan: dict[str, Any]) -> TrialPage:
    return TrialPage(
        condition=condition_view(ROLES),
        plan=plan,
        signal_urls={},
        submit_url="",
        csrf_token="",
        position=0,
        total=1,
        section=None,
        study_title="Test",
    )


def test_plan_labels_follow_shuffle() -> None:
    test_type = MushraTestType()
    condition = condition_view(ROLES)
    positions: dict[str, Counter[str]] = {key: Counter() for key in ROLES}
    for seed in range(300):
        plan = test_type.plan_trial(condition, random.Random(seed), seed)
        signals = plan["signals"]
        assert signals[0] == {"id": "ref", "stimulus": "reference"}
        assert [signal["id"] for signal in signals[1:]] == [
            f"s{n}" for n in range(1, 7)
        ]
        assert sorted(signal["stimulus"] for signal in signals[1:]) == sorted(
            key for key in ROLES if key != "reference"
        )
        for signal in signals[1:]:
            positions[signal["stimulus"]][signal["id"]] += 1
    # Every rated stimulus lands on every label: labels reveal nothing.
    for key, counts in positions.items():
        if key != "reference":
            assert set(counts) == {f"s{n}" for n in range(1, 7)}, key


def test_plan_is_reproducible_from_seed() -> None:
    test_type = MushraTestType()
    condition = condition_view(ROLES)
    first = test_type.plan_trial(condition, random.Random("seed:p1"), 0)
    second = test_type.plan_trial(condition, random.Random("seed:p1"), 0)
    assert first == second


PLAN = {
    "signals": [
        {"id": "ref", "stimulus": "reference"},
        {"id": "s1", "stimulus": "codec_b"},
        {"id": "s2", "stimulus": "lowpass_3500"},
        {"id": "s3", "stimulus": "hidden_reference"},
        {"id": "s4", "stimulus": "codec_a"},
        {"id": "s5", "stimulus": "lowpass_7000"},
        {"id": "s6", "stimulus": "codec_c"},
    ]
}
GOOD = {
    "ratings": {"s1": 70, "s2": 12.5, "s3": 100, "s4": 55, "s5": 40, "s6": 0},
    "order": ["s1", "s2", "s3", "s4", "s5", "s6"],
    "loop": {"start": 1.0, "end": 2.5},
}


def test_valid_response_is_cleaned() -> None:
    cleaned = MushraTestType().validate_response(trial_page(PLAN), GOOD)
    assert cleaned == {
        "ratings": {
            "s1": 70.0,
            "s2": 12.5,
            "s3": 100.0,
            "s4": 55.0,
            "s5": 40.0,
            "s6": 0.0,
        },
        "order": ["s1", "s2", "s3", "s4", "s5", "s6"],
        "loop": {"start": 1.0, "end": 2.5},
    }
    assert all(isinstance(value, float) for value in cleaned["ratings"].values())


def _with(**changes: Any) -> dict[str, Any]:
    response = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("rating_"):
            signal = key.removeprefix("rating_")
            if value is ...:
                del response["ratings"][signal]
            else:
                response["ratings"][signal] = value
        else:
            response[key] = value
    return response


@pytest.mark.parametrize(
    ("response", "field"),
    [
        (None, "response"),
        ([1, 2], "response"),
        (_with(rating_s3=...), "response.ratings.s3"),
        (_with(rating_s2=100.5), "response.ratings.s2"),
        (_with(rating_s2=-1), "response.ratings.s2"),
        (_with(rating_s4=True), "response.ratings.s4"),
        (_with(rating_s4="80"), "response.ratings.s4"),
        (_with(rating_s4=float("nan")), "response.ratings.s4"),
        (_with(rating_s4=float("inf")), "response.ratings.s4"),
        (_with(rating_s4=10**400), "response.ratings.s4"),
        (_with(rating_s4=-(10**400)), "response.ratings.s4"),
        (_with(rating_s7=50), "response.ratings.s7"),
        (_with(rating_ref=50), "response.ratings.ref"),
        (_with(ratings=[1, 2]), "response.ratings"),
        (_with(order=["s1", "s2"]), "response.order"),
        (_with(order=["s1", "s1", "s3", "s4", "s5", "s6"]), "response.order"),
        (_with(loop={"start": 2, "end": 1}), "response.loop.end"),
        (_with(loop={"start": -1, "end": 1}), "response.loop.start"),
        (_with(loop={"start": 0, "end": 10**400}), "response.loop.end"),
        (_with(loop={"start": 10**400, "end": 1}), "response.loop.start"),
        (_with(loop={"start": 0, "end": 1, "x": 1}), "response.loop"),
        (_with(extra="junk"), "response.extra"),
        (_with(dropped_events=-3), "response.dropped_events"),
        (_with(restored="yes"), "response.restored"),
        (_with(restored=1), "response.restored"),
        (_with(restored=None), "response.restored"),
    ],
)
def test_invalid_response_names_field(response: Any, field: str) -> None:
    with pytest.raises(ResponseError) as raised:
        MushraTestType().validate_response(trial_page(PLAN), response)
    assert raised.value.field == field


@pytest.mark.parametrize(("sent", "stored"), [(True, True), (False, None)])
def test_restored_flag_stored_and_exported(sent: bool, stored: bool | None) -> None:
    cleaned = MushraTestType().validate_response(trial_page(PLAN), _with(restored=sent))
    assert cleaned.get("restored") is stored
    trial = {"condition": condition_view(ROLES), "plan": PLAN, "response": cleaned}
    rows = MushraTestType().export_rows(trial)
    assert [row["restored"] for row in rows] == [sent] * len(GOOD["ratings"])


def test_export_rows_one_per_rating() -> None:
    response = MushraTestType().validate_response(trial_page(PLAN), GOOD)
    trial = {
        "participant": "p1",
        "condition": condition_view(ROLES),
        "plan": PLAN,
        "response": response,
        "started_at": None,
        "completed_at": None,
    }
    rows = MushraTestType().export_rows(trial)
    table = pd.DataFrame(rows).set_index("system")

    assert len(rows) == 6
    assert set(table.index) == set(ROLES) - {"reference"}
    assert table.loc["hidden_reference", "role"] == "hidden_reference"
    assert bool(table.loc["hidden_reference", "is_hidden_reference"]) is True
    assert bool(table.loc["codec_a", "is_hidden_reference"]) is False
    assert bool(table.loc["lowpass_3500", "is_anchor"]) is True
    assert bool(table.loc["codec_a", "is_anchor"]) is False
    assert table.loc["lowpass_7000", "role"] == "anchor_mid"
    assert table.loc["codec_b", "rating"] == 70.0
    assert table.loc["codec_b", "position"] == 1
    assert table.loc["codec_c", "position"] == 6
    assert table.loc["codec_c", "signal"] == "s6"
    assert set(table["item"]) == {"item0"}
    assert set(table["scale"]) == {"quality"}
    assert table["block"].isna().all()


# --- report --------------------------------------------------------------------


def synthetic_ratings(listeners: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    means = {
        "hidden_reference": ("hidden_reference", 97),
        "lowpass_3500": ("anchor_low", 15),
        "lowpass_7000": ("anchor_mid", 40),
        "codec_a": ("system", 80),
        "codec_b": ("system", 60),
        "codec_c": ("system", 35),
    }
    rows = []
    for listener in range(listeners):
        for item in ("item0", "item1", "item2"):
            for system, (role, mean) in means.items():
                rating = float(np.clip(rng.normal(mean, 4), 0, 100))
                if listener == 0 and role == "hidden_reference":
                    rating = 20.0
                rows.append(
                    {
                        "participant": f"p{listener}",
                        "item": item,
                        "scale": "quality",
                        "condition": f"{item}/quality",
                        "system": system,
                        "role": role,
                        "rating": rating,
                    }
                )
    return pd.DataFrame(rows)


def report_section(**overrides: Any) -> MushraConfig:
    section = {
        "items": [{"name": "item0", "reference": "r.wav", "systems": {"a": "a.wav"}}]
    }
    section.update(overrides)
    return MushraConfig.model_validate(section)


def test_report_screens_and_summarizes(tmp_path: Path) -> None:
    ratings = synthetic_ratings()
    sections = build_sections(
        ratings, report_section(), tmp_path / "figures", excluded={"p11": ["hearing"]}
    )
    titles = [section.title for section in sections]
    assert titles == [
        "MUSHRA: conformance with ITU-R BS.1534-3",
        "MUSHRA: post-screening",
        "MUSHRA: scale quality",
    ]
    assert "conforms to ITU-R BS.1534-3" in sections[0].html
    assert "NOT" not in sections[0].html

    # BS.1534-3 rule, computed directly: hidden reference below 90 on more
    # than 15 % of a listener's pages. No page is failed by over 25 %.
    screened = ratings.loc[ratings["participant"] != "p11"]
    hidden = screened.loc[screened["role"] == "hidden_reference"]
    failed_share = (hidden["rating"] < 90).groupby(hidden["participant"]).mean()
    assert (hidden["rating"] < 90).groupby(hidden["item"]).mean().max() <= 0.25
    expected = sorted(failed_share.index[failed_share > 0.15])
    assert "p0" in expected

    screening = sections[1].tables["mushra_post_screening"]
    excluded = sorted(set(screening.loc[screening["excluded"], "participant"]))
    assert excluded == expected
    assert "p11" not in set(screening["participant"])
    assert "after 1 excluded before it" in sections[1].html

    summary = sections[2].tables["mushra_summary_quality"].set_index("system")
    kept = ratings.loc[~ratings["participant"].isin([*expected, "p11"])]
    expected = kept.groupby("system")["rating"].agg(["mean", "median"])
    for system in expected.index:
        assert math.isclose(summary.loc[system, "mean"], expected.loc[system, "mean"])
        assert math.isclose(
            summary.loc[system, "median"], expected.loc[system, "median"]
        )
        assert summary.loc[system, "ci_low"] <= summary.loc[system, "mean"]
        assert summary.loc[system, "mean"] <= summary.loc[system, "ci_high"]
    assert summary.loc["hidden_reference", "role"] == "reference"

    pairs = sections[2].tables["mushra_wilcoxon_quality"]
    assert len(pairs) == 3
    assert pairs["significant"].all()
    assert "Friedman" in sections[2].html
    assert sections[2].html.count("data:image/png;base64,") == 2
    for stem in ("mushra_boxplot_quality", "mushra_ci_quality"):
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (tmp_path / "figures" / f"{stem}.svg").is_file()


def test_report_states_nonconformance(tmp_path: Path) -> None:
    section = report_section(anchors={"low": False}, allow_nonconforming=True)
    ratings = synthetic_ratings()
    ratings = ratings.loc[ratings["role"] != "anchor_low"]
    sections = build_sections(ratings, section, tmp_path)
    assert "does NOT conform" in sections[0].html
    assert "3.5 kHz" in sections[0].html


def test_report_without_ratings(tmp_path: Path) -> None:
    empty = synthetic_ratings().iloc[0:0]
    sections = build_sections(empty, report_section(), tmp_path)
    assert sections[-1].title == "MUSHRA ratings"
    assert "No ratings" in sections[-1].html


# --- served pages over real HTTP ---------------------------------------------------


@pytest.fixture
def served_mushra(
    make_study: Callable[..., Path],
    tmp_path: Path,
    database_url: str,
    use_registry: Registry,
) -> Iterator[ServedStudy]:
    """Two items of different page sizes (6 and 7 signals) behind a real server,
    on SQLite and on PostgreSQL."""
    path = make_study(tmp_path / "study", items=2, systems=4)
    config = yaml.safe_load(path.read_text())
    del config["mushra"]["items"][0]["systems"]["system3"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    served = build_study(path, database_url, use_registry, tmp_path / "data")
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_server_accepts_complete_response(served_mushra: ServedStudy) -> None:
    http = requests.Session()
    page_url = begin_session(http, served_mushra.url)
    agree(http, page_url)
    settings = settings_of(http.get(page_url).text)

    answer = post_response(
        http, served_mushra.url, settings, complete_response(settings, 64)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] is True
    with served_mushra.session_factory() as session:
        trial = session.scalars(select(Trial)).one()
        assert set(trial.response["ratings"]) == {s["id"] for s in settings["signals"]}
        assert set(trial.response["ratings"].values()) == {64.0}


def test_server_rejects_invalid_ratings(served_mushra: ServedStudy) -> None:
    http = requests.Session()
    page_url = begin_session(http, served_mushra.url)
    agree(http, page_url)
    with served_mushra.session_factory() as session:
        plans = [
            [signal["id"] for signal in reservation.plan["signals"]]
            for reservation in session.scalars(select(Reservation)).all()
        ]
    larger = max(plans, key=len)
    settings = settings_of(http.get(page_url).text)
    ids = [signal["id"] for signal in settings["signals"]]
    stored = 0
    if len(ids) == len(larger) - 1:
        # Submit the larger page first, so that the page under test lacks an
        # id of the other page.
        answer = post_response(
            http, served_mushra.url, settings, complete_response(settings)
        )
        assert answer.status_code == 200, answer.text
        stored = 1
        settings = settings_of(http.get(page_url).text)
        ids = [signal["id"] for signal in settings["signals"]]
    other = min(set(larger) - set(ids) - {"ref"})

    missing = complete_response(settings)
    del missing["ratings"][ids[2]]
    too_high = complete_response(settings)
    too_high["ratings"][ids[0]] = 101
    foreign = complete_response(settings)
    foreign["ratings"][other] = 50
    cases = [
        (missing, f"response.ratings.{ids[2]}"),
        (too_high, f"response.ratings.{ids[0]}"),
        (foreign, f"response.ratings.{other}"),
    ]
    for response, field in cases:
        answer = post_response(http, served_mushra.url, settings, response)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field
        assert count_trials(served_mushra) == stored


def test_trial_page_hides_names(
    make_demo_copy: Callable[..., Path],
    tmp_path: Path,
    sqlite_url: str,
    use_registry: Registry,
) -> None:
    path = make_demo_copy(tmp_path / "demo")
    served = build_study(path, sqlite_url, use_registry, tmp_path / "data")
    base = served.start()
    try:
        http = requests.Session()
        page_url = begin_session(http, base)
        agree(http, page_url)
        survey = http.get(page_url).text
        answered = http.post(
            page_url + "step/pre_survey",
            data={"csrf_token": csrf_of(survey), "age": "30", "hearing_disorder": "no"},
        )
        assert answered.status_code == 200

        training = http.get(page_url)
        assert 'id="continue"' in training.text
        training_settings = settings_of(training.text)
        assert len(training_settings["examples"]) == 2
        continued = http.post(
            page_url + "step/training", data={"csrf_token": csrf_of(training.text)}
        )
        assert continued.status_code == 200

        trial = http.get(page_url)
        settings = settings_of(trial.text)
        assert len(settings["signals"]) == 7
        pages = {"training": training, "trial": trial}
        urls = [settings["reference"]["url"], *(s["url"] for s in settings["signals"])]
        urls += [example["url"] for example in training_settings["examples"]]
        urls += [training_settings["reference"]["url"]]
        for name, page in pages.items():
            text = page.text.lower()
            headers = json.dumps(dict(page.headers)).lower()
            for secret in DEMO_NAMES:
                assert secret not in text, f"{name} page source contains {secret!r}"
                assert secret not in headers, f"{name} page headers contain {secret!r}"
        for url in urls:
            audio = http.get(base + url)
            assert audio.status_code == 200
            assert audio.headers["Content-Type"] == "audio/wav"
            assert "Content-Disposition" not in audio.headers
            headers = json.dumps(dict(audio.headers)).lower()
            for secret in DEMO_NAMES:
                assert secret not in url.lower(), f"audio URL {url} contains {secret!r}"
                assert secret not in headers, f"audio headers contain {secret!r}"
            decoded, rate = sf.read(io.BytesIO(audio.content))
            assert rate == 48000
            assert len(decoded) > 0
    finally:
        served.stop()


def test_events_are_stored(served_mushra: ServedStudy) -> None:
    http = requests.Session()
    page_url = begin_session(http, served_mushra.url)
    agree(http, page_url)
    settings = settings_of(http.get(page_url).text)
    events = [
        {"type": "play", "time": 10.0, "position": 0.0, "signal": "ref"},
        {
            "type": "switch",
            "time": 900.5,
            "position": 0.87,
            "from": "ref",
            "to": "s2",
            "signal": "s2",
        },
        {
            "type": "loop-set",
            "time": 950.0,
            "position": 0.2,
            "start": 0.2,
            "end": 0.9,
            "signal": "s2",
        },
        {"type": "stop", "time": 2000.0, "position": 0.5, "signal": "s2"},
    ]
    body = {
        "idempotency_key": "events-0123456789",
        "response": complete_response(settings),
        "events": events,
        "time_on_page_ms": 2500,
    }
    answer = http.post(
        served_mushra.url + settings["submitUrl"],
        json=body,
        headers={"X-CAQE-CSRF": settings["csrfToken"]},
    )
    assert answer.status_code == 200, answer.text
    with served_mushra.session_factory() as session:
        stored = session.scalars(
            select(ListeningEvent).order_by(ListeningEvent.sequence)
        ).all()
        assert [event.type for event in stored] == [
            "play",
            "switch",
            "loop-set",
            "stop",
        ]
        assert stored[1].signal == "s2"
        assert stored[1].stimulus_key is not None
        assert stored[2].data["start"] == 0.2


# --- caqe run --plugin mushra ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_caqe_run_serves_demo(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "caqe"
    assert executable.exists(), (
        f"the caqe command is not installed next to {sys.executable}"
    )
    port = free_port()
    env = {
        **os.environ,
        "CAQE_HOME": str(tmp_path / "home"),
        "CAQE_PLUGINS": "mushra,pairwise,mturk,local_lab",
        "CAQE_ADMIN_PASSWORD": "demo-admin-password",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [str(executable), "run", "--plugin", "mushra", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        urls: dict[str, str] = {}
        while time.monotonic() < deadline and len(urls) < 2:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.search(r"(Participant|Admin) URL:\s+(\S+)", line)
            if match:
                urls[match.group(1)] = match.group(2)
        assert urls.get("Participant") == f"http://127.0.0.1:{port}/", "".join(output)
        assert urls["Admin"].startswith(f"http://127.0.0.1:{port}/admin/")
        landing = requests.get(urls["Participant"], timeout=10)
        assert landing.status_code == 200
        assert "CAQE demo: MUSHRA codec test" in landing.text
        assert 'id="start"' in landing.text
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()


# --- results export and analysis report ------------------------------------------


def test_analyze_report_has_mushra_sections(
    make_study: Callable[..., Path],
    tmp_path: Path,
    sqlite_url: str,
    use_registry: Registry,
) -> None:
    path = make_study(
        tmp_path / "study",
        items=3,
        systems=3,
        assignment={"conditions_per_participant": 3, "trials_per_condition": 8},
    )
    served = build_study(path, sqlite_url, use_registry, tmp_path / "data")
    base = served.start()
    means = {
        "hidden_reference": 96,
        "lowpass_3500": 10,
        "lowpass_7000": 35,
        "system0": 80,
        "system1": 60,
        "system2": 45,
    }
    try:
        for listener in range(8):
            http = requests.Session()
            page_url = begin_session(http, base)
            agree(http, page_url)
            for _ in range(3):
                settings = settings_of(http.get(page_url).text)
                with served.session_factory() as session:
                    plan = session.scalars(
                        select(Reservation.plan).where(
                            Reservation.status == "active",
                            Reservation.public_id
                            == settings["submitUrl"].rsplit("/", 1)[1],
                        )
                    ).one()
                stimulus = {s["id"]: s["stimulus"] for s in plan["signals"]}
                response = complete_response(settings)
                for signal_id in response["ratings"]:
                    value = means[stimulus[signal_id]] + listener % 3
                    if listener == 0 and stimulus[signal_id] == "hidden_reference":
                        value = 40
                    response["ratings"][signal_id] = value
                answer = post_response(http, base, settings, response)
                assert answer.status_code == 200, answer.text
    finally:
        served.stop()

    runner = CliRunner()
    group = build_cli()
    export_dir = tmp_path / "export"
    exported = runner.invoke(
        group,
        ["results", "export", "--database-url", sqlite_url, "--out", str(export_dir)],
    )
    assert exported.exit_code == 0, exported.output
    ratings = pd.read_csv(export_dir / "ratings.csv")
    assert len(ratings) == 8 * 3 * 6
    for column in ("system", "role", "is_hidden_reference", "is_anchor", "rating"):
        assert column in ratings.columns
    hidden = ratings.loc[ratings["role"] == "hidden_reference"]
    assert hidden["is_hidden_reference"].all()
    assert len(hidden) == 8 * 3

    report = tmp_path / "report.html"
    analyzed = runner.invoke(
        group, ["analyze", "--database-url", sqlite_url, "--out", str(report)]
    )
    assert analyzed.exit_code == 0, analyzed.output
    html = report.read_text()
    assert "MUSHRA: conformance with ITU-R BS.1534-3" in html
    assert "MUSHRA: post-screening" in html
    assert "MUSHRA: scale quality" in html
    assert "rated the hidden reference below 90 on 3 of 3 pages" in html
    assert "&lt;h4&gt;" not in html
    assert html.count('src="data:image/png;base64,') >= 2
    files = tmp_path / "report_files"
    assert (files / "figures" / "mushra_boxplot_quality.png").is_file()
    assert (files / "figures" / "mushra_ci_quality.svg").is_file()
    summary = pd.read_csv(files / "tables" / "mushra_summary_quality.csv")
    summary = summary.set_index("system")
    kept = ratings.loc[ratings["participant"] != ratings["participant"].iloc[0]]
    expected = kept.groupby("system")["rating"].mean()
    for system, mean in expected.items():
        assert math.isclose(summary.loc[system, "mean"], mean)
