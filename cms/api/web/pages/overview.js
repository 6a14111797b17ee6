// Overview: hosts (CPU/RAM/disk bars, what cms runs there by kind, vCPUs against CPUs with the
// overcommit, and a live CPU chart with one line per domain: which VM eats the host), groups
// (replica count over time, mean CPU against the thresholds, the last decision in words), the
// API's VMs and the newest events.
//
// One refresh reads everything and paints everything: the tables, the bars and the charts come
// from the same answers, so a legend never lags the table beside it, and a host's CPU bar shows
// the very figure its chart's legend shows (both its frame's latest point).

import { api, Poller } from "../api.js";
import { TimeChart, constant, latestPoint } from "../charts.js";
import { h, replace, fmt, bar, table, section, stateBadge } from "../ui.js";

const LIVE_S = 300;
const GROUP_S = 600;
const REFRESH_MS = 3000;
export const DECISION_KINDS = "decision,scale_override,scale_out,scale_in";

// The host's figures. `live` is the latest point of the host's own line in its 5-minute chart
// frame ({value, ts} or null), the one source of the CPU bar and of that line's legend; without
// a frame (none read yet) the bar shows the API's own last figure.
export function hostSummary(x, live) {
  const d = x.domains || {};
  const v = x.vcpus || {};
  const m = x.memory_mib || {};
  const disk = x.disk_bytes || {};
  const cpu = live === undefined ? (x.cpu?.utilization === null || x.cpu?.utilization === undefined ? null
    : { value: x.cpu.utilization, ts: x.cpu.ts }) : live;
  const mem = (mib) => fmt.mib(mib, m.total ?? 0);      // every RAM figure in the unit of the host's total
  const kinds = `${fmt.n(d.vm ?? 0, "API VM")} · ${fmt.n(d.replica ?? 0, "replica")} · ${d.warm ?? 0} warm`;
  return h("div", { class: "host-figures" },
    bar("CPU", cpu ? Math.min(1, cpu.value) : 0, 1,
        cpu ? `${fmt.share(cpu.value, 1)} of ${fmt.cpus(v.cpus)} used by cms VMs (${fmt.ago(cpu.ts)})`
          : "no sample in the last 15 s"),
    bar("RAM", m.given ?? 0, Math.max(1, (m.total ?? 0) - (m.reserve ?? 0)),
        `${mem(m.given)} given to VMs of ${mem((m.total ?? 0) - (m.reserve ?? 0))} (${mem(m.reserve)} reserved); ${mem(m.free)} free on the host`),
    bar("Disk", (disk.total ?? 0) - (disk.free ?? 0), disk.total ?? 0,
        `${fmt.gib((disk.total ?? 0) - (disk.free ?? 0))} used of ${fmt.gib(disk.total)} in the pool`),
    h("p", { class: "kinds", dataset: { vm: d.vm ?? 0, replica: d.replica ?? 0, warm: d.warm ?? 0, total: d.total ?? 0 } },
      h("strong", {}, `${fmt.n(d.total ?? 0, "cms VM")}: `), kinds),
    h("p", { class: "vcpus", dataset: { used: v.used ?? 0, cpus: v.cpus ?? 0, limit: v.limit ?? 0 } },
      h("strong", {}, "vCPUs: "),
      `${fmt.vcpu(v.used)} given on ${fmt.cpus(v.cpus ?? 0)} = ${v.ratio === null || v.ratio === undefined ? "–" : `${v.ratio.toFixed(2)}×`} ` +
      `(overcommit allowed ${v.overcommit}×: up to ${fmt.vcpu(v.limit)})`));
}

// The cms domains on a host now, by name: its API VMs and its replicas (warm ones too), from the
// same /v1/vms and /v1/groups answers the page's tables show.
export function domainsOn(hostName, vms, groups) {
  const names = new Set(vms.filter((v) => v.host === hostName).map((v) => v.domain));
  for (const g of groups) for (const r of g.replicas) if (r.host === hostName) names.add(r.name);
  return names;
}

