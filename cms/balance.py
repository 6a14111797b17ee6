"""Host balancing: a pure planner. Plain data in, a BalancePlan out: moves and resizes, each with its reason.

The shape is OpenStack Watcher's: an *audit* of a cluster model yields an *action plan*,
and an applier (cms.autoscaler.balancing) executes it with limits. No I/O and no clock
here: the caller passes ``now`` and what it measured. Strategies, over the same model, in
the order they run (each sees the moves the earlier ones planned):

* **relief** (Watcher's workload balance, oVirt's even distribution): a host whose load
  (busy cores over its CPUs) has a mean above ``high`` over ``window_s`` sheds the one VM
  whose move best evens the load: of every (VM, destination) pair, the one that lowers the
  sum of squared host loads the most. The destination must take the VM under placement's
  rules (cms.placement.fits: vCPU overcommit, RAM reserve, up) and stay below ``high``.
* **anti-affinity**: a group listed in ``anti_affinity`` with two replicas on one host
  gets one of them moved to a host with none of that group, under the same conditions.
* **vertical**: a VM that opted in and stayed hot (mean above its ``high`` over its
  ``window_s``, no tick at or below ``low``) gets one more vCPU, within its maximum; its
  memory grows through the balloon the same way when its guest reports memory use. If its
  host cannot fit the growth (placement's rules) or is itself hot, the VM is migrated first
  to a host that can, then grown. A VM idle for ``window_in_s`` shrinks by one step, never
  below the size it was made with.
* **consolidation** (Watcher's server consolidation, oVirt's power saving), only when
  nothing above planned a move: if the fleet's load fits on the other hosts with
  ``headroom`` to spare (each receiver at most ``high - headroom``), the least-loaded host
  is emptied, its VMs best fit (the fullest receiver that still takes it). An up host with
  no VM is reported as "empty and could be powered off"; cms never powers a host off.

Limits that make it safe (VMware DRS, oVirt): at most one migration per host at a time
(a host migrating already, or planned as a source or destination, takes no other move);
a VM moved less than ``vm_cooldown_s`` ago stays; a VM never goes back to a host it left
less than ``min_stay_s`` ago; at most ``max_moves`` migrations start per
``budget_interval_s`` across the fleet. A host's load series counts only from its last
migration on, so a host is judged again on figures taken after the move.

``plan`` is O(hosts + VMs) plus, per planned move, the hot host's VMs times a few
destinations: bench/balance.py plans for 10,000 hosts and 100,000 VMs.

The module is longer than the project's ~400 lines: the four strategies share one planning
state (``_State``: loads, room and claimed hosts as the plan goes), and split apart each
would need it.
"""

from __future__ import annotations

import bisect
import gc
import operator
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

from cms.placement import HostLoad, Request, Rules, ram_room, vcpu_room

MIGRATE, RESIZE, POWER_OFF = "migrate", "resize", "power_off"
_TS = operator.itemgetter(0)
CANDIDATES = 8     # destinations tried per VM, least loaded first (exact for hosts of one size)


@dataclass(frozen=True)
class Vertical:
    """A VM's opt-in to vertical scaling (``vertical = {...}`` of its group, type or name)."""
    max_vcpus: int
    max_memory_mib: int
    high: float = 0.8
    low: float = 0.2
    window_s: float = 10.0
    window_in_s: float = 60.0


@dataclass(frozen=True)
class VmView:
    name: str
    host: str
    vcpus: int
    memory_mib: int
    cpu: float | None = None                  # mean use of its vCPUs (0..1) over the recent window
    group: str = ""
    movable: bool = True                      # False: counted, never migrated
    migrating: bool = False
    last_moved_at: float | None = None
    left: tuple[tuple[str, float], ...] = ()  # (host, when) it was moved away from
    vertical: Vertical | None = None
    min_vcpus: int = 1                        # the size it was made with: never shrunk below
    min_memory_mib: int = 0
    cpu_series: tuple[tuple[float, float | None], ...] = ()
    mem_series: tuple[tuple[float, float | None], ...] = ()   # share of its memory the guest uses
    last_resized_at: float | None = None

    @property
    def cores(self) -> float:
        return (self.cpu or 0.0) * self.vcpus


