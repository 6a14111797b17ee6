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
(each chart's data-points, its legend and its axes' tick labels). Screenshots of every page at
1280 and 390 px wide go to out/console/ for a person to look at (docs/'s pictures come from
a demo run instead: scripts/console-screenshots.sh).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
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


# -- what every chart and host card must show (asserted on the DOM the console writes) -----------

CLOCK = re.compile(r"^\d\d:\d\d$")
WHOLE = re.compile(r"^\d+$")
NO_DATA = "no recent data"

CHARTS_JS = """() => [...document.querySelectorAll('figure.chart')].map(f => ({
    id: f.id, unit: f.dataset.unit, paths: f.dataset.paths, points: Number(f.dataset.points),
    x: f.dataset.xLabels ? f.dataset.xLabels.split('|') : [], y: f.dataset.yLabels ? f.dataset.yLabels.split('|') : [],
    legend: [...f.querySelectorAll('.legend li')].map(li => [li.dataset.key, li.querySelector('strong').textContent])}))"""


def charts_on(page: Page) -> list[dict]:
    return page.evaluate(CHARTS_JS)


def assert_charts_read_right(page: Page) -> list[dict]:
    """One time-label format on every chart; a count is a whole number everywhere (legend, axis)
    and drawn as steps; no CPU share over 100 %; a memory axis in one unit."""
    charts = wait_until(lambda: (cs := charts_on(page)) and all(c["x"] for c in cs if c["points"]) and cs,
                        30, 0.5, what="the charts' first frame")
    for c in charts:
        assert all(CLOCK.match(t) for t in c["x"]), (c["id"], c["x"])
        values = [text for _key, text in c["legend"] if text != NO_DATA]
        if c["unit"] == "count":
            assert c["paths"] == "stepped", c
            assert all(WHOLE.match(v) for v in values), (c["id"], c["legend"])
            assert all(WHOLE.match(t) for t in c["y"]), (c["id"], c["y"])
        elif c["unit"] == "pct":
            assert all(float(v.split()[0]) <= 100.0 for v in values), (c["id"], c["legend"])
        elif c["unit"] == "mib":
            assert len({t.split()[-1] for t in c["y"]}) <= 1, (c["id"], c["y"])     # MiB or GiB, not both
    assert any(c["x"] for c in charts), charts      # at least one chart was drawn: the checks above saw labels
    for fit in page.evaluate(Y_LABELS_FIT_JS):       # no y label cut at the left edge ("000 MiB" for 1000)
        assert fit["left"] is None or fit["widest"] + 15 <= fit["left"], fit
    return charts


# Each chart's widest y label, measured in the chart's own axis font, against where uPlot put the
# plot's left edge (the label is drawn right-aligned, a 10 px tick and a 5 px gap before it).
Y_LABELS_FIT_JS = """() => [...document.querySelectorAll('figure.chart')].map(f => {
    const c = document.createElement('canvas').getContext('2d');
    c.font = f.dataset.axisFont;
    const over = f.querySelector('.u-over');
    const labels = (f.dataset.yLabels || '').split('|').filter(Boolean);
    return {id: f.id, labels, left: over ? over.offsetLeft : null,
            widest: Math.max(0, ...labels.map(l => c.measureText(l).width))};
})"""


# The CPU bar of every host card or page and its chart's host line, read in one go.
BARS_JS = """() => [...document.querySelectorAll('article.host, #view[data-page^="/hosts/"]')].map(c => ({
    bar: c.querySelector('.bar[aria-label="CPU"] .bar-text')?.textContent ?? null,
    legend: c.querySelector('figure.chart .legend li[data-key="cpu"] strong')?.textContent ?? null}))"""


def assert_cpu_bar_matches_its_chart(page: Page, times: int = 4) -> None:
    """A host's CPU bar never says "no sample" while its chart shows a value, nor another value:
    both come from the same frame. Checked over a few refreshes."""
    seen = 0
    for _ in range(times):
        for card in page.evaluate(BARS_JS):
            if card["bar"] is None or card["legend"] is None:
                continue
            seen += 1
            if "no sample" in card["bar"]:
                assert card["legend"] == NO_DATA, card
            else:
                assert card["bar"].split(" of ")[0] == card["legend"], card
        page.wait_for_timeout(1500)
    assert seen, "no host card with both a CPU bar and a chart"


def within_width(page: Page, locator) -> bool:
    """The element is visible, has text, and lies within the window's width (not cut off)."""
    box = locator.bounding_box()
    width = page.evaluate("window.innerWidth")
    return bool(box) and box["x"] >= 0 and box["x"] + box["width"] <= width + 1 and locator.inner_text().strip() != ""


