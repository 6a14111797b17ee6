"""A hypervisor host dies (issue 20), on a 3-host lab with real QEMU and the real load client.

One lab (cms.lab.hosts: three hypervisors in their own namespaces, reached over qemu+tcp at
169.254.96.11-13, storage shared) for the module. Each test runs its own cms-autoscaler
(cms.lab.stack) on it; the replicas one test leaves running, the next one adopts, so the
module boots few guests. Between tests every host is revived and fenced (up).

Group ``hf`` keeps 3 replicas spread over the hosts (its policy never acts: the count is
what the tests move); group ``side`` has 1 and is scaled out during an outage.

1. kill: a host with a replica of hf (and none of side) loses power under load. Its
   replica is announced failed within host_down_s + 2 ticks (+ the first listing's
   deadline), 3 are ready again on the live hosts, side scales out meanwhile, the client
   sends nothing to the lost one after the announcement and accounts for every request.
   When the host is revived, the lost domain is destroyed before the host is up.
2. warm: the same with a paused warm pool of 1: the replacement is resumed, not booted, and
   the client sends to it within host_down_s + 1 s of the kill.
3. cut: a partition, the QEMU left running. When the link returns, the stale replica is
   destroyed within a tick, nothing of it runs anywhere, and the announced set never holds
   its name again.
4. API VMs (made through the API, in-process on the daemon's state database): with the
   lab's fence command, an ha VM on a killed host is restarted on a live host from its own
   disk after the fence; without one, it is lost, then back (started again) on its revived
   host.

What the module adds to the suite: one lab of 3 hosts; 4 boots at the start, then one
replacement boot (kill), one warm boot (warm), one replacement boot (cut), and for the API
VMs two creates, one evacuation and one restart.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from cms.lab import outage
from cms.lab.hosts import running
from cms.lab.realstack import wait_until
from cms.lab.stack import Stack

pytestmark = pytest.mark.real

NAME, SUBNET = "cmshf", 96
G, SIDE = "hf", "side"
DOWN_S, TICK_S, TIMEOUT_S = 4.0, 0.5, 1.0
INERT = {"high": 1.0, "low": 0.0, "window_s": 3600, "window_in_s": 3600}


@pytest.fixture(scope="module")
def lab():
    with running(3, name=NAME, subnet=SUBNET) as (lab, hosts):
        yield lab, hosts


@pytest.fixture
def stack(lab, tmp_path):
    """A daemon on the lab (made by the test with ``make``); afterwards every host is revived and
    fenced, and the replicas are left running for the next test to adopt."""
    made: list[Stack] = []

    def make(warm: int = 0, fence: bool = False) -> Stack:
        gc = {"min": 3, "max": 3 + warm, "memory_mib": 384, "cooldown_s": 0, "warmup_s": 0, "threshold": INERT,
              "warm_pool": {"size": warm, "state": "paused"}}
        s = Stack(*lab, tmp_path, group=G, group_cfg=gc, cpus={h.name: 2 for h in lab[1]},
                  balancer={"enabled": False}, placement={"algorithm": "spread"},
                  autoscaler={"tick_s": TICK_S, "host_down_s": DOWN_S, "health_failures": 3},
                  more_groups={SIDE: {"min": 1, "max": 2, "memory_mib": 384, "cooldown_s": 0, "warmup_s": 0,
                                      "threshold": INERT}},
                  host_settings={"timeout_s": TIMEOUT_S}, fence=fence)
        made.append(s)
        s.start()
        return s

    yield make
    for s in made:
        try:
            for i in range(1, len(lab[1]) + 1):
                outage.revive(lab[0], i)
            wait_until(lambda: set(s.scaler.hosts.states().values()) == {"up"}, 60, 0.5, "every host up again")
        finally:
            s.close(keep=True)


def serving(s: Stack, group: str = G) -> dict[str, str]:
    """Ready replica -> its host."""
    return {t.name: t.host for t in s.scaler.registry.snapshot() if t.group == group and str(t.state) == "ready"}


def settle(s: Stack, warm: int = 0) -> None:
    def done() -> bool:
        states = [st for n, (st, _h) in s.states().items()]
        return states.count("ready") == 3 and states.count("parked") == warm and len(states) == 3 + warm \
            and len(serving(s, SIDE)) >= 1
    wait_until(done, 300, 0.5, f"3 ready replicas of {G}" + (f" and {warm} parked" if warm else ""))


def victim(s: Stack, spare_side: bool = False) -> tuple[int, str, list[str]]:
    """A host with a ready replica of hf and no parked one (``spare_side``: nor a replica of
    side): (its number, its name, the hf replicas on it)."""
    side_hosts = set(serving(s, SIDE).values()) if spare_side else set()
    parked = {h for st, h in s.states().values() if st != "ready"}
    for host in sorted(set(serving(s).values()) - side_hosts - parked):
        return int(host[2:]), host, sorted(n for n, h in serving(s).items() if h == host)
    raise AssertionError(f"no host for the test: hf {serving(s)}, side {serving(s, SIDE)}, states {s.states()}")


def records(s: Stack, name: str) -> list[dict]:
    path = s.dir / f"{name}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() else []


def client_event(s: Stack, load: str, event: str, replica: str) -> dict | None:
    return next((r for r in records(s, load) if r.get("event") == event and r.get("replica") == replica), None)


def completed_for(s: Stack, load: str) -> int:
    return sum(r["completed"] for r in records(s, load) if r.get("type") == "tick")


def never_back(s: Stack, load: str, lost: list[str]) -> None:
    """After its failure, no lost name is announced again nor seen ready by the client."""
    recs = records(s, load)
    for name in lost:
        i = next(k for k, r in enumerate(recs) if r.get("event") == "replica_failed" and r.get("replica") == name)
        for r in recs[i + 1:]:
            assert not (r.get("replica") == name and r.get("event") in ("replica_starting", "replica_ready")), r
            assert r.get("type") != "tick" or r["replicas"].get(name, {}).get("state") != "ready", r


def test_kill_a_host_under_load(stack, lab):
    s = stack()
    settle(s)
    i, host, lost = victim(s, spare_side=True)
    load = s.loadgen("kill", "--low-rate", "6", "--cost", "2000", "--duration", "90", "--timeout", "5")
    wait_until(lambda: completed_for(s, "kill") >= 10, 60, 0.5, "the load client served")
    killed = time.time()
    outage.kill(lab[0], i)
    bound = DOWN_S + 2 * TICK_S + TIMEOUT_S
    for name in lost:
        seen = wait_until(lambda: client_event(s, "kill", "replica_failed", name), bound + 5, 0.1,
                          f"{name} announced failed")
        assert seen["ts"] - killed <= bound, (seen, killed)
        assert "host " + host + " is down" in seen["reason"]
    down = s.wait_event("host_down", 5, subject=host)
    assert down.ts - killed <= bound
    # the other group scales out while the host is down, on the live hosts
    s.scaler.store.request_scale(SIDE, 2)
    wait_until(lambda: len(serving(s)) == 3 and host not in serving(s).values() and len(serving(s, SIDE)) == 2,
               240, 0.5, "3 ready on the live hosts and side at 2")
    assert host not in serving(s, SIDE).values() and s.scaler.hosts.states()[host] == "down"
    s.stop_loadgen(load)
    summary, recs = s.loadgen_result("kill", load)
    assert summary["accounted"] and summary["outstanding"] == 0
    for name in lost:
        failed_at = client_event(s, "kill", "replica_failed", name)["ts"]
        last = summary["replicas"][name]["last_sent_at"]
        assert last is not None and last <= failed_at, (name, last, failed_at)
    never_back(s, "kill", lost)
    # back: the lost domains are destroyed before the host is up
    outage.revive(lab[0], i)
    up = s.wait_event("host_up", 60, subject=host, after_id=down.id)
    fenced = s.events("host_fenced")[0]
    assert fenced.id < up.id and sorted(fenced.data["names"]) == lost
    assert not {d.name for d in s.scaler.fleet.owned(G)} & set(lost)


def test_a_warm_pool_on_a_live_host_replaces_a_killed_replica_at_once(stack, lab):
    s = stack(warm=1)
    settle(s, warm=1)
    i, host, lost = victim(s)
    [parked] = [n for n, (st, _h) in s.states().items() if st == "parked"]
    load = s.loadgen("warm", "--low-rate", "6", "--cost", "2000", "--duration", "60", "--timeout", "5")
    wait_until(lambda: completed_for(s, "warm") >= 10, 60, 0.5, "the load client served")
    killed = time.time()
    outage.kill(lab[0], i)
    used = wait_until(lambda: client_event(s, "warm", "replica_ready", parked), 60, 0.1,
                      f"the warm replica {parked} announced ready")
    wait_until(lambda: any(r["replicas"].get(parked, {}).get("completed") for r in records(s, "warm")
                           if r.get("type") == "tick"),
               30, 0.2, f"the client served by {parked}")
    s.stop_loadgen(load)
    summary, _recs = s.loadgen_result("warm", load)
    first = summary["replicas"][parked]["first_sent_at"]
    assert first is not None and summary["replicas"][parked]["completed"] > 0
    assert first - killed <= DOWN_S + 1.0, (first - killed, used)
    assert summary["accounted"]
    assert s.events("warm_used")[0].subject == parked
    never_back(s, "warm", lost)


def test_a_partitioned_host_comes_back_and_its_stale_replica_is_destroyed_within_a_tick(stack, lab):
    s = stack()
    settle(s)
    i, host, lost = victim(s)
    lost_here = sorted(n for g in (G, SIDE) for n, h in serving(s, g).items() if h == host)
    load = s.loadgen("cut", "--low-rate", "6", "--cost", "2000", "--duration", "120", "--timeout", "5")
    wait_until(lambda: completed_for(s, "cut") >= 10, 60, 0.5, "the load client served")
    qemus = outage.host_pids(lab[0], i)
    outage.cut(lab[0], i)
    down = s.wait_event("host_down", 30, subject=host)
    wait_until(lambda: len(serving(s)) == 3 and host not in serving(s).values(), 240, 0.5,
               "3 ready on the live hosts")
    assert all(outage.is_running(p) for p in qemus), "a partition leaves the QEMUs running"
    outage.revive(lab[0], i)
    fencing = s.wait_event("host_fencing", 60, subject=host, after_id=down.id)
    fenced = s.wait_event("host_fenced", 30, subject=host, after_id=down.id)
    assert sorted(fenced.data["names"]) == lost_here       # side's replica there was lost too
    # the fence starts the tick the host answers: nothing but the destroys themselves in between
    assert fenced.ts - fencing.ts - fenced.data["fence_s"] <= 2 * TICK_S, (fenced, fencing)
    libvirtd = outage.libvirtd_pid(lab[0], i)
    assert [p for p in qemus if p != libvirtd and outage.is_running(p)] == []   # the stale QEMU is gone
    s.wait_event("host_up", 30, subject=host, after_id=down.id)
    running_now = [d.name for d in s.scaler.fleet.owned() if d.alive]
    assert len(running_now) == len(set(running_now)) and not set(running_now) & set(lost_here)
    assert len([n for n in running_now if n.startswith(f"cms-{G}-")]) == 3
    s.stop_loadgen(load)
    summary, _recs = s.loadgen_result("cut", load)
    assert summary["accounted"]
    never_back(s, "cut", lost)


@pytest.fixture
def api(tmp_path, run_dir):
    """The API in-process on a stack's configuration and state database (``attach(stack)``)."""
    made = []

    def attach(s: Stack):
        import falcon.testing

        from cms.api.app import create_app
        from cms.api.service import Deps
        from cms.inventory import Image, VmType
        from cms.scheduler import Scheduler
        from cms.store import Store
        from cms.virt import Fleet
        from tests.unit.test_api import TOKEN, pretend_imported
        cfg = dataclasses.replace(s.cfg, api=dataclasses.replace(s.cfg.api, token=TOKEN))
        golden = cfg.image.golden
        store = Store(cfg.state_db)
        fleet = Fleet(cfg)
        pretend_imported(cfg, store, [Image(100, "golden", golden)])
        deps = Deps(cfg, store, fleet, Scheduler(cfg, fleet, store), types=[VmType(1, 1, 384, 1)],
                    images=[Image(100, "golden", golden)])
        made.append(fleet)
        return falcon.testing.TestClient(create_app(deps))

    yield attach
    for f in made:
        f.close()