@dataclass(frozen=True)
class HostView:
    name: str
    cpus: int
    memory_mib: int
    up: bool = True
    series: tuple[tuple[float, float | None], ...] = ()      # host load per tick
    other_cores: float = 0.0                  # busy cores not accounted to cms's VMs
    migrating: bool = False                   # a migration from or to it is running
    last_move_at: float | None = None         # its last migration in or out ended then
    disk_free_bytes: int | None = None
    # what placement charges it now (cms.scheduler's HostLoad); None: the sum of its VMs here
    used_vcpus: int | None = None
    used_memory_mib: int | None = None


@dataclass(frozen=True)
class Limits:
    high: float = 0.8
    window_s: float = 30.0
    relief: bool = True
    consolidate: bool = False
    headroom: float = 0.2
    consolidate_window_s: float = 120.0
    vm_cooldown_s: float = 120.0
    min_stay_s: float = 600.0
    max_moves: int = 2
    budget_interval_s: float = 300.0
    anti_affinity: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Model:
    now: float
    hosts: tuple[HostView, ...]
    vms: tuple[VmView, ...]
    recent_moves: tuple[float, ...] = ()      # when the migrations of the last budget interval started
    rules: Rules = Rules()


@dataclass(frozen=True)
class BalanceAction:
    kind: str              # migrate | resize | power_off
    strategy: str          # relief | anti_affinity | vertical | consolidation
    vm: str                # "" for power_off
    src: str               # the VM's host (power_off: the host)
    dst: str               # migrate: the destination; resize: where it is resized
    reason: str
    vcpus: int = 0         # resize: the new count (0: unchanged)
    memory_mib: int = 0    # resize: the new size (0: unchanged)
    after: str = ""        # a resize that waits for this VM's migration in the same plan
    data: dict = field(default_factory=dict, compare=False)


