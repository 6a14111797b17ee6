"""Live migration for real: QEMU to QEMU between two libvirt daemons on this one machine.

libvirt refuses to migrate to "the same host", which it tells by the host UUID, and a
second privileged libvirtd would share the first one's state directories. So the test
starts its own libvirtd in a private mount namespace (``unshare -m``): its /etc/libvirt,
/run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are directories
of the test, its sockets sit in a directory of the test, its libvirtd.conf gives it
another host_uuid. Everything else (the disk overlays, the golden image) it sees at the
same paths as the system daemon: storage that really is shared, which libvirt cannot
tell from the file system type, hence the hosts' ``shared_storage``. The migration
stream goes to 127.0.0.1 (the hosts' ``migration_address``); nothing leaves loopback.

The guest boots no OS: a 16-byte boot sector counts timer interrupts (18.2 a second)
in guest RAM at 0x7e00, read through the QEMU monitor. A live migration carries that
count on; a restarted guest would begin again at 0. The QEMU process's own CPU time is
no proof either way: libvirt reports it per process, and the destination's process is
new in both cases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from cms import config, errors
from cms.scheduler import Scheduler
from cms.virt import Fleet, Host, OwnerMeta
from cms.virt import xml as vxml
from cms.lab.realstack import TEST_DIR, drop_pool, stop_process, wait_until

pytestmark = pytest.mark.real

LIBVIRTD = "/usr/sbin/libvirtd"
SYSTEM_URI = "qemu:///system"
# the directories a privileged libvirtd keeps its state in, replaced in the second daemon's namespace
OVERLAID = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
            "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}
MIGRATE_TIMEOUT_S = 60.0

# sti; xor ax,ax; mov ds,ax; mov dword [0x7e00],0; L: hlt; inc dword [0x7e00]; jmp L
BOOT_SECTOR = bytes.fromhex("fb 31c0 8ed8 66c706007e00000000 f4 66ff06007e ebf8")


class SecondLibvirtd:
    """A privileged libvirtd of the test's own: own state, own sockets, own host UUID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock_dir = root / "sock"
        self.uri = f"qemu+unix:///system?socket={self.sock_dir}/libvirt-sock"
        self.host_uuid = str(uuid.uuid4())
        self.log = root / "libvirtd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        for sub in [*OVERLAID, "log/qemu", "cache/qemu/capabilities"]:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / sub, 0o755)
        self.sock_dir.mkdir(mode=0o700)
        (self.root / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.sock_dir}"\n'
            'unix_sock_rw_perms = "0700"\n'
            f'host_uuid = "{self.host_uuid}"\n'
            # the QMP commands it sends its QEMUs, to see where an incoming migration listens
            'log_filters = "1:qemu.qemu_monitor 3:*"\n'
            f'log_outputs = "1:file:{self.root}/debug.log"\n')
        # stdio "file": no virtlogd of its own; no cgroups: the system daemon's /machine
        # hierarchy names a domain's group by its id, which two daemons both hand out.
        (self.root / "etc" / "qemu.conf").write_text('stdio_handler = "file"\ncgroup_controllers = [ ]\n')
        # libvirt's probe of the QEMU binary takes seconds under TCG; its cache is keyed by
        # the binaries' versions and times, so the system daemon's entries are valid here.
        caps = Path("/var/cache/libvirt/qemu/capabilities")
        for f in caps.glob("*.xml") if caps.is_dir() else []:
            shutil.copy(f, self.root / "cache/qemu/capabilities" / f.name)
        mounts = " && ".join(f"mount --bind {self.root / sub} {path}" for sub, path in OVERLAID.items())
        script = f"{mounts} && exec {LIBVIRTD} -f {self.root}/etc/libvirtd.conf -p {self.root}/libvirtd.pid"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        probe = Host("probe", self.uri)
        try:
            wait_until(lambda: self._alive() and probe.ping(), timeout, 0.1, what="the second libvirtd to answer")
        finally:
            probe.close()

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the second libvirtd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None


