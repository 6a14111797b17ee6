"""The API in-process: falcon.testing.TestClient(create_app(deps)) over libvirt test:/// hosts."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import falcon.testing
import pytest
import sqlalchemy as sa

from cms.api.app import create_app
from cms.api.service import Deps
from cms.api_tables import ApiTables
from cms.db import schema
from cms.inventory import Image, VmType
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet, kernel_share_mib
from tests.support import make_config, write_node_xml

TYPES = [VmType(1, 1, 512, 1), VmType(2, 2, 1024, 2), VmType(3, 4, 2048, 3)]
IMAGES = [Image(100, "Ubuntu-12.04-amd64", "/srv/Ubuntu-12.04-amd64.qcow2"), Image(101, "blank", "/srv/blank.qcow2")]
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOWN_URI = "qemu+tcp://127.0.0.1:1/system"


def build(tmp_path, state_db, *, hosts=None, token=TOKEN, algorithm="first_fit", open_spec=True, overcommit=1.0,
          reserve=0):
    if hosts is None:
        hosts = [write_node_xml(tmp_path / "a.xml", cpus=4, memory_kib=4 * 1024 * 1024),
                 write_node_xml(tmp_path / "b.xml", cpus=2, memory_kib=2 * 1024 * 1024),
                 DOWN_URI]
    cfg = make_config(hosts=[{"name": f"pm{i}", "uri": u} for i, u in enumerate(hosts, 1)],
                      libvirt={"domain_type": "qemu"}, state_db=state_db,
                      api={"token": token, "open_spec_urls": open_spec},
                      placement={"algorithm": algorithm, "cpu_overcommit": overcommit, "ram_reserve_mib": reserve})
    store = Store(cfg.state_db)
    fleet = Fleet(cfg)
    pretend_imported(cfg, store, IMAGES)
    deps = Deps(cfg, store, fleet, Scheduler(cfg, fleet, store), types=TYPES, images=IMAGES)
    return falcon.testing.TestClient(create_app(deps)), deps


def pretend_imported(cfg, store, images):
    """Record these (made-up) image paths as imported, each its own copy: what ./install's
    import leaves behind, for tests whose test:/// hosts hold no bytes anyway."""
    from cms.images import Facts, Imported, ImageStore
    reg = ImageStore(cfg, store)
    for i in images:
        reg.record(Imported(i.path, f"{i.id:064x}", "qcow2", 1 << 20, i.path, ("pm1",), ()),
                   Facts(i.path, 1 << 20, "qcow2", 0, 0))


@pytest.fixture
def api(tmp_path, run_dir, state_db):
    client, deps = build(tmp_path, state_db)
    yield client, deps
    deps.fleet.close()


def j(r):
    return r.json


def test_spec_urls_end_to_end(api):
    c, deps = api
    assert j(c.simulate_get("/vm/types")) == {"types": [t.as_json() for t in TYPES]}
    assert j(c.simulate_get("/image/list")) == {"images": [{"id": 100, "name": "Ubuntu-12.04-amd64"},
                                                           {"id": 101, "name": "blank"}]}
    r = c.simulate_get("/vm/create", params={"name": "test_vm", "instance_type": "3"})
    assert r.status_code == 200
    vmid = r.json["vmid"]
    assert vmid > 0
    assert j(c.simulate_get("/vm/query", params={"vmid": vmid})) == {
        "vmid": vmid, "name": "test_vm", "instance_type": 3, "pmid": 1}
    # a real domain on the test host, with the owner metadata
    doms = deps.fleet.host("pm1").stats.owned_domains()
    assert [(d.name, d.vcpus, d.memory_mib, d.meta.role, d.meta.vmid, d.meta.instance_type, d.meta.image)
            for d in doms] == [(f"cms-vm-{vmid}", 4, 2048, "vm", vmid, 3, "/srv/Ubuntu-12.04-amd64.qcow2")]
    assert j(c.simulate_get("/pm/list")) == {"pmids": [1, 2, 3]}
    assert j(c.simulate_get("/pm/listvms", params={"pmid": 1})) == {"vmids": [vmid]}
    q = j(c.simulate_get("/pm/query", params={"pmid": 1}))
    assert q == {"pmid": 1, "capacity": {"cpu": 4, "ram": 4096, "disk": 100},
                 "free": {"cpu": 0, "ram": 2048 - kernel_share_mib(4096, 8), "disk": q["free"]["disk"]}, "vms": 1}
    assert j(c.simulate_get("/pm/query", params={"pmid": 3})) == {
        "pmid": 3, "capacity": {"cpu": 0, "ram": 0, "disk": 0}, "free": {"cpu": 0, "ram": 0, "disk": 0}, "vms": 0}
    # image_id picks the image
    v2 = j(c.simulate_get("/vm/create", params={"name": "second", "instance_type": "1", "image_id": "101"}))["vmid"]
    assert v2 > vmid
    d2 = [d for d in deps.fleet.owned() if d.meta.vmid == v2][0]
    assert d2.meta.image == "/srv/blank.qcow2" and d2.host == "pm2"    # pm1 has no vCPU left
    assert j(c.simulate_get("/vm/destroy", params={"vmid": vmid})) == {"status": 1}
    assert deps.fleet.host("pm1").stats.owned_domains() == []
    assert deps.fleet.host("pm1").storage.list_volumes("cms") == []
    assert j(c.simulate_get("/vm/query", params={"vmid": vmid})) == {"vmid": 0}
    assert j(c.simulate_get("/vm/destroy", params={"vmid": vmid})) == {"status": 0}
    ev = [e.kind for e in deps.store.events()]
    assert ev == ["vm_create", "vm_create", "vm_destroy"]


