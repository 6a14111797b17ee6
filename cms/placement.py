"""Placement policy: which host takes a new VM. Pure: plain data in, a decision out.

The mechanism (reading host loads through libvirt, holding the spawn lock, spawning) is in
cms.scheduler; this module only decides, so a policy is changed in the configuration
(``[placement] algorithm``) and tested with tables.

Capacity rules, the same for every policy:

- vCPUs: a host may carry ``floor(cpus * cpu_overcommit)`` vCPUs in all.
- RAM: ``memory_mib - ram_reserve_mib`` MiB go to VMs; the reserve is the host's own.
- Disk: when a request names disk bytes and the host reports its pool's free bytes, the
  request must fit in them (overlays are thin, so this is a floor, not a reservation).
- A host that is down (``up=False``) is never chosen.
- A warm-pool replica is charged as its parked state holds the host (``charge_of``): a
  paused one holds its RAM but no CPU; a saved or stopped one holds only its disk; one
  booting or running counts in full like any VM.
- A VM's RAM is what its guest holds (``held_memory_mib``): the balloon's current size,
  not the maximum it was defined with; while it boots, the size cms set the balloon to.

Policies:

- ``round_robin``: the first host that fits, starting at a cursor that moves past the
  chosen host; the cursor is the caller's to keep (the scheduler persists it).
- ``first_fit`` (bin packing): the first host in configuration order that fits, so VMs
  fill one host before the next.
- ``spread``: the host with the most free RAM after placement (ties: most free vCPUs,
  then configuration order), so load spreads evenly.

``choose`` is the one-shot decision the scheduler uses (linear in hosts, which is a handful).
``Placer`` makes the same decisions incrementally for thousands of hosts and many
placements in a row (bench/placement.py, simulations); the tests check that both agree.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Sequence

from cms.errors import PlacementError

ALGORITHMS = ("round_robin", "first_fit", "spread")


@dataclass(frozen=True)
class HostLoad:
    """One host as placement sees it."""
    name: str
    cpus: int
    memory_mib: int
    used_vcpus: int = 0
    used_memory_mib: int = 0
    up: bool = True
    disk_free_bytes: int | None = None   # None: unknown, not checked


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory_mib: int
    disk_bytes: int = 0


@dataclass(frozen=True)
class Rules:
    cpu_overcommit: float = 4.0
    ram_reserve_mib: int = 512


@dataclass(frozen=True)
class Choice:
    host: str
    index: int          # position of the host in the list given
    next_cursor: int    # where round_robin starts next time


def charge_of(state: str, warm: bool, vcpus: int, memory_mib: int) -> tuple[int, int]:
    """(vCPUs, MiB) a domain takes from its host: in full, except a parked warm replica."""
    if not warm or state in ("running", "blocked"):
        return vcpus, memory_mib
    if state == "paused":
        return 0, memory_mib
    return 0, 0


# How long a VM may boot before a guest that has not yet reported through its balloon is
# taken to have no balloon driver (and to keep all it was started with). Boots take 5-20 s
# under TCG; the golden image loads the driver in its initramfs.
BOOT_GRACE_S = 120.0


def held_memory_mib(current_mib: int, target_mib: int, reporting: bool, age_s: float) -> int:
    """The RAM a running VM holds, as placement and the host figures count it.

    ``current_mib`` is libvirt's figure, the balloon's actual size: what the guest can use
    now, up to the maximum it was defined with. A VM starts with an empty balloon, so for
    its first seconds that figure is the maximum, until the guest's balloon driver gives the
    room above ``target_mib`` (the size cms set the balloon to) back. So a VM whose guest
    has not reported through its balloon yet (``reporting``) is counted at its target for
    its first BOOT_GRACE_S; after that, or once the guest reports, at libvirt's figure: a
    guest without the driver keeps everything it started with, and one that reports
    holds what the balloon says (a resize moves it within seconds). ``target_mib`` 0 (not
    recorded): libvirt's figure.
    """
    if target_mib <= 0 or reporting or age_s >= BOOT_GRACE_S:
        return current_mib
    return min(current_mib, target_mib)


def vcpu_room(h: HostLoad, rules: Rules) -> int:
    return math.floor(h.cpus * rules.cpu_overcommit + 1e-9) - h.used_vcpus


def ram_room(h: HostLoad, rules: Rules) -> int:
    return h.memory_mib - rules.ram_reserve_mib - h.used_memory_mib


def fits(h: HostLoad, req: Request, rules: Rules) -> bool:
    if not h.up:
        return False
    if vcpu_room(h, rules) < req.vcpus or ram_room(h, rules) < req.memory_mib:
        return False
    if req.disk_bytes and h.disk_free_bytes is not None and h.disk_free_bytes < req.disk_bytes:
        return False
    return True


def _refuse(hosts: Sequence[HostLoad], req: Request) -> PlacementError:
    up = sum(1 for h in hosts if h.up)
    if not hosts:
        why = "there are no hosts"
    elif not up:
        why = f"all {len(hosts)} hosts are down"
    else:
        why = f"none of the {up} hosts that are up has room"
    return PlacementError(f"cannot place {req.vcpus} vCPU / {req.memory_mib} MiB: {why}")


def choose(algorithm: str, hosts: Sequence[HostLoad], req: Request, rules: Rules = Rules(),
           cursor: int = 0) -> Choice:
    """The host for `req` under `algorithm`; PlacementError when none can take it."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown placement algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if req.vcpus < 1 or req.memory_mib < 1:
        raise PlacementError(f"a VM needs at least 1 vCPU and 1 MiB (asked {req.vcpus} / {req.memory_mib})")
    n = len(hosts)
    if algorithm == "spread":
        best, key = -1, None
        for i, h in enumerate(hosts):
            if fits(h, req, rules):
                k = (ram_room(h, rules), vcpu_room(h, rules), -i)
                if key is None or k > key:
                    best, key = i, k
        if best < 0:
            raise _refuse(hosts, req)
        return Choice(hosts[best].name, best, cursor)
    start = cursor % n if (algorithm == "round_robin" and n) else 0
    for step in range(n):
        i = (start + step) % n
        if fits(hosts[i], req, rules):
            nxt = (i + 1) % n if algorithm == "round_robin" else cursor
            return Choice(hosts[i].name, i, nxt)
    raise _refuse(hosts, req)


