// Timeline bar for an AudioEngine: playhead, optional waveform and a loop
// region that the listener sets by dragging across the bar.
//
// Pointer: a click seeks, a drag sets the loop region and dragging an edge of
// the region moves that edge.
//
// Keyboard, on the focused bar: Left/Right seek by 1 s and Page Down/Page Up
// by 5 s. Home and End go to the start and end of the region. "[" puts the
// loop start at the playhead and "]" the loop end. Escape or Delete clears
// the loop, and Space or Enter starts and stops playback.
//
// A loop region shorter than the minimum (0.5 s by default, the engine's
// minimum) is extended to the minimum: the edge that the listener did not
// move stays, and the moved edge goes further in the direction of the drag.
// Near the ends of the stimuli the region shifts to fit.

const DRAG_THRESHOLD_PX = 4;
const HANDLE_HIT_PX = 8;
const SEEK_STEP_SECONDS = 1;
const PAGE_STEP_SECONDS = 5;

/**
 * Return the loop region between the edge that stays (`fixed`) and the edge
 * that the listener moved (`moved`), extended to at least `minLength` seconds
 * and kept inside 0 ... `duration`. Returns null when `duration` is shorter
 * than `minLength`.
 *
 * @returns {{start: number, end: number} | null}
 */
export function normalizeLoopRegion(fixed, moved, duration, minLength) {
  if (!(duration >= minLength)) return null;
  const clamp = (value) => Math.min(Math.max(value, 0), duration);
  let start = clamp(Math.min(fixed, moved));
  let end = clamp(Math.max(fixed, moved));
  if (end - start >= minLength) return { start, end };

  if (moved >= fixed) {
    end = start + minLength;
    if (end > duration) {
      end = duration;
      start = duration - minLength;
    }
  } else {
    start = end - minLength;
    if (start < 0) {
      start = 0;
      end = minLength;
    }
  }
  return { start, end };
}

/** Format seconds as m:ss.s for the time labels. */
export function formatTime(seconds) {
  const tenths = Math.max(0, Math.round(seconds * 10));
  const minutes = Math.floor(tenths / 600);
  const rest = (tenths % 600) / 10;
  return `${minutes}:${rest.toFixed(1).padStart(4, "0")}`;
}

function createElement(tag, className, attributes = {}) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

let instanceCount = 0;

/** Timeline bar that shows and controls an AudioEngine. */
export class Timeline {
  #engine;
  #minLoopSeconds;
  #waveformSource;
  #waveformDrawn = false;
  #root;
  #track;
  #canvas;
  #shadeBefore;
  #shadeAfter;
  #loopBox;
  #playhead;
  #timeLabel;
  #loopLabel;
  #clearButton;
  #drag = null; // {pointerId, mode, fixed, startX, preview}
  #frameRequest = null;
  #removeListener;
  #resizeObserver = null;
  #lastAriaText = "";

