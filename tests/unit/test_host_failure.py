"""A host that stops answering, through the whole reconcile loop on libvirt's test driver: two
hosts, an injected clock, a host's listing made to fail. The lab tests
(tests/integration/test_host_failure_real.py) do the same with real QEMU and the load client."""

from __future__ import annotations

import pytest

from cms import errors
from cms.autoscaler.reconcile import Autoscaler
from cms.store import Store
from cms.virt import Fleet
from tests.support import make_config, write_node_xml
from tests.unit.test_autoscaler import FakeClock, FakeHealth, FakeMetrics, Recorder, run_until

G = "hf"
DOWN_S = 10.0


@pytest.fixture
def two(tmp_path, run_dir, state_db):
    hosts = [{"name": n, "uri": write_node_xml(tmp_path / f"{n}.xml")} for n in ("n1", "n2")]

    def build(**host_extra):
        cfg = make_config(hosts=[{**h, **host_extra.get(h["name"], {})} for h in hosts],
                          image={"golden": "/nonexistent/golden.qcow2"}, placement={"algorithm": "spread"},
                          groups={G: {"min": 2, "max": 3, "cooldown_s": 0, "warmup_s": 0,
                                      "threshold": {"high": 1.0, "low": 0.0}}},
                          state_db=state_db,
                          autoscaler={"tick_s": 0.05, "host_down_s": DOWN_S, "drain_s": 0.1,
                                      "shutdown_timeout_s": 0.1},
                          zmq={"publish": "tcp://127.0.0.1:*", "snapshot": "tcp://127.0.0.1:*"})
        fleet = Fleet(cfg)
        for h in fleet.hosts.values():
            h.conn()          # a test:///file URI starts fresh at each open: keep these for the test
        clock = FakeClock()
        s = Autoscaler(cfg, fleet=fleet, metrics=FakeMetrics(), health=FakeHealth(), publisher=Recorder(),
                       store=Store(cfg.state_db), clock=clock)
        made.append((s, fleet))
        return s, fleet, clock

    made: list = []
    yield build
    for s, fleet in made:
        s.close()
        fleet.close()


def cut(fleet, host: str, monkeypatch) -> None:
    """The host's listing fails, as a host whose link is down."""
    def silent(group=None):
        raise errors.HostUnreachable("no route to host", host)
    monkeypatch.setattr(fleet.host(host).stats, "owned_domains", silent)


def declare_down(s, fleet, clock, monkeypatch) -> None:
    """n2 stops answering: suspect at the next tick, down host_down_s later; its workers (the
    fence command, an evacuation) done."""
    cut(fleet, "n2", monkeypatch)
    clock.advance(1)
    s.tick()
    clock.advance(DOWN_S)
    s.tick()
    s.hosts.wait(20)


def ready_on(s) -> dict[str, str]:
    return {t.name: t.host for t in s.tracks.values() if t.state == "ready"}


def host_events(s) -> list[tuple[str, str]]:
    s.journal.flush()
    return [(e.kind, e.subject) for e in sorted(s.store.events(limit=1000), key=lambda e: e.id)
            if e.kind.startswith(("host_", "fence"))]


