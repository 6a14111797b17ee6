"""The planning state the strategies share: the model as the plan goes.

Loads and room (placement's rules: cms.placement.vcpu_room / ram_room) move with each
planned action, so a strategy sees what the earlier ones planned. The limits that make the
plan safe (VMware DRS, oVirt) are kept here, where every strategy asks:

* at most one migration per host at a time: a host migrating already, or planned as a
  source or destination, takes no other move (``busy``);
* a VM moved less than ``vm_cooldown_s`` ago stays (``may_move``);
* a VM never goes back to a host it left less than ``min_stay_s`` ago (``may_receive``);
* at most ``max_moves`` migrations start per ``budget_interval_s`` across the fleet
  (``budget``, ``out_of_budget``);
* a host's load series counts only from its last migration on (``hot``), so a host is
  judged again on figures taken after the move.

``best_destination`` tries at most ``CANDIDATES`` destinations per VM, least loaded first,
so a plan is O(hosts + VMs) plus, per planned move, the hot host's VMs times a few
destinations (bench/balance.py plans for 10,000 hosts and 100,000 VMs).
"""

from __future__ import annotations

from dataclasses import replace

from cms.hostplan.model import MIGRATE, BalanceAction, BalancePlan, Limits, Model, VmView, sustained_mean
from cms.placement import HostLoad, Request, ram_room, vcpu_room

CANDIDATES = 8     # destinations tried per VM, least loaded first (exact for hosts of one size)


