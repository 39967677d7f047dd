"""Tests for the zero-phase low-pass anchors of the MUSHRA plugin."""

from __future__ import annotations

import numpy as np
import pytest
from caqe_mushra.anchors import (
    LOW_ANCHOR_HZ,
    MID_ANCHOR_HZ,
    design_lowpass,
    lowpass_anchor,
)

# (sample rate, cut-off) pairs that must meet the full specification.
DESIGNS = [
    (44100, LOW_ANCHOR_HZ),
    (48000, LOW_ANCHOR_HZ),
    (96000, LOW_ANCHOR_HZ),
    (16000, LOW_ANCHOR_HZ),
    (44100, MID_ANCHOR_HZ),
    (48000, MID_ANCHOR_HZ),
    (96000, MID_ANCHOR_HZ),
]

MAX_PASSBAND_DEVIATION_DB = 0.1
MIN_TRANSITION_ATTENUATION_DB = 25.0
MIN_STOPBAND_ATTENUATION_DB = 50.0


def transition_hz(cutoff_hz: float) -> float:
    """Frequency that needs 25 dB: 4 kHz for 3.5 kHz, 8 kHz for 7 kHz."""
    return cutoff_hz * 8 / 7


def stopband_hz(cutoff_hz: float) -> float:
    """Start of the 50 dB band: 4.5 kHz for 3.5 kHz, 9 kHz for 7 kHz."""
    return cutoff_hz * 9 / 7


def sinusoid(freq_hz: float, sample_rate: int, seconds: float, phase: float = 0.3):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return np.sin(2 * np.pi * freq_hz * t + phase)


def fit_sinusoid(y: np.ndarray, freq_hz: float, sample_rate: int):
    """Return (amplitude, phase) of the least-squares sinusoid at freq_hz."""
    t = np.arange(len(y)) / sample_rate
    basis = np.column_stack(
        [np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)]
    )
    (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)

    return np.hypot(a, b), np.arctan2(b, a)


def applied_gain_db(freq_hz: float, sample_rate: int, cutoff_hz: float) -> float:
    """Gain of lowpass_anchor on a real sinusoid, measured away from the edges."""
    x = sinusoid(freq_hz, sample_rate, seconds=1.0)
    y = lowpass_anchor(x, sample_rate, cutoff_hz)
    middle = slice(len(x) // 4, 3 * len(x) // 4)
    rms_in = np.sqrt(np.mean(x[middle] ** 2))
    rms_out = np.sqrt(np.mean(y[middle] ** 2))

    return 20 * np.log10(rms_out / rms_in)


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), DESIGNS)
def test_design_passband_ripple(sample_rate, cutoff_hz):
    lowpass = design_lowpass(cutoff_hz, sample_rate)
    freqs = np.linspace(0, cutoff_hz, 20001)

    gain_db = 20 * np.log10(lowpass.effective_response(freqs))

    assert gain_db.max() <= MAX_PASSBAND_DEVIATION_DB
    assert gain_db.min() >= -MAX_PASSBAND_DEVIATION_DB


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), DESIGNS)
def test_design_stopband_attenuation(sample_rate, cutoff_hz):
    lowpass = design_lowpass(cutoff_hz, sample_rate)
    nyquist = sample_rate / 2
    transition = transition_hz(cutoff_hz)
    stopband = np.linspace(stopband_hz(cutoff_hz), nyquist, 200001)

    transition_db = 20 * np.log10(lowpass.effective_response(np.array([transition])))
    stopband_db = 20 * np.log10(lowpass.effective_response(stopband))

    assert transition_db[0] <= -MIN_TRANSITION_ATTENUATION_DB
    assert stopband_db.max() <= -MIN_STOPBAND_ATTENUATION_DB


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), DESIGNS)
def test_applied_passband_on_sinusoids(sample_rate, cutoff_hz):
    freqs = [50.0, 440.0, 1000.0, 0.5 * cutoff_hz, 0.9 * cutoff_hz, cutoff_hz]

    gains = [applied_gain_db(f, sample_rate, cutoff_hz) for f in freqs]

    for freq, gain in zip(freqs, gains):
        assert abs(gain) <= MAX_PASSBAND_DEVIATION_DB, f"{freq} Hz: {gain:.3f} dB"


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), DESIGNS)
def test_applied_stopband_on_sinusoids(sample_rate, cutoff_hz):
    nyquist = sample_rate / 2
    start = stopband_hz(cutoff_hz)
    stop_freqs = list(np.linspace(start, 0.99 * nyquist, 6))

    transition_gain = applied_gain_db(transition_hz(cutoff_hz), sample_rate, cutoff_hz)
    stop_gains = [applied_gain_db(f, sample_rate, cutoff_hz) for f in stop_freqs]

    assert transition_gain <= -MIN_TRANSITION_ATTENUATION_DB
    for freq, gain in zip(stop_freqs, stop_gains):
        assert gain <= -MIN_STOPBAND_ATTENUATION_DB, f"{freq:.0f} Hz: {gain:.1f} dB"


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), DESIGNS)
def test_impulse_response_symmetric(sample_rate, cutoff_hz):
    half = design_lowpass(cutoff_hz, sample_rate).settle_samples * 2
    impulse = np.zeros(2 * half + 1)
    impulse[half] = 1.0

    response = lowpass_anchor(impulse, sample_rate, cutoff_hz)
    before = response[:half][::-1]
    after = response[half + 1 :]

    assert np.argmax(response) == half
    np.testing.assert_allclose(before, after, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("sample_rate", "cutoff_hz"), DESIGNS)