// The host's line, then one line per domain that is on the host now: a destroyed or migrated
// VM's samples stay in the range for a while, but it no longer eats this host.
export function hostCpuSeries(m, present) {
  const series = [{ key: "cpu", label: "host (all cms VMs)", values: m.series.cpu, color: "#111827", width: 2 }];
  for (const [dom, values] of Object.entries(m.domains || {}).sort()) {
    if (!present || present.has(dom)) series.push({ key: dom, label: dom, values });
  }
  return series;
}

export function hostLive(m) { return latestPoint(m.ts, m.series.cpu); }

// The replica count and mean CPU charts; with `load` (the group page) also the requests in
// flight per ready replica against the concurrency policy's aim, and the slowest replica's p95
// latency against its bound (both from the replicas' /status, polled each tick).
export function groupCharts(name, prefix, { load = false } = {}) {
  const count = new TimeChart({ id: `${prefix}-replicas-${name}`, title: "Replicas over time", unit: "count", height: 140 });
  const cpu = new TimeChart({ id: `${prefix}-cpu-${name}`, title: "Mean CPU against the thresholds", unit: "pct", height: 140, yMax: 1 });
  const inFlight = load ? new TimeChart({ id: `${prefix}-inflight-${name}`, title: "Requests in flight per ready replica",
                                          unit: "load", height: 140 }) : null;
  const p95 = load ? new TimeChart({ id: `${prefix}-p95-${name}`, title: "p95 latency (slowest ready replica)",
                                     unit: "s", height: 140 }) : null;
  const update = (m) => {
    const ts = m.ts;
    // A state with no replica in a bucket the group was sampled in had 0 there, not "no data".
    const states = Object.entries(m.series.states || {}).sort()
      .map(([s, values]) => [s, values.map((v, i) => (v === null && m.series.replicas[i] !== null ? 0 : v))]);
    count.update(ts, [...states.map(([s, values]) => ({ key: `state-${s}`, label: s, values })),
                      { key: "replicas", label: "replicas", values: m.series.replicas, color: "#111827", dash: [5, 3] }],
                 m.markers);
    const th = Object.entries(m.thresholds).filter(([k]) => k !== "tolerance")
      .map(([k, v]) => ({ key: k, label: k, values: constant(ts, v), dash: [6, 4], color: k === "low" ? "#16a34a" : "#dc2626" }));
    cpu.update(ts, [{ key: "cpu", label: "mean CPU", values: m.series.cpu, color: "#2563eb" }, ...th], m.markers);
    if (!load) return;
    const aim = m.load || {};
    inFlight.update(ts, [{ key: "in_flight", label: "in flight per replica", values: m.series.in_flight || ts.map(() => null), color: "#2563eb" },
      ...(aim.in_flight === undefined ? [] : [{ key: "target", label: "target x utilization", values: constant(ts, aim.in_flight), dash: [6, 4], color: "#dc2626" }])],
      m.markers);
    p95.update(ts, [{ key: "p95", label: "p95", values: m.series.p95_s || ts.map(() => null), color: "#ea580c" },
      ...(aim.latency_p95_s === undefined ? [] : [{ key: "bound", label: "latency_p95_s", values: constant(ts, aim.latency_p95_s), dash: [6, 4], color: "#dc2626" }])],
      m.markers);
  };
  const destroy = () => { for (const c of [count, cpu, inFlight, p95]) if (c) c.destroy(); };
  return { count, cpu, inFlight, p95, update, destroy };
}

export function decisionText(e) {
  return e ? `${fmt.time(e.ts)} (${fmt.ago(e.ts)}): ${e.message}` : "no decision yet";
}

