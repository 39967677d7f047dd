// MUSHRA trial page (ITU-R BS.1534-3): the open reference, one vertical
// 0-100 slider per stimulus, the shared timeline and keyboard shortcuts.
//
// The page enforces three rules, and the server checks the ratings again.
// Nothing is usable until every stimulus is decoded. A slider is disabled
// until its stimulus was audible for minPlaySeconds. "Submit" is enabled
// once every stimulus was heard and its slider moved.
//
// The slider positions are kept as a draft in localStorage (trial-draft.js)
// and restored after a reload. The response then has `restored: true`.

import { AudioEngine } from "../static/caqe/audio-engine.js";
import { Timeline } from "../static/caqe/timeline.js";
import { flushPending, submitResponse } from "../static/caqe/response-queue.js";
import { TrialDraft } from "../static/caqe/trial-draft.js";

const REFERENCE_ID = "ref";
const POLL_INTERVAL_MS = 100;
// The server accepts at most 5000 events per trial. Beyond this many, events
// are left out and counted instead, loop events (one per pass of a loop
// region) first.
const MAX_EVENTS = 4500;
const EVENT_FIELDS = ["from", "to", "signal", "start", "end"];

const settings = JSON.parse(document.getElementById("mushra-settings").textContent);
const pageStartedAt = performance.now();

const root = document.getElementById("mushra");
const playButton = document.getElementById("mushra-play");
const submitButton = document.getElementById("mushra-submit");
const statusLine = document.getElementById("mushra-status");
const errorLine = document.getElementById("mushra-error");
const signalIds = settings.signals.map((signal) => signal.id);

const columns = new Map(
  signalIds.map((id) => [
    id,
    {
      slider: document.getElementById(`mushra-slider-${id}`),
      value: document.getElementById(`mushra-value-${id}`),
      button: document.getElementById(`mushra-select-${id}`),
      column: root.querySelector(`.mushra-column[data-signal="${id}"]`),
      heard: false,
      rated: false,
    },
  ]),
);
const referenceButton = document.getElementById("mushra-select-ref");

let engine = null;
let audioContext = null;
let submitting = false;
let draft = null;
// True when a rating of this page came from the draft of an earlier load.
let restoredFromDraft = false;

function createContext(sampleRate) {
  try {
    return new AudioContext({ latencyHint: "interactive", sampleRate });
  } catch (error) {
    // The browser rejects the rate; decodeAudioData then resamples.
    console.warn(`AudioContext rejected sampleRate ${sampleRate}:`, error);
    return new AudioContext({ latencyHint: "interactive" });
  }
}

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = !message;
}

function setLoadingProgress(loaded, total) {
  document.getElementById("mushra-loading-bar").value = loaded;
  document.getElementById("mushra-loading-text").textContent =
    `Loading the audio… ${loaded} of ${total} files`;
}

// A stimulus counts as heard once it was audible for minPlaySeconds, or for
// any time at all when minPlaySeconds is 0.
function wasHeard(id) {
  const seconds = engine.playedSeconds(id);
  return settings.minPlaySeconds > 0 ? seconds >= settings.minPlaySeconds : seconds > 0;
}

function updateControls() {
  if (!engine || !engine.ready) return;
  const playing = engine.playing;
  playButton.textContent = playing ? "Stop" : "Play";
  playButton.setAttribute("aria-pressed", String(playing));

  const active = engine.activeId;
  for (const button of [referenceButton, ...[...columns.values()].map((c) => c.button)]) {
    const selected = button.dataset.signal === active;
    button.classList.toggle("mushra-select--active", selected);
    button.setAttribute("aria-pressed", String(selected));
  }

  let heardCount = 0;
  let ratedCount = 0;
  for (const [id, column] of columns) {
    if (!column.heard && wasHeard(id)) column.heard = true;
    const canRate = column.heard || settings.minPlaySeconds === 0;
    if (column.slider.disabled === canRate && !submitting) column.slider.disabled = !canRate;
    column.column.classList.toggle("mushra-column--heard", column.heard);
    column.column.classList.toggle("mushra-column--rated", column.rated);
    if (column.heard) heardCount += 1;
    if (column.rated) ratedCount += 1;
  }

  const total = columns.size;
  const complete = heardCount === total && ratedCount === total;
  submitButton.disabled = !complete || submitting;
  if (!submitting) {
    const restoredNote =
      restoredFromDraft && heardCount < total
        ? "Your ratings from before the page was reloaded are back. Listen to each " +
          "stimulus again before you submit. "
        : "";
    statusLine.textContent = complete
      ? "Every stimulus is rated. You can still change the ratings before you submit."
      : restoredNote +
        `Heard ${heardCount} of ${total} stimuli, rated ${ratedCount} of ${total}. ` +
        (settings.minPlaySeconds > 0
          ? `A slider unlocks after its stimulus played for ${settings.minPlaySeconds} s.`
          : "");
  }
}

