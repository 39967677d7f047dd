"""The pairwise test type: configs, conditions, plans, responses, export,
consistency, the report, and the served pages over real HTTP."""

from __future__ import annotations

import copy
import dataclasses
import json
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
import soundfile as sf
import yaml
from caqe_pairwise import judgements, scoring
from caqe_pairwise.conditions import design_seed
from caqe_pairwise.config import PairwiseConfig
from caqe_pairwise.judgements import judgement_frame
from caqe_pairwise.plugin import PairwiseTestType
from caqe_pairwise.report import build_sections, position_bias
from caqe_pairwise.responses import heard_seconds_from_events, validate_response
from click.testing import CliRunner
from sqlalchemy import func, select

from caqe_core import ConditionView, ResponseError, StimulusView
from caqe_core.cli import build_cli, resolve_config_path
from caqe_core.config import load_config
from caqe_core.models import Reservation, Trial
from caqe_core.plugins import Registry, set_registry
from caqe_core.results.tables import ExportError, StoredTrial, load_tables
from caqe_core.study import check_study
from tests.support.server import ServedStudy, build_study
from tests.support.studies import scale_study

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "plugins" / "pairwise" / "demo" / "demo.yaml"
SHIPPED_CONFIGS = (
    DEMO_CONFIG,
    REPO_ROOT / "configs" / "general_pairwise.yaml",
    REPO_ROOT / "configs" / "sourceseparation_pairwise.yaml",
)
RATE = 16000


# --- helpers -----------------------------------------------------------------


def write_noise(path: Path, seed: int, seconds: float = 0.5) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.1 * rng.standard_normal(int(seconds * RATE)), RATE)


def pairwise_study(
    folder: Path,
    *,
    items: int = 1,
    systems: int = 4,
    reference: bool = True,
    pairwise: dict[str, Any] | None = None,
    **core: Any,
) -> Path:
    """Write a pairwise study of noise stimuli and return the config path.

    ``pairwise`` entries replace keys of the ``pairwise`` section; other
    keyword arguments replace top-level sections.
    """
    section: dict[str, Any] = {"items": [], "min_play_seconds": 1.0}
    for item in range(items):
        name = f"item{item}"
        entry: dict[str, Any] = {"name": name, "systems": {}}
        if reference:
            write_noise(folder / "audio" / name / "reference.wav", seed=item)
            entry["reference"] = f"{name}/reference.wav"
        for index in range(systems):
            write_noise(folder / "audio" / name / f"sys{index}.wav", 100 * item + index)
            entry["systems"][f"sys{index}"] = f"{name}/sys{index}.wav"
        section["items"].append(entry)
    section.update(pairwise or {})
    config: dict[str, Any] = {
        "experiment": {"name": "pairwise-study", "title": "Pairwise test"},
        "test_type": "pairwise",
        "audio": {"root": "audio"},
        "assignment": {"conditions_per_participant": items, "trials_per_condition": 50},
        "flow": {"steps": ["consent", "trials"]},
        "pairwise": section,
    }
    config.update(core)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def condition_view(
    systems: int,
    pairs_per_participant: int | None = None,
    repeats: int = 0,
    reference: bool = False,
) -> ConditionView:
    names = [f"sys{index}" for index in range(systems)]
    keys = (["reference"] if reference else []) + names
    stimuli = {
        key: StimulusView(
            id=number,
            key=key,
            role="reference" if key == "reference" else "system",
            sample_rate=RATE,
            channels=1,
            frames=RATE,
        )
        for number, key in enumerate(keys, start=1)
    }
    return ConditionView(
        id=1,
        key="item0/quality",
        item="item0",
        scale="quality",
        data={
            "scale": "quality",
            "question": "Which is better?",
            "description": "",
            "systems": names,
            "pairs_per_participant": pairs_per_participant,
            "repeats": repeats,
            "design_seed": design_seed(7, "item0", "quality"),
        },
        stimuli=stimuli,
    )


def system_of(plan: dict[str, Any]) -> dict[str, str]:
    return {signal["id"]: signal["stimulus"] for signal in plan["signals"]}


def listening_events(
    pairs: list[dict[str, Any]],
    choices: list[str],
    seconds: float = 1.5,
) -> list[dict[str, Any]]:
    """Return the events of playing A, then B, for ``seconds`` each, then choosing."""
    events: list[dict[str, Any]] = []
    clock = 0.0
    for index, (pair, choice) in enumerate(zip(pairs, choices)):
        events += [
            {
                "type": "pair",
                "time": clock,
                "position": 0,
                "signal": None,
                "pair": index,
            },
            {
                "type": "switch",
                "time": clock + 5,
                "position": 0,
                "from": None,
                "to": pair["a"],
                "signal": pair["a"],
                "pair": index,
            },
            {
                "type": "play",
                "time": clock + 10,
                "position": 0,
                "signal": pair["a"],
                "pair": index,
            },
            {
                "type": "switch",
                "time": clock + 10 + seconds * 1000,
                "position": seconds,
                "from": pair["a"],
                "to": pair["b"],
                "signal": pair["b"],
                "pair": index,
            },
            {
                "type": "choice",
                "time": clock + 10 + 2 * seconds * 1000,
                "position": 2 * seconds,
                "signal": pair.get(choice),
                "pair": index,
                "choice": choice,
            },
            {
                "type": "stop",
                "time": clock + 20 + 2 * seconds * 1000,
                "position": 2 * seconds,
                "signal": pair["b"],
                "pair": index,
            },
        ]
        clock += 100 + 2 * seconds * 1000
    return events