def test_sinusoid_phase_preserved(sample_rate, cutoff_hz):
    for freq in (440.0, 0.7 * cutoff_hz, cutoff_hz):
        x = sinusoid(freq, sample_rate, seconds=0.5, phase=1.1)
        y = lowpass_anchor(x, sample_rate, cutoff_hz)
        middle = slice(len(x) // 4, 3 * len(x) // 4)

        _, phase_in = fit_sinusoid(x[middle], freq, sample_rate)
        _, phase_out = fit_sinusoid(y[middle], freq, sample_rate)

        assert abs(phase_out - phase_in) < 1e-4, f"{freq} Hz"


@pytest.mark.parametrize("sample_rate", [44100, 48000, 96000])
def test_edges_have_no_transient(sample_rate):
    # A passband tone with a DC offset that starts and stops at full level:
    # any start-up transient of the filter would show at the ends.
    x = 0.4 * sinusoid(700.0, sample_rate, seconds=0.3, phase=0.9) + 0.2
    y = lowpass_anchor(x, sample_rate, LOW_ANCHOR_HZ)
    edge = sample_rate // 100
    ripple_bound = x.max() * (10 ** (MAX_PASSBAND_DEVIATION_DB / 20) - 1)

    assert np.abs(y[:edge] - x[:edge]).max() <= ripple_bound
    assert np.abs(y[-edge:] - x[-edge:]).max() <= ripple_bound


def test_output_shape_and_dtype():
    rng = np.random.default_rng(3)
    mono = rng.standard_normal(4800)
    stereo = rng.standard_normal((4800, 2))
    pcm = (mono * 1000).astype(np.int16)

    mono_out = lowpass_anchor(mono, 48000, LOW_ANCHOR_HZ)
    stereo_out = lowpass_anchor(stereo, 48000, LOW_ANCHOR_HZ)
    pcm_out = lowpass_anchor(pcm, 48000, LOW_ANCHOR_HZ)

    assert mono_out.shape == mono.shape
    assert stereo_out.shape == stereo.shape
    assert mono_out.dtype == np.float64
    assert pcm_out.dtype == np.float64
    np.testing.assert_allclose(
        stereo_out[:, 1], lowpass_anchor(stereo[:, 1], 48000, LOW_ANCHOR_HZ)
    )


@pytest.mark.parametrize("frames", [1, 2, 3, 10, 100])
def test_short_signals_keep_length(frames):
    x = np.linspace(-0.5, 0.5, frames)

    y = lowpass_anchor(x, 48000, LOW_ANCHOR_HZ)

    assert y.shape == (frames,)
    assert np.all(np.isfinite(y))


def test_anchor_not_renormalised():
    # White noise keeps about cutoff / Nyquist of its power after filtering.
    # A renormalised anchor would keep all of it.
    rng = np.random.default_rng(7)
    x = rng.standard_normal(96000)
    expected_ratio = np.sqrt(LOW_ANCHOR_HZ / 24000)

    y = lowpass_anchor(x, 48000, LOW_ANCHOR_HZ)
    ratio = np.sqrt(np.mean(y**2) / np.mean(x**2))

    assert ratio == pytest.approx(expected_ratio, rel=0.05)


def test_mid_anchor_at_16_khz_rejected():
    x = np.zeros(1600)

    with pytest.raises(ValueError, match="above 16000 Hz"):
        design_lowpass(MID_ANCHOR_HZ, 16000)
    with pytest.raises(ValueError, match="Nyquist"):
        lowpass_anchor(x, 16000, MID_ANCHOR_HZ)


def test_mid_anchor_at_22050_hz_allowed():
    lowpass = design_lowpass(MID_ANCHOR_HZ, 22050)

    assert lowpass.stopband_edge_hz == pytest.approx(8000.0)


@pytest.mark.parametrize(
    ("signal", "sample_rate", "cutoff_hz", "message"),
    [
        (np.zeros(0), 48000, 3500, "no frames"),
        (np.array([0.0, np.nan]), 48000, 3500, "NaN"),
        (np.zeros((4, 2, 2)), 48000, 3500, "shape"),
        (np.zeros(10), 0, 3500, "sample_rate"),
        (np.zeros(10), 48000.5, 3500, "sample_rate"),
        (np.zeros(10), 48000, -1.0, "cutoff_hz"),
        (np.zeros(10), 48000, float("nan"), "cutoff_hz"),
    ],
)
def test_invalid_arguments_rejected(signal, sample_rate, cutoff_hz, message):
    with pytest.raises(ValueError, match=message):
        lowpass_anchor(signal, sample_rate, cutoff_hz)
