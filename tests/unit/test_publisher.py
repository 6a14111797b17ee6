"""The one Clone-pattern server (cms.autoscaler.publisher): a late joiner gets the snapshot,
then every newer update in order; subscriptions are counted; the test hooks (a message
dropped on purpose, a new epoch, a snapshot left unanswered) do what the doubles need."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from cms.autoscaler.publisher import NullPublisher, Publisher
from cms.messages import SNAPSHOT_REQUEST, Replica, decode_snapshot, decode_update, topic
from tests.support import make_config


def rep(name, state="ready", group="web"):
    return Replica(name=name, group=group, host="local", address="127.0.0.1", port=20000, state=state,
                   created=float(name.rsplit("-", 1)[-1]))


def zcfg(**kw):
    return make_config(zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*", **kw}).zmq


@pytest.fixture
def pub():
    with Publisher(zcfg()) as p:
        yield p


@pytest.fixture
def ctx():
    c = zmq.Context()
    # sockets a test leaves to the garbage collector must not hold term() up with unsent messages
    c.setsockopt(zmq.LINGER, 0)
    yield c
    c.destroy(0)


def test_late_joiner_gets_snapshot_then_every_update_in_order(pub, ctx):
    stop = threading.Event()
    try:
        for i in range(20):                       # history before the subscriber exists
            pub.announce("ready", rep(f"cms-web-{i}"))

        def churn():                              # and changes while it joins
            i = 100
            while not stop.is_set() and i < 400:
                pub.announce("added", rep(f"cms-web-{i}", "starting"))
                pub.announce("ready", rep(f"cms-web-{i}"))
                pub.announce("removed", rep(f"cms-web-{i}"))
                i += 1
                time.sleep(0.001)

        t = threading.Thread(target=churn)
        t.start()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, topic("web"))
        sub.connect(pub.publish_endpoint)
        # the churn is publishing: a first queued update proves the subscription is live
        assert sub.poll(5000), "subscription never delivered"
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(pub.snapshot_endpoint)
        dealer.send_multipart([SNAPSHOT_REQUEST, b"web"])
        assert dealer.poll(5000), "no snapshot answer"
        snap = decode_snapshot(dealer.recv())
        assert snap.epoch == pub.epoch and snap.seq >= 20
        state = {r.name: r for r in snap.groups["web"]}
        assert all(f"cms-web-{i}" in state for i in range(20))
        seq = snap.seq
        t.join(10)
        stop.set()
        final = pub.seq
        while seq < final:
            assert sub.poll(5000), f"stalled at seq {seq} of {final}"
            u = decode_update(sub.recv_multipart())
            if u.seq <= seq:
                continue                          # older than the snapshot: already in it
            assert u.seq == seq + 1, f"gap: {seq} -> {u.seq}"
            seq = u.seq
            if u.event == "removed":
                state.pop(u.replica, None)
            else:
                state[u.replica] = next(r for r in u.replicas if r.name == u.replica)
            assert set(state) == {r.name for r in u.replicas}
        assert seq == final == 20 + 300 * 3
        assert sorted(state) == sorted(r.name for r in pub.replicas("web"))
    finally:
        stop.set()


def test_req_client_and_group_prefix(pub, ctx):
    pub.announce("ready", rep("cms-web-1"))
    pub.announce("ready", rep("cms-api-2", group="api"))
    req = ctx.socket(zmq.REQ)
    req.connect(pub.snapshot_endpoint)
    req.send(SNAPSHOT_REQUEST)
    assert req.poll(5000)
    snap = decode_snapshot(req.recv())
    assert set(snap.groups) == {"web", "api"} and snap.seq == 2
    req.send_multipart([SNAPSHOT_REQUEST, b"api"])
    assert req.poll(5000)
    assert set(decode_snapshot(req.recv()).groups) == {"api"}


def test_curve(ctx):
    pk, sk = zmq.curve_keypair()
    cpk, csk = zmq.curve_keypair()
    with Publisher(zcfg(curve_public_key=pk.decode(), curve_secret_key=sk.decode())) as pub:
        pub.announce("ready", rep("cms-web-1"))
        d = ctx.socket(zmq.DEALER)
        d.curve_serverkey, d.curve_publickey, d.curve_secretkey = pk, cpk, csk
        d.connect(pub.snapshot_endpoint)
        d.send(SNAPSHOT_REQUEST)
        assert d.poll(5000)
        assert decode_snapshot(d.recv()).seq == 1
        plain = ctx.socket(zmq.DEALER)
        plain.connect(pub.snapshot_endpoint)
        plain.send(SNAPSHOT_REQUEST)
        assert not plain.poll(500), "a client without the server key must not be answered"


def test_null_publisher_keeps_state():
    p = NullPublisher()
    p.announce("added", rep("cms-web-1", "starting"))
    u = p.announce("ready", rep("cms-web-1"))
    assert u.seq == 2 and [r.state for r in u.replicas] == ["ready"]
    assert p.announce("removed", rep("cms-web-1")).replicas == ()


def test_subscribers_are_counted_and_waited_for(pub, ctx):
    assert pub.subscribers == 0
    assert not pub.wait_subscribed(topic("web"), timeout=0.2)
    subs = []
    for prefix in (b"replicas.", b"replicas.web"):
        s = ctx.socket(zmq.SUB)
        s.connect(pub.publish_endpoint)
        s.subscribe(prefix)
        subs.append(s)
    assert pub.wait_subscribed(topic("web"), timeout=5.0, count=2)
    assert not pub.wait_subscribed(topic("api"), timeout=0.2, count=2)   # only b"replicas." covers api
    assert pub.subscribers == 2
    subs.pop().close(0)                            # a subscriber that goes away is no longer counted
    deadline = time.monotonic() + 5
    while pub.subscribers != 1:
        assert time.monotonic() < deadline, pub.subscribers
        time.sleep(0.01)


def test_a_message_dropped_on_purpose_advances_the_seq_only(pub, ctx):
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(topic("web"))
    sub.connect(pub.publish_endpoint)
    assert pub.wait_subscribed(topic("web"))
    pub.announce("ready", rep("cms-web-1"))
    lost = pub.announce("ready", rep("cms-web-2"), publish=False)
    pub.announce("draining", rep("cms-web-1", "draining"))
    seqs = []
    while len(seqs) < 2:
        assert sub.poll(5000)
        seqs.append(decode_update(sub.recv_multipart()).seq)
    assert lost.seq == 2 and seqs == [1, 3] and pub.seq == 3
    assert [r.name for r in pub.replicas("web")] == ["cms-web-1", "cms-web-2"]   # the state has it


def test_new_epoch_and_a_snapshot_left_unanswered():
    """Through the one snapshot client (client.replicas.fetch_snapshot)."""
    from client.replicas import fetch_snapshot

    class Deaf(Publisher):
        ignore = 1

        def answer_snapshot(self, prefix):
            if self.ignore:
                self.ignore -= 1
                return None
            return super().answer_snapshot(prefix)

    with Deaf(zcfg(), epoch="e1") as pub:
        pub.announce("ready", rep("cms-web-1"))
        pub.announce("ready", rep("cms-api-2", group="api"))
        assert fetch_snapshot(pub.snapshot_endpoint, "web", timeout=0.3) is None
        snap = fetch_snapshot(pub.snapshot_endpoint, "web", timeout=5.0)
        assert (snap.epoch, snap.seq, set(snap.groups)) == ("e1", 2, {"web"})
        assert pub.snapshot_requests == 2
        assert pub.new_epoch() == pub.epoch != "e1"
        snap = fetch_snapshot(pub.snapshot_endpoint, timeout=5.0)
        assert snap.seq == 0 and set(snap.groups) == {"web", "api"}     # same sets, a new sequence
        assert pub.announce("removed", rep("cms-web-1")).seq == 1
