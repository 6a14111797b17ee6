"""The daemon's part in the election: what changes when this controller starts or stops leading.

cms.leadership holds the rules and cms.coordination talks to etcd; this is the loop's side
of it. ``Leading.step`` runs first in every tick and says whether this tick acts:

* **leader**: the tick observes, plans and acts as it always did. The Scheduler checks the
  lease before each mutating libvirt call (``Scheduler.guard``) and stamps the term into
  the metadata it writes, so a tick that outlives its lease stops at its next call.
* **follower**: no tracks, no plan, no action, no write to the state database. Every
  ``view_every`` ticks it lists the hosts (read-only) for its status and metrics, so it
  knows the fleet when it takes over. Its feed is silent and answers "not leader",
  naming the leader.

On a win (a new term): the registry is empty, so the next tick is a first tick (the
planner adopts what libvirt has, the deposed leader's work included, and cleans up what is
left half-made); the feed stays silent until every adopted replica has answered /health
(or ``health_timeout_s`` passed), then starts a new epoch under the new term
(``Publisher.lead``): clients resync to a set of ready replicas, never a set of "starting"
ones. On a loss (stepped down, lease gone): every track is dropped without a word (the next
leader adopts them), and the feed goes silent. Without [coordination] the SoleLeader leads
from the first tick, term 0, and the feed is open from the start: nothing here changes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from cms.autoscaler.lifecycle import State
from cms.leadership import Leader

log = logging.getLogger("cms.autoscaler")

VIEW_EVERY = 5          # a follower lists the hosts every this many ticks


class Leading:
    def __init__(self, election: Any, publisher: Any, *, health_timeout_s: float,
                 on_won: Callable[[int], None], on_lost: Callable[[], None], view_every: int = VIEW_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.election = election
        self.publisher = publisher
        self.health_timeout_s = health_timeout_s
        self.on_won, self.on_lost = on_won, on_lost
        self.view_every = view_every
        self.clock = clock
        self.term = election.term              # the term this loop acts under (0: none, or a sole leader)
        self.leading = not election.enabled    # a sole leader leads from the start
        self.opening: float | None = None      # since when a new leader's feed waits for its adoptions
        self.won_at: float | None = None       # monotonic time of the last win, and of its first acting tick
        self.first_tick_at: float | None = None
        self.times: dict[str, float] = {}      # the same, and the feed's opening, as wall clock (for /health)
        self._ticks = 0
        publisher.name = election.me.name
        if election.enabled:
            publisher.follow(None)             # silent until it leads

    def step(self) -> bool:
        """The election's step and what follows from it; True when this tick acts."""
        self._ticks += 1
        if not self.election.enabled:
            return True
        self.election.step()
        term = self.election.term
        if term != self.term:
            if self.term:
                self._lost()
            if term:
                self._won(term)
        if not self.leading:
            self.publisher.follow(self.election.leader)
        elif self.first_tick_at is None:
            self.first_tick_at = self.clock()
            self.times["first_tick"] = time.time()
        return self.leading

    def _won(self, term: int) -> None:
        self.term, self.leading = term, True
        self.won_at, self.first_tick_at = self.clock(), None
        self.opening = self.won_at
        self.times = {"won": time.time()}
        self.publisher.follow(Leader(self.election.me.name, term))   # "not leader yet": clients keep their set
        log.info("leading under term %d: adopting what libvirt has; the feed opens once it answers", term)
        self.on_won(term)

    def _lost(self) -> None:
        log.warning("no longer leading (term %d): no new action; the next leader adopts the replicas", self.term)
        self.term, self.leading, self.opening = 0, False, None
        self.publisher.follow(self.election.leader)
        self.on_lost()

    def open_feed(self, tracks: tuple[Any, ...]) -> bool:
        """After a leader's tick: open a new leader's feed once no adopted replica is still waiting
        for its first /health (or health_timeout_s has passed). True when it opened now."""
        if self.opening is None:
            return False
        waiting = [t for t in tracks if t.state == State.STARTING and "spawn" not in t.timings]
        if waiting and self.clock() - self.opening < self.health_timeout_s:
            return False
        epoch = self.publisher.lead(self.term)
        log.info("feed open under term %d, epoch %s (%.2fs after the win)", self.term, epoch,
                 self.clock() - self.opening)
        self.opening = None
        self.times["feed_open"] = time.time()
        return True

    def confirm(self, observed: Any) -> bool:
        """A leader's listing holds a domain stamped with a newer term than ours: someone may have
        led since our last renewal. Ask etcd now (cms.leadership.judge); True when we still lead
        under the same term (the domain comes from an earlier etcd cluster)."""
        newest = max((d.meta.term for d in observed), default=0)
        if not self.election.enabled or newest <= self.term:
            return True
        log.warning("a domain carries term %d, newer than ours (%d): asking etcd before acting", newest, self.term)
        return self.step() and self.election.term == self.term

    def heartbeat(self) -> None:
        """Each leader tick with several controllers: the epoch message again."""
        if self.election.enabled and self.leading and self.opening is None:
            self.publisher.heartbeat()

    def view_due(self) -> bool:
        """A follower's tick that lists the hosts."""
        return (self._ticks - 1) % self.view_every == 0

    def status(self) -> dict[str, Any]:
        st = self.election.status()
        st["feed_open"] = self.leading and self.opening is None
        if self.election.enabled:
            st["since"] = dict(self.times)      # wall clock of the last win, first acting tick, feed opening
        return st
