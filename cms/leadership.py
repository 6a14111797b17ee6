"""The rules of several controllers and one leader: the lease, the term, and what each may do.

Pure: plain data and functions, no I/O, no clock of its own (every time is passed in, read
from ``time.monotonic``). cms.coordination does the talking to etcd and feeds these rules.

**Roles.** Every controller runs cms-autoscaler. The one holding the lease is the LEADER:
it alone decides and acts (spawn, remove, migrate, resize, park, balance) and publishes the
replica feed. The others are FOLLOWERS: they list the hosts now and then (read-only), keep
no tracks, answer snapshot requests with "not leader" naming the leader, and try for the
lease every tick. Without [coordination] the one controller is the leader for good, term 0.

**The lease.** The leader holds tooz's lock in etcd; the lock's etcd lease lasts
``ttl_s`` after each refresh, and the leader refreshes it every tick. This side counts its
own lease from the moment it *sent* its last successful renewal (the answer may come late,
never early), and acts only within half the TTL of that: ``may_act``. The other half is the
margin for the renewal's round trip, clocks that run at different rates, and a libvirt call
already under way. So a leader cut off from etcd stops acting at TTL/2, while etcd gives
the lock to another only at TTL: two leaders never act at once.

**The term.** The term is the etcd revision at which the leader's lock key was created (its
``create_revision``). etcd keeps one revision counter for the whole cluster, raised by every
write, so the key a later takeover creates always has a larger revision: the term increases
on every takeover with no counter of our own to keep, and every controller learns it from
the same read that names the leader. Every action carries the term it was made under (in
the domain's <cms:owner> metadata and in the feed), so what a deposed leader did is
recognised: ``judge`` says what to make of it. (A new etcd cluster counts from 1 again, so
a domain may carry a term above the leader's with nobody having led since: that is why a
newer term makes the leader ask etcd at once, not step down on the word of the metadata.)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

FOLLOWER, LEADER = "follower", "leader"
ROLES = (FOLLOWER, LEADER)

# judge's verdicts on something made under a term
MINE, INHERITED, DEPOSED = "mine", "inherited", "deposed"


@dataclass(frozen=True)
class Leader:
    """Who leads, as the leader writes it into etcd beside its lock: its name, its term and where
    its feed and API are (followers pass it on in their "not leader" answers)."""
    name: str
    term: int = 0
    publish: str = ""
    snapshot: str = ""
    api: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Leader | None":
        """The record, or None when it is not one (written by something else, or cut short)."""
        try:
            d: Any = json.loads(text)
            return cls(str(d["name"]), int(d["term"]), str(d.get("publish", "")), str(d.get("snapshot", "")),
                       str(d.get("api", "")))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass
class Lease:
    """This controller's view of its lease. ``term`` 0: it does not lead."""
    ttl_s: float
    term: int = 0
    renewed_at: float | None = None     # monotonic time the last successful renewal was sent

    @property
    def leading(self) -> bool:
        return self.term > 0

    def won(self, term: int, sent_at: float) -> None:
        """The lock was acquired by a request sent at ``sent_at``, and its key has revision ``term``."""
        if term <= 0:
            raise ValueError(f"a term is an etcd revision, at least 1, not {term}")
        self.term, self.renewed_at = term, sent_at

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` was confirmed (the lock key still has our term)."""
        if self.leading and (self.renewed_at is None or sent_at > self.renewed_at):
            self.renewed_at = sent_at

    def lost(self) -> None:
        """The lock is gone or another's, or this side stepped down."""
        self.term, self.renewed_at = 0, None

    def left(self, now: float) -> float:
        """Seconds this side may still act without a renewal (0 when it may not)."""
        if not self.leading or self.renewed_at is None:
            return 0.0
        return max(0.0, self.renewed_at + self.ttl_s / 2 - now)

    def may_act(self, now: float) -> bool:
        """May this controller start a mutating call now? Only while it leads and its last
        confirmed renewal was sent less than half the TTL ago."""
        return self.left(now) > 0

    def must_step_down(self, now: float) -> bool:
        """It leads on paper but could not renew for half the TTL: stop acting, step down."""
        return self.leading and not self.may_act(now)

    @property
    def role(self) -> str:
        return LEADER if self.leading else FOLLOWER


def judge(made_term: int, my_term: int) -> str:
    """What a leader of ``my_term`` makes of something (a domain, a feed update) made under
    ``made_term``:

    * MINE: made under this term;
    * INHERITED: made under an older term (a deposed or earlier leader, or a single
      controller's term 0): it exists, so it is adopted like anything found in libvirt, and
      removed only as surplus by the policy, never made again;
    * DEPOSED: made under a newer term than ours: another controller may have led since we
      last renewed. Stop acting and renew at once: if etcd still says the lock is ours with
      our term, the thing comes from an earlier etcd cluster and is inherited after all.

    A follower (``my_term`` 0) leads nothing; to it everything is INHERITED.
    """
    if my_term <= 0 or made_term < my_term:
        return INHERITED
    return MINE if made_term == my_term else DEPOSED


def takeover_deadline(ttl_s: float, tick_s: float) -> float:
    """The target from a leader's death to the new leader's first tick: its lease runs out at
    most ``ttl_s`` after its last renewal; a follower tries every tick, and the tick after the
    one that won is the first as leader."""
    return ttl_s + 2 * tick_s
