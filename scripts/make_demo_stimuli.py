"""Make the demo stimuli shipped in caqe_core/demo/audio.

For each item folder of ``--source`` (one folder per piece, holding
``mixture.flac`` and the stems ``soprano``, ``alto``, ``tenor``, ``bass`` and
``drums``), the script writes:

* ``<item>/reference.flac`` and four codec systems, ``<item>/<system>.flac``,
  made by encoding the mixture to MP3 and Opus with libsndfile, decoding it
  and aligning the result to the reference (codec test, MUSHRA and pairwise).
* ``<item>/sep/reference.flac``, the true target stem, three simulated
  separation estimates and the three PEASS-style source-separation anchors
  (source-separation test).

Low-pass anchors for the codec test are not written: the server makes them
from the reference when it prepares a test.

All output is mono 16-bit FLAC at the sample rate of the input. Each set of
stimuli that is rated together shares one gain, chosen so that its loudest
peak is at -1 dBFS, so level differences inside a set are kept. The output
is deterministic: random choices use seeds derived from the item name, and
running the script again rewrites identical files.

Usage::

    python scripts/make_demo_stimuli.py --source DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage
import scipy.signal
import soundfile as sf
from caqe_mushra.anchors import LOW_ANCHOR_HZ, lowpass_anchor

logger = logging.getLogger("make_demo_stimuli")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "caqe_core" / "demo" / "audio"
STEMS = ("soprano", "alto", "tenor", "bass", "drums")
DEFAULT_TARGET = "soprano"
DEFAULT_DURATION_S = 6.0
FADE_S = 0.02
PEAK_DBFS = -1.0
BASE_SEED = 1534

# STFT used by the separation estimates and anchors: 2048-sample Hann
# windows with 75 % overlap, which satisfy the overlap-add condition, so an
# unmodified STFT is reconstructed exactly.
STFT_NPERSEG = 2048
STFT_NOVERLAP = 1536

MAX_CODEC_LAG = 8192
"""Largest codec delay, in samples, that alignment searches for."""


@dataclass(frozen=True)
class CodecSetting:
    """An encoder configuration passed to ``soundfile.write``.

    ``compression_level`` runs from 0.0 (highest bitrate) to 1.0 (lowest),
    and libsndfile 1.2.2 maps it to a bitrate. For MP3 at 48 kHz in
    ``CONSTANT`` mode, 0.66 gives 128 kbit/s and 0.99 gives 32 kbit/s. For
    Opus, whose bitrate mode cannot be set, 0.9 gives about 33 kbit/s and
    0.97 about 15 kbit/s.
    """

    format: str
    subtype: str
    compression_level: float
    bitrate_mode: str | None


CODEC_SYSTEMS: dict[str, CodecSetting] = {
    "mp3_high": CodecSetting("MP3", "MPEG_LAYER_III", 0.66, "CONSTANT"),
    "mp3_low": CodecSetting("MP3", "MPEG_LAYER_III", 0.99, "CONSTANT"),
    "opus_high": CodecSetting("OGG", "OPUS", 0.90, None),
    "opus_low": CodecSetting("OGG", "OPUS", 0.97, None),
}


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """Read a mono audio file as float64."""
    data, sample_rate = sf.read(path, dtype="float64", always_2d=True)
    if data.shape[1] != 1:
        raise ValueError(
            f"Invalid input {path}: expected mono audio, found "
            f"{data.shape[1]} channels."
        )

    return data[:, 0], sample_rate


def excerpt(x: np.ndarray, sample_rate: int, duration_s: float) -> np.ndarray:
    """Return the first ``duration_s`` seconds of ``x`` (all of it if shorter)."""
    frames = min(len(x), round(duration_s * sample_rate))

    return x[:frames].copy()


def fade_edges(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Fade both ends of ``x`` in and out over 20 ms with half Hann windows.

    Processing can leave sound at the edges of a stimulus (codec pre-echo,
    musical noise), and a stimulus that starts or stops at a non-zero level
    clicks.
    """
    fade = min(round(FADE_S * sample_rate), len(x) // 2)
    ramp = np.hanning(2 * fade)[:fade]
    out = x.copy()
    out[:fade] *= ramp
    out[len(out) - fade :] *= ramp[::-1]

    return out


def encode_decode(
    x: np.ndarray, sample_rate: int, setting: CodecSetting
) -> tuple[np.ndarray, float]:
    """Encode ``x`` with a real codec through libsndfile and decode it again.

    Returns the decoded signal (not yet aligned) and the measured bitrate in
    kbit/s, from the size of the encoded stream.
    """
    buffer = io.BytesIO()
    sf.write(
        buffer,
        x,
        sample_rate,
        format=setting.format,
        subtype=setting.subtype,
        compression_level=setting.compression_level,
        bitrate_mode=setting.bitrate_mode,
    )
    encoded_bytes = len(buffer.getvalue())
    buffer.seek(0)
    decoded, decoded_rate = sf.read(buffer, dtype="float64", always_2d=True)
    if decoded_rate != sample_rate:
        raise RuntimeError(
            f"Decoding {setting.format}/{setting.subtype} returned "
            f"{decoded_rate} Hz for a {sample_rate} Hz input."
        )
    bitrate_kbps = encoded_bytes * 8 / (len(x) / sample_rate) / 1000

    return decoded[:, 0], bitrate_kbps


def estimate_lag(
    signal: np.ndarray, reference: np.ndarray, max_lag: int = MAX_CODEC_LAG
) -> int:
    """Estimate how many samples ``signal`` lags behind ``reference``.

    The lag maximises the cross-correlation within ``[-max_lag, max_lag]``.
    A positive lag means ``signal`` is delayed.
    """
    correlation = scipy.signal.correlate(signal, reference, mode="full")
    lags = scipy.signal.correlation_lags(len(signal), len(reference), mode="full")
    window = np.abs(lags) <= max_lag

    return int(lags[window][np.argmax(correlation[window])])


def align_to_reference(
    signal: np.ndarray, reference: np.ndarray, max_lag: int = MAX_CODEC_LAG
) -> np.ndarray:
    """Shift ``signal`` by its estimated lag and trim or pad it to the reference.

    Codecs add an encoder delay and pad the last frame. The result starts at
    the same instant as ``reference`` and has exactly its length; samples
    that the shift leaves without data are zero.
    """
    lag = estimate_lag(signal, reference, max_lag)
    aligned = np.zeros(len(reference))
    if lag >= 0:
        source = signal[lag : lag + len(reference)]
        aligned[: len(source)] = source
    else:
        source = signal[: len(reference) + lag]
        aligned[-lag : -lag + len(source)] = source

    return aligned


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-noise ratio of ``estimate`` against ``reference``, in dB."""
    error = np.sum((reference - estimate) ** 2)

    return float(10 * np.log10(np.sum(reference**2) / error))


def bandwidth_hz(
    estimate: np.ndarray, reference: np.ndarray, sample_rate: int
) -> float:
    """Return the first frequency above 1 kHz where ``estimate`` loses 20 dB.

    Both signals' power spectral densities are estimated with Welch's
    method. The result is the lowest frequency above 1 kHz at which the
    estimate's density is more than 20 dB below the reference's, or the
    Nyquist frequency when there is none. Codecs that fill the top band with
    noise (Opus) keep their nominal bandwidth by this measure.
    """
    freqs, reference_psd = scipy.signal.welch(reference, sample_rate, nperseg=4096)
    _, estimate_psd = scipy.signal.welch(estimate, sample_rate, nperseg=4096)
    tiny = np.finfo(np.float64).tiny
    ratio_db = 10 * np.log10((estimate_psd + tiny) / (reference_psd + tiny))
    lost = np.flatnonzero((freqs > 1000) & (ratio_db < -20))

    return float(freqs[lost[0]]) if len(lost) else sample_rate / 2


def stft(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Return the complex STFT used by the separation stimuli."""
    _, _, spectrum = scipy.signal.stft(
        x, sample_rate, nperseg=STFT_NPERSEG, noverlap=STFT_NOVERLAP
    )

    return spectrum


def istft(spectrum: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
    """Invert :func:`stft` and trim or pad to ``frames`` samples."""
    _, x = scipy.signal.istft(
        spectrum, sample_rate, nperseg=STFT_NPERSEG, noverlap=STFT_NOVERLAP
    )
    out = np.zeros(frames)
    out[: min(frames, len(x))] = x[:frames]

    return out


def rms(x: np.ndarray) -> float:
    """Root-mean-square level of ``x``."""
    return float(np.sqrt(np.mean(x**2)))


def match_rms(x: np.ndarray, level: float) -> np.ndarray:
    """Scale ``x`` to the RMS level ``level``."""
    return x * (level / rms(x))


def separation_estimates(
    target: np.ndarray,
    rest: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Simulate three separation estimates of ``target`` from the mixture.

    Each estimate applies a real-valued time-frequency mask to the mixture
    STFT, so it is the sum of the masked target and the masked rest. Both
    parts are returned, as ``(target_part, interference_part)``, to measure
    leakage and target distortion separately.

    * ``soft_mask``: a ratio mask ``T / (T + R)`` computed from target and
      rest magnitudes blurred over 9 bins and 9 frames, as a separator with
      coarse spectral estimates would make. The blur lets the rest leak in
      wherever it overlaps the target.
    * ``binary_mask``: a hard mask that keeps a bin when the target
      magnitude beats the rest's, both perturbed by log-normal errors
      (sigma 1 in natural-log units). Isolated bins that flip on and off
      give musical noise.
    * ``over_suppression``: the Wiener mask ``T**2 / (T**2 + R**2)`` raised
      to the fourth power and zeroed below 0.5. Little of the rest leaks
      through, but the target loses every bin it shares with the rest, which
      distorts its timbre and onsets.
    """
    frames = len(target)
    target_spec = stft(target, sample_rate)
    rest_spec = stft(rest, sample_rate)
    target_mag = np.abs(target_spec)
    rest_mag = np.abs(rest_spec)
    tiny = np.finfo(np.float64).tiny

    blurred_target = scipy.ndimage.uniform_filter(target_mag, size=9)
    blurred_rest = scipy.ndimage.uniform_filter(rest_mag, size=9)
    soft = blurred_target / (blurred_target + blurred_rest + tiny)

    noisy_target = target_mag * np.exp(rng.standard_normal(target_mag.shape))
    noisy_rest = rest_mag * np.exp(rng.standard_normal(rest_mag.shape))
    binary = (noisy_target > noisy_rest).astype(np.float64)

    wiener = target_mag**2 / (target_mag**2 + rest_mag**2 + tiny)
    harsh = np.where(wiener >= 0.5, wiener**4, 0.0)

    masks = {"soft_mask": soft, "binary_mask": binary, "over_suppression": harsh}

    return {
        name: (
            istft(mask * target_spec, sample_rate, frames),
            istft(mask * rest_spec, sample_rate, frames),
        )
        for name, mask in masks.items()
    }


def anchor_interference(target: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Add the sum of the other stems to the target at equal RMS level.

    The anchor is then scaled back to the target's RMS level.
    """
    level = rms(target)

    return match_rms(target + match_rms(rest, level), level)


def anchor_artifacts(
    target: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Add musical noise made from the target to the target at equal RMS level.

    The noise is the target's STFT with a random 99 % of its bins set to
    zero. The anchor is then scaled back to the target's RMS level.
    """
    spectrum = stft(target, sample_rate)
    keep = rng.random(spectrum.shape) >= 0.99
    noise = istft(spectrum * keep, sample_rate, len(target))
    level = rms(target)

    return match_rms(target + match_rms(noise, level), level)


def anchor_distorted_target(
    target: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Low-pass the target at 3.5 kHz and drop a random 20 % of STFT frames.

    The low-pass is the zero-phase MUSHRA low-range anchor filter. Dropped
    frames are set to zero before overlap-add, so the gaps are partly filled
    by the neighbouring frames. The anchor is scaled to the target's RMS
    level.
    """
    filtered = lowpass_anchor(target, sample_rate, LOW_ANCHOR_HZ)
    spectrum = stft(filtered, sample_rate)
    n_frames = spectrum.shape[1]
    dropped = rng.choice(n_frames, size=int(0.2 * n_frames), replace=False)
    spectrum[:, dropped] = 0
    distorted = istft(spectrum, sample_rate, len(target))

    return match_rms(distorted, rms(target))


def normalise_set(stimuli: dict[str, np.ndarray]) -> tuple[dict, float]:
    """Scale a set of stimuli by one gain so its loudest peak is at -1 dBFS.

    The target is lowered by 1e-4 (0.001 dB) so that rounding to 16 bits
    cannot push a peak above -1 dBFS. Returns the scaled set and the gain in
    dB.
    """
    peak = max(np.max(np.abs(x)) for x in stimuli.values())
    gain = 10 ** (PEAK_DBFS / 20) * (1 - 1e-4) / peak
    scaled = {name: x * gain for name, x in stimuli.items()}

    return scaled, float(20 * np.log10(gain))


def write_set(
    folder: Path, stimuli: dict[str, np.ndarray], sample_rate: int
) -> list[tuple[str, float, float]]:
    """Write each stimulus as 16-bit FLAC and return (name, peak, RMS) in dBFS."""
    folder.mkdir(parents=True, exist_ok=True)
    levels = []
    for name, x in stimuli.items():
        sf.write(folder / f"{name}.flac", x, sample_rate, subtype="PCM_16")
        peak_db = 20 * np.log10(np.max(np.abs(x)))
        rms_db = 20 * np.log10(rms(x))
        levels.append((name, float(peak_db), float(rms_db)))

    return levels


def item_seed(item: str) -> int:
    """Seed for an item's random choices, stable across runs and platforms."""
    return BASE_SEED + zlib.crc32(item.encode("utf-8"))


def make_codec_set(
    item_dir: Path, out_dir: Path, duration_s: float
) -> list[dict[str, object]]:
    """Write the reference and codec systems of one item; return their metrics."""
    mixture, sample_rate = read_mono(item_dir / "mixture.flac")
    reference = fade_edges(excerpt(mixture, sample_rate, duration_s), sample_rate)
    stimuli = {"reference": reference}
    bitrates = {"reference": float("nan")}
    for name, setting in CODEC_SYSTEMS.items():
        decoded, bitrates[name] = encode_decode(reference, sample_rate, setting)
        aligned = align_to_reference(decoded, reference)
        stimuli[name] = fade_edges(aligned, sample_rate)

    scaled, gain_db = normalise_set(stimuli)
    levels = write_set(out_dir, scaled, sample_rate)
    logger.info("%s: codec set written, gain %.2f dB", item_dir.name, gain_db)

    return [
        {
            "item": item_dir.name,
            "stimulus": name,
            "kbps": bitrates[name],
            "snr_db": snr_db(stimuli[name], reference) if name != "reference" else None,
            "bandwidth_hz": (
                bandwidth_hz(stimuli[name], reference, sample_rate)
                if name != "reference"
                else None
            ),
            "peak_dbfs": peak_db,
            "rms_dbfs": rms_db,
        }
        for name, peak_db, rms_db in levels
    ]


def make_separation_set(
    item_dir: Path, out_dir: Path, duration_s: float, target_stem: str
) -> list[dict[str, object]]:
    """Write the separation reference, estimates and anchors of one item."""
    stems = {}
    sample_rate = 0
    for stem in STEMS:
        x, sample_rate = read_mono(item_dir / f"{stem}.flac")
        stems[stem] = fade_edges(excerpt(x, sample_rate, duration_s), sample_rate)
    target = stems[target_stem]
    rest = np.sum([x for name, x in stems.items() if name != target_stem], axis=0)
    rng = np.random.default_rng(item_seed(item_dir.name))

    parts = separation_estimates(target, rest, sample_rate, rng)
    stimuli = {"reference": target}
    stimuli.update({name: t + i for name, (t, i) in parts.items()})
    stimuli["anchor_interference"] = anchor_interference(target, rest)
    stimuli["anchor_artifacts"] = anchor_artifacts(target, sample_rate, rng)
    stimuli["anchor_distorted_target"] = anchor_distorted_target(
        target, sample_rate, rng
    )
    stimuli = {
        name: x if name == "reference" else fade_edges(x, sample_rate)
        for name, x in stimuli.items()
    }

    scaled, gain_db = normalise_set(stimuli)
    levels = write_set(out_dir / "sep", scaled, sample_rate)
    logger.info("%s: separation set written, gain %.2f dB", item_dir.name, gain_db)

    metrics = []
    for name, peak_db, rms_db in levels:
        row: dict[str, object] = {
            "item": item_dir.name,
            "stimulus": f"sep/{name}",
            "sdr_db": snr_db(stimuli[name], target) if name != "reference" else None,
            "peak_dbfs": peak_db,
            "rms_dbfs": rms_db,
        }
        if name in parts:
            target_part, interference_part = parts[name]
            row["sir_db"] = 10 * np.log10(
                np.sum(target_part**2) / np.sum(interference_part**2)
            )
            row["target_sdr_db"] = snr_db(target_part, target)
        metrics.append(row)

    return metrics


def find_items(source: Path) -> list[Path]:
    """Return the item folders of ``source``: those containing every stem."""
    if not source.is_dir():
        raise FileNotFoundError(
            f"Source folder not found: {source}. Pass --source with a folder "
            "that contains one subfolder per item."
        )

    needed = ("mixture", *STEMS)
    items = sorted(
        path
        for path in source.iterdir()
        if path.is_dir() and all((path / f"{n}.flac").is_file() for n in needed)
    )
    if not items:
        raise FileNotFoundError(
            f"No item folders found in {source}: each item needs "
            f"{', '.join(f'{n}.flac' for n in needed)}."
        )

    return items


def format_metrics(rows: Iterable[dict[str, object]]) -> str:
    """Format metric rows as a Markdown table."""
    columns = [
        "item",
        "stimulus",
        "kbps",
        "snr_db",
        "bandwidth_hz",
        "sdr_db",
        "sir_db",
        "target_sdr_db",
        "peak_dbfs",
        "rms_dbfs",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("")
            elif isinstance(value, float):
                cells.append(
                    f"{value:.1f}" if column != "bandwidth_hz" else f"{value:.0f}"
                )
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")

    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="folder with one subfolder per item, each containing mixture.flac "
        "and the stems soprano, alto, tenor, bass and drums (.flac)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: caqe_core/demo/audio in this repository)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help="length of each excerpt in seconds, from the start of the item "
        f"(default: {DEFAULT_DURATION_S})",
    )
    parser.add_argument(
        "--target",
        choices=STEMS,
        default=DEFAULT_TARGET,
        help=f"stem to separate in the separation demo (default: {DEFAULT_TARGET})",
    )

    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.duration <= 2 * FADE_S:
        raise SystemExit(
            f"Invalid --duration {args.duration}: expected more than "
            f"{2 * FADE_S} seconds."
        )

    try:
        items = find_items(args.source)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None

    rows: list[dict[str, object]] = []
    for item_dir in items:
        out_dir = args.out / item_dir.name
        rows.extend(make_codec_set(item_dir, out_dir, args.duration))
        rows.extend(make_separation_set(item_dir, out_dir, args.duration, args.target))

    print(format_metrics(rows))

    return 0


if __name__ == "__main__":
    sys.exit(main())
