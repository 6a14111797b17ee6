// Small DOM helpers: elements built with h() (text is never parsed as HTML), formatters
// that always carry a unit, and the pieces every page shares (an action form that is
// read-only without a token and shows the API's own message next to it).

import { ApiError, Disconnected, onTokenChange, token } from "./api.js";

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) { el.replaceChildren(); append(el, children); return el; }

// -- formatting: every number with its unit -----------------------------------------------------

// From this many MiB on, memory is written in GiB (text, legends and chart axes alike).
export const GIB_FROM_MIB = 10240;

export const fmt = {
  pct(v, digits = 0) { return v === null || v === undefined ? "–" : `${(v * 100).toFixed(digits)} %`; },
  // A CPU share for display, at most 100 %: under TCG a domain's cpu.time can advance a little
  // faster than the wall clock between two samples (QEMU's accounting, not real extra work), so
  // a saturated VM reads 101 %. The stored figure stays as measured; only the display clamps.
  share(v, digits = 0) { return v === null || v === undefined ? "–" : fmt.pct(Math.min(1, Math.max(0, v)), digits); },
  // Memory in MiB, or in GiB from GIB_FROM_MIB on. `ref` picks the unit instead of the value,
  // so figures read side by side (a host's given, reserved and free RAM; a chart's legend and
  // its axis) share one unit: the unit of the largest of them.
  mib(v, ref = v) {
    if (v === null || v === undefined) return "–";
    if (ref >= GIB_FROM_MIB) return `${v === 0 ? 0 : (v / 1024).toFixed(1)} GiB`;
    return `${Math.round(v)} MiB`;
  },
  gib(bytes) { return bytes === null || bytes === undefined ? "–" : `${(bytes / 2 ** 30).toFixed(1)} GiB`; },
  // "1 vCPU", "2 vCPUs", "1 cms VM", "3 replicas"
  n(count, word, plural = `${word}s`) { return `${count ?? "–"} ${count === 1 ? word : plural}`; },
  vcpu(n) { return n === null || n === undefined ? "–" : fmt.n(n, "vCPU"); },
  cpus(n) { return fmt.n(n, "CPU"); },
  // One clock everywhere: 24-hour, the charts' axes without seconds (fmt.clock), tables with.
  time(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString([], { hourCycle: "h23" }) : "–"; },
  clock(ts) { return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }); },
  datetime(ts) { return ts ? new Date(ts * 1000).toLocaleString([], { hourCycle: "h23" }) : "–"; },
  // A duration in words: "0 s", "30 s", "20 min", "24 h".
  secs(s) {
    if (s === null || s === undefined) return "–";
    if (s < 120) return `${+Number(s).toFixed(1)} s`;
    if (s < 7200) return `${+(s / 60).toFixed(1)} min`;
    return `${+(s / 3600).toFixed(1)} h`;
  },
  ago(ts) {
    if (!ts) return "–";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  },
  num(v, unit, digits = 0) { return v === null || v === undefined ? "–" : `${Number(v).toFixed(digits)} ${unit}`; },
};

// A horizontal bar: used of total, with the figure in words beside it.
export function bar(label, used, total, text) {
  const frac = total > 0 ? Math.max(0, Math.min(1, used / total)) : 0;
  return h("div", { class: "bar", role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100,
                    "aria-valuenow": Math.round(frac * 100), dataset: { used, total } },
    h("span", { class: "bar-label" }, label),
    h("span", { class: "bar-track" }, h("span", { class: `bar-fill${frac > 0.85 ? " hot" : ""}`, style: `width:${(frac * 100).toFixed(1)}%` })),
    h("span", { class: "bar-text" }, text));
}

// A table; each cell also carries its column's name (data-label), which a narrow screen shows
// beside the value when app.css lays every row out as a card of its own.
export function table(head, rows, empty = "none") {
  for (const row of rows) {
    [...row.children].forEach((td, i) => { if (head[i] !== undefined) td.dataset.label = head[i]; });
  }
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: head.length, class: "muted empty" }, empty)))));
}

