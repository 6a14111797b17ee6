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
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq
import zmq.asyncio

from cms.errors import MessageError
from cms.messages import (SNAPSHOT_REQUEST, TOPIC_PREFIX, Replica, Snapshot, Update, decode_snapshot,
                          decode_update)

log = logging.getLogger("client.replicas")

# FeedState.on_update verdicts
APPLIED, STALE, GAP, NEW_EPOCH, OTHER_GROUP, UNSYNCED = "applied", "stale", "gap", "new-epoch", "other-group", "unsynced"


@dataclass
class FeedState:
    """Clone-pattern bookkeeping for one group, free of I/O."""

    group: str
    epoch: str | None = None
    seq: int | None = None
    replicas: tuple[Replica, ...] = ()
    snapshots: int = 0
    applied: int = 0
    resyncs: dict[str, int] = field(default_factory=lambda: {GAP: 0, NEW_EPOCH: 0})

    @property
    def synced(self) -> bool:
        return self.seq is not None

    def apply_snapshot(self, snap: Snapshot) -> tuple[Replica, ...]:
        self.epoch = snap.epoch
        self.seq = snap.seq
        self.replicas = tuple(snap.groups.get(self.group, ()))
        self.snapshots += 1
        return self.replicas

    def on_update(self, u: Update) -> str:
        # The sequence is one per daemon across all groups, so every update advances it,
        # whichever group it is about; only our group's updates change our set.
        if self.seq is None:
            return UNSYNCED
        if u.epoch != self.epoch:
            self.resyncs[NEW_EPOCH] += 1
            self.seq = None
            return NEW_EPOCH
        if u.seq <= self.seq:
            return STALE
        if u.seq != self.seq + 1:
            self.resyncs[GAP] += 1
            self.seq = None
            return GAP
        self.seq = u.seq
        if u.group != self.group:
            return OTHER_GROUP
        self.replicas = u.replicas
        self.applied += 1
        return APPLIED


def curve_setup(sock: zmq.Socket, server_public_key: str) -> None:
    """Make `sock` a CURVE client of a server with this Z85 public key (own keys are ephemeral)."""
    if not server_public_key:
        return
    pub, sec = zmq.curve_keypair()
    sock.curve_serverkey = server_public_key.encode()
    sock.curve_publickey = pub
    sock.curve_secretkey = sec


def fetch_snapshot(endpoint: str, group: str = "", *, timeout: float = 2.0, curve_server_key: str = "",
                   context: zmq.Context | None = None) -> Snapshot | None:
    """Ask the snapshot socket at `endpoint` once for the sets of the groups whose names start
    with `group` ("" for all). None if no answer within `timeout` seconds; MessageError if
    the answer is not a snapshot. Blocks: from an event loop, run it in a thread."""
    ctx = context or zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        curve_setup(dealer, curve_server_key)
        dealer.connect(endpoint)
        dealer.send_multipart([SNAPSHOT_REQUEST, group.encode()])
        if not dealer.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        # a ROUTER may keep a REQ-style empty delimiter; the body is the last frame
        return decode_snapshot(dealer.recv_multipart()[-1])
    finally:
        dealer.close(0)


@dataclass(eq=False)
class ReplicaFeed:
    """Follows one group on the feed at `publish` / `snapshot` (see the module docstring).

    on_change(replicas, update): the group's whole set after each change (update None: a
    snapshot); on_event(kind, info): snapshot, snapshot_timeout, bad_snapshot, bad_update,
    resync."""

    publish: str
    snapshot: str
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

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the feed until `stop` is set. Every wait inside is bounded."""
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 100_000
        curve_setup(sub, self.curve_server_key)
        sub.connect(self.publish)
        sub.subscribe(TOPIC_PREFIX)  # all groups: seq is global
        try:
            while not stop.is_set():
                snap = await self._fetch_snapshot(stop)
                if snap is None:
                    return
                self.on_change(self.state.apply_snapshot(snap), None)
                self.on_event("snapshot", {"epoch": snap.epoch, "seq": snap.seq, "replicas": len(self.state.replicas)})
                self.synced.set()
                await self._follow(sub, stop)
        finally:
            sub.close(0)
            ctx.term()

    async def _fetch_snapshot(self, stop: asyncio.Event) -> Snapshot | None:
        """Ask until a snapshot comes or `stop` is set, pausing longer after each miss."""
        pause = 0.1
        while not stop.is_set():
            try:
                snap = await asyncio.to_thread(fetch_snapshot, self.snapshot, self.group,
                                               timeout=self.snapshot_timeout, curve_server_key=self.curve_server_key)
                if snap is not None:
                    return snap
                self.on_event("snapshot_timeout", {"endpoint": self.snapshot})
            except MessageError as exc:
                self.errors += 1
                self.on_event("bad_snapshot", {"error": str(exc)})
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except asyncio.TimeoutError:
                pass
            pause = min(pause * 2, 2.0)
        return None

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
                    u = decode_update(frames)
                except MessageError as exc:
                    self.errors += 1
                    self.on_event("bad_update", {"error": str(exc)})
                    continue
                verdict = self.state.on_update(u)
                if verdict == APPLIED:
                    self.on_change(self.state.replicas, u)
                elif verdict in (GAP, NEW_EPOCH):
                    self.on_event("resync", {"why": verdict, "seq": u.seq, "epoch": u.epoch})
                    return