def vm_on(client, name: str, pmid: int, ha: bool) -> dict:
    from tests.unit.test_api import AUTH
    r = client.simulate_post("/v1/vms", json={"name": name, "instance_type": 1, "image_id": 100, "pmid": pmid,
                                              "ha": ha}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json


def vm(client, vmid: int) -> dict:
    return next(v for v in client.simulate_get("/v1/vms").json["vms"] if v["vmid"] == vmid)


def test_an_ha_vm_on_a_killed_host_is_restarted_elsewhere_after_the_fence(stack, lab, api):
    s = stack(fence=True)
    client = api(s)
    settle(s)
    made = vm_on(client, "survivor", 2, ha=True)
    assert (made["host"], made["ha"], made["lost"]) == ("hv2", True, False)
    domain = made["domain"]
    killed = s.scaler.store.events(limit=1, newest_first=True)[0].id
    outage.kill(lab[0], 2)
    command = s.wait_event("fence_command", 60, subject="hv2", after_id=killed)
    assert command.data["ok"], command.message
    moved = s.wait_event("evacuated", 120, subject="survivor", after_id=killed)
    now = vm(client, made["vmid"])
    assert now["host"] == moved.data["host"] != "hv2" and not now["lost"]
    detail = client.simulate_get(f"/v1/vms/{made['vmid']}").json
    assert detail["domain_state"] == "running" and detail["host"] == now["host"]
    there = {d.name: d for d in s.scaler.fleet.host(now["host"]).stats.owned_domains()}
    disk = s.scaler.fleet.host(now["host"]).guest(domain).disk_paths()
    assert there[domain].alive and disk == [f"{s.cfg.libvirt.pool_path}/{domain}.qcow2"]   # its own disk
    # the host returns: its stale definition is undefined, the disk (in use elsewhere) kept
    outage.revive(lab[0], 2)
    s.wait_event("host_up", 90, subject="hv2", after_id=killed)
    assert domain not in {d.name for d in s.scaler.fleet.host("hv2").stats.owned_domains()}
    assert s.scaler.fleet.host(now["host"]).guest(domain).state() == "running"
    assert client.simulate_delete(f"/v1/vms/{made['vmid']}", headers=_auth()).status_code == 200


def test_without_a_fence_command_an_api_vm_is_lost_then_back_with_its_host(stack, lab, api):
    s = stack()
    client = api(s)
    settle(s)
    made = vm_on(client, "patient", 3, ha=True)
    killed = s.scaler.store.events(limit=1, newest_first=True)[0].id
    outage.kill(lab[0], 3)
    s.wait_event("vm_lost", 60, subject="patient", after_id=killed)
    assert vm(client, made["vmid"])["lost"] and vm(client, made["vmid"])["host"] == "hv3"
    assert client.simulate_get("/vm/query", params={"vmid": made["vmid"]}).json["lost"] is True
    hosts = {h["name"]: h["state"] for h in client.simulate_get("/v1/hosts").json["hosts"]}
    assert hosts["hv3"] == "down"
    assert s.events("evacuated") == []                       # never restarted on a guess
    outage.revive(lab[0], 3)
    back = s.wait_event("vm_back", 90, subject="patient", after_id=killed)
    assert "started again" in back.message
    now = vm(client, made["vmid"])
    assert now["host"] == "hv3" and not now["lost"]
    assert s.scaler.fleet.host("hv3").guest(made["domain"]).state() == "running"
    assert client.simulate_delete(f"/v1/vms/{made['vmid']}", headers=_auth()).status_code == 200


def _auth() -> dict:
    from tests.unit.test_api import AUTH
    return AUTH
