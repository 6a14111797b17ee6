// A replica group: its replicas (the autoscaler's state and libvirt's), scale to N (shown as
// pending until the autoscaler takes it, then applied, with the count following), the policy
// settings in words, the warm pool when there is one, charts with ranges, and the decision log.
// One refresh reads the group, its chart frame and its log and paints them together; a 1 h or
// 24 h frame is read again only every rangePollMs (ui.js, RangedFrame).

import { api, Poller } from "../api.js";
import { h, replace, fmt, section, table, dl, stateBadge, actionForm, field, RangedFrame } from "../ui.js";
import { groupCharts, DECISION_KINDS } from "./overview.js";

const SERVING = new Set(["spawning", "starting", "ready"]);

// The policy's settings in words, in the order an operator reads them; a key this list does not
// know is still shown in words ("stabilization_s" as "stabilization", its value in seconds).
const POLICY_WORDS = [
  ["name", "policy", String],
  ["high", "scale out above", (v) => fmt.pct(v)],
  ["window_s", "window out", fmt.secs],
  ["low", "scale in below", (v) => fmt.pct(v)],
  ["window_in_s", "window in", fmt.secs],
  ["target", "target mean CPU", (v) => fmt.pct(v)],
  ["tolerance", "tolerance", (v) => `± ${fmt.pct(v)}`],
  ["stabilization_s", "stabilization", fmt.secs],
  ["target_in_flight", "requests in flight per replica", (v) => (v ? String(v) : "its vCPUs")],
  ["utilization", "aimed at", (v) => `${fmt.pct(v)} of that`],
  ["stable_window_s", "stable window", fmt.secs],
  ["panic_window_s", "panic window", fmt.secs],
  ["panic_threshold", "panic at", (v) => `${v} x the ready replicas`],
  ["latency_p95_s", "p95 latency bound", (v) => (v ? fmt.secs(v) : "off")],
  ["max_step", "at most per step", (v) => fmt.n(v, "replica")],
  ["cooldown_s", "cooldown", fmt.secs],
  ["warmup_s", "warm-up", fmt.secs],
];

export function policyWords(p) {
  const known = new Set(POLICY_WORDS.map(([k]) => k));
  const pairs = POLICY_WORDS.filter(([k]) => k in p).map(([k, label, f]) => [label, f(p[k])]);
  for (const [k, v] of Object.entries(p)) {
    if (known.has(k)) continue;
    const secs = k.endsWith("_s");
    pairs.push([k.replace(/_s$/, "").replaceAll("_", " "), secs ? fmt.secs(v) : String(v)]);
  }
  return pairs;
}

const PARKED = { paused: "paused (suspended, RAM held)", saved: "saved (managed save, RAM on disk)",
                 stopped: "stopped (shut off: a cold boot, but no clone or define)" };

function warmPool(w, replicas) {
  if (!w || !w.size) {
    return h("p", { class: "muted", dataset: { size: 0 } }, "No warm pool: a scale-out or a replacement boots a new VM.");
  }
  const warm = replicas.filter((r) => r.warm).length;
  return h("div", { dataset: { size: w.size } }, dl([
    ["size", `${fmt.n(w.size, "warm replica")} kept (${warm} now)`],
    ["parked as", PARKED[w.state] || String(w.state)],
    ["on scale-in", w.reuse_on_scale_in ? "a drained replica goes back into the pool when it is short" : "drained replicas are removed"],
  ]));
}

