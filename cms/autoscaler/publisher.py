"""The replica feed's server: the ZeroMQ guide's Clone pattern (clonesrv), the one there is.

The daemon publishes through Publisher; the tests' stub (tests/doubles.py) is a thin
subclass of it, so what the tests follow is what the daemon sends.

* An XPUB socket carries every change as ``encode_update`` frames with this run's
  ``epoch`` and a ``seq`` that grows by one per change, across all groups. An XPUB, not a
  plain PUB, because it also reports subscriptions: ``subscribers`` counts the live ones
  and ``wait_subscribed`` tells a caller that a subscriber is in (no sleeps).
* A ROUTER socket answers ``SNAPSHOT`` [group prefix] with the current sets and the seq
  they are current at (``answer_snapshot``, which a subclass may override).
* One thread owns both sockets. ``announce`` may be called from any thread: it changes the
  sets under a lock and hands the frames to that thread over an inproc PAIR, which wakes
  it at once, so updates leave in seq order with no polling delay.

* Several controllers (cms.leadership): ``[zmq] publish`` and ``snapshot`` list every
  controller's endpoints; each binds the first pair it can (an address of its own, ports
  free). Every controller binds, so clients are connected before a takeover; only the
  leader sends. ``follow(leader)`` silences it (the sets still change, nothing leaves) and
  makes it answer snapshot requests with NotLeader naming the leader; ``lead(term)`` starts
  a new epoch under that term and says so with an epoch message, which ``heartbeat``
  repeats each tick. Without coordination the one publisher leads from the start, term 0,
  and sends no epoch messages: the feed is what it always was.

``seq``, ``epoch``, ``term``, ``leading``, ``subscribers`` and ``snapshot_requests`` are
plain reads for a metrics exporter. NullPublisher keeps the sets and the sequence but sends nothing (dry runs, unit
tests).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Iterable

import zmq

from cms.config import ZmqConfig
from cms.leadership import Leader
from cms.messages import (SNAPSHOT_REQUEST, Epoch, NotLeader, Replica, Snapshot, Update, encode_epoch,
                          encode_not_leader, encode_snapshot, encode_update, endpoints)

log = logging.getLogger(__name__)


def _by_age(members: Iterable[Replica]) -> tuple[Replica, ...]:
    return tuple(sorted(members, key=lambda r: (r.created, r.name)))


class ReplicaSets:
    """The current replica set of every group, the epoch and the sequence; no I/O.
    Subclasses decide where the frames of each update go (``_send``)."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex
        self.seq = 0
        self.term = 0
        self.leading = True                    # False: a follower, which sends nothing
        self.name = ""                         # this controller, as its NotLeader answers say
        self.leader: Leader | None = None      # whom a follower names
        self._sets: dict[str, dict[str, Replica]] = {}
        self._lock = threading.Lock()

    def announce(self, event: str, replica: Replica, reason: str = "", *, publish: bool = True) -> Update:
        """Apply one change to the group's set, give it the next seq and publish it; returns
        the update. ``publish=False`` changes the state and the seq but sends nothing: a
        lost message, for tests of the subscribers' gap handling."""
        with self._lock:
            members = self._sets.setdefault(replica.group, {})
            if event == "removed":
                members.pop(replica.name, None)
            else:
                members[replica.name] = replica
            self.seq += 1
            u = Update(epoch=self.epoch, seq=self.seq, group=replica.group, event=event, replica=replica.name,
                       replicas=_by_age(members.values()), reason=reason, ts=time.time(), term=self.term)
            if publish and self.leading:
                self._send(encode_update(u))
        return u

    def lead(self, term: int, epoch: str | None = None) -> str:
        """Become the feed's source under ``term``: a new epoch (seq from zero, the same sets),
        announced at once with an epoch message so subscribers resync now."""
        with self._lock:
            self.epoch, self.seq, self.term, self.leading = epoch or uuid.uuid4().hex, 0, term, True
            self.leader = None
            self._send(encode_epoch(Epoch(self.epoch, self.seq, self.term, self.name)))
            return self.epoch

    def follow(self, leader: Leader | None) -> None:
        """Send nothing from now on; answer snapshot requests naming ``leader`` (None: unknown)."""
        with self._lock:
            self.leading, self.leader = False, leader

    def heartbeat(self) -> None:
        """The leader's epoch message again (each tick, with several controllers)."""
        with self._lock:
            if self.leading:
                self._send(encode_epoch(Epoch(self.epoch, self.seq, self.term, self.name)))

    def new_epoch(self, epoch: str | None = None) -> str:
        """Start a new epoch: seq from zero, the same sets (what a restarted daemon that
        rebuilt its sets looks like to subscribers: they take a new snapshot)."""
        with self._lock:
            self.epoch = epoch or uuid.uuid4().hex
            self.seq = 0
            return self.epoch

    def replicas(self, group: str) -> list[Replica]:
        with self._lock:
            return list(_by_age(self._sets.get(group, {}).values()))

    def snapshot(self, prefix: str = "") -> Snapshot:
        with self._lock:
            groups = {g: _by_age(m.values()) for g, m in self._sets.items() if g.startswith(prefix)}
            return Snapshot(self.epoch, self.seq, groups, time.time(), self.term)

    def answer_snapshot(self, prefix: str) -> Snapshot | NotLeader | None:
        """What a snapshot request for `prefix` gets: the sets when leading, else NotLeader
        naming the leader; None leaves it unanswered (a subclass may)."""
        with self._lock:
            if not self.leading:
                ld = self.leader
                return NotLeader(self.name, ld.name if ld else "", ld.term if ld else 0, ld.publish if ld else "",
                                 ld.snapshot if ld else "", self.term)
        return self.snapshot(prefix)

    def _send(self, frames: list[bytes]) -> None:
        """Called under the lock with each update's frames; nowhere to send them here."""

    def close(self, timeout: float = 0.0) -> None:
        pass

    def __enter__(self) -> "ReplicaSets":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NullPublisher(ReplicaSets):
    """Keeps the sets but sends nothing (dry runs)."""