def test_a_lost_host_is_suspect_then_down_its_replica_replaced_and_fenced_when_it_answers(two, monkeypatch):
    s, fleet, clock = two()
    run_until(s, lambda: sorted(ready_on(s).values()) == ["n1", "n2"], what="one ready replica on each host")
    [lost] = [n for n, h in ready_on(s).items() if h == "n2"]

    cut(fleet, "n2", monkeypatch)
    clock.advance(1)
    s.tick()
    assert s.hosts.states()["n2"] == "suspect" and ready_on(s)[lost] == "n2"     # one miss replaces nothing
    assert s.status()["hosts"]["n2"]["state"] == "suspect" and not s.status()["hosts"]["n2"]["up"]
    assert ("failed", lost) not in s.publisher.events()

    clock.advance(DOWN_S)
    s.tick()
    assert s.hosts.states()["n2"] == "down"
    about = [u for u in s.publisher.updates if u.replica == lost]
    assert [u.event for u in about] == ["added", "ready", "failed", "removed"]
    assert [r.state for r in about[2].replicas if r.name == lost] == ["failed"]
    assert all("host n2 is down" in u.reason for u in about[2:])
    assert s.registry.get(lost).state == "lost"
    # replaced on the host that is up; nothing is placed on the down one
    run_until(s, lambda: len(ready_on(s)) == 2, what="a replacement ready")
    assert set(ready_on(s).values()) == {"n1"} and lost not in ready_on(s)

    monkeypatch.undo()                               # n2 answers again, its lost replica still defined there
    assert lost in {d.name for d in fleet.host("n2").stats.owned_domains()}
    clock.advance(1)
    s.tick()
    assert s.hosts.states()["n2"] == "fencing"
    run_until(s, lambda: s.hosts.states()["n2"] == "up", what="n2 fenced and up")
    assert fleet.host("n2").stats.owned_domains() == [] and s.registry.get(lost) is None
    assert host_events(s) == [("host_suspect", "n2"), ("host_down", "n2"), ("host_fencing", "n2"),
                              ("host_fenced", "n2"), ("host_up", "n2")]
    fenced = next(e for e in s.store.events(limit=100) if e.kind == "host_fenced")
    assert fenced.data["names"] == [lost] and lost in fenced.message
    # the client never sees the lost name again after its removal
    after = s.publisher.events().index(("removed", lost))
    assert all(u.replica != lost and lost not in {r.name for r in u.replicas} for u in s.publisher.updates[after + 1:])


def test_a_suspect_host_that_answers_again_is_up_and_nothing_was_touched(two, monkeypatch):
    s, fleet, clock = two()
    run_until(s, lambda: len(ready_on(s)) == 2, what="two ready")
    before = dict(ready_on(s))
    cut(fleet, "n2", monkeypatch)
    for _ in range(3):
        clock.advance(1)
        s.tick()
    monkeypatch.undo()
    clock.advance(1)
    s.tick()
    assert s.hosts.states()["n2"] == "up" and ready_on(s) == before
    assert host_events(s) == [("host_suspect", "n2"), ("host_up", "n2")]
    assert not any(e == "failed" for e, _ in s.publisher.events())


@pytest.mark.parametrize("command, ok, said", [("echo fenced", True, ("exit 0 in", ": fenced n2")),
                                               ("sh -c 'echo no power >&2; exit 3'", False, ("exit 3 in", ": no power"))])
def test_the_fence_command_runs_with_the_host_name_when_it_is_declared_down(two, monkeypatch, command, ok, said):
    s, fleet, clock = two(n2={"fence_command": command, "fence_timeout_s": 10})
    run_until(s, lambda: len(ready_on(s)) == 2, what="two ready")
    declare_down(s, fleet, clock, monkeypatch)
    assert s.hosts.fenced_by_command["n2"] is ok
    s.journal.flush()
    [e] = [e for e in s.store.events(limit=100) if e.kind == "fence_command"]
    assert e.subject == "n2" and e.data["ok"] is ok and all(w in e.message for w in said)
    assert e.message.startswith(f"host n2 {'fenced' if ok else 'NOT fenced'} by `{command} n2`")


def test_a_fence_command_past_its_timeout_is_killed_and_counts_as_failed(two, monkeypatch):
    s, fleet, clock = two(n2={"fence_command": "sh -c 'sleep 30'", "fence_timeout_s": 1})
    run_until(s, lambda: len(ready_on(s)) == 2, what="two ready")
    declare_down(s, fleet, clock, monkeypatch)
    assert s.hosts.fenced_by_command["n2"] is False
    s.journal.flush()
    [e] = [e for e in s.store.events(limit=100) if e.kind == "fence_command"]
    assert "still running after fence_timeout_s 1 s: killed" in e.message


# -- what the API and the CLI show (the API reads the daemon's host events) ----------------------

