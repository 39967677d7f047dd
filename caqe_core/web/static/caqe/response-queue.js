// Sends trial responses so that an accepted answer is never lost.
//
// A response is written to localStorage before it is sent and removed only
// when the server acknowledges it. Failed sends are retried with exponential
// backoff, and a page load first resends whatever an earlier page left
// behind. The idempotency key makes a resend of a stored response harmless.

const STORAGE_PREFIX = "caqe.pending.";
const MAX_DELAY_MS = 30000;

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function save(entry) {
  try {
    localStorage.setItem(STORAGE_PREFIX + entry.body.idempotency_key, JSON.stringify(entry));
  } catch (error) {
    console.warn("Could not keep the response in localStorage", error);
  }
}

function forget(key) {
  try {
    localStorage.removeItem(STORAGE_PREFIX + key);
  } catch (error) {
    console.warn("Could not clear localStorage", error);
  }
}

function pendingEntries() {
  const entries = [];
  try {
    for (let i = 0; i < localStorage.length; i += 1) {
      const name = localStorage.key(i);
      if (name && name.startsWith(STORAGE_PREFIX)) {
        entries.push(JSON.parse(localStorage.getItem(name)));
      }
    }
  } catch (error) {
    console.warn("Could not read localStorage", error);
  }
  return entries;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Sends one stored entry until the server acknowledges it or rejects it for good.
// Resolves with {ok: true, acknowledgement} or {ok: false, status, error}.
async function deliver(entry, onRetry) {
  let delay = 500;
  for (let attempt = 1; ; attempt += 1) {
    let response = null;
    try {
      response = await fetch(entry.url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CAQE-CSRF": entry.csrf },
        body: JSON.stringify(entry.body),
        credentials: "same-origin",
      });
    } catch (error) {
      response = null;
    }
    if (response && response.ok) {
      const acknowledgement = await response.json();
      forget(entry.body.idempotency_key);
      return { ok: true, acknowledgement };
    }
    if (response && response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
      // The server rejected the response itself: retrying cannot help.
      let error = { error: `HTTP ${response.status}` };
      try { error = await response.json(); } catch (_) { /* keep the status */ }
      forget(entry.body.idempotency_key);
      return { ok: false, status: response.status, error };
    }
    if (onRetry) onRetry(attempt, delay);
    await sleep(delay);
    delay = Math.min(delay * 2, MAX_DELAY_MS);
  }
}

// Stores `payload` (with `response`, `events`, `time_on_page_ms`) and sends it.
export async function submitResponse(url, csrf, payload, { onRetry } = {}) {
  const entry = { url, csrf, body: { idempotency_key: newKey(), ...payload } };
  save(entry);
  return deliver(entry, onRetry);
}

// Resends responses left by an earlier page (a crash, a closed tab, a lost connection).
export async function flushPending({ onRetry } = {}) {
  const results = [];
  for (const entry of pendingEntries()) {
    results.push(await deliver(entry, onRetry));
  }
  return results;
}