@pytest.fixture(scope="module")
def daemons():
    """(source, destination): the system libvirtd and a second one started for this module."""
    root = TEST_DIR / f"lv2-{uuid.uuid4().hex[:8]}"
    second = SecondLibvirtd(root)
    src = Host("src", SYSTEM_URI)
    dst = None
    try:
        second.start()
        dst = Host("dst", second.uri)
        yield src, dst, second
    finally:
        # Domains are removed by each test; this only makes sure no QEMU outlives the daemon.
        if dst is not None:
            for dom in _all_domains(dst):
                _kill_domain(dst, dom)
            dst.close()
        src.close()
        second.stop()
        shutil.rmtree(root, ignore_errors=True)


def _all_domains(h: Host) -> list[str]:
    try:
        return [d.name() for d in h.conn().listAllDomains()]
    except (libvirt.libvirtError, errors.VirtError):
        return []


def _kill_domain(h: Host, name: str) -> None:
    try:
        h.domains.remove(name, "no-such-pool")  # destroy + undefine; its volume is the pool's, dropped there
    except errors.VirtError:
        pass


@pytest.fixture
def guest(daemons):
    """A running domain made through cms.virt.Host on the system daemon, and its cleanup on both."""
    src, dst, second = daemons
    tag = uuid.uuid4().hex[:8]
    pool, name = f"cmsmig-{tag}", f"cms-migtest-{tag}"
    golden = TEST_DIR / f"counter-{tag}.qcow2"
    raw = golden.with_suffix(".raw")
    raw.write_bytes(BOOT_SECTOR + bytes(510 - len(BOOT_SECTOR)) + b"\x55\xaa" + bytes(1024 * 1024 - 512))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(golden)],
                   check=True, timeout=60)
    raw.unlink()
    os.chmod(golden, 0o644)
    meta = OwnerMeta(group="migtest", role="vm", created=time.time(), vmid=7, instance_type=1, image="counter")
    # No NIC: a user-mode NIC's port forward would be bound by both QEMUs on one machine.
    spec = vxml.DomainSpec(name=name, uuid=src.new_uuid(), vcpus=1, memory_mib=64, disk_path="", meta=meta,
                           domain_type="qemu", network_mode="none",
                           serial_log=f"/var/log/libvirt/qemu/{name}-serial.log")
    try:
        src.storage.ensure_pool(pool, str(TEST_DIR / pool))
        src.domains.clone_and_start(spec, pool, str(golden))
        yield name, spec, pool
    finally:
        for h in (dst, src):
            if h.exists(name):
                _kill_domain(h, name)
        drop_pool(src, pool)
        shutil.rmtree(TEST_DIR / pool, ignore_errors=True)
        golden.unlink(missing_ok=True)
        for log in (f"{name}.log", f"{name}-serial.log"):
            Path("/var/log/libvirt/qemu", log).unlink(missing_ok=True)


