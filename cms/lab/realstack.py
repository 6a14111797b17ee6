"""Helpers for tests that drive the real stack (libvirtd + QEMU under TCG here)."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import time
import uuid
from pathlib import Path

from cms import config

GOLDEN = Path("/var/lib/cms/images/golden.qcow2")
TEST_DIR = Path("/var/lib/cms/test")


def real_config(tmp_path: Path, *, pool: str | None = None, golden: str | None = None, **extra) -> config.Config:
    """A config for the local libvirtd, with its own pool so tests never see each other's volumes."""
    pool = pool or f"cmstest-{uuid.uuid4().hex[:8]}"
    data = {
        "hosts": [{"name": "local", "uri": "qemu:///system"}],
        "libvirt": {"domain_type": "auto", "pool": pool, "pool_path": f"/var/lib/cms/test/{pool}"},
        "image": {"golden": golden or str(GOLDEN)},
        "state_db": str(tmp_path / "state.db"),
    }
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return config.parse(data, "<real-stack test>")


def drop_pool(host, pool: str) -> None:
    """Remove a test pool and whatever is left in it (the assertion comes before this)."""
    import libvirt
    c = host.conn()
    try:
        p = c.storagePoolLookupByName(pool)
    except libvirt.libvirtError:
        return
    if p.isActive():
        for v in p.listAllVolumes():
            v.delete(0)
        p.destroy()
    try:
        p.delete(0)
    except libvirt.libvirtError:
        pass
    p.undefine()


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    return proc.returncode


def work(address: str, port: int, cost: int, payload: str = "x", timeout: float = 30.0) -> int:
    """One request to a replica's /work at ``cost``; its HTTP status."""
    c = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        c.request("GET", f"/work?payload={payload}&cost={cost}")
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def real_fleet(tmp_path: Path, group: str, *, events: bool = False, golden: str | None = None):
    """A Fleet on the local libvirtd with its own pool; afterwards removes the group's
    domains and drops the pool, so a test leaves nothing behind even when it fails."""
    from cms.virt import Fleet
    cfg = real_config(tmp_path, golden=golden)
    f = Fleet(cfg, events=events)
    try:
        yield f
    finally:
        for d in f.owned(group):
            f.remove(d.host, d.name)
        drop_pool(f.host("local"), cfg.libvirt.pool)
        f.close()