export function groupPage(el, name) {
  const g = encodeURIComponent(name);
  const ranged = new RangedFrame(`/v1/groups/${g}/metrics`);
  const summary = h("div", { id: "group-summary" });
  const scaleStatus = h("p", { id: "scale-state", role: "status", "aria-live": "polite", dataset: { state: "idle" } });
  const replicasBox = h("div", { id: "group-replicas" });
  const policyBox = h("div", { id: "group-policy" });
  const warmBox = h("div", { id: "group-warm" });
  const logBox = h("div", { id: "group-log" });
  const charts = groupCharts(name, "grp", { load: true });
  let asked = null;         // what this page asked for, to follow it to "applied"
  let group = null;
  let polls = 0;            // polls started; a poll that started before the ask cannot tell it applied
  let trusted = false;      // the group shown was read after the ask
  const seen = [];          // the states this page has shown, in order (data-seen)

  const form = actionForm({
    id: "scale-form", submit: "Scale",
    describe: "Asks the autoscaler for N replicas once; it applies it on its next tick, then its policy goes on from N.",
    fields: [field("Replicas", h("input", { type: "number", name: "replicas", min: 0, required: true, value: 1, class: "count" }), "replicas")],
    run: async (fd) => {
      const n = Number(fd.get("replicas"));
      const r = await api.post(`/v1/groups/${g}/scale`, { replicas: n });
      asked = { replicas: r.replicas, ts: Date.now() / 1000, after: polls };
      trusted = false;
      paintScale();
      poller.now();
      return `asked for ${r.replicas} replicas`;
    },
  });

  replace(el, h("h1", {}, `Group ${name}`), section("Now", summary, scaleStatus),
    section("Replicas", replicasBox), section("Scale", form),
    section("Charts", ranged.picker("grp-range", () => poller.now()),
      h("div", { class: "pair" }, charts.count.el, charts.cpu.el),
      h("div", { class: "pair" }, charts.inFlight.el, charts.p95.el)),
    section("Policy", policyBox), section("Warm pool", warmBox), section("Decision log", logBox));

  function serving(gr) {
    return gr.replicas.filter((r) => r.replica_state === undefined || SERVING.has(r.replica_state)).length;
  }

  function mark(state) {
    scaleStatus.dataset.state = state;
    if (seen.at(-1) !== state) seen.push(state);
    scaleStatus.dataset.seen = seen.join(",");
  }

  function paintScale() {
    if (!group) return;
    const n = group.replicas.length;
    const pending = group.desired_override;
    if (pending || (asked && !trusted)) {
      const want = pending ? pending.replicas : asked.replicas;
      mark("pending");
      replace(scaleStatus, h("span", { class: "badge warn" }, "pending"),
        ` ${want} replicas asked ${fmt.ago(pending ? pending.ts : asked.ts)}; the autoscaler takes it on its next tick. Now ${n}.`);
    } else if (asked) {
      const done = n === asked.replicas;
      mark(done ? "applied" : "applying");
      replace(scaleStatus, h("span", { class: `badge ${done ? "ok" : "warn"}` }, done ? "applied" : "applied, replicas following"),
        ` asked for ${asked.replicas}; ${fmt.n(n, "replica")} now.`);
    } else {
      scaleStatus.dataset.state = "idle";
      scaleStatus.textContent = "";
    }
  }

  const poller = new Poller(async () => {
    const started = ++polls;
    const [gr, , ev] = await Promise.all([
      api.get(`/v1/groups/${g}`),
      ranged.read(api.get),
      api.get(`/v1/events?group=${g}&kind=${DECISION_KINDS},failed,replaced,scale_request&order=desc&limit=25`)]);
    group = gr;
    if (asked && started > asked.after) trusted = true;
    const n = group.replicas.length;
    el.dataset.replicas = n;
    el.dataset.group = name;
    const input = form.querySelector("input[name=replicas]");
    input.min = group.min;
    input.max = group.max;
    if (!form.dataset.touched) { input.value = n; }
    replace(summary, h("p", {},
      h("strong", { class: "replica-count" }, fmt.n(n, "replica")),
      ` (${serving(group)} serving or starting), min ${group.min}, max ${group.max}; each ${fmt.vcpu(group.vcpus)}, ${fmt.mib(group.memory_mib)}`));
    paintScale();
    replace(replicasBox, table(["replica", "host", "autoscaler state", "libvirt state", "CPU (last)"], group.replicas.map((r) => {
      const last = (r.cpu || []).at(-1);
      return h("tr", { dataset: { replica: r.name } }, h("td", {}, r.name),
        h("td", {}, r.pmid ? h("a", { href: `#/hosts/${r.pmid}` }, r.host) : r.host),
        h("td", {}, stateBadge(r.replica_state ?? "–")), h("td", {}, stateBadge(r.domain_state ?? r.state)),
        h("td", { class: "cpu" }, last === undefined ? "–" : fmt.share(last)));
    }), "no replicas"));
    replace(policyBox, dl(policyWords(group.policy || {})));
    replace(warmBox, warmPool(group.warm_pool, group.replicas));
    if (ranged.frame) charts.update(ranged.frame);
    replace(logBox, table(["time", "kind", "replica", "reason"], ev.events.map((e) => h("tr", { dataset: { kind: e.kind } },
      h("td", {}, fmt.time(e.ts)), h("td", {}, e.kind), h("td", {}, e.subject || "–"), h("td", { class: "message" }, e.message))),
    "no decisions yet"));
  }, 2500);
  poller.start();
  form.querySelector("input[name=replicas]").addEventListener("input", () => { form.dataset.touched = "1"; });

  return () => { poller.stop(); charts.destroy(); if (form.cleanup) form.cleanup(); };
}
