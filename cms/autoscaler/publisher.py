"""The replica feed: the ZeroMQ guide's Clone pattern, server side.

A PUB socket carries every change as ``encode_update`` frames with a monotonic ``seq`` and
this run's ``epoch``; a ROUTER socket answers ``SNAPSHOT`` [group prefix] with the current
sets and the seq they are current at. One thread owns both sockets: ``announce`` only
updates the state under a lock and queues the frames, so any thread may call it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Iterable

import zmq

from cms.config import ZmqConfig
from cms.messages import SNAPSHOT_REQUEST, Replica, Snapshot, Update, encode_snapshot, encode_update

log = logging.getLogger(__name__)


class FeedState:
    """The current replica sets and the sequence; subclasses decide where updates go."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex
        self.seq = 0
        self._sets: dict[str, dict[str, Replica]] = {}
        self._lock = threading.Lock()

    # -- state -----------------------------------------------------------------------------

    def announce(self, event: str, replica: Replica, reason: str = "") -> Update:
        """Apply one change to the group's set and publish it; returns the update sent."""
        with self._lock:
            members = self._sets.setdefault(replica.group, {})
            if event == "removed":
                members.pop(replica.name, None)
            else:
                members[replica.name] = replica
            self.seq += 1
            u = Update(epoch=self.epoch, seq=self.seq, group=replica.group, event=event, replica=replica.name,
                       replicas=tuple(sorted(members.values(), key=lambda r: (r.created, r.name))),
                       reason=reason, ts=time.time())
            self._emit(encode_update(u))
        return u

    def replicas(self, group: str) -> list[Replica]:
        with self._lock:
            return sorted(self._sets.get(group, {}).values(), key=lambda r: (r.created, r.name))

    def snapshot(self, prefix: str = "") -> Snapshot:
        with self._lock:
            groups = {g: tuple(sorted(m.values(), key=lambda r: (r.created, r.name)))
                      for g, m in self._sets.items() if g.startswith(prefix)}
            return Snapshot(self.epoch, self.seq, groups, time.time())

    def _emit(self, frames: list[bytes]) -> None:
        pass

    def close(self, timeout: float = 0.0) -> None:
        pass


class NullPublisher(FeedState):
    """Keeps the sets but sends nothing (dry runs)."""


class Publisher(FeedState):
    def __init__(self, zcfg: ZmqConfig, *, epoch: str | None = None, context: zmq.Context | None = None) -> None:
        super().__init__(epoch)
        self._out: "queue.Queue[list[bytes]]" = queue.Queue()
        self._stop = threading.Event()
        self._ctx = context or zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._router = self._ctx.socket(zmq.ROUTER)
        for s in (self._pub, self._router):
            s.setsockopt(zmq.LINGER, 0)
            if zcfg.curve_secret_key and zcfg.curve_public_key:
                s.curve_secretkey = zcfg.curve_secret_key.encode()
                s.curve_publickey = zcfg.curve_public_key.encode()
                s.curve_server = True
        try:
            self._pub.bind(zcfg.publish)
            self._router.bind(zcfg.snapshot)
        except zmq.ZMQError:
            self._pub.close()
            self._router.close()
            raise
        self.publish_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.snapshot_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="cms-publisher", daemon=True)
        self._thread.start()

    def _emit(self, frames: list[bytes]) -> None:
        self._out.put(frames)

    # -- the socket thread -----------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        while not self._stop.is_set():
            self._flush()
            try:
                ready = dict(poller.poll(5))
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    break
                log.warning("publisher poll failed: %s", exc)
                continue
            if self._router in ready:
                self._answer()
        self._flush()

    def _flush(self) -> None:
        while True:
            try:
                frames = self._out.get_nowait()
            except queue.Empty:
                return
            try:
                self._pub.send_multipart(frames)
            except zmq.ZMQError as exc:
                log.warning("could not publish an update: %s", exc)

    def _answer(self) -> None:
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
            return
        prefix = body[1].decode("utf-8", "replace") if len(body) > 1 else ""
        self._router.send_multipart([ident, *delim, encode_snapshot(self.snapshot(prefix))])

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._pub.close(0)
        self._router.close(0)


def announced(updates: Iterable[Update], group: str) -> list[tuple[str, str]]:
    """(event, replica) pairs of one group, in order: handy in logs and tests."""
    return [(u.event, u.replica) for u in updates if u.group == group]
