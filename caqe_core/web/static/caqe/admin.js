// Refreshes the admin dashboard from /admin/api/progress without reloading the page.
// The markup matches caqe/admin.html, which renders the same numbers on the server.

function percent(value) {
  return value === null || value === undefined ? "n/a" : `${Math.round(value * 100)}%`;
}

function seconds(value) {
  return value === null || value === undefined ? "n/a" : `${value.toFixed(1)} s`;
}

function cell(text, className) {
  const element = document.createElement("td");
  element.textContent = String(text);
  if (className) element.className = className;
  return element;
}

function row(...cells) {
  const element = document.createElement("tr");
  element.append(...cells);
  return element;
}

function emptyRow(columns, text) {
  const element = cell(text);
  element.colSpan = columns;
  return row(element);
}

function progressBar(condition) {
  const bar = document.createElement("div");
  bar.className = "admin-bar";
  bar.title = `${condition.completed} completed, ${condition.reserved} reserved of ${condition.target}`;
  const share = (count) => (condition.target ? Math.min(100, (100 * count) / condition.target) : 0);
  const reserved = document.createElement("span");
  reserved.className = "reserved";
  reserved.style.width = `${share(condition.completed + condition.reserved)}%`;
  const completed = document.createElement("span");
  completed.style.width = `${share(condition.completed)}%`;
  bar.append(reserved, completed);
  const container = document.createElement("td");
  container.append(bar);
  return container;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

export function renderProgress(data) {
  setText("updated", `Updated ${data.generated_at}`);
  setText("participants-total", data.participants_total);
  setText("completion-rate", percent(data.completion_rate));
  setText("trials", `${data.completed_trials} / ${data.target_trials}`);
  setText("reservations", data.active_reservations);
  setText("median-time", seconds(data.median_trial_seconds));
  setText("excluded", data.exclusions.participants);

  document.querySelector("#conditions tbody").replaceChildren(
    ...data.conditions.map((condition) =>
      row(
        cell(condition.key),
        cell(condition.item),
        cell(condition.scale ?? ""),
        progressBar(condition),
        cell(condition.completed, "number"),
        cell(condition.reserved, "number"),
        cell(condition.target, "number"),
        cell(seconds(condition.median_seconds), "number"),
      ),
    ),
  );

  const statuses = Object.entries(data.participants).sort(([a], [b]) => a.localeCompare(b));
  document.querySelector("#statuses tbody").replaceChildren(
    ...(statuses.length
      ? statuses.map(([status, count]) => row(cell(status), cell(count, "number")))
      : [emptyRow(2, "None yet")]),
  );

  const rules = Object.entries(data.exclusions.by_rule);
  document.querySelector("#exclusions tbody").replaceChildren(
    ...(rules.length
      ? rules.map(([rule, count]) => row(cell(rule), cell(count, "number")))
      : [emptyRow(2, "None")]),
  );

  document.querySelector("#screening tbody").replaceChildren(
    ...(data.screening.length
      ? data.screening.map((step) =>
          row(
            cell(step.step),
            cell(step.passed, "number"),
            cell(step.failed, "number"),
            cell(percent(step.pass_rate), "number"),
          ),
        )
      : [emptyRow(4, "No screening results yet")]),
  );
}

export function startProgressRefresh(url, intervalMs = 5000) {
  async function refresh() {
    try {
      const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) {
        console.warn(`Progress refresh failed: HTTP ${response.status}`);
        return;
      }
      renderProgress(await response.json());
    } catch (error) {
      console.warn("Progress refresh failed", error);
    }
  }
  return setInterval(refresh, intervalMs);
}
