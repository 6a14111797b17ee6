// Images: the list (/v1/images) and "register an image" (the seeds' VM submission): a name and
// a path on the controller, which POST /v1/images checks through libvirt's storage API and
// imports into storage cms owns. A path that is missing or not a disk image is refused with
// the API's own message beside the form.

import { api } from "../api.js";
import { h, replace, fmt, section, table, actionForm, field } from "../ui.js";

export function imagesPage(el) {
  const list = h("div", { id: "images-list" });
  const form = actionForm({
    id: "image-form", submit: "Register",
    describe: "The file must be a disk image (qcow2 or raw) readable on the controller; cms imports it into its own storage.",
    fields: [
      field("Name", h("input", { name: "name", required: true, maxlength: 64, autocomplete: "off", spellcheck: "false" })),
      field("Path", h("input", { name: "path", required: true, autocomplete: "off", spellcheck: "false", placeholder: "/srv/images/disk.qcow2" }),
            "an absolute path on the controller"),
    ],
    run: async (fd) => {
      const img = await api.post("/v1/images", { name: fd.get("name").trim(), path: fd.get("path").trim() });
      await refresh();
      return `registered ${img.name} as image ${img.id}`;
    },
  });
  replace(el, h("h1", {}, "Images"), section("Images VMs can be made from", list), section("Register an image", form));

  async function refresh() {
    const { images } = await api.get("/v1/images");
    list.dataset.count = images.length;
    replace(list, table(["id", "name", "path", "format", "size", "in cms's storage"], images.map((i) => h("tr", { dataset: { id: i.id, name: i.name } },
      h("td", {}, i.id), h("td", {}, i.name), h("td", {}, h("code", {}, i.path)), h("td", {}, i.format || "–"),
      h("td", {}, i.size ? fmt.mib(i.size / 2 ** 20) : "–"),
      h("td", {}, i.imported === false ? "not yet (imported on first use)" : (i.copy ? h("code", {}, i.copy) : "yes")))), "no images"));
  }
  refresh().catch((e) => replace(list, h("p", { class: "form-error", role: "alert" }, `Could not load images: ${e.message}`)));
  return () => { if (form.cleanup) form.cleanup(); };
}
