// A VM: state, host, type, image and address; CPU (and each vCPU) and memory charts with
// ranges; migrate (placement's choice or a chosen host), resize within the maximum it was
// defined with, destroy after a confirmation; the tail of its serial console log, or why it is
// unavailable. The facts and the charts come from one refresh (see overview.js); a 1 h or 24 h
// frame is read again only every rangePollMs (ui.js, RangedFrame).

import { api, Poller } from "../api.js";
import { TimeChart, constant } from "../charts.js";
import { h, replace, fmt, section, dl, stateBadge, actionForm, field, select, confirmDialog,
         RangedFrame } from "../ui.js";

// What "N MiB of at most M MiB" means: the VM is defined with the maximum, and the guest's
// balloon driver holds back what is above the current size, so a resize within the maximum
// takes effect live, without a reboot. A guest without the driver keeps the whole maximum.
// The host gives it its guest kernel's share on top (kernel_mib), so the guest sees all of it.
function memoryWhy(vm) {
  if (!vm.max_memory_mib || vm.memory_mib === undefined || vm.memory_mib === null) return "";
  const typed = vm.type ? vm.type.ram : null;
  const kernel = vm.kernel_mib ? ` Its host gives it ${fmt.mib(vm.kernel_mib)} more, which the guest's own ` +
    "kernel keeps, so the guest sees its whole size." : "";
  if (vm.memory_mib < vm.max_memory_mib) {
    return `The guest can use ${fmt.mib(vm.memory_mib)}; its balloon driver holds back the other ` +
      `${fmt.mib(vm.max_memory_mib - vm.memory_mib)}, which a resize gives back live, without a reboot.` + kernel;
  }
  if (typed && typed < vm.max_memory_mib) {
    return `The guest holds its whole maximum, more than its type's ${fmt.mib(typed)}: its balloon has not ` +
      "taken the rest back (a guest without a balloon driver never gives it back).";
  }
  return "The guest has its maximum; its balloon holds nothing back.";
}

