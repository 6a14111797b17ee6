"""The console's screenshots in docs/, from what a `make demo` machine shows.

Runs the real `cms-demo` (its embedded defaults, a longer last low phase) and, once the group
has scaled out under the high load and back in after it, so the charts show the demo's whole
story (1 -> 2 -> 1), does what an operator would on that machine: makes a VM of the demo's
type 1 through the console's API (with the run's token, from out/shots/demo.toml), waits for
its first samples, and photographs the overview, VM, group and host pages at 1280 and 390 px
with Debian's Chromium (Playwright, ``executable_path``). Then it destroys the VM and lets the
demo finish and clean up. (A VM made during the high load shares the 2 cores with the
replicas, and once pushed the group to its third replica.) The 1280 px overview is docs/console-overview.png (the README's first picture); the rest
are docs/console-<page>-<width>.png.

Usage: scripts/console-screenshots.sh (the venv's python; needs what `make demo` and the
browser tests need: the golden image, libvirtd, chromium, playwright). About 7 minutes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "shots"
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCHEDULE = "low:30s,high:120s,low:150s"
GROUP = "demo"
VM_NAME = "console-shot"


class Failed(Exception):
    pass


def say(msg: str) -> None:
    print(f"[console-shots] {msg}", flush=True)


def call(url: str, method: str = "GET", body: Any = None, token: str = "", timeout: float = 120) -> Any:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise Failed(f"{method} {url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except OSError as exc:
        raise Failed(f"{method} {url}: {exc}") from None


def until(what: str, timeout: float, check: Callable[[], Any], alive: Callable[[], None]) -> Any:
    say(f"waiting for {what} (at most {timeout:.0f} s)")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive()
        try:
            got = check()
        except Failed:
            got = None
        if got:
            return got
        time.sleep(1.0)
    raise Failed(f"no {what} within {timeout:.0f} s; see {OUT}/")


def photograph(url: str, vm: dict[str, Any]) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright
    pages = {"overview": ("/", f'article.group[data-group="{GROUP}"]'),
             "vm": (f"/vms/{vm['vmid']}", "#vm-actions form"),
             "group": (f"/groups/{GROUP}", "#group-replicas table"),
             "host": (f"/hosts/{vm['pmid']}", "#host-vms table")}
    wrote = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width in (1280, 390):
                ctx = browser.new_context(viewport={"width": width, "height": 900})
                page = ctx.new_page()
                for name, (path, ready) in pages.items():
                    page.goto(f"{url}/#{path}")
                    expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=30000)
                    expect(page.locator(ready).first).to_be_visible(timeout=30000)
                    page.wait_for_timeout(3000)          # the charts' first frames and the legends
                    dest = DOCS / ("console-overview.png" if (name, width) == ("overview", 1280)
                                   else f"console-{name}-{width}.png")
                    page.screenshot(path=str(dest), full_page=True)
                    wrote.append(dest)
                    say(f"wrote {dest.relative_to(ROOT)}")
                ctx.close()
        finally:
            browser.close()
    return wrote


def main() -> int:
    from cms.netutil import free_port
    if not Path(CHROMIUM).exists():
        say(f"{CHROMIUM} is missing: apt-get install chromium (scripts/run-tests.sh installs it)")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(OUT / "cms-demo.out", "w")
    say(f"starting cms-demo --out {OUT.relative_to(ROOT)} --schedule {SCHEDULE} (its output: {OUT / 'cms-demo.out'})")
    demo = subprocess.Popen([str(Path(sys.executable).parent / "cms-demo"), "--out", str(OUT), "--api-port", str(port),
                             "--schedule", SCHEDULE], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)

    def alive() -> None:
        if demo.poll() is not None:
            raise Failed(f"cms-demo exited with {demo.returncode} early; see {OUT / 'cms-demo.out'}")

    vm: dict[str, Any] | None = None
    token = ""
    try:
        def scaled_in() -> bool:
            removed = call(f"{url}/v1/events?kind=removed&group={GROUP}", timeout=10)["events"]
            replicas = call(f"{url}/v1/groups/{GROUP}", timeout=10)["replicas"]
            return bool(removed) and [r.get("replica_state") for r in replicas] == ["ready"]
        until("the demo's scale-out under the high load and its scale-in after it", 900, scaled_in, alive)
        token = tomllib.loads((OUT / "demo.toml").read_text())["api"]["token"]
        say(f"making VM {VM_NAME} of type 1 through the API, as the console's Create form does")
        vm = call(f"{url}/v1/vms", "POST", {"name": VM_NAME, "instance_type": 1}, token=token, timeout=300)
        until(f"the first samples of {VM_NAME}", 180,
              lambda: call(f"{url}/v1/vms/{vm['vmid']}/metrics", timeout=10)["points"] >= 3, alive)
        try:
            photograph(url, vm)
        except Exception as exc:  # noqa: BLE001 - Playwright's timeouts and assertions: one line, then clean up
            raise Failed(f"photographing the console: {str(exc).splitlines()[0]}") from None
        say(f"destroying {VM_NAME}")
        call(f"{url}/v1/vms/{vm['vmid']}", "DELETE", token=token)
        vm = None
        say("letting the demo finish its schedule and clean up")
        try:
            rc = demo.wait(600)
        except subprocess.TimeoutExpired:
            raise Failed(f"cms-demo did not finish within 600 s; see {OUT / 'cms-demo.out'}") from None
        if rc != 0:
            raise Failed(f"cms-demo exited with {rc}; see {OUT / 'cms-demo.out'}")
        say("done: docs/console-overview.png and docs/console-{overview-390,vm-*,group-*,host-*}.png")
        return 0
    except Failed as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        if demo.poll() is None:               # its own cleanup removes its replicas and the API's VMs
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(120)
            except subprocess.TimeoutExpired:
                demo.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