def json_route(page: Page, pattern, change) -> None:
    """Answer requests matching pattern with the real API's JSON, changed by change(body)."""
    def handle(route):
        resp = route.fetch()
        body = resp.json()
        change(body)
        route.fulfill(response=resp, json=body)
    page.route(pattern, handle)


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
    assert kinds.startswith("1 cms VM: "), kinds                 # plurals: "1 cms VM", "2 vCPUs"
    vcpus = host.locator(".vcpus")
    assert int(vcpus.get_attribute("data-used")) == 1 and int(vcpus.get_attribute("data-cpus")) >= 1
    assert "overcommit allowed 16" in vcpus.text_content() and "1 vCPU given" in vcpus.text_content()
    assert re.search(r"up to \d+ vCPUs\)", vcpus.text_content()), vcpus.text_content()
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
    assert_charts_read_right(page)
    assert_cpu_bar_matches_its_chart(page)
    # no alert yet, and none takes room
    assert page.locator("#alerts").is_hidden()
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
    # the count went 1 -> 2 within the chart's range: the buckets across the change hold means
    # like 1.5, and the chart still says whole replicas
    expect(page.locator(f"#grp-replicas-{GROUP} .legend li[data-key=replicas]")).to_have_attribute(
        "data-latest", "2", timeout=30000)
    assert_charts_read_right(page)
    # the policy in words, a size-0 warm pool as none, a number box a number wide
    policy = " ".join(page.locator("#group-policy").inner_text().split())
    for words in ("policy threshold", "scale out above 99 %", "window out 60 min", "scale in below 1 %",
                  "window in 60 min", "cooldown 0 s", "warm-up 5 s"):
        assert words in policy, (words, policy)
    assert "_s" not in policy and "window_in" not in policy, policy
    expect(page.locator("#group-warm")).to_contain_text("No warm pool")
    expect(page.locator("#group-warm dl")).to_have_count(0)
    assert page.get_by_label("Replicas", exact=True).bounding_box()["width"] < 200
    tab.shot("group")


