"""Which ready replica gets the next request: a pure decision over plain data.

A candidate is any object with ``outstanding`` (requests sent to it or queued for it and
not yet settled) and ``backoff_until`` (until when it is avoided after a refused
connection, on the caller's clock). No I/O, no clock of its own: ``now`` is passed in.

The rules, in order:

1. Fresh first. A replica announced ready that has not had a request yet gets the next
   one, while it has nothing outstanding, whatever the policy and the rate: a new replica
   is used the moment it is announced.
2. With one ready replica, it is the one (even when it is to be avoided).
3. Otherwise, among the ready replicas that are not excluded (the one a retry failed on)
   and not backing off; if none, those not excluded; if none, all of them:
   ``rr`` takes turns; ``least`` takes the fewest outstanding, ties broken by the turn so
   equal replicas share evenly.
"""

from __future__ import annotations

from typing import Any, Sequence

POLICIES = ("rr", "least")


class ReplicaPicker:
    __slots__ = ("policy", "turn", "fresh")

    def __init__(self, policy: str = "rr") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown balance policy {policy!r}: {', '.join(POLICIES)}")
        self.policy = policy
        self.turn = 0
        self.fresh: list[Any] = []     # announced ready, never sent to, in announcement order

    def add_fresh(self, r: Any) -> None:
        if r not in self.fresh:
            self.fresh.append(r)

    def not_fresh(self, r: Any) -> None:
        """`r` had its first request, or is no longer ready."""
        if r in self.fresh:
            self.fresh.remove(r)

    def pick(self, ready: Sequence[Any], now: float, exclude: Any = None) -> Any:
        """The replica for the next request, or None when none is ready."""
        if not ready:
            return None
        for r in self.fresh:
            if r is not exclude and r.outstanding == 0:
                return r
        if len(ready) == 1:
            return ready[0]
        cands = [r for r in ready if r is not exclude and r.backoff_until <= now]
        if not cands:
            cands = [r for r in ready if r is not exclude] or list(ready)
        n = len(cands)
        self.turn += 1
        start = self.turn % n
        if self.policy == "rr":
            return cands[start]
        best = None
        best_o = 1 << 62
        for k in range(n):
            r = cands[(start + k) % n]
            o = r.outstanding
            if o < best_o:
                best, best_o = r, o
        return best
