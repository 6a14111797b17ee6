"""The feed follows the leader (cms.messages, cms.autoscaler.publisher, client.replicas), on real
ZeroMQ sockets on loopback: every controller binds, only the leader sends, followers answer
"not leader" naming it, and a client keeps its set through a takeover until the new
leader's epoch. Every wait is bounded."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from client.replicas import CURRENT, GAP, NEW_EPOCH, STALE, FeedState, ReplicaFeed, ask_snapshot, fetch_snapshot
from cms.autoscaler.publisher import Publisher
from cms.errors import MessageError
from cms.leadership import Leader
from cms.messages import (Epoch, NotLeader, Replica, Snapshot, Update, decode_feed, decode_snapshot,
                          decode_snapshot_reply, encode_epoch, encode_not_leader, encode_update, topic)
from tests.doubles import StubPublisher
from tests.support import free_port, make_config
from tests.unit.test_replica_feed import names_states, run, until


def controller(name: str) -> StubPublisher:
    p = StubPublisher()
    p.name = name
    return p


def record(p: StubPublisher, term: int) -> Leader:
    return Leader(p.name, term, p.publish_endpoint, p.snapshot_endpoint)


def rep(name: str, port: int, state: str = "ready") -> Replica:
    return Replica(name, "web", "hv1", "127.0.0.1", port, state, 1.0)


# -- the schema --------------------------------------------------------------------------------

def test_not_leader_and_epoch_messages_round_trip_and_terms_ride_along():
    n = NotLeader("c2", "c1", 41, "tcp://c1:5556", "tcp://c1:5557", 0)
    assert decode_snapshot_reply(encode_not_leader(n)) == n
    with pytest.raises(MessageError, match="c2 is not the leader \\(the leader: c1\\)"):
        decode_snapshot(encode_not_leader(n))
    e = Epoch("ep", 17, 41, "c1", 5.0)
    assert decode_feed(encode_epoch(e)) == e
    u = Update("ep", 18, "web", "ready", "r1", (rep("r1", 1),), "why", 6.0, term=41)
    assert decode_feed(encode_update(u)) == u
    with pytest.raises(MessageError):
        decode_feed([b"replicas.", b'{"schema": 1, "type": "epoch", "epoch": "x"}'])


@pytest.mark.parametrize("msg, verdict", [
    (Update("e1", 11, "web", "ready", "r", (), term=5), "applied"),
    (Update("e9", 1, "web", "ready", "r", (), term=3), STALE),      # a deposed leader's, even in another epoch
    (Update("e9", 1, "web", "ready", "r", (), term=9), NEW_EPOCH),  # the new leader
    (Epoch("e1", 10, 5), CURRENT),
    (Epoch("e1", 12, 5), GAP),                                       # updates we never got
    (Epoch("e9", 0, 9), NEW_EPOCH),
    (Epoch("e0", 99, 4), STALE),
])
def test_feed_state_judges_terms_and_epochs(msg, verdict):
    st = FeedState("web")
    st.apply_snapshot(Snapshot("e1", 10, {"web": ()}, term=5))
    got = st.on_epoch(msg) if isinstance(msg, Epoch) else st.on_update(msg)
    assert got == verdict
    assert st.term == max(5, msg.term) if verdict in (NEW_EPOCH, GAP) else st.term == 5


# -- the publishers -------------------------------------------------------------------------------

def test_each_controller_binds_the_first_pair_it_can():
    taken_pub, taken_snap = free_port(), free_port()
    ctx = zmq.Context()
    other = ctx.socket(zmq.PUB)
    other.bind(f"tcp://127.0.0.1:{taken_pub}")       # the first controller holds the first pair
    zcfg = make_config(zmq={"publish": [f"tcp://127.0.0.1:{taken_pub}", "tcp://127.0.0.1:*"],
                            "snapshot": [f"tcp://127.0.0.1:{taken_snap}", "tcp://127.0.0.1:*"]},
                       coordination={"url": "etcd3+http://127.0.0.1:2379"}).zmq
    try:
        with Publisher(zcfg, context=ctx) as p:
            assert p.index == 1 and p.publish_endpoint != f"tcp://127.0.0.1:{taken_pub}"
        unreachable = make_config(zmq={"publish": ["tcp://192.0.2.1:5556"], "snapshot": ["tcp://192.0.2.1:5557"]}).zmq
        with pytest.raises(zmq.ZMQError):
            Publisher(unreachable, context=ctx)
    finally:
        other.close(0)
        ctx.term()


def test_a_follower_sends_nothing_and_answers_not_leader_naming_the_leader():
    with controller("c1") as a, controller("c2") as b:
        a.lead(7)
        b.follow(record(a, 7))
        for p in (a, b):
            p.update("web", "ready", "r1", port=20001)
        snap, followers = ask_snapshot([b.snapshot_endpoint], "web", timeout=5.0)
        # b named a, which was then asked too
        assert followers == [NotLeader("c2", "c1", 7, a.publish_endpoint, a.snapshot_endpoint, 0)]
        assert snap is not None and snap.term == 7 and snap.epoch == a.epoch
        assert [r.name for r in snap.groups["web"]] == ["r1"]
        b.follow(None)                                   # nobody leads now
        assert ask_snapshot([b.snapshot_endpoint], timeout=5.0) == (None, [NotLeader("c2", term=0)])
        assert fetch_snapshot([b.snapshot_endpoint, a.snapshot_endpoint], timeout=5.0).term == 7


# -- a client through a takeover ------------------------------------------------------------------

class Client:
    def __init__(self, publish, snapshot) -> None:
        self.changes: list[tuple[int | None, list]] = []
        self.events: list[tuple[str, dict]] = []
        self.feed = ReplicaFeed(publish, snapshot, "web", lambda reps, u: self.changes.append(
            (None if u is None else u.term, names_states(reps))), snapshot_timeout=0.5,
            on_event=lambda k, i: self.events.append((k, i)))
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.feed.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5.0)


async def subscribed(*pubs: StubPublisher) -> None:
    for p in pubs:
        assert await asyncio.to_thread(p.wait_subscribed, topic("web"), 5.0)


def test_the_client_keeps_its_set_through_a_takeover_and_resyncs_on_the_new_epoch():
    async def body():
        a, b = controller("c1"), controller("c2")
        try:
            a.lead(5)
            b.follow(record(a, 5))
            for p in (a, b):                        # both see the same replicas; only a sends
                p.update("web", "ready", "r1", port=20001)
                p.update("web", "ready", "r2", port=20002)
            c = Client([a.publish_endpoint, b.publish_endpoint], [b.snapshot_endpoint, a.snapshot_endpoint])
            await asyncio.wait_for(c.feed.synced.wait(), 5.0)
            await subscribed(a, b)
            assert c.feed.state.term == 5 and c.changes == [(None, [("r1", "ready"), ("r2", "ready")])]
            a.update("web", "added", "r3", port=20003)
            await until(lambda: len(c.changes) == 2, what="the leader's update")
            b.update("web", "added", "r3", port=20003)
            a.close()                               # the leader dies; nothing leads for a while
            b.follow(None)
            b.update("web", "ready", "r3", port=20003)   # b adopts while taking over: nothing sent yet
            b.lead(9)
            await until(lambda: c.feed.state.term == 9 and c.feed.state.synced, what="the new leader's snapshot")
            # the set stayed as it was until the new leader's snapshot: no change, never an empty set
            assert c.changes == [(None, [("r1", "ready"), ("r2", "ready")]),
                                 (5, [("r1", "ready"), ("r2", "ready"), ("r3", "starting")]),
                                 (None, [("r1", "ready"), ("r2", "ready"), ("r3", "ready")])]
            b.update("web", "removed", "r1")
            await until(lambda: c.changes[-1][0] == 9, what="the new leader's update")
            await c.close()
            assert c.feed.state.resyncs[NEW_EPOCH] == 1
        finally:
            a.close()
            b.close()
    run(body())


def test_a_deposed_leader_still_sending_is_ignored_and_a_client_finds_the_leader_from_a_follower():
    async def body():
        old, new, third = controller("c1"), controller("c2"), controller("c3")
        try:
            old.lead(5)                             # cut off from etcd, it still thinks it leads
            new.lead(9)
            third.follow(record(new, 9))
            new.update("web", "ready", "r1", port=20001)
            # the client was told only of the follower (and hears the deposed one too)
            c = Client([third.publish_endpoint, old.publish_endpoint], [third.snapshot_endpoint])
            await asyncio.wait_for(c.feed.synced.wait(), 5.0)
            await subscribed(old, new)
            assert c.feed.state.term == 9 and c.changes[-1] == (None, [("r1", "ready")])
            assert new.snapshot_endpoint in c.feed._snapshot and ("not_leader", {
                "controller": "c3", "leader": "c2", "leader_term": 9}) in c.events
            old.update("web", "ready", "ghost", port=20009)    # term 5: ignored
            old.heartbeat()
            # (old's own epoch message from its lead(5) may come late too: also ignored)
            await until(lambda: c.feed.state.ignored >= 2, what="the deposed leader's messages")
            new.update("web", "ready", "r2", port=20002)
            await until(lambda: c.changes[-1][1] == [("r1", "ready"), ("r2", "ready")], what="the leader's update")
            await c.close()
            assert all("ghost" not in str(ch) for ch in c.changes)
            assert c.feed.state.resyncs == {GAP: 0, NEW_EPOCH: 0}
        finally:
            for p in (old, new, third):
                p.close()
    run(body())
