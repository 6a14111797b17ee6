// A replica group: its replicas (the autoscaler's state and libvirt's), scale to N (shown as
// pending until the autoscaler takes it, then applied, with the count following), the policy
// settings, the warm pool when there is one, charts with ranges, and the decision log.

import { api, Poller } from "../api.js";
import { h, replace, fmt, section, table, dl, stateBadge, actionForm, field, rangePicker, rangeSeconds, rangePollMs } from "../ui.js";
import { groupCharts, DECISION_KINDS } from "./overview.js";

const SERVING = new Set(["spawning", "starting", "ready"]);

export function groupPage(el, name) {
  let range = "5m";
  const g = encodeURIComponent(name);
  const summary = h("div", { id: "group-summary" });
  const scaleStatus = h("p", { id: "scale-state", role: "status", "aria-live": "polite", dataset: { state: "idle" } });
  const replicasBox = h("div", { id: "group-replicas" });
  const policyBox = h("div", { id: "group-policy" });
  const warmBox = h("div", { id: "group-warm" });
  const logBox = h("div", { id: "group-log" });
  const charts = groupCharts(name, "grp");
  let asked = null;         // what this page asked for, to follow it to "applied"
  let group = null;
  let polls = 0;            // polls started; a poll that started before the ask cannot tell it applied
  let trusted = false;      // the group shown was read after the ask
  const seen = [];          // the states this page has shown, in order (data-seen)

  const form = actionForm({
    id: "scale-form", submit: "Scale",
    describe: "Asks the autoscaler for N replicas once; it applies it on its next tick, then its policy goes on from N.",
    fields: [field("Replicas", h("input", { type: "number", name: "replicas", min: 0, required: true, value: 1 }), "replicas")],
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
    section("Charts", rangePicker("grp-range", range, (k) => { range = k; chartPoller.every = rangePollMs(k); chartPoller.now(); }),
      h("div", { class: "pair" }, charts.count.el, charts.cpu.el)),
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
        ` asked for ${asked.replicas}; ${n} replica${n === 1 ? "" : "s"} now.`);
    } else {
      scaleStatus.dataset.state = "idle";
      scaleStatus.textContent = "";
    }
  }

  const poller = new Poller(async () => {
    const started = ++polls;
    group = await api.get(`/v1/groups/${g}`);
    if (asked && started > asked.after) trusted = true;
    const n = group.replicas.length;
    el.dataset.replicas = n;
    el.dataset.group = name;
    const input = form.querySelector("input[name=replicas]");
    input.min = group.min;
    input.max = group.max;
    if (!form.dataset.touched) { input.value = n; }
    replace(summary, h("p", {},
      h("strong", { class: "replica-count" }, `${n} replica${n === 1 ? "" : "s"}`),
      ` (${serving(group)} serving or starting), min ${group.min}, max ${group.max}; each ${fmt.vcpu(group.vcpus)}, ${fmt.mib(group.memory_mib)}`));
    paintScale();
    replace(replicasBox, table(["replica", "host", "autoscaler state", "libvirt state", "CPU (last)"], group.replicas.map((r) => {
      const last = (r.cpu || []).at(-1);
      return h("tr", { dataset: { replica: r.name } }, h("td", {}, r.name),
        h("td", {}, r.pmid ? h("a", { href: `#/hosts/${r.pmid}` }, r.host) : r.host),
        h("td", {}, stateBadge(r.replica_state ?? "–")), h("td", {}, stateBadge(r.domain_state ?? r.state)),
        h("td", {}, last === undefined ? "–" : fmt.pct(last)));
    }), "no replicas"));
    const p = group.policy || {};
    replace(policyBox, dl(Object.entries(p).map(([k, v]) => [k, typeof v === "number" && /high|low|target|tolerance/.test(k) ? fmt.pct(v) : (k.endsWith("_s") ? `${v} s` : String(v))])));
    const warm = group.warm_pool ?? group.warm ?? null;
    if (warm) {
      replace(warmBox, typeof warm === "object" && !Array.isArray(warm)
        ? dl(Object.entries(warm).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]))
        : h("pre", {}, JSON.stringify(warm, null, 2)));
    } else {
      replace(warmBox, h("p", { class: "muted" }, "This group has no warm pool."));
    }
  }, 2000);
  poller.start();
  form.querySelector("input[name=replicas]").addEventListener("input", () => { form.dataset.touched = "1"; });

  const chartPoller = new Poller(async () => {
    const span = rangeSeconds(range);
    const now = Date.now() / 1000;
    const [m, ev] = await Promise.all([
      api.get(`/v1/groups/${g}/metrics?since=${now - span}&until=${now}&step=${Math.max(2, span / 300)}`),
      api.get(`/v1/events?group=${g}&kind=${DECISION_KINDS},failed,replaced,scale_request&order=desc&limit=25`)]);
    charts.update(m);
    replace(logBox, table(["time", "kind", "replica", "reason"], ev.events.map((e) => h("tr", { dataset: { kind: e.kind } },
      h("td", {}, fmt.time(e.ts)), h("td", {}, e.kind), h("td", {}, e.subject || "–"), h("td", {}, e.message))), "no decisions yet"));
  }, 4000);
  chartPoller.start();

  return () => { poller.stop(); chartPoller.stop(); charts.count.destroy(); charts.cpu.destroy(); if (form.cleanup) form.cleanup(); };
}