def response_for(
    pairs: list[dict[str, Any]], choices: list[str], seconds: float = 1.5
) -> dict[str, Any]:
    return {
        "judgements": [
            {
                "pair": index,
                "a": pair["a"],
                "b": pair["b"],
                "choice": choice,
                "decision_time_ms": 2000.0 + index,
                "played_seconds": {"a": seconds, "b": seconds},
            }
            for index, (pair, choice) in enumerate(zip(pairs, choices))
        ]
    }


def choices_by_rank(
    plan: dict[str, Any], rank: dict[str, int], flip_repeats: int = 0
) -> list[str]:
    """Choose the system of lower rank in every pair, flipping the first repeats."""
    systems = system_of(plan)
    choices = []
    flipped = 0
    for pair in plan["pairs"]:
        better_is_a = rank[systems[pair["a"]]] < rank[systems[pair["b"]]]
        if pair["repeat"] and flipped < flip_repeats:
            better_is_a = not better_is_a
            flipped += 1
        choices.append("a" if better_is_a else "b")
    return choices


def settings_of(page_html: str) -> dict[str, Any]:
    match = re.search(
        r'<script type="application/json" id="pairwise-settings">(.*?)</script>',
        page_html,
        re.DOTALL,
    )
    assert match, "the page is a pairwise trial page"
    return json.loads(match.group(1))


def arrive(base: str) -> tuple[requests.Session, str]:
    """Start a lab participant, agree to the consent form, return the page URL."""
    http = requests.Session()
    started = http.post(f"{base}/lab/", allow_redirects=False)
    assert started.status_code == 302
    page_url = base + started.headers["Location"]
    consent = http.get(page_url).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent).group(1)
    http.post(page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"})
    return http, page_url


def plan_of(served: ServedStudy, settings: dict[str, Any]) -> dict[str, Any]:
    public_id = settings["submitUrl"].rsplit("/", 1)[1]
    with served.session_factory() as session:
        return session.scalar(
            select(Reservation.plan).where(Reservation.public_id == public_id)
        )


def post_page(
    served: ServedStudy,
    http: requests.Session,
    settings: dict[str, Any],
    response: Any,
    events: list[dict[str, Any]],
    key: str,
) -> requests.Response:
    return http.post(
        served.url + settings["submitUrl"],
        json={
            "idempotency_key": f"{key}-0123456789",
            "response": response,
            "events": events,
        },
        headers={"X-CAQE-CSRF": settings["csrfToken"]},
    )


def count_trials(served: ServedStudy) -> int:
    with served.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Trial))


@pytest.fixture
def use_registry(registry: Registry) -> Iterator[Registry]:
    set_registry(registry)
    try:
        yield registry
    finally:
        set_registry(None)


def run_validate(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), ["validate", str(path)])
    return result.exit_code, result.output


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


# --- configs and conditions ----------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_shipped_config_validates(path: Path, use_registry: Registry) -> None:
    code, output = run_validate(path)
    assert code == 0, output
    assert "valid" in output


def test_separation_config_has_four_scales(registry: Registry, tmp_path: Path) -> None:
    config = load_config(
        REPO_ROOT / "configs" / "sourceseparation_pairwise.yaml", registry
    )
    checked = check_study(config, registry, tmp_path)
    scales = {spec.scale for spec in checked.specs}
    assert scales == {"overall", "target", "interference", "artifacts"}
    assert len(checked.specs) == 12
    assert all(len(spec.data["systems"]) == 6 for spec in checked.specs)


def test_run_plugin_resolves_demo(registry: Registry) -> None:
    assert resolve_config_path("pairwise", None, registry) == DEMO_CONFIG
    assert PairwiseTestType().demo_config() == DEMO_CONFIG


def test_conditions_one_per_item_and_scale(registry: Registry, tmp_path: Path) -> None:
    path = pairwise_study(
        tmp_path,
        items=2,
        systems=3,
        pairwise={
            "scales": [
                {"name": "quality"},
                {"name": "noise", "question": "Which is less noisy?"},
            ],
            "question": "Which sounds better?",
        },
    )
    checked = check_study(load_config(path, registry), registry, tmp_path / "gen")
    keys = [spec.key for spec in checked.specs]
    assert keys == ["item0/quality", "item0/noise", "item1/quality", "item1/noise"]
    first = checked.specs[0]
    assert {stimulus.key: stimulus.role for stimulus in first.stimuli} == {
        "reference": "reference",
        "sys0": "system",
        "sys1": "system",
        "sys2": "system",
    }
    assert first.data["question"] == "Which sounds better?"
    assert checked.specs[1].data["question"] == "Which is less noisy?"
    assert first.data["systems"] == ["sys0", "sys1", "sys2"]
    seeds = {spec.data["design_seed"] for spec in checked.specs}
    assert len(seeds) == 4, "every condition has its own design seed"


def test_item_without_reference_has_only_systems(
    registry: Registry, tmp_path: Path
) -> None:
    path = pairwise_study(tmp_path, systems=2, reference=False)
    checked = check_study(load_config(path, registry), registry, tmp_path / "gen")
    assert [stimulus.role for stimulus in checked.specs[0].stimuli] == [
        "system",
        "system",
    ]


def test_too_many_pairs_rejected_at_its_line(
    use_registry: Registry, tmp_path: Path
) -> None:
    path = pairwise_study(tmp_path, systems=3, pairwise={"pairs_per_participant": 4})
    code, output = run_validate(path)
    assert code != 0
    line = line_of(path, "pairs_per_participant")
    assert f"study.yaml:{line}: pairwise.pairs_per_participant" in output
    assert "3 pairs" in output


def test_too_many_repeats_rejected_at_its_line(
    use_registry: Registry, tmp_path: Path
) -> None:
    path = pairwise_study(
        tmp_path, systems=3, pairwise={"pairs_per_participant": 2, "repeats": 3}
    )
    code, output = run_validate(path)
    assert code != 0
    assert f"study.yaml:{line_of(path, 'repeats')}: pairwise.repeats" in output


