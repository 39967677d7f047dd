// Pairwise comparison trial page: the page's pairs one after another, each
// with A, B and the reference (when the item has one) on one timeline, and a
// forced choice between A and B (plus "No preference" when the study allows it).
//
// Rules the page enforces (the server checks the last two again):
// - Nothing is usable until every stimulus is decoded.
// - When requireBothPlayed is set, the choice buttons stay disabled until A
//   and B were each audible for minPlaySeconds on the current pair (or at
//   all, when minPlaySeconds is 0).
// - "Next pair" is enabled once the pair has a choice. The last pair's button
//   submits every judgement of the page in one response.
//
// The choices are kept as a draft in localStorage (trial-draft.js), so a
// reload restores them and the response then has `restored: true`. When the
// study requires listening, a restored choice must be confirmed after hearing
// A and B again (see restoreDraft), so the reload starts at the first pair.
// Otherwise it starts at the first pair without a choice.
//
// Every engine event is logged with the index of the pair on screen. The page
// adds a "pair" event when it shows a pair and a "choice" event for each
// choice, so the server can check the listening behind each judgement.

import { AudioEngine } from "../static/caqe/audio-engine.js";
import { Timeline } from "../static/caqe/timeline.js";
import { flushPending, submitResponse } from "../static/caqe/response-queue.js";
import { TrialDraft } from "../static/caqe/trial-draft.js";

const REFERENCE_ID = "ref";
const POLL_INTERVAL_MS = 100;
// The server accepts at most 5000 events per trial. Beyond this many, loop
// events (one per pass of a loop region) are left out and counted instead.
const MAX_EVENTS = 4500;
const EVENT_FIELDS = ["from", "to", "start", "end"];
const CHOICE_NAMES = { a: "A", b: "B", none: "no preference" };

const settings = JSON.parse(document.getElementById("pairwise-settings").textContent);
const pageStartedAt = performance.now();

const root = document.getElementById("pairwise");
const playButton = document.getElementById("pairwise-play");
const nextButton = document.getElementById("pairwise-next");
const statusLine = document.getElementById("pairwise-status");
const errorLine = document.getElementById("pairwise-error");
const pairTitle = document.getElementById("pairwise-pair-title");
const steps = [...root.querySelectorAll(".pairwise-step")];
const referenceButton = document.getElementById("pairwise-select-ref");
const sideButtons = {
  a: document.getElementById("pairwise-select-a"),
  b: document.getElementById("pairwise-select-b"),
};
const heardBars = {
  a: document.getElementById("pairwise-heard-a"),
  b: document.getElementById("pairwise-heard-b"),
};
const choiceButtons = [...root.querySelectorAll(".pairwise-choice")];

const pairs = settings.pairs.map((pair) => ({
  a: pair.a,
  b: pair.b,
  choice: null,
  decisionMs: null,
  played: null,
  shownAt: 0,
  base: { a: 0, b: 0 },
  // True while the choice is the one restored from the draft.
  restored: false,
}));

let engine = null;
// performance.now() when the engine was created: the origin of its event times.
let engineCreatedAt = 0;
let current = 0;
let submitting = false;
const events = [];
let draft = null;
// True when a choice of this page came from the draft of an earlier load.
let restoredFromDraft = false;

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = !message;
}

function setLoadingProgress(loaded, total) {
  document.getElementById("pairwise-loading-bar").value = loaded;
  document.getElementById("pairwise-loading-text").textContent =
    `Loading the audio… ${loaded} of ${total} files`;
}

function eventTime() {
  return Math.max(0, performance.now() - engineCreatedAt);
}

// Seconds the signal on `side` was audible since the current pair was shown.
function heardSeconds(side) {
  const pair = pairs[current];
  return Math.max(0, engine.playedSeconds(pair[side]) - pair.base[side]);
}

function wasHeard(side) {
  const seconds = heardSeconds(side);
  return settings.minPlaySeconds > 0 ? seconds >= settings.minPlaySeconds : seconds > 0;
}

