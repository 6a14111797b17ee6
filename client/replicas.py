"""The live replica set: the one client of the autoscaler's replica feed (cms.messages).

``fetch_snapshot`` asks the snapshot socket once (cms-demo waits for its first replica
with it); FeedState is the subscriber's bookkeeping, plain code over decoded messages;
ReplicaFeed follows the feed on an asyncio loop with both (cms-loadgen):

1. SUB connects to ``[zmq] publish`` and subscribes to the whole ``replicas.`` prefix
   *before* anything else, so updates published while the snapshot is being fetched are
   queued, not lost. The whole prefix, because the sequence number is one per daemon
   across all groups: other groups' updates advance it and would otherwise look like gaps.
2. ``fetch_snapshot``: a DEALER connects to ``[zmq] snapshot`` and sends
   ``[b"SNAPSHOT", group]``; the reply is one snapshot body. No reply within
   ``snapshot_timeout``: the DEALER is thrown away (linger 0) and ReplicaFeed asks again
   with a fresh one, after a growing but capped pause.
3. Queued and later updates are applied only if ``seq`` is exactly one past the last one
   applied; an older ``seq`` is dropped; a jump ahead (a lost message) or a different
   ``epoch`` (the daemon restarted) sends us back to step 2.

Every change of the set is handed to ``on_change(replicas, update_or_None)`` with the
group's whole current set, which is what the engine's ``set_replicas`` wants.

Several controllers (cms.messages says what they send): ``publish`` and ``snapshot`` may
list every controller's endpoints. SUB connects to all of them (only the leader sends);
a snapshot request goes to all at once, and the leader's snapshot is taken, the newest
term first; a follower's NotLeader names the leader, whose endpoints are added when they
were not known. An update or epoch message of an older term than the one followed is a
deposed leader's and is ignored; the leader's epoch message with a new epoch means resync.
Until the new snapshot comes, the last set stays as it was: the client goes on sending to
the replicas it knows, so no request fails because the controller changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import zmq
import zmq.asyncio

from cms.errors import MessageError
from cms.messages import (SNAPSHOT_REQUEST, TOPIC_PREFIX, Epoch, NotLeader, Replica, Snapshot, Update, decode_feed,
                          decode_snapshot_reply, endpoints)

log = logging.getLogger("client.replicas")

# FeedState.on_update verdicts
APPLIED, STALE, GAP, NEW_EPOCH, OTHER_GROUP, UNSYNCED = "applied", "stale", "gap", "new-epoch", "other-group", "unsynced"
CURRENT = "current"      # an epoch message that says we are up to date


@dataclass
class FeedState:
    """Clone-pattern bookkeeping for one group, free of I/O."""

    group: str
    epoch: str | None = None
    seq: int | None = None
    term: int = 0                      # the leader's term we follow (0: one controller)
    replicas: tuple[Replica, ...] = ()
    snapshots: int = 0
    applied: int = 0
    ignored: int = 0                   # messages of a deposed leader (an older term)
    resyncs: dict[str, int] = field(default_factory=lambda: {GAP: 0, NEW_EPOCH: 0})

    @property
    def synced(self) -> bool:
        return self.seq is not None

    def apply_snapshot(self, snap: Snapshot) -> tuple[Replica, ...]:
        self.epoch = snap.epoch
        self.seq = snap.seq
        self.term = max(self.term, snap.term)
        self.replicas = tuple(snap.groups.get(self.group, ()))
        self.snapshots += 1
        return self.replicas

    def on_update(self, u: Update) -> str:
        # The sequence is one per daemon across all groups, so every update advances it,
        # whichever group it is about; only our group's updates change our set.
        if self.seq is None:
            return UNSYNCED
        if u.term < self.term:
            self.ignored += 1
            return STALE                   # a deposed leader's
        if u.epoch != self.epoch:
            return self._resync(NEW_EPOCH, u.term)
        if u.seq <= self.seq:
            return STALE
        if u.seq != self.seq + 1:
            return self._resync(GAP, u.term)
        self.seq = u.seq
        if u.group != self.group:
            return OTHER_GROUP
        self.replicas = u.replicas
        self.applied += 1
        return APPLIED

    def on_epoch(self, e: Epoch) -> str:
        """The leader's epoch message: a new epoch (of our term or newer) or updates we never
        got (its seq past ours) mean resync; an older term's is a deposed leader's."""
        if self.seq is None:
            return UNSYNCED
        if e.term < self.term:
            self.ignored += 1
            return STALE
        if e.epoch != self.epoch:
            return self._resync(NEW_EPOCH, e.term)
        return self._resync(GAP, e.term) if e.seq > self.seq else CURRENT

    def _resync(self, why: str, term: int) -> str:
        self.resyncs[why] += 1
        self.seq = None
        self.term = max(self.term, term)
        return why


def curve_setup(sock: zmq.Socket, server_public_key: str) -> None:
    """Make `sock` a CURVE client of a server with this Z85 public key (own keys are ephemeral)."""
    if not server_public_key:
        return
    pub, sec = zmq.curve_keypair()
    sock.curve_serverkey = server_public_key.encode()
    sock.curve_publickey = pub
    sock.curve_secretkey = sec


def ask_snapshot(endpoint: str | Sequence[str], group: str = "", *, timeout: float = 2.0, curve_server_key: str = "",
                 context: zmq.Context | None = None, min_term: int = 0) -> tuple[Snapshot | None, list[NotLeader]]:
    """Ask every snapshot socket in `endpoint` at once for the sets of the groups whose names
    start with `group` ("" for all). Returns the first snapshot of term `min_term` or newer,
    and of no older term than a follower named (at the deadline, the newest one that came, if
    any), and the NotLeader answers; a leader a follower names that was not asked is asked too. MessageError if an answer is neither.
    Blocks for at most `timeout`: from an event loop, run it in a thread."""
    ctx = context or zmq.Context.instance()
    deadline = time.monotonic() + timeout
    asked: dict[zmq.Socket, str] = {}
    poller = zmq.Poller()
    best: Snapshot | None = None
    not_leaders: list[NotLeader] = []

    def ask(ep: str) -> None:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        asked[dealer] = ep
        curve_setup(dealer, curve_server_key)
        dealer.connect(ep)
        dealer.send_multipart([SNAPSHOT_REQUEST, group.encode()])
        poller.register(dealer, zmq.POLLIN)

    try:
        for ep in endpoints(endpoint):
            ask(ep)
        answered = 0
        while answered < len(asked) and (left := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(left * 1000) + 1):
                poller.unregister(sock)
                answered += 1
                # a ROUTER may keep a REQ-style empty delimiter; the body is the last frame
                reply = decode_snapshot_reply(sock.recv_multipart()[-1])
                if isinstance(reply, NotLeader):
                    not_leaders.append(reply)
                    if reply.snapshot and reply.snapshot not in asked.values():
                        ask(reply.snapshot)
                elif reply.term >= max([min_term, *(n.leader_term for n in not_leaders)]):
                    return reply, not_leaders   # no follower has named a newer leader
                elif best is None or reply.term > best.term:
                    best = reply
        return best, not_leaders
    finally:
        for sock in asked:
            sock.close(0)


def fetch_snapshot(endpoint: str | Sequence[str], group: str = "", *, timeout: float = 2.0,
                   curve_server_key: str = "", context: zmq.Context | None = None) -> Snapshot | None:
    """The leader's snapshot from the snapshot socket(s) at `endpoint` (ask_snapshot); None if
    none came within `timeout` seconds."""
    return ask_snapshot(endpoint, group, timeout=timeout, curve_server_key=curve_server_key, context=context)[0]


@dataclass(eq=False)
class ReplicaFeed:
    """Follows one group on the feed at `publish` / `snapshot` (see the module docstring).

    on_change(replicas, update): the group's whole set after each change (update None: a
    snapshot); on_event(kind, info): snapshot, snapshot_timeout, not_leader, bad_snapshot,
    bad_update, resync."""

    publish: str | Sequence[str]
    snapshot: str | Sequence[str]
    group: str
    on_change: Callable[[tuple[Replica, ...], Update | None], None]
    curve_server_key: str = ""
    snapshot_timeout: float = 2.0
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, info: None
    state: FeedState = field(init=False)
    synced: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    errors: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.state = FeedState(self.group)
        self._publish = endpoints(self.publish)
        self._snapshot = endpoints(self.snapshot)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the feed until `stop` is set. Every wait inside is bounded."""
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 100_000
        curve_setup(sub, self.curve_server_key)
        for ep in self._publish:
            sub.connect(ep)
        sub.subscribe(TOPIC_PREFIX)  # all groups: seq is global; the bare prefix: epoch messages
        try:
            while not stop.is_set():
                snap = await self._fetch_snapshot(stop, sub)
                if snap is None:
                    return
                self.on_change(self.state.apply_snapshot(snap), None)
                self.on_event("snapshot", {"epoch": snap.epoch, "seq": snap.seq, "term": snap.term,
                                           "replicas": len(self.state.replicas)})
                self.synced.set()
                await self._follow(sub, stop)
        finally:
            sub.close(0)
            ctx.term()

    async def _fetch_snapshot(self, stop: asyncio.Event, sub: zmq.asyncio.Socket) -> Snapshot | None:
        """Ask until the leader's snapshot comes or `stop` is set, pausing longer after each miss."""
        pause = 0.1
        while not stop.is_set():
            try:
                snap, followers = await asyncio.to_thread(
                    ask_snapshot, self._snapshot, self.group, timeout=self.snapshot_timeout,
                    curve_server_key=self.curve_server_key, min_term=self.state.term)
                for n in followers:
                    self._learn(n, sub)
                if snap is not None:
                    return snap
                self.on_event("snapshot_timeout", {"endpoint": ", ".join(self._snapshot)})
            except MessageError as exc:
                self.errors += 1
                self.on_event("bad_snapshot", {"error": str(exc)})
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except asyncio.TimeoutError:
                pass
            pause = min(pause * 2, 1.0)
        return None

    def _learn(self, n: NotLeader, sub: zmq.asyncio.Socket) -> None:
        """A follower named the leader: follow its endpoints too when they are new to us."""
        self.on_event("not_leader", {"controller": n.name, "leader": n.leader, "leader_term": n.leader_term})
        if n.snapshot and n.snapshot not in self._snapshot:
            self._snapshot.append(n.snapshot)
        if n.publish and n.publish not in self._publish:
            self._publish.append(n.publish)
            sub.connect(n.publish)

    async def _follow(self, sub: zmq.asyncio.Socket, stop: asyncio.Event) -> None:
        """Apply updates until a resync is needed or `stop` is set."""
        while not stop.is_set():
            if not await sub.poll(200, zmq.POLLIN):
                continue
            # drain what is queued without yielding between messages
            for _ in range(10_000):
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                    frames = frames.result() if isinstance(frames, asyncio.Future) else frames
                except zmq.Again:
                    break
                try:
                    u = decode_feed(frames)
                except MessageError as exc:
                    self.errors += 1
                    self.on_event("bad_update", {"error": str(exc)})
                    continue
                verdict = self.state.on_epoch(u) if isinstance(u, Epoch) else self.state.on_update(u)
                if verdict == APPLIED:
                    self.on_change(self.state.replicas, u)
                elif verdict in (GAP, NEW_EPOCH):
                    self.on_event("resync", {"why": verdict, "seq": u.seq, "epoch": u.epoch, "term": u.term})
                    return
