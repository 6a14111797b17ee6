// Alerts: a failure or a scaling event that happens while the page is open shows as a
// visible alert (role="alert"), whichever page is shown. The events feed is polled from the
// newest id seen when the page opened, so history does not raise alerts.

import { api, Poller } from "./api.js";
import { h, fmt } from "./ui.js";

// A scale request is the operator's own ask: the alert is the autoscaler's answer to it.
const SCALING = new Set(["decision", "scale_out", "scale_in", "scale_override"]);
const MAX_SHOWN = 6;

export function severity(kind) {
  if (kind.includes("fail") || kind === "crashed" || kind === "lost") return "failure";
  if (SCALING.has(kind)) return "scaling";
  return null;
}

export function startAlerts(root) {
  let since = null;
  const poller = new Poller(async () => {
    if (since === null) {
      const last = await api.get("/v1/events?order=desc&limit=1");
      since = last.events.length ? last.events[0].id : 0;
      root.dataset.since = since;
      return;
    }
    const { events } = await api.get(`/v1/events?since_id=${since}&limit=200`);
    for (const e of events) {
      since = Math.max(since, e.id);
      const sev = severity(e.kind);
      if (sev) show(root, e, sev);
    }
    root.dataset.since = since;
  }, 2000).start();
  return poller;
}

function show(root, e, sev) {
  const close = h("button", { type: "button", class: "close", "aria-label": "Dismiss alert" }, "×");
  const el = h("div", { class: `alert ${sev}`, role: "alert", dataset: { kind: e.kind, id: e.id, group: e.group, severity: sev } },
    h("strong", {}, sev === "failure" ? "Failure" : "Scaling"),
    ` ${fmt.time(e.ts)} · ${e.kind}${e.group ? ` · ${e.group}` : ""}${e.subject ? ` · ${e.subject}` : ""}: `,
    h("span", { class: "alert-msg" }, e.message), close);
  close.addEventListener("click", () => el.remove());
  root.prepend(el);
  while (root.children.length > MAX_SHOWN) root.lastElementChild.remove();
}
