"""Loopback stand-ins for tests, benches and demos: a guest /work server and an autoscaler feed.

Both listen on 127.0.0.1 only, on ports the OS picks, and run in a background thread so the
code under test keeps its own event loop.

StubWorkServer answers the guest server's contract (``/work``, ``/health``, ``/status``)
with the guest's own work definition (guest.cms_work), or misbehaves on purpose
(``behaviour``): "wrong" answers a wrong result, "500" answers 500, "close" drops the
connection, and ``delay`` slows each answer. It records when each request arrived.

StubPublisher is the autoscaler's own Clone server (cms.autoscaler.publisher.Publisher)
on loopback ports, with what tests need on top: changes by replica name and event,
snapshot requests it leaves unanswered on purpose, and its own ZeroMQ context.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zmq

from cms.autoscaler.publisher import Publisher
from cms.config import ZmqConfig
from cms.messages import EVENT_STATE, Replica, Snapshot, Update
from guest import cms_work


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
            payload, cost = cms_work.check(q.get("payload", [None])[0], q.get("cost", [None])[0])
        except cms_work.WorkError as exc:
            return 400, {"error": str(exc)}
        result = cms_work.result(payload, cost)
        if self.behaviour == "wrong":
            result = result[::-1]
        return 200, {"result": result, "cost": cost, "hostname": self.name}


class StubPublisher(Publisher):
    """The replica feed for one or more groups on loopback, for tests."""

    def __init__(self, curve_secret_key: str = "", epoch: str | None = None) -> None:
        public = zmq.curve_public(curve_secret_key.encode()).decode() if curve_secret_key else ""
        self._own_ctx = zmq.Context()
        super().__init__(ZmqConfig(publish="tcp://127.0.0.1:*", snapshot="tcp://127.0.0.1:*",
                                   curve_secret_key=curve_secret_key, curve_public_key=public),
                         epoch=epoch, context=self._own_ctx)
        self.ignore_snapshots = 0          # leave this many snapshot requests unanswered (timeouts)

    def update(self, group: str, event: str, name: str, port: int = 0, address: str = "127.0.0.1",
               publish: bool = True, reason: str = "") -> Update:
        """Announce that replica `name` of `group` had `event`; a new name is made at
        `address`:`port`. publish=False: a message the subscribers never get."""
        old = next((r for r in self.replicas(group) if r.name == name), None)
        # the state the event leaves behind (messages.EVENT_STATE); "removed" leaves none
        state = EVENT_STATE.get(event) or (old.state if old else "starting")
        if old is None:
            rep = Replica(name=name, group=group, host="local", address=address, port=port, state=state,
                          created=time.time())
        else:
            rep = replace(old, state=state)
        return self.announce(event, rep, reason, publish=publish)

    def answer_snapshot(self, prefix: str) -> Snapshot | None:
        if self.ignore_snapshots > 0:
            self.ignore_snapshots -= 1
            return None
        return super().answer_snapshot(prefix)

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        if not self._own_ctx.closed:
            self._own_ctx.term()
