// Audio engine shared by every CAQE trial page (MUSHRA, pairwise comparison
// and test types from plugins).
//
// All stimuli of a trial play on one timeline. Each pass over the timeline
// starts one AudioBufferSourceNode per stimulus at the same context frame and
// buffer offset, so a switch only changes gains and never moves the position:
//
//   source (one per stimulus and pass) -> selection gain (one per stimulus)
//     -> transport gain -> destination
//
// The selection gains switch between stimuli. The transport gain fades in and
// out at play, stop, seek and loop boundaries. Every start, stop and fade is
// computed in integer frames of the context's sample rate, so each one lands
// on a sample frame.
//
// A fade spans F = round(fadeMs * sampleRate / 1000) frames (at least 2, or 0
// when fadeMs is 0). A fade-in has the raised-cosine gain
// 0.5 * (1 - cos(pi * n / (F - 1))) for n = 0 ... F - 1, so it starts at
// exactly 0 and ends at exactly 1, and a fade-out is its mirror image. A
// switch from A to B while playing fades A out over the frames [s, s + F) and
// then fades B in over [s + F, s + 2F): the two fades never overlap. A loop
// boundary at frame b fades out over [b - F, b) and the next pass, which
// starts at the loop start, fades in over [b, b + F).

import { decodeWav } from "./wav.js";

const MIN_LOOP_SECONDS = 0.5;
const MAX_FADE_MS = 100;
// A real-time context renders ahead of currentTime, so commands take effect
// this far in the future, on a frame that has not been rendered yet.
const REALTIME_LEAD_SECONDS = 0.03;
// Loop passes are scheduled this far ahead of currentTime. Browsers throttle
// the timers of background tabs to about one run per second.
const REALTIME_HORIZON_SECONDS = 2;
const REFRESH_INTERVAL_MS = 100;
// Sources count as started late when the context is this close to their start
// frame after start() returned: two render quanta of 128 frames.
const LATE_START_MARGIN_FRAMES = 256;
const MAX_START_ATTEMPTS = 3;
const GESTURE_EVENTS = ["pointerdown", "keydown", "touchend"];
const LOG_PREFIX = "[caqe audio-engine]";

/**
 * Create a raised-cosine fade of `frames` gain values that starts at exactly
 * 0 and ends at exactly 1 ("in"), or the reverse ("out").
 *
 * @param {number} frames - length in sample frames, an integer >= 2
 * @param {"in" | "out"} direction
 * @returns {Float32Array}
 */
export function raisedCosineFade(frames, direction) {
  if (!Number.isInteger(frames) || frames < 2) {
    throw new RangeError(`A fade needs an integer length of at least 2 frames, got ${frames}`);
  }
  if (direction !== "in" && direction !== "out") {
    throw new RangeError(`Fade direction must be "in" or "out", got ${JSON.stringify(direction)}`);
  }
  const curve = new Float32Array(frames);
  for (let n = 0; n < frames; n += 1) {
    const rising = 0.5 * (1 - Math.cos((Math.PI * n) / (frames - 1)));
    curve[n] = direction === "in" ? rising : 1 - rising;
  }
  return curve;
}

/**
 * Read the sample rate from the header of a WAV (RIFF, RF64), FLAC, Ogg
 * (Vorbis, Opus, FLAC) or MP3 file.
 *
 * Returns the rate that decodeAudioData produces for the file without
 * resampling (48000 for Opus), or null for a format it does not recognise.
 *
 * @param {ArrayBuffer} bytes
 * @returns {number | null}
 */
export function sniffSampleRate(bytes) {
  const view = new DataView(bytes);
  const ascii = (offset, length) => {
    if (offset < 0 || offset + length > view.byteLength) return "";
    let text = "";
    for (let i = 0; i < length; i += 1) text += String.fromCharCode(view.getUint8(offset + i));
    return text;
  };
  const fits = (offset, length) => offset >= 0 && offset + length <= view.byteLength;

  const riff = ascii(0, 4);
  if ((riff === "RIFF" || riff === "RF64" || riff === "BW64") && ascii(8, 4) === "WAVE") {
    let offset = 12;
    while (fits(offset, 8)) {
      const size = view.getUint32(offset + 4, true);
      if (ascii(offset, 4) === "fmt " && fits(offset + 8, 8)) {
        return view.getUint32(offset + 12, true) || null;
      }
      offset += 8 + size + (size % 2);
    }
    return null;
  }

  const flacStreamInfoRate = (offset) => {
    // STREAMINFO: 2 + 2 bytes block sizes, 3 + 3 bytes frame sizes, then the
    // sample rate in the next 20 bits.
    if (!fits(offset, 13)) return null;
    const rate =
      (view.getUint8(offset + 10) << 12) |
      (view.getUint8(offset + 11) << 4) |
      (view.getUint8(offset + 12) >> 4);
    return rate || null;
  };

  if (ascii(0, 4) === "OggS" && fits(0, 27)) {
    const packet = 27 + view.getUint8(26);
    if (ascii(packet, 7) === "\x01vorbis" && fits(packet, 16)) {
      return view.getUint32(packet + 12, true) || null;
    }
    if (ascii(packet, 8) === "OpusHead") return 48000;
    if (ascii(packet, 5) === "\x7fFLAC" && ascii(packet + 9, 4) === "fLaC") {
      return flacStreamInfoRate(packet + 17);
    }
    return null;
  }

  let start = 0;
  if (ascii(0, 3) === "ID3" && fits(0, 10)) {
    const size =
      ((view.getUint8(6) & 0x7f) << 21) |
      ((view.getUint8(7) & 0x7f) << 14) |
      ((view.getUint8(8) & 0x7f) << 7) |
      (view.getUint8(9) & 0x7f);
    const hasFooter = (view.getUint8(5) & 0x10) !== 0;
    start = 10 + size + (hasFooter ? 10 : 0);
  }
  if (ascii(start, 4) === "fLaC") {
    const isStreamInfo = fits(start + 4, 1) && (view.getUint8(start + 4) & 0x7f) === 0;
    return isStreamInfo ? flacStreamInfoRate(start + 8) : null;
  }
  return mpegFrameRate(view, start);
}

