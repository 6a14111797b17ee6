"""The operator console in a real browser against the real stack.

Debian's Chromium, driven by Playwright (from PyPI, launched with executable_path: the
browser build `playwright install` would download cannot be fetched here), against cms-api
under gunicorn and cms-autoscaler running a group of replicas from the golden image, on two
hypervisors of a multi-host lab (cms.lab.hosts: each its own libvirtd in its own network and
mount namespace, shared storage), so a VM really migrates. One lab, one API server, one
autoscaler and one browser serve the whole module; each test opens its own tab.

Every tab counts its browser-console errors and uncaught exceptions, and must end with
none, except a failed load of a URL the test provoked on purpose and named (Chromium logs
every 4xx answer to fetch() as "Failed to load resource").

A canvas cannot be read, so chart data is asserted on what the page writes into the DOM
(each chart's data-points and legend). Screenshots of every page at 1280 and 390 px wide go
to out/console/ for a person to look at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from cms.lab.hosts import LabHost, running
from cms.lab.realstack import stop_process, wait_until
from cms.virt import Host
from tests.integration.test_api_real import served
from tests.support import ROOT, blank_golden, free_port

pytestmark = pytest.mark.real

TOKEN = "console-token"
GROUP = "ctest"
LAB, SUBNET = "cmscons", 94          # apart from the lab tests' (93) and the operator's default (90)
OUT = ROOT / "out" / "console"
CHROMIUM = "/usr/bin/chromium"
# The flags the machine facts give for a root, offline Chromium (Playwright adds --headless).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BOOT = 240.0
# Chromium fails loads in flight when this machine's network interfaces change (other tests
# add and remove namespaces and bridges while this one runs): "Failed to load resource:
# net::ERR_NETWORK_CHANGED". That is the machine's doing, not the console's.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"


def api(url: str, method: str = "GET", body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@dataclass
class Stack:
    url: str
    tmp: Path
    hosts: list[LabHost]
    autoscaler: subprocess.Popen


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    blank = blank_golden()
    (tmp / "image_file").write_text(f"{blank}\n")
    (tmp / "types_file").write_text(json.dumps({"types": [
        {"tid": 1, "cpu": 1, "ram": 256, "disk": 1}, {"tid": 2, "cpu": 2, "ram": 512, "disk": 1}]}))
    port, pub, snap = free_port(), free_port(), free_port()
    with running(2, name=LAB, subnet=SUBNET) as (lab, hosts):
        # The group's policy never acts by itself within a test (its windows outlast the
        # module): what scales it here is the console's scale form and a replica killed from
        # outside. TOML wants the top-level key before the lab's tables.
        config = f"""state_db = "{tmp}/state.db"
{lab.config_fragment(hosts)}
[api]
bind = "127.0.0.1:{port}"
workers = 3
token = "{TOKEN}"
[placement]
algorithm = "first_fit"
cpu_overcommit = 16.0
ram_reserve_mib = 256
[zmq]
publish = "tcp://127.0.0.1:{pub}"
snapshot = "tcp://127.0.0.1:{snap}"
[autoscaler]
tick_s = 1.0
health_timeout_s = {BOOT}
[groups.{GROUP}]
min = 1
max = 3
memory_mib = 384
cooldown_s = 0.0
[groups.{GROUP}.threshold]
high = 0.99
low = 0.01
window_s = 3600.0
window_in_s = 3600.0
"""
        env = {**os.environ, "CMS_RUN_DIR": str(tmp / "run")}
        env.pop("CMS_CONFIG", None)
        with served(tmp, config) as url:
            log = open(tmp / "autoscaler.log", "w")
            scaler = subprocess.Popen([sys.executable, "-m", "cms.autoscaler.daemon", "--config", str(tmp / "cms.toml")],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield Stack(url, tmp, hosts, scaler)
            finally:
                stop_process(scaler)
                log.close()
    # running() ended every QEMU of the lab with its libvirtds and removed its storage


@pytest.fixture(scope="module")
def browser():
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """A browser tab on the console that records console errors and uncaught exceptions."""

    def __init__(self, browser, url: str, width: int = 1280) -> None:
        self.ctx = browser.new_context(viewport={"width": width, "height": 900})
        self.page: Page = self.ctx.new_page()
        self.url = url
        self.width = width
        self.errors: list[str] = []
        self.allowed: list[tuple[str, str]] = []     # (console text fragment, URL fragment) expected on purpose
        self.failed_urls: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("response", lambda r: self.failed_urls.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        self.page.on("requestfailed", lambda r: self.failed_urls.append(f"failed {r.url}"))

    def allow(self, console_text: str, url_part: str) -> None:
        self.allowed.append((console_text, url_part))

    def go(self, path: str) -> Page:
        self.page.goto(f"{self.url}/#{path}")
        conn = self.page.locator("#conn")
        try:
            expect(conn).to_have_attribute("data-state", "connected", timeout=30000)
        except AssertionError:
            # A module load cut by the machine's network changing (another test making a
            # namespace or a bridge) leaves the page dead, as it would a person's: reload once.
            if not any(NETWORK_CHANGED in e for e in self.errors):
                raise
            self.page.reload()
            expect(conn).to_have_attribute("data-state", "connected", timeout=30000)
        return self.page

    def sign_in(self) -> None:
        self.page.fill("#token-input", TOKEN)
        self.page.click("#token-form button[type=submit]")
        expect(self.page.locator("#token-set")).to_be_visible()

    def shot(self, name: str) -> Path:
        p = OUT / f"{name}-{self.width}.png"
        self.page.screenshot(path=str(p), full_page=True)
        return p

    def close(self) -> None:
        """Close, then fail on any console error or exception that was not provoked on purpose."""
        self.page.wait_for_timeout(300)
        self.ctx.close()
        unexpected = []
        for e in self.errors:
            if NETWORK_CHANGED in e:
                continue        # the machine's interfaces changed under Chromium, not the console's doing
            ok = any(text in e for text, _ in self.allowed) and \
                any(part in u for _, part in self.allowed for u in self.failed_urls)
            if not ok:
                unexpected.append(e)
        assert not unexpected, f"browser console errors: {unexpected}; failed requests: {self.failed_urls}"


@pytest.fixture
def tab(browser, stack):
    t = Tab(browser, stack.url)
    yield t
    t.close()


def groups(stack) -> dict:
    return {g["name"]: g for g in api(stack.url + "/v1/groups")[1]["groups"]}


def replicas(stack) -> list[dict]:
    return groups(stack)[GROUP]["replicas"]


def lab_host(stack, name: str) -> LabHost:
    return next(h for h in stack.hosts if h.name == name)


# -- the tests, in the order they run ------------------------------------------------------------

def test_overview_lists_the_hosts_and_the_group(stack, tab):
    page = tab.go("/")
    for h in stack.hosts:
        expect(page.locator(f'article.host[data-host="{h.name}"]')).to_be_visible(timeout=30000)
    expect(page.locator(f'article.group[data-group="{GROUP}"]')).to_be_visible()
    # the group's first replica exists (the autoscaler keeps min = 1), and its host's card
    # counts it as a replica: every cms VM on the host, by kind
    first = wait_until(lambda: replicas(stack), 120, 1, what="the autoscaler's first replica")[0]
    host = page.locator(f'article.host[data-host="{first["host"]}"]')
    expect(host.locator(".kinds")).to_have_attribute("data-replica", "1", timeout=15000)
    kinds = host.locator(".kinds").text_content()
    assert "1 replica" in kinds and "0 API VMs" in kinds and "0 warm" in kinds, kinds
    vcpus = host.locator(".vcpus")
    assert int(vcpus.get_attribute("data-used")) == 1 and int(vcpus.get_attribute("data-cpus")) >= 1
    assert "overcommit allowed 16" in vcpus.text_content() and "vCPU" in vcpus.text_content()
    # the host's CPU: a figure with its unit, from the last sample, and a live chart with a
    # line for the replica
    expect(host.locator('.bar[aria-label="CPU"] .bar-text')).to_contain_text("% of", timeout=30000)
    chart = host.locator(".chart")
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=30000)
    expect(chart.locator(f'.legend li[data-key="{first["name"]}"]')).to_be_visible()
    # without a token the console is read-only, and says so where the actions are
    tab.go(f"/groups/{GROUP}")
    expect(page.locator("#scale-form button[type=submit]")).to_be_disabled()
    expect(page.locator("#scale-form .why")).to_contain_text("Read-only")
    tab.go("/")
    expect(page.locator(f'article.group[data-group="{GROUP}"] .chart').first).to_have_attribute(
        "data-points", re.compile(r"^[1-9]"), timeout=30000)
    tab.shot("overview")


def test_scaling_shows_pending_then_applied_and_the_count_follows(stack, tab):
    page = tab.go(f"/groups/{GROUP}")
    tab.sign_in()
    expect(page.locator("#view")).to_have_attribute("data-replicas", "1", timeout=60000)
    page.get_by_label("Replicas", exact=True).fill("2")
    page.get_by_label("Replicas", exact=True).press("Enter")            # the form works from the keyboard
    status = page.locator("#scale-state")
    expect(status).to_have_attribute("data-state", "applied", timeout=60000)
    expect(page.locator("#view")).to_have_attribute("data-replicas", "2", timeout=60000)
    seen = status.get_attribute("data-seen").split(",")
    assert seen[0] == "pending" and seen[-1] == "applied" and set(seen) <= {"pending", "applying", "applied"}, seen
    # the autoscaler logged it, and the decision log shows it
    expect(page.locator('#group-log tr[data-kind="scale_override"]').first).to_be_visible(timeout=15000)
    tab.shot("group")


def test_a_replica_destroyed_from_outside_shows_as_an_alert(stack, tab):
    page = tab.go("/")
    expect(page.locator("#alerts")).to_have_attribute("data-since", re.compile(r"\d+"), timeout=15000)
    victim = replicas(stack)[-1]
    h = Host(victim["host"], lab_host(stack, victim["host"]).uri)
    try:
        h.guest(victim["name"]).destroy()          # behind cms's back, as a crash would
    finally:
        h.close()
    alert = page.locator(f'.alert.failure[data-group="{GROUP}"]').filter(has_text=victim["name"]).first
    expect(alert).to_be_visible(timeout=60000)
    assert alert.get_attribute("role") == "alert" and "fail" in alert.get_attribute("data-kind")
    tab.shot("alert")


def test_a_vm_made_through_the_form_has_charts_is_resized_migrated_and_destroyed(stack, tab):
    page = tab.go("/vms/new")
    tab.sign_in()
    name = f"form-{uuid.uuid4().hex[:4]}"
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Type", exact=True).select_option("1")
    page.get_by_label("Host", exact=True).select_option("1")          # hv1, not placement's choice
    page.get_by_label("Name", exact=True).press("Enter")
    expect(page).to_have_url(re.compile(r"#/vms/\d+$"), timeout=120000)
    vmid = int(page.url.rsplit("/", 1)[1])
    view = page.locator("#view")
    expect(view).to_have_attribute("data-host", "hv1", timeout=30000)
    expect(page.locator("#vm-facts")).to_contain_text("running")
    # the live VM's charts have data: the autoscaler samples it every tick
    cpu = page.locator("#vm-cpu")
    expect(cpu).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=60000)
    assert float(cpu.get_attribute("data-latest-cpu")) >= 0
    expect(cpu.locator('.legend li[data-key="vcpu0"]')).to_be_visible()
    # memory as libvirt's balloon reports it (a guest with no balloon driver keeps its boot size)
    mem = page.locator("#vm-memory")
    expect(mem).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=30000)
    mib = round(float(mem.get_attribute("data-latest-memory")))
    assert mib >= 256 and f"{mib} MiB" in mem.locator(".legend").text_content()
    # the 1 h range answers too
    page.get_by_label("1 h", exact=True).check()
    expect(cpu).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=30000)
    tab.shot("vm")
    # resize within the maximum (twice its type): 1 -> 2 vCPUs, live
    page.get_by_label("vCPUs", exact=True).fill("2")
    page.locator("#resize-form button[type=submit]").click()
    expect(page.locator("#resize-form-status")).to_contain_text("now 2 vCPU", timeout=60000)
    expect(view).to_have_attribute("data-vcpus", "2", timeout=30000)
    # beyond it: the API's own message beside the form
    page.get_by_label("vCPUs", exact=True).evaluate("e => e.removeAttribute('max')")
    page.get_by_label("vCPUs", exact=True).fill("9")
    tab.allow("status of 400", f"/v1/vms/{vmid}/resize")
    page.locator("#resize-form button[type=submit]").click()
    error = page.locator("#resize-form-error")
    expect(error).to_be_visible(timeout=30000)
    assert "at most 2 vCPUs" in error.text_content() and error.get_attribute("data-status") == "400"
    # live migration to the other host, chosen in the form
    page.locator("#migrate-form select").select_option(label="hv2 (pmid 2)")
    page.locator("#migrate-form button[type=submit]").click()
    expect(page.locator("#migrate-form-status")).to_contain_text("migrated to hv2", timeout=180000)
    expect(view).to_have_attribute("data-host", "hv2", timeout=30000)
    assert api(f"{stack.url}/v1/vms/{vmid}")[1]["domain_state"] == "running"
    # destroy, after a confirmation
    page.locator("#destroy-form button[type=submit]").click()
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(name)
    dialog.locator("#confirm-ok").click()
    expect(page).to_have_url(re.compile(r"#/$"), timeout=60000)
    expect(page.locator(f'#vms tr[data-vmid="{vmid}"]')).to_have_count(0, timeout=15000)
    assert api(f"{stack.url}/v1/vms/{vmid}")[0] == 404
    h = Host("hv2", lab_host(stack, "hv2").uri)
    try:
        assert not h.exists(f"cms-vm-{vmid}")
    finally:
        h.close()


def test_an_image_registered_through_the_form_is_offered_and_a_bad_path_shows_the_apis_error(stack, tab):
    src = stack.tmp / "tiny.qcow2"
    shutil.copy(blank_golden(), src)
    page = tab.go("/images")
    tab.sign_in()
    name = f"tiny-{uuid.uuid4().hex[:4]}"
    # a path that is no disk image: the API's own words beside the form
    bad = stack.tmp / "not-an-image.txt"
    bad.write_text("hello\n")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Path", exact=True).fill(str(bad))
    tab.allow("status of 400", "/v1/images")
    page.get_by_label("Path", exact=True).press("Enter")
    error = page.locator("#image-form-error")
    expect(error).to_be_visible(timeout=60000)
    status, body = api(stack.url + "/v1/images", "POST", {"name": name, "path": str(bad)})
    assert status == 400 and body["description"] in error.text_content(), (body, error.text_content())
    # a real one: listed, then offered by the create form
    page.get_by_label("Path", exact=True).fill(str(src))
    page.get_by_label("Path", exact=True).press("Enter")
    expect(page.locator("#image-form-status")).to_contain_text(f"registered {name}", timeout=120000)
    expect(page.locator("#image-form-error")).to_be_hidden()
    expect(page.locator(f'#images-list tr[data-name="{name}"]')).to_be_visible()
    tab.shot("images")
    tab.go("/vms/new")
    expect(page.get_by_label("Image", exact=True).locator("option", has_text=name)).to_have_count(1, timeout=15000)


def test_every_page_at_1280_and_390_px_without_console_errors(stack, browser):
    status, vm = api(stack.url + "/v1/vms", "POST", {"name": f"pages-{uuid.uuid4().hex[:4]}", "instance_type": 1})
    assert status == 201, vm
    pages = {"overview": ("/", f'article.group[data-group="{GROUP}"] .kinds, article.host .kinds'),
             "host": ("/hosts/1", "#host-vms table"),
             "vm": (f"/vms/{vm['vmid']}", "#vm-actions form"),
             "create": ("/vms/new", "#create-form"),
             "group": (f"/groups/{GROUP}", "#group-replicas table"),
             "images": ("/images", "#images-list table"),
             "events": ("/events", "#events-list table")}
    try:
        for width in (1280, 390):
            t = Tab(browser, stack.url, width)
            try:
                for name, (path, ready) in pages.items():
                    page = t.go(path)
                    expect(page.locator(ready).first).to_be_visible(timeout=30000)
                    page.wait_for_timeout(1500)      # let the charts take their first frame
                    # nothing wider than the window: tables scroll inside their own box
                    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), (name, width)
                    t.shot(name)
            finally:
                t.close()
    finally:
        assert api(f"{stack.url}/v1/vms/{vm['vmid']}", "DELETE")[0] == 200


def test_events_filter_by_kind_newest_first(stack, tab):
    for _ in range(2):   # asks for the count it has: two events of a kind, and nothing changes
        assert api(f"{stack.url}/v1/groups/{GROUP}/scale", "POST", {"replicas": len(replicas(stack))})[0] == 202
    page = tab.go("/events")
    expect(page.locator("#events-list tbody tr").first).to_be_visible(timeout=15000)
    page.get_by_label("Kind", exact=True).select_option("scale_request")     # applies on change
    others = page.locator('#events-list tbody tr[data-kind]:not([data-kind="scale_request"])')
    expect(others).to_have_count(0, timeout=15000)
    rows = page.locator("#events-list tbody tr[data-kind]")
    expect(rows.nth(1)).to_be_visible()
    # and from the keyboard: back to any kind with the Show button
    page.get_by_label("Kind", exact=True).select_option("")
    page.locator("#events-filter button[type=submit]").focus()
    page.keyboard.press("Enter")
    expect(others.first).to_be_visible(timeout=15000)
    page.get_by_label("Kind", exact=True).select_option("scale_request")
    expect(others).to_have_count(0, timeout=15000)
    ids = [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.id)")]
    assert ids == sorted(ids, reverse=True)


def test_disconnected_with_backoff_then_recovers_by_itself(stack, tab):
    page = tab.go("/")
    conn = page.locator("#conn")
    page.route("**/v1/**", lambda route: route.abort())      # the API goes away, as the browser sees it
    tab.allow("net::ERR_FAILED", "/v1/")
    expect(conn).to_have_attribute("data-state", "disconnected", timeout=15000)
    expect(conn).to_contain_text("retrying in", timeout=10000)
    page.unroute("**/v1/**")
    expect(conn).to_have_attribute("data-state", "connected", timeout=45000)
    expect(page.locator("article.host").first).to_be_visible()


def test_the_wheel_carries_the_console_and_its_vendored_charting_library(tmp_path):
    """What the Ansible controller role installs (a wheel built from this checkout) has the
    console's files and uPlot, at the version package-lock.json pins."""
    src = tmp_path / "src"      # built from a copy, as tests/system's wheelhouse is: nothing written into the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "out", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("cms-*.whl"))).namelist())
    for f in ("index.html", "app.js", "app.css", "charts.js", "pages/vm.js", "vendor/uPlot.esm.js", "vendor/uPlot.min.css"):
        assert f"cms/api/web/{f}" in names, f
    assert not any("node_modules" in n for n in names)
    lock = (ROOT / "cms/api/web/package-lock.json").read_bytes()
    assert json.loads(lock)["packages"]["node_modules/uplot"]["integrity"].startswith("sha512-")
    # vendor/ was copied from what that lock file pins (scripts/web-assets.sh stamps it)
    assert (ROOT / "cms/api/web/vendor/.lock").read_text().strip() == hashlib.sha256(lock).hexdigest()[:16]