class PlanState:
    """The model as the plan goes: loads and room move with each planned action."""

    def __init__(self, m: Model, lim: Limits) -> None:
        self.m, self.lim = m, lim
        self.hosts = {h.name: h for h in m.hosts}
        on: dict[str, list[VmView]] = {h.name: [] for h in m.hosts}
        for v in m.vms:
            lst = on.get(v.host)
            if lst is not None:
                lst.append(v)
        self.on = on
        self.cores: dict[str, float] = {}
        # room left under placement's rules (cms.placement.vcpu_room / ram_room), kept as moves go
        self.room: dict[str, list[int]] = {}
        for hv in m.hosts:
            lst = on[hv.name]
            self.cores[hv.name] = hv.other_cores + sum([(v.cpu or 0.0) * v.vcpus for v in lst])
            used_v = hv.used_vcpus if hv.used_vcpus is not None else sum([v.vcpus for v in lst])
            used_m = hv.used_memory_mib if hv.used_memory_mib is not None else sum([v.given_mib for v in lst])
            hl = HostLoad(hv.name, hv.cpus, hv.memory_mib, used_v, used_m, hv.up, hv.disk_free_bytes)
            self.room[hv.name] = [vcpu_room(hl, m.rules), ram_room(hl, m.rules)]
        self.groups: dict[tuple[str, str], int] = {}    # (group, host) -> replicas, for anti-affine groups
        for v in m.vms:
            if v.group in lim.anti_affinity and v.host in on:
                self.groups[(v.group, v.host)] = self.groups.get((v.group, v.host), 0) + 1
        self.busy = {h.name for h in m.hosts if h.migrating or not h.up}
        self.moved: set[str] = set()
        self.budget = lim.max_moves - sum(1 for t in m.recent_moves if m.now - t < lim.budget_interval_s)
        self.plan = BalancePlan()
        # destinations, least loaded first; hosts a move claims are skipped (they gather at the head)
        self.order = sorted((h for h in self.hosts if h not in self.busy), key=lambda h: (self.load(h), h))
        self.head = 0
        self.claimed = 0      # hosts claimed since the order was last compacted

    def load(self, h: str, extra: float = 0.0) -> float:
        c = self.hosts[h].cpus
        return (self.cores[h] + extra) / c if c > 0 else float("inf")

    def fits(self, h: str, req: Request) -> bool:
        """cms.placement.fits, on the room this plan has left the host."""
        hv, r = self.hosts[h], self.room[h]
        if not hv.up or (req.vcpus and r[0] < req.vcpus) or (req.memory_mib and r[1] < req.memory_mib):
            return False
        return not (req.disk_bytes and hv.disk_free_bytes is not None and hv.disk_free_bytes < req.disk_bytes)

    def charge(self, h: str, vcpus: int, memory_mib: int) -> None:
        self.room[h][0] -= vcpus
        self.room[h][1] -= memory_mib

    def hot(self, h: str) -> float | None:
        hv = self.hosts[h]
        mean = sustained_mean(hv.series, self.m.now, self.lim.window_s, hv.last_move_at)
        return mean if mean is not None and mean > self.lim.high else None

    def may_move(self, v: VmView) -> str | None:
        """Why this VM may not be migrated now, or None."""
        if not v.movable:
            return "not movable"
        if v.migrating or v.name in self.moved:
            return "migrating already"
        if v.last_moved_at is not None and self.m.now - v.last_moved_at < self.lim.vm_cooldown_s:
            return f"moved {self.m.now - v.last_moved_at:.0f}s ago (cooldown {self.lim.vm_cooldown_s:g}s)"
        return None

    def may_receive(self, v: VmView, d: str, req: Request, cap: float) -> bool:
        """Whether host d may take VM v (at size req) and stay below cap."""
        if d == v.host or d in self.busy:
            return False
        hv = self.hosts[d]
        if hv.cpus <= 0 or (self.cores[d] + (v.cpu or 0.0) * v.vcpus) / hv.cpus >= cap:
            return False
        if self.groups and self.groups.get((v.group, d), 0):
            return False
        if v.left and any(h == d and self.m.now - t < self.lim.min_stay_s for h, t in v.left):
            return False
        return self.fits(d, req)

    def move(self, v: VmView, d: str, strategy: str, reason: str, size: Request | None = None) -> None:
        s = v.host
        size = size or Request(v.vcpus, v.given_mib)
        data = {"from_load": round(self.load(s), 4), "to_load": round(self.load(d), 4), "cores": round(v.cores, 4)}
        self.cores[s] -= v.cores
        self.cores[d] += v.cores
        self.charge(s, -v.vcpus, -v.given_mib)
        self.charge(d, size.vcpus, size.memory_mib)
        if (v.group, s) in self.groups:
            self.groups[(v.group, s)] -= 1
            self.groups[(v.group, d)] = self.groups.get((v.group, d), 0) + 1
        src_vms = self.on[s]
        del src_vms[next(i for i, x in enumerate(src_vms) if x is v)]
        self.on[d].append(replace(v, host=d))
        self.busy |= {s, d}
        self.claimed += 2
        self.moved.add(v.name)
        self.budget -= 1
        data.update(from_load_after=round(self.load(s), 4), to_load_after=round(self.load(d), 4))
        self.plan.actions.append(BalanceAction(MIGRATE, strategy, v.name, s, d, reason, data=data))

    def best_destination(self, v: VmView, cap: float, req: Request | None = None) -> tuple[float, str] | None:
        """(gain, host): the destination that evens the load most (sum of squared loads)."""
        req = req or Request(v.vcpus, v.given_mib)
        s, c = v.host, v.cores
        base = self.load(s) ** 2 - self.load(s, -c) ** 2
        best, tried = None, 0
        busy = self.busy
        if self.claimed > 256:
            self.order = [h for h in self.order if h not in busy]
            self.head, self.claimed = 0, 0
        order = self.order
        while self.head < len(order) and order[self.head] in busy:
            self.head += 1
        cores, hosts = self.cores, self.hosts
        for k in range(self.head, len(order)):
            d = order[k]
            if d in busy or not self.may_receive(v, d, req, cap):
                continue
            n = hosts[d].cpus
            gain = base + (cores[d] / n) ** 2 - ((cores[d] + c) / n) ** 2
            if best is None or gain > best[0]:
                best = (gain, d)
            tried += 1
            if tried >= CANDIDATES:
                break
        return best

    def out_of_budget(self, what: str) -> bool:
        """Whether the migration budget is spent; if so, a note that `what` was held back."""
        if self.budget > 0:
            return False
        self.plan.notes.append(f"{what}: held back, the budget of {self.lim.max_moves} migration(s) per "
                               f"{self.lim.budget_interval_s:g}s is spent")
        return True
