"""The load client's subscriber to the autoscaler's replica feed (client.replicas), against the
autoscaler's own Clone server on loopback (tests.doubles.StubPublisher). Every wait is bounded."""

from __future__ import annotations

import asyncio
import time

import zmq

from client.replicas import APPLIED, GAP, NEW_EPOCH, STALE, FeedState, ReplicaFeed
from tests.doubles import StubPublisher
from cms.messages import Replica, Snapshot, Update, topic

TIMEOUT = 20.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def names_states(reps) -> list[tuple[str, str]]:
    return sorted((r.name, r.state) for r in reps)


class Follower:
    """A ReplicaFeed on the running loop, recording every change it hands on."""

    def __init__(self, pub: StubPublisher, group: str = "web", **kw) -> None:
        self.changes: list[tuple[int | None, list[tuple[str, str]]]] = []
        self.feed = ReplicaFeed(pub.publish_endpoint, pub.snapshot_endpoint, group, self._on_change, **kw)
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.feed.run(self.stop))

    def _on_change(self, reps, update) -> None:
        self.changes.append((None if update is None else update.seq, names_states(reps)))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5.0)


async def synced(f: Follower, pub: StubPublisher, group: str = "web") -> None:
    await asyncio.wait_for(f.feed.synced.wait(), 5.0)
    # the publisher has seen our subscription: from here on nothing published can be missed
    assert await asyncio.to_thread(pub.wait_subscribed, topic(group), 5.0)


