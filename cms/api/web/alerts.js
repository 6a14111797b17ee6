// Alerts: a failure or a scaling event that happens while the page is open raises an alert,
// whichever page is shown. The events feed is polled from the newest id seen when the page
// opened, so history does not raise alerts.
//
// They collapse into one line under the header: how many there are, how many are failures,
// and the newest in words; the line opens a drawer with each alert and its own dismiss button.
// The line and the drawer sit in the page's flow, never over it, so at 390 px they push the
// page down instead of covering it. A scaling alert is news, not a task: it dismisses itself
// after SCALING_TTL_MS. A failure stays until the operator dismisses it.

import { api, Poller } from "./api.js";
import { h, fmt, replace } from "./ui.js";

// A scale request is the operator's own ask: the alert is the autoscaler's answer to it.
const SCALING = new Set(["decision", "scale_out", "scale_in", "scale_override"]);
const SCALING_TTL_MS = 10000;
const MAX_KEPT = 50;

export function severity(kind) {
  if (kind.includes("fail") || kind === "crashed" || kind === "lost") return "failure";
  if (SCALING.has(kind)) return "scaling";
  return null;
}

export function startAlerts(root) {
  const toggle = h("button", { type: "button", class: "alerts-toggle", "aria-expanded": "false", "aria-controls": "alerts-drawer" });
  const clear = h("button", { type: "button", class: "alerts-clear" }, "Dismiss all");
  const drawer = h("div", { id: "alerts-drawer", class: "alerts-drawer", hidden: true });
  const bar = h("div", { class: "alerts-bar" }, toggle, clear);
  // What a screen reader announces when an alert arrives (the drawer may be closed).
  const live = h("p", { class: "sr-only", "aria-live": "assertive", id: "alerts-live" });
  root.append(bar, drawer);
  root.after(live);
  root.hidden = true;

  const paint = () => {
    const all = [...drawer.children];
    const failures = all.filter((a) => a.dataset.severity === "failure").length;
    root.dataset.count = all.length;
    root.dataset.failures = failures;
    root.hidden = all.length === 0;
    if (!all.length) { drawer.hidden = true; toggle.setAttribute("aria-expanded", "false"); return; }
    const newest = all[0];
    replace(toggle, h("span", { class: "alerts-caret", "aria-hidden": "true" }, drawer.hidden ? "▸" : "▾"),
      h("strong", { class: "alerts-count" }, fmt.n(all.length, "alert")),
      failures ? h("span", { class: "badge bad" }, fmt.n(failures, "failure")) : null,
      h("span", { class: "alerts-newest" }, `newest: ${newest.dataset.summary}`));
    root.dataset.severity = failures ? "failure" : "scaling";
  };
  toggle.addEventListener("click", () => {
    drawer.hidden = !drawer.hidden;
    toggle.setAttribute("aria-expanded", String(!drawer.hidden));
    paint();
  });
  clear.addEventListener("click", () => { drawer.replaceChildren(); paint(); });

  const show = (e, sev) => {
    const summary = `${e.kind}${e.group ? ` · ${e.group}` : ""}${e.subject ? ` · ${e.subject}` : ""}: ${e.message}`;
    const close = h("button", { type: "button", class: "close", "aria-label": "Dismiss alert" }, "×");
    const el = h("div", { class: `alert ${sev}`, role: "alert",
                          dataset: { kind: e.kind, id: e.id, group: e.group, severity: sev, summary } },
      h("strong", {}, sev === "failure" ? "Failure" : "Scaling"), ` ${fmt.time(e.ts)} · `,
      h("span", { class: "alert-msg" }, summary), close);
    const remove = () => { el.remove(); paint(); };
    close.addEventListener("click", remove);
    if (sev !== "failure") setTimeout(remove, SCALING_TTL_MS);
    drawer.prepend(el);
    live.textContent = `${sev === "failure" ? "Failure" : "Scaling"}: ${summary}`;
    // Past the cap the oldest scaling alert goes first; failures only when nothing else is left.
    while (drawer.children.length > MAX_KEPT) {
      const old = [...drawer.children].reverse().find((a) => a.dataset.severity !== "failure") || drawer.lastElementChild;
      old.remove();
    }
  };

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
      if (sev) show(e, sev);
    }
    if (events.length) paint();
    root.dataset.since = since;
  }, 2000).start();
  return poller;
}
