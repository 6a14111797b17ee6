"""The API served by gunicorn (cms-api) over two test:/// hosts and the real qemu:///system.

Also schemathesis against /v1/openapi.json and the `cms` CLI (tests/integration/test_cli.py uses the
`live_api` fixture from here).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from cms.virt import Host
from tests.support import ROOT, blank_golden, free_port, write_node_xml
from cms.lab.realstack import drop_pool, wait_until

TOKEN = "real-token"
pytestmark = pytest.mark.real


def get(url: str, timeout: float = 60) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def served(tmp: Path, config: str):
    """cms-api (gunicorn) on this config until the block ends; yields its URL."""
    (tmp / "cms.toml").write_text(config)
    port = re.search(r'bind = "127\.0\.0\.1:(\d+)"', config).group(1)
    env = {**os.environ, "CMS_RUN_DIR": str(tmp / "run")}
    env.pop("CMS_CONFIG", None)
    log = open(tmp / "api.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cms.api.serve", "--config", str(tmp / "cms.toml")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return get(url + "/vm/types", timeout=2)
        except OSError:
            assert proc.poll() is None, (tmp / "api.log").read_text()
            return None

    try:
        wait_until(up, 60, what="cms-api to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    pool = f"cmstest-{uuid.uuid4().hex[:8]}"
    # small test hosts: 1 CPU, 1 GiB; with a 512 MiB reserve a 1024 MiB type fits only the real host
    t1 = write_node_xml(tmp / "n1.xml", cpus=1, memory_kib=1 << 20)
    t2 = write_node_xml(tmp / "n2.xml", cpus=1, memory_kib=1 << 20)
    (tmp / "pm_file").write_text(f"{t1}\n{t2}\nqemu:///system\n")
    golden = blank_golden()
    (tmp / "image_file").write_text(f"{golden}\n")
    (tmp / "types_file").write_text(json.dumps({"types": [
        {"tid": 1, "cpu": 1, "ram": 256, "disk": 1}, {"tid": 2, "cpu": 1, "ram": 1024, "disk": 1}]}))
    from cms.inventory import hosts_toml, parse_pm_file
    port = free_port()
    config = f"""
