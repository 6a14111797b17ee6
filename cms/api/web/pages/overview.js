// Overview: hosts (CPU/RAM/disk bars, what cms runs there by kind, vCPUs against CPUs with the
// overcommit, and a live CPU chart with one line per domain: which VM eats the host), groups
// (replica count over time, mean CPU against the thresholds, the last decision in words), the
// API's VMs and the newest events.

import { api, Poller } from "../api.js";
import { TimeChart, constant } from "../charts.js";
import { h, replace, fmt, bar, table, section, stateBadge } from "../ui.js";

const LIVE_S = 300;
const GROUP_S = 600;
export const DECISION_KINDS = "decision,scale_override,scale_out,scale_in";

export function hostSummary(x) {
  const d = x.domains || {};
  const v = x.vcpus || {};
  const m = x.memory_mib || {};
  const disk = x.disk_bytes || {};
  const cpu = x.cpu || {};
  const kinds = `${d.vm ?? 0} API VM${d.vm === 1 ? "" : "s"} · ${d.replica ?? 0} replica${d.replica === 1 ? "" : "s"} · ${d.warm ?? 0} warm`;
  return h("div", { class: "host-figures" },
    bar("CPU", cpu.utilization ?? 0, 1,
        cpu.utilization === null || cpu.utilization === undefined ? "no sample in the last minute"
          : `${fmt.pct(cpu.utilization)} of ${fmt.cpus(v.cpus)} used by cms VMs (${fmt.ago(cpu.ts)})`),
    bar("RAM", m.given ?? 0, Math.max(1, (m.total ?? 0) - (m.reserve ?? 0)),
        `${fmt.mib(m.given)} given to VMs of ${fmt.mib((m.total ?? 0) - (m.reserve ?? 0))} (${fmt.mib(m.reserve)} reserved); ${fmt.mib(m.free)} free on the host`),
    bar("Disk", (disk.total ?? 0) - (disk.free ?? 0), disk.total ?? 0,
        `${fmt.gib((disk.total ?? 0) - (disk.free ?? 0))} used of ${fmt.gib(disk.total)} in the pool`),
    h("p", { class: "kinds", dataset: { vm: d.vm ?? 0, replica: d.replica ?? 0, warm: d.warm ?? 0, total: d.total ?? 0 } },
      h("strong", {}, `${d.total ?? 0} cms VMs: `), kinds),
    h("p", { class: "vcpus", dataset: { used: v.used ?? 0, cpus: v.cpus ?? 0, limit: v.limit ?? 0 } },
      h("strong", {}, "vCPUs: "),
      `${fmt.vcpu(v.used)} given on ${fmt.cpus(v.cpus ?? 0)} = ${v.ratio === null || v.ratio === undefined ? "–" : `${v.ratio.toFixed(2)}×`} ` +
      `(overcommit allowed ${v.overcommit}×: up to ${fmt.vcpu(v.limit)})`));
}

export function hostCpuSeries(m) {
  const series = [{ key: "cpu", label: "host (all cms VMs)", values: m.series.cpu, color: "#111827" }];
  for (const [dom, values] of Object.entries(m.domains || {}).sort()) series.push({ key: dom, label: dom, values });
  return series;
}

export function groupCharts(name, prefix) {
  const count = new TimeChart({ id: `${prefix}-replicas-${name}`, title: "Replicas over time", unit: "count", height: 140 });
  const cpu = new TimeChart({ id: `${prefix}-cpu-${name}`, title: "Mean CPU against the thresholds", unit: "pct", height: 140, yMax: 1 });
  const update = (m) => {
    const ts = m.ts;
    const states = Object.entries(m.series.states || {}).sort();
    count.update(ts, [{ key: "replicas", label: "replicas", values: m.series.replicas, color: "#111827" },
                      ...states.map(([s, values]) => ({ key: `state-${s}`, label: s, values }))], m.markers);
    const th = Object.entries(m.thresholds).filter(([k]) => k !== "tolerance")
      .map(([k, v]) => ({ key: k, label: `${k} ${fmt.pct(v)}`, values: constant(ts, v), dash: [6, 4], color: k === "low" ? "#16a34a" : "#dc2626" }));
    cpu.update(ts, [{ key: "cpu", label: "mean CPU", values: m.series.cpu, color: "#2563eb" }, ...th], m.markers);
  };
  return { count, cpu, update };
}

export function decisionText(e) {
  return e ? `${fmt.time(e.ts)} (${fmt.ago(e.ts)}): ${e.message}` : "no decision yet";
}

