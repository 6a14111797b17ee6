"""Vertical scaling of one VM in place.

A VM that opted in and stayed hot (mean above its ``high`` over its ``window_s``, no tick at
or below ``low``) gets one more vCPU, within its maximum; its memory grows through the
balloon the same way when its guest reports memory use. If its host cannot fit the growth
(placement's rules) or is itself hot, the VM is migrated first to a host that can, then
grown. A VM idle for ``window_in_s`` shrinks by one step, never below the size it was made
with.
"""

from __future__ import annotations

from cms.hostplan.model import RESIZE, BalanceAction, VmView, pct
from cms.hostplan.state import PlanState
from cms.placement import Request
from cms.policy import window_values


def _step(v: VmView, mib: int) -> int:
    return max(64, -(-max(mib, v.min_memory_mib) // 4 // 64) * 64)


def vertical(st: PlanState) -> None:
    now = st.m.now
    for v in st.m.vms:
        vt = v.vertical
        if vt is None or v.host not in st.hosts or v.migrating or v.name in st.moved:
            continue
        since = max((t for t in (v.last_resized_at, v.last_moved_at) if t is not None), default=None)
        hot_vals = window_values(v.cpu_series, now, vt.window_s, since)
        idle_vals = window_values(v.cpu_series, now, vt.window_in_s, since)
        mhot = window_values(v.mem_series, now, vt.window_s, since)
        midle = window_values(v.mem_series, now, vt.window_in_s, since)
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
        if st.out_of_budget(what):
            continue
        cand = st.best_destination(v, st.lim.high, Request(vcpus, mib + v.kernel_mib))
        if cand is None:
            st.plan.notes.append(f"{what}; no host can take it at {vcpus} vCPU / {mib} MiB below {pct(st.lim.high)}")
            continue
        d = cand[1]
        st.move(v, d, "vertical", f"{what}: migrating it to {d} first", size=Request(vcpus, mib + v.kernel_mib))
        st.plan.actions.append(BalanceAction(RESIZE, "vertical", v.name, d, d, f"{v.name} {', '.join(why)}: {size} on {d} "
                                      f"after the migration", vcpus=vcpus, memory_mib=mib, after=v.name))
