"""Tests of the audio engine and the timeline in Debian's Chromium.

The fidelity tests render the engine's output in an OfflineAudioContext and
compare it with the output computed here from the same signals: each pass over
the timeline, the raised-cosine fades and the context frames that the engine
reports.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import expect
from scipy import signal

pytestmark = pytest.mark.browser

RATE = 48_000
FADE_MS = 5
FADE = round(FADE_MS * RATE / 1000)
TOLERANCE = 1e-3

# Runs commands at context frames of an OfflineAudioContext and returns the
# rendered output (float32, base64) with the engine's events. A command list
# at frame 0 runs before rendering starts, the others inside ctx.suspend().
RENDER_SCRIPT = """
async ({ items, length, rate, fadeMs, steps, itemBytes }) => {
  const { AudioEngine } = window.caqe;
  const context = new OfflineAudioContext(1, length, rate);
  const engine = new AudioEngine({ fadeMs, context });
  // With itemBytes, the items arrive fetched, as from a page's early script,
  // and their URLs do not exist, so a fetch would fail.
  const download = async (url) => (await fetch(url)).arrayBuffer();
  await engine.load(
    itemBytes
      ? items.map(({ id, url }) => ({ id, url: `${url}.missing`, bytes: download(url) }))
      : items,
  );
  const suspendedAt = [];
  const run = (calls) => {
    for (const [method, ...args] of calls) engine[method](...args);
  };
  for (const { frame, calls } of steps) {
    if (frame === 0) {
      run(calls);
      continue;
    }
    context.suspend(frame / rate).then(() => {
      suspendedAt.push(Math.round(context.currentTime * rate));
      run(calls);
      context.resume();
    });
  }
  const rendered = await context.startRendering();
  const bytes = new Uint8Array(rendered.getChannelData(0).buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return {
    samples: btoa(binary),
    events: engine.events,
    suspendedAt,
    fadeFrames: engine.fadeFrames,
    playing: engine.playing,
    position: engine.position,
  };
}
"""


@dataclass
class Pass:
    """One pass over the timeline: context frames [start, end) play from `offset`."""

    start: int
    offset: int
    end: int


def fade_in(frames: int = FADE) -> np.ndarray:
    """Rising half of a Hann window: 0.5 * (1 - cos(pi * n / (frames - 1)))."""
    return signal.windows.hann(2 * frames - 1)[:frames]


def gain_curve(length: int, initial: float, fades: list[tuple[int, str]]) -> np.ndarray:
    """Gain per frame that starts at `initial` and fades "in" or "out" at frames."""
    gain = np.full(length, initial)
    for frame, direction in sorted(fades):
        curve = fade_in() if direction == "in" else fade_in()[::-1]
        segment = gain[frame : frame + FADE]
        gain[frame : frame + FADE] = curve[: len(segment)]
        gain[frame + FADE :] = 1.0 if direction == "in" else 0.0
    return gain


def ideal_output(
    signals: dict[str, np.ndarray],
    length: int,
    passes: list[Pass],
    transport: np.ndarray,
    selection: dict[str, np.ndarray],
) -> np.ndarray:
    """Mix the selected signals pass by pass and apply the transport gain."""
    output = np.zeros(length)
    for current in passes:
        frames = np.arange(current.start, min(current.end, length))
        positions = current.offset + frames - current.start
        for stimulus_id, samples in signals.items():
            output[frames] += selection[stimulus_id][frames] * samples[positions]
    return output * transport


def best_lag(
    output: np.ndarray, source: np.ndarray, source_start: int, max_lag: int
) -> int:
    """Lag of `output` against `source[source_start:]` at the cross-correlation peak."""
    reference = source[source_start - max_lag : source_start + len(output) + max_lag]
    correlation = signal.correlate(reference, output, mode="valid")
    lags = signal.correlation_lags(len(reference), len(output), mode="valid") - max_lag
    return int(lags[np.argmax(correlation)])


def sinusoid_phase(output: np.ndarray, first_position: int, frequency: float) -> float:
    """Phase in radians of a sinusoid fitted to `output` on the timeline positions."""
    positions = first_position + np.arange(len(output))
    angle = 2 * np.pi * frequency * positions / RATE
    basis = np.column_stack([np.sin(angle), np.cos(angle)])
    (sin_weight, cos_weight), *_ = np.linalg.lstsq(basis, output, rcond=None)
    return float(np.arctan2(cos_weight, sin_weight))


def tone(frequency: float, seconds: float, phase: float = 0.0, amplitude: float = 0.5):
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t + phase)).astype(np.float32)


def noise(seconds: float, seed: int, amplitude: float = 0.25) -> np.ndarray:
    generator = np.random.default_rng(seed)
    samples = generator.uniform(-amplitude, amplitude, round(seconds * RATE))
    return samples.astype(np.float32)


def write_wav(directory: Path, name: str, samples: np.ndarray, rate: int = RATE) -> str:
    """Write a 32-bit float WAV, which decodes without quantisation."""
    sf.write(directory / name, samples, rate, subtype="FLOAT")
    return f"/audio/{name}"


@pytest.fixture(scope="module")
def stimulus_signals(static_server) -> dict[str, np.ndarray]:
    """Two tones and a noise of 3 s, written as WAV files for the server."""
    signals = {
        "s1": tone(440.0, 3.0),
        "s2": tone(1000.0, 3.0, phase=0.3),
        "s3": noise(3.0, seed=1),
    }
    for stimulus_id, samples in signals.items():
        write_wav(static_server.audio_dir, f"{stimulus_id}.wav", samples)
    return signals


def items_for(signals: dict[str, np.ndarray]) -> list[dict[str, str]]:
    return [{"id": key, "url": f"/audio/{key}.wav"} for key in signals]


def render(
    page, signals, length: int, steps: list[dict], item_bytes: bool = False
) -> dict:
    result = page.evaluate(
        RENDER_SCRIPT,
        {
            "items": items_for(signals),
            "length": length,
            "rate": RATE,
            "fadeMs": FADE_MS,
            "steps": steps,
            "itemBytes": item_bytes,
        },
    )
    result["samples"] = np.frombuffer(base64.b64decode(result["samples"]), dtype="<f4")
    return result


def frames_of(events: list[dict], event_type: str) -> list[int]:
    """Context frames of the events of one type."""
    return [round(e["contextTime"] * RATE) for e in events if e["type"] == event_type]


# --- fidelity -----------------------------------------------------------------


def test_switch_while_playing_matches_ideal(page, stimulus_signals):
    length = round(1.5 * RATE)
    steps = [
        {"frame": 0, "calls": [["play"]]},
        {"frame": round(0.5 * RATE), "calls": [["select", "s2"]]},
        {"frame": round(0.9 * RATE), "calls": [["select", "s3"]]},
        # Two switches in one go: the second waits for the first to finish.
        {"frame": round(1.2 * RATE), "calls": [["select", "s1"], ["select", "s2"]]},
    ]
    result = render(page, stimulus_signals, length, steps)
    output = result["samples"]
    first, second, third = result["suspendedAt"]

    assert result["fadeFrames"] == FADE
    assert frames_of(result["events"], "play") == [0]
    switches = [e for e in result["events"] if e["type"] == "switch"]
    assert [(e["from"], e["to"]) for e in switches] == [
        ("s1", "s2"),
        ("s2", "s3"),
        ("s3", "s1"),
        ("s1", "s2"),
    ]
    assert frames_of(switches, "switch") == [first, second, third, third + 2 * FADE]
    assert switches[0]["position"] == pytest.approx(first / RATE)

    selection = {
        "s1": gain_curve(
            length,
            1.0,
            [(first, "out"), (third + FADE, "in"), (third + 2 * FADE, "out")],
        ),
        "s2": gain_curve(
            length,
            0.0,
            [(first + FADE, "in"), (second, "out"), (third + 3 * FADE, "in")],
        ),
        "s3": gain_curve(length, 0.0, [(second + FADE, "in"), (third, "out")]),
    }
    transport = gain_curve(length, 0.0, [(0, "in")])
    expected = ideal_output(
        stimulus_signals, length, [Pass(0, 0, 3 * RATE)], transport, selection
    )

    assert np.max(np.abs(output - expected)) <= TOLERANCE
    # The old stimulus is silent at the last frame of its fade-out and the new
    # one at the first frame of its fade-in: two zero frames, exactly there.
    assert output[first + FADE - 2] != 0.0
    assert abs(output[first + FADE - 1]) < 1e-6
    assert abs(output[first + FADE]) < 1e-6
    # The noise plays in step with the timeline: no dropped or repeated frame.
    noise_start = second + 2 * FADE
    lag = best_lag(
        output[noise_start:third], stimulus_signals["s3"], noise_start, max_lag=50
    )
    assert lag == 0
    # The 1 kHz tone continues with its own phase after the switch.
    tone_start = first + 2 * FADE
    measured = sinusoid_phase(output[tone_start:second], tone_start, 1000.0)
    assert measured == pytest.approx(0.3, abs=1e-3)


def test_item_bytes_match_ideal(page, stimulus_signals):
    length = RATE
    switch = round(0.4 * RATE)
    steps = [
        {"frame": 0, "calls": [["play"]]},
        {"frame": switch, "calls": [["select", "s3"]]},
    ]
    result = render(page, stimulus_signals, length, steps, item_bytes=True)
    (suspended,) = result["suspendedAt"]

    selection = {
        "s1": gain_curve(length, 1.0, [(suspended, "out")]),
        "s2": gain_curve(length, 0.0, []),
        "s3": gain_curve(length, 0.0, [(suspended + FADE, "in")]),
    }
    transport = gain_curve(length, 0.0, [(0, "in")])
    expected = ideal_output(
        stimulus_signals, length, [Pass(0, 0, 3 * RATE)], transport, selection
    )

    assert suspended == switch
    assert np.max(np.abs(result["samples"] - expected)) <= TOLERANCE


def test_loop_boundary_matches_ideal(page, stimulus_signals):
    length = 2 * RATE
    loop_start, loop_end = round(0.25 * RATE), round(0.85 * RATE)
    loop_length = loop_end - loop_start
    steps = [
        {"frame": 0, "calls": [["setLoop", 0.25, 0.85], ["play"]]},
        {"frame": round(0.7 * RATE), "calls": [["select", "s3"]]},
    ]
    result = render(page, stimulus_signals, length, steps)
    output = result["samples"]
    (switch_frame,) = result["suspendedAt"]

    boundaries = [loop_length * k for k in range(1, 4)]
    loops = [e for e in result["events"] if e["type"] == "loop"]
    assert frames_of(loops, "loop") == boundaries
    assert all(e["position"] == pytest.approx(0.25) for e in loops)
    assert frames_of(result["events"], "switch") == [switch_frame]

    passes = [Pass(b, loop_start, b + loop_length) for b in [0, *boundaries]]
    transport_fades = [(0, "in")]
    for boundary in boundaries:
        transport_fades += [(boundary - FADE, "out"), (boundary, "in")]
    transport = gain_curve(length, 0.0, transport_fades)
    selection = {
        "s1": gain_curve(length, 1.0, [(switch_frame, "out")]),
        "s2": np.zeros(length),
        "s3": gain_curve(length, 0.0, [(switch_frame + FADE, "in")]),
    }
    expected = ideal_output(stimulus_signals, length, passes, transport, selection)

    assert np.max(np.abs(output - expected)) <= TOLERANCE
    # Silent at the last frame before and the first frame after the boundary.
    boundary = boundaries[1]
    assert abs(output[boundary - 1]) < 1e-6
    assert abs(output[boundary]) < 1e-6
    # After the boundary the noise restarts exactly at the loop start.
    after = output[boundary + FADE : boundary + FADE + 9600]
    assert best_lag(after, stimulus_signals["s3"], loop_start + FADE, max_lag=50) == 0
    # Before the boundary it reaches exactly the loop end.
    before = output[boundary - FADE - 9600 : boundary - FADE]
    assert (
        best_lag(before, stimulus_signals["s3"], loop_end - FADE - 9600, max_lag=50)
        == 0
    )


def test_seek_then_stop_matches_ideal(page, stimulus_signals):
    length = RATE
    steps = [
        {"frame": 0, "calls": [["play"]]},
        {"frame": round(0.3 * RATE), "calls": [["seek", 2.0]]},
        {"frame": round(0.6 * RATE), "calls": [["stop"]]},
    ]
    result = render(page, stimulus_signals, length, steps)
    output = result["samples"]
    seek_frame, stop_frame = result["suspendedAt"]

    (seek_event,) = [e for e in result["events"] if e["type"] == "seek"]
    assert round(seek_event["contextTime"] * RATE) == seek_frame + FADE
    assert seek_event["position"] == pytest.approx(2.0)
    (stop_event,) = [e for e in result["events"] if e["type"] == "stop"]
    assert round(stop_event["contextTime"] * RATE) == stop_frame
    expected_stop_position = 2.0 + (stop_frame - seek_frame - FADE) / RATE
    assert stop_event["position"] == pytest.approx(expected_stop_position)
    assert result["playing"] is False
    assert result["position"] == 0.0

    passes = [
        Pass(0, 0, seek_frame + FADE),
        Pass(seek_frame + FADE, 2 * RATE, stop_frame + FADE),
    ]
    transport = gain_curve(
        length,
        0.0,
        [
            (0, "in"),
            (seek_frame, "out"),
            (seek_frame + FADE, "in"),
            (stop_frame, "out"),
        ],
    )
    selection = {
        "s1": np.ones(length),
        "s2": np.zeros(length),
        "s3": np.zeros(length),
    }
    expected = ideal_output(stimulus_signals, length, passes, transport, selection)

    assert np.max(np.abs(output - expected)) <= TOLERANCE
    assert np.all(output[stop_frame + FADE - 1 :] == 0.0)
    measured = sinusoid_phase(
        output[seek_frame + 2 * FADE : stop_frame], 2 * RATE + FADE, 440.0
    )
    assert measured == pytest.approx(0.0, abs=1e-3)


def test_loop_change_while_playing_keeps_position(page, stimulus_signals):
    # The loop is set while the position is inside it, so playback continues,
    # then it is cleared inside the second pass, so that pass runs to the end.
    length = 2 * RATE
    steps = [
        {"frame": 0, "calls": [["play"]]},
        {"frame": round(0.3 * RATE), "calls": [["setLoop", 0.2, 0.9]]},
        {"frame": round(1.2 * RATE), "calls": [["clearLoop"]]},
    ]
    result = render(page, stimulus_signals, length, steps)
    output = result["samples"]
    set_frame, clear_frame = result["suspendedAt"]

    loop_start, loop_end = round(0.2 * RATE), round(0.9 * RATE)
    assert frames_of(result["events"], "loop") == [loop_end]
    loop_sets = [e for e in result["events"] if e["type"] == "loop-set"]
    assert [(e["start"], e["end"]) for e in loop_sets] == [(0.2, 0.9), (None, None)]
    assert loop_sets[0]["position"] == pytest.approx(set_frame / RATE)
    assert round(loop_sets[1]["contextTime"] * RATE) == clear_frame

    passes = [
        Pass(0, 0, loop_end),
        Pass(loop_end, loop_start, loop_end + 3 * RATE - loop_start),
    ]
    transport = gain_curve(
        length, 0.0, [(0, "in"), (loop_end - FADE, "out"), (loop_end, "in")]
    )
    selection = {"s1": np.ones(length), "s2": np.zeros(length), "s3": np.zeros(length)}
    expected = ideal_output(stimulus_signals, length, passes, transport, selection)

    assert np.max(np.abs(output - expected)) <= TOLERANCE


def test_end_of_stimuli_stops_playback(page, static_server):
    signals = {"short": tone(300.0, 0.5)}
    write_wav(static_server.audio_dir, "short.wav", signals["short"])
    length = RATE
    result = render(page, signals, length, [{"frame": 0, "calls": [["play"]]}])
    output = result["samples"]
    end = len(signals["short"])

    (stop_event,) = [e for e in result["events"] if e["type"] == "stop"]
    assert stop_event["reason"] == "end"
    assert round(stop_event["contextTime"] * RATE) == end
    assert result["playing"] is False

    transport = gain_curve(length, 0.0, [(0, "in"), (end - FADE, "out")])
    expected = ideal_output(
        signals, length, [Pass(0, 0, end)], transport, {"short": np.ones(length)}
    )
    assert np.max(np.abs(output - expected)) <= TOLERANCE
    assert np.all(output[end - 1 :] == 0.0)


# --- loading --------------------------------------------------------------------

LOAD_SCRIPT = """
async ({ items, checkAfterMs }) => {
  const engine = new window.caqe.AudioEngine();
  const progress = [];
  let settled = false;
  const readyWhileLoading = new Promise((resolve) => {
    setTimeout(() => resolve({ ready: engine.ready, settled }), checkAfterMs);
  });
  try {
    await engine.load(items, (loaded, total) => progress.push([loaded, total]));
    settled = true;
    return {
      ok: true,
      progress,
      early: await readyWhileLoading,
      ready: engine.ready,
      duration: engine.duration,
      sampleRate: engine.sampleRate,
      contextRate: engine.context.sampleRate,
      lengths: engine.ids.map((id) => engine.getBuffer(id).length),
      lengthMismatch: engine.lengthMismatch,
    };
  } catch (error) {
    settled = true;
    return {
      ok: false,
      name: error.name,
      message: error.message,
      stimulusId: error.stimulusId,
      ready: engine.ready,
    };
  } finally {
    await engine.close();
  }
}
"""


def load_in_page(page, items: list[dict], check_after_ms: int = 0) -> dict:
    return page.evaluate(LOAD_SCRIPT, {"items": items, "checkAfterMs": check_after_ms})


def test_load_waits_for_every_buffer(page, static_server, stimulus_signals):
    # s3 arrives 800 ms late. At 300 ms load() must still be pending.
    items = items_for(stimulus_signals)
    items[2]["url"] += "?delay_ms=800"
    result = load_in_page(page, items, check_after_ms=300)

    assert result["ok"], result
    assert result["early"] == {"ready": False, "settled": False}
    assert result["ready"] is True
    assert result["progress"] == [[1, 3], [2, 3], [3, 3]]
    assert result["lengths"] == [3 * RATE] * 3
    assert result["duration"] == 3.0
    assert result["lengthMismatch"] is None


def test_load_rejects_missing_file(page, stimulus_signals):
    items = items_for(stimulus_signals) + [
        {"id": "s404", "url": "/audio/missing-a1b2.wav"}
    ]
    result = load_in_page(page, items)

    assert result["ok"] is False
    assert result["name"] == "StimulusLoadError"
    assert result["stimulusId"] == "s404"
    assert '"s404"' in result["message"]
    assert "HTTP 404" in result["message"]
    assert "missing-a1b2" not in result["message"]
    assert result["ready"] is False


def test_load_rejects_non_audio_file(page, static_server, stimulus_signals):
    (static_server.audio_dir / "notes.wav").write_text("This is not audio.\n")
    items = items_for(stimulus_signals) + [{"id": "text", "url": "/audio/notes.wav"}]
    result = load_in_page(page, items)

    assert result["ok"] is False
    assert result["stimulusId"] == "text"
    assert '"text"' in result["message"]
    assert "decodeAudioData failed" in result["message"]


ITEM_BYTES_SCRIPT = """
async ({ items, failingId, resolvedId, invalidId, textId, sharedUrl }) => {
  const { AudioEngine } = window.caqe;
  const download = async (url) => (await fetch(url)).arrayBuffer();
  const shared = sharedUrl ? download(sharedUrl) : null;
  const withBytes = [];
  for (const { id, url } of items) {
    let bytes = shared ?? download(url);
    if (id === failingId) bytes = Promise.reject(new Error("the early request failed"));
    if (id === resolvedId) bytes = await bytes;
    if (id === invalidId) bytes = 5;
    if (id === textId) bytes = Promise.resolve("not bytes");
    // The URL does not exist, so a fetch would fail.
    withBytes.push({ id, url: `${url}.missing`, bytes });
  }
  const engine = new AudioEngine();
  const progress = [];
  try {
    await engine.load(withBytes, (loaded, total) => progress.push([loaded, total]));
    return {
      ok: true,
      progress,
      sampleRate: engine.sampleRate,
      lengths: engine.ids.map((id) => engine.getBuffer(id).length),
    };
  } catch (error) {
    // The other items' bytes still arrive. Wait for them, so that progress
    // reported after the failure would show up.
    await new Promise((resolve) => setTimeout(resolve, 300));
    return {
      ok: false,
      name: error.name,
      message: error.message,
      stimulusId: error.stimulusId,
      progress,
    };
  } finally {
    await engine.close();
  }
}
"""


def load_item_bytes(page, signals, **options) -> dict:
    arguments = {
        "items": items_for(signals),
        "failingId": None,
        "resolvedId": None,
        "invalidId": None,
        "textId": None,
        "sharedUrl": None,
    }
    return page.evaluate(ITEM_BYTES_SCRIPT, {**arguments, **options})


def test_load_takes_item_bytes(page, stimulus_signals):
    result = load_item_bytes(page, stimulus_signals, resolvedId="s2")

    assert result["ok"], result
    assert result["progress"] == [[1, 3], [2, 3], [3, 3]]
    assert result["sampleRate"] == RATE
    assert result["lengths"] == [3 * RATE] * 3


def test_items_share_flac_bytes(page, static_server, stimulus_signals):
    # decodeAudioData detaches what it decodes, so each item needs a copy.
    sf.write(static_server.audio_dir / "shared.flac", tone(440.0, 1.0), RATE)
    result = load_item_bytes(page, stimulus_signals, sharedUrl="/audio/shared.flac")

    assert result["ok"], result
    assert result["lengths"] == [RATE] * 3


def test_load_rejects_failed_item_bytes(page, stimulus_signals):
    result = load_item_bytes(page, stimulus_signals, failingId="s3")

    assert result["ok"] is False
    assert result["name"] == "StimulusLoadError"
    assert result["stimulusId"] == "s3"
    assert "the early request failed" in result["message"]
    assert result["progress"] == []


def test_load_rejects_item_bytes_of_text(page, stimulus_signals):
    result = load_item_bytes(page, stimulus_signals, textId="s2")

    assert result["ok"] is False
    assert result["name"] == "StimulusLoadError"
    assert result["stimulusId"] == "s2"
    assert "not to an ArrayBuffer" in result["message"]


def test_load_rejects_invalid_item_bytes(page, stimulus_signals):
    result = load_item_bytes(page, stimulus_signals, invalidId="s1")

    assert result["ok"] is False
    assert result["name"] == "TypeError"
    assert '"s1"' in result["message"]


def test_load_uses_shortest_length(page, static_server):
    write_wav(static_server.audio_dir, "long.wav", tone(440.0, 1.0))
    write_wav(
        static_server.audio_dir,
        "longer.wav",
        np.concatenate([tone(440.0, 1.0), np.zeros(7, np.float32)]),
    )
    items = [
        {"id": "a", "url": "/audio/long.wav"},
        {"id": "b", "url": "/audio/longer.wav"},
    ]
    result = load_in_page(page, items)

    assert result["ok"], result
    assert result["duration"] == 1.0
    assert result["lengthMismatch"] == {
        "shortestFrames": RATE,
        "longestFrames": RATE + 7,
        "frames": {"a": RATE, "b": RATE + 7},
    }


@pytest.mark.parametrize(
    ("name", "file_rate", "options", "context_rate"),
    [
        ("rate.wav", 96_000, {"subtype": "PCM_24"}, 96_000),
        ("rate.flac", 96_000, {"subtype": "PCM_24"}, 96_000),
        ("rate.ogg", 44_100, {"format": "OGG", "subtype": "VORBIS"}, 44_100),
        ("rate.opus", 24_000, {"format": "OGG", "subtype": "OPUS"}, 48_000),
        ("rate.mp3", 32_000, {"format": "MP3", "subtype": "MPEG_LAYER_III"}, 32_000),
    ],
)
def test_context_uses_file_sample_rate(
    page, static_server, name, file_rate, options, context_rate
):
    seconds = 1.0
    samples = 0.3 * np.sin(
        2 * np.pi * 440 * np.arange(round(seconds * file_rate)) / file_rate
    )
    sf.write(static_server.audio_dir / name, samples, file_rate, **options)
    url = f"/audio/{name}"

    sniffed = page.evaluate(
        "async (url) => window.caqe.sniffSampleRate(await (await fetch(url)).arrayBuffer())",
        url,
    )
    result = load_in_page(page, [{"id": "x", "url": url}])

    assert sniffed == context_rate
    assert result["ok"], result
    assert result["sampleRate"] == context_rate
    assert result["contextRate"] == context_rate
    # Lossy codecs add encoder delay and padding, so the length matches only roughly.
    assert result["duration"] == pytest.approx(seconds, abs=0.1)


# --- WAV decoding ---------------------------------------------------------------

# Decodes a file with decodeWav and, when it returns a buffer, with
# decodeAudioData, and compares the two sample by sample in the page.
DECODE_WAV_SCRIPT = """
async ({ url, contextRate }) => {
  const bytes = await (await fetch(url)).arrayBuffer();
  const context = new OfflineAudioContext(1, 1, contextRate);
  const decoded = window.caqe.decodeWav(context, bytes);
  if (decoded === null) return null;
  const reference = await context.decodeAudioData(bytes.slice(0));
  let differing = 0;
  for (let channel = 0; channel < reference.numberOfChannels; channel += 1) {
    const ours = decoded.getChannelData(channel);
    const theirs = reference.getChannelData(channel);
    for (let i = 0; i < theirs.length; i += 1) {
      if (!Object.is(ours[i], theirs[i])) differing += 1;
    }
  }
  return {
    channels: [decoded.numberOfChannels, reference.numberOfChannels],
    frames: [decoded.length, reference.length],
    sampleRate: decoded.sampleRate,
    differing,
  };
}
"""


def write_wav_by_hand(
    directory: Path,
    name: str,
    samples: np.ndarray,
    *,
    encoding: int,
    padding: int = 0,
    extensible: bool = False,
) -> str:
    """Write a RIFF WAVE file: fmt, a JUNK chunk of `padding` bytes, then data."""
    frames, channels = samples.shape
    bits = samples.dtype.itemsize * 8
    fmt = struct.pack(
        "<HHIIHH",
        0xFFFE if extensible else encoding,
        channels,
        RATE,
        RATE * channels * bits // 8,
        channels * bits // 8,
        bits,
    )
    if extensible:
        # cbSize, valid bits, channel mask, then the sub-format GUID, whose
        # first two bytes are the encoding.
        guid = struct.pack("<H", encoding) + bytes.fromhex(
            "000000001000800000aa00389b71"
        )
        fmt += struct.pack("<HHI", 22, bits, 0) + guid
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if padding:
        junk = bytes(padding) + bytes(padding % 2)
        chunks += b"JUNK" + struct.pack("<I", padding) + junk
    data = samples.astype(samples.dtype.newbyteorder("<")).tobytes()
    chunks += b"data" + struct.pack("<I", len(data)) + data
    header = b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE"
    (directory / name).write_bytes(header + chunks)
    return f"/audio/{name}"


def decode_wav(page, url: str, context_rate: int = RATE) -> dict | None:
    return page.evaluate(DECODE_WAV_SCRIPT, {"url": url, "contextRate": context_rate})


def every_int16() -> np.ndarray:
    """Each 16-bit value once on the left, in reverse order on the right."""
    values = np.arange(-32768, 32768, dtype=np.int16)
    return np.stack([values, values[::-1]], axis=1)


@pytest.mark.parametrize("extensible", [False, True])
def test_decode_wav_16_bit_matches_chromium(page, static_server, extensible):
    url = write_wav_by_hand(
        static_server.audio_dir,
        f"every-int16-{extensible}.wav",
        every_int16(),
        encoding=1,
        padding=10,
        extensible=extensible,
    )
    result = decode_wav(page, url)

    assert result is not None
    assert result["channels"] == [2, 2]
    assert result["frames"] == [65536, 65536]
    assert result["sampleRate"] == RATE
    assert result["differing"] == 0


def test_decode_wav_float_matches_chromium(page, static_server):
    samples = np.stack([noise(0.5, seed=2), tone(440.0, 0.5)], axis=1)
    # Two bytes of padding put the samples at an offset that is not a
    # multiple of four.
    url = write_wav_by_hand(
        static_server.audio_dir, "float.wav", samples, encoding=3, padding=2
    )
    result = decode_wav(page, url)

    assert result is not None
    assert result["frames"] == [RATE // 2, RATE // 2]
    assert result["differing"] == 0


@pytest.mark.parametrize(
    ("name", "context_rate"),
    [
        ("pcm24.wav", RATE),
        ("pcm8.wav", RATE),
        ("other-rate.wav", 44_100),
        ("truncated.wav", RATE),
        ("lossless.flac", RATE),
    ],
)
def test_decode_wav_leaves_others_to_browser(page, static_server, name, context_rate):
    samples = tone(440.0, 0.2)
    options = {
        "pcm24.wav": {"subtype": "PCM_24"},
        "pcm8.wav": {"subtype": "PCM_U8"},
        "other-rate.wav": {"subtype": "PCM_16"},
        "truncated.wav": {"subtype": "PCM_16"},
        "lossless.flac": {},
    }[name]
    path = static_server.audio_dir / name
    sf.write(path, samples, RATE, **options)
    if name == "truncated.wav":
        path.write_bytes(path.read_bytes()[:-100])

    assert decode_wav(page, f"/audio/{name}", context_rate) is None


def test_sniff_rejects_unknown_format(page):
    rate = page.evaluate(
        "() => window.caqe.sniffSampleRate(new TextEncoder().encode('plain text').buffer)"
    )
    assert rate is None


# --- events in a running AudioContext -------------------------------------------

EVENTS_SCRIPT = """
async ({ items }) => {
  const { AudioEngine } = window.caqe;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const received = [];
  const engine = new AudioEngine({ fadeMs: 5, onEvent: (event) => received.push(event.type) });
  await engine.load(items);
  await engine.context.resume();

  engine.setLoop(0, 0.6);
  engine.play();
  await sleep(300);
  engine.select("s2");
  await sleep(1000);
  engine.seek(0.3);
  await sleep(200);
  engine.stop();
  await sleep(100);
  const playedAfterStop = { s1: engine.playedSeconds("s1"), s2: engine.playedSeconds("s2") };
  await sleep(200);
  const result = {
    events: engine.events,
    received,
    playedAfterStop,
    played: {
      s1: engine.playedSeconds("s1"),
      s2: engine.playedSeconds("s2"),
      s3: engine.playedSeconds("s3"),
    },
    sampleRate: engine.sampleRate,
    fadeFrames: engine.fadeFrames,
    playing: engine.playing,
  };
  await engine.close();
  return result;
}
"""


def timeline_frame(
    frame: int, pass_start: int, offset: int, loop: tuple[int, int]
) -> int:
    """Timeline position at context `frame` of a pass that started at `offset`."""
    loop_start, loop_end = loop
    position = offset + frame - pass_start
    while position >= loop_end:
        position -= loop_end - loop_start
    return position


def test_events_and_played_seconds(page, stimulus_signals):
    result = page.evaluate(EVENTS_SCRIPT, {"items": items_for(stimulus_signals)})
    events = result["events"]
    rate = result["sampleRate"]
    fade = result["fadeFrames"]
    by_type = {
        t: [e for e in events if e["type"] == t] for t in {e["type"] for e in events}
    }

    assert result["received"] == [e["type"] for e in events]
    assert result["playing"] is False
    for event in events:
        assert event["time"] >= 0
        assert event["contextTime"] >= 0
    commands = [
        e for e in events if e["type"] in {"loop-set", "play", "switch", "seek", "stop"}
    ]
    assert [e["type"] for e in commands] == [
        "loop-set",
        "play",
        "switch",
        "seek",
        "stop",
    ]
    assert [e["time"] for e in commands] == sorted(e["time"] for e in commands)

    (play,) = by_type["play"]
    (switch,) = by_type["switch"]
    (seek,) = by_type["seek"]
    (stop,) = by_type["stop"]
    play_frame = round(play["contextTime"] * rate)
    switch_frame = round(switch["contextTime"] * rate)
    seek_frame = round(seek["contextTime"] * rate)
    stop_frame = round(stop["contextTime"] * rate)
    loop = (0, round(0.6 * rate))
    seek_offset = round(0.3 * rate)
    assert play["position"] == 0.0
    assert (switch["from"], switch["to"]) == ("s1", "s2")
    assert round(switch["position"] * rate) == timeline_frame(
        switch_frame, play_frame, 0, loop
    )
    assert seek["position"] == pytest.approx(0.3)
    assert round(stop["position"] * rate) == timeline_frame(
        stop_frame, seek_frame, seek_offset, loop
    )

    # Loop boundaries fall exactly one loop length apart, counted from the
    # play frame and again from the seek.
    loops = frames_of(events, "loop")
    before_seek = [frame for frame in loops if frame < seek_frame]
    after_seek = [frame for frame in loops if frame > seek_frame]
    assert len(before_seek) >= 1
    assert before_seek == [
        play_frame + k * loop[1] for k in range(1, len(before_seek) + 1)
    ]
    first_after_seek = seek_frame + loop[1] - seek_offset
    assert after_seek == [
        first_after_seek + k * loop[1] for k in range(len(after_seek))
    ]
    assert all(e["position"] == 0.0 for e in by_type["loop"])

    # s1 is audible until the end of its fade-out, s2 from there to the end of
    # the stop's fade-out, and s3 never.
    played = result["played"]
    assert played["s1"] == pytest.approx(
        (switch_frame + fade - play_frame) / rate, abs=1e-9
    )
    assert played["s2"] == pytest.approx((stop_frame - switch_frame) / rate, abs=1e-9)
    assert played["s3"] == 0.0
    assert result["playedAfterStop"] == {"s1": played["s1"], "s2": played["s2"]}


@pytest.mark.parametrize("gesture", ["click", "key"])
def test_resume_on_gesture(page, stimulus_signals, gesture):
    state = page.evaluate(
        """async (items) => {
          const engine = new window.caqe.AudioEngine();
          await engine.load(items);
          await engine.context.suspend();
          window.resumed = engine.resumeOnGesture(document).then(() => engine.context.state);
          window.testEngine = engine;
          return engine.context.state;
        }""",
        items_for(stimulus_signals),
    )
    page.wait_for_timeout(200)
    state_before_gesture = page.evaluate("window.testEngine.context.state")
    if gesture == "click":
        page.mouse.click(20, 20)
    else:
        page.keyboard.press("a")
    state_after_gesture = page.evaluate("window.resumed")

    assert state == "suspended"
    assert state_before_gesture == "suspended"
    assert state_after_gesture == "running"
    page.evaluate("window.testEngine.close()")


def test_commands_before_load_raise(page):
    messages = page.evaluate(
        """() => {
          const engine = new window.caqe.AudioEngine();
          const messages = [];
          for (const call of [() => engine.play(), () => engine.select("a"), () => engine.seek(1)]) {
            try { call(); } catch (error) { messages.push(error.message); }
          }
          return messages;
        }"""
    )
    assert messages == [
        "play() needs the stimuli: await engine.load() first",
        "select() needs the stimuli: await engine.load() first",
        "seek() needs the stimuli: await engine.load() first",
    ]


def test_short_loop_raises_range_error(page, stimulus_signals):
    result = page.evaluate(
        """async (items) => {
          const engine = new window.caqe.AudioEngine();
          await engine.load(items);
          try {
            engine.setLoop(1.0, 1.4);
            return { loop: engine.loop };
          } catch (error) {
            return { name: error.name, message: error.message, loop: engine.loop };
          } finally {
            await engine.close();
          }
        }""",
        items_for(stimulus_signals),
    )
    assert result["name"] == "RangeError"
    assert "0.5 s" in result["message"]
    assert result["loop"] is None


# --- timeline ---------------------------------------------------------------------

TRIAL_SECONDS = 10.0


@pytest.fixture(scope="module")
def trial_items(static_server) -> list[dict[str, str]]:
    """Four 10 s stimuli with a varying envelope, so the waveform shows shape."""
    t = np.arange(round(TRIAL_SECONDS * RATE)) / RATE
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 0.7 * t)) * np.exp(-1.2 * (t % 2.5))
    items = []
    for index in range(4):
        samples = 0.6 * envelope * np.sin(2 * np.pi * 220 * (index + 1) * t)
        write_wav(
            static_server.audio_dir, f"trial{index}.wav", samples.astype(np.float32)
        )
        items.append({"id": f"trial{index}", "url": f"/audio/trial{index}.wav"})
    return items


@pytest.fixture
def trial_page(page, static_server, trial_items):
    """The MUSHRA-like harness page with a loaded engine and its timeline."""
    page.goto(static_server.url("/pages/timeline.html"))
    page.wait_for_function("window.setUpTrial !== undefined")
    page.evaluate("(items) => window.setUpTrial(items, 'trial0')", trial_items)
    return page


class TrackGeometry:
    """Maps timeline seconds to page coordinates on the timeline bar."""

    def __init__(self, page) -> None:
        box = page.locator(".caqe-timeline__track").bounding_box()
        self.left = box["x"]
        self.width = box["width"]
        self.y = box["y"] + box["height"] / 2
        self.seconds_per_pixel = TRIAL_SECONDS / self.width

    def x(self, seconds: float) -> float:
        return self.left + self.width * seconds / TRIAL_SECONDS


def drag(page, track: TrackGeometry, from_seconds: float, to_seconds: float) -> None:
    page.mouse.move(track.x(from_seconds), track.y)
    page.mouse.down()
    page.mouse.move(track.x(to_seconds), track.y, steps=8)
    page.mouse.up()


def engine_loop(page) -> dict | None:
    return page.evaluate("window.engine.loop")


def test_timeline_drag_sets_loop(trial_page):
    track = TrackGeometry(trial_page)
    drag(trial_page, track, 2.0, 5.0)
    loop = engine_loop(trial_page)

    assert loop["start"] == pytest.approx(2.0, abs=2 * track.seconds_per_pixel)
    assert loop["end"] == pytest.approx(5.0, abs=2 * track.seconds_per_pixel)
    expect(trial_page.locator(".caqe-timeline__loop-label")).to_contain_text(
        "Loop 0:02."
    )


@pytest.mark.parametrize(
    ("from_seconds", "to_seconds", "expected"),
    [
        (3.0, 3.2, (3.0, 3.5)),  # rightwards: the end moves right
        (3.0, 2.8, (2.5, 3.0)),  # leftwards: the start moves left
        (9.75, 9.95, (9.5, 10.0)),  # at the end of the stimuli: shifted to fit
    ],
)
def test_timeline_short_drag_extends_loop(
    trial_page, from_seconds, to_seconds, expected
):
    track = TrackGeometry(trial_page)
    drag(trial_page, track, from_seconds, to_seconds)
    loop = engine_loop(trial_page)

    assert loop["end"] - loop["start"] == pytest.approx(0.5, abs=1e-4)
    assert loop["start"] == pytest.approx(expected[0], abs=2 * track.seconds_per_pixel)
    assert loop["end"] == pytest.approx(expected[1], abs=2 * track.seconds_per_pixel)


def test_timeline_click_seeks(trial_page):
    track = TrackGeometry(trial_page)
    trial_page.mouse.click(track.x(7.0), track.y)
    result = trial_page.evaluate(
        "({ position: window.engine.position, last: window.engine.events.at(-1) })"
    )

    assert result["position"] == pytest.approx(7.0, abs=2 * track.seconds_per_pixel)
    assert result["last"]["type"] == "seek"
    assert engine_loop(trial_page) is None


def test_timeline_drag_edge_moves_it(trial_page):
    trial_page.evaluate("window.engine.setLoop(2, 5)")
    track = TrackGeometry(trial_page)
    drag(trial_page, track, 5.0, 6.5)
    loop = engine_loop(trial_page)

    assert loop["start"] == 2.0
    assert loop["end"] == pytest.approx(6.5, abs=2 * track.seconds_per_pixel)


def test_timeline_keyboard_commands(trial_page):
    def press(key: str) -> dict:
        trial_page.keyboard.press(key)
        return trial_page.evaluate(
            "({ position: window.engine.position, loop: window.engine.loop,"
            " playing: window.engine.playing })"
        )

    trial_page.evaluate("window.engine.seek(4)")
    trial_page.focus(".caqe-timeline__track")

    assert press("ArrowRight")["position"] == 5.0
    assert press("[")["loop"] == {"start": 5.0, "end": 10.0}
    # Page Up jumps 5 s but stays inside the loop, room for both fades included.
    assert press("PageUp")["position"] == pytest.approx(10.0 - 2 * FADE / RATE)
    assert press("ArrowLeft")["position"] == pytest.approx(9.0 - 2 * FADE / RATE)
    assert press("]")["loop"] == {
        "start": 5.0,
        "end": pytest.approx(9.0 - 2 * FADE / RATE),
    }
    assert press("Home")["position"] == 5.0
    assert press("Escape")["loop"] is None
    assert press("Space")["playing"] is True
    assert press("Space")["playing"] is False


def test_timeline_clear_button(trial_page):
    trial_page.evaluate("window.engine.setLoop(1, 3)")
    clear = trial_page.locator(".caqe-timeline__clear")
    clear.wait_for(state="visible")
    clear.click()

    assert engine_loop(trial_page) is None
    expect(trial_page.locator(".caqe-timeline__loop")).to_be_hidden()
    expect(clear).to_be_hidden()


def test_timeline_accessible_slider(trial_page):
    track = trial_page.locator(".caqe-timeline__track")
    trial_page.evaluate("window.engine.setLoop(1, 3)")

    expect(track).to_have_attribute(
        "aria-valuetext", "1 of 10 seconds, loop from 1.0 to 3.0 seconds"
    )
    expect(track).to_have_attribute("role", "slider")
    expect(track).to_have_attribute("tabindex", "0")
    expect(track).to_have_attribute("aria-valuemax", "10.0")
    expect(trial_page.locator(".caqe-timeline__time")).to_have_text("0:01.0 / 0:10.0")


@pytest.mark.parametrize(
    ("fixed", "moved", "duration", "expected"),
    [
        (2.0, 5.0, 10.0, {"start": 2.0, "end": 5.0}),
        (5.0, 2.0, 10.0, {"start": 2.0, "end": 5.0}),
        (3.0, 3.1, 10.0, {"start": 3.0, "end": 3.5}),
        (3.0, 2.9, 10.0, {"start": 2.5, "end": 3.0}),
        (0.1, 0.0, 10.0, {"start": 0.0, "end": 0.5}),
        (9.9, 10.5, 10.0, {"start": 9.5, "end": 10.0}),
        (-1.0, 4.0, 10.0, {"start": 0.0, "end": 4.0}),
        (0.0, 0.3, 0.4, None),
    ],
)
def test_normalize_loop_region(page, fixed, moved, duration, expected):
    region = page.evaluate(
        "([fixed, moved, duration]) =>"
        " window.caqe.normalizeLoopRegion(fixed, moved, duration, 0.5)",
        [fixed, moved, duration],
    )
    if expected is None:
        assert region is None
    else:
        assert region == {key: pytest.approx(value) for key, value in expected.items()}


def test_context_falls_back_for_unsupported_rate(page, static_server):
    # Chromium accepts any rate it can decode (3000 to 768000 Hz), so the page
    # swaps in an AudioContext that rejects rates above 48 kHz, as a browser
    # with a narrower range would. decodeAudioData then resamples to 48 kHz.
    file_rate = 96_000
    samples = 0.3 * np.sin(2 * np.pi * 440 * np.arange(file_rate) / file_rate)
    sf.write(static_server.audio_dir / "high-rate.wav", samples, file_rate)
    warnings = []
    page.on(
        "console",
        lambda message: (
            warnings.append(message.text) if message.type == "warning" else None
        ),
    )
    page.evaluate(
        """() => {
          const NativeAudioContext = window.AudioContext;
          window.AudioContext = class extends NativeAudioContext {
            constructor(options = {}) {
              if (options.sampleRate > 48000) {
                throw new DOMException("sampleRate out of range", "NotSupportedError");
              }
              super({ ...options, sampleRate: options.sampleRate ?? 48000 });
            }
          };
        }"""
    )
    result = load_in_page(page, [{"id": "high", "url": "/audio/high-rate.wav"}])

    assert result["ok"], result
    assert result["sampleRate"] == 48_000
    assert result["lengths"] == [48_000]
    assert any("rejected sampleRate 96000" in text for text in warnings)