def test_system_named_reference_rejected(
    use_registry: Registry, tmp_path: Path
) -> None:
    path = pairwise_study(tmp_path, systems=2)
    config = yaml.safe_load(path.read_text())
    systems = config["pairwise"]["items"][0]["systems"]
    systems["reference"] = systems.pop("sys1")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, output = run_validate(path)
    assert code != 0
    assert "pairwise.items[0].systems" in output
    assert "'reference' is the stimulus key of the item's reference" in output


def test_unknown_key_rejected(use_registry: Registry, tmp_path: Path) -> None:
    path = pairwise_study(tmp_path, pairwise={"pairs_per_listener": 2})
    code, output = run_validate(path)
    assert code != 0
    assert "pairs_per_listener" in output


# --- plans -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("systems", "per_participant", "repeats", "participants"),
    [(4, None, 0, 10), (4, 3, 1, 8), (5, 4, 2, 10), (6, 5, 0, 12)],
)
def test_plan_counterbalances_a_first(
    systems: int, per_participant: int | None, repeats: int, participants: int
) -> None:
    test_type = PairwiseTestType()
    view = condition_view(systems, per_participant, repeats)
    shown: Counter[tuple[str, str]] = Counter()
    a_first: Counter[tuple[str, str]] = Counter()
    for sequence in range(participants):
        plan = test_type.plan_trial(view, random.Random(sequence), sequence)
        names = system_of(plan)
        assert sum(pair["repeat"] for pair in plan["pairs"]) == repeats
        for pair in plan["pairs"]:
            if pair["repeat"]:
                continue
            a, b = names[pair["a"]], names[pair["b"]]
            key = tuple(sorted((a, b)))
            shown[key] += 1
            a_first[key] += a == key[0]

    pair_count = systems * (systems - 1) // 2
    assert len(shown) == pair_count, "every pair is planned"
    assert max(shown.values()) - min(shown.values()) <= 1
    for key, count in shown.items():
        if count % 2 == 0:
            assert a_first[key] == count // 2, key
        else:
            assert abs(2 * a_first[key] - count) == 1, key


def test_plan_repeats_are_swapped_copies() -> None:
    plan = PairwiseTestType().plan_trial(condition_view(5, 4, 2), random.Random(3), 3)
    firsts = [(p["a"], p["b"]) for p in plan["pairs"] if not p["repeat"]]
    for index, pair in enumerate(plan["pairs"]):
        if pair["repeat"]:
            assert (pair["b"], pair["a"]) in firsts
            earlier = [(p["a"], p["b"]) for p in plan["pairs"][:index]]
            assert (pair["b"], pair["a"]) in earlier, (
                "a repeat follows its first showing"
            )


def test_plan_labels_hide_systems() -> None:
    test_type = PairwiseTestType()
    view = condition_view(4, reference=True)
    mappings = set()
    for seed in range(8):
        plan = test_type.plan_trial(view, random.Random(seed), 0)
        assert plan["signals"][0] == {"id": "ref", "stimulus": "reference"}
        labels = [signal["id"] for signal in plan["signals"][1:]]
        assert labels == ["s1", "s2", "s3", "s4"]
        mappings.add(tuple(signal["stimulus"] for signal in plan["signals"][1:]))
    assert len(mappings) > 1, "labels are shuffled per participant"


def test_plan_is_reproducible() -> None:
    test_type = PairwiseTestType()
    view = condition_view(5, 3, 1)
    first = test_type.plan_trial(view, random.Random("x"), 4)
    second = test_type.plan_trial(view, random.Random("x"), 4)
    assert first == second


# --- responses ---------------------------------------------------------------------


def section(**changes: Any) -> PairwiseConfig:
    values: dict[str, Any] = {
        "items": [{"name": "item0", "systems": {"x": "x.wav", "y": "y.wav"}}],
        "min_play_seconds": 1.0,
    }
    values.update(changes)
    return PairwiseConfig(**values)


PLAN = {
    "signals": [
        {"id": "ref", "stimulus": "reference"},
        {"id": "s1", "stimulus": "sys2"},
        {"id": "s2", "stimulus": "sys0"},
        {"id": "s3", "stimulus": "sys1"},
    ],
    "pairs": [
        {"a": "s1", "b": "s2", "repeat": False},
        {"a": "s3", "b": "s1", "repeat": False},
        {"a": "s2", "b": "s1", "repeat": True},
    ],
}
CHOICES = ["a", "b", "b"]


def test_valid_response_is_cleaned() -> None:
    response = response_for(PLAN["pairs"], CHOICES)
    response["judgements"].reverse()
    events = listening_events(PLAN["pairs"], CHOICES)
    cleaned = validate_response(section(), PLAN, response, events)
    assert [entry["pair"] for entry in cleaned["judgements"]] == [0, 1, 2]
    assert [entry["choice"] for entry in cleaned["judgements"]] == CHOICES
    assert set(cleaned["judgements"][0]) == {
        "pair",
        "choice",
        "decision_time_ms",
        "played_seconds",
    }


@pytest.mark.parametrize(("sent", "stored"), [(True, True), (False, None)])
def test_restored_flag_is_stored(sent: bool, stored: bool | None) -> None:
    response = {**response_for(PLAN["pairs"], CHOICES), "restored": sent}
    events = listening_events(PLAN["pairs"], CHOICES)
    cleaned = validate_response(section(), PLAN, response, events)
    assert cleaned.get("restored") is stored


def _judgement_changed(index: int, **changes: Any) -> dict[str, Any]:
    response = response_for(PLAN["pairs"], CHOICES)
    response["judgements"][index].update(changes)
    return response