export function section(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

export function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function stateBadge(state) {
  const s = String(state || "unknown");
  const cls = ["running", "ready", "up"].includes(s) ? "ok"
    : ["starting", "spawning", "draining", "paused", "pending", "warm", "warming", "suspect", "fencing"]
      .some((w) => s.includes(w)) ? "warn"
    : ["failed", "crashed", "shutoff", "down", "unknown"].includes(s) ? "bad" : "";
  return h("span", { class: `badge ${cls}` }, s);
}

// -- actions ------------------------------------------------------------------------------------

// A form for one action. `fields` are built by the caller (each with its <label>); `run`
// gets the FormData and returns a promise; `confirm`, when given, is asked first (a dialog's
// promise of true or false), and the form says "working…" only once it said yes. Without a token the submit button is disabled
// and the reason is written beside it; an API error (401, 4xx) is shown next to the form in
// the API's own words.
export function actionForm({ id, title, fields, submit, run, confirm = null, danger = false, describe }) {
  const status = h("p", { class: "form-status", role: "status", "aria-live": "polite", id: `${id}-status` });
  const error = h("p", { class: "form-error", role: "alert", id: `${id}-error`, hidden: true });
  const button = h("button", { type: "submit", class: danger ? "danger" : "", "aria-describedby": `${id}-why` }, submit);
  const why = h("span", { class: "why", id: `${id}-why` });
  const form = h("form", { id, class: "action", novalidate: false },
    title ? h("h3", {}, title) : null, describe ? h("p", { class: "muted" }, describe) : null,
    h("div", { class: "fields" }, fields), h("div", { class: "submit" }, button, why), error, status);
  const sync = () => {
    const has = !!token.get();
    button.disabled = !has;
    why.textContent = has ? "" : "Read-only: enter the API token at the top to act.";
  };
  sync();
  const off = onTokenChange(sync);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!form.reportValidity()) return;
    error.hidden = true;
    error.textContent = "";
    status.textContent = "";
    if (confirm && !await confirm()) { status.textContent = "cancelled"; return; }
    status.textContent = "working…";
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const msg = await run(new FormData(form), form);
      status.textContent = msg || "done";
    } catch (e) {
      status.textContent = "";
      showError(error, e);
    } finally {
      form.removeAttribute("aria-busy");
      sync();
    }
  });
  form.cleanup = off;
  return form;
}

export function showError(el, e) {
  el.hidden = false;
  if (e instanceof ApiError) {
    el.textContent = `${e.status} ${e.title}: ${e.description || e.title}`;
  } else if (e instanceof Disconnected) {
    el.textContent = `The API did not answer: ${e.message}`;
  } else {
    el.textContent = String(e && e.message ? e.message : e);
  }
  el.dataset.status = e && e.status ? e.status : "";
}

export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

export function select(name, options, value) {
  return h("select", { name }, options.map(([v, text]) => h("option", { value: v, selected: String(v) === String(value) }, text)));
}

// A confirmation in a modal <dialog>; resolves true when confirmed.
export function confirmDialog(title, text, confirmLabel) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "button", class: "danger", id: "confirm-ok" }, confirmLabel);
    const cancel = h("button", { type: "button", id: "confirm-cancel" }, "Cancel");
    const dlg = h("dialog", { class: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title), h("p", {}, text), h("div", { class: "submit" }, cancel, ok));
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    ok.addEventListener("click", () => done(true));
    cancel.addEventListener("click", () => done(false));
    dlg.addEventListener("cancel", (ev) => { ev.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

// Range buttons (5 min, 1 h, 24 h) as a radio group. A longer range is polled less often: its
// points are further apart (300 points a range), and its read costs the server more.
export const RANGES = [["5m", "5 min", 300, 5000], ["1h", "1 h", 3600, 15000], ["24h", "24 h", 86400, 60000]];
export function rangePicker(name, current, onPick) {
  return h("fieldset", { class: "ranges" }, h("legend", {}, "Range"),
    RANGES.map(([key, label]) => {
      const id = `${name}-${key}`;
      return h("span", {}, h("input", { type: "radio", name, id, value: key, checked: key === current,
                                        onchange: () => onPick(key) }), h("label", { for: id }, label));
    }));
}
export function rangeSeconds(key) { return (RANGES.find((r) => r[0] === key) || RANGES[0])[2]; }
export function rangePollMs(key) { return (RANGES.find((r) => r[0] === key) || RANGES[0])[3]; }

// A page's chart frame for the range its picker chose. The frame is read again only when the
// range's rangePollMs has passed since the last read, or the range changed; a read that comes
// back after the range changed is dropped (the next refresh reads the new one). `path` is the
// metrics resource (`/v1/vms/3/metrics`); `frame` is the last one kept, or null.
export class RangedFrame {
  constructor(path, key = RANGES[0][0]) { this.path = path; this.range = key; this.frame = null; this.at = 0; }
  // The range buttons: a pick forgets the frame and calls onPick (the page refreshes at once).
  picker(name, onPick) { return rangePicker(name, this.range, (k) => { this.range = k; this.frame = null; onPick(); }); }
  // This refresh's read of the range's frame (300 points, at least 2 s apart) through get
  // (api.get), kept when it comes back; null while the frame kept is fresh.
  read(get) {
    if (this.frame && Date.now() - this.at < rangePollMs(this.range)) return null;
    const want = this.range;
    const span = rangeSeconds(want);
    const now = Date.now() / 1000;
    return get(`${this.path}?since=${now - span}&until=${now}&step=${Math.max(2, span / 300)}`).then((m) => {
      if (m && want === this.range) this.keep(m);
      return m;
    });
  }
  keep(m) { this.frame = m; this.at = Date.now(); }
}
