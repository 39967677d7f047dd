// MUSHRA training page: the listener hears the reference and the stimuli of
// one page, and the low- and high-quality examples, without rating anything.
//
// The page's stimuli share one engine and timeline. Each example may have
// its own length, so each gets an engine of its own on the same AudioContext.

import { AudioEngine } from "../static/caqe/audio-engine.js";
import { Timeline } from "../static/caqe/timeline.js";

const REFERENCE_ID = "ref";

const settings = JSON.parse(document.getElementById("mushra-settings").textContent);
const root = document.getElementById("mushra");
const playButton = document.getElementById("mushra-play");
const buttons = [...root.querySelectorAll(".mushra-select")];
const pageIds = [REFERENCE_ID, ...settings.signals.map((signal) => signal.id)];

let pageEngine = null;
const exampleEngines = new Map();
let current = { group: "page", id: REFERENCE_ID };

function engines() {
  return [pageEngine, ...exampleEngines.values()];
}

function stopAll() {
  for (const engine of engines()) if (engine.playing) engine.stop();
}

function updateControls() {
  const playing = engines().some((engine) => engine.playing);
  playButton.textContent = playing ? "Stop" : "Play";
  playButton.setAttribute("aria-pressed", String(playing));
  for (const button of buttons) {
    const selected = button.dataset.group === current.group && button.dataset.signal === current.id;
    button.classList.toggle("mushra-select--active", selected);
    button.setAttribute("aria-pressed", String(selected));
  }
}

function playCurrent() {
  if (current.group === "page") {
    pageEngine.select(current.id);
    pageEngine.play();
  } else {
    exampleEngines.get(current.id).play();
  }
}

function choose(group, id) {
  const same = current.group === group && current.id === id;
  const wasPlaying = engines().some((engine) => engine.playing);
  if (group === "example" || current.group === "example") stopAll();
  current = { group, id };
  if (group === "page") {
    pageEngine.select(id);
    if (!pageEngine.playing) pageEngine.play();
  } else if (!(same && wasPlaying)) {
    playCurrent();
  }
  updateControls();
}

function togglePlay() {
  if (engines().some((engine) => engine.playing)) stopAll();
  else playCurrent();
  updateControls();
}

function onKeyDown(event) {
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.key === " ") {
    event.preventDefault();
    togglePlay();
  } else if (event.key === "r" || event.key === "R") {
    event.preventDefault();
    choose("page", REFERENCE_ID);
  } else if (/^[0-9]$/.test(event.key)) {
    const index = event.key === "0" ? 10 : Number(event.key);
    if (index >= pageIds.length) return;
    event.preventDefault();
    choose("page", pageIds[index]);
  }
}

async function main() {
  const total = pageIds.length + settings.examples.length;
  let loaded = 0;
  const progress = () => {
    loaded += 1;
    document.getElementById("mushra-loading-bar").value = loaded;
    document.getElementById("mushra-loading-text").textContent =
      `Loading the audio… ${loaded} of ${total} files`;
  };

  pageEngine = new AudioEngine({ fadeMs: settings.fadeMs });
  pageEngine.resumeOnGesture();
  try {
    await pageEngine.load([settings.reference, ...settings.signals], progress);
    await Promise.all(
      settings.examples.map(async (example) => {
        const engine = new AudioEngine({ fadeMs: settings.fadeMs, context: pageEngine.context });
        await engine.load([{ id: example.id, url: example.url }]);
        exampleEngines.set(example.id, engine);
        progress();
      }),
    );
  } catch (error) {
    console.error(error);
    root.dataset.state = "failed";
    document.getElementById("mushra-loading-text").textContent =
      "The audio could not be loaded. Check your connection and reload the page.";
    return;
  }

  pageEngine.setLoop(0, pageEngine.duration);
  new Timeline(document.getElementById("mushra-timeline"), pageEngine, {
    waveform: REFERENCE_ID,
    label: "Playback position and loop region",
  });
  for (const engine of engines()) engine.addListener(() => updateControls());
  playButton.addEventListener("click", togglePlay);
  for (const button of buttons) {
    button.addEventListener("click", () => choose(button.dataset.group, button.dataset.signal));
    button.disabled = false;
  }
  document.addEventListener("keydown", onKeyDown);
  playButton.disabled = false;
  root.dataset.state = "ready";
  updateControls();
}

main();
