"""The libvirt layer against the real libvirtd with QEMU (TCG here): clone, define, boot, destroy."""

from __future__ import annotations

import os

import pytest

from cms import errors
from cms.virt import Fleet, OwnerMeta
from cms.lab.realstack import drop_pool, real_config, real_fleet, wait_until
from tests.support import blank_golden

pytestmark = pytest.mark.real


@pytest.fixture
def fleet(tmp_path, run_dir):
    with real_fleet(tmp_path, "itest", events=True, golden=blank_golden()) as f:
        yield f


def test_clone_define_boot_destroy_leaves_nothing(fleet):
    cfg = fleet.cfg
    h = fleet.host("local")
    s = fleet.build_on("local", "cms-itest-boot", vcpus=1, memory_mib=128,
                    meta=OwnerMeta(group="itest", role="replica"))
    [d] = fleet.owned("itest")
    assert d.name == "cms-itest-boot" and d.uuid == s.uuid and d.state == "running"
    assert d.meta.port == s.port and cfg.network.port_min <= s.port <= cfg.network.port_max
    # the disk is a linked clone: a small qcow2 whose backing file is the golden image
    vol = f"{cfg.libvirt.pool_path}/cms-itest-boot.qcow2"
    with open(vol, "rb") as fh:
        hdr = fh.read(1024)
    assert hdr[:4] == b"QFI\xfb" and cfg.image.golden.encode() in hdr
    assert os.path.getsize(vol) < 2 * 1024 * 1024
    # one bulk stats call sees it running, with a CPU counter
    stats = h.stats.bulk_stats({s.uuid})
    assert stats[s.uuid]["state.state"] == 1 and stats[s.uuid]["cpu.time"] > 0
    # the lifecycle event arrives on the queue
    ev = wait_until(lambda: _drain_for(fleet, "cms-itest-boot", "started"), 10, what="started event")
    assert ev.host == "local"
    fleet.remove("local", "cms-itest-boot", graceful_timeout=0)
    assert fleet.owned("itest") == []
    assert h.storage.list_volumes(cfg.libvirt.pool) == []
    assert not h.exists("cms-itest-boot")


_seen: list = []


def _drain_for(fleet, name, event):
    q = fleet.event_queue
    assert q is not None
    while not q.empty():
        _seen.append(q.get_nowait())
    return next((e for e in _seen if e.name == name and e.event == event), None)


def test_name_clash_on_real_host_leaves_first_intact(fleet):
    fleet.build_on("local", "cms-itest-clash", vcpus=1, memory_mib=128, meta=OwnerMeta(group="itest"))
    with pytest.raises(errors.AlreadyExists, match="cms-itest-clash"):
        fleet.build_on("local", "cms-itest-clash", vcpus=1, memory_mib=128, meta=OwnerMeta(group="itest"))
    assert [d.name for d in fleet.owned("itest")] == ["cms-itest-clash"]
    assert fleet.host("local").storage.list_volumes(fleet.cfg.libvirt.pool) == ["cms-itest-clash.qcow2"]


def test_missing_golden_image_names_host_and_path(tmp_path, run_dir):
    cfg = real_config(tmp_path, golden="/var/lib/cms/test/no-such-golden.qcow2")
    f = Fleet(cfg)
    try:
        with pytest.raises(errors.ImageMissing) as ei:
            f.build_on("local", "cms-itest-nogold", vcpus=1, memory_mib=128, meta=OwnerMeta(group="itest"))
        assert "no-such-golden.qcow2" in str(ei.value) and "host local" in str(ei.value)
        assert f.owned("itest") == [] and f.host("local").storage.list_volumes(cfg.libvirt.pool) == []
    finally:
        drop_pool(f.host("local"), cfg.libvirt.pool)
        f.close()


def test_start_failure_rolls_back(fleet):
    # a port forward on a port another process holds makes QEMU fail at start
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        from cms.virt import xml as vxml
        h = fleet.host("local")
        h.storage.ensure_pool(fleet.cfg.libvirt.pool, fleet.cfg.libvirt.pool_path)
        spec = vxml.DomainSpec(name="cms-itest-fail", uuid=h.new_uuid(), vcpus=1, memory_mib=128, disk_path="",
                               meta=OwnerMeta(group="itest", port=port), domain_type="qemu", host_port=port)
        with pytest.raises(errors.VirtError) as ei:
            h.domains.clone_and_start(spec, fleet.cfg.libvirt.pool, fleet.cfg.image.golden)
        assert "cms-itest-fail" in str(ei.value)
        assert not h.exists("cms-itest-fail")
        assert h.storage.list_volumes(fleet.cfg.libvirt.pool) == []
    finally:
        busy.close()


class FreezableLink:
    """A unix socket in front of the system libvirtd's that can stop passing bytes: a link
    that goes silent under an open connection, as a host does when its network is cut."""

    def __init__(self, path: str, target: str = "/run/libvirt/libvirt-sock") -> None:
        import socket
        import threading
        self.path, self.target = path, target
        self.flowing = threading.Event()
        self.flowing.set()
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(path)
        self.srv.listen(4)
        self.socks: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        while True:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            b = socket.socket(socket.AF_UNIX)
            b.connect(self.target)
            self.socks += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                self.flowing.wait()      # frozen: the bytes wait, as on a dead link
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.flowing.set()
        self.srv.close()
        for s in self.socks:
            s.close()


def test_keepalive_drops_a_silent_connection_and_the_next_call_opens_a_new_one(tmp_path):
    import threading
    from cms.virt import Host, start_event_loop
    assert start_event_loop()            # keepalives run on libvirt's event loop
    link = FreezableLink(str(tmp_path / "sock"))
    h = Host("ka", f"qemu+unix:///system?socket={tmp_path / 'sock'}", keepalive_interval=1)
    try:
        first = h.conn()
        assert h.ping()
        link.flowing.clear()
        box: list = []

        def call() -> None:
            try:
                box.append(h.stats.owned_domains())
            except errors.VirtError as exc:
                box.append(exc)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(30)      # keepalive: 1 s interval, 3 unanswered -> dropped after about 4 s
        assert box and isinstance(box[0], errors.HostUnreachable), box
        link.flowing.set()
        assert h.ping()
        assert h.conn() is not first     # never reused: a new connection
    finally:
        h.close()
        link.close()
