"""Anti-affinity: a group listed in ``anti_affinity`` with two replicas on one host gets one of
them moved to a host with none of that group, under the same conditions as relief."""

from __future__ import annotations

from cms.hostplan.model import pct
from cms.hostplan.state import PlanState


def anti_affinity(st: PlanState) -> None:
    for (g, h), n in sorted(st.groups.items()):
        if g not in st.lim.anti_affinity or n < 2 or h in st.busy or not st.hosts[h].up:
            continue
        what = f"group {g} has {n} replicas on host {h} (anti-affinity)"
        if st.out_of_budget(what):
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
