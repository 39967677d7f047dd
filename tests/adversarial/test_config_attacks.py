"""Hostile and broken study configs and audio files.

A config value reaches HTML pages and HTTP headers, and a stimulus file may
be damaged. 'caqe validate' must reject what cannot be served with a message
naming the file, line, key and value, never with a traceback. Served pages
must escape every text that comes from the config.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
import yaml

from caqe_core.audio import AudioError
from caqe_core.config import ConfigError, load_config
from caqe_core.plugins import Registry
from caqe_core.study import check_study
from tests.adversarial.helpers import csrf_of, serve, start_listener
from tests.support.studies import scale_study

ATTACK = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def rewrite(config_path: Path, **sections: object) -> Path:
    """Replace top-level sections of a written config and return its path."""
    config = yaml.safe_load(config_path.read_text())
    config.update(sections)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def check(config_path: Path, registry: Registry, tmp_path: Path) -> None:
    config = load_config(config_path, registry)
    check_study(config, registry, tmp_path / "generated")


def test_frame_ancestors_semicolon(tmp_path: Path, registry: Registry) -> None:
    path = rewrite(
        scale_study(tmp_path / "study"),
        web={"frame_ancestors": ["'self'; script-src *"]},
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path, registry)

    assert "web.frame_ancestors" in str(raised.value)


def test_frame_ancestors_line_break(tmp_path: Path, registry: Registry) -> None:
    # A value with a line break cannot go into the Content-Security-Policy
    # header, so the config is rejected before any page is served.
    path = rewrite(
        scale_study(tmp_path / "study"),
        web={"frame_ancestors": ["'self'\r\nX-Injected: 1"]},
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path, registry)

    message = str(raised.value)
    assert "web.frame_ancestors[0]" in message
    assert "X-Injected" in message


def test_truncated_flac_reported(tmp_path: Path, registry: Registry) -> None:
    path = scale_study(tmp_path / "study")
    audio = tmp_path / "study" / "audio" / "item0" / "system1.wav"
    data, rate = sf.read(str(audio))
    flac = audio.with_suffix(".flac")
    sf.write(str(flac), data, rate)
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    config = yaml.safe_load(path.read_text())
    config["scale"]["items"][0]["stimuli"]["system1"] = "item0/system1.flac"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    try:
        check(path, registry, tmp_path)
    except AudioError as error:
        pytest.fail(f"AudioError escaped check_study: {error}")
    except ConfigError as error:
        assert "scale.items[0].stimuli.system1" in str(error)
    else:
        pytest.fail("check_study accepted a truncated FLAC file")


def test_nan_samples_rejected(tmp_path: Path, registry: Registry) -> None:
    path = scale_study(tmp_path / "study")
    audio = tmp_path / "study" / "audio" / "item0" / "system1.wav"
    info = sf.info(str(audio))
    samples = np.full(info.frames, np.nan)
    sf.write(str(audio), samples, info.samplerate, subtype="FLOAT")

    with pytest.raises(ConfigError) as raised:
        check(path, registry, tmp_path)

    assert "scale.items[0].stimuli.system1" in str(raised.value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"assignment": {"trials_per_condition": -3}}, "assignment"),
        ({"test_type": "scael"}, "test_type"),
        ({"flow": {"steps": ["consent", "trials", "trials"]}}, "flow.steps"),
        ({"experiment": ["not", "a", "mapping"]}, "experiment"),
        ({"surveys": {"pre": [{"id": "q", "type": "slider", "text": "x"}]}}, "surveys"),
    ],
    ids=["negative target", "misspelt test type", "trials twice", "list", "survey"],
)
def test_broken_config_names_key(
    tmp_path: Path, registry: Registry, change: dict[str, object], key: str
) -> None:
    path = rewrite(scale_study(tmp_path / "study"), **change)

    with pytest.raises(ConfigError) as raised:
        load_config(path, registry)

    message = str(raised.value)
    assert str(path) in message
    assert re.search(rf"study\.yaml:\d+: {re.escape(key)}", message), message


def hostile_study(folder: Path) -> Path:
    return rewrite(
        scale_study(folder),
        experiment={
            "name": "hostile",
            "title": "Title " + ATTACK,
            "description": "Description " + ATTACK + "\n\n[link](javascript:alert(3))",
        },
        consent={"text": "Consent " + ATTACK, "agree_label": "Agree " + ATTACK},
        flow={"steps": ["consent", "pre_survey", "trials"]},
        surveys={
            "pre": [
                {
                    "id": "q1",
                    "type": "single",
                    "text": "Question " + ATTACK,
                    "options": ["first " + ATTACK, "second"],
                }
            ]
        },
    )


def assert_escaped(page: str) -> None:
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert 'href="javascript:' not in page
    assert "href='javascript:" not in page


def test_config_text_escaped(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    path = hostile_study(tmp_path / "study")

    with serve(path, sqlite_url, registry, tmp_path / "data") as served:
        start = requests.get(served.url + "/lab/").text
        listener = start_listener(served.url)
        consent = listener.page()
        survey = listener.post_step(
            "consent", {"csrf_token": csrf_of(consent), "agree": "yes"}
        ).text

    assert "Title &lt;script&gt;" in start
    assert_escaped(start)
    assert "Consent &lt;script&gt;" in consent
    assert_escaped(consent)
    assert "Question &lt;script&gt;" in survey
    assert_escaped(survey)


def test_lab_start_shows_config_only(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    path = rewrite(
        scale_study(tmp_path / "study"),
        experiment={
            "name": "short-study",
            "title": "Short",
            "description": "The test takes about 5 minutes.",
        },
    )

    with serve(path, sqlite_url, registry, tmp_path / "data") as served:
        start = requests.get(served.url + "/lab/").text

    assert "about 5 minutes" in start
    assert "15 to 20 minutes" not in start