@pytest.mark.parametrize("url,params,want", [
    ("/vm/create", {"name": "x"}, {"vmid": 0}),
    ("/vm/create", {"name": "x", "instance_type": "abc"}, {"vmid": 0}),
    ("/vm/create", {"name": "x", "instance_type": "9"}, {"vmid": 0}),
    ("/vm/create", {"instance_type": "1"}, {"vmid": 0}),
    ("/vm/create", {"name": "bad name!", "instance_type": "1"}, {"vmid": 0}),
    ("/vm/create", {"name": "x", "instance_type": "1", "image_id": "7"}, {"vmid": 0}),
    ("/vm/create", {"name": "huge", "instance_type": "1", "image_id": "x"}, {"vmid": 0}),
    ("/vm/query", {}, {"vmid": 0}),
    ("/vm/query", {"vmid": "abc"}, {"vmid": 0}),
    ("/vm/query", {"vmid": "12345"}, {"vmid": 0}),
    ("/vm/destroy", {}, {"status": 0}),
    ("/vm/destroy", {"vmid": "-1"}, {"status": 0}),
    ("/vm/destroy", {"vmid": "999"}, {"status": 0}),
    ("/pm/query", {"pmid": "0"}, {"pmid": 0}),
    ("/pm/query", {"pmid": "x"}, {"pmid": 0}),
    ("/pm/listvms", {"pmid": "44"}, {"vmids": 0}),
])
def test_spec_failures_are_200_with_zero(api, url, params, want):
    c, deps = api
    r = c.simulate_get(url, params=params)
    assert r.status_code == 200 and r.json == want
    assert deps.fleet.owned() == []


def test_duplicate_name_and_no_room_leave_nothing_half_made(api):
    c, deps = api
    assert j(c.simulate_get("/vm/create", params={"name": "dup", "instance_type": "1"}))["vmid"] > 0
    assert j(c.simulate_get("/vm/create", params={"name": "dup", "instance_type": "1"})) == {"vmid": 0}
    # 4 + 2 CPUs, no overcommit: 1 used, 5 left; a type-3 (4 vCPU) fits on pm1 once, then not
    assert j(c.simulate_get("/vm/create", params={"name": "big1", "instance_type": "2"}))["vmid"] > 0
    before = {d.name for d in deps.fleet.owned()}
    assert j(c.simulate_get("/vm/create", params={"name": "big2", "instance_type": "3"})) == {"vmid": 0}
    assert {d.name for d in deps.fleet.owned()} == before
    vols = deps.fleet.host("pm1").storage.list_volumes("cms") + deps.fleet.host("pm2").storage.list_volumes("cms")
    assert sorted(vols) == sorted(n + ".qcow2" for n in before)
    names = [v["name"] for v in j(c.simulate_get("/v1/vms"))["vms"]]
    assert names == ["dup", "big1"]
    assert "vm_create_failed" in [e.kind for e in deps.store.events()]


