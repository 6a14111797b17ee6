"""`cms doctor` without a daemon: libvirt's test driver for hosts, stand-in files, device
nodes and sockets of the test's own. The real libvirtd is in tests/integration/test_doctor_real.py."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from cms import cli
from cms.doctor import FAIL, OK, WARN, run
from cms.doctor import hosts as dhosts
from cms.doctor import machine
from cms.virt.host import Host
from tests.support import free_port, make_config

QEMU_UID, KVM_GID, QEMU_GID = 64055, 108, 64055


@pytest.mark.parametrize("mode, owner, group, uid, gids, can", [
    (0o600, 0, 0, QEMU_UID, [KVM_GID, QEMU_GID], False),        # no udev: root:root 0600
    (0o660, 0, KVM_GID, QEMU_UID, [KVM_GID, QEMU_GID], True),   # what udev leaves
    (0o640, 0, KVM_GID, QEMU_UID, [KVM_GID], False),            # read only is not enough
    (0o666, 0, 0, QEMU_UID, [KVM_GID], True),                   # everyone
    (0o600, QEMU_UID, 0, QEMU_UID, [KVM_GID], True),            # the qemu user owns it
    (0o606, 0, KVM_GID, QEMU_UID, [KVM_GID], False),            # group bits decide for a member
    (0o600, 0, 0, 0, [0], True),                                # root
])
def test_qemu_can_open(mode, owner, group, uid, gids, can):
    assert machine.qemu_can_open(mode, owner, group, uid, gids) is can


def _node(path: Path, mode: int, gid: int = 0) -> Path:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(10, 232))
    os.chown(path, 0, gid)
    os.chmod(path, mode)
    return path


def test_kvm_device_root_only_fails_naming_the_fix(tmp_path: Path):
    c = machine.check_kvm_device(str(_node(tmp_path / "kvm", 0o600)), user="libvirt-qemu")
    assert c.status == FAIL
    assert "root:root 0600: libvirt-qemu" in c.detail and "cannot open it" in c.detail
    assert "re-probes QEMU on every lookup" in c.detail and "scripts/kvm-device.sh" in c.fix
    assert c.line().startswith("FAIL  kvm-device ")


def test_kvm_device_as_udev_leaves_it_passes(tmp_path: Path):
    import grp
    c = machine.check_kvm_device(str(_node(tmp_path / "kvm", 0o660, grp.getgrnam("kvm").gr_gid)), user="libvirt-qemu")
    assert (c.status, c.detail) == (OK, "root:kvm 0660: libvirt-qemu can open it")


def test_kvm_device_absent_or_not_a_device(tmp_path: Path):
    assert machine.check_kvm_device(str(tmp_path / "none")).status == OK
    (tmp_path / "file").write_text("")
    c = machine.check_kvm_device(str(tmp_path / "file"))
    assert (c.status, c.detail) == (FAIL, "is not a character device")


def test_qemu_user_from_qemu_conf(tmp_path: Path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "nobody"\n')
    assert machine.qemu_user(str(conf)) == "libvirt-qemu"
    conf.write_text('  user = "nobody"\n')
    assert machine.qemu_user(str(conf)) == "nobody"
    conf.write_text('user = "+0"\n')
    assert machine.qemu_user(str(conf)) == "root"


# --- the define check: fast, slow once (a cache being filled), slow every time -------------

@pytest.mark.parametrize("times, status, words", [
    ([0.01], OK, "defined and undefined in 0.01 s"),
    ([5.0, 0.02], WARN, "took 5.0 s, then 0.02 s"),
    ([61.0, 62.0], FAIL, "took 61.0 s and again 62.0 s (over 2 s): libvirtd is most likely re-probing QEMU"),
])
def test_define_check(monkeypatch, times, status, words):
    left = list(times)
    monkeypatch.setattr(dhosts.probe, "time_define", lambda _h, _t: left.pop(0))
    said = []
    c = dhosts.check_define(Host("local", "test:///default"), "qemu", local=True, progress=said.append)
    assert left == [] and c.status == status and words in c.detail, c
    assert bool(said) == (len(times) == 2)
    if status == FAIL:
        assert "scripts/kvm-device.sh" in c.fix and "capabilities cache" in c.detail


def test_define_on_the_test_driver_leaves_nothing():
    h = Host("t", "test:///default")
    c = h.conn()
    before = set(c.listDefinedDomains())
    dhosts.probe.time_define(h, "test")      # what it takes is the doctor's figure; the checks above judge it
    assert set(c.listDefinedDomains()) == before


# --- a whole run on libvirt's test driver ---------------------------------------------------

def golden(tmp_path: Path) -> Path:
    """A file with a qcow2 header of 1 GiB virtual size, and a kernel and initrd beside it."""
    p = tmp_path / "images" / "golden.qcow2"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"QFI\xfb" + bytes(20) + (1 << 30).to_bytes(8, "big"))
    (p.parent / "vmlinuz").write_bytes(b"k" * 1024)
    (p.parent / "initrd.img").write_bytes(b"i" * 1024)
    return p


def config(tmp_path: Path, uri: str, **over):
    data = {"hosts": [{"name": "t1", "uri": uri}], "state_db": str(tmp_path / "state" / "state.db"),
            "image": {"golden": str(golden(tmp_path))},
            "zmq": {"publish": f"tcp://127.0.0.1:{free_port()}", "snapshot": f"tcp://127.0.0.1:{free_port()}"},
            "api": {"bind": f"127.0.0.1:{free_port()}"}, "network": {"port_min": 40000, "port_max": 40099},
            "autoscaler": {"metrics_listen": f"127.0.0.1:{free_port()}"}}
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    (tmp_path / "state").mkdir(exist_ok=True)
    return make_config(**data)


def by_check(checks):
    out: dict[str, list] = {}
    for c in checks:
        out.setdefault(c.check, []).append(c)
    return out


def test_everything_passes_on_the_test_driver(tmp_path: Path, node_uri: str):
    checks = run(config(tmp_path, node_uri))
    got = by_check(checks)
    assert [c.status for c in got["libvirt"]] == [OK] and "daemon 9." in got["libvirt"][0].detail
    assert [c.status for c in got["image"]] == [OK, OK, OK]
    assert "virtual size 1024 MiB" in got["image"][0].detail
    assert "not made yet" in got["state-db"][0].detail
    assert [c.check for c in checks if c.status != OK] == ["api", "controller"]   # nothing serves them here
    assert "kvm-device" not in got          # no local qemu host


def test_a_host_that_refuses_is_a_fail_line(tmp_path: Path, node_uri: str):
    port = free_port()
    cfg = config(tmp_path, node_uri, hosts=[{"name": "t1", "uri": node_uri},
                                            {"name": "gone", "uri": f"qemu+tcp://127.0.0.1:{port}/system"}])
    checks = run(cfg, timeout=10)
    [gone] = [c for c in checks if c.subject == "gone"]
    assert gone.status == FAIL and gone.check == "libvirt"
    assert f"qemu+tcp://127.0.0.1:{port}/system" in gone.detail and "libvirtd listens there" in gone.fix
    assert {c.status for c in checks if c.subject.startswith("t1")} == {OK}


def test_a_host_that_never_answers_costs_the_timeout(tmp_path: Path, node_uri: str):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    try:
        cfg = config(tmp_path, node_uri, hosts=[{"name": "mute", "uri": f"qemu+tcp://127.0.0.1:{port}/system"}])
        checks = run(cfg, timeout=1.0)
    finally:
        silent.close()
    [mute] = [c for c in checks if c.subject == "mute"]
    assert (mute.status, mute.detail) == (FAIL, f"qemu+tcp://127.0.0.1:{port}/system did not answer within 1 s")


def test_missing_golden_image(tmp_path: Path, node_uri: str):
    cfg = config(tmp_path, node_uri, image={"golden": str(tmp_path / "nowhere" / "golden.qcow2")})
    [img] = [c for c in run(cfg) if c.check == "image" and c.status != OK]
    assert img.line() == (f"FAIL  image {tmp_path}/nowhere/golden.qcow2: golden image missing -- fix: set "
                          "image.golden to a qcow2 image, or build one with `make image`")


def test_not_a_qcow2_image(tmp_path: Path, node_uri: str):
    bad = tmp_path / "bad.qcow2"
    bad.write_text("not an image")
    [img] = [c for c in run(config(tmp_path, node_uri, image={"golden": str(bad)})) if c.check == "image"][:1]
    assert img.status == FAIL and "not a qcow2 image" in img.detail


def test_writable_dir(tmp_path: Path):
    (tmp_path / "file").write_text("")
    assert machine.writable_dir(str(tmp_path / "file" / "pool"))[:2] == (False, f"{tmp_path}/file is not a directory")
    ok, found, free = machine.writable_dir(str(tmp_path / "new" / "pool"))
    assert ok and found == f"does not exist yet; {tmp_path} is writable" and free > 0
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]       # the probe file is gone


def test_state_db(tmp_path: Path):
    (tmp_path / "file").write_text("")
    c = machine.check_state_db(str(tmp_path / "file" / "state.db"))
    assert c.status == FAIL and "is not a directory" in c.detail
    import sqlite3
    db = tmp_path / "state.db"
    sqlite3.connect(db).close()
    assert machine.check_state_db(str(db)).status == OK       # empty: made by the first process
    os.chmod(tmp_path, 0o500)     # root writes anyway: read-only only shows through SQLite's own answer
    try:
        assert machine.check_state_db(str(db)).status == OK
    finally:
        os.chmod(tmp_path, 0o700)


def test_state_db_at_another_revision(state_db):
    from cms import db
    from cms.store import Store
    Store(state_db).close()
    c = machine.check_state_db(state_db)
    assert c.status == OK and c.detail.endswith(f"schema revision {db.head()} (head)")
    eng = db.engine(state_db)
    with eng.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001_initial'")
    eng.dispose()
    c = machine.check_state_db(state_db)
    assert (c.status, c.fix) == (FAIL, "run `cms db upgrade`")
    assert c.detail == f"schema revision 0001_initial: behind head (head {db.head()})"


def test_ports(tmp_path: Path, node_uri: str):
    local = [{"name": "here", "uri": "qemu:///system"}]      # no connection: only its ports are tried
    [c] = machine.check_ports(config(tmp_path, node_uri, hosts=local, network={"forward_address": "192.0.2.1"}))
    assert c.status == FAIL and "192.0.2.1 is not an address of this machine" in c.detail
    taken = []
    try:
        for p in range(40000, 40002):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            taken.append(s)
        [c] = machine.check_ports(config(tmp_path, node_uri, hosts=local, network={"port_max": 40001}))
        assert c.status == FAIL and c.detail.startswith("0 of 2 free to bind")
        [c] = machine.check_ports(config(tmp_path, node_uri, hosts=local, network={"port_max": 40003}))
        assert (c.status, c.subject) == (WARN, "127.0.0.1:40000-40003")     # 2 free, the groups may want 3
    finally:
        for s in taken:
            s.close()
    # a host with its own forward address; one that is not on this machine is not tried
    two = [{"name": "here", "uri": "qemu:///system", "forward_address": "127.0.0.2"},
           {"name": "far", "uri": "qemu+ssh://root@hv2.example.org/system"}]
    assert [c.subject for c in machine.check_ports(config(tmp_path, node_uri, hosts=two))] == ["127.0.0.2:40000-40099"]
    [c] = machine.check_ports(config(tmp_path, node_uri))                # only a test:/// host
    assert c.status == OK and "cannot be tried from here" in c.detail
    [c] = machine.check_ports(config(tmp_path, node_uri, network={"mode": "libvirt"}))
    assert c.status == OK and "need no host ports" in c.detail


def test_zmq_endpoint_taken_names_the_process(tmp_path: Path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        assert machine.listener(port)[0] == os.getpid()
        c = machine.check_zmq("zmq.publish", f"tcp://127.0.0.1:{port}")
        assert c.status == FAIL and f"taken by pid {os.getpid()}" in c.detail
    finally:
        s.close()
    assert machine.check_zmq("zmq.publish", f"tcp://127.0.0.1:{port}").status == OK
    assert machine.check_zmq("zmq.publish", "ipc:///run/cms/pub").status == OK


def test_api(tmp_path: Path):
    class Types(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"types": []}).encode()
            self.send_response(200 if self.path == "/v1/types" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Types)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert machine.check_api(url, explicit=True).status == OK
    finally:
        srv.shutdown()
        srv.server_close()
    closed = f"http://127.0.0.1:{free_port()}"
    assert machine.check_api(closed, explicit=False).status == WARN
    assert machine.check_api(closed, explicit=True).status == FAIL
    assert make_config(api={"bind": "0.0.0.0:8080"}).api.url == "http://127.0.0.1:8080"
    assert make_config(api={"bind": "10.1.2.3:81"}).api.url == "http://10.1.2.3:81"


# --- the command --------------------------------------------------------------------------

def write_toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cms.toml"
    p.write_text(text)
    return p


def test_cli_json_and_exit_codes(tmp_path: Path, node_uri: str, capsys):
    g = golden(tmp_path)
    toml = write_toml(tmp_path, f'state_db = "{tmp_path}/state.db"\n[[hosts]]\nname = "t1"\nuri = "{node_uri}"\n'
                                f'[image]\ngolden = "{g}"\n[zmq]\npublish = "tcp://127.0.0.1:{free_port()}"\n'
                                f'snapshot = "tcp://127.0.0.1:{free_port()}"\n')
    assert cli.main(["doctor", "--config", str(toml), "--json", "--skip", "api,controller"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["config"] == str(toml)
    assert {c["check"] for c in doc["checks"]} == {"config", "libvirt", "domain-type", "define", "pool", "image",
                                                   "ports", "zmq", "state-db", "host-state"}
    assert all(set(c) == {"check", "status", "subject", "detail", "fix"} for c in doc["checks"])

    g.unlink()
    assert cli.main(["--config", str(toml), "doctor"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  image {g}: golden image missing" in out and "cms doctor: 1 failed" in out.splitlines()[-1]


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys):
    assert cli.main(["doctor", "--skip", "nope"]) == 2
    assert capsys.readouterr().err.startswith("cms: doctor: no check named 'nope'")
    with pytest.raises(SystemExit) as exc:
        cli.main(["doctor", "--config", str(write_toml(tmp_path, "[libvirt]\ndomain_type = 'xen'\n"))])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "libvirt.domain_type = 'xen' is not one of" in err


class _Answers:
    """A loopback HTTP server answering GET with a JSON body the test sets per path."""

    def __init__(self) -> None:
        import http.server
        import threading
        bodies = self.bodies = {}

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                body = json.dumps(bodies.get(self.path, {})).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_controller_and_etcd_checks_say_the_role_and_the_quorum():
    from cms.doctor.controller import check_controller, check_etcd
    srv = _Answers()
    dead = free_port()
    try:
        cfg = make_config(autoscaler={"metrics_listen": f"127.0.0.1:{srv.port}"},
                          coordination={"url": [f"etcd3+http://127.0.0.1:{srv.port}",
                                                f"etcd3+http://127.0.0.1:{dead}", f"etcd3+http://127.0.0.1:{dead}"]})
        srv.bodies["/health"] = {"role": "leader", "name": "c1", "term": 41, "coordination": True,
                                 "health": "true"}
        c = check_controller(cfg)
        assert c.status == OK and c.detail == "c1 leads, term 41"
        srv.bodies["/health"] = {"role": "follower", "name": "c2", "leader": "c1", "health": "true"}
        assert check_controller(cfg).detail == "c2 follows; the leader is c1"
        srv.bodies["/health"] = {"role": "follower", "name": "c2", "leader": None, "health": "true"}
        assert "nobody leads now" in check_controller(cfg).detail
        etcd = check_etcd(cfg)      # one of three answers: no majority
        assert [x.status for x in etcd] == [OK, WARN, WARN, FAIL] and "1 of 3 members healthy" in etcd[-1].detail
        assert check_etcd(make_config()) == []
        gone = make_config(autoscaler={"metrics_listen": f"127.0.0.1:{dead}"})
        assert check_controller(gone).status == WARN and "does not answer" in check_controller(gone).detail
    finally:
        srv.close()
def test_host_state_says_what_the_autoscaler_declared(tmp_path: Path, node_uri: str):
    from cms.doctor.machine import check_host_states
    from cms.store import Store
    cfg = make_config(hosts=[{"name": n, "uri": node_uri} for n in ("a", "b", "c", "d")],
                      state_db=str(tmp_path / "state.db"))
    assert [(c.status, c.detail) for c in check_host_states(cfg)] == [
        (OK, "no state database yet: cms-autoscaler has declared nothing")]
    store = Store(cfg.state_db)
    store.add_event("host_suspect", "host a did not answer this tick", subject="a")
    store.add_event("host_down", "host a has not answered for 10.0 s", subject="a")
    store.add_event("host_suspect", "host b did not answer this tick", subject="b")
    store.add_event("host_up", "host c answers again", subject="c")
    got = {c.subject: c for c in check_host_states(cfg)}
    assert [got[h].status for h in "abcd"] == [FAIL, WARN, OK, OK]
    assert got["a"].detail.startswith("down since ") and got["a"].detail.endswith(": host a has not answered for 10.0 s")
    assert "fences it" in got["a"].fix and "host_down_s (10 s)" in got["b"].fix
    assert got["d"].detail == "no state declared by cms-autoscaler yet"

