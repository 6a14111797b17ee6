"""The lease and term rules (cms.leadership) and the Election over a fake etcd (cms.coordination)."""

from __future__ import annotations

import pytest

from cms import coordination, leadership
from cms.config import CoordinationConfig
from cms.errors import NotLeader
from cms.leadership import DEPOSED, FOLLOWER, INHERITED, LEADER, MINE, Leader, Lease
from tests.fake_etcd import FakeClock, FakeCluster
from tests.support import make_config

TTL = 4


# -- the pure rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("sent_ago, may", [(0.0, True), (1.9, True), (2.0, False), (3.5, False), (10.0, False)])
def test_a_leader_acts_only_within_half_its_ttl_of_the_last_renewal_it_sent(sent_ago, may):
    lease = Lease(TTL)
    lease.won(17, sent_at=100.0)
    assert lease.may_act(100.0 + sent_ago) is may
    assert lease.must_step_down(100.0 + sent_ago) is (not may)
    assert lease.role == LEADER


def test_a_renewal_moves_the_lease_on_from_when_it_was_sent_and_never_back():
    lease = Lease(TTL)
    lease.won(17, sent_at=100.0)
    lease.renewed(sent_at=101.5)
    assert lease.may_act(103.4) and not lease.may_act(103.5)
    lease.renewed(sent_at=100.5)          # an older renewal answered late: no step back
    assert lease.renewed_at == 101.5
    assert lease.left(102.5) == pytest.approx(1.0)


def test_a_follower_may_never_act_and_a_lost_lease_is_a_follower():
    lease = Lease(TTL)
    assert not lease.may_act(0.0) and lease.role == FOLLOWER and lease.left(0.0) == 0
    lease.renewed(5.0)                    # nothing to renew
    assert not lease.may_act(5.0)
    lease.won(3, 10.0)
    lease.lost()
    assert not lease.may_act(10.0) and lease.role == FOLLOWER and not lease.must_step_down(10.0)
    with pytest.raises(ValueError):
        lease.won(0, 1.0)


@pytest.mark.parametrize("made, mine, verdict", [
    (40, 40, MINE),
    (12, 40, INHERITED),       # a deposed or earlier leader's: adopt, or remove as surplus
    (0, 40, INHERITED),        # a single controller's (term 0)
    (41, 40, DEPOSED),         # someone led after us: stop, ask etcd
    (41, 0, INHERITED),        # a follower leads nothing
    (0, 0, INHERITED),
])
def test_judge_what_was_made_under_a_term(made, mine, verdict):
    assert leadership.judge(made, mine) == verdict


def test_the_takeover_target_is_the_ttl_and_two_ticks():
    assert leadership.takeover_deadline(5, 1.0) == 7.0


def test_the_leader_record_round_trips_and_junk_is_no_record():
    rec = Leader("c1", 42, "tcp://a:1", "tcp://a:2", "http://a:8080")
    assert Leader.from_json(rec.to_json()) == rec
    for junk in (b"", b"[]", b'{"name": "x"}', b'{"name": "x", "term": "many"}', b"\xff"):
        assert Leader.from_json(junk) is None


# -- the Election over a fake etcd ---------------------------------------------------------------

def elect(cluster: FakeCluster, name: str, urls=("etcd3+http://e1:2379",)) -> coordination.Election:
    me = Leader(name, 0, f"tcp://{name}:5556", f"tcp://{name}:5557", f"http://{name}:8080")
    e = coordination.Election(CoordinationConfig(url=list(urls), name=name, lease_ttl_s=TTL), me,
                              connect=cluster.connect, clock=cluster.clock, sleep=cluster.clock.advance)
    e.start()
    return e


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(FakeClock())


