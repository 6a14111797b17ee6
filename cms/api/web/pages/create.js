// Create a VM: name, type from /v1/types, image from /v1/images, and an optional host.

import { api } from "../api.js";
import { h, replace, fmt, section, actionForm, field, select } from "../ui.js";

export function createPage(el) {
  const box = h("div", {}, h("p", { class: "muted" }, "Loading types, images and hosts…"));
  replace(el, h("h1", {}, "Create a VM"), section("New VM", box));
  let live = true;
  (async () => {
    const [{ types }, { images }, { hosts }] = await Promise.all([api.get("/v1/types"), api.get("/v1/images"), api.get("/v1/hosts")]);
    if (!live) return;
    const form = actionForm({
      id: "create-form", submit: "Create",
      describe: "The VM boots from a copy-on-write overlay of the image, on the host placement picks unless you choose one.",
      fields: [
        field("Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}", maxlength: 64,
                                   autocomplete: "off", spellcheck: "false" }),
              "1–64 letters, digits, '_', '.', '-'; starts with a letter or digit"),
        field("Type", select("instance_type", types.map((t) => [t.tid, `type ${t.tid}: ${fmt.vcpu(t.cpu)}, ${fmt.mib(t.ram)}, ${t.disk} GiB disk`]), types[0]?.tid)),
        field("Image", select("image_id", images.map((i) => [i.id, `${i.name} (id ${i.id})`]), images[0]?.id)),
        field("Host", select("pmid", [["", "placement's choice"], ...hosts.map((x) => [x.pmid, `${x.name} (pmid ${x.pmid})${x.up ? "" : " – down"}`])], "")),
      ],
      run: async (fd) => {
        const body = { name: fd.get("name").trim(), instance_type: Number(fd.get("instance_type")) };
        if (fd.get("image_id")) body.image_id = Number(fd.get("image_id"));
        if (fd.get("pmid")) body.pmid = Number(fd.get("pmid"));
        const vm = await api.post("/v1/vms", body);
        location.hash = `#/vms/${vm.vmid}`;
        return `created ${vm.name} (vmid ${vm.vmid}) on ${vm.host}`;
      },
    });
    replace(box, form);
    form.querySelector("input[name=name]").focus();
  })().catch((e) => { if (live) replace(box, h("p", { class: "form-error", role: "alert" }, `Could not load the form: ${e.message}`)); });
  return () => { live = false; const f = box.querySelector("form"); if (f && f.cleanup) f.cleanup(); };
}