def test_alerts_collapse_to_a_count_scaling_ones_go_by_themselves_failures_stay(stack, browser):
    """At 390 px: a scaling alert and a failure (a replica destroyed from outside) collapse into
    one line in the page's flow with their count, open in a drawer; the scaling alert dismisses
    itself, the failure stays until dismissed."""
    tab = Tab(browser, stack.url, 390)
    try:
        page = tab.go("/")
        alerts = page.locator("#alerts")
        expect(alerts).to_have_attribute("data-since", re.compile(r"\d+"), timeout=15000)
        # a scale request for the count it has: the autoscaler answers with a scale_override
        assert api(f"{stack.url}/v1/groups/{GROUP}/scale", "POST", {"replicas": len(replicas(stack))})[0] == 202
        expect(alerts).to_be_visible(timeout=30000)
        expect(alerts.locator(".alerts-count")).to_have_text(re.compile(r"^\d+ alerts?$"))
        drawer = page.locator("#alerts-drawer")
        expect(drawer).to_be_hidden()
        scaling = drawer.locator('.alert.scaling[data-kind="scale_override"]')
        expect(scaling).to_have_count(1)
        victim = replicas(stack)[-1]
        h = Host(victim["host"], lab_host(stack, victim["host"]).uri)
        try:
            h.guest(victim["name"]).destroy()          # behind cms's back, as a crash would
        finally:
            h.close()
        expect(alerts).to_have_attribute("data-failures", re.compile(r"^[1-9]"), timeout=60000)
        expect(alerts.locator(".alerts-toggle .badge.bad")).to_contain_text("failure")

        def in_flow() -> None:        # the alerts sit above the page, never over it
            a, v = alerts.bounding_box(), page.locator("#view").bounding_box()
            assert a["y"] + a["height"] <= v["y"] + 1, (a, v)
            assert page.evaluate("getComputedStyle(document.getElementById('alerts')).position") == "static"
        in_flow()
        assert alerts.bounding_box()["height"] < 80              # collapsed: one line
        page.locator(".alerts-toggle").click()
        failure = drawer.locator(f'.alert.failure[data-group="{GROUP}"]').filter(has_text=victim["name"]).first
        expect(failure).to_be_visible()
        assert failure.get_attribute("role") == "alert" and "fail" in failure.get_attribute("data-kind")
        in_flow()
        # the scaling alert goes by itself; the failure stays
        expect(scaling).to_have_count(0, timeout=30000)
        expect(failure).to_be_visible()
        tab.shot("alert")
        mine = drawer.locator(f'.alert[data-id="{failure.get_attribute("data-id")}"]')
        mine.locator("button.close").click()
        expect(mine).to_have_count(0)
    finally:
        tab.close()


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
    # plurals, and memory now against its maximum, with what that means (the balloon)
    expect(page.locator("#vm-size")).to_have_text("1 vCPU of at most 2 vCPUs")
    expect(page.locator("#vm-memory-now")).to_contain_text("of at most 512 MiB")
    expect(page.locator("#vm-memory-now")).to_contain_text("balloon")
    # the serial log is on hv1, another host than the API's: unavailable, and why, not "(empty)"
    console = page.locator("#vm-console")
    expect(console).to_have_attribute("data-state", "unavailable", timeout=15000)
    expect(console).to_contain_text("Unavailable: the log is on host hv1")
    # the live VM's charts have data: the autoscaler samples it every tick
    cpu = page.locator("#vm-cpu")
    expect(cpu).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=60000)
    # its latest CPU figure is recent, a share of its own vCPUs (shown at most 100 %), and the
    # legend says it in percent (both read in one call: the chart redraws every few seconds)
    latest, shown = cpu.evaluate("el => [el.dataset.latestCpu, "
                                 "el.querySelector('.legend li[data-key=\"cpu\"] strong').textContent]")
    assert latest != "", "the VM's chart has no recent CPU figure"
    share = float(latest)
    as_js = Decimal(share * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)     # toFixed(1): a tie goes up
    assert 0 <= share <= 1 and shown == f"{as_js} %"
    expect(cpu.locator('.legend li[data-key="vcpu0"]')).to_be_visible()
    # memory as libvirt's balloon reports it (a guest with no balloon driver keeps its boot size)
    mem = page.locator("#vm-memory")
    expect(mem).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=30000)
    mib = round(float(mem.get_attribute("data-latest-memory")))
    assert mib >= 256 and f"{mib} MiB" in mem.locator(".legend").text_content()
    expect(mem.locator('.legend li[data-key="max"]')).to_contain_text("512 MiB")
    assert_charts_read_right(page)
    # the 1 h range answers too
    page.get_by_label("1 h", exact=True).check()
    expect(cpu).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=30000)
    tab.shot("vm")
    # resize within the maximum (twice its type): 1 -> 2 vCPUs, live
    page.get_by_label("vCPUs", exact=True).fill("2")
    page.locator("#resize-form button[type=submit]").click()
    expect(page.locator("#resize-form-status")).to_contain_text("now 2 vCPUs", timeout=60000)
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
    # destroy, after a confirmation: nothing is "working" while it is asked, and a cancel keeps the VM
    status = page.locator("#destroy-form-status")
    page.locator("#destroy-form button[type=submit]").click()
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(name)
    assert "working" not in status.text_content()
    dialog.locator("#confirm-cancel").click()
    expect(status).to_have_text("cancelled")
    assert api(f"{stack.url}/v1/vms/{vmid}")[0] == 200
    page.locator("#destroy-form button[type=submit]").click()
    expect(dialog).to_be_visible()
    assert "working" not in status.text_content()
    dialog.locator("#confirm-ok").click()
    expect(page).to_have_url(re.compile(r"#/$"), timeout=60000)
    expect(page.locator(f'#vms tr[data-vmid="{vmid}"]')).to_have_count(0, timeout=15000)
    assert api(f"{stack.url}/v1/vms/{vmid}")[0] == 404
    # its samples are still in hv2's 5-minute range, but it has left hv2's legend with the table
    now = time.time()
    frame = api(f"{stack.url}/v1/hosts/2/metrics?since={now - 300}&until={now}&step=5")[1]
    assert f"cms-vm-{vmid}" in frame["domains"], frame["domains"].keys()
    expect(page.locator(f'article.host[data-host="hv2"] .legend li[data-key="cms-vm-{vmid}"]')).to_have_count(0, timeout=10000)
    assert_cpu_bar_matches_its_chart(page, times=2)
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
    pmid = vm["pmid"]
    pages = {"overview": ("/", f'article.group[data-group="{GROUP}"] .kinds, article.host .kinds'),
             "host": (f"/hosts/{pmid}", "#host-vms table"),
             "vm": (f"/vms/{vm['vmid']}", "#vm-actions form"),
             "create": ("/vms/new", "#create-form"),
             "group": (f"/groups/{GROUP}", "#group-replicas table"),
             "images": ("/images", "#images-list table"),
             "events": ("/events", "#events-list table")}
    try:
        # the screenshots show a VM with charts, not a blank one
        wait_until(lambda: api(f"{stack.url}/v1/vms/{vm['vmid']}/metrics")[1]["points"] >= 3, 120, 1,
                   what="the page VM's first samples")
        for width in (1280, 390):
            t = Tab(browser, stack.url, width)
            try:
                for name, (path, ready) in pages.items():
                    page = t.go(path)
                    expect(page.locator(ready).first).to_be_visible(timeout=30000)
                    if name in ("overview", "host", "vm", "group"):
                        assert_charts_read_right(page)
                    else:
                        page.wait_for_timeout(1500)
                    if name in ("overview", "host"):
                        assert_cpu_bar_matches_its_chart(page, times=1)
                    # nothing wider than the window: tables scroll inside their own box, or stack
                    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), (name, width)
                    if width == 390:
                        check_narrow(page, name)
                    if name == "host":
                        check_host_units_and_lines(page)
                    t.shot(name)
            finally:
                t.close()
    finally:
        assert api(f"{stack.url}/v1/vms/{vm['vmid']}", "DELETE")[0] == 200