def test_one_wins_the_other_follows_and_knows_the_leader(cluster):
    a, b = elect(cluster, "a"), elect(cluster, "b")
    assert a.step() == LEADER and b.step() == FOLLOWER
    assert a.term == cluster.holder_term(coordination.LOCK_KEY) > 0
    assert b.leader == Leader("a", a.term, "tcp://a:5556", "tcp://a:5557", "http://a:8080")
    assert a.may_act() and not b.may_act()
    a.check("spawn")
    with pytest.raises(NotLeader, match="b: spawn: not the leader"):
        b.check("spawn")
    for _ in range(10):                  # renewing every tick keeps it, for as long as it ticks
        cluster.clock.advance(1.0)
        assert a.step() == LEADER and b.step() == FOLLOWER
    assert a.may_act() and b.status()["leader"] == "a"


def test_a_dead_leader_is_replaced_after_its_ttl_with_a_higher_term(cluster):
    a, b = elect(cluster, "a"), elect(cluster, "b")
    a.step()
    b.step()
    first = a.term
    # a dies: it never steps again. b tries every tick and wins once the lease has run out
    steps = 0
    while b.step() != LEADER:
        cluster.clock.advance(1.0)
        steps += 1
        assert steps <= TTL, "b should lead once a's lease (TTL) has run out"
    assert steps == TTL
    assert b.term > first and b.leader.name == "b"


def test_a_leader_cut_off_stops_acting_at_half_the_ttl_and_the_other_takes_over_later(cluster):
    a, b = elect(cluster, "a"), elect(cluster, "b")
    a.step()
    b.step()
    renewed = cluster.clock()
    cluster.cut.add(b"a")
    cluster.clock.advance(1.0)
    assert a.may_act()                                   # 1 s without a renewal: still within TTL/2
    calls = cluster.calls
    # the tick's renewal tries the member again and again (etcd may be electing its raft
    # leader) until half the TTL from the last renewal, then steps down in the same step
    assert a.step() == FOLLOWER and not a.may_act()
    assert cluster.clock() - renewed == pytest.approx(TTL / 2)
    assert cluster.calls - calls > 5
    with pytest.raises(NotLeader, match="not the leader"):
        a.check("define")
    assert b.step() == FOLLOWER                          # the lock is still a's in etcd until TTL
    cluster.clock.advance(2.0)
    assert b.step() == LEADER and b.term > 0
    cluster.cut.clear()                                  # healed: a rejoins as a follower of b
    cluster.clock.advance(1.0)
    assert a.step() == FOLLOWER and a.leader.name == "b" and not a.may_act()


def test_a_leader_that_finds_the_lock_gone_steps_down_at_once(cluster):
    a = elect(cluster, "a")
    a.step()
    cluster.kv.pop(coordination.LOCK_KEY)                # e.g. an operator deleted it
    assert a.step() == FOLLOWER and not a.may_act()
    assert a.step() == LEADER                            # and may win it again, with a new term


def test_stopping_hands_over_at_once_not_after_the_lease(cluster):
    a, b = elect(cluster, "a"), elect(cluster, "b")
    a.step()
    b.step()
    a.stop()
    assert b.step() == LEADER


def test_a_member_that_does_not_answer_is_left_for_the_next_and_leadership_holds(cluster):
    urls = ("etcd3+http://e1:2379", "etcd3+http://e2:2379", "etcd3+http://e3:2379")
    a, b = elect(cluster, "a", urls), elect(cluster, "b", urls)
    a.step()
    b.step()
    term = a.term
    cluster.down.add("e1")
    for _ in range(5):
        cluster.clock.advance(1.0)
        assert a.step() == LEADER and b.step() == FOLLOWER
    assert a.term == term and a.may_act() and a.status()["lease_left_s"] > 0


