"""Consolidation (Watcher's server consolidation, oVirt's power saving), and the scale-in
order that empties hosts.

Only when nothing else planned a move: if the fleet's load fits on the other hosts with
``headroom`` to spare (each receiver at most ``high - headroom``), the least-loaded host is
emptied, its VMs best fit (the fullest receiver that still takes it). An up host with no VM
is reported as "empty and could be powered off"; cms never powers a host off.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from cms.hostplan.model import POWER_OFF, BalanceAction, VmView, pct
from cms.hostplan.state import PlanState
from cms.placement import Request
from cms.policy import window_values


def consolidate(st: PlanState) -> None:
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
        vals = window_values(hv.series, now, lim.consolidate_window_s, hv.last_move_at)
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
            req, best = Request(v.vcpus, v.given_mib), None
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
            st.charge(d, v.vcpus, v.given_mib)
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