def charge(h: HostLoad, req: Request) -> HostLoad:
    """The host after it has taken `req`."""
    disk = None if h.disk_free_bytes is None else h.disk_free_bytes - req.disk_bytes
    return replace(h, used_vcpus=h.used_vcpus + req.vcpus, used_memory_mib=h.used_memory_mib + req.memory_mib,
                   disk_free_bytes=disk)


class Placer:
    """The same decisions as `choose`, kept incrementally over many placements.

    round_robin scans from the cursor as `choose` does (a miss is rare until hosts fill).
    first_fit keeps, per request shape, the lowest index that may still fit: hosts only
    lose room while placing, so that index only moves forward (``release`` resets it).
    spread keeps, per request shape, a max-heap on (free RAM, free vCPUs) with lazy deletion
    of stale entries: an entry that cannot take its shape leaves that shape's heap for good
    (hosts only lose room while placing; ``release`` pushes the host into every heap again),
    so a host full on vCPUs but rich in RAM is looked at once per shape, not once per
    placement. A new shape's heap is built from the hosts as they are then.
    """

    def __init__(self, algorithm: str, hosts: Sequence[HostLoad], rules: Rules = Rules(), cursor: int = 0) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown placement algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
        self.algorithm = algorithm
        self.rules = rules
        self.hosts = list(hosts)
        self.cursor = cursor
        self._ff: dict[tuple[int, int, int], int] = {}
        self._version = [0] * len(self.hosts)
        self._heaps: dict[tuple[int, int, int], list[tuple[int, int, int, int]]] = {}

    def _entry(self, i: int) -> tuple[int, int, int, int]:
        h = self.hosts[i]
        return (-ram_room(h, self.rules), -vcpu_room(h, self.rules), i, self._version[i])

    def _take(self, i: int, req: Request) -> None:
        self.hosts[i] = charge(self.hosts[i], req)
        self._version[i] += 1
        if self.algorithm == "spread":
            e = self._entry(i)
            for heap in self._heaps.values():
                heapq.heappush(heap, e)

    def place(self, req: Request) -> Choice:
        if req.vcpus < 1 or req.memory_mib < 1:
            raise PlacementError(f"a VM needs at least 1 vCPU and 1 MiB (asked {req.vcpus} / {req.memory_mib})")
        hosts, rules, n = self.hosts, self.rules, len(self.hosts)
        if self.algorithm == "round_robin":
            start = self.cursor % n if n else 0
            for step in range(n):
                i = (start + step) % n
                if fits(hosts[i], req, rules):
                    self.cursor = (i + 1) % n
                    self._take(i, req)
                    return Choice(hosts[i].name, i, self.cursor)
            raise _refuse(hosts, req)
        if self.algorithm == "first_fit":
            shape = (req.vcpus, req.memory_mib, req.disk_bytes)
            i = self._ff.get(shape, 0)
            while i < n and not fits(hosts[i], req, rules):
                i += 1
            self._ff[shape] = i
            if i == n:
                raise _refuse(hosts, req)
            self._take(i, req)
            return Choice(hosts[i].name, i, self.cursor)
        # spread: the shape's heap; stale entries and hosts that cannot take the shape leave it
        shape = (req.vcpus, req.memory_mib, req.disk_bytes)
        heap = self._heaps.get(shape)
        if heap is None:
            heap = self._heaps[shape] = [self._entry(i) for i, h in enumerate(hosts) if h.up]
            heapq.heapify(heap)
        found = -1
        while heap:
            e = heapq.heappop(heap)
            i = e[2]
            if e[3] == self._version[i] and fits(hosts[i], req, rules):
                found = i
                break
        if found < 0:
            raise _refuse(hosts, req)
        self._take(found, req)     # pushes the host's new entry into every shape's heap
        return Choice(hosts[found].name, found, self.cursor)

    def release(self, index: int, req: Request) -> None:
        """Give a placed request's room back (a VM went away)."""
        h = self.hosts[index]
        disk = None if h.disk_free_bytes is None else h.disk_free_bytes + req.disk_bytes
        self.hosts[index] = replace(h, used_vcpus=h.used_vcpus - req.vcpus,
                                    used_memory_mib=h.used_memory_mib - req.memory_mib, disk_free_bytes=disk)
        self._version[index] += 1
        self._ff.clear()
        if self.algorithm == "spread":
            e = self._entry(index)
            for heap in self._heaps.values():
                heapq.heappush(heap, e)