state_db = "{tmp}/state.db"
[libvirt]
domain_type = "auto"
pool = "{pool}"
pool_path = "/var/lib/cms/test/{pool}"
[image]
golden = "{golden}"
pool = "{pool}-images"
pool_path = "/var/lib/cms/test/{pool}-images"
[api]
bind = "127.0.0.1:{port}"
workers = 2
token = "{TOKEN}"
[placement]
algorithm = "first_fit"
cpu_overcommit = 16.0
ram_reserve_mib = 512
{hosts_toml(parse_pm_file(tmp / "pm_file"))}
"""
    with served(tmp, config) as url:
        yield {"url": url, "tmp": tmp, "pool": pool, "image_pool": f"{pool}-images"}
    h = Host("local", "qemu:///system")
    for d in h.stats.owned_domains():
        if d.meta.role == "vm" and pool in "".join(h.conn().lookupByName(d.name).XMLDesc(0).split()):
            h.domains.remove(d.name, pool)
    drop_pool(h, pool)
    drop_pool(h, f"{pool}-images")
    h.close()


def test_spec_calls_end_to_end_on_the_real_host(live_api):
    url = live_api["url"]
    assert get(url + "/vm/types")["types"][1] == {"tid": 2, "cpu": 1, "ram": 1024, "disk": 1}
    images = get(url + "/image/list")["images"]
    assert images == [{"id": 100, "name": "blank-64"}]
    assert get(url + "/pm/list") == {"pmids": [1, 2, 3]}
    name = f"real-{uuid.uuid4().hex[:6]}"
    vmid = get(f"{url}/vm/create?name={name}&instance_type=2")["vmid"]
    assert vmid > 0, (live_api["tmp"] / "api.log").read_text()
    assert get(f"{url}/vm/query?vmid={vmid}") == {"vmid": vmid, "name": name, "instance_type": 2, "pmid": 3}
    assert get(f"{url}/vm/create?name={name}&instance_type=2") == {"vmid": 0}
    h = Host("local", "qemu:///system")
    try:
        dom = h.conn().lookupByName(f"cms-vm-{vmid}")
        assert dom.isActive() == 1
        assert vmid in get(f"{url}/pm/listvms?pmid=3")["vmids"]
        q = get(f"{url}/pm/query?pmid=3")
        assert q["capacity"]["cpu"] >= 1 and q["vms"] >= 1
        assert f"cms-vm-{vmid}.qcow2" in h.storage.list_volumes(live_api["pool"])
        # the image was imported on the first create (no ./install here): the overlay is backed
        # by the copy in the image pool
        (copy,) = h.storage.list_volumes(live_api["image_pool"])
        vol_xml = h.conn().storagePoolLookupByName(live_api["pool"]).storageVolLookupByName(f"cms-vm-{vmid}.qcow2").XMLDesc(0)
        assert f"/var/lib/cms/test/{live_api['image_pool']}/{copy}" in vol_xml
        assert get(f"{url}/vm/destroy?vmid={vmid}") == {"status": 1}
        assert not h.exists(f"cms-vm-{vmid}")
        assert f"cms-vm-{vmid}.qcow2" not in h.storage.list_volumes(live_api["pool"])
        assert get(f"{url}/vm/query?vmid={vmid}") == {"vmid": 0}
        assert get(f"{url}/vm/destroy?vmid={vmid}") == {"status": 0}
        assert get(f"{url}/vm/query?vmid=nope") == {"vmid": 0}
    finally:
        h.close()


def test_default_sync_workers_close_each_connection(live_api):
    # api.worker_class = "sync" (the default): gunicorn must not have turned it into gthread
    # (it does when threads > 1), so every answer closes its connection and the next request
    # goes back through the shared accept queue to whichever worker is free.
    with urllib.request.urlopen(live_api["url"] + "/vm/types", timeout=10) as r:
        assert r.headers["Connection"] == "close"


def test_schemathesis_against_the_live_openapi(live_api):
    url = live_api["url"]
    report = live_api["tmp"] / "st.txt"
    # Read-only operations plus the mutating ones without a token (they must answer the
    # documented 401): fuzzing POST /v1/vms with a token would boot VMs on the real host.
    cmd = [str(Path(sys.executable).parent / "st"), "run", f"{url}/v1/openapi.json", "--url", url,
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
           "--max-examples", "25", "--workers", "1", "--exclude-path-regex", "^/vm/(create|destroy)$"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=live_api["tmp"])  # st keeps state in .schemathesis/ of its cwd
    report.write_text(r.stdout + r.stderr)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


@pytest.fixture(scope="module")
def test_hosts_api(tmp_path_factory):
    """cms-api on two libvirt test:/// hosts (one gunicorn worker, so one test driver state),
    where a created VM costs nothing."""
    tmp = tmp_path_factory.mktemp("testhosts")
    t1 = write_node_xml(tmp / "n1.xml", cpus=8, memory_kib=16 << 20)
    t2 = write_node_xml(tmp / "n2.xml", cpus=8, memory_kib=16 << 20)
    # a real (small) image: creates import it first, into test:/// pools that keep metadata only
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / "fuzz-image.qcow2"), "8M"], check=True, timeout=60)
    (tmp / "image_file").write_text(f"{tmp / 'fuzz-image.qcow2'}\n")
    (tmp / "types_file").write_text(json.dumps({"types": [{"tid": 1, "cpu": 1, "ram": 256, "disk": 1}]}))
    port = free_port()
    config = f"""