const MPEG1_RATES = [44100, 48000, 32000];

function mpegFrameRate(view, start) {
  // Scan the first 4 KiB after any ID3 tag for an MPEG audio frame header.
  const stop = Math.min(view.byteLength - 4, start + 4096);
  for (let offset = start; offset <= stop; offset += 1) {
    if (view.getUint8(offset) !== 0xff) continue;
    const second = view.getUint8(offset + 1);
    if ((second & 0xe0) !== 0xe0) continue;
    const version = (second >> 3) & 0x03; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    const layer = (second >> 1) & 0x03;
    const third = view.getUint8(offset + 2);
    const bitrateIndex = third >> 4;
    const rateIndex = (third >> 2) & 0x03;
    if (version === 1 || layer === 0 || bitrateIndex === 15 || rateIndex === 3) continue;
    // MPEG-2 halves the MPEG-1 rates and MPEG-2.5 quarters them.
    const divisors = { 3: 1, 2: 2, 0: 4 };
    return MPEG1_RATES[rateIndex] / divisors[version];
  }
  return null;
}

/** Error from AudioEngine.load() that names the stimulus that failed. */
export class StimulusLoadError extends Error {
  /**
   * @param {string} stimulusId
   * @param {string} reason
   * @param {unknown} [cause]
   */
  constructor(stimulusId, reason, cause) {
    super(`Failed to load stimulus ${JSON.stringify(stimulusId)}: ${reason}`, { cause });
    this.name = "StimulusLoadError";
    this.stimulusId = stimulusId;
  }
}

// Chromium 156 accepts sampleRate from 3000 to 768000 Hz. Where a browser
// rejects the file's rate, the context runs at the device rate instead.
function createAudioContext(sampleRate) {
  const AudioContextClass = globalThis.AudioContext ?? globalThis.webkitAudioContext;
  if (!AudioContextClass) {
    throw new Error(
      "This browser has no Web Audio API (AudioContext); use a current Chromium, Firefox or Safari",
    );
  }
  if (sampleRate) {
    try {
      return new AudioContextClass({ latencyHint: "interactive", sampleRate });
    } catch (error) {
      console.warn(
        LOG_PREFIX,
        `AudioContext rejected sampleRate ${sampleRate} (${error.message}); using the ` +
          "device rate, so decodeAudioData resamples the stimuli",
      );
    }
  }
  return new AudioContextClass({ latencyHint: "interactive" });
}

function validateItems(items) {
  if (!Array.isArray(items) || items.length === 0) {
    throw new TypeError(
      `load() expects a non-empty array of {id, url} objects, got ${JSON.stringify(items)}`,
    );
  }
  const seen = new Set();
  items.forEach((item, index) => {
    if (!item || typeof item.id !== "string" || item.id === "") {
      throw new TypeError(`Stimulus ${index} has no string id; pass {id: "s1", url: "/a/xyz"}`);
    }
    if (typeof item.url !== "string" || item.url === "") {
      throw new TypeError(`Stimulus ${JSON.stringify(item.id)} has no url`);
    }
    if (seen.has(item.id)) {
      throw new TypeError(`Stimulus id ${JSON.stringify(item.id)} appears twice; ids must be unique`);
    }
    const { bytes } = item;
    if (bytes != null && !(bytes instanceof ArrayBuffer) && typeof bytes.then !== "function") {
      throw new TypeError(
        `Stimulus ${JSON.stringify(item.id)} has bytes that are neither an ArrayBuffer ` +
          "nor a promise of one",
      );
    }
    seen.add(item.id);
  });
  return items.map(({ id, url, bytes }) => ({ id, url, bytes: bytes ?? null }));
}

function requireFiniteNumber(name, value) {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new TypeError(`${name} must be a finite number of seconds, got ${value}`);
  }
}

/**
 * Plays the stimuli of one trial on a shared timeline, with sample-synchronous
 * switching, a loop region and a log of the listener's actions.
 *
 * Every command is scheduled on a sample frame. On an OfflineAudioContext the
 * engine schedules without lead time. Issue commands there before
 * startRendering() or while the context is suspended (ctx.suspend(t)), and
 * each takes effect at the suspended frame.
 */
export class AudioEngine {
  #fadeMs;
  #onEvent;
  #listeners = new Set();
  #createdAt = performance.now();
  #closed = false;

  #context = null;
  #ownsContext = false;
  #offline = false;
  #sampleRate = 0;
  #fadeFrames = 0;
  #leadFrames = 0;
  #fadeInCurve = null;
  #fadeOutCurve = null;

  #loading = false;
  #ready = false;
  #ids = [];
  #buffers = new Map();
  #selectionGains = new Map();
  #transportGain = null;
  #durationFrames = 0;
  #lengthMismatch = null;