def script(pub: StubPublisher, n: int, start: int = 0) -> dict[int, list[tuple[str, str]]]:
    """Publish n updates cycling replicas through their lifecycle; the set after each seq."""
    after = {}
    for i in range(start, start + n):
        name = f"cms-web-{i // 4}"
        event = ("added", "ready", "draining", "removed")[i % 4]
        u = pub.update("web", event, name, port=20000 + i // 4)
        after[u.seq] = names_states(u.replicas)
    return after


def test_late_joiner_gets_snapshot_then_every_update_in_order():
    async def body():
        with StubPublisher() as pub:
            for k in range(5):     # history before the subscriber exists
                pub.update("web", "added", f"old-{k}", port=21000 + k)
                pub.update("web", "ready", f"old-{k}", port=21000 + k)
            pub.update("web", "draining", "old-0")
            before = names_states(pub.replicas("web"))
            assert pub.seq == 11
            f = Follower(pub)
            await synced(f, pub)
            after = script(pub, 120, start=40)
            await until(lambda: f.feed.state.seq == pub.seq, what="all updates")
            await f.close()
        assert f.changes[0] == (None, before)                       # the snapshot first
        assert [seq for seq, _ in f.changes[1:]] == list(range(12, 12 + 120))   # then every seq, in order
        for seq, state in f.changes[1:]:
            assert state == after[seq]
        assert f.feed.state.snapshots == 1 and f.feed.state.resyncs == {GAP: 0, NEW_EPOCH: 0}
    run(body())


def test_gap_in_seq_means_resnapshot():
    async def body():
        with StubPublisher() as pub:
            pub.update("web", "ready", "a", port=20001)
            f = Follower(pub)
            await synced(f, pub)
            pub.update("web", "ready", "b", port=20002)                    # seq 2: seen
            pub.update("web", "ready", "c", port=20003, publish=False)     # seq 3: lost
            pub.update("web", "draining", "a")                             # seq 4: a gap
            await until(lambda: f.feed.state.snapshots == 2 and f.feed.state.seq == 4, what="resnapshot")
            pub.update("web", "removed", "a")                              # seq 5: applied as usual
            await until(lambda: f.feed.state.seq == 5, what="update after resnapshot")
            final = names_states(pub.replicas("web"))
            await f.close()
        assert f.feed.state.resyncs[GAP] == 1
        assert [seq for seq, _ in f.changes] == [None, 2, None, 5]
        assert f.changes[2][1] == [("a", "draining"), ("b", "ready"), ("c", "ready")]   # c came with the snapshot
        assert f.changes[-1][1] == final == [("b", "ready"), ("c", "ready")]
    run(body())


def test_new_epoch_means_resnapshot():
    async def body():
        with StubPublisher() as pub:
            for i in range(6):
                pub.update("web", "ready", f"r{i}", port=20000 + i)
            f = Follower(pub)
            await synced(f, pub)
            old_epoch = pub.epoch
            pub.new_epoch()                                      # seq starts again from zero
            pub.update("web", "removed", "r0")               # seq 1 of the new epoch: "older" than 6
            await until(lambda: f.feed.state.epoch == pub.epoch and f.feed.state.seq == 1, what="new epoch")
            pub.update("web", "draining", "r1")
            await until(lambda: f.feed.state.seq == 2, what="update in the new epoch")
            final = names_states(pub.replicas("web"))
            await f.close()
        assert pub.epoch != old_epoch
        assert f.feed.state.resyncs[NEW_EPOCH] == 1 and f.feed.state.snapshots == 2
        assert f.changes[-1] == (2, final)
        assert ("r0", "ready") not in f.changes[-2][1]
    run(body())


def test_unanswered_snapshot_is_asked_again():
    async def body():
        with StubPublisher() as pub:
            pub.update("web", "ready", "a", port=20001)
            pub.ignore_snapshots = 1
            f = Follower(pub, snapshot_timeout=0.3)
            await synced(f, pub)
            await f.close()
        assert pub.snapshot_requests == 2
        assert f.changes == [(None, [("a", "ready")])]
    run(body())


def test_other_groups_sharing_the_prefix_are_ignored():
    async def body():
        with StubPublisher() as pub:
            pub.update("web", "ready", "a", port=20001)
            pub.update("web2", "ready", "x", port=20009)
            f = Follower(pub)
            await synced(f, pub)
            await f.close()
        assert f.changes == [(None, [("a", "ready")])]
    run(body())


def test_curve_encrypted_feed():
    pub_key, sec_key = zmq.curve_keypair()

    async def body():
        with StubPublisher(curve_secret_key=sec_key.decode()) as pub:
            pub.update("web", "ready", "a", port=20001)
            f = Follower(pub, curve_server_key=pub_key.decode())
            await synced(f, pub)
            pub.update("web", "ready", "b", port=20002)
            await until(lambda: f.feed.state.seq == 2, what="encrypted update")
            # a subscriber with the wrong server key never gets in
            wrong, _ = zmq.curve_keypair()
            seen: list[str] = []
            g = Follower(pub, curve_server_key=wrong.decode(), snapshot_timeout=0.2,
                         on_event=lambda kind, _info: seen.append(kind))
            await until(lambda: seen.count("snapshot_timeout") >= 2, what="two snapshot requests unanswered")
            assert not g.feed.synced.is_set() and "snapshot" not in seen
            await g.close()
            await f.close()
        assert f.changes[-1] == (2, [("a", "ready"), ("b", "ready")])
    run(body())


def test_feed_state_rules():
    r = Replica(name="a", group="web", host="local", address="127.0.0.1", port=1, state="ready")
    st = FeedState("web")
    st.apply_snapshot(Snapshot(epoch="e1", seq=10, groups={"web": (r,)}))

    def upd(seq, epoch="e1", group="web"):
        return Update(epoch=epoch, seq=seq, group=group, event="ready", replica="a", replicas=(r,))
    assert st.on_update(upd(9)) == STALE
    assert st.on_update(upd(10)) == STALE
    assert st.on_update(upd(11)) == APPLIED and st.seq == 11
    assert st.on_update(upd(13)) == GAP and not st.synced
    st.apply_snapshot(Snapshot(epoch="e1", seq=13, groups={}))
    assert st.replicas == ()
    assert st.on_update(upd(1, epoch="e2")) == NEW_EPOCH and not st.synced


def test_interop_with_the_autoscaler_publisher():
    """Against cms.autoscaler.publisher.Publisher as the daemon builds it, without waiting for
    the subscription: whatever is lost to the slow-joiner window or skipped as another
    group's seq is repaired by a resnapshot, and the follower ends on the publisher's set."""
    from cms.autoscaler.publisher import Publisher
    from cms.config import ZmqConfig

    def rep(name, state, group="web", port=20001):
        return Replica(name=name, group=group, host="local", address="127.0.0.1", port=port, state=state,
                       created=float(port))

    async def body():
        ctx = zmq.Context()
        pub = Publisher(ZmqConfig(publish="tcp://127.0.0.1:*", snapshot="tcp://127.0.0.1:*"), context=ctx)
        try:
            pub.announce("ready", rep("a", "ready"))
            f = Follower(pub)
            await asyncio.wait_for(f.feed.synced.wait(), 5.0)
            for i in range(20):
                pub.announce("added", rep(f"n{i}", "starting", port=20100 + i))
                pub.announce("ready", rep(f"db{i}", "ready", group="db", port=20200 + i))   # another group
                pub.announce("ready", rep(f"n{i}", "ready", port=20100 + i))
                await asyncio.sleep(0.01)
            await until(lambda: f.feed.state.seq == pub.seq, what="the publisher's last seq")
            final = names_states(pub.replicas("web"))
            await f.close()
        finally:
            pub.close()
            ctx.term()
        assert f.changes[-1][1] == final and len(final) == 21
        assert all(state == "ready" for _, state in final)
        # seqs handed on never go backwards
        seqs = [s for s, _ in f.changes if s is not None]
        assert seqs == sorted(seqs)
    run(body())


def test_other_groups_updates_advance_the_global_seq_without_a_resync():
    from client.replicas import OTHER_GROUP
    a = Replica(name="a", group="web", host="local", address="127.0.0.1", port=1, state="ready")
    x = Replica(name="x", group="batch", host="local", address="127.0.0.1", port=2, state="ready")
    st = FeedState("web")
    st.apply_snapshot(Snapshot(epoch="e1", seq=5, groups={"web": (a,), "batch": ()}))
    # seq is one per daemon: batch's update (6) sits between two of web's (7 is web's)
    assert st.on_update(Update(epoch="e1", seq=6, group="batch", event="ready", replica="x", replicas=(x,))) == OTHER_GROUP
    assert st.seq == 6 and st.replicas == (a,)
    assert st.on_update(Update(epoch="e1", seq=7, group="web", event="removed", replica="a", replicas=())) == APPLIED
    assert st.replicas == () and st.resyncs[GAP] == 0
