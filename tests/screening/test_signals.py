"""The generated screening signals, checked numerically.

Each tone is compared sample by sample with an ideal computed here from the
definition (sine times raised-cosine ramps), independently of the generator,
and the level, phase and frequency claims are checked on their own too.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import find_peaks, periodogram

from caqe_core.audio import prepare_copy, read_audio
from caqe_core.plugins import Registry
from caqe_core.screening.headphone import HeadphoneCheckStep
from caqe_core.screening.hearing import HearingScreeningStep
from tests.screening.helpers import load, screening_config


def ideal_tone(
    frequency: float, frames: int, rate: int, rms_dbfs: float, ramp_frames: int
) -> np.ndarray:
    n = np.arange(frames)
    envelope = np.ones(frames)
    rise = 0.5 * (1 - np.cos(np.pi * np.arange(ramp_frames) / ramp_frames))
    envelope[:ramp_frames] = rise
    envelope[frames - ramp_frames :] = rise[::-1]
    peak = np.sqrt(2) * 10 ** (rms_dbfs / 20)
    return peak * np.sin(2 * np.pi * frequency * n / rate) * envelope


def rms_db(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(samples**2))))


@pytest.fixture(params=[48000, 44100])
def headphone_files(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Registry
) -> tuple[Path, int, dict]:
    rate = request.param
    audio = {"root": "audio"}
    if rate != 48000:
        audio["sample_rate"] = rate
    path = screening_config(tmp_path / "study", ["headphone_check"], audio=audio)
    if rate != 48000:
        # The scale stimuli must match audio.sample_rate too.
        for wav in (tmp_path / "study" / "audio").rglob("*.wav"):
            data, _ = sf.read(wav)
            sf.write(wav, data, rate)
    config = load(path, registry)
    step = HeadphoneCheckStep()
    section = config.section("headphone_check")
    step.prepare(section, config, tmp_path / "generated")
    folder = step.asset_dir(section, config, tmp_path / "generated")
    return folder, rate, json.loads((folder / "key.json").read_text())


def split_trial(samples: np.ndarray, rate: int) -> list[np.ndarray]:
    tone = round(1.0 * rate)
    gap = round(0.5 * rate)
    return [samples[i * (tone + gap) : i * (tone + gap) + tone] for i in range(3)]


def test_antiphase_files_cover_every_order(
    headphone_files: tuple[Path, int, dict],
) -> None:
    folder, rate, key = headphone_files
    orders = [tuple(entry["order"]) for entry in key["trials"]]
    assert sorted(orders) == sorted(
        itertools.permutations(("standard", "quiet", "antiphase"))
    )
    for entry in key["trials"]:
        assert entry["quiet"] == entry["order"].index("quiet") + 1
        info = sf.info(str(folder / entry["file"]))
        assert info.samplerate == rate
        assert info.channels == 2
        assert info.frames == round(3 * rate) + 2 * round(0.5 * rate)


def test_antiphase_tones_match_ideal(headphone_files: tuple[Path, int, dict]) -> None:
    folder, rate, key = headphone_files
    ramp = round(0.1 * rate)
    for entry in key["trials"]:
        samples, _ = sf.read(str(folder / entry["file"]), always_2d=True)
        segments = split_trial(samples, rate)
        for kind, segment in zip(entry["order"], segments):
            level = -26.0 if kind == "quiet" else -20.0
            ideal = ideal_tone(200.0, len(segment), rate, level, ramp)
            assert np.max(np.abs(segment[:, 0] - ideal)) < 1e-6, kind
            sign = -1.0 if kind == "antiphase" else 1.0
            assert np.max(np.abs(segment[:, 1] - sign * ideal)) < 1e-6, kind
        # The gaps between the tones are silent.
        tone, gap = round(rate), round(0.5 * rate)
        assert not samples[tone : tone + gap].any()
        assert not samples[2 * tone + gap : 2 * tone + 2 * gap].any()


def test_antiphase_levels_and_phase(headphone_files: tuple[Path, int, dict]) -> None:
    folder, rate, key = headphone_files
    entry = key["trials"][0]
    samples, _ = sf.read(str(folder / entry["file"]), always_2d=True)
    by_kind = dict(zip(entry["order"], split_trial(samples, rate)))
    standard, quiet, antiphase = (
        by_kind["standard"],
        by_kind["quiet"],
        by_kind["antiphase"],
    )

    # The quiet tone is 6 dB down in RMS on both channels; the antiphase tone is not.
    for channel in (0, 1):
        assert rms_db(standard[:, channel]) - rms_db(
            quiet[:, channel]
        ) == pytest.approx(6.0, abs=1e-3)
        assert rms_db(antiphase[:, channel]) == pytest.approx(
            rms_db(standard[:, channel]), abs=1e-3
        )
    # Steady part (between the ramps) at -20 dBFS RMS.
    steady = standard[round(0.1 * rate) : -round(0.1 * rate), 0]
    assert rms_db(steady) == pytest.approx(-20.0, abs=0.01)

    # Antiphase: L = -R exactly; the others are in phase, L = R.
    np.testing.assert_array_equal(antiphase[:, 0], -antiphase[:, 1])
    np.testing.assert_array_equal(standard[:, 0], standard[:, 1])
    np.testing.assert_array_equal(quiet[:, 0], quiet[:, 1])
    # A loudspeaker-like mono sum cancels the antiphase tone.
    assert np.max(np.abs(antiphase.sum(axis=1))) == 0.0


def test_antiphase_frequency_and_ramps(headphone_files: tuple[Path, int, dict]) -> None:
    folder, rate, key = headphone_files
    samples, _ = sf.read(str(folder / key["trials"][0]["file"]), always_2d=True)
    for segment in split_trial(samples, rate):
        frequencies, power = periodogram(segment[:, 0], fs=rate, nfft=8 * rate)
        assert frequencies[np.argmax(power)] == pytest.approx(200.0, abs=0.2)
        ramp = round(0.1 * rate)
        peak = np.max(np.abs(segment[:, 0]))
        # The onset ramp rises from 0, stays below the steady peak for 100 ms, then reaches it.
        assert segment[0, 0] == 0.0
        assert np.max(np.abs(segment[: ramp // 2, 0])) < 0.55 * peak
        assert np.max(np.abs(segment[ramp : 2 * ramp, 0])) == pytest.approx(
            peak, rel=1e-3
        )
        assert np.max(np.abs(segment[-ramp // 2 :, 0])) < 0.55 * peak


def test_served_copy_keeps_antiphase(
    headphone_files: tuple[Path, int, dict], tmp_path: Path
) -> None:
    folder, rate, key = headphone_files
    for entry in key["trials"]:
        data, file_rate = read_audio(folder / entry["file"], entry["file"])
        served, _ = prepare_copy(data, file_rate, tmp_path / "prepared")
        pcm, served_rate = sf.read(str(served), dtype="int16", always_2d=True)
        assert served_rate == rate
        by_kind = dict(zip(entry["order"], split_trial(pcm.astype(np.int32), rate)))
        np.testing.assert_array_equal(
            by_kind["antiphase"][:, 0], -by_kind["antiphase"][:, 1]
        )
        np.testing.assert_array_equal(by_kind["quiet"][:, 0], by_kind["quiet"][:, 1])


def count_tones(samples: np.ndarray, rate: int, tone_ms: float, gap_ms: float) -> int:
    """Count tone bursts by peaks of the smoothed absolute signal."""
    window = round(tone_ms / 1000 * rate / 2)
    smooth = np.convolve(np.abs(samples), np.ones(window) / window, mode="same")
    peaks, _ = find_peaks(
        smooth, height=0.25 * smooth.max(), distance=round(gap_ms / 1000 * rate)
    )
    return len(peaks)


def test_hearing_stimuli_contain_their_count(
    tmp_path: Path, registry: Registry
) -> None:
    hearing = {"levels_db": [-10.0], "pool": 12}
    path = screening_config(
        tmp_path / "study", ["hearing_screening"], hearing_screening=hearing
    )
    config = load(path, registry)
    step = HearingScreeningStep()
    section = config.section("hearing_screening")
    step.prepare(section, config, tmp_path / "generated")
    folder = step.asset_dir(section, config, tmp_path / "generated")
    key = json.loads((folder / "key.json").read_text())

    counts = [entry["tones"] for entry in key["stimuli"]]
    assert len(counts) == 12
    assert set(counts) == set(range(2, 9))
    for entry in key["stimuli"]:
        samples, rate = sf.read(str(folder / entry["file"]))
        assert rate == 48000
        assert len(samples) == 6 * 48000
        assert count_tones(samples, rate, 200, 300) == entry["tones"]
        onsets = [tone["onset"] for tone in entry["tone_list"]]
        gaps = np.diff(onsets) - 0.2
        assert onsets[0] >= 0.3 - 1e-9
        assert np.all(gaps >= 0.3 - 1e-9)
        assert onsets[-1] + 0.2 <= 6 - 0.3 + 1e-9
        for tone in entry["tone_list"]:
            start = round(tone["onset"] * rate)
            burst = samples[start : start + round(0.2 * rate)]
            ideal = ideal_tone(
                tone["frequency"], len(burst), rate, -30.0, round(0.02 * rate)
            )
            assert np.max(np.abs(burst - ideal)) < 1e-6

    calibration, rate = sf.read(str(folder / "calibration.wav"))
    steady = calibration[round(0.02 * rate) : -round(0.02 * rate)]
    assert rms_db(steady) == pytest.approx(-20.0, abs=0.01)


def test_hearing_files_change_with_config(tmp_path: Path, registry: Registry) -> None:
    first = load(screening_config(tmp_path / "a", ["hearing_screening"]), registry)
    second = load(
        screening_config(
            tmp_path / "b",
            ["hearing_screening"],
            hearing_screening={"levels_db": [-40]},
        ),
        registry,
    )
    step = HearingScreeningStep()
    folder_a = step.asset_dir(first.section("hearing_screening"), first, tmp_path / "g")
    folder_b = step.asset_dir(
        second.section("hearing_screening"), second, tmp_path / "g"
    )
    assert folder_a != folder_b


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"min_tones": 6, "max_tones": 3}, "above max_tones"),
        ({"max_tones": 8, "stimulus_seconds": 2}, "raise stimulus_seconds"),
        ({"stimuli": 3, "min_correct": 4}, "above the 3 stimuli"),
        ({"tone_ms": 50, "ramp_ms": 30}, "do not fit"),
        ({"on_fail": "warn"}, "expected one of"),
    ],
)
def test_hearing_config_rejected(
    tmp_path: Path, registry: Registry, section: dict, fragment: str
) -> None:
    from caqe_core.config import ConfigError

    path = screening_config(
        tmp_path / "study", ["hearing_screening"], hearing_screening=section
    )
    with pytest.raises(ConfigError) as error:
        load(path, registry)
    assert "hearing_screening" in str(error.value)
    assert fragment in str(error.value)


def test_frequency_above_nyquist_rejected(tmp_path: Path, registry: Registry) -> None:
    from caqe_core.config import ConfigError

    path = screening_config(
        tmp_path / "study",
        ["hearing_screening"],
        audio={"root": "audio", "sample_rate": 16000},
    )
    config = load(path, registry)
    step = HearingScreeningStep()
    with pytest.raises(ConfigError) as error:
        step.prepare(
            config.section("hearing_screening"), config, tmp_path / "generated"
        )
    assert "hearing_screening.frequencies[5]" in str(error.value)
    assert "8000 Hz is too high" in str(error.value)
