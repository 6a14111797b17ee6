"""`cms doctor` (the CLI, as a user runs it) against the real libvirtd and a real cms-api.

With everything in place, every check passes and the exit code is 0. Then one thing goes
wrong at a time: a host whose URI does not answer, a missing golden image, a pool
directory that cannot be written. Each gives its FAIL line naming the fix, exit code 1,
and no traceback.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from cms.lab.realstack import drop_pool, wait_until
from cms.virt import Host
from tests.integration.test_api_real import served
from tests.support import ROOT, blank_golden, free_port

pytestmark = pytest.mark.real


def toml(tmp: Path, pool: str, *, api_port: int, golden: str = "", pool_path: str = "",
         extra_hosts: str = "", metrics_port: int = 0) -> str:
    """A configuration for the local libvirtd; the golden image a small blank qcow2 (no kernel
    beside it) unless `golden` says otherwise."""
    golden = golden or blank_golden()
    return f"""
state_db = "{tmp}/state.db"
[[hosts]]
name = "local"
uri = "qemu:///system"
{extra_hosts}
[libvirt]
domain_type = "auto"
pool = "{pool}"
pool_path = "{pool_path or f'/var/lib/cms/test/{pool}'}"
[image]
golden = "{golden}"
[zmq]
publish = "tcp://127.0.0.1:{free_port()}"
snapshot = "tcp://127.0.0.1:{free_port()}"
[api]
bind = "127.0.0.1:{api_port}"
[autoscaler]
metrics_listen = "127.0.0.1:{metrics_port or free_port()}"
# no groups (the embedded default has "web" with min 1): the autoscaler this test runs would
# spawn a replica of the blank image, and leave its domain defined after the pool is dropped
[groups]
"""


def doctor(tmp: Path, text: str, *args: str) -> tuple[int, list[dict], str, str]:
    """Run `cms doctor --config F --json` and `cms doctor --config F`; both must agree."""
    cfg = tmp / f"doctor-{uuid.uuid4().hex[:6]}.toml"
    cfg.write_text(text)
    base = [sys.executable, "-m", "cms.cli", "doctor", "--config", str(cfg), *args]
    as_json = subprocess.run([*base, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    human = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in as_json.stderr + human.stderr, as_json.stderr + human.stderr
    assert as_json.returncode == human.returncode, (as_json, human)
    doc = json.loads(as_json.stdout)
    assert doc["ok"] == (as_json.returncode == 0)
    return as_json.returncode, doc["checks"], human.stdout, human.stderr


@pytest.fixture
def test_pool():
    """A pool of the test's own on the real libvirtd, made the way cms makes it; dropped after."""
    pool = f"cmstest-{uuid.uuid4().hex[:8]}"
    host = Host("local", "qemu:///system")
    host.storage.ensure_pool(pool, f"/var/lib/cms/test/{pool}")
    try:
        yield pool
    finally:
        drop_pool(host, pool)
        host.close()


@contextlib.contextmanager
def autoscaler(tmp: Path, text: str, metrics_port: int):
    """cms-autoscaler on this configuration (no groups: it ticks over the host and leads alone)
    until the block ends, once its /health says it has finished a tick."""
    path = tmp / "autoscaler.toml"
    path.write_text(text)
    log = open(tmp / "autoscaler.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cms.autoscaler.daemon", "--config", str(path)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def leads():
        assert proc.poll() is None, (tmp / "autoscaler.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=2) as r:
                return json.load(r).get("role") == "leader"
        except OSError:
            return False

    try:
        wait_until(leads, 60, what="cms-autoscaler to lead")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_everything_passes_on_this_machine(tmp_path: Path, test_pool: str):
    port, metrics = free_port(), free_port()
    text = toml(tmp_path, test_pool, api_port=port, metrics_port=metrics)
    with served(tmp_path, text), autoscaler(tmp_path, text, metrics):
        code, checks, human, _ = doctor(tmp_path, text)
    assert code == 0, human
    assert [c for c in checks if c["status"] != "ok"] == [], human
    names = [c["check"] for c in checks]
    for name in ("config", "kvm-device", "libvirt", "domain-type", "define", "pool", "image", "ports", "zmq",
                 "state-db", "api"):
        assert name in names, human
    got = {c["check"]: c for c in checks}
    assert got["libvirt"]["detail"].startswith("qemu:///system answers: libvirt 9.")
    assert got["domain-type"]["detail"].startswith("auto gives ")
    assert got["define"]["detail"].startswith("a throwaway ")
    assert any(c["check"] == "pool" and c["detail"].startswith(f"active over /var/lib/cms/test/{test_pool}")
               for c in checks), human
    assert got["api"]["detail"] == "cms-api answers"
    assert got["controller"]["detail"].endswith("leads, the only controller (no [coordination])"), human
    assert human.splitlines()[-1] == f"cms doctor: 0 failed, 0 warnings, {len(checks)} checks"


def test_a_host_that_does_not_answer(tmp_path: Path, test_pool: str):
    port = free_port()
    uri = f"qemu+tcp://127.0.0.1:{port}/system"
    code, checks, human, _ = doctor(tmp_path, toml(tmp_path, test_pool, api_port=free_port(),
                                                   extra_hosts=f'[[hosts]]\nname = "gone"\nuri = "{uri}"\n'),
                                    "--skip", "api")
    assert code == 1
    [gone] = [c for c in checks if c["subject"] == "gone"]
    assert gone["check"] == "libvirt" and gone["status"] == "fail" and uri in gone["detail"]
    assert f"FAIL  libvirt gone: {uri} does not answer" in human
    assert "-- fix: check the host's uri in the configuration and that libvirtd listens there" in human
    assert [c["check"] for c in checks if c["status"] == "fail"] == ["libvirt"]


def test_a_missing_golden_image(tmp_path: Path, test_pool: str):
    missing = tmp_path / "images" / "golden.qcow2"
    code, checks, human, _ = doctor(tmp_path, toml(tmp_path, test_pool, api_port=free_port(), golden=str(missing)),
                                    "--skip", "api")
    assert code == 1
    assert [(c["check"], c["subject"]) for c in checks if c["status"] == "fail"] == [("image", str(missing))]
    assert (f"FAIL  image {missing}: golden image missing -- fix: set image.golden to a qcow2 image, "
            "or build one with `make image`") in human.splitlines()


def test_a_pool_directory_that_cannot_be_written(tmp_path: Path):
    (tmp_path / "not-a-dir").write_text("")
    path = tmp_path / "not-a-dir" / "pool"
    pool = f"cmstest-{uuid.uuid4().hex[:8]}"        # never defined: cms would make it over `path`
    code, checks, human, _ = doctor(tmp_path, toml(tmp_path, pool, api_port=free_port(), pool_path=str(path)),
                                    "--skip", "api")
    assert code == 1
    [bad] = [c for c in checks if c["status"] == "fail"]
    assert (bad["check"], bad["subject"]) == ("pool", f"local {path}")
    assert f"FAIL  pool local {path}: cannot hold overlays: {tmp_path}/not-a-dir is not a directory" in human
    assert "point libvirt.pool_path (and the pool) elsewhere" in bad["fix"]