@pytest.mark.parametrize(
    ("response", "field"),
    [
        (None, "response"),
        ({"judgements": "all a"}, "response.judgements"),
        ({**response_for(PLAN["pairs"], CHOICES), "extra": 1}, "response.extra"),
        (_judgement_changed(1, pair=3, a="s3", b="s1"), "response.judgements[1].pair"),
        (_judgement_changed(1, a="s1", b="s3"), "response.judgements[1].pair"),
        (_judgement_changed(1, a="s2", b="s3"), "response.judgements[1].pair"),
        (_judgement_changed(1, pair=0, a="s1", b="s2"), "response.judgements[1].pair"),
        (_judgement_changed(0, pair=True), "response.judgements[0].pair"),
        (_judgement_changed(0, choice="none"), "response.judgements[0].choice"),
        (_judgement_changed(0, choice="c"), "response.judgements[0].choice"),
        (
            _judgement_changed(2, decision_time_ms=-1),
            "response.judgements[2].decision_time_ms",
        ),
        (
            _judgement_changed(2, decision_time_ms=10**400),
            "response.judgements[2].decision_time_ms",
        ),
        (
            _judgement_changed(2, played_seconds={"a": 0.4, "b": 2.0}),
            "response.judgements[2].played_seconds.a",
        ),
        (
            _judgement_changed(1, played_seconds={"a": 2.0, "b": 10**400}),
            "response.judgements[1].played_seconds.b",
        ),
        (
            _judgement_changed(0, played_seconds={"a": 2.0}),
            "response.judgements[0].played_seconds",
        ),
        (_judgement_changed(0, note="x"), "response.judgements[0].note"),
        (
            {**response_for(PLAN["pairs"], CHOICES), "restored": "true"},
            "response.restored",
        ),
        ({**response_for(PLAN["pairs"], CHOICES), "restored": 1}, "response.restored"),
        (
            {"judgements": response_for(PLAN["pairs"], CHOICES)["judgements"][:2]},
            "response.judgements",
        ),
    ],
)
def test_invalid_response_names_field(response: Any, field: str) -> None:
    events = listening_events(PLAN["pairs"], CHOICES)
    with pytest.raises(ResponseError) as raised:
        validate_response(section(), PLAN, response, events)
    assert raised.value.field == field


def test_no_preference_accepted_when_allowed() -> None:
    choices = ["none", "a", "none"]
    cleaned = validate_response(
        section(allow_no_preference=True),
        PLAN,
        response_for(PLAN["pairs"], choices),
        listening_events(PLAN["pairs"], choices),
    )
    assert [entry["choice"] for entry in cleaned["judgements"]] == choices


def test_events_must_show_both_played() -> None:
    response = response_for(PLAN["pairs"], CHOICES)
    short = listening_events(PLAN["pairs"], CHOICES, seconds=0.3)
    with pytest.raises(ResponseError) as raised:
        validate_response(section(), PLAN, response, short)
    assert raised.value.field == "events"
    assert "pair 0" in raised.value.message
    with pytest.raises(ResponseError) as raised:
        validate_response(section(), PLAN, response, [])
    assert raised.value.field == "events"


def test_listening_after_choice_does_not_count() -> None:
    pairs = PLAN["pairs"][:1]
    events = [
        {"type": "pair", "time": 0, "pair": 0, "signal": "s1"},
        {"type": "play", "time": 10, "pair": 0, "signal": "s1"},
        {"type": "choice", "time": 50, "pair": 0, "choice": "a", "signal": "s1"},
        {"type": "switch", "time": 60, "pair": 0, "from": "s1", "to": "s2"},
        {"type": "stop", "time": 5000, "pair": 0, "signal": "s2"},
    ]
    heard = heard_seconds_from_events(events)
    assert heard == {(0, "s1"): pytest.approx(0.04)}
    plan = {"signals": PLAN["signals"], "pairs": pairs}
    with pytest.raises(ResponseError) as raised:
        validate_response(section(), plan, response_for(pairs, ["a"]), events)
    assert raised.value.field == "events"


def test_heard_seconds_follow_play_stop_and_switch() -> None:
    events = [
        {"type": "pair", "time": 0, "pair": 0, "signal": "s1"},
        {"type": "play", "time": 100, "pair": 0, "signal": "s1"},
        {"type": "loop", "time": 900, "pair": 0, "signal": "s1"},
        {"type": "switch", "time": 1100, "pair": 0, "from": "s1", "to": "s2"},
        {"type": "stop", "time": 1600, "pair": 0, "signal": "s2"},
        {"type": "switch", "time": 2000, "pair": 0, "from": "s2", "to": "s1"},
        {"type": "play", "time": 2500, "pair": 0, "signal": "s1"},
        {"type": "choice", "time": 2800, "pair": 0, "choice": "b", "signal": "s2"},
        {"type": "stop", "time": 3000, "pair": 0, "signal": "s1"},
        {"type": "pair", "time": 3100, "pair": 1, "signal": "s1"},
        {"type": "play", "time": 3200, "pair": 1, "signal": "s1"},
        {"type": "choice", "time": 3700, "pair": 1, "choice": "a", "signal": "s1"},
    ]
    heard = heard_seconds_from_events(events)
    assert heard[(0, "s1")] == pytest.approx(1.0 + 0.3)
    assert heard[(0, "s2")] == pytest.approx(0.5)
    assert heard[(1, "s1")] == pytest.approx(0.5)
    assert (1, "s2") not in heard


def test_heard_seconds_skip_huge_times() -> None:
    events = [
        {"type": "play", "time": 100, "pair": 0, "signal": "s1"},
        {"type": "stop", "time": 10**400, "pair": 0, "signal": "s1"},
        {"type": "choice", "time": 600, "pair": 0, "choice": "a", "signal": "s1"},
    ]
    heard = heard_seconds_from_events(events)
    assert heard == {(0, "s1"): pytest.approx(0.5)}