export function overviewPage(el) {
  const hostsBox = h("div", { class: "grid", id: "hosts" });
  const groupsBox = h("div", { class: "grid", id: "groups" });
  const vmsBox = h("div", { id: "vms" });
  const eventsBox = h("div", { id: "recent-events" });
  replace(el, h("h1", {}, "Overview"),
    section("Hosts", hostsBox), section("Replica groups", groupsBox),
    section("VMs made through the API", h("p", {}, h("a", { href: "#/vms/new" }, "Create a VM")), vmsBox),
    section("Recent events", h("p", {}, h("a", { href: "#/events" }, "All events")), eventsBox));

  const hostCards = new Map();
  const groupCards = new Map();
  const pollers = [];
  let added = false;

  pollers.push(new Poller(async () => {
    added = false;
    const [{ hosts }, { groups }, { vms }] = await Promise.all([api.get("/v1/hosts"), api.get("/v1/groups"), api.get("/v1/vms")]);
    for (const x of hosts) {
      let card = hostCards.get(x.pmid);
      if (!card) {
        card = { body: h("div"), chart: new TimeChart({ id: `host-cpu-${x.pmid}`, title: "CPU, last 5 min: the host and each VM (share of the host's CPUs)", unit: "pct", height: 160, yMax: 1 }) };
        card.el = h("article", { class: "card host", dataset: { host: x.name, pmid: x.pmid } },
          h("h3", {}, h("a", { href: `#/hosts/${x.pmid}` }, x.name), " "), card.body, card.chart.el);
        hostCards.set(x.pmid, card);
        hostsBox.append(card.el);
        added = true;
      }
      card.el.dataset.up = x.up;
      replace(card.el.querySelector("h3"), h("a", { href: `#/hosts/${x.pmid}` }, x.name), " ", stateBadge(x.up ? "up" : "down"),
        h("small", { class: "muted" }, ` ${x.uri}`));
      replace(card.body, hostSummary(x));
    }
    for (const g of groups) {
      let card = groupCards.get(g.name);
      if (!card) {
        card = { body: h("div"), charts: groupCharts(g.name, "ov") };
        card.el = h("article", { class: "card group", dataset: { group: g.name } },
          h("h3", {}, h("a", { href: `#/groups/${encodeURIComponent(g.name)}` }, `Group ${g.name}`)),
          card.body, h("div", { class: "pair" }, card.charts.count.el, card.charts.cpu.el));
        groupCards.set(g.name, card);
        groupsBox.append(card.el);
        added = true;
      }
      const n = g.replicas.length;
      card.el.dataset.replicas = n;
      replace(card.body,
        h("p", {}, h("strong", { class: "replica-count" }, `${n} replica${n === 1 ? "" : "s"}`),
          ` (min ${g.min}, max ${g.max}, policy ${g.policy.name})`,
          g.desired_override ? h("span", { class: "badge warn" }, ` asked for ${g.desired_override.replicas}: pending`) : null),
        h("p", { class: "last-decision" }, h("strong", {}, "Last decision: "), card.lastDecision || "…"));
    }
    replace(vmsBox, table(["VM", "host", "type", "state"], vms.map((v) => h("tr", { dataset: { vmid: v.vmid } },
      h("td", {}, h("a", { href: `#/vms/${v.vmid}` }, v.name), h("small", { class: "muted" }, ` ${v.domain}`)),
      h("td", {}, v.pmid ? h("a", { href: `#/hosts/${v.pmid}` }, v.host) : v.host),
      h("td", {}, `type ${v.instance_type}`), h("td", {}, stateBadge(v.state)))), "no VMs yet"));
    if (added) charts.now();     // new cards get their charts at once, not at the next tick
  }, 3000).start());

  const charts = new Poller(async () => {
    const now = Date.now() / 1000;
    await Promise.all([
      ...[...hostCards.entries()].map(async ([pmid, card]) => {
        const m = await api.get(`/v1/hosts/${pmid}/metrics?since=${now - LIVE_S}&until=${now}&step=5`);
        card.chart.update(m.ts, hostCpuSeries(m));
      }),
      ...[...groupCards.entries()].map(async ([name, card]) => {
        const g = encodeURIComponent(name);
        const [m, ev] = await Promise.all([
          api.get(`/v1/groups/${g}/metrics?since=${now - GROUP_S}&until=${now}&step=5`),
          api.get(`/v1/events?group=${g}&kind=${DECISION_KINDS}&order=desc&limit=1`)]);
        card.charts.update(m);
        card.lastDecision = decisionText(ev.events[0]);
        const p = card.el.querySelector(".last-decision");
        if (p) replace(p, h("strong", {}, "Last decision: "), card.lastDecision);
      }),
    ]);
  }, 5000);
  pollers.push(charts.start());

  pollers.push(new Poller(async () => {
    const { events } = await api.get("/v1/events?order=desc&limit=8");
    replace(eventsBox, table(["time", "kind", "group", "subject", "message"], events.map((e) => h("tr", {},
      h("td", {}, fmt.time(e.ts)), h("td", {}, e.kind), h("td", {}, e.group), h("td", {}, e.subject), h("td", {}, e.message))),
    "no events yet"));
  }, 5000).start());

  return () => {
    for (const p of pollers) p.stop();
    for (const c of hostCards.values()) c.chart.destroy();
    for (const c of groupCards.values()) { c.charts.count.destroy(); c.charts.cpu.destroy(); }
  };
}