  /**
   * @param {HTMLElement} container - element to render into (its content is replaced)
   * @param {import("./audio-engine.js").AudioEngine} engine
   * @param {object} [options]
   * @param {number} [options.minLoopSeconds=0.5] - minimum loop length in seconds
   * @param {AudioBuffer | string | null} [options.waveform] - buffer or stimulus id whose
   *   waveform is drawn. Draw the reference or a neutral signal, since the waveform of
   *   the selected condition could give away which condition it is.
   * @param {string} [options.label="Playback position"] - accessible name of the bar
   */
  constructor(
    container,
    engine,
    { minLoopSeconds = 0.5, waveform = null, label = "Playback position" } = {},
  ) {
    if (!(container instanceof HTMLElement)) {
      throw new TypeError("Timeline needs an HTMLElement to render into");
    }
    if (!(minLoopSeconds >= 0.5)) {
      throw new RangeError(
        `minLoopSeconds must be at least the engine's minimum of 0.5 s, got ${minLoopSeconds}`,
      );
    }
    this.#engine = engine;
    this.#minLoopSeconds = minLoopSeconds;
    this.#waveformSource = waveform;
    this.#build(container, label);
    this.#removeListener = engine.addListener(() => this.#requestFrame());
    if (typeof ResizeObserver !== "undefined") {
      this.#resizeObserver = new ResizeObserver(() => {
        this.#waveformDrawn = false;
        this.#requestFrame();
      });
      this.#resizeObserver.observe(this.#track);
    }
    this.#requestFrame();
  }

  /** The root element of the timeline. */
  get element() {
    return this.#root;
  }

  /** Redraw now, for example after the page changed the layout. */
  render() {
    this.#waveformDrawn = false;
    this.#draw();
  }

  /** Remove the timeline's elements and listeners. */
  destroy() {
    this.#removeListener();
    this.#resizeObserver?.disconnect();
    if (this.#frameRequest !== null) cancelAnimationFrame(this.#frameRequest);
    this.#root.remove();
  }

  #build(container, label) {
    instanceCount += 1;
    const helpId = `caqe-timeline-help-${instanceCount}`;
    this.#root = createElement("div", "caqe-timeline");
    this.#track = createElement("div", "caqe-timeline__track", {
      role: "slider",
      tabindex: "0",
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-describedby": helpId,
    });
    this.#canvas = createElement("canvas", "caqe-timeline__waveform", { "aria-hidden": "true" });
    this.#shadeBefore = createElement("div", "caqe-timeline__shade");
    this.#shadeAfter = createElement("div", "caqe-timeline__shade");
    this.#loopBox = createElement("div", "caqe-timeline__loop");
    this.#loopBox.append(
      createElement("span", "caqe-timeline__handle caqe-timeline__handle--start"),
      createElement("span", "caqe-timeline__handle caqe-timeline__handle--end"),
    );
    this.#playhead = createElement("div", "caqe-timeline__playhead");
    this.#track.append(
      this.#canvas,
      this.#shadeBefore,
      this.#shadeAfter,
      this.#loopBox,
      this.#playhead,
    );

    const info = createElement("div", "caqe-timeline__info");
    this.#timeLabel = createElement("span", "caqe-timeline__time");
    this.#loopLabel = createElement("span", "caqe-timeline__loop-label");
    this.#clearButton = createElement("button", "caqe-timeline__clear", { type: "button" });
    this.#clearButton.textContent = "Clear loop";
    info.append(this.#timeLabel, this.#loopLabel, this.#clearButton);

    const help = createElement("p", "caqe-timeline__help", { id: helpId });
    help.textContent =
      "Click to jump, drag to set a loop. Keys: arrows jump 1 second, [ and ] set the " +
      "loop start and end, Escape clears the loop, Space plays or stops.";
    this.#root.append(this.#track, info, help);
    container.replaceChildren(this.#root);

    this.#track.addEventListener("pointerdown", (event) => this.#onPointerDown(event));
    this.#track.addEventListener("pointermove", (event) => this.#onPointerMove(event));
    this.#track.addEventListener("pointerup", (event) => this.#onPointerUp(event));
    this.#track.addEventListener("pointercancel", () => this.#cancelDrag());
    this.#track.addEventListener("keydown", (event) => this.#onKeyDown(event));
    this.#clearButton.addEventListener("click", () => {
      if (this.#engine.ready) this.#engine.clearLoop();
      this.#track.focus({ focusVisible: false });
    });
  }

  // --- input ----------------------------------------------------------------

  #secondsAt(clientX) {
    const rect = this.#track.getBoundingClientRect();
    const fraction = rect.width > 0 ? (clientX - rect.left) / rect.width : 0;
    return Math.min(Math.max(fraction, 0), 1) * this.#engine.duration;
  }

  #pixelsPerSecond() {
    const duration = this.#engine.duration;
    return duration > 0 ? this.#track.getBoundingClientRect().width / duration : 0;
  }

  #onPointerDown(event) {
    if (event.button !== 0 || !this.#engine.ready) return;
    event.preventDefault();
    // Focus for the keyboard commands, without the keyboard focus ring.
    this.#track.focus({ focusVisible: false });
    this.#track.setPointerCapture(event.pointerId);

    const seconds = this.#secondsAt(event.clientX);
    let mode = "pending";
    let fixed = seconds;
    const loop = this.#engine.loop;
    if (loop) {
      const hitSeconds = HANDLE_HIT_PX / this.#pixelsPerSecond();
      const toStart = Math.abs(seconds - loop.start);
      const toEnd = Math.abs(seconds - loop.end);
      if (Math.min(toStart, toEnd) <= hitSeconds) {
        mode = "resize";
        fixed = toStart <= toEnd ? loop.end : loop.start;
      }
    }
    this.#drag = { pointerId: event.pointerId, mode, fixed, startX: event.clientX, preview: null };
    if (mode === "resize") this.#updatePreview(seconds);
  }

  #onPointerMove(event) {
    const drag = this.#drag;
    if (!drag || drag.pointerId !== event.pointerId) return;
    if (drag.mode === "pending") {
      if (Math.abs(event.clientX - drag.startX) < DRAG_THRESHOLD_PX) return;
      drag.mode = "create";
    }
    this.#updatePreview(this.#secondsAt(event.clientX));
  }

  #onPointerUp(event) {
    const drag = this.#drag;
    if (!drag || drag.pointerId !== event.pointerId) return;
    this.#drag = null;
    if (drag.mode === "pending") {
      this.#engine.seek(drag.fixed);
    } else if (drag.preview) {
      this.#engine.setLoop(drag.preview.start, drag.preview.end);
    }
    this.#requestFrame();
  }

  #cancelDrag() {
    this.#drag = null;
    this.#requestFrame();
  }

  #updatePreview(moved) {
    const drag = this.#drag;
    drag.preview = normalizeLoopRegion(
      drag.fixed,
      moved,
      this.#engine.duration,
      this.#minLoopSeconds,
    );
    this.#requestFrame();
  }

  #onKeyDown(event) {
    const engine = this.#engine;
    if (!engine.ready || event.altKey || event.ctrlKey || event.metaKey) return;
    const position = engine.position;
    const loop = engine.loop;
    const duration = engine.duration;
    const minLength = this.#minLoopSeconds;

    switch (event.key) {
      case "ArrowLeft":
      case "ArrowDown":
        engine.seek(position - SEEK_STEP_SECONDS);
        break;
      case "ArrowRight":
      case "ArrowUp":
        engine.seek(position + SEEK_STEP_SECONDS);
        break;
      case "PageDown":
        engine.seek(position - PAGE_STEP_SECONDS);
        break;
      case "PageUp":
        engine.seek(position + PAGE_STEP_SECONDS);
        break;
      case "Home":
        engine.seek(loop ? loop.start : 0);
        break;
      case "End":
        engine.seek(loop ? loop.end : duration);
        break;
      case "[": {
        // The loop end stays when the playhead is before it.
        const end = loop && position < loop.end ? loop.end : duration;
        const region = normalizeLoopRegion(end, position, duration, minLength);
        if (region) engine.setLoop(region.start, region.end);
        break;
      }
      case "]": {
        const start = loop && position > loop.start ? loop.start : 0;
        const region = normalizeLoopRegion(start, position, duration, minLength);
        if (region) engine.setLoop(region.start, region.end);
        break;
      }
      case "Escape":
      case "Delete":
      case "Backspace":
        engine.clearLoop();
        break;
      case " ":
      case "Enter":
        engine.togglePlay();
        break;
      default:
        return;
    }
    event.preventDefault();
    this.#requestFrame();
  }

  // --- drawing --------------------------------------------------------------

  #requestFrame() {
    if (this.#frameRequest !== null) return;
    this.#frameRequest = requestAnimationFrame(() => {
      this.#frameRequest = null;
      this.#draw();
      // Keep animating while the playhead moves or the stimuli are loading.
      if (!this.#engine.ready || this.#engine.playing) this.#requestFrame();
    });
  }

  #draw() {
    const engine = this.#engine;
    const ready = engine.ready;
    const duration = ready ? engine.duration : 0;
    this.#root.classList.toggle("caqe-timeline--disabled", !ready);
    this.#track.setAttribute("aria-disabled", String(!ready));
    if (!ready || duration <= 0) {
      this.#timeLabel.textContent = "Loading…";
      this.#loopLabel.textContent = "";
      this.#clearButton.hidden = true;
      this.#loopBox.hidden = true;
      this.#shadeBefore.hidden = true;
      this.#shadeAfter.hidden = true;
      return;
    }
    if (!this.#waveformDrawn) this.#drawWaveform();

    const percent = (seconds) => `${(100 * seconds) / duration}%`;
    const position = engine.position;
    // Keep the 2 px line fully visible at the ends of the bar.
    this.#playhead.style.left = `clamp(1px, ${percent(position)}, calc(100% - 1px))`;

    const preview = this.#drag?.preview ?? null;
    const region = preview ?? engine.loop;
    this.#loopBox.hidden = !region;
    this.#shadeBefore.hidden = !region;
    this.#shadeAfter.hidden = !region;
    this.#loopBox.classList.toggle("caqe-timeline__loop--preview", Boolean(preview));
    if (region) {
      this.#loopBox.style.left = percent(region.start);
      this.#loopBox.style.width = percent(region.end - region.start);
      this.#shadeBefore.style.left = "0";
      this.#shadeBefore.style.width = percent(region.start);
      this.#shadeAfter.style.left = percent(region.end);
      this.#shadeAfter.style.right = "0";
      this.#loopLabel.textContent =
        `Loop ${formatTime(region.start)} – ${formatTime(region.end)}` +
        ` (${(region.end - region.start).toFixed(1)} s)`;
    } else {
      this.#loopLabel.textContent = "Drag across the bar to loop a part";
    }
    this.#clearButton.hidden = !engine.loop;
    this.#timeLabel.textContent = `${formatTime(position)} / ${formatTime(duration)}`;

    this.#track.setAttribute("aria-valuemax", duration.toFixed(1));
    this.#track.setAttribute("aria-valuenow", position.toFixed(1));
    // Whole seconds, so that a screen reader does not announce every frame.
    let ariaText = `${Math.floor(position)} of ${Math.round(duration)} seconds`;
    if (engine.loop) {
      const { start, end } = engine.loop;
      ariaText += `, loop from ${start.toFixed(1)} to ${end.toFixed(1)} seconds`;
    }
    if (ariaText !== this.#lastAriaText) {
      this.#track.setAttribute("aria-valuetext", ariaText);
      this.#lastAriaText = ariaText;
    }
  }

  #drawWaveform() {
    const canvas = this.#canvas;
    const width = Math.round(canvas.clientWidth * devicePixelRatio);
    const height = Math.round(canvas.clientHeight * devicePixelRatio);
    if (width === 0 || height === 0) return;
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    this.#waveformDrawn = true;

    let buffer = this.#waveformSource;
    if (typeof buffer === "string") buffer = this.#engine.getBuffer(buffer);
    if (!buffer) return;
    const samples = buffer.getChannelData(0);
    const framesPerColumn = Math.max(1, Math.floor(samples.length / width));
    const middle = height / 2;
    context.fillStyle = getComputedStyle(canvas).color;
    for (let x = 0; x < width; x += 1) {
      const from = x * framesPerColumn;
      const to = Math.min(samples.length, from + framesPerColumn);
      let low = 0;
      let high = 0;
      for (let i = from; i < to; i += 1) {
        const value = samples[i];
        if (value < low) low = value;
        if (value > high) high = value;
      }
      const top = middle - high * middle * 0.9;
      const bottom = middle - low * middle * 0.9;
      context.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
  }
}
