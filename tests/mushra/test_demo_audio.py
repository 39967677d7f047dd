"""Tests for the shipped demo stimuli and the script that makes them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from caqe_core.demo import demo_audio_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_demo_stimuli.py"

ITEMS = ("bwv253", "bwv269", "bwv66_6")
CODEC_SYSTEMS = ("mp3_high", "mp3_low", "opus_high", "opus_low")
SEPARATION_SYSTEMS = (
    "soft_mask",
    "binary_mask",
    "over_suppression",
    "anchor_interference",
    "anchor_artifacts",
    "anchor_distorted_target",
)
SAMPLE_RATE = 48000
MAX_PEAK = 10 ** (-1 / 20)
MAX_TOTAL_BYTES = 12 * 1024 * 1024

# A codec system must be audibly degraded but still the same music.
MAX_CODEC_SNR_DB = 30.0
MIN_CODEC_CORRELATION = 0.8
MIN_SEPARATION_CORRELATION = 0.6


def codec_paths(item: str) -> dict[str, Path]:
    folder = demo_audio_dir() / item
    names = ("reference", *CODEC_SYSTEMS)

    return {name: folder / f"{name}.flac" for name in names}


def separation_paths(item: str) -> dict[str, Path]:
    folder = demo_audio_dir() / item / "sep"
    names = ("reference", *SEPARATION_SYSTEMS)

    return {name: folder / f"{name}.flac" for name in names}


def read(path: Path) -> np.ndarray:
    data, _ = sf.read(path, dtype="float64")

    return data


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2))


def load_script():
    spec = importlib.util.spec_from_file_location("make_demo_stimuli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_demo_stimuli", module)
    spec.loader.exec_module(module)

    return module


def test_demo_audio_dir_exists():
    folder = demo_audio_dir()

    assert folder.is_dir()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == list(ITEMS)


@pytest.mark.parametrize("item", ITEMS)
def test_expected_files_exist(item):
    expected = {**codec_paths(item), **separation_paths(item)}

    for name, path in expected.items():
        assert path.is_file(), f"missing {name}: {path}"


@pytest.mark.parametrize("item", ITEMS)
def test_no_codec_anchors_shipped(item):
    folder = demo_audio_dir() / item
    shipped = sorted(p.stem for p in folder.glob("*.flac"))

    assert shipped == sorted(["reference", *CODEC_SYSTEMS])


@pytest.mark.parametrize("item", ITEMS)
@pytest.mark.parametrize("paths", [codec_paths, separation_paths])
def test_format_rate_and_length_match(item, paths):
    infos = {name: sf.info(path) for name, path in paths(item).items()}
    reference_frames = infos["reference"].frames

    for name, info in infos.items():
        assert info.format == "FLAC", name
        assert info.subtype == "PCM_16", name
        assert info.channels == 1, name
        assert info.samplerate == SAMPLE_RATE, name
        assert info.frames == reference_frames, name


@pytest.mark.parametrize("item", ITEMS)
def test_no_clipping(item):
    paths = {**codec_paths(item), **separation_paths(item)}

    for name, path in paths.items():
        peak = np.max(np.abs(read(path)))
        assert peak <= MAX_PEAK, f"{name}: peak {20 * np.log10(peak):.2f} dBFS"


@pytest.mark.parametrize("item", ITEMS)
def test_codec_systems_degraded_but_correlated(item):
    paths = codec_paths(item)
    reference = read(paths["reference"])

    for name in CODEC_SYSTEMS:
        system = read(paths[name])
        assert snr_db(system, reference) < MAX_CODEC_SNR_DB, name
        assert np.corrcoef(system, reference)[0, 1] > MIN_CODEC_CORRELATION, name


@pytest.mark.parametrize("item", ITEMS)
def test_separation_systems_degraded_but_correlated(item):
    paths = separation_paths(item)
    reference = read(paths["reference"])

    for name in SEPARATION_SYSTEMS:
        system = read(paths[name])
        assert snr_db(system, reference) < MAX_CODEC_SNR_DB, name
        assert np.corrcoef(system, reference)[0, 1] > MIN_SEPARATION_CORRELATION, name


@pytest.mark.parametrize("item", ITEMS)
def test_stimuli_start_and_end_silent(item):
    # Every stimulus is faded in and out, so its edge samples are near zero.
    paths = {**codec_paths(item), **separation_paths(item)}

    for name, path in paths.items():
        data = read(path)
        assert abs(data[0]) < 1e-3, name
        assert abs(data[-1]) < 1e-3, name


def test_demo_audio_size_budget():
    total = sum(p.stat().st_size for p in demo_audio_dir().rglob("*") if p.is_file())

    assert total < MAX_TOTAL_BYTES


@pytest.mark.parametrize("lag", [0, 37, 1105, -12])
def test_align_to_reference_removes_lag(lag):
    script = load_script()
    rng = np.random.default_rng(5)
    reference = rng.standard_normal(4000)
    if lag >= 0:
        delayed = np.concatenate([np.zeros(lag), reference, np.zeros(50)])
    else:
        delayed = reference[-lag:]

    aligned = script.align_to_reference(delayed, reference)
    # An early signal (negative lag) leaves the first -lag samples empty.
    overlap = slice(max(-lag, 0), len(reference))

    assert len(aligned) == len(reference)
    assert script.estimate_lag(delayed, reference) == lag
    np.testing.assert_array_equal(aligned[overlap], reference[overlap])


@pytest.mark.parametrize("system", ["mp3_low", "opus_low"])
def test_codec_round_trip_aligned(system):
    # A real encode and decode through libsndfile, then alignment: the
    # result keeps the reference's length and tracks its waveform.
    script = load_script()
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    reference = 0.3 * np.sin(2 * np.pi * 440 * t) * np.hanning(len(t))

    decoded, kbps = script.encode_decode(
        reference, SAMPLE_RATE, script.CODEC_SYSTEMS[system]
    )
    aligned = script.align_to_reference(decoded, reference)

    assert kbps > 0
    assert len(aligned) == len(reference)
    assert np.corrcoef(aligned, reference)[0, 1] > 0.95