  #activeId = null;
  #playing = false;
  #loop = null; // {startFrame, endFrame}
  #cueFrame = 0; // where play() starts, and the position while stopped
  // Scheduled passes over the timeline in start order:
  // {startFrame, offsetFrame, endFrame, endKind: "loop" | "end" | "cut", sources}.
  #passes = [];
  // Transport gain fades in start order, as half-open frame intervals {start, end}.
  #transportWindows = [];
  #selectionFreeFrame = 0; // frame after the last scheduled selection fade
  // {frame, id}: `id` is the audible stimulus from `frame` until the next entry.
  #selectionHistory = [];
  // {start, end}: frames in which the transport is on; end is null while open-ended.
  #playIntervals = [];
  // Events at future frames (loop boundaries, the end of the stimuli): {frame, type, ...}.
  #pending = [];
  #events = [];
  #timer = null;
  #removeGestureListeners = null;

  /**
   * @param {object} [options]
   * @param {number} [options.fadeMs=5] - length of each raised-cosine fade, 0 to 100 ms
   * @param {BaseAudioContext | null} [options.context] - AudioContext or
   *   OfflineAudioContext to play through. Without one, load() creates an
   *   AudioContext at the sample rate of the first file that arrives, and
   *   close() closes it.
   * @param {((event: object) => void) | null} [options.onEvent] - called with each
   *   recorded event
   */
  constructor({ fadeMs = 5, context = null, onEvent = null } = {}) {
    if (typeof fadeMs !== "number" || !(fadeMs >= 0 && fadeMs <= MAX_FADE_MS)) {
      throw new RangeError(`fadeMs must be a number from 0 to ${MAX_FADE_MS}, got ${fadeMs}`);
    }
    if (onEvent !== null && typeof onEvent !== "function") {
      throw new TypeError(`onEvent must be a function or null, got ${typeof onEvent}`);
    }
    this.#fadeMs = fadeMs;
    this.#onEvent = onEvent;
    if (context) this.#adoptContext(context, false);
  }

  /** True after load() has decoded every stimulus. */
  get ready() {
    return this.#ready;
  }

  /** The AudioContext or OfflineAudioContext in use, or null before load(). */
  get context() {
    return this.#context;
  }

  /** Sample rate of the context in Hz, or 0 before load() creates one. */
  get sampleRate() {
    return this.#sampleRate;
  }

  /** Length of each fade in sample frames (0 when fadeMs is 0). */
  get fadeFrames() {
    return this.#fadeFrames;
  }