class Publisher(ReplicaSets):
    """The Clone server on ``zcfg.publish`` (XPUB) and ``zcfg.snapshot`` (ROUTER), CURVE when
    the config has both keys. ``*`` ports are allowed: the bound endpoints are in
    ``publish_endpoint`` and ``snapshot_endpoint``."""

    def __init__(self, zcfg: ZmqConfig, *, epoch: str | None = None, context: zmq.Context | None = None) -> None:
        super().__init__(epoch)
        self.snapshot_requests = 0
        self._subs: dict[bytes, int] = {}          # live subscriptions by topic prefix
        self._subs_changed = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._ctx = context or zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.XPUB)
        self._router = self._ctx.socket(zmq.ROUTER)
        # the inproc pair that carries announced frames to the socket thread: unbounded, so
        # announce never blocks while holding the lock the socket thread needs for snapshots
        inproc = f"inproc://cms-publisher-{uuid.uuid4().hex}"
        self._inbox = self._ctx.socket(zmq.PAIR)
        self._outbox = self._ctx.socket(zmq.PAIR)
        self._inbox.rcvhwm = self._outbox.sndhwm = 0
        sockets = (self._pub, self._router, self._inbox, self._outbox)
        for s in sockets:
            s.linger = 0
        self._pub.setsockopt(zmq.XPUB_VERBOSER, 1)     # every subscribe and unsubscribe, not just new topics
        for s in (self._pub, self._router):
            if zcfg.curve_secret_key and zcfg.curve_public_key:
                s.curve_secretkey = zcfg.curve_secret_key.encode()
                s.curve_publickey = zcfg.curve_public_key.encode()
                s.curve_server = True
        try:
            self._inbox.bind(inproc)
            self._outbox.connect(inproc)
            self.index = self._bind_own(zcfg)
        except zmq.ZMQError:
            for s in sockets:
                s.close(0)
            raise
        self.publish_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.snapshot_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="cms-publisher", daemon=True)
        self._thread.start()

    def _bind_own(self, zcfg: ZmqConfig) -> int:
        """Bind the first (publish, snapshot) pair this controller can; its index in the lists."""
        err: zmq.ZMQError | None = None
        for i, (pub, snap) in enumerate(zip(endpoints(zcfg.publish), endpoints(zcfg.snapshot))):
            try:
                self._pub.bind(pub)
            except zmq.ZMQError as exc:      # another controller's address, or its port is taken
                err = exc
                continue
            try:
                self._router.bind(snap)
                return i
            except zmq.ZMQError as exc:
                err = exc
                self._pub.unbind(self._pub.getsockopt_string(zmq.LAST_ENDPOINT))
        assert err is not None
        raise err

    # --- what callers read and wait for ---------------------------------------------------------

    @property
    def subscribers(self) -> int:
        """Live subscriptions; each cms subscriber (cms-loadgen, the demo) makes one."""
        with self._subs_changed:
            return sum(self._subs.values())

    def wait_subscribed(self, topic: bytes, timeout: float = 5.0, count: int = 1) -> bool:
        """Wait (bounded) until `count` live subscriptions would receive `topic`."""
        deadline = time.monotonic() + timeout
        with self._subs_changed:
            while sum(n for prefix, n in self._subs.items() if topic.startswith(prefix)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._subs_changed.wait(left)
            return True

    # --- the socket thread ------------------------------------------------------------------------

    def _send(self, frames: list[bytes]) -> None:
        self._outbox.send_multipart(frames)    # under the lock: one sender at a time

    def _run(self) -> None:
        poller = zmq.Poller()
        for s in (self._inbox, self._pub, self._router):
            poller.register(s, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(1000))
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    break
                log.warning("publisher poll failed: %s", exc)
                continue
            if self._inbox in ready:
                self._publish_queued()
            if self._pub in ready:
                self._read_subscriptions()
            if self._router in ready:
                self._answer()
        self._publish_queued()

    def _publish_queued(self) -> None:
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue                   # close()'s wake-up
            try:
                self._pub.send_multipart(frames)
            except zmq.ZMQError as exc:
                log.warning("could not publish an update: %s", exc)

    def _read_subscriptions(self) -> None:
        # b"\x01" + prefix subscribes, b"\x00" + prefix unsubscribes (also when a subscriber goes away)
        msgs = []
        for _ in range(10_000):
            try:
                msgs.append(self._pub.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        with self._subs_changed:
            for msg in msgs:
                if msg[:1] in (b"\x00", b"\x01"):
                    n = self._subs.get(msg[1:], 0) + (1 if msg[:1] == b"\x01" else -1)
                    if n > 0:
                        self._subs[msg[1:]] = n
                    else:
                        self._subs.pop(msg[1:], None)
            self._subs_changed.notify_all()

    def _answer(self) -> None:
        for _ in range(1000):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident, body = frames[0], frames[1:]
            # a REQ client puts an empty delimiter frame first
            delim = [b""] if body and body[0] == b"" else []
            body = body[len(delim):]
            if not body or body[0] != SNAPSHOT_REQUEST:
                log.debug("ignored a snapshot-socket request %r", body[:1])
                continue
            self.snapshot_requests += 1
            prefix = body[1].decode("utf-8", "replace") if len(body) > 1 else ""
            snap = self.answer_snapshot(prefix)
            if snap is not None:
                body = encode_not_leader(snap) if isinstance(snap, NotLeader) else encode_snapshot(snap)
                self._router.send_multipart([ident, *delim, body])

    def close(self, timeout: float = 2.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            self._outbox.send(b"")             # wake the thread now rather than at its poll timeout
        self._thread.join(timeout)
        for s in (self._pub, self._router, self._inbox, self._outbox):
            s.close(0)


def announced(updates: Iterable[Update], group: str) -> list[tuple[str, str]]:
    """(event, replica) pairs of one group, in order: handy in logs and tests."""
    return [(u.event, u.replica) for u in updates if u.group == group]
