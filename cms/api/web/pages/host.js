// A host: its figures, every cms VM on it (API VMs and replicas), and charts with ranges:
// CPU (the host and each VM), free RAM, and the number of VMs.

import { api, Poller } from "../api.js";
import { TimeChart } from "../charts.js";
import { h, replace, section, table, stateBadge, rangePicker, rangeSeconds, rangePollMs } from "../ui.js";
import { hostSummary, hostCpuSeries } from "./overview.js";

export function hostPage(el, pmid) {
  let range = "5m";
  const head = h("h1", {}, `Host ${pmid}`);
  const figures = h("div", { id: "host-figures" });
  const vmsBox = h("div", { id: "host-vms" });
  const cpu = new TimeChart({ id: "host-cpu", title: "CPU: the host and each VM (share of the host's CPUs)", unit: "pct", yMax: 1 });
  const ram = new TimeChart({ id: "host-ram", title: "Free RAM on the host", unit: "mib" });
  const count = new TimeChart({ id: "host-vms-count", title: "cms VMs running", unit: "count", height: 140 });
  const source = h("p", { class: "muted", id: "host-source" });
  replace(el, head, section("Figures", figures), section("VMs on this host", vmsBox),
    section("Charts", rangePicker("host-range", range, (k) => { range = k; charts.every = rangePollMs(k); charts.now(); }), source,
      h("div", { class: "pair" }, cpu.el, ram.el), count.el));

  const pollers = [];
  pollers.push(new Poller(async () => {
    const [x, { vms }, { groups }] = await Promise.all([api.get(`/v1/hosts/${pmid}`), api.get("/v1/vms"), api.get("/v1/groups")]);
    el.dataset.host = x.name;
    replace(head, `Host ${x.name} `, stateBadge(x.up ? "up" : "down"), h("small", { class: "muted" }, ` pmid ${pmid} · ${x.uri}`));
    replace(figures, hostSummary(x));
    const rows = [];
    for (const v of vms.filter((v) => v.host === x.name)) {
      rows.push(h("tr", { dataset: { domain: v.domain } }, h("td", {}, h("a", { href: `#/vms/${v.vmid}` }, v.name)),
        h("td", {}, "API VM"), h("td", {}, v.domain), h("td", {}, stateBadge(v.state))));
    }
    for (const g of groups) {
      for (const r of g.replicas.filter((r) => r.host === x.name)) {
        const st = r.replica_state ?? r.state;
        rows.push(h("tr", { dataset: { domain: r.name } }, h("td", {}, h("a", { href: `#/groups/${encodeURIComponent(g.name)}` }, `group ${g.name}`)),
          h("td", {}, String(st).startsWith("warm") ? "warm replica" : "replica"), h("td", {}, r.name), h("td", {}, stateBadge(st))));
      }
    }
    replace(vmsBox, table(["VM", "kind", "domain", "state"], rows, "no cms VMs on this host"));
  }, 3000).start());

  const charts = new Poller(async () => {
    const span = rangeSeconds(range);
    const now = Date.now() / 1000;
    const m = await api.get(`/v1/hosts/${pmid}/metrics?since=${now - span}&until=${now}&step=${Math.max(2, span / 300)}`);
    source.textContent = m.source === "host" ? `From the host's own samples (${m.cpus} CPUs).`
      : `Summed from its VMs' samples (${m.cpus} CPUs); free RAM needs the host samples.`;
    cpu.update(m.ts, hostCpuSeries(m));
    ram.update(m.ts, [{ key: "free", label: "free RAM", values: m.series.free_memory_mib, color: "#16a34a" }]);
    count.update(m.ts, [{ key: "vms", label: "cms VMs", values: m.series.vms, color: "#111827" },
                        { key: "vcpus", label: "their vCPUs", values: m.series.vcpus, color: "#9333ea" }]);
  }, 5000);
  pollers.push(charts.start());

  return () => { for (const p of pollers) p.stop(); cpu.destroy(); ram.destroy(); count.destroy(); };
}
