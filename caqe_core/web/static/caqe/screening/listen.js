// Listen-then-answer pages (hearing screening, headphone check, gold items).
//
// The calibration tone loops until it is stopped; playing it once unlocks
// the items. Each item's answer inputs unlock when its sound has played to
// the end, and `data-once` items cannot be played again.

import { ScreeningPlayer } from "./player.js";

const player = new ScreeningPlayer();
const items = document.getElementById("items");
const submit = document.getElementById("continue");
const calibration = document.getElementById("calibration-play");

function setButtonsDisabled(disabled) {
  for (const button of items.querySelectorAll("button[data-play]")) {
    if (!button.dataset.spent) {
      button.disabled = disabled;
    }
  }
}

function updateSubmit() {
  const inputs = [...items.querySelectorAll("[data-answer]")];
  const unlocked = inputs.length > 0 && inputs.every((input) => !input.disabled);
  submit.disabled = !unlocked;
}

function showError(button, error) {
  const message = document.createElement("p");
  message.className = "caqe-error";
  message.setAttribute("role", "alert");
  message.textContent = error.message;
  button.after(message);
}

if (calibration) {
  calibration.addEventListener("click", async () => {
    if (player.playing && calibration.dataset.active) {
      player.stop();
      return;
    }
    calibration.dataset.active = "yes";
    calibration.textContent = "Stop the tone";
    items.disabled = false;
    document.getElementById("items-locked").hidden = true;
    try {
      await player.play(calibration.dataset.play, { loop: true });
    } catch (error) {
      showError(calibration, error);
    }
    delete calibration.dataset.active;
    calibration.textContent = "Play the tone again";
  });
}

for (const item of items.querySelectorAll("[data-item]")) {
  const button = item.querySelector("button[data-play]");
  button.addEventListener("click", async () => {
    if (calibration) {
      delete calibration.dataset.active;
    }
    setButtonsDisabled(true);
    item.classList.add("caqe-playing");
    try {
      await player.play(button.dataset.play);
    } catch (error) {
      showError(button, error);
      setButtonsDisabled(false);
      item.classList.remove("caqe-playing");
      return;
    }
    item.classList.remove("caqe-playing");
    if (button.hasAttribute("data-once")) {
      button.dataset.spent = "yes";
      button.textContent = "Played";
    }
    for (const input of item.querySelectorAll("[data-answer]")) {
      input.disabled = false;
    }
    item.dataset.played = "yes";
    setButtonsDisabled(false);
    updateSubmit();
  });
}

document.getElementById("screening-form").addEventListener("submit", () => {
  player.stop();
});
