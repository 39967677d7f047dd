// Method of adjustment: the listener steps a looping tone down to just audible.
//
// The level is an attenuation in dB below the tone file's level, applied by
// a GainNode; the confirmed attenuation goes into the run's hidden field.

import { ScreeningPlayer } from "./player.js";

const player = new ScreeningPlayer();
const sections = [...document.querySelectorAll("[data-run]")];
const submit = document.getElementById("continue");

function activate(section) {
  const step = Number(section.dataset.step);
  const floor = Number(section.dataset.floor);
  let level = Number(section.dataset.start);
  const buttons = Object.fromEntries(
    [...section.querySelectorAll("button[data-action]")].map((button) => [button.dataset.action, button]),
  );
  const setLevel = (value) => {
    level = Math.min(0, Math.max(floor, value));
    player.setGainDb(level);
  };
  buttons.play.addEventListener("click", () => {
    buttons.play.disabled = true;
    for (const name of ["softer", "louder", "done"]) {
      buttons[name].disabled = false;
    }
    player.play(section.dataset.url, { loop: true, gainDb: level }).catch((error) => {
      buttons.play.after(Object.assign(document.createElement("p"), { className: "caqe-error", textContent: error.message }));
    });
  });
  buttons.softer.addEventListener("click", () => setLevel(level - step));
  buttons.louder.addEventListener("click", () => setLevel(level + step));
  buttons.done.addEventListener("click", () => {
    player.stop();
    section.querySelector("input[type=hidden]").value = String(level);
    section.hidden = true;
    const next = sections[sections.indexOf(section) + 1];
    if (next) {
      next.hidden = false;
    } else {
      document.getElementById("all-done").hidden = false;
      submit.disabled = false;
    }
  });
}

sections.forEach(activate);
