// A host: its figures, every cms VM on it (API VMs and replicas), and charts with ranges:
// CPU (the host and each VM), free RAM, and the number of VMs with their vCPUs.
//
// One refresh reads the figures, the VMs and the charts' frame and paints them together (see
// overview.js): the CPU bar and the host line's legend share the 5-minute frame's latest point,
// and a VM that left the host leaves the legend with the table. A 1 h or 24 h frame costs the
// server more and changes slowly, so it is read again only every rangePollMs (ui.js, RangedFrame).

import { api, Poller } from "../api.js";
import { TimeChart } from "../charts.js";
import { h, replace, section, table, stateBadge, rangeSeconds, RangedFrame } from "../ui.js";
import { hostSummary, hostCpuSeries, hostLive, domainsOn } from "./overview.js";

const LIVE_S = 300;

export function hostPage(el, pmid) {
  const ranged = new RangedFrame(`/v1/hosts/${pmid}/metrics`);    // the live one for 5 min
  const head = h("h1", {}, `Host ${pmid}`);
  const figures = h("div", { id: "host-figures" });
  const vmsBox = h("div", { id: "host-vms" });
  const cpu = new TimeChart({ id: "host-cpu", title: "CPU: the host and each VM (share of the host's CPUs)", unit: "pct", yMax: 1 });
  const ram = new TimeChart({ id: "host-ram", title: "Free RAM on the host", unit: "mib" });
  const count = new TimeChart({ id: "host-vms-count", title: "cms VMs running, and their vCPUs", unit: "count", height: 140 });
  const source = h("p", { class: "muted", id: "host-source" });
  replace(el, head, section("Figures", figures), section("VMs on this host", vmsBox),
    section("Charts", ranged.picker("host-range", () => poller.now()), source,
      h("div", { class: "pair" }, cpu.el, ram.el), count.el));

  const poller = new Poller(async () => {
    const now = Date.now() / 1000;
    const want = ranged.range;
    const longer = rangeSeconds(want) > LIVE_S;
    const [x, { vms }, { groups }, live] = await Promise.all([
      api.get(`/v1/hosts/${pmid}`), api.get("/v1/vms"), api.get("/v1/groups"),
      api.get(`/v1/hosts/${pmid}/metrics?since=${now - LIVE_S}&until=${now}&step=5`),
      longer ? ranged.read(api.get) : null]);
    if (want !== ranged.range) return;    // the range changed while this read was out: the next refresh draws it
    if (!longer) ranged.keep(live);
    el.dataset.host = x.name;
    replace(head, `Host ${x.name} `, stateBadge(x.up ? "up" : "down"), h("small", { class: "muted" }, ` pmid ${pmid} · ${x.uri}`));
    replace(figures, hostSummary(x, hostLive(live)));
    const rows = [];
    for (const v of vms.filter((v) => v.host === x.name)) {
      rows.push(h("tr", { dataset: { domain: v.domain } }, h("td", {}, h("a", { href: `#/vms/${v.vmid}` }, v.name)),
        h("td", {}, "API VM"), h("td", {}, v.domain), h("td", {}, stateBadge(v.state))));
    }
    for (const g of groups) {
      for (const r of g.replicas.filter((r) => r.host === x.name)) {
        const st = r.replica_state ?? r.state;
        rows.push(h("tr", { dataset: { domain: r.name } }, h("td", {}, h("a", { href: `#/groups/${encodeURIComponent(g.name)}` }, `group ${g.name}`)),
          h("td", {}, r.warm ? "warm replica" : "replica"), h("td", {}, r.name), h("td", {}, stateBadge(st))));
      }
    }
    replace(vmsBox, table(["VM", "kind", "domain", "state"], rows, "no cms VMs on this host"));
    const m = ranged.frame;
    source.textContent = m.source === "host" ? `From the host's own samples (${m.cpus} CPUs).`
      : `Summed from its VMs' samples (${m.cpus} CPUs); free RAM needs the host samples.`;
    cpu.update(m.ts, hostCpuSeries(m, domainsOn(x.name, vms, groups)));
    ram.ref = x.memory_mib?.total || null;      // the legend and axis in the unit of the figures above
    ram.update(m.ts, [{ key: "free", label: "free RAM", values: m.series.free_memory_mib, color: "#16a34a" }]);
    // Drawn first, wide and pale, so the VM count (black, dashed, on top) stays visible where
    // the two are equal (one vCPU per VM).
    count.update(m.ts, [{ key: "vcpus", label: "their vCPUs", values: m.series.vcpus, color: "#c4b5fd", width: 5 },
                        { key: "vms", label: "cms VMs", values: m.series.vms, color: "#111827", dash: [6, 3], width: 2 }]);
  }, 3000).start();

  return () => { poller.stop(); cpu.destroy(); ram.destroy(); count.destroy(); };
}