function saveDraft() {
  const ratings = {};
  for (const [id, column] of columns) {
    if (column.rated) ratings[id] = Number(column.slider.value);
  }
  draft.save({ ratings });
}

// Restores the ratings of an earlier load of this page. Entries for signal
// ids this page does not have, and values that are not ratings, are skipped.
//
// The heard state is not restored: the listening events of the earlier load
// were never sent, so the stored data could not show that the listener heard
// each stimulus before rating it. A restored slider keeps its value but stays
// locked, and Submit stays disabled, until its stimulus is heard again.
function restoreDraft() {
  const state = draft.load();
  const ratings = state?.ratings;
  if (ratings === null || typeof ratings !== "object" || Array.isArray(ratings)) return;
  for (const [id, value] of Object.entries(ratings)) {
    const column = columns.get(id);
    if (!column || typeof value !== "number" || !(value >= 0 && value <= 100)) continue;
    column.slider.value = String(value);
    column.value.textContent = column.slider.value;
    column.rated = true;
    restoredFromDraft = true;
  }
}

function select(id) {
  engine.select(id);
  if (!engine.playing) engine.play();
  updateControls();
}

function focusColumn(id) {
  const column = columns.get(id);
  if (!column) return;
  (column.slider.disabled ? column.button : column.slider).focus();
}

function onKeyDown(event) {
  if (!engine || !engine.ready || submitting) return;
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
  const tag = event.target?.tagName;
  if (tag === "TEXTAREA" || (tag === "INPUT" && event.target.type !== "range")) return;

  if (event.key === " ") {
    event.preventDefault();
    engine.togglePlay();
  } else if (event.key === "r" || event.key === "R") {
    event.preventDefault();
    select(REFERENCE_ID);
    referenceButton.focus();
  } else if (/^[0-9]$/.test(event.key)) {
    const index = event.key === "0" ? 9 : Number(event.key) - 1;
    if (index >= signalIds.length) return;
    event.preventDefault();
    select(signalIds[index]);
    focusColumn(signalIds[index]);
  } else {
    return;
  }
  updateControls();
}

// Map engine events to the fields the server stores. `signal` is the
// stimulus that was selected when the event happened.
function collectEvents() {
  let current = REFERENCE_ID;
  const mapped = engine.events.map((event) => {
    if (event.type === "switch") current = event.to;
    const out = {
      type: event.type,
      time: Math.max(0, event.time),
      position: Number.isFinite(event.position) ? Math.max(0, event.position) : null,
      signal: current,
    };
    for (const field of EVENT_FIELDS) {
      if (field !== "signal" && event[field] !== undefined) out[field] = event[field];
    }
    return out;
  });
  if (mapped.length <= MAX_EVENTS) return { events: mapped, dropped: 0 };

  const others = mapped.filter((event) => event.type !== "loop").length;
  let loopsKept = Math.max(0, MAX_EVENTS - others);
  const retained = mapped.filter((event) => {
    if (event.type !== "loop") return true;
    loopsKept -= 1;
    return loopsKept >= 0;
  });
  const events = retained.slice(0, MAX_EVENTS);
  return { events, dropped: mapped.length - events.length };
}

