"""Loopback stand-ins for tests, benches and demos: a guest /work server and an autoscaler feed.

Both listen on 127.0.0.1 only, on ports the OS picks, and run in a background thread so the
code under test keeps its own event loop.

StubWorkServer answers the guest server's contract (``/work``, ``/health``, ``/status``)
with a real pbkdf2, or misbehaves on purpose (``behaviour``): "wrong" answers a wrong
result, "500" answers 500, "close" drops the connection, and ``delay`` slows each answer.
It records when each request arrived.

StubPublisher plays the autoscaler's side of cms.messages: an XPUB (a PUB that also tells
us when a subscriber has subscribed, so tests need no sleeps) and a ROUTER answering
snapshot requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zmq

from cms.messages import (SNAPSHOT_REQUEST, Replica, Snapshot, Update, encode_snapshot, encode_update)

GUEST_SALT = b"cms-guest"


class StubWorkServer:
    def __init__(self, behaviour: str = "ok", delay: float = 0.0, name: str = "stub") -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.name = name
        self.port = 0
        self.arrivals: list[float] = []       # time.time() of each /work request
        self.served = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "StubWorkServer":
        self._thread = threading.Thread(target=self._main, name=f"stub-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(5.0):
            raise RuntimeError("stub server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> "StubWorkServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, sock=sock, backlog=512))
        self._started.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for t in asyncio.all_tasks(loop):
                t.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(1_000_000):
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split()
                if len(parts) != 3:
                    return
                url = urlsplit(parts[1])
                if url.path == "/work":
                    with self._lock:
                        self.arrivals.append(time.time())
                    if self.behaviour == "close":
                        return
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    try:
                        if self.delay:
                            await asyncio.sleep(self.delay)
                        status, body = self._work(url.query)
                    finally:
                        self.in_flight -= 1
                    self.served += 1
                elif url.path == "/health":
                    status, body = 200, {"ok": True}
                elif url.path == "/status":
                    status, body = 200, {"served": self.served, "in_flight": self.in_flight, "hostname": self.name}
                else:
                    status, body = 404, {"error": "not found"}
                data = json.dumps(body).encode()
                reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}[status]
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (status, reason.encode(), len(data)) + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _work(self, query: str) -> tuple[int, dict[str, Any]]:
        if self.behaviour == "500":
            return 500, {"error": "stub told to fail"}
        q = parse_qs(query)
        try:
            payload = q["payload"][0]
            cost = int(q["cost"][0])
            if cost < 1:
                raise ValueError
        except (KeyError, ValueError, IndexError):
            return 400, {"error": "need payload and a positive integer cost"}
        result = hashlib.pbkdf2_hmac("sha256", payload.encode(), GUEST_SALT, cost).hex()
        if self.behaviour == "wrong":
            result = result[::-1]
        return 200, {"result": result, "cost": cost, "hostname": self.name}


class StubPublisher:
    """The autoscaler's replica feed for one or more groups, on loopback."""

    def __init__(self, curve_secret_key: str = "", epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex
        self.seq = 0
        self.groups: dict[str, dict[str, Replica]] = {}
        self.snapshot_requests = 0
        self.ignore_snapshots = 0          # drop this many snapshot requests (timeouts in tests)
        self.subscriptions: list[bytes] = []
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.XPUB)
        self._router = self._ctx.socket(zmq.ROUTER)
        for s in (self._pub, self._router):
            s.linger = 0
            if curve_secret_key:
                s.curve_server = True
                s.curve_secretkey = curve_secret_key.encode()
        self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._pub.bind("tcp://127.0.0.1:*")
        self._router.bind("tcp://127.0.0.1:*")
        self.publish_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.snapshot_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sub_cond = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._main, name="stub-publisher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._pub.close(0)
        self._router.close(0)
        self._ctx.term()

    def __enter__(self) -> "StubPublisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_subscribed(self, prefix: bytes, timeout: float = 5.0, count: int = 1) -> bool:
        """Block until `count` subscriptions whose prefix starts the topic have been seen."""
        deadline = time.monotonic() + timeout
        with self._sub_cond:
            while sum(1 for s in self.subscriptions if prefix.startswith(s)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._sub_cond.wait(left)
            return True

    def announce(self, group: str, event: str, name: str, port: int = 0, address: str = "127.0.0.1",
                 publish: bool = True, reason: str = "") -> Update:
        """Change `name` as `event` says, bump seq, and publish the update (unless publish=False,
        which simulates a message the subscriber never got)."""
        with self._lock:
            reps = self.groups.setdefault(group, {})
            if event == "removed":
                reps.pop(name, None)
            else:
                state = {"added": "starting", "ready": "ready", "draining": "draining", "failed": "failed"}[event]
                old = reps.get(name)
                if old is None:
                    reps[name] = Replica(name=name, group=group, host="local", address=address, port=port,
                                         state=state, created=time.time())
                else:
                    reps[name] = replace(old, state=state)
            self.seq += 1
            u = Update(epoch=self.epoch, seq=self.seq, group=group, event=event, replica=name,
                       replicas=tuple(reps.values()), reason=reason, ts=time.time())
            if publish:
                self._pub.send_multipart(encode_update(u))
            return u

    def restart(self, epoch: str | None = None) -> None:
        """As if the daemon restarted: a new epoch, its sequence from zero, the same replicas."""
        with self._lock:
            self.epoch = epoch or uuid.uuid4().hex
            self.seq = 0

    def current(self, group: str) -> tuple[Replica, ...]:
        with self._lock:
            return tuple(self.groups.get(group, {}).values())

    def _main(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pub, zmq.POLLIN)
        poller.register(self._router, zmq.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                events = dict(poller.poll(2))
                if self._pub in events:
                    for _ in range(1000):
                        try:
                            msg = self._pub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if msg[:1] == b"\x01":
                            self.subscriptions.append(msg[1:])
                    self._sub_cond.notify_all()
                if self._router in events:
                    for _ in range(1000):
                        try:
                            frames = self._router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._snapshot_request(frames)
            time.sleep(0.001)

    def _snapshot_request(self, frames: list[bytes]) -> None:
        ident, rest = frames[0], frames[1:]
        envelope = [ident]
        if rest and rest[0] == b"":
            envelope.append(b"")       # a REQ client's delimiter
            rest = rest[1:]
        if not rest or rest[0] != SNAPSHOT_REQUEST:
            return
        self.snapshot_requests += 1
        if self.ignore_snapshots > 0:
            self.ignore_snapshots -= 1
            return
        prefix = rest[1].decode() if len(rest) > 1 else ""
        groups = {g: tuple(r.values()) for g, r in self.groups.items() if g.startswith(prefix)}
        snap = Snapshot(epoch=self.epoch, seq=self.seq, groups=groups, ts=time.time())
        self._router.send_multipart(envelope + [encode_snapshot(snap)])