def test_min_play_zero_still_needs_playback() -> None:
    pairs = PLAN["pairs"]
    response = response_for(pairs, CHOICES, seconds=0.0)
    with pytest.raises(ResponseError) as raised:
        validate_response(section(min_play_seconds=0), PLAN, response, None)
    assert raised.value.field == "response.judgements[0].played_seconds.a"
    unchecked = section(min_play_seconds=0, require_both_played=False)
    assert validate_response(unchecked, PLAN, response, [])["judgements"]


# --- export ------------------------------------------------------------------------


def test_export_rows_one_per_judgement() -> None:
    cleaned = validate_response(
        section(),
        PLAN,
        response_for(PLAN["pairs"], CHOICES),
        listening_events(PLAN["pairs"], CHOICES),
    )
    view = condition_view(3, reference=True)
    rows = PairwiseTestType().export_rows(
        {"condition": view, "plan": PLAN, "response": cleaned, "participant": "p"}
    )
    assert [row["order_shown"] for row in rows] == [1, 2, 3]
    assert [(row["stimulus_a"], row["stimulus_b"]) for row in rows] == [
        ("sys2", "sys0"),
        ("sys1", "sys2"),
        ("sys0", "sys2"),
    ]
    assert [row["choice"] for row in rows] == CHOICES
    assert [row["system"] for row in rows] == ["sys2", "sys2", "sys2"]
    assert [row["value"] for row in rows] == CHOICES
    assert [row["repeat"] for row in rows] == [False, False, True]
    assert [row["decision_time_ms"] for row in rows] == [2000.0, 2001.0, 2002.0]
    assert all(row["item"] == "item0" and row["scale"] == "quality" for row in rows)
    assert set(rows[0]) == {"item", "scale", *PairwiseTestType.export_columns}


@pytest.mark.parametrize(
    ("storage", "source"),
    [("pyarrow", "decoded"), ("python", "decoded"), ("pyarrow", "texts")],
)
def test_judgement_frame_equals_export_rows(
    storage: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    string_dtype = pd.StringDtype(storage, na_value=pd.NA)
    monkeypatch.setattr(judgements, "STRING_DTYPE", string_dtype)
    view = condition_view(3, reference=True)
    no_scale = dataclasses.replace(view, item="item1", scale=None)
    int_time = response_for(PLAN["pairs"], ["none", "a", "none"])
    int_time["judgements"][0]["decision_time_ms"] = 2500
    out_of_order = response_for(PLAN["pairs"], CHOICES)
    out_of_order["judgements"] = out_of_order["judgements"][::-2]
    restored = {**response_for(PLAN["pairs"], ["b", "b", "a"]), "restored": True}
    responses = [
        (view, response_for(PLAN["pairs"], CHOICES)),
        (no_scale, int_time),
        (view, {"judgements": []}),
        (view, out_of_order),
        (view, restored),
    ]
    trials = [
        {"condition": condition, "plan": PLAN, "response": response}
        for condition, response in responses
    ]
    if source == "texts":
        # Only the stored texts: a fallback to the decoded documents would
        # fail with KeyError, so the rows below come from pyarrow's parse.
        read_trials = [
            {
                "condition": trial["condition"],
                "plan_json": json.dumps(trial["plan"]),
                "response_json": json.dumps(trial["response"]),
            }
            for trial in trials
        ]
    else:
        read_trials = trials
    expected_rows = []
    expected_index = []
    for position, trial in enumerate(trials):
        for row in PairwiseTestType().export_rows(trial):
            expected_rows.append(row)
            expected_index.append(position)

    frame = judgement_frame(read_trials)

    assert list(frame.index) == expected_index
    assert list(frame.columns) == list(expected_rows[0])
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert records == expected_rows
    assert frame["order_shown"].dtype == "int64"
    assert frame["repeat"].dtype == bool
    assert frame["restored"].dtype == bool
    assert frame["restored"].tolist() == [False] * 8 + [True] * 3
    assert frame["decision_time_ms"].dtype == "float64"
    assert frame["stimulus_a"].dtype == string_dtype
    assert frame["system"].dtype == string_dtype


def _broken(change: Callable[[dict[str, Any], dict[str, Any]], None]) -> Any:
    plan = copy.deepcopy(PLAN)
    response = response_for(plan["pairs"], CHOICES)
    change(plan, response)
    return plan, response


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda plan, response: None, id="intact"),
        pytest.param(
            lambda plan, response: response["judgements"][1].pop("choice"),
            id="missing-choice",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][1].update(choice=None),
            id="null-choice",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][0].update(pair=-1),
            id="negative-pair",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][0].update(pair=7),
            id="pair-beyond-page",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][0].update(pair=1.0),
            id="float-pair",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][2].update(
                decision_time_ms="1500"
            ),
            id="time-as-text",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][2]["played_seconds"].pop("b"),
            id="missing-played",
        ),
        pytest.param(
            lambda plan, response: plan["pairs"][0].update(a="s9"), id="unknown-signal"
        ),
        pytest.param(
            lambda plan, response: plan["signals"].append(
                {"id": "s1", "stimulus": "sys3"}
            ),
            id="signal-listed-twice",
        ),
        pytest.param(
            lambda plan, response: plan["pairs"][1].update(repeat=1),
            id="repeat-as-number",
        ),
        pytest.param(
            lambda plan, response: plan["signals"][1].update(stimulus=None),
            id="null-stimulus",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][1].update(choice=1),
            id="choice-as-number",
        ),
        pytest.param(
            lambda plan, response: plan["signals"][0].update(stimulus=7),
            id="stimulus-as-number",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][0].update(
                decision_time_ms=float("nan")
            ),
            id="nan-time",
        ),
        pytest.param(
            lambda plan, response: response["judgements"][0]["played_seconds"].update(
                a=float("inf")
            ),
            id="infinite-played",
        ),
        pytest.param(
            lambda plan, response: (
                response.update(judgements=[]),
                plan.update(signals=None),
            ),
            id="unjudged-page-null-signals",
        ),
        pytest.param(
            lambda plan, response: (
                response.update(judgements=[]),
                plan.pop("signals"),
            ),
            id="unjudged-page-missing-signals",
        ),
        pytest.param(
            lambda plan, response: (
                response.update(judgements=[]),
                plan["signals"][0].pop("stimulus"),
            ),
            id="unjudged-page-broken-signal",
        ),
    ],
)
@pytest.mark.parametrize("indent", [None, 2])
def test_judgement_frame_from_texts_reads_as_export_rows(
    change: Callable[[dict[str, Any], dict[str, Any]], None], indent: int | None
) -> None:
    """Parsed texts give export_rows' rows, or its error on a broken document.

    Pretty-printed texts, spread over several lines, and each broken shape
    take the decoding path, which gives the same rows or errors as
    export_rows.
    """
    plan, response = _broken(change)
    view = condition_view(3, reference=True)
    intact_plan, intact_response = _broken(lambda plan, response: None)
    stored = [
        StoredTrial(
            {"condition": view},
            plan_json=json.dumps(intact_plan),
            response_json=json.dumps(intact_response),
        ),
        StoredTrial(
            {"condition": view},
            plan_json=json.dumps(plan, indent=indent),
            response_json=json.dumps(response, indent=indent),
        ),
    ]
    export = PairwiseTestType().export_rows
    try:
        expected_rows = [*export(stored[0]), *export(stored[1])]
    except Exception as error:  # noqa: BLE001 - the error type is compared below
        with pytest.raises(type(error)):
            judgement_frame(stored)
        return

    frame = judgement_frame(stored)

    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert records == expected_rows
    assert list(frame.index) == [0] * len(CHOICES) + [1] * len(response["judgements"])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("integer minus zero", '"decision_time_ms": -0,'),
        ("byte order mark", None),
    ],
)
def test_judgement_frame_reads_texts_as_orjson(name: str, text: str | None) -> None:
    """Texts that pyarrow reads otherwise than orjson give export_rows' result."""
    plan, response = _broken(lambda plan, response: None)
    response["judgements"][0]["decision_time_ms"] = 0
    response_json = json.dumps(response)
    if text is None:
        response_json = "\ufeff" + response_json
    else:
        response_json = response_json.replace('"decision_time_ms": 0,', text, 1)
    view = condition_view(3, reference=True)
    stored = [
        StoredTrial(
            {"condition": view},
            plan_json=json.dumps(plan),
            response_json=response_json,
        )
    ]
    export = PairwiseTestType().export_rows
    try:
        expected_rows = export(stored[0])
    except Exception as error:  # noqa: BLE001 - the error type is compared below
        with pytest.raises(type(error)):
            judgement_frame(stored)
        return

    frame = judgement_frame(stored)

    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert records == expected_rows
    signs = np.signbit(frame["decision_time_ms"].to_numpy())
    assert list(signs) == [np.signbit(row["decision_time_ms"]) for row in expected_rows]


