// Events, newest first, filtered by kind and group, a page at a time (older pages by before_id).

import { api } from "../api.js";
import { h, replace, fmt, section, table, field, select } from "../ui.js";

const PAGE = 50;
const KINDS = ["", "decision", "scale_override", "scale_request", "scale_out", "scale_in", "added", "ready", "draining",
               "removed", "failed", "replaced", "spawn_failed", "remove_failed", "adopt", "cleanup",
               "vm_create", "vm_create_failed", "vm_destroy", "vm_migrate", "vm_resize", "image_register"];

export function eventsPage(el) {
  const list = h("div", { id: "events-list" });
  const pager = h("div", { class: "pager" });
  const kind = select("kind", KINDS.map((k) => [k, k || "any kind"]), "");
  const group = select("group", [["", "any group"]], "");
  const filters = h("form", { id: "events-filter", class: "filters" }, field("Kind", kind), field("Group", group),
    h("div", { class: "submit" }, h("button", { type: "submit" }, "Show")));
  replace(el, h("h1", {}, "Events"), section("Filter", filters), section("Newest first", list, pager));

  let pages = [];                // before_id of each page shown (null: the newest)
  async function load(before) {
    const q = new URLSearchParams({ order: "desc", limit: String(PAGE + 1) });
    if (kind.value) q.set("kind", kind.value);
    if (group.value) q.set("group", group.value);
    if (before) q.set("before_id", String(before));
    const { events } = await api.get(`/v1/events?${q}`);
    const more = events.length > PAGE;
    const shown = events.slice(0, PAGE);
    list.dataset.count = shown.length;
    replace(list, table(["id", "time", "kind", "group", "subject", "message"], shown.map((e) => h("tr", { dataset: { id: e.id, kind: e.kind } },
      h("td", {}, e.id), h("td", {}, fmt.datetime(e.ts)), h("td", {}, e.kind), h("td", {}, e.group || "–"),
      h("td", {}, e.subject || "–"), h("td", {}, e.message))), "no events match"));
    const newer = h("button", { type: "button", disabled: pages.length <= 1 }, "Newer");
    const older = h("button", { type: "button", disabled: !more }, "Older");
    newer.addEventListener("click", () => { pages.pop(); load(pages.at(-1)); });
    older.addEventListener("click", () => { const b = shown.at(-1).id; pages.push(b); load(b); });
    replace(pager, newer, ` page ${pages.length} `, older);
  }
  filters.addEventListener("submit", (ev) => { ev.preventDefault(); pages = [null]; load(null).catch(showFail); });
  for (const s of [kind, group]) s.addEventListener("change", () => filters.requestSubmit());
  const showFail = (e) => replace(list, h("p", { class: "form-error", role: "alert" }, `Could not load events: ${e.message}`));
  api.get("/v1/groups").then(({ groups }) => {
    for (const gr of groups) group.append(h("option", { value: gr.name }, gr.name));
  }).catch(() => {});
  pages = [null];
  load(null).catch(showFail);
  return null;
}