async function submit() {
  if (submitting || submitButton.disabled) return;
  submitting = true;
  submitButton.disabled = true;
  showError("");
  statusLine.textContent = "Saving your ratings…";
  for (const column of columns.values()) column.slider.disabled = true;

  const ratings = {};
  for (const [id, column] of columns) ratings[id] = Number(column.slider.value);
  const { events, dropped } = collectEvents();
  const response = { ratings, order: signalIds, loop: engine.loop };
  if (dropped > 0) response.dropped_events = dropped;
  if (restoredFromDraft) response.restored = true;
  if (engine.playing) engine.stop();

  const result = await submitResponse(
    settings.submitUrl,
    settings.csrfToken,
    { response, events, time_on_page_ms: Math.round(performance.now() - pageStartedAt) },
    {
      onRetry: (attempt) => {
        statusLine.textContent = `Saving your ratings… (the server did not answer; try ${attempt + 1})`;
      },
    },
  );
  if (result.ok) {
    draft.clear();
    statusLine.textContent = "Saved.";
    await engine.close();
    await audioContext.close();
    window.location.assign(result.acknowledgement.next);
    return;
  }
  if (result.status === 409) {
    window.location.reload();
    return;
  }
  submitting = false;
  const field = result.error?.field ? ` (${result.error.field})` : "";
  showError(`The ratings were not accepted${field}: ${result.error?.error ?? "unknown error"}`);
  updateControls();
}

function bindControls() {
  playButton.addEventListener("click", () => {
    engine.togglePlay();
    updateControls();
  });
  referenceButton.addEventListener("click", () => select(REFERENCE_ID));
  for (const [id, column] of columns) {
    column.button.addEventListener("click", () => select(id));
    column.slider.addEventListener("input", () => {
      column.rated = true;
      column.value.textContent = column.slider.value;
      saveDraft();
      updateControls();
    });
  }
  submitButton.addEventListener("click", submit);
  document.addEventListener("keydown", onKeyDown);
  engine.addListener(() => updateControls());
  setInterval(updateControls, POLL_INTERVAL_MS);
}

async function main() {
  // Benchmarks read these marks: script start, and the page being usable.
  performance.mark("caqe-mushra-start");
  const flushed = await flushPending();
  if (flushed.some((result) => result.ok)) {
    // A response left by an earlier page was stored just now, so the
    // participant's current page may have changed.
    window.location.reload();
    return;
  }

  // The page's inline script (caqe/early_audio.html) has started fetching
  // the stimuli and created the context while this module loaded. Without
  // it, the context is created from the settings' sample rate before any
  // file arrives, so the first decode does not wait for it.
  const early = window.caqeEarlyAudio;
  audioContext = early?.context ?? createContext(settings.sampleRate);
  engine = new AudioEngine({ fadeMs: settings.fadeMs, context: audioContext });
  engine.resumeOnGesture();
  const items = [settings.reference, ...settings.signals].map((item) => ({
    ...item,
    bytes: early?.bytes.get(item.url),
  }));
  setLoadingProgress(0, items.length);
  try {
    await engine.load(items, setLoadingProgress);
  } catch (error) {
    console.error(error);
    root.dataset.state = "failed";
    document.getElementById("mushra-loading-text").textContent =
      "The audio could not be loaded. Check your connection and reload the page.";
    return;
  }

  // Playback loops over the whole stimuli until the listener sets a shorter
  // region or clears it, so switching never runs into the end.
  engine.setLoop(0, engine.duration);
  new Timeline(document.getElementById("mushra-timeline"), engine, {
    waveform: REFERENCE_ID,
    label: "Playback position and loop region",
  });
  draft = new TrialDraft(settings.submitUrl);
  restoreDraft();
  bindControls();
  playButton.disabled = false;
  referenceButton.disabled = false;
  for (const column of columns.values()) column.button.disabled = false;
  root.dataset.state = "ready";
  root.dataset.sampleRate = String(engine.sampleRate);
  performance.mark("caqe-mushra-ready");
  updateControls();
}

main();
