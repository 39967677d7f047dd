// Keeps the unsubmitted state of one trial page in localStorage, so a reload
// or a browser crash does not lose the listener's work.
//
// A draft is stored under "caqe.draft." plus the trial's submit URL, which is
// unique per reservation, so two trials never share a draft. The stored
// document also repeats that URL and a format version, and a draft whose
// JSON, version or URL does not match is ignored and removed. Test types
// decide what goes into `state` and check each entry when they restore it.
//
// Submitted responses are kept separately (response-queue.js) until the
// server acknowledges them. The page removes its draft on that
// acknowledgement.

const STORAGE_PREFIX = "caqe.draft.";
const FORMAT_VERSION = 1;
// Drafts of other trials (a page that crashed after its response was
// acknowledged, or a trial the server has since moved past) are removed once
// they are this old, so localStorage does not fill up on a shared computer.
// The 7 days are a chosen bound, far longer than a trial page stays open.
const STALE_AFTER_MS = 7 * 24 * 3600 * 1000;

function readStored(name) {
  try {
    return localStorage.getItem(name);
  } catch (error) {
    console.warn("Could not read localStorage", error);
    return null;
  }
}

function removeStored(name) {
  try {
    localStorage.removeItem(name);
  } catch (error) {
    console.warn("Could not clear localStorage", error);
  }
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// Returns the parsed draft document, or null for text that is not one.
function parseDraft(text) {
  let document = null;
  try {
    document = JSON.parse(text);
  } catch (error) {
    return null;
  }
  if (!isPlainObject(document) || document.version !== FORMAT_VERSION) return null;
  if (typeof document.trial !== "string" || !isPlainObject(document.state)) return null;
  if (!Number.isFinite(document.savedAt)) return null;
  return document;
}

function removeStaleDrafts(ownName) {
  const names = [];
  try {
    for (let i = 0; i < localStorage.length; i += 1) {
      const name = localStorage.key(i);
      if (name && name.startsWith(STORAGE_PREFIX) && name !== ownName) names.push(name);
    }
  } catch (error) {
    console.warn("Could not read localStorage", error);
    return;
  }
  const now = Date.now();
  for (const name of names) {
    const draft = parseDraft(readStored(name));
    if (draft === null || now - draft.savedAt > STALE_AFTER_MS) removeStored(name);
  }
}

// The draft of the trial that posts its response to `trialUrl`.
export class TrialDraft {
  constructor(trialUrl) {
    this.trial = String(trialUrl);
    this.name = STORAGE_PREFIX + this.trial;
    removeStaleDrafts(this.name);
  }

  // Returns the stored state object, or null when there is none. A corrupt
  // draft, or one that belongs to another trial, is removed and gives null.
  load() {
    const text = readStored(this.name);
    if (text === null) return null;
    const draft = parseDraft(text);
    if (draft === null || draft.trial !== this.trial) {
      console.warn("Ignoring an invalid draft of this trial");
      removeStored(this.name);
      return null;
    }
    return draft.state;
  }

  save(state) {
    const draft = { version: FORMAT_VERSION, trial: this.trial, savedAt: Date.now(), state };
    try {
      localStorage.setItem(this.name, JSON.stringify(draft));
    } catch (error) {
      // A full or disabled localStorage only costs the draft, never the page.
      console.warn("Could not keep the draft in localStorage", error);
    }
  }

  clear() {
    removeStored(this.name);
  }
}