def test_v1_crud_auth_and_errors(api):
    c, deps = api
    r = c.simulate_post("/v1/vms", json={"name": "a1", "instance_type": 1})
    assert r.status_code == 401 and set(r.json) == {"title", "description"}
    r = c.simulate_post("/v1/vms", json={"name": "a1", "instance_type": 1}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = c.simulate_post("/v1/vms", json={"name": "a1", "instance_type": 1}, headers=AUTH)
    assert r.status_code == 201, r.text
    vm = r.json
    assert vm["name"] == "a1" and vm["pmid"] == 1 and vm["state"] == "active"
    detail = c.simulate_get(f"/v1/vms/{vm['vmid']}").json
    assert {k: detail[k] for k in vm} == vm and detail["domain_state"] == "running"
    assert (detail["max_vcpus"], detail["max_memory_mib"]) == (2 * detail["type"]["cpu"], 2 * detail["type"]["ram"])
    assert c.simulate_post("/v1/vms", json={"name": "a1", "instance_type": 1}, headers=AUTH).status_code == 409
    assert c.simulate_post("/v1/vms", json={"name": "a2", "instance_type": 9}, headers=AUTH).status_code == 404
    assert c.simulate_post("/v1/vms", json={"name": "a2"}, headers=AUTH).status_code == 400
    assert c.simulate_post("/v1/vms", body="{nope", headers={**AUTH, "Content-Type": "application/json"}).status_code == 400
    assert c.simulate_post("/v1/vms", json=[1], headers=AUTH).status_code == 400
    assert c.simulate_post("/v1/vms", json={"name": "a2", "instance_type": 3, "image_id": 555}, headers=AUTH).status_code == 404
    r = c.simulate_get("/v1/vms/424242")
    assert r.status_code == 404 and r.json["title"] == "Not found" and "424242" in r.json["description"]
    r = c.simulate_get("/v1/nothing")
    assert r.status_code == 404 and set(r.json) == {"title", "description"}
    # resize in place, and refused when the host has no room
    r = c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={"vcpus": 2}, headers=AUTH)
    assert r.status_code == 200 and r.json["vcpus"] == 2, r.text
    r = c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={"vcpus": 64}, headers=AUTH)
    assert r.status_code == 400 and "at most 2 vCPUs and 1024 MiB" in r.json["description"], r.text
    r = c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={"memory_mib": 1025}, headers=AUTH)
    assert r.status_code == 400
    # within its maximum but beyond the host: pm1 (4 CPUs, no overcommit) holds a1's 2 and filler's 2
    filler = c.simulate_post("/v1/vms", json={"name": "filler", "instance_type": 2}, headers=AUTH).json
    assert filler["pmid"] == 1
    r = c.simulate_post(f"/v1/vms/{filler['vmid']}/resize", json={"vcpus": 4}, headers=AUTH)
    assert r.status_code == 409 and "no room" in r.json["description"]
    assert c.simulate_delete(f"/v1/vms/{filler['vmid']}", headers=AUTH).status_code == 200
    assert c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={}, headers=AUTH).status_code == 400
    # the test driver cannot migrate: a clean 409 (permanent for this host, not a 5xx to
    # retry), and the VM stays where it was
    r = c.simulate_post(f"/v1/vms/{vm['vmid']}/migrate", json={}, headers=AUTH)
    assert r.status_code == 409 and r.json["title"] == "Not supported by the host", r.text
    assert c.simulate_post(f"/v1/vms/{vm['vmid']}/migrate", json={"pmid": 99}, headers=AUTH).status_code == 404
    assert c.simulate_post(f"/v1/vms/{vm['vmid']}/migrate", json={"pmid": 3}, headers=AUTH).status_code == 409
    assert c.simulate_get(f"/v1/vms/{vm['vmid']}").json["host"] == "pm1"
    # hosts, types, images
    hosts = c.simulate_get("/v1/hosts").json["hosts"]
    assert [(h["pmid"], h["up"]) for h in hosts] == [(1, True), (2, True), (3, False)]
    assert c.simulate_get("/v1/hosts/1").json["vmids"] == [vm["vmid"]]
    assert c.simulate_get("/v1/hosts/9").status_code == 404
    assert c.simulate_get("/v1/types").json["types"][0] == {"tid": 1, "cpu": 1, "ram": 512, "disk": 1}
    assert c.simulate_get("/v1/images").json["images"][0]["path"] == "/srv/Ubuntu-12.04-amd64.qcow2"
    # delete
    assert c.simulate_delete(f"/v1/vms/{vm['vmid']}").status_code == 401
    assert c.simulate_delete(f"/v1/vms/{vm['vmid']}", headers=AUTH).json == {"vmid": vm["vmid"], "status": 1}
    assert c.simulate_delete(f"/v1/vms/{vm['vmid']}", headers=AUTH).status_code == 404
    assert deps.fleet.owned() == []