def test_the_api_shows_declared_host_states_and_places_nothing_on_a_host_that_is_not_up(tmp_path, run_dir, state_db):
    from cms import cli
    from tests.unit.test_api import AUTH, build
    client, deps = build(tmp_path, state_db)
    try:
        deps.store.add_event("host_suspect", "missed a tick", subject="pm1")
        deps.store.add_event("host_down", "silent for 10 s", subject="pm1")
        deps.store.add_event("host_up", "answers again", subject="pm2")
        hosts = {h["name"]: h for h in client.simulate_get("/v1/hosts").json["hosts"]}
        assert {n: (h["state"], h["up"]) for n, h in hosts.items()} == {
            "pm1": ("down", False), "pm2": ("up", True), "pm3": ("down", False)}   # pm3: never declared, no answer
        r = client.simulate_post("/v1/vms", json={"name": "a", "instance_type": 1}, headers=AUTH)
        assert r.status_code == 201 and r.json["host"] == "pm2"          # first fit, but pm1 is down
        _r, text = cli.run(cli._parser().parse_args(["pm", "list"]), FakeApi(client))
        lines = text.splitlines()
        assert lines[0].split()[:3] == ["PMID", "NAME", "STATE"]
        assert [ln.split()[2] for ln in lines[1:]] == ["DOWN", "up", "DOWN"]
    finally:
        deps.fleet.close()


def test_an_api_vm_is_ha_when_asked_and_lost_while_its_host_is_down(tmp_path, run_dir, state_db):
    from cms import cli
    from tests.unit.test_api import AUTH, build
    client, deps = build(tmp_path, state_db)
    try:
        ha = client.simulate_post("/v1/vms", json={"name": "keep", "instance_type": 1, "ha": True}, headers=AUTH).json
        plain = client.simulate_post("/v1/vms", json={"name": "plain", "instance_type": 1}, headers=AUTH).json
        assert (ha["ha"], ha["lost"], plain["ha"], plain["lost"]) == (True, False, False, False)
        bad = client.simulate_post("/v1/vms", json={"name": "x", "instance_type": 1, "ha": "yes"}, headers=AUTH)
        assert bad.status_code == 400 and '"ha": boolean (optional)' in bad.json["description"]
        from cms.api_tables import ApiTables
        marked = ApiTables(deps.store).mark_lost("pm1", 1000.0)
        assert sorted(r["name"] for r in marked) == ["keep", "plain"]
        assert ApiTables(deps.store).mark_lost("pm1", 2000.0) == []          # marked once
        vms = {v["name"]: v for v in client.simulate_get("/v1/vms").json["vms"]}
        assert vms["keep"]["lost"] and vms["plain"]["lost"]
        assert client.simulate_get("/vm/query", params={"vmid": ha["vmid"]}).json == {
            "vmid": ha["vmid"], "name": "keep", "instance_type": 1, "pmid": 1, "lost": True}
        _r, text = cli.run(cli._parser().parse_args(["vm", "list"]), FakeApi(client))
        assert [ln.split()[6:] for ln in text.splitlines()[1:]] == [["LOST", "ha"], ["LOST"]]
        ApiTables(deps.store).found(ha["vmid"], "pm2")
        assert client.simulate_get("/vm/query", params={"vmid": ha["vmid"]}).json == {
            "vmid": ha["vmid"], "name": "keep", "instance_type": 1, "pmid": 2}
    finally:
        deps.fleet.close()


class FakeApi:
    """cms's API client, answered in-process by the falcon test client."""

    def __init__(self, client) -> None:
        self.client = client

    def call(self, method, path, params=None, body=None):
        return self.client.simulate_request(method, path, params=params, json=body).json


# -- VMs made through the API on a host that goes down (cms.autoscaler.rescue) ----------------------