def ticks(h: Host, name: str) -> int:
    """The guest's own count of timer interrupts, read from its RAM through the QEMU monitor."""
    out = libvirt_qemu.qemuMonitorCommand(h.conn().lookupByName(name), "xp /1wx 0x7e00",
                                          libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    return int(out.split(":", 1)[1].split()[0], 16)


def qemu_pid(run_dir: str, name: str) -> int:
    return int(Path(run_dir, "qemu", f"{name}.pid").read_text().strip())


def incoming_uris(second: SecondLibvirtd) -> list[str]:
    """Where the second daemon told its QEMUs to listen for incoming migrations (from its debug log)."""
    out = []
    for line in (second.root / "debug.log").read_text().splitlines():
        if "QEMU_MONITOR_SEND_MSG" in line and '"migrate-incoming"' in line:
            out.append(json.loads(line.split(" msg=", 1)[1])["arguments"]["uri"])
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_host_migrate_moves_a_running_guest_live_to_another_libvirtd(daemons, guest):
    src, dst, second = daemons
    name, spec, _pool = guest
    before_ticks = wait_until(lambda: (n := ticks(src, name)) >= 20 and n, 30, what="the guest to count 20 ticks")
    src_pid = qemu_pid("/run/libvirt", name)
    assert pid_alive(src_pid)

    # without shared_storage libvirt refuses: it sees a local file system; nothing moves
    with pytest.raises(errors.VirtError, match="shared storage is unsafe") as ei:
        src.migration.migrate(name, dst.calls, address="127.0.0.1")
    assert "host src" in str(ei.value)
    assert src.guest(name).state() == "running" and not dst.exists(name) and qemu_pid("/run/libvirt", name) == src_pid

    started = time.monotonic()
    src.migration.migrate(name, dst.calls, address="127.0.0.1", shared_storage=True, timeout_s=MIGRATE_TIMEOUT_S)
    took = time.monotonic() - started
    after_ticks = ticks(dst, name)

    # it runs on the destination, defined there for good, and is gone from the source
    assert dst.guest(name).state() == "running"
    dom = dst.conn().lookupByName(name)
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED]
    assert dom.isPersistent() and dom.UUIDString() == spec.uuid
    assert not src.exists(name)
    # cms's owner record came along in <metadata>
    [owned] = dst.stats.owned_domains("migtest")
    assert (owned.name, owned.uuid, owned.meta) == (name, spec.uuid, spec.meta)
    assert owned.alive and owned.vcpus == 1 and owned.memory_mib == 64
    assert src.stats.owned_domains("migtest") == []
    # live: another QEMU process, but the guest's RAM (its tick count) carried on, and it keeps counting
    dst_pid = qemu_pid(str(second.root / "run"), name)
    assert dst_pid != src_pid and pid_alive(dst_pid) and not pid_alive(src_pid)
    assert after_ticks >= before_ticks, f"the guest restarted: {after_ticks} ticks after, {before_ticks} before"
    wait_until(lambda: ticks(dst, name) > after_ticks, 10, what="the guest to keep counting on the destination")
    # the destination QEMU took the stream on loopback, where the source sent it
    assert incoming_uris(second) and all(u.startswith("tcp:127.0.0.1:") for u in incoming_uris(second))
    assert took < MIGRATE_TIMEOUT_S


def test_scheduler_migrates_there_and_back_through_the_config(daemons, guest, tmp_path, run_dir):
    src, dst, second = daemons
    name, spec, pool = guest
    both = {"migration_address": "127.0.0.1", "shared_storage": True}
    cfg = config.parse({
        "hosts": [{"name": "src", "uri": SYSTEM_URI, **both}, {"name": "dst", "uri": second.uri, **both}],
        "libvirt": {"domain_type": "qemu", "pool": pool, "pool_path": str(TEST_DIR / pool),
                    "migrate_timeout_s": MIGRATE_TIMEOUT_S},
        "placement": {"algorithm": "first_fit"},
        "state_db": str(tmp_path / "state.db"),
    }, "<migration test>")
    fleet = Fleet(cfg)
    try:
        sched = Scheduler(cfg, fleet)
        assert sched.find(name).host == "src"
        t0 = wait_until(lambda: (n := ticks(fleet.host("src"), name)) >= 10 and n, 30, what="the guest to count")

        # no destination given: placement picks the other host
        assert sched.migrate(name) == "dst"
        d = sched.find(name)
        assert d.host == "dst" and d.state == "running" and d.meta == spec.meta
        t1 = ticks(fleet.host("dst"), name)
        assert t1 >= t0
        with pytest.raises(errors.AlreadyExists):
            sched.migrate(name, "dst")

        # and back to the system daemon, named explicitly
        assert sched.migrate(name, "src") == "src"
        d = sched.find(name)
        assert d.host == "src" and d.state == "running" and d.meta == spec.meta
        assert not fleet.host("dst").exists(name)
        t2 = ticks(fleet.host("src"), name)
        assert t2 >= t1, f"the guest restarted on the way back: {t2} ticks after, {t1} before"
    finally:
        fleet.close()