def test_groups_scale_events_openapi_dashboard(api):
    c, deps = api
    g = c.simulate_get("/v1/groups").json["groups"]
    assert [x["name"] for x in g] == ["web"] and g[0]["replicas"] == [] and g[0]["policy"]["name"] == "threshold"
    assert c.simulate_get("/v1/groups/nope").status_code == 404
    assert c.simulate_post("/v1/groups/web/scale", json={"replicas": 2}).status_code == 401
    r = c.simulate_post("/v1/groups/web/scale", json={"replicas": 2}, headers=AUTH)
    assert r.status_code == 202 and r.json["replicas"] == 2 and r.json["pending"] is True
    assert deps.store.scale_requests()["web"][0] == 2
    assert c.simulate_get("/v1/groups/web").json["desired_override"]["replicas"] == 2
    assert c.simulate_post("/v1/groups/web/scale", json={"replicas": 99}, headers=AUTH).status_code == 400
    assert c.simulate_post("/v1/groups/web/scale", json={"replicas": "2"}, headers=AUTH).status_code == 400
    assert c.simulate_post("/v1/groups/nope/scale", json={"replicas": 1}, headers=AUTH).status_code == 404
    ev = c.simulate_get("/v1/events").json["events"]
    assert ev[-1]["kind"] == "scale_request" and ev[-1]["data"] == {"replicas": 2}
    assert c.simulate_get("/v1/events", params={"since_id": ev[-1]["id"]}).json == {"events": []}
    assert c.simulate_get("/v1/events", params={"limit": "0"}).status_code == 400
    for i in range(30):
        deps.store.add_event("x", f"filler {i}")
    newest = c.simulate_get("/v1/events", params={"order": "desc", "limit": "25"}).json["events"]
    ids = [e["id"] for e in newest]
    assert len(ids) == 25 and ids == sorted(ids, reverse=True) and newest[0]["message"] == "filler 29"
    assert c.simulate_get("/v1/events", params={"order": "sideways"}).status_code == 400
    spec = c.simulate_get("/v1/openapi.json").json
    assert spec["openapi"].startswith("3.") and "/v1/vms/{vmid}/migrate" in spec["paths"]
    page = c.simulate_get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/" in page.text and "http" not in page.text   # the console's files are served here, no CDN


def test_empty_token_refuses_mutations_and_closed_spec_urls(tmp_path, run_dir, new_state_db):
    c, deps = build(tmp_path, new_state_db(), token="")
    r = c.simulate_post("/v1/vms", json={"name": "a", "instance_type": 1}, headers=AUTH)
    assert r.status_code == 403 and "api.token" in r.json["description"]
    assert c.simulate_get("/vm/types").status_code == 200
    c2, _ = build(tmp_path / "b", new_state_db(), token=TOKEN, open_spec=False) \
        if (tmp_path / "b").mkdir() is None else None
    assert c2.simulate_get("/vm/types").status_code == 401
    assert c2.simulate_get("/vm/types", headers=AUTH).json["types"][0]["tid"] == 1


def test_round_robin_cursor_shared_through_the_store(tmp_path, run_dir, state_db):
    c, deps = build(tmp_path, state_db, algorithm="round_robin")
    pm = [j(c.simulate_get("/vm/query", params={"vmid": j(c.simulate_get(
        "/vm/create", params={"name": f"r{i}", "instance_type": "1"}))["vmid"]}))["pmid"] for i in range(4)]
    assert pm == [1, 2, 1, 2]   # pm3 is down and skipped
    # a second app on the same store (another gunicorn worker) continues the same cursor
    c2, _ = build(tmp_path, state_db, algorithm="round_robin")
    v = j(c2.simulate_get("/vm/create", params={"name": "r4", "instance_type": "1"}))["vmid"]
    assert v > 0