def check_narrow(page: Page, name: str) -> None:
    """At 390 px every table row is a card: each cell readable within the window, under its
    column's name; what an operator needs on a phone is there."""
    if name == "overview":
        row = page.locator("#recent-events tbody tr").first
        expect(row).to_be_visible()
        for col in ("message", "kind", "time"):
            cell = row.locator(f'td[data-label="{col}"]')
            assert within_width(page, cell), (col, cell.bounding_box())
    if name == "group":
        row = page.locator("#group-replicas tbody tr").first
        for col in ("CPU (last)", "libvirt state", "autoscaler state"):
            assert within_width(page, row.locator(f'td[data-label="{col}"]')), col
        logged = page.locator("#group-log tbody tr[data-kind]")     # the tests before this one scaled the group
        if logged.count():
            assert within_width(page, logged.first.locator('td[data-label="reason"]'))
    if name == "events":
        row = page.locator("#events-list tbody tr").first
        assert within_width(page, row.locator('td[data-label="message"]'))
    for label in page.locator("td[data-label]").evaluate_all("tds => tds.slice(0, 40).map(td => getComputedStyle(td, '::before').content)"):
        assert label not in ("none", "normal", '""'), label          # each cell says its column


def check_host_units_and_lines(page: Page) -> None:
    """The host page: the free-RAM legend in the unit the figures beside it use, and the VM
    count drawn on top of its vCPUs in another style (it used to hide under them)."""
    ram = page.locator("#host-ram .legend li[data-key=free] strong").text_content()
    figures = page.locator('#host-figures .bar[aria-label="RAM"] .bar-text').text_content()
    free = re.search(r"([\d.]+ [MG]iB) free on the host", figures).group(1)
    if ram != NO_DATA:
        assert ram.split()[-1] == free.split()[-1], (ram, figures)
    axis = {t.split()[-1] for t in page.locator("#host-ram").get_attribute("data-y-labels").split("|")}
    assert axis == {free.split()[-1]}, (axis, figures)
    lines = page.locator("#host-vms-count .legend li")
    assert lines.evaluate_all("lis => lis.map(li => li.dataset.key)") == ["vcpus", "vms"]   # drawn in this order
    assert lines.nth(1).get_attribute("data-dash") and not lines.nth(0).get_attribute("data-dash")


def test_counts_stay_whole_and_a_cpu_share_reads_at_most_100_percent(stack, tab):
    """What the server may send (a bucket's mean count, 1.5; TCG's accounting a little over the
    wall clock, 101.3 %) is shown as a whole count and at most 100 %."""
    page = tab.page

    def fractional(m: dict) -> None:
        m["series"]["replicas"][-1] = 1.5
        m["series"]["states"] = {"starting": [None] * (len(m["ts"]) - 1) + [0.2],
                                 "ready": [None] * (len(m["ts"]) - 1) + [1.5]}

    def over(g: dict) -> None:
        g["replicas"][0]["cpu"] = [0.5, 1.013]
    json_route(page, re.compile(rf"/v1/groups/{GROUP}/metrics\?"), fractional)
    json_route(page, re.compile(rf"/v1/groups/{GROUP}$"), over)
    tab.go(f"/groups/{GROUP}")
    legend = page.locator(f"#grp-replicas-{GROUP} .legend")
    expect(legend.locator("li[data-key=state-starting] strong")).to_have_text("0", timeout=15000)
    expect(legend.locator("li[data-key=state-ready] strong")).to_have_text("2")
    expect(legend.locator("li[data-key=replicas] strong")).to_have_text("2")
    assert_charts_read_right(page)
    expect(page.locator("#group-replicas tbody tr").first.locator("td.cpu")).to_have_text("100 %")


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
