"""Losing a lab host on purpose, and getting it back (scripts/lab.sh kill|cut|fence|revive N).

What each does to host N of a lab (cms.lab.hosts), as the controller would see it on real
hardware:

* ``kill``: a power cut. Every process of the host (its libvirtd and its QEMUs) is killed
  at once with SIGKILL, and its link goes down (the veth end on the lab's bridge), so the
  controller's packets to it are dropped, not refused.
* ``cut``: a partition. The link goes down; libvirtd and the QEMUs go on running, unseen.
* ``fence``: what a fence agent does (IPMI power-off, STONITH): every process of the host
  is killed; the link is left as it is. It takes the host's name (``hv2``) as well as its
  number, so ``python -m cms.lab.cli --name L fence`` (``Lab.fence_command``) serves as ``hosts[].fence_command``,
  which cms runs with the host's name appended.
* ``revive``: the link comes up; a libvirtd that was killed starts again on the same state
  directories and host UUID, and finds its domains defined and shut off, as after a reboot.

Each returns what it did, in words; a host the lab does not have is a LabError.
"""

from __future__ import annotations

import json
import os
import signal
import time

from cms.lab.hosts import Lab
from cms.lab.proc import LabError, _run


def host_index(lab: Lab, which: str) -> int:
    """Host N of the lab, named by its number (2) or its name (hv2)."""
    digits = which[2:] if which.startswith("hv") else which
    if not digits.isdigit() or int(digits) < 1:
        raise LabError(f"{which!r}: a lab host is a number (2) or a name (hv2)")
    i = int(digits)
    if lab.netns(i) not in lab._our_netns():
        raise LabError(f"lab {lab.name} has no host hv{i} (scripts/lab.sh status lists what it has)")
    return i


def is_running(pid: int) -> bool:
    """Whether the process runs (a zombie does not: its parent may be gone and nobody reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def host_pids(lab: Lab, i: int) -> list[int]:
    out = _run("ip", "netns", "pids", lab.netns(i), check=False).stdout.split()
    return sorted(int(p) for p in out if p.isdigit() and is_running(int(p)))


def _kill_all(lab: Lab, i: int, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process in the host's network namespace; wait (bounded) until they are gone."""
    pids = host_pids(lab, i)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while True:
        for p in pids:       # our own children (a lab made in this process) must be reaped
            try:
                os.waitpid(p, os.WNOHANG)
            except (ChildProcessError, OSError):
                pass
        if not any(is_running(p) for p in pids):
            break
        if time.monotonic() > deadline:
            raise LabError(f"hv{i}: processes {[p for p in pids if is_running(p)]} survived SIGKILL for {timeout:g}s")
        time.sleep(0.02)
    return pids


def _link(lab: Lab, i: int, state: str) -> str:
    _run("ip", "link", "set", f"{lab.name}{i}", state)
    return f"link {lab.name}{i} {state}"


def kill(lab: Lab, i: int) -> list[str]:
    pids = _kill_all(lab, i)
    return [f"killed processes {', '.join(map(str, pids)) or 'none'}", _link(lab, i, "down")]


def cut(lab: Lab, i: int) -> list[str]:
    return [_link(lab, i, "down")]


def fence(lab: Lab, i: int) -> list[str]:
    pids = _kill_all(lab, i)
    return [f"fenced: killed processes {', '.join(map(str, pids)) or 'none'}"]


def libvirtd_pid(lab: Lab, i: int) -> int:
    """The pid host i's libvirtd was started with (0: unknown)."""
    try:
        return int((lab.root / f"hv{i}" / "launcher.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def revive(lab: Lab, i: int, timeout: float = 60.0) -> list[str]:
    done = [_link(lab, i, "up")]
    if is_running(libvirtd_pid(lab, i)):
        return done
    record = lab.root / "lab.json"
    try:
        hosts = json.loads(record.read_text())["hosts"]
        host_uuid = next(h["host_uuid"] for h in hosts if h["name"] == f"hv{i}")
    except (OSError, ValueError, KeyError, StopIteration):
        raise LabError(f"{record} does not describe hv{i}; remake the lab (scripts/lab.sh up N)") from None
    h = lab._start_libvirtd(i, host_uuid)
    lab._wait_and_prepare(h, timeout)
    for rec in hosts:
        if rec["name"] == h.name:
            rec["pid"] = h.pid
    record.write_text(json.dumps({"hosts": hosts}, indent=1))
    return done + [f"libvirtd started again (pid {h.pid})"]


ACTIONS = {"kill": kill, "cut": cut, "fence": fence, "revive": revive}
