// Refreshes the admin dashboard's numbers without reloading the page.

export function startProgressRefresh(url, intervalMs = 5000) {
  async function refresh() {
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) return;
      const data = await response.json();
      document.getElementById("summary").textContent =
        `${data.completed_trials} of ${data.target_trials} trials completed; ` +
        `${data.active_reservations} reserved now.`;
      const statuses = document.getElementById("statuses");
      statuses.replaceChildren(
        ...Object.entries(data.participants).map(([status, count]) => {
          const item = document.createElement("li");
          item.textContent = `${status}: ${count}`;
          return item;
        }),
      );
      const body = document.querySelector("#conditions tbody");
      body.replaceChildren(
        ...data.conditions.map((condition) => {
          const row = document.createElement("tr");
          for (const value of [condition.key, condition.item, condition.scale ?? "",
            condition.completed, condition.reserved, condition.target]) {
            const cell = document.createElement("td");
            cell.textContent = String(value);
            row.append(cell);
          }
          return row;
        }),
      );
    } catch (error) {
      console.warn("Progress refresh failed", error);
    }
  }
  setInterval(refresh, intervalMs);
}
