"""Audio checks, prepared copies and opaque per-participant URLs."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

logger = logging.getLogger(__name__)

CLIPPING_RUN = 3
"""Consecutive samples at full scale that count as clipping."""
CLIPPING_LEVEL = 0.9999


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def inspect_audio(path: Path, where: str) -> AudioInfo:
    """Read a file's header; ``where`` names the config key that gave the file."""
    if not path.exists():
        raise AudioError(
            f"{where}: audio file not found: {path}. Check the path and audio.root."
        )
    if not path.is_file():
        raise AudioError(f"{where}: {path} is not a file. Name an audio file.")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(
            f"{where}: cannot read {path} as audio ({error}). Use WAV, FLAC, OGG or MP3."
        ) from None
    if info.frames <= 0:
        raise AudioError(f"{where}: {path} contains no samples. Replace the file.")
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames))


def read_audio(path: Path, where: str) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(
            f"{where}: cannot decode {path} ({error}). Re-encode the file."
        ) from None
    return data, int(rate)


def find_clipping(data: np.ndarray) -> int | None:
    """Return the first frame of a run of clipped samples, or None."""
    clipped = np.abs(data) >= CLIPPING_LEVEL
    if not clipped.any():
        return None
    for channel in range(clipped.shape[1]):
        column = clipped[:, channel].astype(np.int8)
        if column.sum() < CLIPPING_RUN:
            continue
        window = np.convolve(column, np.ones(CLIPPING_RUN, dtype=np.int8), mode="valid")
        hits = np.flatnonzero(window == CLIPPING_RUN)
        if hits.size:
            return int(hits[0])
    return None


def find_non_finite(data: np.ndarray) -> int | None:
    """Return the first frame with a NaN or infinite sample in any channel, or None."""
    bad = ~np.isfinite(data).all(axis=1)
    if not bad.any():
        return None
    return int(np.argmax(bad))


SERVE_FORMATS = {"wav": ("WAV", ".wav"), "flac": ("FLAC", ".flac")}


def prepare_copy(
    data: np.ndarray,
    rate: int,
    prepared_dir: Path,
    salt: str | None = None,
    serve_format: str = "wav",
) -> tuple[Path, str]:
    """Write audio as 16-bit PCM without tags; return its path and content hash.

    Serving these copies keeps file names and tags (which may name a system)
    away from the listener. The file is named by the hash of its samples,
    or with ``salt`` by a hash of both, so two stimuli with the same samples
    get files of their own. WAV copies of equally long signals have equal
    sizes; FLAC copies are about half as large, but their sizes follow the
    content, which can reveal a low-pass anchor.
    """
    file_format, suffix = SERVE_FORMATS[serve_format]
    pcm = np.clip(np.round(data * 32767.0), -32768, 32767).astype("<i2")
    digest = hashlib.sha256(
        pcm.tobytes() + struct.pack("<II", rate, data.shape[1])
    ).hexdigest()
    name = (
        digest
        if salt is None
        else hashlib.sha256(f"{digest}\0{salt}".encode()).hexdigest()
    )
    prepared_dir.mkdir(parents=True, exist_ok=True)
    target = prepared_dir / f"{name[:32]}{suffix}"
    if not target.exists():
        # A name of its own per writer: two processes may prepare the same
        # file at once, and the rename makes whichever finishes last win.
        partial = target.with_name(
            f"{target.stem}.{os.getpid()}.{secrets.token_hex(4)}.partial"
        )
        if file_format == "WAV":
            _write_wav(partial, pcm, rate, padding=int(name[32:36], 16) % 1024 * 2)
        else:
            sf.write(str(partial), pcm, rate, subtype="PCM_16", format=file_format)
        partial.replace(target)
    return target, digest


def _write_wav(path: Path, pcm: np.ndarray, rate: int, padding: int) -> None:
    """Write 16-bit PCM WAV with a JUNK chunk of ``padding`` zero bytes.

    The padding differs per file (it comes from the salted name), so copies
    of the same samples differ in bytes, and sizes vary by an amount
    unrelated to the content. Decoders skip JUNK chunks (RIFF).
    """
    channels = pcm.shape[1]
    data = pcm.astype("<i2").tobytes()
    fmt = struct.pack(
        "<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16
    )
    chunks = (
        b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"JUNK"
        + struct.pack("<I", padding)
        + bytes(padding)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


class AudioTokens:
    """Deterministic, authenticated encryption of (participant, stimulus) ids.

    The same pair always gives the same URL, so browsers can cache it, and
    the URL reveals nothing about the stimulus: AES-SIV hides the ids and
    rejects any token not made with the key.
    """

    def __init__(self, secret_key: bytes) -> None:
        key = hashlib.sha512(b"caqe-audio-token\x00" + secret_key).digest()
        self._cipher = AESSIV(key)

    def encode(self, participant_id: int, stimulus_id: int) -> str:
        sealed = self._cipher.encrypt(
            struct.pack("<QQ", participant_id, stimulus_id), None
        )
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def decode(self, token: str) -> tuple[int, int] | None:
        if not 20 <= len(token) <= 80:
            return None
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = self._cipher.decrypt(sealed, None)
        except (ValueError, InvalidTag):
            return None
        if len(plain) != 16:
            return None
        participant_id, stimulus_id = struct.unpack("<QQ", plain)
        # Base64 decoding ignores "=" padding and the unused low bits of the
        # last character, so other spellings decrypt too. Only the token as
        # issued is accepted, so that each audio file has one URL.
        if self.encode(participant_id, stimulus_id) != token:
            return None
        return participant_id, stimulus_id
