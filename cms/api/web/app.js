// The console's entry point: the token box, the connection indicator, alerts, and a hash
// router (#/, #/hosts/1, #/vms/7, #/vms/new, #/groups/web, #/images, #/events) that mounts one
// page at a time. Each page returns a cleanup function that stops its pollers.

import { api, connection, Poller, setPollErrorSink, token } from "./api.js";
import { startAlerts } from "./alerts.js";
import { fmt, h, replace, showError } from "./ui.js";
import { overviewPage } from "./pages/overview.js";
import { hostPage } from "./pages/host.js";
import { vmPage } from "./pages/vm.js";
import { createPage } from "./pages/create.js";
import { groupPage } from "./pages/group.js";
import { imagesPage } from "./pages/images.js";
import { eventsPage } from "./pages/events.js";

const ROUTES = [
  [/^\/?$/, "overview", () => overviewPage],
  [/^\/hosts\/(\d+)$/, "overview", (m) => (el) => hostPage(el, Number(m[1]))],
  [/^\/vms\/new$/, "create", () => createPage],
  [/^\/vms\/(\d+)$/, "overview", (m) => (el) => vmPage(el, Number(m[1]))],
  [/^\/groups\/([^/]+)$/, "overview", (m) => (el) => groupPage(el, decodeURIComponent(m[1]))],
  [/^\/images$/, "images", () => imagesPage],
  [/^\/events$/, "events", () => eventsPage],
];

const view = document.getElementById("view");
let cleanup = null;

function route() {
  const path = (location.hash || "#/").slice(1).split("?")[0];
  if (cleanup) { try { cleanup(); } catch { /* a page's cleanup must not stop the next page */ } }
  cleanup = null;
  for (const [re, nav, make] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.toggleAttribute("aria-current", a.dataset.nav === nav);
    }
    replace(view);
    view.dataset.page = path;
    cleanup = make(m)(view) || null;
    return;
  }
  replace(view, h("section", { class: "card" }, h("h1", {}, "Not found"),
    h("p", {}, "No console page at ", h("code", {}, path), ". ", h("a", { href: "#/" }, "Back to the overview"))));
}

function tokenBox() {
  const form = document.getElementById("token-form");
  const set = document.getElementById("token-set");
  const input = document.getElementById("token-input");
  const sync = () => {
    const has = !!token.get();
    form.hidden = has;
    set.hidden = !has;
    document.body.dataset.auth = has ? "token" : "read-only";
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    token.set(input.value.trim());
    input.value = "";
    sync();
  });
  document.getElementById("token-clear").addEventListener("click", () => { token.set(""); sync(); input.focus(); });
  sync();
}

function connectionBox() {
  const el = document.getElementById("conn");
  const paint = () => {
    el.dataset.state = connection.state;
    if (connection.state === "connected") {
      el.textContent = `connected · updated ${fmt.time(connection.lastOk / 1000)}`;
    } else if (connection.state === "disconnected") {
      const n = Poller.retryIn();
      el.textContent = `disconnected${n === null ? "" : ` · retrying in ${n} s`}`;
      el.title = connection.detail;
    } else {
      el.textContent = "connecting…";
    }
  };
  connection.subscribe(paint);
  setInterval(paint, 1000);
}

// Which controller leads (several controllers elect one through etcd; one controller always leads).
function leaderBox() {
  const el = document.getElementById("leader");
  new Poller(async () => {
    const c = await api.get("/v1/controller");
    el.dataset.state = c.leader ? "connected" : "disconnected";
    if (!c.role) {
      el.textContent = "controller: no answer";
      el.title = c.error || "";
    } else if (!c.coordination) {
      el.textContent = `controller ${c.name}`;
    } else {
      el.textContent = c.leader ? `leader ${c.leader}${c.role === "leader" ? ` (this one, term ${c.term})` : ""}`
        : "no leader now";
    }
  }, 5000).start();
}

// An error a page's poll did not expect (not a lost connection): shown once at the top of the page.
setPollErrorSink((e) => {
  let box = document.getElementById("page-error");
  if (e === null) { if (box) box.remove(); return; }
  if (!box) {
    box = h("p", { id: "page-error", class: "form-error", role: "alert" });
    view.prepend(box);
  }
  showError(box, e);
});

tokenBox();
connectionBox();
leaderBox();
startAlerts(document.getElementById("alerts"));
window.addEventListener("hashchange", route);
route();
