"""Relief (Watcher's workload balance, oVirt's even distribution).

A host whose load (busy cores over its CPUs) has a mean above ``high`` over ``window_s``
sheds the one VM whose move best evens the load: of every (VM, destination) pair, the one
that lowers the sum of squared host loads the most. The destination must take the VM under
placement's rules (cms.placement.fits: vCPU overcommit, RAM reserve, up) and stay below
``high``.
"""

from __future__ import annotations

from cms.hostplan.model import VmView, pct
from cms.hostplan.state import PlanState


def relief(st: PlanState) -> None:
    hot = [(mean, h) for h in st.hosts if st.hosts[h].up and (mean := st.hot(h)) is not None]
    if not hot:
        return
    for mean, h in sorted(hot, key=lambda x: (-x[0], x[1])):
        what = f"host {h} at {pct(mean)} over {st.lim.window_s:g}s (> high {pct(st.lim.high)})"
        if h in st.busy:
            st.plan.notes.append(f"{what}: waits, a migration from or to it is running")
            continue
        if st.out_of_budget(what):
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
