"""A ready replica announced at a new address (a live migration) in the load client, no network.

What the client must do when the autoscaler announces "moved" (cms.messages): send new
requests to the new address at once, let requests in flight on the old connections finish
there, close those connections afterwards, and fail a request lost with the old host over
to the new address, even when the group has only this one replica.
"""

from __future__ import annotations

from types import SimpleNamespace

from client.backends import Backends
from cms.messages import EVENTS, Replica, Update, decode_update, encode_update


class FakeConn:
    def __init__(self, req=None):
        self.req = req
        self.closing = False
        self.closed = False

    def close(self):
        self.closed = True


def R(address, port, state="ready"):
    return Replica("r1", "web", "hv1", address, port, state, 1.0)


def test_a_ready_replica_at_a_new_address_moves_and_keeps_its_record():
    bs = Backends([b"/work?x"], "rr")
    [(b, change)] = bs.apply([R("169.254.90.11", 20000)], 0.0, 0.0)
    assert change == "ready"
    busy, idle = FakeConn(req=object()), FakeConn()
    b.pool.conns |= {busy, idle}
    b.pool.idle.append(idle)
    b.in_flight = 1
    b.tally.attempt()

    changes = bs.apply([R("169.254.90.12", 20003)], 1.0, 1.0)
    assert changes == [(b, "moved")]
    assert bs.all["r1"] is b and b.ready and b.state == "ready" and bs.ready == [b]
    assert b.endpoint == "169.254.90.12:20003"
    assert (b.pool.address, b.pool.port) == ("169.254.90.12", 20003)
    assert b"Host: 169.254.90.12:20003" in b.pool.requests[0]
    # the idle old connection is closed now; the busy one finishes its request, then closes
    assert idle.closed and not busy.closed and busy.closing
    assert busy in b.pool.conns and b.pool.idle == []
    assert b.in_flight == 1 and b.tally.summary()["sent"] == 1
    # a retry of a request lost with the old host goes to this replica, at its new address
    assert bs.pick(2.0, exclude=b) is b


def test_the_same_address_again_changes_nothing_and_a_not_ready_one_starts_afresh():
    bs = Backends([b"/work?x"], "rr")
    bs.apply([R("169.254.90.11", 20000)], 0.0, 0.0)
    assert bs.apply([R("169.254.90.11", 20000)], 1.0, 1.0) == []
    bs.apply([R("169.254.90.11", 20000, "draining")], 2.0, 2.0)
    old = bs.all["r1"]
    [(b, change)] = bs.apply([R("169.254.90.12", 20000, "starting")], 3.0, 3.0)
    assert b is not old and change == "state" and b.endpoint == "169.254.90.12:20000"


def test_moved_is_an_event_of_the_schema():
    assert "moved" in EVENTS
    u = Update("e", 3, "web", "moved", "r1", (R("169.254.90.12", 20003),), "live-migrated from hv1 to hv2")
    back = decode_update(encode_update(u))
    assert back.event == "moved" and back.replicas[0].address == "169.254.90.12"
    assert SimpleNamespace(**back.replicas[0].__dict__).state == "ready"