state_db = "{tmp}/state.db"
log_level = "warning"
[libvirt]
domain_type = "qemu"
[api]
bind = "127.0.0.1:{port}"
workers = 1
token = "{TOKEN}"
[[hosts]]
name = "t1"
uri = "{t1}"
[[hosts]]
name = "t2"
uri = "{t2}"
"""
    with served(tmp, config) as url:
        yield {"url": url, "tmp": tmp}


def test_schemathesis_with_a_token_on_test_hosts(test_hosts_api):
    """The whole OpenAPI document fuzzed with a valid token, at least 1,000 cases, a quarter of
    the calls with a body sending a hostile one instead (tests/integration/st_hooks.py): nested
    past the JSON decoder, over api.max_body_bytes, not UTF-8. No 5xx, only documented
    statuses and error shapes."""
    url, tmp = test_hosts_api["url"], test_hosts_api["tmp"]
    hostile_log = tmp / "hostile.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.integration.st_hooks",
           "CMS_ST_HOSTILE_LOG": str(hostile_log)}
    cmd = [str(Path(sys.executable).parent / "st"), "run", f"{url}/v1/openapi.json", "--url", url,
           "-H", f"Authorization: Bearer {TOKEN}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
           "--max-examples", "60", "--workers", "1", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp, env=env)
    (tmp / "st.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    generated = re.search(r"(\d+) generated", r.stdout)
    assert generated and int(generated.group(1)) >= 1000, r.stdout[-2000:]
    # the hostile bodies were sent, and each was refused by its body, not by a crash
    sent = [json.loads(line) for line in hostile_log.read_text().splitlines()]
    by_kind = {k: [c["status"] for c in sent if c["kind"] == k] for k in ("deep", "deep-object", "oversized", "not-utf8")}
    for kind, statuses in by_kind.items():
        assert len(statuses) >= 5, (kind, statuses)
        want = 413 if kind == "oversized" else 400
        # a few land on a wrong method or an unknown id, which is refused first
        assert statuses.count(want) >= len(statuses) * 0.8, (kind, statuses)
    # it did reach the mutating calls with the token: VMs were made (and perhaps removed)
    events = get(url + "/v1/events?limit=1000")["events"]
    assert any(e["kind"] == "vm_create" for e in events), [e["kind"] for e in events][:50]


def _raw(url: str, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes as they are; (status, content type, body) of the answer."""
    import socket
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctype = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("content-type:")), "")
    return int(lines[0].split()[1]), ctype, body


