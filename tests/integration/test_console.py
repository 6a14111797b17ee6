"""The operator console in a real browser against the real stack.

Debian's Chromium, driven by Playwright (from PyPI, launched with executable_path: the
browser build `playwright install` would download cannot be fetched here), against cms-api
under gunicorn with the real libvirtd, and cms-autoscaler running a group of replicas from
the golden image. One API server, one autoscaler and one browser serve the whole module;
each test opens its own tab.

Every tab counts its browser-console errors and uncaught exceptions, and must end with
none, except a failed load of a URL the test provoked on purpose and named (Chromium logs
every 4xx answer to fetch() as "Failed to load resource").

A canvas cannot be read, so chart data is asserted on what the page writes into the DOM
(each chart's data-points and legend). Screenshots of every page at 1280 and 390 px wide go
to out/console/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from cms.lab.realstack import GOLDEN, blank_golden, drop_pool, stop_process, wait_until
from cms.virt import Host
from tests.integration.test_api_real import served
from tests.support import ROOT, free_port

pytestmark = pytest.mark.real

TOKEN = "console-token"
GROUP = "ctest"
OUT = ROOT / "out" / "console"
CHROMIUM = "/usr/bin/chromium"
# The flags the machine facts give for a root, offline Chromium (Playwright adds --headless).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BOOT = 240.0


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
    pool: str
    blank: str
    autoscaler: subprocess.Popen
    made: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    pool = f"cmstest-{uuid.uuid4().hex[:8]}"
    blank = blank_golden()
    (tmp / "image_file").write_text(f"{blank}\n")
    (tmp / "types_file").write_text(json.dumps({"types": [
        {"tid": 1, "cpu": 1, "ram": 256, "disk": 1}, {"tid": 2, "cpu": 2, "ram": 512, "disk": 1}]}))
    port, pub, snap = free_port(), free_port(), free_port()
    # The group's policy never acts by itself within a test (its windows outlast the module):
    # what scales it here is the console's scale form and a replica killed from outside.
    config = f"""
state_db = "{tmp}/state.db"
[[hosts]]
name = "local"
uri = "qemu:///system"
[libvirt]
domain_type = "auto"
pool = "{pool}"
pool_path = "/var/lib/cms/test/{pool}"
[image]
golden = "{GOLDEN}"
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
            yield Stack(url, tmp, pool, blank, scaler)
        finally:
            stop_process(scaler)
            log.close()
    h = Host("local", "qemu:///system")
    try:
        for d in h.owned_domains():
            if d.meta.group == GROUP or (d.meta.role == "vm" and d.meta.image and d.meta.image.startswith(str(tmp))) \
                    or (d.meta.role == "vm" and pool in h.conn().lookupByName(d.name).XMLDesc(0)):
                h.remove(d.name, pool)
        drop_pool(h, pool)
    finally:
        h.close()


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
        expect(self.page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=30000)
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


# -- the tests, in the order they run ------------------------------------------------------------

def test_overview_lists_the_hosts_and_the_group(stack, tab):
    page = tab.go("/")
    host = page.locator('article.host[data-host="local"]')
    expect(host).to_be_visible(timeout=30000)
    expect(page.locator(f'article.group[data-group="{GROUP}"]')).to_be_visible()
    # the group's first replica exists (the autoscaler keeps min = 1), and the host card counts
    # it as a replica: every cms VM on the host, by kind
    wait_until(lambda: len(replicas(stack)) >= 1, 120, 1, what="the autoscaler's first replica")
    expect(host.locator(".kinds")).not_to_have_attribute("data-replica", "0", timeout=15000)
    kinds = host.locator(".kinds").text_content()
    assert "replica" in kinds and "API VM" in kinds and "warm" in kinds
    vcpus = host.locator(".vcpus")
    assert int(vcpus.get_attribute("data-cpus")) == os.cpu_count() and "overcommit allowed 16" in vcpus.text_content()
    # without a token the console is read-only, and says so where the actions are
    page.goto(f"{stack.url}/#/groups/{GROUP}")
    expect(page.locator("#scale-form button[type=submit]")).to_be_disabled()
    expect(page.locator("#scale-form .why")).to_contain_text("Read-only")
    tab.go("/")
    expect(page.locator(f'article.host[data-host="local"] .chart')).to_have_attribute("data-points", re.compile(r"[1-9]"),
                                                                                      timeout=30000)
    tab.shot("overview")


def test_scaling_shows_pending_then_applied_and_the_count_follows(stack, tab):
    page = tab.go(f"/groups/{GROUP}")
    tab.sign_in()
    expect(page.locator("#view")).to_have_attribute("data-replicas", "1", timeout=60000)
    page.fill("#scale-form input[name=replicas]", "2")
    page.click("#scale-form button[type=submit]")
    status = page.locator("#scale-state")
    expect(status).to_have_attribute("data-state", "applied", timeout=60000)
    expect(page.locator("#view")).to_have_attribute("data-replicas", "2", timeout=60000)
    seen = status.get_attribute("data-seen").split(",")
    assert seen[:2] == ["pending", "applying"] or seen[:2] == ["pending", "applied"], seen
    # the autoscaler logged it, and the decision log shows it
    expect(page.locator('#group-log tr[data-kind="scale_override"]').first).to_be_visible(timeout=15000)
    tab.shot("group")


def test_a_replica_destroyed_from_outside_shows_as_an_alert(stack, tab):
    page = tab.go("/")
    expect(page.locator("#alerts")).to_have_attribute("data-since", re.compile(r"\d+"), timeout=15000)
    victim = replicas(stack)[-1]
    h = Host("local", "qemu:///system")
    try:
        h.conn().lookupByName(victim["name"]).destroy()     # behind cms's back, as a crash would
    finally:
        h.close()
    alert = page.locator(f'.alert.failure[data-group="{GROUP}"]').filter(has_text=victim["name"]).first
    expect(alert).to_be_visible(timeout=60000)
    assert alert.get_attribute("role") == "alert"
    tab.shot("alert")
