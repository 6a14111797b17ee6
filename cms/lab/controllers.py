"""Controllers in a lab (scripts/lab.sh up N --controllers M), and the etcd cluster they elect through.

What ``up`` adds to a lab of hosts (cms.lab.hosts), for controller i of M (c1, c2, ...):

* a network namespace ``NAME-cI`` with two links:

  - ``eth0`` on the hosts' bridge (``NAMEbr``, 169.254.S.0/24) at 169.254.S.(1+i): the
    controller reaches every host's libvirtd there, and clients (in the root namespace,
    which holds 169.254.S.1) reach its feed, API and metrics;
  - ``coord`` on a bridge of its own (``NAMEcb``, 169.254.K.0/24, K = (S + 100) % 256) at
    169.254.K.(1+i): the way to etcd, and only that.

* an etcd cluster of ``--etcd`` members (3 by default; cms.lab.etcd) in the root namespace,
  listening on the coordination bridge's address 169.254.K.1, so every controller reaches
  all members, and nothing else does.

``cut(i)`` takes controller i's coordination link down: it is cut off from etcd while it
still reaches the hosts and its clients (the partition the leader must survive by
stepping down); ``heal(i)`` brings it back. ``run(i, argv)`` starts a process in the
controller's namespace (cms-autoscaler, cms-api). ``down`` ends the etcd members and every
process left in the controllers' namespaces, then removes the namespaces, links and
bridge; it needs no state but the lab's directory and the names, like the hosts' down.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cms.lab.etcd import EtcdCluster
from cms.lab.proc import LabError, _kill, _pid_alive, _run

MAX_CONTROLLERS = 8


@dataclass(frozen=True)
class LabController:
    name: str            # c1
    netns: str           # cmslab-c1
    address: str         # 169.254.90.2: the hosts' network (libvirt, feed, API)
    coord_address: str   # 169.254.190.2: the way to etcd


class Controllers:
    def __init__(self, lab: Any) -> None:      # a cms.lab.hosts.Lab
        self.lab = lab
        self.coord_subnet = (lab.subnet + 100) % 256
        self.bridge = f"{lab.name}cb"
        self.gateway = f"169.254.{self.coord_subnet}.1"
        self.state = lab.root / "controllers.json"

    def controller(self, i: int) -> LabController:
        return LabController(f"c{i}", f"{self.lab.name}-c{i}", f"169.254.{self.lab.subnet}.{1 + i}",
                             f"169.254.{self.coord_subnet}.{1 + i}")

    def _coord_link(self, i: int) -> str:
        return f"{self.lab.name}k{i}"

    # -- up -----------------------------------------------------------------------------------

    def up(self, m: int, etcd_members: int = 3) -> tuple[list[LabController], EtcdCluster]:
        """M controller namespaces and an etcd cluster (started; its processes outlive this one)."""
        if not 1 <= m <= MAX_CONTROLLERS:
            raise LabError(f"a lab has 1 to {MAX_CONTROLLERS} controllers, not {m}")
        if etcd_members not in (1, 3, 5):
            raise LabError(f"an etcd cluster of 1, 3 or 5 members, not {etcd_members}")
        out = []
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(1, m + 1):
            c = self.controller(i)
            _run("ip", "netns", "add", c.netns)
            self._veth(c.netns, f"{self.lab.name}c{i}", self.lab.bridge, "eth0", c.address)
            self._veth(c.netns, self._coord_link(i), self.bridge, "coord", c.coord_address)
            _run("ip", "-n", c.netns, "link", "set", "lo", "up")
            out.append(c)
        etcd = EtcdCluster(etcd_members, address=self.gateway, base=self.lab.root, token=f"{self.lab.name}-etcd")
        try:
            etcd.start()
        finally:   # written at once, so down() finds the members even if they never got healthy
            self.state.write_text(json.dumps({"controllers": [asdict(c) for c in out], "etcd": etcd.urls,
                                              "etcd_pids": etcd.pids()}, indent=1))
        return out, etcd

    def _veth(self, ns: str, outside: str, bridge: str, inside: str, address: str) -> None:
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", f"{outside}p")
        _run("ip", "link", "set", outside, "master", bridge, "up")
        _run("ip", "link", "set", f"{outside}p", "netns", ns)
        _run("ip", "-n", ns, "link", "set", f"{outside}p", "name", inside)
        _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        _run("ip", "-n", ns, "link", "set", inside, "up")

    # -- what tests and the lab script do with them ---------------------------------------------

    def index(self, which: str) -> int:
        """Controller N of the lab, named by its number (2) or its name (c2)."""
        digits = which[1:] if which.startswith("c") else which
        if not digits.isdigit() or f"{self.lab.name}-c{digits}" not in self._namespaces():
            raise LabError(f"lab {self.lab.name} has no controller {which!r} (scripts/lab.sh status lists them)")
        return int(digits)

    def cut(self, i: int) -> list[str]:
        """Controller i loses etcd (its coordination link goes down); the hosts it still reaches."""
        _run("ip", "link", "set", self._coord_link(i), "down")
        return [f"c{i}: link to etcd down; hosts and clients still reachable"]

    def heal(self, i: int) -> list[str]:
        _run("ip", "link", "set", self._coord_link(i), "up")
        return [f"c{i}: link to etcd up"]

    def run(self, i: int, argv: list[str], **popen) -> subprocess.Popen:
        """argv in controller i's network namespace (the caller ends it)."""
        return subprocess.Popen(["ip", "netns", "exec", self.controller(i).netns, *argv], **popen)

    def config_data(self, controllers: list[LabController], etcd_urls: list[str], i: int) -> dict:
        """Controller i's part of a cms configuration (with the hosts' part from Lab.config_data)."""
        c = controllers[i - 1]
        return {
            "coordination": {"url": etcd_urls, "name": c.name},
            "zmq": {"publish": [f"tcp://{x.address}:5556" for x in controllers],
                    "snapshot": [f"tcp://{x.address}:5557" for x in controllers]},
            "api": {"bind": f"{c.address}:8080"},
            "autoscaler": {"metrics_listen": f"{c.address}:9481"},
        }

    # -- down -----------------------------------------------------------------------------------

    def _namespaces(self) -> list[str]:
        out = _run("ip", "netns", "list").stdout.split("\n")
        pre = f"{self.lab.name}-c"
        return sorted(n.split()[0] for n in out if n.strip() and n.split()[0].startswith(pre)
                      and n.split()[0][len(pre):].isdigit())

    def down(self) -> list[str]:
        removed = []
        pids = []
        with contextlib.suppress(OSError, ValueError):
            pids += json.loads(self.state.read_text()).get("etcd_pids", [])
        for ns in self._namespaces():
            pids += [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
        pids = sorted({p for p in pids if _pid_alive(p)})
        if pids:
            _kill(pids)
            removed.append(f"controller and etcd processes {', '.join(map(str, pids))}")
        for ns in self._namespaces():
            _run("ip", "netns", "del", ns)
            removed.append(f"netns {ns}")
        links = _run("ip", "-o", "link", "show").stdout.splitlines()
        names = [line.split(":", 2)[1].strip().split("@")[0] for line in links if ":" in line]
        n = self.lab.name
        for link in names:
            if link == self.bridge or (link.startswith((f"{n}c", f"{n}k")) and link[len(n) + 1:].isdigit()):
                if _run("ip", "link", "del", link, check=False).returncode == 0:
                    removed.append(f"link {link}")
        return removed

    def status(self) -> dict:
        return {ns: _run("ip", "netns", "pids", ns, check=False).stdout.split() for ns in self._namespaces()}


def describe(ctl: Controllers, controllers: list[LabController], etcd: EtcdCluster) -> str:
    lines = [f"controllers: coordination bridge {ctl.bridge} at {ctl.gateway}/24; etcd {', '.join(etcd.urls)}"]
    lines += [f"  {c.name}: netns {c.netns}, address {c.address}, to etcd {c.coord_address} "
              f"(config: {ctl.lab.root / (c.name + '.toml')})" for c in controllers]
    return "\n".join(lines)


def write_configs(ctl: Controllers, controllers: list[LabController], etcd: EtcdCluster, hosts_fragment: str) -> None:
    """ROOT/cI.toml for each controller: the hosts' fragment and the controller's part."""
    for i, c in enumerate(controllers, 1):
        d = ctl.config_data(controllers, etcd.urls, i)
        lines = [hosts_fragment.rstrip(), ""]
        for section, keys in d.items():
            lines += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in keys.items()] + [""]
        Path(ctl.lab.root / f"{c.name}.toml").write_text("\n".join(lines))
        os.chmod(ctl.lab.root / f"{c.name}.toml", 0o644)