function canAnswer() {
  return !settings.requireBothPlayed || (wasHeard("a") && wasHeard("b"));
}

// A restored choice needs confirming when the study requires listening,
// because the events that showed the listening behind it were lost.
function needsConfirmation(pair) {
  return pair.restored && settings.requireBothPlayed;
}

function saveDraft() {
  const judgements = [];
  pairs.forEach((pair, index) => {
    if (pair.choice === null) return;
    judgements.push({
      pair: index,
      a: pair.a,
      b: pair.b,
      choice: pair.choice,
      decision_time_ms: pair.decisionMs,
      played_seconds: pair.played,
    });
  });
  draft.save({ judgements });
}

function isSeconds(value) {
  return typeof value === "number" && Number.isFinite(value) && value >= 0;
}

// Returns a draft judgement as the fields of `pairs[entry.pair]`, or null
// when it names a pair this page does not show with the same A and B, or
// when a field is invalid.
function parseDraftJudgement(entry) {
  if (entry === null || typeof entry !== "object") return null;
  const pair = Number.isInteger(entry.pair) ? pairs[entry.pair] : undefined;
  if (!pair || entry.a !== pair.a || entry.b !== pair.b) return null;
  const allowed = settings.allowNoPreference ? ["a", "b", "none"] : ["a", "b"];
  if (!allowed.includes(entry.choice) || !isSeconds(entry.decision_time_ms)) return null;
  const played = entry.played_seconds;
  if (played === null || typeof played !== "object") return null;
  if (!isSeconds(played.a) || !isSeconds(played.b)) return null;
  return {
    choice: entry.choice,
    decisionMs: entry.decision_time_ms,
    played: { a: played.a, b: played.b },
  };
}

// Restores the choices of an earlier load of this page and returns the
// index of the pair to show first.
//
// The heard state is not restored, because the listening events of the
// earlier load were never sent and the stored data could not show that the
// listener heard A and B before choosing. When the study requires listening,
// the server also checks each choice against the events of this load. So a
// restored choice is shown as the earlier choice, and the listener makes it
// again after hearing A and B on this load.
function restoreDraft() {
  const judgements = draft.load()?.judgements;
  if (!Array.isArray(judgements)) return 0;
  for (const entry of judgements) {
    const restored = parseDraftJudgement(entry);
    if (restored === null) continue;
    Object.assign(pairs[entry.pair], restored, { restored: true });
    restoredFromDraft = true;
  }
  if (settings.requireBothPlayed) return 0;
  const open = pairs.findIndex((pair) => pair.choice === null);
  return open === -1 ? pairs.length - 1 : open;
}

function updateControls() {
  if (!engine || !engine.ready) return;
  const playing = engine.playing;
  playButton.textContent = playing ? "Stop" : "Play";
  playButton.setAttribute("aria-pressed", String(playing));

  const pair = pairs[current];
  const active = engine.activeId;
  const selectButtons = { ...sideButtons };
  if (referenceButton) selectButtons.ref = referenceButton;
  for (const [side, button] of Object.entries(selectButtons)) {
    const id = side === "ref" ? REFERENCE_ID : pair[side];
    const selected = id === active;
    button.classList.toggle("pairwise-select--active", selected);
    button.setAttribute("aria-pressed", String(selected));
  }
  for (const side of ["a", "b"]) {
    const minimum = settings.minPlaySeconds;
    const fraction = minimum > 0 ? heardSeconds(side) / minimum : wasHeard(side) ? 1 : 0;
    heardBars[side].style.width = `${Math.min(1, fraction) * 100}%`;
    sideButtons[side].classList.toggle("pairwise-select--heard", wasHeard(side));
  }

  const answerable = canAnswer() && !submitting;
  for (const button of choiceButtons) {
    const chosen = button.dataset.choice === pair.choice;
    button.disabled = !answerable;
    button.classList.toggle("pairwise-choice--chosen", chosen);
    button.setAttribute("aria-pressed", String(chosen));
  }
  nextButton.disabled = pair.choice === null || needsConfirmation(pair) || submitting;

  if (submitting) return;
  if (needsConfirmation(pair)) {
    const instruction = answerable ? "Choose" : "Listen to A and B again, then choose";
    statusLine.textContent =
      `Your answer before the page was reloaded: ${CHOICE_NAMES[pair.choice]}. ` +
      `${instruction} it again to confirm it, or change it.`;
  } else if (pair.choice !== null) {
    const action = current === pairs.length - 1 ? "submit the page" : "go to the next pair";
    statusLine.textContent =
      `Your answer: ${CHOICE_NAMES[pair.choice]}. You can change it, or ${action}.`;
  } else if (answerable) {
    statusLine.textContent = "Choose A or B.";
  } else {
    const minimum = settings.minPlaySeconds;
    statusLine.textContent =
      minimum > 0
        ? `Listen to A and B for at least ${minimum} s each before you answer.`
        : "Listen to A and B before you answer.";
  }
}