  /** Stimulus ids in load order. */
  get ids() {
    return [...this.#ids];
  }

  /** Length of the shared timeline in seconds: the shortest stimulus. */
  get duration() {
    return this.#sampleRate ? this.#durationFrames / this.#sampleRate : 0;
  }

  /**
   * Lengths in frames when the stimuli differ in length, else null. The
   * timeline then ends with the shortest stimulus.
   */
  get lengthMismatch() {
    return this.#lengthMismatch && { ...this.#lengthMismatch };
  }

  /** Id of the stimulus that is (or becomes) audible. */
  get activeId() {
    return this.#activeId;
  }

  /** True from play() until stop() or the end of the stimuli. */
  get playing() {
    this.#refresh();
    return this.#playing;
  }

  /** Loop region in seconds, or null. */
  get loop() {
    if (!this.#loop) return null;
    return {
      start: this.#loop.startFrame / this.#sampleRate,
      end: this.#loop.endFrame / this.#sampleRate,
    };
  }

  /**
   * Position on the shared timeline in seconds. While stopped, this is where
   * play() starts.
   */
  get position() {
    if (!this.#ready) return 0;
    this.#refresh();
    if (!this.#playing) return this.#cueFrame / this.#sampleRate;
    return this.#positionAt(this.#nowFrame()) / this.#sampleRate;
  }

  /**
   * Recorded events, oldest first: {type, time, position, contextTime, ...}.
   * `time` is in ms since the engine was created (performance.now). For
   * "loop" events and the "stop" at the end of the stimuli it is estimated
   * from the context clock. `contextTime` is the context time in seconds at
   * which the change becomes audible, and `position` is the timeline position
   * in seconds at that time.
   */
  get events() {
    this.#refresh();
    return this.#events.map((event) => ({ ...event }));
  }

  /** Return the decoded AudioBuffer of a stimulus, for example to draw a waveform. */
  getBuffer(id) {
    this.#requireReady("getBuffer");
    this.#requireKnownId(id);
    return this.#buffers.get(id);
  }

  /**
   * Call `listener` with every event recorded from now on.
   *
   * @param {(event: object) => void} listener
   * @returns {() => void} a function that removes the listener
   */
  addListener(listener) {
    if (typeof listener !== "function") {
      throw new TypeError(`listener must be a function, got ${typeof listener}`);
    }
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Fetch and decode every stimulus in parallel.
   *
   * Resolves when all of them are decoded. Rejects with a StimulusLoadError
   * that names the stimulus id on the first failed request, HTTP error or
   * decoding error, and aborts the remaining requests. The first stimulus
   * becomes the active one. Loading again replaces the stimuli and stops
   * playback.
   *
   * An item with `bytes` (the file as an ArrayBuffer, or a promise of one
   * that an earlier script started to fetch, for example while the page's
   * modules loaded) is not fetched again. The engine cannot abort that
   * request when another stimulus fails.
   *
   * 16-bit PCM and 32-bit float WAV files at the context's sample rate are
   * decoded by decodeWav() in wav.js, and every other file by
   * decodeAudioData.
   *
   * @param {{id: string, url: string, bytes?: ArrayBuffer | Promise<ArrayBuffer>}[]} items
   * @param {((loaded: number, total: number) => void) | null} [onProgress]
   */
  async load(items, onProgress = null) {
    this.#requireOpen();
    if (this.#loading) {
      throw new Error("load() is already running; wait for it to settle before loading again");
    }
    const list = validateItems(items);
    this.#loading = true;
    try {
      this.#resetGraph();
      const buffers = await this.#fetchAndDecode(list, onProgress);
      this.#requireOpen();
      this.#buildGraph(list, buffers);
    } finally {
      this.#loading = false;
    }
  }

  /**
   * Make `id` the audible stimulus. While playing, the current stimulus fades
   * out and then `id` fades in at the same timeline position. A switch that
   * arrives during another switch starts when that one has finished.
   */
  select(id) {
    this.#requireReady("select");
    this.#requireKnownId(id);
    this.#refresh();
    if (id === this.#activeId) return;

    const from = this.#activeId;
    const fromGain = this.#selectionGains.get(from).gain;
    const toGain = this.#selectionGains.get(id).gain;
    const earliest = Math.max(this.#nowFrame() + this.#leadFrames, this.#selectionFreeFrame);
    let frame;
    if (this.#playing) {
      frame = earliest;
      this.#fade(fromGain, frame, "out");
      this.#fade(toGain, frame + this.#fadeFrames, "in");
      this.#selectionFreeFrame = frame + 2 * this.#fadeFrames;
      this.#selectionHistory.push({ frame: frame + this.#fadeFrames, id });
    } else {
      // Wait for a stop's fade-out to finish so that the step stays inaudible.
      frame = Math.max(earliest, this.#transportQuietFrame());
      fromGain.setValueAtTime(0, frame / this.#sampleRate);
      toGain.setValueAtTime(1, frame / this.#sampleRate);
      this.#selectionFreeFrame = frame;
      this.#selectionHistory.push({ frame, id });
    }
    this.#activeId = id;
    this.#record({
      type: "switch",
      from,
      to: id,
      position: (this.#playing ? this.#positionAt(frame) : this.#cueFrame) / this.#sampleRate,
      contextTime: frame / this.#sampleRate,
    });
  }

  /** Start playback with a fade-in at the loop start, or at 0 without a loop. */
  play() {
    this.#requireReady("play");
    this.#refresh();
    if (this.#playing) return;

    const interval = {
      start: Math.max(this.#nowFrame() + this.#leadFrames, this.#transportQuietFrame()),
      end: null,
    };
    this.#playing = true;
    this.#playIntervals.push(interval);
    const pass = this.#addPass(interval.start, this.#cueFrame, true);
    interval.start = pass.startFrame;
    this.#schedulePasses();
    this.#record({
      type: "play",
      position: this.#cueFrame / this.#sampleRate,
      contextTime: pass.startFrame / this.#sampleRate,
    });
    this.#startTimer();
  }

  /** Fade out, then stop. The next play() starts at the loop start (or 0). */
  stop() {
    this.#requireReady("stop");
    this.#refresh();
    if (!this.#playing) return;

    const { cutFrame, silentFrame, position } = this.#cutPlayback(this.#fadeFrames, true);
    this.#playing = false;
    this.#playIntervals.at(-1).end = silentFrame;
    this.#cueFrame = this.#regionStart();
    this.#record({
      type: "stop",
      position: position / this.#sampleRate,
      contextTime: cutFrame / this.#sampleRate,
    });
    this.#stopTimerWhenIdle();
  }

  /** play() when stopped, stop() when playing. Returns the new playing state. */
  togglePlay() {
    if (this.playing) this.stop();
    else this.play();
    return this.#playing;
  }

  /**
   * Jump to `seconds` on the timeline: fade out, then fade in at the new
   * position. A position outside the loop region is clamped into it. While
   * stopped, this sets where the next play() starts.
   */
  seek(seconds) {
    this.#requireReady("seek");
    requireFiniteNumber("seek position", seconds);
    this.#refresh();

    const target = this.#clampToRegion(Math.round(seconds * this.#sampleRate));
    if (!this.#playing) {
      this.#cueFrame = target;
      this.#record({
        type: "seek",
        position: target / this.#sampleRate,
        contextTime: this.#nowFrame() / this.#sampleRate,
      });
      return;
    }
    const start = this.#jumpTo(target);
    this.#record({
      type: "seek",
      position: target / this.#sampleRate,
      contextTime: start / this.#sampleRate,
    });
  }

  /**
   * Loop playback between `startSeconds` and `endSeconds`. At the loop end the
   * output fades out and continues at the loop start with a fade-in. While
   * playing inside the new region, playback continues, and otherwise it jumps
   * to the loop start. While stopped, the next play() starts at the loop start.
   *
   * @throws {RangeError} when the region is shorter than 0.5 s or outside the stimuli
   */
  setLoop(startSeconds, endSeconds) {
    this.#requireReady("setLoop");
    requireFiniteNumber("Loop start", startSeconds);
    requireFiniteNumber("Loop end", endSeconds);
    const duration = this.duration;
    if (startSeconds < 0 || endSeconds > duration + 0.5 / this.#sampleRate) {
      throw new RangeError(
        `Loop region ${startSeconds}-${endSeconds} s must lie within the stimuli, 0-${duration} s`,
      );
    }
    if (!(endSeconds - startSeconds >= MIN_LOOP_SECONDS)) {
      throw new RangeError(
        `Loop region ${startSeconds}-${endSeconds} s is shorter than the minimum of ` +
          `${MIN_LOOP_SECONDS} s; move its end to ${startSeconds + MIN_LOOP_SECONDS} s or later`,
      );
    }
    this.#refresh();

    this.#loop = {
      startFrame: Math.round(startSeconds * this.#sampleRate),
      endFrame: Math.min(Math.round(endSeconds * this.#sampleRate), this.#durationFrames),
    };
    const { frame, position } = this.#applyRegion();
    this.#record({
      type: "loop-set",
      start: this.#loop.startFrame / this.#sampleRate,
      end: this.#loop.endFrame / this.#sampleRate,
      position: position / this.#sampleRate,
      contextTime: frame / this.#sampleRate,
    });
  }

  /**
   * Remove the loop region, recorded as a "loop-set" event with start and end
   * null. Playback continues to the end of the stimuli.
   */
  clearLoop() {
    this.#requireReady("clearLoop");
    this.#refresh();
    if (!this.#loop) return;

    this.#loop = null;
    const { frame, position } = this.#applyRegion();
    this.#record({
      type: "loop-set",
      start: null,
      end: null,
      position: position / this.#sampleRate,
      contextTime: frame / this.#sampleRate,
    });
  }

  /**
   * Seconds during which stimulus `id` was the audible stimulus while playing,
   * up to the current context time. Time in a switch's fade-out counts for the
   * old stimulus and time from the start of the fade-in for the new one.
   */
  playedSeconds(id) {
    this.#requireReady("playedSeconds");
    this.#requireKnownId(id);
    const now = this.#nowFrame();
    let frames = 0;
    this.#selectionHistory.forEach((entry, index) => {
      if (entry.id !== id) return;
      const next = this.#selectionHistory[index + 1];
      const selectedUntil = next ? next.frame : Infinity;
      for (const interval of this.#playIntervals) {
        const start = Math.max(entry.frame, interval.start);
        const end = Math.min(selectedUntil, interval.end ?? Infinity, now);
        if (end > start) frames += end - start;
      }
    });
    return frames / this.#sampleRate;
  }

  /**
   * Resume the context on the first pointerdown, keydown or touchend on
   * `target`, as the autoplay rules of Chromium, Firefox and Safari require.
   * Resolves once the context is running.
   *
   * @param {EventTarget} [target=document]
   * @returns {Promise<void>}
   */
  resumeOnGesture(target = globalThis.document) {
    this.#requireOpen();
    if (!target || typeof target.addEventListener !== "function") {
      throw new TypeError("resumeOnGesture() needs an EventTarget such as document");
    }
    if (this.#context && this.#context.state === "running") return Promise.resolve();
    this.#removeGestureListeners?.();

    return new Promise((resolve) => {
      const remove = () => {
        for (const type of GESTURE_EVENTS) target.removeEventListener(type, onGesture, true);
        if (this.#removeGestureListeners === remove) this.#removeGestureListeners = null;
      };
      const onGesture = () => {
        const context = this.#context;
        // Before load() there is no context yet. A context created after a
        // gesture usually starts running, so keep listening until one does.
        if (!context) return;
        if (context.state === "running") {
          remove();
          resolve();
          return;
        }
        // resume() must be called inside the gesture's event handler.
        context.resume().then(
          () => {
            if (context.state !== "running") return;
            remove();
            resolve();
          },
          (error) => console.warn(LOG_PREFIX, "AudioContext.resume() failed:", error),
        );
      };
      for (const type of GESTURE_EVENTS) {
        target.addEventListener(type, onGesture, { capture: true, passive: true });
      }
      this.#removeGestureListeners = remove;
    });
  }

  /**
   * Stop playback at once, release the audio graph and close the context if
   * the engine created it. The engine cannot be used afterwards.
   */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#removeGestureListeners?.();
    this.#resetGraph();
    const context = this.#context;
    if (context && this.#ownsContext && context.state !== "closed") await context.close();
  }

  // --- loading --------------------------------------------------------------

  #adoptContext(context, owned) {
    this.#context = context;
    this.#ownsContext = owned;
    this.#offline =
      typeof OfflineAudioContext !== "undefined" && context instanceof OfflineAudioContext;
    this.#sampleRate = context.sampleRate;
    this.#fadeFrames =
      this.#fadeMs === 0 ? 0 : Math.max(2, Math.round((this.#fadeMs * this.#sampleRate) / 1000));
    this.#leadFrames = this.#offline ? 0 : Math.ceil(REALTIME_LEAD_SECONDS * this.#sampleRate);
    if (this.#fadeFrames > 0) {
      this.#fadeInCurve = raisedCosineFade(this.#fadeFrames, "in");
      this.#fadeOutCurve = raisedCosineFade(this.#fadeFrames, "out");
    }
  }

  async #fetchAndDecode(list, onProgress) {
    const controller = new AbortController();
    let loaded = 0;
    // Stimuli from item bytes cannot be aborted and may still arrive after
    // another one failed. Progress stops at the failure.
    let failed = false;

    const fetchBytes = async (id, url) => {
      try {
        const response = await fetch(url, { signal: controller.signal });
        if (!response.ok) {
          throw new StimulusLoadError(id, `the server responded with HTTP ${response.status}`);
        }
        return await response.arrayBuffer();
      } catch (error) {
        if (error instanceof StimulusLoadError) throw error;
        throw new StimulusLoadError(id, `the request failed (${error.message})`, error);
      }
    };

    const awaitItemBytes = async (id, itemBytes) => {
      let bytes;
      try {
        bytes = await itemBytes;
      } catch (error) {
        const reason = `the request failed (${error?.message ?? error})`;
        throw new StimulusLoadError(id, reason, error);
      }
      if (!(bytes instanceof ArrayBuffer)) {
        throw new StimulusLoadError(id, `its bytes resolved to ${bytes}, not to an ArrayBuffer`);
      }
      return bytes;
    };

    const loadOne = async ({ id, url, bytes }) => {
      const data = bytes ? await awaitItemBytes(id, bytes) : await fetchBytes(id, url);
      this.#requireOpen();
      if (!this.#context) this.#adoptContext(createAudioContext(sniffSampleRate(data)), true);
      // decodeAudioData detaches the ArrayBuffer that it decodes, and the
      // bytes of two items may be one ArrayBuffer, so those get a copy.
      const buffer = await this.#decode(id, data, Boolean(bytes));
      if (failed) return buffer;
      loaded += 1;
      if (onProgress) onProgress(loaded, list.length);
      return buffer;
    };

    try {
      return await Promise.all(list.map(loadOne));
    } catch (error) {
      failed = true;
      controller.abort();
      throw error;
    }
  }

  async #decode(id, bytes, copyForDecodeAudioData) {
    const decoded = decodeWav(this.#context, bytes);
    if (decoded) return decoded;
    try {
      return await this.#context.decodeAudioData(
        copyForDecodeAudioData ? bytes.slice(0) : bytes,
      );
    } catch (error) {
      throw new StimulusLoadError(
        id,
        `decodeAudioData failed (${error?.message ?? error}); serve a format that ` +
          "browsers decode, such as WAV or FLAC",
        error,
      );
    }
  }

  #buildGraph(list, buffers) {
    const context = this.#context;
    const time = this.#nowFrame() / this.#sampleRate;
    const lengths = buffers.map((buffer) => buffer.length);
    const shortest = Math.min(...lengths);
    const longest = Math.max(...lengths);
    const minimumFrames = Math.max(4 * this.#fadeFrames, 1);
    if (shortest < minimumFrames) {
      const id = list[lengths.indexOf(shortest)].id;
      throw new StimulusLoadError(
        id,
        `it has only ${shortest} frames, and the fades need at least ${minimumFrames}`,
      );
    }
    this.#lengthMismatch = null;
    if (shortest !== longest) {
      this.#lengthMismatch = {
        shortestFrames: shortest,
        longestFrames: longest,
        frames: Object.fromEntries(list.map(({ id }, index) => [id, lengths[index]])),
      };
      console.warn(
        LOG_PREFIX,
        `Stimuli differ in length (${shortest} to ${longest} frames); the timeline ` +
          `ends after the shortest, ${shortest} frames`,
      );
    }

    this.#transportGain = new GainNode(context, { gain: 0 });
    this.#transportGain.gain.setValueAtTime(0, time);
    this.#transportGain.connect(context.destination);
    list.forEach(({ id }, index) => {
      const isActive = index === 0;
      const gain = new GainNode(context, { gain: isActive ? 1 : 0 });
      gain.gain.setValueAtTime(isActive ? 1 : 0, time);
      gain.connect(this.#transportGain);
      this.#selectionGains.set(id, gain);
      this.#buffers.set(id, buffers[index]);
    });
    this.#ids = list.map(({ id }) => id);
    this.#durationFrames = shortest;
    this.#activeId = this.#ids[0];
    this.#selectionHistory = [{ frame: 0, id: this.#activeId }];
    this.#selectionFreeFrame = this.#nowFrame();
    this.#ready = true;
  }

  #resetGraph() {
    this.#stopTimer();
    for (const pass of this.#passes) this.#cancelPass(pass);
    for (const gain of this.#selectionGains.values()) gain.disconnect();
    this.#transportGain?.disconnect();
    this.#passes = [];
    this.#transportWindows = [];
    this.#pending = [];
    this.#playIntervals = [];
    this.#selectionHistory = [];
    this.#selectionGains = new Map();
    this.#buffers = new Map();
    this.#transportGain = null;
    this.#ids = [];
    this.#durationFrames = 0;
    this.#lengthMismatch = null;
    this.#activeId = null;
    this.#playing = false;
    this.#loop = null;
    this.#cueFrame = 0;
    this.#ready = false;
  }

  // --- scheduling -----------------------------------------------------------

  #nowFrame() {
    return this.#context ? Math.round(this.#context.currentTime * this.#sampleRate) : 0;
  }

  #regionStart() {
    return this.#loop ? this.#loop.startFrame : 0;
  }

