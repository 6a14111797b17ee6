"""The election among controllers, through tooz over etcd: the I/O under cms.leadership's rules.

``election(cfg, me)`` gives the controller's Election, or, without [coordination] url, a
SoleLeader that leads for good with term 0 (one controller, as cms always ran).

How the Election uses etcd (tooz 9.1's etcd3gw driver, pinned in pyproject.toml):

* The election is tooz's lease-backed lock ``LOCK`` (the driver has no
  ``watch_elected_as_leader``: it raises NotImplemented). Its key holds a lease of
  ``lease_ttl_s``; a follower tries the lock once per tick, without blocking.
* The term is the lock key's ``create_revision`` (cms.leadership says why). The winner reads
  it right after acquiring and takes it only when that read came back within half the TTL
  of sending the acquire, so the key it read cannot be another's yet.
* The leader writes its record (cms.leadership.Leader: name, term, feed and API addresses)
  to ``RECORD_KEY`` in a transaction that holds only while the lock key still has its term.
  A reader takes the record only when its term equals the lock key's revision, so a stale
  one (a dead leader's) is never taken for the leader.
* Every tick the leader refreshes the lock's lease (tooz's ``heartbeat``), then reads the
  lock key and the record in one transaction: the renewal counts (``Lease.renewed``) only
  when the key is still there with its term. The lease is counted from the moment the
  renewal was *sent*.
* Every call to etcd is bounded by ``timeout_s`` (the driver's HTTP timeout). A member that
  does not answer is left for the next one of ``url`` at once, within the same step: a
  follower's try goes on while the step is younger than a quarter of the TTL; a leader's
  renewal goes on, round after round of the members (``RETRY_PAUSE_S`` between rounds),
  until it is confirmed or half the TTL has passed since the last confirmed one (its first
  try is made even later: a tick as long as half the TTL). That is what rides out etcd
  electing a new raft leader: the surviving members answer no write until they have a
  leader again (1-2 s at etcd's default timing), which one try per tick could miss by a
  second and step down for. The cost: a
  leader's tick whose renewal fails waits in ``step`` up to half the TTL, acting on nothing
  meanwhile (it may not act without a lease anyway).

Failures never raise out of ``step``: a controller that cannot reach etcd is a follower (or
a leader on the way out), and says why in the log once per change.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable

from cms.config import Config, CoordinationConfig
from cms.errors import ConfigError, NotLeader
from cms.leadership import FOLLOWER, LEADER, Lease, Leader

log = logging.getLogger("cms.coordination")

LOCK = b"/cms/leader"
LOCK_KEY = "/tooz/locks/cms/leader"     # tooz's etcd3gw driver: its LOCK_PREFIX + LOCK
RECORD_KEY = "/cms/leader-record"
RETRY_PAUSE_S = 0.1     # a leader's renewal: the pause after a round in which no member answered


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode("ascii")


def _members(urls: list[str]) -> list[tuple[str, str, int]]:
    """(protocol, host, port) of each etcd member in ``url``."""
    out = []
    for u in urls:
        p = urllib.parse.urlsplit(u)
        out.append(("https" if p.scheme.endswith("https") else "http", p.hostname or "localhost", p.port or 2379))
    return out


class SoleLeader:
    """One controller, no election: always the leader, term 0, always allowed to act."""

    enabled = False

    def __init__(self, me: Leader) -> None:
        self.me = me
        self.role, self.term, self.leader = LEADER, 0, me

    def start(self) -> None:
        pass

    def step(self) -> str:
        return LEADER

    def may_act(self) -> bool:
        return True

    def check(self, what: str = "") -> None:
        pass

    def lease_left(self) -> float | None:
        return None

    def step_down(self, why: str = "") -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"role": LEADER, "term": 0, "name": self.me.name, "leader": self.me.name, "coordination": False}


class Election:
    """This controller's part in the election (see the module docstring). ``step`` once per tick;
    ``may_act``/``check`` before every mutating call, from any thread."""

    enabled = True

    def __init__(self, ccfg: CoordinationConfig, me: Leader, *, connect: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.ccfg = ccfg
        self.me = me
        self.clock, self.sleep = clock, sleep
        self.lease = Lease(float(ccfg.lease_ttl_s))
        self.leader: Leader | None = None        # the last leader seen (self when leading)
        self._members = _members(ccfg.url)
        self._member = 0
        self._connect = connect
        self._coord: Any = None
        self._lock_obj: Any = None
        self._mutex = threading.Lock()
        self._said = ""                          # the last problem logged, to log each change once

    # -- what other threads read ------------------------------------------------------------

    @property
    def role(self) -> str:
        return self.lease.role

    @property
    def term(self) -> int:
        return self.lease.term

    def may_act(self) -> bool:
        with self._mutex:
            return self.lease.may_act(self.clock())

    def check(self, what: str = "") -> None:
        """Raise NotLeader unless this controller may act now (the guard before a mutating call)."""
        with self._mutex:
            now = self.clock()
            if self.lease.may_act(now):
                return
            why = ("not the leader" if not self.lease.leading else
                   f"lease not renewed for {now - (self.lease.renewed_at or now):.1f}s (over half of "
                   f"{self.ccfg.lease_ttl_s}s)")
        raise NotLeader(f"{self.me.name}: {what + ': ' if what else ''}{why}")

    def lease_left(self) -> float | None:
        with self._mutex:
            return self.lease.left(self.clock()) if self.lease.leading else None

    def status(self) -> dict[str, Any]:
        lead = self.leader
        return {"role": self.role, "term": self.term, "name": self.me.name, "coordination": True,
                "leader": lead.name if lead else None, "leader_term": lead.term if lead else None,
                "lease_left_s": self.lease_left()}

    # -- the tick's step ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect (never raises: a controller without etcd is a follower until it has it)."""
        self._ensure_started()

    def step(self) -> str:
        """Renew (leader) or try for the lock (follower), and learn who leads. Returns the role."""
        began = self.clock()
        if self._ensure_started():
            if self.lease.leading:
                self._renew(began)
            else:
                self._campaign(began)
        if self.lease.must_step_down(self.clock()):
            self.step_down(f"could not renew the lease for half of its {self.ccfg.lease_ttl_s}s")
        return self.role

    def step_down(self, why: str = "") -> None:
        """Stop leading now: no new action; the lock is released when etcd answers (else its
        lease runs out by itself)."""
        with self._mutex:
            was, lock = self.lease.term, self._lock_obj
            self.lease.lost()
            self._lock_obj = None
            if self.leader is not None and self.leader.name == self.me.name:
                self.leader = None
        if was:
            log.warning("stepping down from term %d: %s", was, why or "asked to")
        if lock is not None:
            self._quietly(lock.release)

    def stop(self) -> None:
        """Step down (a clean handover: the lock goes now, not at the end of its lease) and disconnect."""
        self.step_down("stopping")
        coord, self._coord = self._coord, None
        if coord is not None:
            self._quietly(coord.stop)

    # -- etcd -------------------------------------------------------------------------------------

    def _ensure_started(self) -> bool:
        if self._coord is not None:
            return True
        try:
            if self._connect is None:
                from tooz import coordination as tooz_coordination
                self._connect = tooz_coordination.get_coordinator
            proto, host, port = self._members[self._member]
            url = self.ccfg.url[self._member]
            coord = self._connect(url, self.me.name.encode(), lock_timeout=str(self.ccfg.lease_ttl_s),
                                  timeout=str(self.ccfg.timeout_s))
            coord.start(start_heart=False)
        except Exception as exc:  # noqa: BLE001 - tooz, etcd3gw and requests each raise their own
            self._trouble(f"cannot reach etcd at {self.ccfg.url[self._member]}: {exc}")
            self._next_member()
            return False
        self._coord = coord
        return True

    def _with_failover(self, began: float, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """fn() against the current member, then the next ones while the step is young."""
        for _ in self._members:
            try:
                out = fn()
            except Exception as exc:  # noqa: BLE001 - tooz, etcd3gw and requests each raise their own
                self._trouble(f"etcd at {self.ccfg.url[self._member]} did not answer: {exc}")
                self._next_member()
                if self.clock() - began >= self.ccfg.lease_ttl_s / 4:
                    return False, None
                continue
            return True, out
        return False, None

    def _until(self, until: float, fn: Callable[[], Any]) -> tuple[bool, Any, float]:
        """fn() against the members in turn, round after round (``RETRY_PAUSE_S`` after a round
        no member answered), until one answers or ``until`` (monotonic) comes. The first call
        is made even past ``until`` (a tick as long as half the TTL comes just after it): a
        renewal counts from when it was sent, and etcd confirms it only while the lock is
        still ours. Each call waits at most ``timeout_s``, as every call does. Returns whether
        it answered, its answer, and when the call that answered was sent."""
        rounds = int(self.ccfg.lease_ttl_s / 2 / RETRY_PAUSE_S) + 2    # a bound even on a clock that stands still
        first = True
        for _ in range(rounds):
            for _ in self._members:
                sent = self.clock()
                if sent >= until and not first:
                    return False, None, sent
                first = False
                try:
                    return True, fn(), sent
                except Exception as exc:  # noqa: BLE001 - tooz, etcd3gw and requests each raise their own
                    self._trouble(f"etcd at {self.ccfg.url[self._member]} did not answer: {exc}")
                    self._next_member()
            self.sleep(max(0.0, min(RETRY_PAUSE_S, until - self.clock())))
        return False, None, self.clock()

    def _next_member(self) -> None:
        self._member = (self._member + 1) % len(self._members)
        client = getattr(self._coord, "client", None)
        if client is not None:           # etcd3gw's client: the next member, the same leases
            client.protocol, client.host, client.port = self._members[self._member]

    def _read(self) -> tuple[dict | None, Leader | None]:
        """The lock key (its metadata) and the leader record, in one consistent read."""
        txn = {"compare": [], "failure": [],
               "success": [{"request_range": {"key": _b64(LOCK_KEY)}}, {"request_range": {"key": _b64(RECORD_KEY)}}]}
        res = self._coord.client.transaction(txn)
        kvs = [r.get("response_range", {}).get("kvs") or [] for r in res.get("responses", [])]
        if len(kvs) != 2:
            raise RuntimeError(f"etcd answered a read of 2 keys with {len(kvs)} results")
        lock_kv = kvs[0][0] if kvs[0] else None
        record = Leader.from_json(base64.b64decode(kvs[1][0].get("value", ""))) if kvs[1] else None
        return lock_kv, record

    def _write_record(self, term: int) -> bool:
        rec = Leader(self.me.name, term, self.me.publish, self.me.snapshot, self.me.api)
        txn = {"compare": [{"key": _b64(LOCK_KEY), "result": "EQUAL", "target": "CREATE",
                            "create_revision": str(term)}],
               "success": [{"request_put": {"key": _b64(RECORD_KEY), "value": _b64(rec.to_json())}}],
               "failure": []}
        return bool(self._coord.client.transaction(txn).get("succeeded"))

    def _learn(self, lock_kv: dict | None, record: Leader | None) -> int:
        """Who leads according to a read: the record, if it is the lock's. Returns the lock's term (0: free)."""
        term = int(lock_kv.get("create_revision", 0)) if lock_kv else 0
        self.leader = record if record is not None and term and record.term == term else None
        return term

    def _campaign(self, began: float) -> None:
        lock = self._coord.get_lock(LOCK)
        ok, got = self._with_failover(began, lambda: lock.acquire(blocking=False))
        if not ok:
            return
        ok, read = self._with_failover(began, self._read)
        if not ok:
            if got:
                self._quietly(lock.release)
            return
        term = self._learn(*read)
        if not got:
            self._clear_trouble()
            return
        if not term or self.clock() - began >= self.ccfg.lease_ttl_s / 2:
            self._quietly(lock.release)   # too slow to be sure the key read was ours
            return
        with self._mutex:
            self.lease.won(term, began)
            self._lock_obj = lock
        self._quietly(lambda: self._write_record(term))
        self.leader = Leader(self.me.name, term, self.me.publish, self.me.snapshot, self.me.api)
        self._clear_trouble()
        log.info("leading: won the lease, term %d (ttl %ds)", term, self.ccfg.lease_ttl_s)

    def _renew(self, began: float) -> None:
        lock, term = self._lock_obj, self.lease.term

        def renew() -> tuple[dict | None, Leader | None]:
            lock.heartbeat()
            return self._read()

        until = (self.lease.renewed_at or began) + self.ccfg.lease_ttl_s / 2
        ok, read, sent = self._until(until, renew)
        if not ok:
            return                                     # step() steps down: half the TTL has passed
        lock_kv, record = read
        seen = int(lock_kv.get("create_revision", 0)) if lock_kv else 0
        if seen != term:
            self._learn(lock_kv, record)
            self.step_down("the lock is gone from etcd" if not seen else f"the lock is another's (term {seen})")
            return
        with self._mutex:
            self.lease.renewed(sent)
        if record is None or record.term != term:
            self._quietly(lambda: self._write_record(term))
        self.leader = Leader(self.me.name, term, self.me.publish, self.me.snapshot, self.me.api)
        self._clear_trouble()

    # -- saying things once -----------------------------------------------------------------------

    def _quietly(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - best effort: the lease runs out by itself
            log.debug("etcd: %s", exc)

    def _trouble(self, what: str) -> None:
        if what != self._said:
            log.warning("%s", what)
            self._said = what

    def _clear_trouble(self) -> None:
        if self._said:
            log.info("etcd answers again (%s)", self.ccfg.url[self._member])
            self._said = ""


def election(cfg: Config, me: Leader) -> Election | SoleLeader:
    """The controller's election: an Election with [coordination] url, else a SoleLeader."""
    if not cfg.coordination.enabled:
        return SoleLeader(me)
    try:
        import etcd3gw  # noqa: F401 - only whether the extra is installed
        import tooz  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"[coordination] needs tooz and etcd3gw, which are not installed ({exc}): "
                          "pip install 'cms[coordination]'") from None
    return Election(cfg.coordination, me)


def controller_name(cfg: Config) -> str:
    """[coordination] name, else this machine's host name."""
    return cfg.coordination.name or socket.gethostname()


__all__ = ["Election", "SoleLeader", "election", "controller_name", "FOLLOWER", "LEADER", "LOCK", "RECORD_KEY"]
