"""The one message schema between the autoscaler and its subscribers (the load client).

Transport follows the ZeroMQ guide's Clone pattern:

* PUB socket (``[zmq] publish``, default tcp://127.0.0.1:5556) carries every change of a
  group's replica set as a two-frame message ``[topic, body]``. The topic is
  ``b"replicas." + group`` so a subscriber filters by group with a prefix.
* Snapshot socket (``[zmq] snapshot``, default tcp://127.0.0.1:5557), a ROUTER: a DEALER
  or REQ client sends one frame ``b"SNAPSHOT"`` (optionally a second frame, a group name
  prefix) and gets one frame back, a ``snapshot`` body: every group's current set and the
  sequence number it is current at.
* ``seq`` is ONE sequence per daemon run across all groups (the Clone pattern's). A
  subscriber that tracks it subscribes to the whole ``b"replicas."`` prefix and skips the
  bodies of other groups' updates; a subscriber to one group's topic alone sees gaps.
* A subscriber connects SUB first, then asks for the snapshot, then applies only updates
  whose ``seq`` is newer than the snapshot's. A gap (seq jumps by more than one) or a new
  ``epoch`` (the daemon restarted, its sequence restarts) means: ask for a snapshot again.

Bodies are UTF-8 JSON objects with ``"schema": SCHEMA_VERSION``:

update::

    {"schema": 1, "type": "update", "epoch": "8f3c...", "seq": 17, "ts": 1763700000.1,
     "group": "web", "event": "ready", "replica": "cms-web-2", "reason": "scale out: ...",
     "replicas": [Replica, ...]}          # the group's whole current set after the change

snapshot::

    {"schema": 1, "type": "snapshot", "epoch": "8f3c...", "seq": 17, "ts": ...,
     "groups": {"web": [Replica, ...]}}

Replica::

    {"name": "cms-web-2", "group": "web", "host": "local", "address": "127.0.0.1",
     "port": 20001, "state": "ready", "created": 1763700000.0}

Several controllers (cms.leadership): each binds its own endpoints, only the leader
publishes, and every body carries the leader's ``term`` (0 with one controller). A client
connects SUB to every controller's publish endpoint and asks every snapshot endpoint; a
follower answers a snapshot request with::

    {"schema": 1, "type": "not_leader", "name": "c2", "term": 0,
     "leader": "c1", "leader_term": 41, "publish": "tcp://...", "snapshot": "tcp://..."}

naming the leader and its endpoints when it knows them ("" when nobody leads now). The
leader sends on the bare prefix topic ``b"replicas."`` an epoch message when it takes
over and then once per tick (the Clone pattern's heartbeat)::

    {"schema": 1, "type": "epoch", "epoch": "8f3c...", "seq": 17, "term": 41, "leader": "c1", "ts": ...}

so a subscriber learns of a new leader (a new epoch with a higher term: resync) even when
no replica changes, and of updates it missed (``seq`` past its own). Anything from an
older term than the one a subscriber follows is a deposed leader's: ignored.

``state`` is one of STATES. A client sends work only to replicas whose state is "ready".
A removed replica does not appear in ``replicas``; the update that removes it has
``event == "removed"`` and names it in ``replica``. ``event == "moved"``: a ready replica
was live-migrated and answers at the new ``host``/``address``/``port`` (announced when its
old host pauses it for the switch-over, before the old address goes away); requests in
flight at the old address finish there or fail over.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from cms.errors import MessageError

SCHEMA_VERSION = 1
TOPIC_PREFIX = b"replicas."
SNAPSHOT_REQUEST = b"SNAPSHOT"

# What an update says happened, and the state it leaves the replica in (the one table of
# it: the daemon announces by it, subscribers and tests read it): "added" announces a
# replica in state "starting", "moved" a ready one at a new address, "removed" takes it out
# of the set (None: no state).
EVENT_STATE: dict[str, str | None] = {"added": "starting", "ready": "ready", "draining": "draining",
                                      "removed": None, "failed": "failed", "moved": "ready"}
EVENTS = tuple(EVENT_STATE)
# Lifecycle of a replica as subscribers see it: every state an event leaves behind.
STATES = tuple(dict.fromkeys(s for s in EVENT_STATE.values() if s is not None))


@dataclass(frozen=True)
class Replica:
    name: str
    group: str
    host: str
    address: str
    port: int
    state: str
    created: float = 0.0

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Replica":
        try:
            r = cls(
                name=str(d["name"]),
                group=str(d["group"]),
                host=str(d.get("host", "")),
                address=str(d["address"]),
                port=int(d["port"]),
                state=str(d["state"]),
                created=float(d.get("created", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"bad replica record {d!r}: {exc}") from None
        if r.state not in STATES:
            raise MessageError(f"bad replica state {r.state!r} for {r.name}")
        return r


@dataclass(frozen=True)
class Update:
    epoch: str
    seq: int
    group: str
    event: str
    replica: str
    replicas: tuple[Replica, ...]
    reason: str = ""
    ts: float = field(default_factory=time.time)
    term: int = 0

    @property
    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "ready"]


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    seq: int
    groups: dict[str, tuple[Replica, ...]]
    ts: float = field(default_factory=time.time)
    term: int = 0


@dataclass(frozen=True)
class NotLeader:
    """A follower's answer to a snapshot request: who it is, and who leads if it knows."""
    name: str
    leader: str = ""
    leader_term: int = 0
    publish: str = ""
    snapshot: str = ""
    term: int = 0