export function vmPage(el, vmid) {
  const ranged = new RangedFrame(`/v1/vms/${vmid}/metrics`);
  const head = h("h1", {}, `VM ${vmid}`);
  const facts = h("div", { id: "vm-facts" });
  const cpu = new TimeChart({ id: "vm-cpu", title: "CPU (share of its vCPUs)", unit: "pct", yMax: 1 });
  const mem = new TimeChart({ id: "vm-memory", title: "Memory: what the guest has now, against its maximum", unit: "mib" });
  const consoleBox = h("pre", { id: "vm-console", class: "console", tabindex: 0, "aria-label": "Serial console log, read-only" });
  const consoleNote = h("p", { class: "muted", id: "vm-console-note" });
  const actions = h("div", { class: "actions", id: "vm-actions" });
  const charts = h("div", { class: "pair" }, cpu.el, mem.el);
  replace(el, head, section("State", facts),
    section("Charts", ranged.picker("vm-range", () => poller.now()), charts),
    section("Actions", actions), section("Serial console (the last 16 KiB, read-only)", consoleNote, consoleBox));

  let vm = null;
  let hosts = [];
  const pollers = [];
  let built = false;
  let destSelect = null;
  let destFor = "";

  // The migrate form's destinations: every host but the VM's own, refreshed when it moves.
  const syncDestinations = () => {
    const key = `${vm.host}|${hosts.map((x) => x.name).join(",")}`;
    if (!destSelect || key === destFor) return;
    destFor = key;
    replace(destSelect, [["", "placement's choice"], ...hosts.filter((x) => x.name !== vm.host)
      .map((x) => [x.pmid, `${x.name} (pmid ${x.pmid})`])].map(([v, t]) => h("option", { value: v }, t)));
  };

  const buildActions = () => {
    destSelect = select("pmid", [], "");
    const migrate = actionForm({
      id: "migrate-form", title: "Migrate (live)", submit: "Migrate",
      describe: "Moves the running VM to another host; without a choice, placement picks one.",
      fields: [field("Destination", destSelect)],
      run: async (fd) => {
        const pmid = fd.get("pmid");
        const r = await api.post(`/v1/vms/${vmid}/migrate`, pmid ? { pmid: Number(pmid) } : {});
        poller.now();
        return `migrated to ${r.host}`;
      },
    });
    const resize = actionForm({
      id: "resize-form", title: "Resize", submit: "Resize",
      describe: `Within the maximum it was defined with: ${fmt.vcpu(vm.max_vcpus)}, ${fmt.mib(vm.max_memory_mib)}.`,
      fields: [
        field("vCPUs", h("input", { type: "number", name: "vcpus", class: "count", min: 1, max: vm.max_vcpus || 1, required: true, value: vm.vcpus ?? vm.type?.cpu ?? 1 }), `1 to ${vm.max_vcpus}`),
        field("Memory", h("input", { type: "number", name: "memory_mib", class: "count", min: 64, max: vm.max_memory_mib || 64, step: 64, required: true, value: vm.memory_mib ?? vm.type?.ram ?? 64 }), `MiB, 64 to ${vm.max_memory_mib}`),
      ],
      run: async (fd) => {
        const r = await api.post(`/v1/vms/${vmid}/resize`, { vcpus: Number(fd.get("vcpus")), memory_mib: Number(fd.get("memory_mib")) });
        poller.now();
        return `now ${fmt.vcpu(r.vcpus)}, ${fmt.mib(r.memory_mib)}`;
      },
    });
    const destroy = actionForm({
      id: "destroy-form", title: "Destroy", submit: "Destroy…", danger: true,
      describe: "Stops the VM and deletes its disk overlay. This cannot be undone.",
      fields: [],
      confirm: () => confirmDialog(`Destroy ${vm.name}?`, `${vm.domain} on ${vm.host} is stopped and its disk deleted.`, "Destroy"),
      run: async () => {
        await api.del(`/v1/vms/${vmid}`);
        location.hash = "#/";
        return "destroyed";
      },
    });
    replace(actions, migrate, resize, destroy);
  };

  const poller = new Poller(async () => {
    const [v, hs] = await Promise.all([api.get(`/v1/vms/${vmid}`), api.get("/v1/hosts"), ranged.read(api.get)]);
    vm = v;
    hosts = hs.hosts;
    el.dataset.vmid = vmid;
    el.dataset.host = vm.host;
    el.dataset.vcpus = vm.vcpus ?? "";
    el.dataset.memoryMib = vm.memory_mib ?? "";
    replace(head, `VM ${vm.name} `, h("small", { class: "muted" }, `${vm.domain} · vmid ${vm.vmid}`));
    const t = vm.type;
    const img = vm.image;
    replace(facts, dl([
      ["State", [stateBadge(vm.domain_state), ` (API record: ${vm.state})`]],
      ["Host", vm.pmid ? h("a", { href: `#/hosts/${vm.pmid}`, id: "vm-host" }, vm.host) : h("span", { id: "vm-host" }, vm.host)],
      ["Type", t ? `type ${t.tid}: ${fmt.vcpu(t.cpu)}, ${fmt.mib(t.ram)}, ${t.disk} GiB disk` : `type ${vm.instance_type}`],
      ["vCPUs", h("span", { id: "vm-size" }, `${fmt.vcpu(vm.vcpus)} of at most ${fmt.vcpu(vm.max_vcpus)}`)],
      ["Memory", h("span", { id: "vm-memory-now" }, `${fmt.mib(vm.memory_mib, vm.max_memory_mib)} of at most ${fmt.mib(vm.max_memory_mib)}`,
        h("br"), h("small", { class: "muted" }, memoryWhy(vm)))],
      ["Image", img ? `${img.name} (id ${img.id}) ${img.path}` : `id ${vm.image_id}`],
      ["Address", vm.address || "–"],
      ["Created", fmt.datetime(vm.created)],
    ]));
    if (!built && vm.max_vcpus) { buildActions(); built = true; }
    syncDestinations();
    if (ranged.frame) {
      const f = ranged.frame;
      cpu.update(f.ts, [{ key: "cpu", label: "CPU", values: f.series.cpu, color: "#2563eb" },
                        ...f.series.vcpu.map((values, i) => ({ key: `vcpu${i}`, label: `vCPU ${i}`, values, dash: [3, 3] }))]);
      const series = [{ key: "memory", label: "now", values: f.series.memory_mib, color: "#16a34a" }];
      if (vm.max_memory_mib) {
        series.push({ key: "max", label: "maximum", values: constant(f.ts, vm.max_memory_mib), color: "#6b7280", dash: [6, 4] });
      }
      mem.ref = vm.max_memory_mib || null;
      mem.update(f.ts, series);
      el.dataset.points = f.points;
    }
  }, 3000);
  pollers.push(poller.start());

  pollers.push(new Poller(async () => {
    const c = await api.get(`/v1/vms/${vmid}/console`);
    // No text is one of three things: the log is on another host (unavailable from here), it
    // could not be read, or the guest has written nothing yet. Only the last is "empty".
    const unavailable = !c.text && c.reason && c.reason !== "no serial output yet";
    consoleBox.dataset.state = c.text ? "text" : unavailable ? "unavailable" : "empty";
    consoleNote.textContent = c.text || !c.reason ? `${c.path} on ${c.host}, ${c.size} bytes` : "";
    const atEnd = consoleBox.scrollTop + consoleBox.clientHeight >= consoleBox.scrollHeight - 4;
    consoleBox.textContent = c.text || (unavailable ? `Unavailable: ${c.reason}.` : "(no serial output yet)");
    if (atEnd) consoleBox.scrollTop = consoleBox.scrollHeight;
  }, 5000).start());

  return () => {
    for (const p of pollers) p.stop();
    cpu.destroy();
    mem.destroy();
    for (const f of actions.querySelectorAll("form")) if (f.cleanup) f.cleanup();
  };
}
