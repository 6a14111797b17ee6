"""Controllers in the lab (cms.lab.controllers, `scripts/lab.sh up N --controllers M`): each in its
own network namespace, reaching the hosts on one link and etcd on another, so `cut-etcd`
cuts it off from etcd alone; `down` leaves nothing. One host, two controllers, three etcd
members (~10 s). Lab name "cmsctl" on 169.254.94.0/24 (etcd on 169.254.194.0/24)."""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest

from cms import config
from cms.lab.hosts import Lab
from cms.lab.realstack import wait_until
from tests.support import ROOT

pytestmark = pytest.mark.real

NAME, SUBNET = "cmsctl", 94


def reaches(ns: str, host: str, port: int) -> bool:
    """A TCP connection from namespace ns to host:port within 2 s."""
    r = subprocess.run(["ip", "netns", "exec", ns, "timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"],
                       capture_output=True, timeout=10)
    return r.returncode == 0


def lab_sh(*args: str) -> str:
    r = subprocess.run([str(ROOT / "scripts" / "lab.sh"), "--name", NAME, "--subnet", str(SUBNET), *args],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_controllers_reach_hosts_and_etcd_on_separate_links_and_a_cut_takes_only_etcd():
    lab = Lab(NAME, SUBNET)
    try:
        out = lab_sh("up", "1", "--controllers", "2")
        assert "c1: netns cmsctl-c1, address 169.254.94.2" in out and "c2: netns cmsctl-c2, address 169.254.94.3" in out
        state = json.loads((lab.root / "controllers.json").read_text())
        etcd = [u.rsplit("//", 1)[1].split(":") for u in state["etcd"]]
        assert len(etcd) == 3 and all(h == "169.254.194.1" for h, _ in etcd)
        cfgs = [config.parse(tomllib.loads((lab.root / f"c{i}.toml").read_text()), f"c{i}.toml") for i in (1, 2)]
        assert [c.coordination.name for c in cfgs] == ["c1", "c2"]
        assert cfgs[0].zmq.publish == cfgs[1].zmq.publish == ["tcp://169.254.94.2:5556", "tcp://169.254.94.3:5556"]
        assert cfgs[0].coordination.url == state["etcd"] and cfgs[1].api.bind == "169.254.94.3:8080"
        for ns in ("cmsctl-c1", "cmsctl-c2"):
            assert reaches(ns, "169.254.94.11", 16509) and reaches(ns, etcd[0][0], int(etcd[0][1]))
        lab_sh("cut-etcd", "c1")
        assert not any(reaches("cmsctl-c1", h, int(p)) for h, p in etcd)        # no etcd member at all
        assert reaches("cmsctl-c1", "169.254.94.11", 16509)                      # the host still
        assert reaches("cmsctl-c2", etcd[1][0], int(etcd[1][1]))                 # the other still has etcd
        lab_sh("heal-etcd", "1")                  # the link's carrier comes back within moments
        wait_until(lambda: reaches("cmsctl-c1", etcd[2][0], int(etcd[2][1])), 10, 0.2, "c1 to reach etcd again")
        pids = state["etcd_pids"]
    finally:
        removed = lab.down()
    assert any("cmsctl-c1" in r for r in removed) and not lab.root.exists()
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith("cmsctl-")]
    assert all(subprocess.run(["kill", "-0", str(p)], capture_output=True).returncode != 0 for p in pids)
