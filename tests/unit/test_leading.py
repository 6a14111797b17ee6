"""Two autoscalers over one fleet (libvirt's test driver) and one fake etcd (tests.fake_etcd):
only the leader acts, the follower keeps a view and a silent feed, a takeover adopts instead
of spawning again, a leader that cannot renew is refused by the Scheduler, and every change
carries the term (cms.autoscaler.leading, cms.scheduler's guard)."""

from __future__ import annotations

import pytest

from cms.config import CoordinationConfig
from cms.coordination import Election
from cms.errors import NotLeader
from cms.leadership import FOLLOWER, LEADER, Leader
from cms.store import Store
from cms.virt import Fleet, OwnerMeta
from tests.fake_etcd import FakeClock, FakeCluster
from tests.support import free_port, write_node_xml
from tests.unit.test_autoscaler import G, Autoscaler, FakeHealth, FakeMetrics, Recorder, cfg_for, ready_names

TTL = 4


@pytest.fixture
def two(tmp_path, run_dir, state_db):
    uri = write_node_xml(tmp_path / "node.xml")
    cfg = cfg_for(tmp_path, uri, state_db=state_db)      # several controllers share one state database
    fleet = Fleet(cfg)
    fleet.host("n1").conn()      # a test:///file URI starts fresh at each open: keep this one
    etcd = FakeCluster(FakeClock())
    made = []

    def new(name: str) -> Autoscaler:
        e = Election(CoordinationConfig(url=["etcd3+http://e1:2379"], name=name, lease_ttl_s=TTL),
                     Leader(name, 0, f"tcp://{name}:1", f"tcp://{name}:2"), connect=etcd.connect, clock=etcd.clock,
                     sleep=etcd.clock.advance)
        s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                       store=Store(cfg.state_db), election=e)
        made.append(s)
        return s

    yield fleet, etcd, new
    for s in made:
        s.close()
    fleet.close()


def ticks(*scalers, n: int = 1) -> None:
    for _ in range(n):
        for s in scalers:
            s.tick()
        for s in scalers:
            s.wait_workers(5)


def test_only_the_leader_acts_the_follower_keeps_a_silent_view(two):
    fleet, etcd, new = two
    a, b = new("a"), new("b")
    ticks(a, b, n=6)                                      # b lists the hosts on its 1st and 6th ticks
    assert a.election.role == LEADER and b.election.role == FOLLOWER
    [d] = fleet.owned(G)                                  # the group's min, spawned once, by a
    assert d.meta.term == a.election.term > 0
    assert ready_names(a) == [d.name] and b.tracks == {}
    assert b.publisher.events() == [] and not b.publisher.leading
    assert b.publisher.answer_snapshot("").leader == "a"  # "not leader", naming a
    assert a.publisher.leading and a.publisher.term == a.election.term
    assert a.status()["controller"]["role"] == LEADER and a.status()["controller"]["feed_open"]
    st = b.status()["controller"]
    assert st["role"] == FOLLOWER and st["leader"] == "a" and not st["feed_open"]
    assert b.status()["hosts"]["n1"]["vms"] == 1           # its warm view of the fleet


def test_a_takeover_adopts_the_dead_leaders_replicas_and_opens_a_new_epoch(two):
    fleet, etcd, new = two
    a, b = new("a"), new("b")
    ticks(a, b, n=4)
    names = sorted(d.name for d in fleet.owned(G))
    first_term, first_epoch = a.election.term, a.publisher.epoch
    # a dies: it never ticks again and never releases; its lease runs out after TTL
    for _ in range(TTL + 2):
        etcd.clock.advance(1.0)
        ticks(b)
    assert b.election.role == LEADER and b.election.term > first_term
    ticks(b, n=3)
    assert ready_names(b) == names and sorted(d.name for d in fleet.owned(G)) == names   # adopted, not doubled
    assert b.publisher.leading and b.publisher.epoch != first_epoch and b.publisher.term == b.election.term
    assert ("added", names[0]) in b.publisher.events()
    assert b.leading.first_tick_at is not None and b.leading.first_tick_at >= b.leading.won_at


def test_a_leader_that_cannot_renew_is_refused_at_the_scheduler_and_steps_down(two):
    fleet, etcd, new = two
    a, b = new("a"), new("b")
    ticks(a, b, n=4)
    etcd.cut.add(b"a")                                    # a loses etcd, still reaches libvirt
    etcd.clock.advance(TTL / 2)
    with pytest.raises(NotLeader, match="lease not renewed"):
        a.scheduler.spawn(f"cms-{G}-x", 1, 128, OwnerMeta(group=G))
    ticks(a, b)
    assert a.election.role == FOLLOWER and a.tracks == {} and not a.publisher.leading
    assert len(fleet.owned(G)) == 1                       # nothing more was made
    etcd.clock.advance(TTL)
    ticks(a, b, n=3)
    assert b.election.role == LEADER and a.election.role == FOLLOWER
    etcd.cut.clear()                                      # healed: a rejoins as a follower
    ticks(a, b, n=2)
    assert a.election.role == FOLLOWER and a.status()["controller"]["leader"] == "b"
    assert len(fleet.owned(G)) == 1


def test_without_coordination_the_one_autoscaler_leads_with_term_zero(tmp_path, run_dir):
    cfg = cfg_for(tmp_path, write_node_xml(tmp_path / "node.xml"))
    fleet = Fleet(cfg)
    fleet.host("n1").conn()
    s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                   store=Store(cfg.state_db))
    try:
        ticks(s, n=4)
        [d] = fleet.owned(G)
        assert d.meta.term == 0 and s.publisher.leading and s.publisher.term == 0
        assert s.status()["controller"] == {"role": LEADER, "term": 0, "name": s.election.me.name,
                                            "leader": s.election.me.name, "coordination": False, "feed_open": True}
    finally:
        s.close()
        fleet.close()


def test_coordination_without_tooz_is_one_line_at_start(tmp_path, run_dir, monkeypatch, capsys):
    """tooz and etcd3gw are the extra "coordination": a daemon told to elect without them stops
    with one line that names the extra, before it touches a host."""
    import sys

    from cms.autoscaler import daemon
    monkeypatch.setitem(sys.modules, "tooz", None)      # import tooz -> ImportError
    cfg = tmp_path / "cms.toml"
    cfg.write_text(f'state_db = "{tmp_path}/state.db"\n[[hosts]]\nname = "n1"\nuri = "test:///default"\n'
                   f'[zmq]\npublish = "tcp://127.0.0.1:{free_port()}"\nsnapshot = "tcp://127.0.0.1:{free_port()}"\n'
                   '[coordination]\nurl = "etcd3+http://127.0.0.1:1"\n[autoscaler]\nmetrics_listen = ""\n')
    assert daemon.main(["--config", str(cfg), "--once"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cms-autoscaler: configuration error: [coordination] needs tooz and etcd3gw, which are not "
                   "installed (import of tooz halted; None in sys.modules): pip install 'cms[coordination]'"], err