def api_vm(s, fleet, host: str, name: str, ha: bool) -> int:
    """A VM as /vm/create leaves one: its row in api_vms and its domain cms-vm-N on ``host``."""
    from cms.api_tables import ApiTables
    from cms.virt import OwnerMeta
    tables = ApiTables(s.store)
    tables.replace_inventory([(1, 1, 256, 1)], [(100, "img", "/srv/img.qcow2")], [("n1", ""), ("n2", "")])
    vmid = tables.reserve_vm(name, 1, 100, ha)
    fleet.build_on(host, f"cms-vm-{vmid}", vcpus=1, memory_mib=256,
                   meta=OwnerMeta(role="vm", vmid=vmid, instance_type=1, image="/srv/img.qcow2"))
    tables.activate_vm(vmid, f"cms-vm-{vmid}", host)
    return vmid


def down_and_back(s, fleet, clock, monkeypatch, while_down=lambda: None):
    declare_down(s, fleet, clock, monkeypatch)
    while_down()
    monkeypatch.undo()
    clock.advance(1)
    run_until(s, lambda: s.hosts.states()["n2"] == "up", what="n2 fenced and up")


def test_an_ha_vm_is_restarted_elsewhere_from_its_disk_once_its_host_is_fenced(two, monkeypatch):
    from cms.api_tables import ApiTables
    s, fleet, clock = two(n2={"fence_command": "true", "shared_storage": True},
                          n1={"shared_storage": True})
    vmid = api_vm(s, fleet, "n2", "keep", ha=True)
    plain = api_vm(s, fleet, "n2", "plain", ha=False)
    run_until(s, lambda: len(ready_on(s)) == 2, what="two ready")
    tables = ApiTables(s.store)

    def while_down():
        assert tables.vm(vmid)["host"] == "n1" and tables.vm(vmid)["lost"] is None      # evacuated
        assert tables.vm(plain)["host"] == "n2" and tables.vm(plain)["lost"] is not None  # not ha: lost
        [d] = [d for d in fleet.host("n1").stats.owned_domains() if d.name == f"cms-vm-{vmid}"]
        assert d.alive and d.meta.role == "vm" and d.meta.vmid == vmid
        disk = fleet.host("n1").guest(f"cms-vm-{vmid}").disk_paths()
        assert disk == [f"{s.cfg.libvirt.pool_path}/cms-vm-{vmid}.qcow2"]          # its own disk, no clone

    down_and_back(s, fleet, clock, monkeypatch, while_down)
    s.journal.flush()
    kinds = [(e.kind, e.subject) for e in s.store.events(limit=1000) if e.kind.startswith("vm_") or
             e.kind == "evacuated"]
    assert kinds == [("vm_lost", "keep"), ("vm_lost", "plain"), ("evacuated", "keep"), ("vm_back", "plain")]
    on_n2 = {d.name for d in fleet.host("n2").stats.owned_domains()}
    assert f"cms-vm-{vmid}" not in on_n2 and f"cms-vm-{plain}" in on_n2   # the stale definition is gone
    assert tables.vm(plain)["lost"] is None and tables.vm(plain)["host"] == "n2"
    fenced = next(e for e in s.store.events(limit=1000) if e.kind == "host_fenced")
    assert f"cms-vm-{vmid}" in fenced.data["names"]


def test_without_a_fence_command_an_ha_vm_stays_lost_and_comes_back_with_its_host(two, monkeypatch):
    from cms.api_tables import ApiTables
    s, fleet, clock = two(n1={"shared_storage": True}, n2={"shared_storage": True})
    vmid = api_vm(s, fleet, "n2", "keep", ha=True)
    run_until(s, lambda: len(ready_on(s)) == 2, what="two ready")
    tables = ApiTables(s.store)

    def while_down():
        assert tables.vm(vmid)["host"] == "n2" and tables.vm(vmid)["lost"] is not None

    fleet.host("n2").guest(f"cms-vm-{vmid}").destroy()          # the power cut left it shut off
    down_and_back(s, fleet, clock, monkeypatch, while_down)
    assert tables.vm(vmid)["lost"] is None and tables.vm(vmid)["host"] == "n2"
    assert fleet.host("n2").guest(f"cms-vm-{vmid}").state() == "running"          # back as it was
    s.journal.flush()
    [back] = [e for e in s.store.events(limit=1000) if e.kind == "vm_back"]
    assert "started again" in back.message