@dataclass(frozen=True)
class Epoch:
    """The leader's heartbeat on the bare prefix topic: its epoch, sequence and term."""
    epoch: str
    seq: int
    term: int
    leader: str = ""
    ts: float = field(default_factory=time.time)


def endpoints(value: str | Sequence[str]) -> list[str]:
    """One endpoint or several (every controller's), as a list."""
    return [value] if isinstance(value, str) else list(value)


def topic(group: str) -> bytes:
    return TOPIC_PREFIX + group.encode()


def encode_update(u: Update) -> list[bytes]:
    """The two frames to send on the PUB socket."""
    if u.event not in EVENTS:
        raise MessageError(f"unknown event {u.event!r}")
    body = {
        "schema": SCHEMA_VERSION,
        "type": "update",
        "epoch": u.epoch,
        "seq": u.seq,
        "ts": u.ts,
        "group": u.group,
        "event": u.event,
        "replica": u.replica,
        "reason": u.reason,
        "replicas": [asdict(r) for r in u.replicas],
        "term": u.term,
    }
    return [topic(u.group), json.dumps(body, separators=(",", ":")).encode()]


def encode_epoch(e: Epoch) -> list[bytes]:
    body = {"schema": SCHEMA_VERSION, "type": "epoch", "epoch": e.epoch, "seq": e.seq, "term": e.term,
            "leader": e.leader, "ts": e.ts}
    return [TOPIC_PREFIX, json.dumps(body, separators=(",", ":")).encode()]


def encode_not_leader(n: NotLeader) -> bytes:
    return json.dumps({"schema": SCHEMA_VERSION, "type": "not_leader", **asdict(n)}, separators=(",", ":")).encode()


def encode_snapshot(s: Snapshot) -> bytes:
    body = {
        "schema": SCHEMA_VERSION,
        "type": "snapshot",
        "epoch": s.epoch,
        "seq": s.seq,
        "ts": s.ts,
        "groups": {g: [asdict(r) for r in reps] for g, reps in s.groups.items()},
        "term": s.term,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _load(body: bytes, want: str | tuple[str, ...]) -> dict[str, Any]:
    try:
        d = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"message is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise MessageError("message is not a JSON object")
    if d.get("schema") != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema {d.get('schema')!r}, this side speaks {SCHEMA_VERSION}")
    wanted = (want,) if isinstance(want, str) else want
    if d.get("type") not in wanted:
        raise MessageError(f"expected a {' or '.join(wanted)} message, got {d.get('type')!r}")
    return d


def decode_update(frames: list[bytes]) -> Update:
    if len(frames) != 2:
        raise MessageError(f"an update has 2 frames, got {len(frames)}")
    d = _load(frames[1], "update")
    try:
        u = Update(
            epoch=str(d["epoch"]),
            seq=int(d["seq"]),
            group=str(d["group"]),
            event=str(d["event"]),
            replica=str(d.get("replica", "")),
            replicas=tuple(Replica.from_dict(r) for r in d["replicas"]),
            reason=str(d.get("reason", "")),
            ts=float(d.get("ts", 0.0)),
            term=int(d.get("term", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"bad update: {exc}") from None
    if u.event not in EVENTS:
        raise MessageError(f"unknown event {u.event!r}")
    if frames[0] != topic(u.group):
        raise MessageError(f"topic {frames[0]!r} does not match group {u.group!r}")
    return u


def decode_feed(frames: list[bytes]) -> Update | Epoch:
    """A message from the PUB socket: a group's update, or the leader's epoch on the bare prefix."""
    if len(frames) == 2 and frames[0] == TOPIC_PREFIX:
        d = _load(frames[1], "epoch")
        try:
            return Epoch(str(d["epoch"]), int(d["seq"]), int(d["term"]), str(d.get("leader", "")),
                         float(d.get("ts", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"bad epoch message: {exc}") from None
    return decode_update(frames)


def decode_snapshot(body: bytes) -> Snapshot:
    reply = decode_snapshot_reply(body)
    if isinstance(reply, NotLeader):
        raise MessageError(f"{reply.name} is not the leader (the leader: {reply.leader or 'unknown'})")
    return reply


def decode_snapshot_reply(body: bytes) -> Snapshot | NotLeader:
    """The snapshot socket's answer: the leader's snapshot, or a follower's NotLeader."""
    d = _load(body, ("snapshot", "not_leader"))
    try:
        if d["type"] == "not_leader":
            return NotLeader(str(d["name"]), str(d.get("leader", "")), int(d.get("leader_term", 0)),
                             str(d.get("publish", "")), str(d.get("snapshot", "")), int(d.get("term", 0)))
        return Snapshot(
            epoch=str(d["epoch"]),
            seq=int(d["seq"]),
            groups={str(g): tuple(Replica.from_dict(r) for r in reps) for g, reps in d["groups"].items()},
            ts=float(d.get("ts", 0.0)),
            term=int(d.get("term", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MessageError(f"bad snapshot: {exc}") from None