def test_a_renewal_that_fails_is_tried_again_and_the_lease_holds_if_etcd_answers_within_half_the_ttl(cluster):
    # etcd's raft leader died: the members that are left answer nothing until they have
    # elected another (1-2 s). One try per tick could pass half the TTL; the renewal keeps
    # trying, and the first one etcd confirms counts from when it was sent.
    urls = ("etcd3+http://e1:2379", "etcd3+http://e2:2379", "etcd3+http://e3:2379")
    a, b = elect(cluster, "a", urls), elect(cluster, "b", urls)
    a.step()
    b.step()
    term, renewed = a.term, cluster.clock()
    cluster.down.update({"e1", "e2", "e3"})
    back_at = renewed + TTL / 2 - 0.35

    def sleep(s: float) -> None:                        # etcd has a raft leader again at back_at
        cluster.clock.advance(s)
        if cluster.clock() >= back_at:
            cluster.down.difference_update({"e2", "e3"})   # e1 was the raft leader: it stays dead
    a.sleep = sleep
    cluster.clock.advance(1.0)
    assert a.step() == LEADER and a.term == term and a.may_act()
    assert back_at <= cluster.clock() < renewed + TTL / 2
    assert a.lease.renewed_at >= back_at                 # the confirmed renewal, not the first try
    for _ in range(4):
        cluster.clock.advance(1.0)
        assert a.step() == LEADER and b.step() == FOLLOWER and a.term == term


def test_without_quorum_nobody_leads_and_the_leader_stops(cluster):
    a, b = elect(cluster, "a"), elect(cluster, "b")
    a.step()
    b.step()
    cluster.down.add("e1")                               # the only member: no quorum anywhere
    for _ in range(6):
        cluster.clock.advance(1.0)
        a.step()
        b.step()
        assert not b.may_act()
    assert a.role == FOLLOWER and not a.may_act()


def test_a_win_read_back_too_late_is_given_up(cluster):
    a = elect(cluster, "a")
    real_read = a._read

    def slow_read():
        cluster.clock.advance(TTL / 2)                   # the read came back at half the TTL
        return real_read()
    a._read = slow_read
    assert a.step() == FOLLOWER and coordination.LOCK_KEY not in cluster.kv


def test_a_record_of_another_term_is_not_the_leader(cluster):
    a, b = elect(cluster, "a"), elect(cluster, "b")
    a.step()
    cluster.put(coordination.RECORD_KEY, Leader("ghost", 3).to_json().encode())
    b.step()
    assert b.leader is None                              # the lock's term is not 3
    cluster.clock.advance(1.0)
    a.step()                                             # the leader sees it and writes its own again
    b.step()
    assert b.leader.name == "a"


def test_no_etcd_at_start_is_a_follower_that_keeps_trying(cluster):
    cluster.down.add("e1")
    a = elect(cluster, "a")
    assert a.step() == FOLLOWER and not a.may_act()
    cluster.down.clear()
    assert a.step() == LEADER


def test_without_coordination_the_one_controller_always_leads():
    e = coordination.election(make_config(), Leader("solo"))
    assert isinstance(e, coordination.SoleLeader)
    assert e.step() == LEADER and e.may_act() and e.term == 0
    e.check("spawn")
    assert e.status() == {"role": LEADER, "term": 0, "name": "solo", "leader": "solo", "coordination": False}
    cfg = make_config(coordination={"url": "etcd3+http://127.0.0.1:2379"})
    assert isinstance(coordination.election(cfg, Leader("c1")), coordination.Election)


def test_a_tick_as_long_as_half_the_ttl_still_renews_and_keeps_leading(cluster):
    # TTL 2 s with a 1 s tick (the bench's shortest lease): each tick comes just as half the
    # TTL since the last renewal runs out; the renewal is still sent (it counts from then,
    # and etcd confirms it only while the lock is ours), and the leader keeps its term.
    a, b = elect(cluster, "a"), elect(cluster, "b")
    a.step()
    b.step()
    term = a.term
    for _ in range(6):
        cluster.clock.advance(TTL / 2)
        assert a.step() == LEADER and a.term == term and a.may_act()
        assert b.step() == FOLLOWER