function showPair(index) {
  if (engine.playing) engine.stop();
  current = index;
  const pair = pairs[index];
  events.push({
    type: "pair",
    time: eventTime(),
    position: engine.position,
    signal: engine.activeId,
    pair: index,
  });
  engine.select(pair.a);
  pair.base = { a: engine.playedSeconds(pair.a), b: engine.playedSeconds(pair.b) };
  pair.shownAt = performance.now();

  pairTitle.textContent = `Pair ${index + 1} of ${pairs.length}`;
  steps.forEach((step, position) => {
    step.classList.toggle("pairwise-step--done", position < index);
    step.classList.toggle("pairwise-step--current", position === index);
  });
  nextButton.textContent = index === pairs.length - 1 ? "Submit and continue" : "Next pair";
  updateControls();
}

function listen(side) {
  const id = side === "ref" ? REFERENCE_ID : pairs[current][side];
  engine.select(id);
  if (!engine.playing) engine.play();
  updateControls();
}

function choose(choice) {
  if (submitting || !canAnswer()) return;
  if (choice === "none" && !settings.allowNoPreference) return;
  const pair = pairs[current];
  pair.choice = choice;
  pair.restored = false;
  pair.decisionMs = performance.now() - pair.shownAt;
  pair.played = { a: heardSeconds("a"), b: heardSeconds("b") };
  events.push({
    type: "choice",
    time: eventTime(),
    position: engine.position,
    signal: choice === "none" ? null : pair[choice],
    pair: current,
    choice,
  });
  saveDraft();
  updateControls();
}

function next() {
  const pair = pairs[current];
  if (submitting || pair.choice === null || needsConfirmation(pair)) return;
  if (current === pairs.length - 1) {
    submit();
    return;
  }
  showPair(current + 1);
}

function onEngineEvent(event) {
  const logged = {
    type: event.type,
    time: Math.max(0, event.time),
    position: Number.isFinite(event.position) ? Math.max(0, event.position) : null,
    signal: engine.activeId,
    pair: current,
  };
  for (const field of EVENT_FIELDS) {
    if (event[field] !== undefined) logged[field] = event[field];
  }
  events.push(logged);
  updateControls();
}

function onKeyDown(event) {
  if (!engine || !engine.ready || submitting) return;
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  const tag = target?.tagName;
  if (tag === "TEXTAREA" || tag === "INPUT") return;

  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key === " ") {
    event.preventDefault();
    engine.togglePlay();
  } else if (key === "r" && referenceButton) {
    event.preventDefault();
    listen("ref");
  } else if (key === "a" || key === "b") {
    event.preventDefault();
    listen(key);
  } else if (key === "1" || key === "2") {
    event.preventDefault();
    choose(key === "1" ? "a" : "b");
  } else if (key === "n" && settings.allowNoPreference) {
    event.preventDefault();
    choose("none");
  } else if (key === "Enter") {
    // Enter on a focused button clicks it; only handle it elsewhere.
    if (tag === "BUTTON") return;
    event.preventDefault();
    next();
  } else {
    return;
  }
  updateControls();
}