@dataclass
class BalancePlan:
    actions: list[BalanceAction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what was held back, and why

    def to_dict(self) -> dict:
        return {"actions": [asdict(a) for a in self.actions], "notes": list(self.notes)}


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def window(series: Sequence[tuple[float, float | None]], now: float, window_s: float,
           since: float | None = None) -> list[float] | None:
    """The values of the last window_s, or None unless samples taken after `since` cover the
    whole window with no missing figure (cms.policy.window_values' rule; the series is in
    time order, so this bisects instead of scanning a long history)."""
    ts = _TS
    lo = bisect.bisect_right(series, since, key=ts) if since is not None else 0
    i = bisect.bisect_right(series, now - window_s - 1e-9, key=ts, lo=lo)       # the window: series[i:]
    j = bisect.bisect_right(series, now - window_s + 1e-9, key=ts, lo=lo)       # reaching back: series[lo:j]
    if i >= len(series) or j == lo or series[j - 1][1] is None:
        return None
    vals = [v for _t, v in series[i:]]
    return None if None in vals else vals  # type: ignore[return-value]


def sustained_mean(series: Sequence[tuple[float, float | None]], now: float, window_s: float,
                   since: float | None = None) -> float | None:
    """The mean over the last window_s, or None unless samples taken after `since` cover it."""
    vals = window(series, now, window_s, since)
    return sum(vals) / len(vals) if vals else None


class _State:
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
            used_m = hv.used_memory_mib if hv.used_memory_mib is not None else sum([v.memory_mib for v in lst])
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
        size = size or Request(v.vcpus, v.memory_mib)
        data = {"from_load": round(self.load(s), 4), "to_load": round(self.load(d), 4), "cores": round(v.cores, 4)}
        self.cores[s] -= v.cores
        self.cores[d] += v.cores
        self.charge(s, -v.vcpus, -v.memory_mib)
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
        req = req or Request(v.vcpus, v.memory_mib)
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


def plan(m: Model, lim: Limits = Limits()) -> BalancePlan:
    """What to do now, and why; see the module's docstring for the rules.

    The cyclic garbage collector is paused while planning: the plan makes no reference
    cycles, and a collection in the middle would only walk the caller's model (100,000
    VMs with their series), which costs more than the plan itself.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        st = _State(m, lim)
        if lim.relief:
            _relief(st)
        if lim.anti_affinity:
            _anti_affinity(st)
        _vertical(st)
        if lim.consolidate and not any(a.kind == MIGRATE for a in st.plan.actions):
            _consolidate(st)
        return st.plan
    finally:
        if paused:
            gc.enable()


def _out_of_budget(st: _State, what: str) -> bool:
    if st.budget > 0:
        return False
    st.plan.notes.append(f"{what}: held back, the budget of {st.lim.max_moves} migration(s) per "
                         f"{st.lim.budget_interval_s:g}s is spent")
    return True


def _relief(st: _State) -> None:
    hot = [(mean, h) for h in st.hosts if st.hosts[h].up and (mean := st.hot(h)) is not None]
    if not hot:
        return
    for mean, h in sorted(hot, key=lambda x: (-x[0], x[1])):
        what = f"host {h} at {pct(mean)} over {st.lim.window_s:g}s (> high {pct(st.lim.high)})"
        if h in st.busy:
            st.plan.notes.append(f"{what}: waits, a migration from or to it is running")
            continue
        if _out_of_budget(st, what):
            return
        best: tuple[float, VmView, str] | None = None
        held = []
        for v in st.on[h]:
            why = st.may_move(v)
            if why or v.cores <= 0:
                held.append(f"{v.name}: {why or 'idle'}")
                continue
            cand = st.best_destination(v, st.lim.high)
            if cand and cand[0] > 1e-9 and (best is None or cand[0] > best[0]):
                best = (cand[0], v, cand[1])
        if best is None:
            extra = f" ({'; '.join(held)})" if held else ""
            st.plan.notes.append(f"{what}: no VM can move to a host that takes it and stays below "
                                 f"{pct(st.lim.high)}{extra}")
            continue
        _gain, v, d = best
        st.move(v, d, "relief", f"{what}: moving {v.name} ({v.cores:.2f} busy cores) to {d} evens the load: "
                f"{h} {pct(st.load(h))} -> {pct(st.load(h, -v.cores))}, {d} {pct(st.load(d))} -> "
                f"{pct(st.load(d, v.cores))}")


def _anti_affinity(st: _State) -> None:
    for (g, h), n in sorted(st.groups.items()):
        if g not in st.lim.anti_affinity or n < 2 or h in st.busy or not st.hosts[h].up:
            continue
        what = f"group {g} has {n} replicas on host {h} (anti-affinity)"
        if _out_of_budget(st, what):
            return
        options = []
        for v in st.on[h]:
            if v.group == g and not st.may_move(v):
                cand = st.best_destination(v, st.lim.high)
                if cand:
                    options.append((cand[0], v, cand[1]))
        if not options:
            st.plan.notes.append(f"{what}: no host without one of its replicas can take one below {pct(st.lim.high)}")
            continue
        _gain, v, d = max(options, key=lambda o: o[0])
        st.move(v, d, "anti_affinity", f"{what}: moving {v.name} to {d}, which has none")


def _step(v: VmView, mib: int) -> int:
    return max(64, -(-max(mib, v.min_memory_mib) // 4 // 64) * 64)


def _vertical(st: _State) -> None:
    now = st.m.now
    for v in st.m.vms:
        vt = v.vertical
        if vt is None or v.host not in st.hosts or v.migrating or v.name in st.moved:
            continue
        since = max((t for t in (v.last_resized_at, v.last_moved_at) if t is not None), default=None)
        hot_vals = window(v.cpu_series, now, vt.window_s, since)
        idle_vals = window(v.cpu_series, now, vt.window_in_s, since)
        mhot = window(v.mem_series, now, vt.window_s, since)
        midle = window(v.mem_series, now, vt.window_in_s, since)
        vcpus, mib, why = v.vcpus, v.memory_mib, []
        if hot_vals and sum(hot_vals) / len(hot_vals) > vt.high and min(hot_vals) > vt.low:
            if v.vcpus < vt.max_vcpus:
                vcpus = v.vcpus + 1
                why.append(f"cpu {pct(sum(hot_vals) / len(hot_vals))} over {vt.window_s:g}s > {pct(vt.high)}")
            else:
                st.plan.notes.append(f"{v.name}: hot, but at its maximum of {vt.max_vcpus} vCPUs")
        elif idle_vals and sum(idle_vals) / len(idle_vals) < vt.low and max(idle_vals) < vt.high \
                and v.vcpus > max(1, v.min_vcpus):
            vcpus = v.vcpus - 1
            why.append(f"cpu {pct(sum(idle_vals) / len(idle_vals))} over {vt.window_in_s:g}s < {pct(vt.low)}")
        if mhot and sum(mhot) / len(mhot) > vt.high and min(mhot) > vt.low and v.memory_mib < vt.max_memory_mib:
            mib = min(vt.max_memory_mib, v.memory_mib + _step(v, v.memory_mib))
            why.append(f"memory use {pct(sum(mhot) / len(mhot))} over {vt.window_s:g}s > {pct(vt.high)}")
        elif midle and sum(midle) / len(midle) < vt.low and max(midle) < vt.high and v.memory_mib > v.min_memory_mib > 0:
            mib = max(v.min_memory_mib, v.memory_mib - _step(v, v.memory_mib))
            why.append(f"memory use {pct(sum(midle) / len(midle))} over {vt.window_in_s:g}s < {pct(vt.low)}")
        if (vcpus, mib) == (v.vcpus, v.memory_mib):
            continue
        size = f"{v.vcpus} -> {vcpus} vCPU, {v.memory_mib} -> {mib} MiB"
        grow = Request(max(0, vcpus - v.vcpus), max(0, mib - v.memory_mib))
        room = st.fits(v.host, grow)
        hot_host = st.hot(v.host) is not None and grow.vcpus > 0
        if room and not hot_host:
            st.charge(v.host, grow.vcpus, grow.memory_mib)
            st.plan.actions.append(BalanceAction(RESIZE, "vertical", v.name, v.host, v.host,
                                          f"{v.name} {', '.join(why)}: {size} in place on {v.host}",
                                          vcpus=vcpus, memory_mib=mib))
            continue
        blocker = f"host {v.host} is hot" if room else f"host {v.host} has no room for +{grow.vcpus} vCPU / " \
                                                      f"+{grow.memory_mib} MiB"
        what = f"{v.name} {', '.join(why)}, but {blocker}"
        why_not = st.may_move(v)
        if why_not or v.host in st.busy:
            st.plan.notes.append(f"{what}; it cannot move now ({why_not or 'its host is migrating'})")
            continue
        if _out_of_budget(st, what):
            continue
        cand = st.best_destination(v, st.lim.high, Request(vcpus, mib))
        if cand is None:
            st.plan.notes.append(f"{what}; no host can take it at {vcpus} vCPU / {mib} MiB below {pct(st.lim.high)}")
            continue
        d = cand[1]
        st.move(v, d, "vertical", f"{what}: migrating it to {d} first", size=Request(vcpus, mib))
        st.plan.actions.append(BalanceAction(RESIZE, "vertical", v.name, d, d, f"{v.name} {', '.join(why)}: {size} on {d} "
                                      f"after the migration", vcpus=vcpus, memory_mib=mib, after=v.name))


def _consolidate(st: _State) -> None:
    lim, now = st.lim, st.m.now
    cap = lim.high - lim.headroom
    up = [h for h in st.hosts if st.hosts[h].up]
    for h in up:
        if not st.on[h]:
            st.plan.actions.append(BalanceAction(POWER_OFF, "consolidation", "", h, h,
                                          f"host {h} is empty and could be powered off"))
    loaded = [h for h in up if st.on[h]]
    if len(loaded) < 2:
        return
    for h in loaded:
        hv = st.hosts[h]
        vals = window(hv.series, now, lim.consolidate_window_s, hv.last_move_at)
        if not vals or sum(vals) / len(vals) >= cap or max(vals) >= lim.high:
            return    # a host busy lately, or not measured for a whole window: no packing yet
    src = min(loaded, key=lambda h: (st.load(h), len(st.on[h]), h))
    rest = [h for h in loaded if h != src]
    total = sum(st.cores[h] for h in loaded)
    if total > sum(st.hosts[h].cpus for h in rest) * cap:
        return
    what = f"the fleet's {total:.2f} busy cores fit on {len(rest)} host(s) at most {pct(cap)} each"
    # best fit decreasing over simulated loads: every VM of src must have a place, or none moves
    sim = {h: st.cores[h] for h in rest}
    saved = {h: list(st.room[h]) for h in rest}
    placed: list[tuple[VmView, str]] = []
    try:
        for v in sorted(st.on[src], key=lambda v: (-v.cores, -v.memory_mib, v.name)):
            if st.may_move(v):
                st.plan.notes.append(f"{what}, but {v.name} on {src} cannot move now ({st.may_move(v)})")
                return
            req, best = Request(v.vcpus, v.memory_mib), None
            for d in rest:
                after = (sim[d] + v.cores) / max(1, st.hosts[d].cpus)
                if after > cap or not st.fits(d, req) or \
                        (v.group in lim.anti_affinity and st.groups.get((v.group, d), 0)) or \
                        any(x == d and now - t < lim.min_stay_s for x, t in v.left):
                    continue
                if best is None or after > best[0]:
                    best = (after, d)
            if best is None:
                st.plan.notes.append(f"{what}, but no receiver takes {v.name}; host {src} stays")
                return
            d = best[1]
            sim[d] += v.cores
            st.charge(d, v.vcpus, v.memory_mib)
            placed.append((v, d))
    finally:
        st.room.update(saved)     # the packing was a simulation; move() charges what is planned now
    now_moves = 0
    for v, d in placed:
        if src in st.busy or d in st.busy or st.budget <= 0:
            continue
        st.move(v, d, "consolidation", f"{what}: emptying {src}, the least loaded; {v.name} goes to {d} (best fit)")
        now_moves += 1
    left = len(placed) - now_moves
    if left:
        st.plan.notes.append(f"consolidating {src}: {left} more VM(s) to move once the running migrations end")


# -- scale-in order "consolidate" ------------------------------------------------------------

def consolidate_order(candidates: Sequence[tuple[str, str, float]],
                      occupancy: Mapping[str, tuple[int, float]]) -> list[str]:
    """Replicas in the order scale-in should remove them so hosts empty soonest.

    `candidates` are (name, host, created); `occupancy` maps a host to (VMs on it, load).
    Each pick is the replica on the host with the fewest VMs (its removal empties the
    host, or leaves it the emptiest), then the least loaded host, then the newest replica.
    """
    occ = {h: [n, load] for h, (n, load) in occupancy.items()}
    for _name, h, _c in candidates:
        occ.setdefault(h, [0, 0.0])
    left = list(candidates)
    out = []
    while left:
        pick = min(left, key=lambda c: (occ[c[1]][0], occ[c[1]][1], -c[2], c[0]))
        out.append(pick[0])
        left.remove(pick)
        occ[pick[1]][0] -= 1
    return out