def test_50_parallel_creates_on_nearly_full_hosts(tmp_path, run_dir, state_db):
    # 3 + 2 CPUs, no overcommit, 1 vCPU each: exactly 5 of the 50 can be made
    hosts = [write_node_xml(tmp_path / "a.xml", cpus=3, memory_kib=16 << 20),
             write_node_xml(tmp_path / "b.xml", cpus=2, memory_kib=16 << 20)]
    c, deps = build(tmp_path, state_db, hosts=hosts, algorithm="spread")

    def create(i):
        return c.simulate_get("/vm/create", params={"name": f"p{i}", "instance_type": "1"}).json["vmid"]

    with cf.ThreadPoolExecutor(50) as ex:
        got = list(ex.map(create, range(50)))
    made = sorted(v for v in got if v)
    assert len(made) == 5 and got.count(0) == 45
    owned = deps.fleet.owned()
    assert sorted(d.meta.vmid for d in owned) == made
    per_host = {h: sum(d.vcpus for d in owned if d.host == h) for h in ("pm1", "pm2")}
    assert per_host == {"pm1": 3, "pm2": 2}
    rows = c.simulate_get("/v1/vms").json["vms"]
    assert sorted(r["vmid"] for r in rows) == made
    assert {r["domain"]: r["host"] for r in rows} == {d.name: d.host for d in owned}
    assert json.dumps(c.simulate_get("/pm/list").json) == '{"pmids": [1, 2]}'


def _make_half_made(c, deps, name):
    """A VM as a worker killed mid-create leaves it: domain and volume made, row 'creating'."""
    vmid = j(c.simulate_get("/vm/create", params={"name": name, "instance_type": "1"}))["vmid"]
    assert vmid > 0
    vms = schema.api_vms
    with deps.store.write() as db:
        db.execute(vms.update().where(vms.c.vmid == vmid).values(state="creating", host="",
                                                                  created=vms.c.created - 100000))
    return vmid


def test_a_half_made_create_is_reaped_when_a_worker_starts(tmp_path, run_dir, state_db):
    hosts = [write_node_xml(tmp_path / "a.xml", cpus=4, memory_kib=4 << 20),
             write_node_xml(tmp_path / "b.xml", cpus=2, memory_kib=2 << 20)]
    c, deps = build(tmp_path, state_db, hosts=hosts)
    try:
        vmid = _make_half_made(c, deps, "ghost")
        assert j(c.simulate_get("/vm/create", params={"name": "ghost", "instance_type": "1"})) == {"vmid": 0}
        assert any(d.name == f"cms-vm-{vmid}" for d in deps.fleet.owned())
        c2 = falcon.testing.TestClient(create_app(deps))      # a new worker on the same state
        assert not any(d.name == f"cms-vm-{vmid}" for d in deps.fleet.owned())
        vols = deps.fleet.host("pm1").storage.list_volumes("cms") + deps.fleet.host("pm2").storage.list_volumes("cms")
        assert f"cms-vm-{vmid}.qcow2" not in vols
        assert [e.data["vmid"] for e in deps.store.events(kinds=["vm_create_reaped"])] == [vmid]
        assert j(c2.simulate_get("/vm/create", params={"name": "ghost", "instance_type": "1"}))["vmid"] > vmid
    finally:
        deps.fleet.close()


def test_a_half_made_create_stays_while_a_host_is_down(api):
    c, deps = api                                           # pm3 is unreachable
    vmid = _make_half_made(c, deps, "ghost")
    falcon.testing.TestClient(create_app(deps))
    held = [r["vmid"] for r in ApiTables(deps.store).stale_creates(older_than_s=0)]
    assert held == [vmid]                     # the name stays held, 'creating': its domain could be on pm3
    assert deps.store.events(kinds=["vm_create_reaped"]) == []