  #regionEnd() {
    return this.#loop ? this.#loop.endFrame : this.#durationFrames;
  }

  #clampToRegion(frame) {
    // A pass needs room for its fade-in and its fade-out.
    const last = this.#regionEnd() - Math.max(2 * this.#fadeFrames, 1);
    return Math.min(Math.max(frame, this.#regionStart()), last);
  }

  #fade(param, frame, direction) {
    const time = frame / this.#sampleRate;
    if (this.#fadeFrames === 0) {
      param.setValueAtTime(direction === "in" ? 1 : 0, time);
      return;
    }
    const curve = direction === "in" ? this.#fadeInCurve : this.#fadeOutCurve;
    param.setValueCurveAtTime(curve, time, (this.#fadeFrames - 1) / this.#sampleRate);
  }

  #transportFadeIn(frame) {
    this.#fade(this.#transportGain.gain, frame, "in");
    if (this.#fadeFrames > 0) {
      this.#transportWindows.push({ start: frame, end: frame + this.#fadeFrames });
    }
  }

  #transportFadeOut(frame) {
    this.#fade(this.#transportGain.gain, frame, "out");
    if (this.#fadeFrames > 0) {
      this.#transportWindows.push({ start: frame, end: frame + this.#fadeFrames });
    }
  }

  #transportQuietFrame() {
    const last = this.#transportWindows.at(-1);
    return last ? last.end : 0;
  }

  // Earliest frame at which a transport change of `length` frames can start
  // without overlapping a scheduled fade.
  #earliestTransportFrame(length) {
    let frame = this.#nowFrame() + this.#leadFrames;
    for (const window of this.#transportWindows) {
      if (frame < window.end && frame + length > window.start) frame = window.end;
    }
    return frame;
  }

  #passAt(frame) {
    return this.#passes.find((pass) => pass.startFrame <= frame && frame < pass.endFrame);
  }

  #positionAt(frame) {
    const pass = this.#passAt(frame);
    if (pass) return pass.offsetFrame + (frame - pass.startFrame);
    const first = this.#passes[0];
    if (first && frame < first.startFrame) return first.offsetFrame;
    const last = this.#passes.at(-1);
    if (last) return last.offsetFrame + (last.endFrame - last.startFrame);
    return this.#cueFrame;
  }

  // Schedule one pass that plays the timeline from `offsetFrame` to the end of
  // the loop region (or of the stimuli), with the fade-out before its end and,
  // if `fadeIn` is true, a fade-in at its start. The pass starts at
  // `startFrame` or, after a stall of the main thread, later.
  #addPass(startFrame, offsetFrame, fadeIn) {
    let start = startFrame;
    let sources = this.#startSources(start, offsetFrame);
    for (let attempt = 1; attempt < MAX_START_ATTEMPTS && this.#startedLate(start); attempt += 1) {
      // Some sources may have started a render quantum after the others, so
      // start all of them again, later.
      // NOTE: no test stalls the main thread, so this path has not been run.
      for (const source of sources) source.disconnect();
      console.warn(LOG_PREFIX, `Sources for frame ${start} were started late; starting them again`);
      start = this.#nowFrame() + this.#leadFrames;
      sources = this.#startSources(start, offsetFrame);
    }
    if (this.#startedLate(start)) {
      console.error(LOG_PREFIX, `Sources for frame ${start} were started late; they may be out of sync`);
    }

    const previous = this.#passes.at(-1);
    if (previous && start > previous.endFrame) {
      // The silent gap counts as a fade window, so that no command lands in it.
      this.#transportWindows.push({ start: previous.endFrame, end: start });
    }
    if (fadeIn) this.#transportFadeIn(start);
    sources[0].onended = () => this.#refresh();
    const endFrame = start + (this.#regionEnd() - offsetFrame);
    const pass = { startFrame: start, offsetFrame, endFrame, endKind: "end", sources };
    this.#passes.push(pass);
    this.#scheduleEnding(pass);
    return pass;
  }

  #startSources(startFrame, offsetFrame) {
    const rate = this.#sampleRate;
    const endFrame = startFrame + (this.#regionEnd() - offsetFrame);
    return this.#ids.map((id) => {
      const source = new AudioBufferSourceNode(this.#context, { buffer: this.#buffers.get(id) });
      source.connect(this.#selectionGains.get(id));
      source.start(startFrame / rate, offsetFrame / rate);
      source.stop(endFrame / rate);
      return source;
    });
  }

  // True when the context may already have rendered `startFrame`. An
  // OfflineAudioContext is driven through suspend(), so it never is.
  #startedLate(startFrame) {
    return !this.#offline && this.#nowFrame() + LATE_START_MARGIN_FRAMES > startFrame;
  }

  // Schedule what happens at the end of `pass`: a loop boundary or the end of
  // the stimuli.
  #scheduleEnding(pass) {
    if (this.#loop) {
      pass.endKind = "loop";
      if (this.#fadeFrames > 0) this.#transportFadeOut(pass.endFrame - this.#fadeFrames);
      this.#pending.push({
        frame: pass.endFrame,
        type: "loop",
        start: this.#loop.startFrame,
        end: this.#loop.endFrame,
      });
    } else {
      pass.endKind = "end";
      this.#transportFadeOut(pass.endFrame - this.#fadeFrames);
      this.#pending.push({ frame: pass.endFrame, type: "end" });
    }
    this.#playIntervals.at(-1).end = pass.endKind === "end" ? pass.endFrame : null;
  }

  // Keep loop passes scheduled up to the horizon: the end of rendering for an
  // OfflineAudioContext, REALTIME_HORIZON_SECONDS ahead otherwise.
  #schedulePasses() {
    const now = this.#nowFrame();
    const horizon = this.#offline
      ? this.#context.length
      : now + Math.ceil(REALTIME_HORIZON_SECONDS * this.#sampleRate);
    let last = this.#passes.at(-1);
    while (this.#playing && last && last.endKind === "loop" && last.endFrame < horizon) {
      const start = Math.max(last.endFrame, now + this.#leadFrames);
      if (start > last.endFrame) {
        console.warn(
          LOG_PREFIX,
          `Loop pass scheduled ${start - last.endFrame} frames late; timers were throttled`,
        );
      }
      last = this.#addPass(start, this.#loop.startFrame, this.#fadeFrames > 0);
    }
  }

  #cancelPass(pass) {
    for (const source of pass.sources) {
      source.onended = null;
      source.disconnect();
    }
  }

  // Remove every transport change, pass and pending event after `frame`,
  // keeping the pass at `passIndex` and those before it.
  #truncateAfter(frame, passIndex) {
    this.#transportGain.gain.cancelScheduledValues(frame / this.#sampleRate);
    this.#transportWindows = this.#transportWindows.filter((window) => window.start < frame);
    this.#pending = this.#pending.filter((event) => event.frame <= frame);
    for (const pass of this.#passes.slice(passIndex + 1)) this.#cancelPass(pass);
    this.#passes = this.#passes.slice(0, passIndex + 1);
  }

  // Fade the current pass out over `length` frames from the earliest possible
  // frame and end it there. Returns the frame where the fade-out starts, the
  // frame from which the output is silent, and the position at the cut.
  #cutPlayback(length, fadeOut) {
    const cutFrame = this.#earliestTransportFrame(length);
    const pass = this.#passAt(cutFrame);
    if (!pass) {
      // Without a loop, the last pass fades out to the end of the stimuli
      // before `cutFrame`, so let that fade-out finish.
      const last = this.#passes.at(-1);
      this.#pending = this.#pending.filter((event) => event.type !== "end");
      const silentFrame = last.endFrame;
      return {
        cutFrame: silentFrame - this.#fadeFrames,
        silentFrame,
        position: this.#positionAt(silentFrame - this.#fadeFrames),
      };
    }
    const position = this.#positionAt(cutFrame);
    this.#truncateAfter(cutFrame, this.#passes.indexOf(pass));
    const silentFrame = cutFrame + this.#fadeFrames;
    pass.endFrame = silentFrame;
    pass.endKind = "cut";
    for (const source of pass.sources) source.stop(silentFrame / this.#sampleRate);
    if (fadeOut) this.#transportFadeOut(cutFrame);
    return { cutFrame, silentFrame, position };
  }

  // Fade out, then continue from `target` with a fade-in. Returns the frame at
  // which the new pass starts.
  #jumpTo(target) {
    const { silentFrame } = this.#cutPlayback(2 * this.#fadeFrames, this.#fadeFrames > 0);
    const interval = {
      start: Math.max(silentFrame, this.#nowFrame() + this.#leadFrames),
      end: null,
    };
    this.#playIntervals.at(-1).end = silentFrame;
    this.#playIntervals.push(interval);
    const pass = this.#addPass(interval.start, target, true);
    interval.start = pass.startFrame;
    this.#schedulePasses();
    return pass.startFrame;
  }

  // Apply a changed loop region. Returns the frame at which it takes effect
  // and the position there.
  #applyRegion() {
    const regionStart = this.#regionStart();
    const regionEnd = this.#regionEnd();
    if (!this.#playing) {
      this.#cueFrame = regionStart;
      return { frame: this.#nowFrame(), position: regionStart };
    }

    const fadeFrames = this.#fadeFrames;
    const frame = this.#earliestTransportFrame(2 * fadeFrames);
    const pass = this.#passAt(frame);
    const position = pass ? pass.offsetFrame + (frame - pass.startFrame) : -1;
    const keepsPlaying =
      pass && position >= regionStart && regionEnd - position >= Math.max(2 * fadeFrames, 1);
    if (!keepsPlaying) {
      const start = this.#jumpTo(regionStart);
      return { frame: start, position: regionStart };
    }

    // Playback continues: the current pass gets the new end, and the passes
    // after it are planned again.
    this.#truncateAfter(frame, this.#passes.indexOf(pass));
    pass.endFrame = pass.startFrame + (regionEnd - pass.offsetFrame);
    for (const source of pass.sources) source.stop(pass.endFrame / this.#sampleRate);
    this.#scheduleEnding(pass);
    this.#schedulePasses();
    return { frame, position };
  }

  // --- events and housekeeping --------------------------------------------

  #refresh() {
    if (!this.#ready) return;
    const now = this.#nowFrame();
    if (this.#playing) this.#schedulePasses();

    const due = this.#pending.filter((event) => event.frame <= now);
    if (due.length > 0) {
      this.#pending = this.#pending.filter((event) => event.frame > now);
      due.sort((a, b) => a.frame - b.frame);
      for (const event of due) this.#recordDue(event, now);
    }

    const finished = this.#passes.filter((pass) => pass.endFrame < now);
    if (finished.length > 0) {
      for (const pass of finished) this.#cancelPass(pass);
      this.#passes = this.#passes.filter((pass) => pass.endFrame >= now);
    }
    this.#transportWindows = this.#transportWindows.filter((window) => window.end > now);
    this.#stopTimerWhenIdle();
  }

  #recordDue(event, now) {
    const rate = this.#sampleRate;
    const ageMs = ((now - event.frame) / rate) * 1000;
    if (event.type === "loop") {
      this.#record(
        {
          type: "loop",
          start: event.start / rate,
          end: event.end / rate,
          position: event.start / rate,
          contextTime: event.frame / rate,
        },
        ageMs,
      );
      return;
    }
    this.#playing = false;
    this.#cueFrame = this.#regionStart();
    this.#record(
      {
        type: "stop",
        reason: "end",
        position: this.#durationFrames / rate,
        contextTime: event.frame / rate,
      },
      ageMs,
    );
  }

  #record(event, ageMs = 0) {
    const recorded = { ...event, time: performance.now() - this.#createdAt - ageMs };
    this.#events.push(recorded);
    const callbacks = this.#onEvent ? [this.#onEvent, ...this.#listeners] : [...this.#listeners];
    for (const callback of callbacks) {
      try {
        callback({ ...recorded });
      } catch (error) {
        console.error(LOG_PREFIX, "An event listener failed:", error);
      }
    }
  }

  #startTimer() {
    if (this.#offline || this.#timer !== null) return;
    this.#timer = setInterval(() => this.#refresh(), REFRESH_INTERVAL_MS);
  }

  #stopTimer() {
    if (this.#timer === null) return;
    clearInterval(this.#timer);
    this.#timer = null;
  }

  #stopTimerWhenIdle() {
    if (!this.#playing && this.#pending.length === 0) this.#stopTimer();
  }

  #requireOpen() {
    if (this.#closed) throw new Error("This AudioEngine is closed; create a new one");
  }

  #requireReady(method) {
    this.#requireOpen();
    if (!this.#ready) throw new Error(`${method}() needs the stimuli: await engine.load() first`);
  }

  #requireKnownId(id) {
    if (!this.#buffers.has(id)) {
      throw new RangeError(
        `Unknown stimulus id ${JSON.stringify(id)}; the loaded ids are ${JSON.stringify(this.#ids)}`,
      );
    }
  }
}
