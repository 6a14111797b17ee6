"""A replica boots from the golden image through the cms libvirt layer and serves.

Linked clone of /var/lib/cms/images/golden.qcow2 (built by `make image`), direct kernel
boot under the configured domain type (TCG here), QEMU user networking with a port forward
on 127.0.0.1. Waits (bounded) for /health, checks the server runs as cms-guest.service
under the replica's own hostname, sends work, then destroys the VM and checks nothing is
left behind.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request

import pytest

from cms.virt import OwnerMeta
from cms.lab.realstack import GOLDEN, real_fleet

pytestmark = pytest.mark.real

BOOT_TIMEOUT_S = 120.0


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_healthy(port: int, timeout: float) -> float:
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = get(port, "/health", timeout=2)
            if status == 200 and body == {"status": "ok"}:
                return time.monotonic() - t0
            last = f"{status} {body}"
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise AssertionError(f"no good /health on 127.0.0.1:{port} within {timeout}s (last: {last})")


@pytest.fixture
def fleet(tmp_path, run_dir):
    assert GOLDEN.exists(), f"{GOLDEN} is missing: run `make image` first"
    with real_fleet(tmp_path, "gbtest") as f:
        yield f


def test_replica_boots_serves_and_goes_away(fleet):
    cfg = fleet.cfg
    h = fleet.host("local")
    name = f"cms-gbtest-{int(time.time() * 1000):x}"
    s = fleet.build_on("local", name, vcpus=1, memory_mib=512, meta=OwnerMeta(group="gbtest"))
    assert s.address == "127.0.0.1"
    wait_healthy(s.port, BOOT_TIMEOUT_S)

    status, st = get(s.port, "/status")
    assert status == 200
    assert st["unit"] == "cms-guest.service"
    assert st["hostname"] == name  # systemd.hostname= from the kernel command line
    assert st["workers"] == 1  # one per vCPU
    served_before = st["served"]

    status, body = get(s.port, "/work?payload=boot-test&cost=20000", timeout=60)
    assert status == 200
    assert body == {"result": hashlib.pbkdf2_hmac("sha256", b"boot-test", b"cms-guest", 20000).hex(),
                    "cost": 20000, "hostname": name}
    req = urllib.request.Request(f"http://127.0.0.1:{s.port}/work", method="POST",
                                 data=json.dumps({"payload": "p", "cost": 0}).encode())
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 400
    assert get(s.port, "/status")[1]["served"] == served_before + 1

    fleet.remove("local", name, graceful_timeout=0)
    assert fleet.owned("gbtest") == []
    assert not h.exists(name)
    assert h.storage.list_volumes(cfg.libvirt.pool) == []
    with pytest.raises(OSError):
        get(s.port, "/health", timeout=2)