def test_every_error_of_the_server_is_json_by_url(test_hosts_api):
    """gunicorn's own refusals (a request line past 4094 bytes, headers too large, a malformed
    request) and the app's (unknown URL, wrong method, body too large or undecodable) are all
    JSON: a spec URL answers its failure value, other URLs outside /v1 answer 0, /v1 a message."""
    url = test_hosts_api["url"]
    long = "x" * 10_000
    cases = [
        (f"GET /vm/create?name={long}&instance_type=1", 414, {"vmid": 0}),
        (f"GET /vm/query?vmid=1&pad={long}", 414, {"vmid": 0}),
        (f"GET /vm/destroy?vmid=1&pad={long}", 414, {"status": 0}),
        (f"GET /vm/types?pad={long}", 414, {"types": []}),
        (f"GET /image/list?pad={long}", 414, {"images": []}),
        (f"GET /pm/list?pad={long}", 414, {"pmids": []}),
        (f"GET /pm/query?pmid=1&pad={long}", 414, {"pmid": 0}),
        (f"GET /pm/listvms?pmid=1&pad={long}", 414, {"vmids": 0}),
        (f"GET /v1/events?group={long}", 414, "message"),
        (f"GET /nowhere?{long}", 414, 0),
        ("GET /nowhere", 404, 0),
        ("GET /vm/unknown", 404, 0),
        ("POST /vm/create", 405, {"vmid": 0}),
        ("DELETE /pm/list", 405, {"pmids": []}),
        ("GET /v1/nothing", 404, "message"),
    ]
    for line, status, want in cases:
        got = _raw(url, f"{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert got[:2] == (status, "application/json"), (line[:60], got)
        body = json.loads(got[2])
        if want == "message":
            assert set(body) == {"title", "description"}, (line[:60], body)
        else:
            assert body == want, (line[:60], body)
    # headers past gunicorn's limits, and a request line that is not HTTP
    got = _raw(url, b"GET /v1/vms HTTP/1.1\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n")
    assert got[:2] == (431, "application/json") and set(json.loads(got[2])) == {"title", "description"}, got
    got = _raw(url, b"GET /vm/query?vmid=1 HTTP/1.1\r\nNot A Header\r\n\r\n")
    assert got[:2] == (400, "application/json") and json.loads(got[2]) == {"vmid": 0}, got
    got = _raw(url, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    assert got[:2] == (400, "application/json") and json.loads(got[2]) == 0, got
    # bodies: past api.max_body_bytes (said in the 413), nested past the decoder, not UTF-8
    auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    for body, status, needle in [(b"[" * 10_000, 400, "not valid JSON"), (b'{"name": "\xff"}', 400, "not valid JSON"),
                                 (b"x" * 70_000, 413, "at most 65536 bytes (api.max_body_bytes)")]:
        for path in ("/v1/vms", "/v1/groups/web/scale", "/v1/vms/1/resize", "/v1/vms/1/migrate"):
            req = f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n".encode() + body
            got = _raw(url, req)
            assert got[:2] == (status, "application/json"), (path, body[:20], got)
            assert needle in json.loads(got[2])["description"], (path, got)
    # the same cap holds for a chunked body, which declares no length
    chunk = b"x" * 70_000
    req = (f"POST /v1/vms HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n".encode()
           + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    got = _raw(url, req)
    assert got[:2] == (413, "application/json") and "api.max_body_bytes" in json.loads(got[2])["description"], got


def test_register_an_image_with_post(live_api, tmp_path):
    """POST /v1/images: checked, imported into every host's image pool, then listed; the same
    bytes again under another name copy nothing; bad files are a 400 that names them."""
    url = live_api["url"]
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def post(body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(url + "/v1/images", data=json.dumps(body).encode(), headers=auth, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    img = home / "Fedora-17-x86_64.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "32M"], check=True, timeout=60)
    img.chmod(0o600)
    status, got = post({"name": "Fedora-17-x86_64", "path": str(img)})
    assert status == 201, got
    pool = live_api["image_pool"]
    assert got["name"] == "Fedora-17-x86_64" and got["path"] == str(img) and got["imported"] is True
    assert got["format"] == "qcow2" and got["size"] == img.stat().st_size and len(got["sha256"]) == 64
    assert got["copy"] == f"/var/lib/cms/test/{pool}/cms-image-{got['sha256'][:32]}.qcow2"
    assert Path(got["copy"]).read_bytes() == img.read_bytes()
    h = Host("local", "qemu:///system")
    vols = h.storage.list_volumes(pool)
    listed = get(url + "/image/list")["images"]
    assert {"id": got["id"], "name": "Fedora-17-x86_64"} in listed and got["id"] > 100
    # the same bytes under another name: a new id, the same copy
    twin = home / "twin.qcow2"
    twin.write_bytes(img.read_bytes())
    status, again = post({"name": "twin", "path": str(twin)})
    assert status == 201 and again["copy"] == got["copy"] and again["id"] == got["id"] + 1
    events = [e for e in get(url + "/v1/events?limit=1000")["events"] if e["kind"] == "image_register"]
    # (pm1 and pm2 are test:/// hosts, whose volumes live in each worker's connection only)
    assert "pm3" not in events[-1]["data"]["uploaded"] and "pm3" in events[-2]["data"]["uploaded"]
    assert h.storage.list_volumes(pool) == vols
    h.close()
    # refused, with the reason
    text = home / "notes.qcow2"
    text.write_text("not a disk\n" * 100)
    for body, status_want, needle in [
            ({"name": "Fedora-17-x86_64", "path": str(img)}, 409, "registered already"),
            ({"name": "other", "path": str(img)}, 409, "registered already"),
            ({"name": "notes", "path": str(text)}, 400, f"{text}: not a disk image"),
            ({"name": "gone", "path": str(home / "gone.qcow2")}, 400, "no such file"),
            ({"name": "dir", "path": str(home)}, 400, "is a directory"),
            ({"name": "rel", "path": "img.qcow2"}, 400, "absolute path"),
            ({"name": "bad name!", "path": str(img)}, 400, "bad image name"),
            ({"path": str(img)}, 400, "bad image name")]:
        status, err = post(body)
        assert status == status_want and needle in err["description"], (body, status, err)
    # a VM from the registered image
    vmid = get(f"{url}/vm/create?name=from-post-{uuid.uuid4().hex[:4]}&instance_type=1&image_id={got['id']}")["vmid"]
    assert vmid > 0
    assert get(f"{url}/vm/destroy?vmid={vmid}") == {"status": 1}
