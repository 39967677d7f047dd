"""Low-pass anchors for MUSHRA tests (ITU-R BS.1534-3).

BS.1534-3 specifies a low-pass filtered copy of the reference as the mandatory
low-range anchor (cut-off 3.5 kHz) and recommends a 7 kHz mid-range anchor.
The anchors are only filtered, never renormalised, so they keep the
reference's level in the passband.

Each filter is an elliptic IIR low-pass applied forward and backward
(``scipy.signal.sosfiltfilt``), so the applied response is zero-phase and its
magnitude is the square of the single-pass magnitude. The single-pass design
has 0.02 dB passband ripple and 30 dB stopband attenuation, which gives an
effective response flat within 0.04 dB up to the cut-off and at least 60 dB of
attenuation from ``8/7 * cutoff`` (4 kHz for the 3.5 kHz anchor, 8 kHz for the
7 kHz anchor) up to the Nyquist frequency.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

LOW_ANCHOR_HZ = 3500
"""Cut-off of the mandatory low-range anchor, in Hz."""

MID_ANCHOR_HZ = 7000
"""Cut-off of the mid-range anchor, in Hz."""

TRANSITION_RATIO = 8 / 7
"""Stopband edge over cut-off: 4 kHz for the 3.5 kHz anchor, 8 kHz for 7 kHz."""

SINGLE_PASS_RIPPLE_DB = 0.02
"""Passband ripple of one pass. The forward-backward response has twice this."""

SINGLE_PASS_ATTENUATION_DB = 30.0
"""Stopband attenuation of one pass. The forward-backward response has twice this."""

_DECAY_THRESHOLD = 1e-7
"""Relative impulse-response level below which the filter counts as settled."""

_MAX_DECAY_SAMPLES = 1 << 16


@dataclass(frozen=True)
class LowpassFilter:
    """A zero-phase elliptic low-pass filter designed for one sample rate.

    ``passband_edge_hz`` is the cut-off: the effective (forward-backward)
    response is flat within ``2 * SINGLE_PASS_RIPPLE_DB`` below it.
    ``stopband_edge_hz`` is where the effective attenuation reaches
    ``2 * SINGLE_PASS_ATTENUATION_DB`` and stays at or above it up to Nyquist.
    ``settle_samples`` is the length after which the single-pass impulse
    response has decayed below 1e-7 of its peak; it sets the edge padding.
    """

    sos: np.ndarray
    sample_rate: int
    passband_edge_hz: float
    stopband_edge_hz: float
    settle_samples: int

    def effective_response(self, freqs_hz: np.ndarray) -> np.ndarray:
        """Compute the amplitude gain of the zero-phase filter at ``freqs_hz``.

        The gain is ``|H(f)|**2``, the single-pass magnitude squared, because
        forward-backward filtering applies ``H`` twice. In decibels it is
        ``20 * log10(gain)``.
        """
        import scipy.signal

        freqs = np.asarray(freqs_hz, dtype=np.float64)
        _, response = scipy.signal.sosfreqz(
            self.sos.copy(), worN=freqs, fs=self.sample_rate
        )

        return np.abs(response) ** 2


def design_lowpass(cutoff_hz: float, sample_rate: int) -> LowpassFilter:
    """Design the zero-phase elliptic low-pass filter for an anchor.

    The passband edge is ``cutoff_hz`` itself, so everything up to the nominal
    cut-off is passed unchanged (within 0.04 dB) and the transition band lies
    above it, between ``cutoff_hz`` and ``8/7 * cutoff_hz``.

    Raises ``ValueError`` when ``sample_rate`` is not positive, when
    ``cutoff_hz`` is not positive, or when the stopband edge
    ``8/7 * cutoff_hz`` is not below the Nyquist frequency. The 7 kHz anchor
    therefore needs a sample rate above 16 kHz: at 16 kHz and below, the
    reference has almost nothing above 7 kHz to remove.
    """
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(
            f"Invalid sample_rate {sample_rate!r}: expected a positive integer in Hz."
        )
    if not np.isfinite(cutoff_hz) or cutoff_hz <= 0:
        raise ValueError(
            f"Invalid cutoff_hz {cutoff_hz!r}: expected a positive frequency in Hz."
        )

    sample_rate = int(sample_rate)
    cutoff_hz = float(cutoff_hz)
    nyquist_hz = sample_rate / 2
    stopband_edge_hz = cutoff_hz * TRANSITION_RATIO
    if stopband_edge_hz >= nyquist_hz:
        min_rate = 2 * stopband_edge_hz
        raise ValueError(
            f"Cannot design a {cutoff_hz:g} Hz low-pass anchor at "
            f"{sample_rate} Hz: its stopband edge {stopband_edge_hz:g} Hz is "
            f"not below the Nyquist frequency {nyquist_hz:g} Hz. Use a sample "
            f"rate above {min_rate:g} Hz or a lower cut-off."
        )

    return _design_cached(cutoff_hz, sample_rate)


@functools.lru_cache(maxsize=32)
def _design_cached(cutoff_hz: float, sample_rate: int) -> LowpassFilter:
    # scipy.signal is imported in the functions that use it, because it adds
    # about 0.1 s to the start of every caqe command.
    import scipy.signal

    stopband_edge_hz = cutoff_hz * TRANSITION_RATIO
    order, natural_hz = scipy.signal.ellipord(
        cutoff_hz,
        stopband_edge_hz,
        SINGLE_PASS_RIPPLE_DB,
        SINGLE_PASS_ATTENUATION_DB,
        fs=sample_rate,
    )
    sos = scipy.signal.ellip(
        order,
        SINGLE_PASS_RIPPLE_DB,
        SINGLE_PASS_ATTENUATION_DB,
        natural_hz,
        btype="lowpass",
        output="sos",
        fs=sample_rate,
    )
    settle_samples = _settle_length(sos)
    # The design is cached and shared, so it is made read-only. scipy's
    # filtering routines need a writable array and receive copies.
    sos.setflags(write=False)
    logger.debug(
        "Designed order-%d elliptic low-pass: cutoff %g Hz, %d Hz, settles in %d "
        "samples",
        order,
        cutoff_hz,
        sample_rate,
        settle_samples,
    )

    return LowpassFilter(
        sos=sos,
        sample_rate=sample_rate,
        passband_edge_hz=cutoff_hz,
        stopband_edge_hz=stopband_edge_hz,
        settle_samples=settle_samples,
    )


def _settle_length(sos: np.ndarray) -> int:
    import scipy.signal

    impulse = np.zeros(_MAX_DECAY_SAMPLES)
    impulse[0] = 1.0
    envelope = np.abs(scipy.signal.sosfilt(sos, impulse))
    above = np.flatnonzero(envelope > _DECAY_THRESHOLD * envelope.max())

    return int(above[-1]) + 1


def lowpass_anchor(
    signal: np.ndarray, sample_rate: int, cutoff_hz: float
) -> np.ndarray:
    """Low-pass filter a reference with zero phase to make an anchor.

    ``signal`` has shape ``(frames,)`` or ``(frames, channels)``; the
    result has the same shape and length, dtype float64, and is not
    renormalised. Both ends are padded by odd extension (``padtype="odd"``)
    for as long as the filter takes to settle, or by the whole signal when it
    is shorter. The filter's start-up transient therefore falls in the
    padding, and the anchor starts and ends without a click.

    Raises ``ValueError`` for an empty, non-finite or more than
    two-dimensional signal, and for the design errors of
    :func:`design_lowpass`.
    """
    data = np.asarray(signal, dtype=np.float64)
    if data.ndim not in (1, 2):
        raise ValueError(
            f"Invalid signal shape {data.shape}: expected (frames,) or "
            "(frames, channels)."
        )
    if data.shape[0] == 0:
        raise ValueError("Invalid signal: it has no frames.")
    if not np.all(np.isfinite(data)):
        raise ValueError(
            "Invalid signal: it contains NaN or infinite samples. Check the "
            "decoded audio before making an anchor."
        )

    import scipy.signal

    lowpass = design_lowpass(cutoff_hz, sample_rate)
    padlen = min(lowpass.settle_samples, data.shape[0] - 1)

    return scipy.signal.sosfiltfilt(
        lowpass.sos.copy(), data, axis=0, padtype="odd", padlen=padlen
    )