# --- served pages ------------------------------------------------------------------


@pytest.fixture
def served_pairwise(
    tmp_path: Path, database_url: str, use_registry: Registry
) -> Iterator[ServedStudy]:
    path = pairwise_study(tmp_path / "study", pairwise={"repeats": 1})
    served = build_study(path, database_url, use_registry, tmp_path / "data")
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_server_rejects_unshown_and_unheard_choices(
    served_pairwise: ServedStudy,
) -> None:
    http, page_url = arrive(served_pairwise.url)
    page = http.get(page_url)
    settings = settings_of(page.text)
    plan = plan_of(served_pairwise, settings)
    pairs = plan["pairs"]
    assert settings["pairs"] == [{"a": p["a"], "b": p["b"]} for p in pairs]
    assert "repeat" not in page.text.split('id="pairwise-settings"')[1]
    choices = ["a"] * len(pairs)
    events = listening_events(pairs, choices)

    unshown = response_for(pairs, choices)
    unshown["judgements"][0].update(pair=len(pairs))
    other = [s["id"] for s in plan["signals"] if s["id"] not in ("ref", pairs[0]["a"])]
    forged = response_for(pairs, choices)
    forged["judgements"][0].update(b=next(s for s in other if s != pairs[0]["b"]))
    early = response_for(pairs, choices)
    early["judgements"][-1]["played_seconds"]["b"] = 0.5
    cases = [
        (unshown, events, "response.judgements[0].pair"),
        (forged, events, "response.judgements[0].pair"),
        (early, events, f"response.judgements[{len(pairs) - 1}].played_seconds.b"),
        (response_for(pairs, choices), [], "events"),
        (
            response_for(pairs, choices),
            listening_events(pairs, choices, seconds=0.2),
            "events",
        ),
    ]
    for number, (response, sent_events, field) in enumerate(cases):
        answer = post_page(
            served_pairwise, http, settings, response, sent_events, f"bad{number}"
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field
        assert count_trials(served_pairwise) == 0

    accepted = post_page(
        served_pairwise, http, settings, response_for(pairs, choices), events, "good"
    )
    assert accepted.status_code == 200, accepted.text
    assert count_trials(served_pairwise) == 1


def test_stored_page_is_read_through_pyarrow(
    served_pairwise: ServedStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, page_url = arrive(served_pairwise.url)
    settings = settings_of(http.get(page_url).text)
    plan = plan_of(served_pairwise, settings)
    choices = ["a", "b"] * len(plan["pairs"])
    choices = choices[: len(plan["pairs"])]
    response = response_for(plan["pairs"], choices)
    events = listening_events(plan["pairs"], choices)
    stored = post_page(served_pairwise, http, settings, response, events, "page")
    assert stored.status_code == 200, stored.text

    def no_decoding(*_args: Any) -> None:
        raise AssertionError("the stored texts were decoded instead of parsed")

    monkeypatch.setattr(judgements._JudgementColumns, "add", no_decoding)
    with served_pairwise.session_factory() as session:
        ratings = load_tables(session, served_pairwise.study)["ratings"]
        trial = session.scalars(select(Trial)).one()
        reservation = session.get(Reservation, trial.reservation_id)
        assert reservation is not None
        expected = PairwiseTestType().export_rows(
            {
                "condition": served_pairwise.study.conditions[trial.condition_id],
                "plan": reservation.plan,
                "response": trial.response,
            }
        )

    columns = list(expected[0])
    rows = ratings[columns].astype(object).where(ratings[columns].notna(), None)
    assert rows.to_dict("records") == expected
    assert set(ratings["trial"]) == {reservation.public_id}


def test_stored_number_choice_exports_as_export_rows(
    served_pairwise: ServedStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored choice that is not text gives the table of export_rows."""
    http, page_url = arrive(served_pairwise.url)
    settings = settings_of(http.get(page_url).text)
    plan = plan_of(served_pairwise, settings)
    choices = ["a"] * len(plan["pairs"])
    response = response_for(plan["pairs"], choices)
    events = listening_events(plan["pairs"], choices)
    stored = post_page(served_pairwise, http, settings, response, events, "page")
    assert stored.status_code == 200, stored.text
    with served_pairwise.session_factory() as session:
        trial = session.scalars(select(Trial)).one()
        edited = copy.deepcopy(trial.response)
        edited["judgements"][0]["choice"] = 1
        trial.response = edited
        session.commit()

    study = served_pairwise.study
    with served_pairwise.session_factory() as session:
        ratings = load_tables(session, study)["ratings"]
    # Without a ratings_frame hook, the core calls export_rows trial by trial.
    monkeypatch.setattr(study.registry.hook, "ratings_frame", lambda **_: [])
    with served_pairwise.session_factory() as session:
        expected = load_tables(session, study)["ratings"]

    pd.testing.assert_frame_equal(ratings, expected)
    assert ratings["choice"].iloc[0] == "1"


def test_broken_stored_page_error_names_trial(served_pairwise: ServedStudy) -> None:
    """A broken page in a batch gives export_rows' error, which names that trial."""
    for number in range(2):
        http, page_url = arrive(served_pairwise.url)
        settings = settings_of(http.get(page_url).text)
        plan = plan_of(served_pairwise, settings)
        choices = ["a"] * len(plan["pairs"])
        response = response_for(plan["pairs"], choices)
        events = listening_events(plan["pairs"], choices)
        key = f"page-{number}"
        stored = post_page(served_pairwise, http, settings, response, events, key)
        assert stored.status_code == 200, stored.text
    with served_pairwise.session_factory() as session:
        second = select(Trial).where(Trial.idempotency_key == "page-1-0123456789")
        broken = session.scalars(second).one()
        edited = copy.deepcopy(broken.response)
        del edited["judgements"][0]["choice"]
        broken.response = edited
        reservation = session.get(Reservation, broken.reservation_id)
        assert reservation is not None
        broken_id = reservation.public_id
        session.commit()

    with served_pairwise.session_factory() as session:
        with pytest.raises(ExportError) as raised:
            load_tables(session, served_pairwise.study)

    assert "export_rows failed on trial " + broken_id in str(raised.value)
    assert "KeyError" in str(raised.value)


def test_caqe_run_serves_demo(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "caqe"
    assert executable.exists(), f"no caqe command next to {sys.executable}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "CAQE_HOME": str(tmp_path / "home"),
        "CAQE_PLUGINS": "mushra,pairwise,mturk,local_lab",
        "CAQE_ADMIN_PASSWORD": "demo-admin-password",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [str(executable), "run", "--plugin", "pairwise", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        participant_url = None
        while participant_url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.search(r"Participant URL:\s+(\S+)", line)
            if match:
                participant_url = match.group(1)
        assert participant_url == f"http://127.0.0.1:{port}/", "".join(output)
        landing = requests.get(participant_url, timeout=10)
        assert landing.status_code == 200
        assert "CAQE demo: pairwise codec comparison" in landing.text
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()


# --- consistency -----------------------------------------------------------------


def complete_page(
    served: ServedStudy, answer: Callable[[dict[str, Any]], list[str]], key: str
) -> int:
    """Arrive, judge the one page with ``answer(plan)``, return the participant id."""
    http, page_url = arrive(served.url)
    settings = settings_of(http.get(page_url).text)
    plan = plan_of(served, settings)
    choices = answer(plan)
    stored = post_page(
        served,
        http,
        settings,
        response_for(plan["pairs"], choices),
        listening_events(plan["pairs"], choices),
        key,
    )
    assert stored.status_code == 200, stored.text
    with served.session_factory() as session:
        return session.scalar(
            select(Reservation.participant_id).where(
                Reservation.public_id == settings["submitUrl"].rsplit("/", 1)[1]
            )
        )


def consistency_hook(served: ServedStudy, registry: Registry) -> dict[int, float]:
    merged: dict[int, float] = {}
    with served.session_factory() as session:
        for result in registry.hook.participant_consistency(
            study=served.study, session=session
        ):
            merged.update(result)
    return merged


def test_consistency_hook_scores_repeats(
    tmp_path: Path, sqlite_url: str, use_registry: Registry
) -> None:
    path = pairwise_study(tmp_path / "study", pairwise={"repeats": 2})
    served = build_study(path, sqlite_url, use_registry, tmp_path / "data")
    served.start()
    rank = {"sys0": 0, "sys1": 1, "sys2": 2, "sys3": 3}
    try:
        steady = complete_page(served, lambda plan: choices_by_rank(plan, rank), "p1")
        always_a = complete_page(served, lambda plan: ["a"] * len(plan["pairs"]), "p2")
        half = complete_page(
            served, lambda plan: choices_by_rank(plan, rank, flip_repeats=1), "p3"
        )
        values = consistency_hook(served, use_registry)
    finally:
        served.stop()

    # Every repeat swaps A and B, so choosing A both times picks two systems.
    assert values == {steady: 1.0, always_a: 0.0, half: 0.5}


def test_consistency_hook_uses_transitivity_without_repeats(
    tmp_path: Path, sqlite_url: str, use_registry: Registry
) -> None:
    path = pairwise_study(tmp_path / "study", systems=3)
    served = build_study(path, sqlite_url, use_registry, tmp_path / "data")
    served.start()
    cycle = {
        ("sys0", "sys1"): "sys0",
        ("sys1", "sys2"): "sys1",
        ("sys0", "sys2"): "sys2",
    }

    def circular(plan: dict[str, Any]) -> list[str]:
        systems = system_of(plan)
        choices = []
        for pair in plan["pairs"]:
            a, b = systems[pair["a"]], systems[pair["b"]]
            choices.append("a" if cycle[tuple(sorted((a, b)))] == a else "b")
        return choices

    try:
        ranked = complete_page(
            served,
            lambda plan: choices_by_rank(plan, {"sys0": 0, "sys1": 1, "sys2": 2}),
            "p1",
        )
        cyclic = complete_page(served, circular, "p2")
        values = consistency_hook(served, use_registry)
    finally:
        served.stop()
    assert values == {ranked: 1.0, cyclic: 0.0}


def test_consistency_hook_ignores_other_test_types(
    tmp_path: Path, sqlite_url: str, use_registry: Registry
) -> None:
    served = build_study(
        scale_study(tmp_path / "study"), sqlite_url, use_registry, tmp_path / "data"
    )
    with served.session_factory() as session:
        results = use_registry.hook.participant_consistency(
            study=served.study, session=session
        )
    assert results == []


# --- report ------------------------------------------------------------------------


def test_report_scores_follow_true_strengths(tmp_path: Path) -> None:
    strengths = {"low": -1.0, "mid": 0.0, "high": 1.2}
    judgements = scoring.simulate_judgements(strengths, 30, 20, seed=4, scale="quality")
    sections = build_sections(judgements, tmp_path / "figures", seed=1)
    titles = [section.title for section in sections]
    assert titles == [
        "Pairwise comparison: judgements",
        "Pairwise comparison: scale quality",
        "Pairwise comparison: consistency",
    ]
    scores = sections[1].tables["pairwise_bradley_terry_quality"]
    assert list(scores.sort_values("score").index) == ["low", "mid", "high"]
    assert (scores["ci_low"] <= scores["score"]).all()
    assert (scores["score"] <= scores["ci_high"]).all()
    thurstone = sections[1].tables["pairwise_thurstone_quality"]
    assert list(thurstone.sort_values("score").index) == ["low", "mid", "high"]
    wins = sections[1].tables["pairwise_wins_quality"]
    assert (wins + wins.T).to_numpy().sum() == 2 * len(judgements)
    assert "data:image/png;base64," in sections[1].html
    for section in sections:
        assert "&lt;" not in section.html, f"{section.title} HTML is escaped"
        assert "<table" in section.html
    assert (tmp_path / "figures" / "pairwise_bradley_terry_quality.png").exists()
    assert (tmp_path / "figures" / "pairwise_thurstone_quality.svg").exists()
    assert len(sections[2].tables["pairwise_consistency"]) == 30


def test_position_bias_counts_a_choices() -> None:
    judgements = pd.DataFrame(
        {
            "participant": ["p"] * 12,
            "item": "i",
            "scale": ["s"] * 12,
            "stimulus_a": ["x", "y"] * 6,
            "stimulus_b": ["y", "x"] * 6,
            "choice": ["a"] * 10 + ["b", "none"],
            "repeat": False,
        }
    )
    bias = position_bias(judgements).iloc[0]
    assert bias["chose_a"] == 10
    assert bias["chose_b"] == 1
    assert bias["no_preference"] == 1
    assert bias["share_a"] == pytest.approx(10 / 11)
    assert bias["p_value"] < 0.05


def test_analyze_report_has_pairwise_sections(
    tmp_path: Path, sqlite_url: str, use_registry: Registry
) -> None:
    path = pairwise_study(tmp_path / "study", pairwise={"repeats": 1})
    served = build_study(path, sqlite_url, use_registry, tmp_path / "data")
    served.start()
    rank = {"sys0": 0, "sys1": 1, "sys2": 2, "sys3": 3}
    try:
        for number in range(4):
            complete_page(
                served, lambda plan: choices_by_rank(plan, rank), f"p{number}"
            )
    finally:
        served.stop()

    report = tmp_path / "report.html"
    result = CliRunner().invoke(
        build_cli(),
        ["analyze", "--database-url", sqlite_url, "--out", str(report)],
    )
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert "Pairwise comparison: scale quality" in html
    assert "<h4>Bradley–Terry scores</h4>" in html
    assert "Pairwise comparison: consistency" in html
    assert "Sections of plugin pairwise (failed)" not in html
