"""A fake of what cms.coordination uses of tooz's etcd3gw driver, on an injected clock.

FakeCluster is the etcd cluster: one revision counter, keys with their create revision and
lease, leases that expire on the clock. ``connect`` is a drop-in for
tooz.coordination.get_coordinator: each FakeCoordinator has a lock like tooz's Etcd3Lock
(acquire without blocking, heartbeat, release by value) and a ``client`` with the one
etcd3gw call the Election makes directly, ``transaction`` (ranges, puts, a CREATE-revision
compare), and the ``protocol``/``host``/``port`` it fails over with. A member can be down
(``down``) and a controller cut off from all of them (``cut``): their calls raise as
etcd3gw's do when a member does not answer.
"""

from __future__ import annotations

import base64
import itertools
import urllib.parse
import uuid
from dataclasses import dataclass, field


class Unreachable(Exception):
    """What etcd3gw raises when the member does not answer (ConnectionFailedError's stand-in)."""


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@dataclass
class FakeCluster:
    clock: FakeClock
    revision: int = 1
    kv: dict[str, dict] = field(default_factory=dict)
    leases: dict[int, tuple[float, float]] = field(default_factory=dict)   # id -> (ttl, expires at)
    down: set[str] = field(default_factory=set)      # member hosts that do not answer
    cut: set[bytes] = field(default_factory=set)     # controllers (member ids) cut off from every member
    calls: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(7000))

    def connect(self, url: str, member_id: bytes, **options: str) -> "FakeCoordinator":
        return FakeCoordinator(self, url, member_id, options)

    def _expire(self) -> None:
        now = self.clock()
        for lid, (_ttl, until) in list(self.leases.items()):
            if until <= now:
                del self.leases[lid]
                for k in [k for k, v in self.kv.items() if v["lease"] == lid]:
                    del self.kv[k]

    def gate(self, coord: "FakeCoordinator") -> None:
        self.calls += 1
        if coord.member_id in self.cut or coord.client.host in self.down:
            raise Unreachable(f"{coord.client.host}:{coord.client.port} does not answer")
        self._expire()

    def grant(self, ttl: float) -> int:
        lid = next(self._ids)
        self.leases[lid] = (ttl, self.clock() + ttl)
        return lid

    def refresh(self, lid: int) -> int:
        if lid not in self.leases:
            return -1
        ttl, _ = self.leases[lid]
        self.leases[lid] = (ttl, self.clock() + ttl)
        return int(ttl)

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        self.revision += 1
        old = self.kv.get(key)
        self.kv[key] = {"value": value, "create_revision": old["create_revision"] if old else self.revision,
                        "mod_revision": self.revision, "lease": lease}

    def holder_term(self, key: str) -> int:
        self._expire()
        return self.kv[key]["create_revision"] if key in self.kv else 0


class FakeLock:
    def __init__(self, coord: "FakeCoordinator", name: bytes) -> None:
        self.coord, self.key = coord, "/tooz/locks" + name.decode()
        self.value = uuid.uuid4().bytes
        self.lease = 0
        self.acquired = False

    def acquire(self, blocking: bool = True) -> bool:
        assert blocking is False, "the Election never blocks on the lock"
        c = self.coord.cluster
        c.gate(self.coord)
        self.lease = c.grant(float(self.coord.options["lock_timeout"]))
        if self.key in c.kv:
            return False
        c.put(self.key, self.value, self.lease)
        self.acquired = True
        return True

    def heartbeat(self) -> bool:
        c = self.coord.cluster
        c.gate(self.coord)
        if self.acquired:
            c.refresh(self.lease)
        return self.acquired

    def release(self) -> bool:
        c = self.coord.cluster
        c.gate(self.coord)
        self.acquired = False
        if c.kv.get(self.key, {}).get("value") == self.value:
            del c.kv[self.key]
            return True
        return False


class FakeClient:
    def __init__(self, coord: "FakeCoordinator", url: str) -> None:
        p = urllib.parse.urlsplit(url)
        self.coord, self.protocol, self.host, self.port = coord, "http", p.hostname, p.port

    def transaction(self, txn: dict) -> dict:
        c = self.coord.cluster
        c.gate(self.coord)
        ok = True
        for cmp in txn.get("compare", []):
            key = base64.b64decode(cmp["key"]).decode()
            assert cmp["target"] == "CREATE" and cmp["result"] == "EQUAL", cmp
            ok &= c.kv.get(key, {}).get("create_revision", 0) == int(cmp["create_revision"])
        responses = []
        for op in txn["success" if ok else "failure"]:
            if "request_range" in op:
                key = base64.b64decode(op["request_range"]["key"]).decode()
                kv = c.kv.get(key)
                rng = {"kvs": [{"key": op["request_range"]["key"], "create_revision": str(kv["create_revision"]),
                                "mod_revision": str(kv["mod_revision"]),
                                "value": base64.b64encode(kv["value"]).decode()}]} if kv else {}
                responses.append({"response_range": rng})
            else:
                put = op["request_put"]
                c.put(base64.b64decode(put["key"]).decode(), base64.b64decode(put["value"]))
                responses.append({"response_put": {}})
        return {"succeeded": ok, "responses": responses}


class FakeCoordinator:
    def __init__(self, cluster: FakeCluster, url: str, member_id: bytes, options: dict) -> None:
        self.cluster, self.member_id, self.options = cluster, member_id, options
        self.client = FakeClient(self, url)
        self.started = False

    def start(self, start_heart: bool = False) -> None:
        self.cluster.gate(self)
        self.started = True

    def stop(self) -> None:
        self.started = False

    def get_lock(self, name: bytes) -> FakeLock:
        return FakeLock(self, name)