export function eventsTable(events) {
  return table(["time", "kind", "group", "subject", "message"], events.map((e) => h("tr", { dataset: { id: e.id, kind: e.kind } },
    h("td", {}, fmt.time(e.ts)), h("td", {}, e.kind), h("td", {}, e.group || "–"), h("td", {}, e.subject || "–"),
    h("td", { class: "message" }, e.message))), "no events yet");
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

  const poller = new Poller(async () => {
    const now = Date.now() / 1000;
    const [{ hosts }, { groups }, { vms }, { events }] = await Promise.all([
      api.get("/v1/hosts"), api.get("/v1/groups"), api.get("/v1/vms"), api.get("/v1/events?order=desc&limit=8")]);
    const [hostFrames, groupFrames] = await Promise.all([
      Promise.all(hosts.map((x) => api.get(`/v1/hosts/${x.pmid}/metrics?since=${now - LIVE_S}&until=${now}&step=5`))),
      Promise.all(groups.map((g) => {
        const q = encodeURIComponent(g.name);
        return Promise.all([api.get(`/v1/groups/${q}/metrics?since=${now - GROUP_S}&until=${now}&step=5`),
                            api.get(`/v1/events?group=${q}&kind=${DECISION_KINDS}&order=desc&limit=1`)]);
      }))]);
    hosts.forEach((x, i) => {
      let card = hostCards.get(x.pmid);
      if (!card) {
        card = { head: h("h3"), body: h("div"),
                 chart: new TimeChart({ id: `host-cpu-${x.pmid}`, title: "CPU, last 5 min: the host and each VM (share of the host's CPUs)", unit: "pct", height: 160, yMax: 1 }) };
        card.el = h("article", { class: "card host", dataset: { host: x.name, pmid: x.pmid } }, card.head, card.body, card.chart.el);
        hostCards.set(x.pmid, card);
        hostsBox.append(card.el);
      }
      const m = hostFrames[i];
      // the state cms-autoscaler declared (up, suspect, down, fencing): a card that is not up shows it
      const state = x.state || (x.up ? "up" : "down");
      card.el.dataset.up = x.up;
      card.el.dataset.state = state;
      replace(card.head, h("a", { href: `#/hosts/${x.pmid}` }, x.name), " ", stateBadge(state),
        h("small", { class: "muted" }, ` ${x.uri}`));
      replace(card.body, hostSummary(x, hostLive(m)));
      card.chart.update(m.ts, hostCpuSeries(m, domainsOn(x.name, vms, groups)));
    });
    groups.forEach((g, i) => {
      let card = groupCards.get(g.name);
      if (!card) {
        card = { body: h("div"), charts: groupCharts(g.name, "ov") };
        card.el = h("article", { class: "card group", dataset: { group: g.name } },
          h("h3", {}, h("a", { href: `#/groups/${encodeURIComponent(g.name)}` }, `Group ${g.name}`)),
          card.body, h("div", { class: "pair" }, card.charts.count.el, card.charts.cpu.el));
        groupCards.set(g.name, card);
        groupsBox.append(card.el);
      }
      const [m, ev] = groupFrames[i];
      const n = g.replicas.length;
      card.el.dataset.replicas = n;
      replace(card.body,
        h("p", {}, h("strong", { class: "replica-count" }, fmt.n(n, "replica")),
          ` (min ${g.min}, max ${g.max}, policy ${g.policy.name})`,
          g.desired_override ? h("span", { class: "badge warn" }, ` asked for ${g.desired_override.replicas}: pending`) : null),
        h("p", { class: "last-decision" }, h("strong", {}, "Last decision: "), decisionText(ev.events[0])));
      card.charts.update(m);
    });
    replace(vmsBox, table(["VM", "host", "type", "state"], vms.map((v) => h("tr", { dataset: { vmid: v.vmid } },
      h("td", {}, h("a", { href: `#/vms/${v.vmid}` }, v.name), h("small", { class: "muted" }, ` ${v.domain}`)),
      h("td", {}, v.pmid ? h("a", { href: `#/hosts/${v.pmid}` }, v.host) : v.host),
      h("td", {}, `type ${v.instance_type}`), h("td", {}, stateBadge(v.state)))), "no VMs yet"));
    replace(eventsBox, eventsTable(events));
  }, REFRESH_MS).start();

  return () => {
    poller.stop();
    for (const c of hostCards.values()) c.chart.destroy();
    for (const c of groupCards.values()) c.charts.destroy();
  };
}