// A button that has focus would also be clicked by the Space key on keyup,
// which would undo the play or stop that keydown started.
function onKeyUp(event) {
  if (event.key === " " && event.target?.tagName === "BUTTON") event.preventDefault();
}

function collectEvents() {
  if (events.length <= MAX_EVENTS) return { kept: events.slice(), dropped: 0 };
  const others = events.filter((event) => event.type !== "loop").length;
  let loopsKept = Math.max(0, MAX_EVENTS - others);
  const kept = events.filter((event) => {
    if (event.type !== "loop") return true;
    loopsKept -= 1;
    return loopsKept >= 0;
  });
  const sent = kept.slice(0, MAX_EVENTS);
  return { kept: sent, dropped: events.length - sent.length };
}

async function submit() {
  if (submitting) return;
  submitting = true;
  if (engine.playing) engine.stop();
  showError("");
  statusLine.textContent = "Saving your answers…";
  updateControls();

  const judgements = pairs.map((pair, index) => ({
    pair: index,
    a: pair.a,
    b: pair.b,
    choice: pair.choice,
    decision_time_ms: Math.round(pair.decisionMs),
    played_seconds: pair.played,
  }));
  const { kept, dropped } = collectEvents();
  const response = { judgements };
  if (dropped > 0) response.dropped_events = dropped;
  if (restoredFromDraft) response.restored = true;

  const result = await submitResponse(
    settings.submitUrl,
    settings.csrfToken,
    { response, events: kept, time_on_page_ms: Math.round(performance.now() - pageStartedAt) },
    {
      onRetry: (attempt) => {
        statusLine.textContent = `Saving your answers… (the server did not answer; try ${attempt + 1})`;
      },
    },
  );
  if (result.ok) {
    draft.clear();
    statusLine.textContent = "Saved.";
    root.dataset.state = "saved";
    await engine.close();
    window.location.assign(result.acknowledgement.next);
    return;
  }
  if (result.status === 409) {
    window.location.reload();
    return;
  }
  submitting = false;
  const field = result.error?.field ? ` (${result.error.field})` : "";
  showError(
    `The server rejected your answers${field}: ${result.error?.error ?? "unknown error"} ` +
      "Reload the page to judge its pairs again.",
  );
  updateControls();
}

function bindControls() {
  playButton.addEventListener("click", () => {
    engine.togglePlay();
    updateControls();
  });
  if (referenceButton) referenceButton.addEventListener("click", () => listen("ref"));
  for (const [side, button] of Object.entries(sideButtons)) {
    button.addEventListener("click", () => listen(side));
  }
  for (const button of choiceButtons) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  nextButton.addEventListener("click", next);
  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("keyup", onKeyUp);
  setInterval(updateControls, POLL_INTERVAL_MS);
}

async function main() {
  const flushed = await flushPending();
  if (flushed.some((result) => result.ok)) {
    // A response that an earlier page left behind was stored now, so the
    // participant may have moved on to another page.
    window.location.reload();
    return;
  }

  engineCreatedAt = performance.now();
  engine = new AudioEngine({ fadeMs: settings.fadeMs });
  engine.resumeOnGesture();
  const items = settings.reference
    ? [settings.reference, ...settings.signals]
    : [...settings.signals];
  setLoadingProgress(0, items.length);
  try {
    await engine.load(items, setLoadingProgress);
  } catch (error) {
    console.error(error);
    root.dataset.state = "failed";
    document.getElementById("pairwise-loading-text").textContent =
      "The audio could not be loaded. Check your connection and reload the page.";
    return;
  }

  new Timeline(document.getElementById("pairwise-timeline"), engine, {
    waveform: settings.reference ? REFERENCE_ID : null,
    label: "Playback position and loop region",
  });
  engine.addListener(onEngineEvent);
  bindControls();
  playButton.disabled = false;
  if (referenceButton) referenceButton.disabled = false;
  for (const button of Object.values(sideButtons)) button.disabled = false;
  draft = new TrialDraft(settings.submitUrl);
  const first = restoreDraft();
  root.dataset.state = "ready";
  showPair(first);
}

main();