def test_memory_is_counted_as_the_guests_hold_it_not_at_the_maximum(tmp_path, run_dir, state_db):
    """/pm/query's free RAM and the host's "given to VMs" count a VM's current memory (the
    balloon's size), not the maximum it is defined with (twice its type), and follow a resize.
    The host gives it its type plus its guest kernel's share (so the guest's MemTotal is the
    type); everything else reads the type's terms."""
    c, deps = build(tmp_path, state_db)
    share = kernel_share_mib(1024, 2)           # a type-1 VM: 1 vCPU, 512 MiB; twice that at most
    assert 40 <= share <= 60
    try:
        vm = c.simulate_post("/v1/vms", json={"name": "m1", "instance_type": 1}, headers=AUTH).json
        got = c.simulate_get(f"/v1/vms/{vm['vmid']}").json
        assert (got["memory_mib"], got["max_memory_mib"], got["kernel_mib"]) == (512, 1024, share)
        assert j(c.simulate_get("/vm/query", params={"vmid": vm["vmid"]}))["instance_type"] == 1
        g = deps.fleet.guest("pm1", f"cms-vm-{vm['vmid']}")
        assert g.limits() == (2, 1024 + share)     # libvirt's own figures hold the share
        assert f"<currentMemory unit='KiB'>{(512 + share) * 1024}</currentMemory>" in g.xml()

        def counted():
            free = j(c.simulate_get("/pm/query", params={"pmid": 1}))["free"]["ram"]
            return free, c.simulate_get("/v1/hosts/1").json["memory_mib"]["given"]

        assert counted() == (4096 - 512 - share, 512 + share)
        r = c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={"memory_mib": 768}, headers=AUTH)
        assert r.status_code == 200 and r.json["memory_mib"] == 768, r.text
        assert counted() == (4096 - 768 - share, 768 + share)
        assert f"<currentMemory unit='KiB'>{(768 + share) * 1024}</currentMemory>" in g.xml()
        [d] = deps.fleet.host("pm1").stats.owned_domains()
        # the new target, recorded with the owner, and the share it was made with, read back exactly
        assert (d.memory_mib, d.meta.memory_mib, d.meta.kernel_mib) == (768, 768, share)
        r = c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={"memory_mib": 1024}, headers=AUTH)
        assert r.status_code == 200 and r.json["memory_mib"] == 1024, r.text    # the whole maximum
        r = c.simulate_post(f"/v1/vms/{vm['vmid']}/resize", json={"memory_mib": 1088}, headers=AUTH)
        assert r.status_code != 200 and "1024 MiB" in r.text, r.text           # beyond it, in the type's terms
    finally:
        deps.fleet.close()


def test_a_booting_vm_is_charged_its_target_until_its_guest_reports(tmp_path, run_dir, state_db):
    """libvirt says a booting VM holds its maximum (its balloon is still empty); placement counts
    the size cms set the balloon to until the guest's driver reports, then libvirt's figure."""
    from cms.virt import Listing, OwnedDomain, OwnerMeta
    _c, deps = build(tmp_path, state_db)
    try:
        now = time.time()

        def listed(stats, age):
            d = OwnedDomain("pm1", "cms-vm-9", "u9", "running", 1, 1024,
                            OwnerMeta(role="vm", vmid=9, created=now - age, memory_mib=512), stats=stats)
            return Listing({"pm1": [d]}, {}, time.monotonic())

        used = lambda stats, age: deps.scheduler.host_state("pm1", listed(stats, age))[0].used_memory_mib
        assert used({"balloon.current": 1024 * 1024, "balloon.last-update": 0}, 3.0) == 512
        assert used({"balloon.current": 1024 * 1024, "balloon.last-update": int(now)}, 3.0) == 1024
        assert used({}, 600.0) == 1024        # never reported: an image without the driver keeps it all
    finally:
        deps.fleet.close()


def _worker_on_its_own_machine(tmp_path, url, i, barrier, q):
    """One API worker as on a machine of its own: its own spawn-lock directory (so no file lock
    is shared) and its own libvirt test host, on the shared PostgreSQL."""
    import os
    os.environ["CMS_RUN_DIR"] = str(tmp_path / f"run{i}")
    machine = tmp_path / f"m{i}"
    machine.mkdir()
    c, deps = build(machine, url, hosts=[write_node_xml(machine / "node.xml", cpus=4, memory_kib=4 << 20)])
    barrier.wait(60)
    r = c.simulate_post("/v1/vms", json={"name": f"w{i}", "instance_type": 1}, headers=AUTH)
    q.put((r.status_code, r.json.get("vmid")))
    deps.fleet.close()


def test_eight_workers_on_eight_machines_hand_out_eight_vmids(tmp_path, postgres):
    import multiprocessing as mp
    url = postgres.new_database()
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_worker_on_its_own_machine, args=(tmp_path, url, i, barrier, q)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    got = sorted(q.get(timeout=5) for _ in range(8))
    assert [status for status, _ in got] == [201] * 8
    vmids = [v for _, v in got]
    assert len(set(vmids)) == 8 and all(v > 0 for v in vmids)
    vms = schema.api_vms
    rows = Store(url).all(sa.select(vms.c.vmid, vms.c.name, vms.c.state, vms.c.domain))
    assert sorted(r["vmid"] for r in rows) == vmids                       # no other row: none half made
    assert {(r["state"], r["domain"] == f"cms-vm-{r['vmid']}") for r in rows} == {("active", True)}
    postgres.drop_database(url)
