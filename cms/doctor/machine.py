"""`cms doctor`'s checks of this machine: /dev/kvm, files, ports, the state database, the API."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import sqlite3
import stat
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from cms import config as cms_config
from cms.doctor.check import FAIL, FIX_KVM_LOCAL, OK, WARN, Check
from cms.netutil import bindable
from cms.virt.fleet import Fleet
from cms.virt.host import is_local_uri
from cms.virt.xml import qcow2_virtual_size

KVM_DEVICE = "/dev/kvm"
QEMU_CONF = "/etc/libvirt/qemu.conf"


def qemu_can_open(mode: int, owner: int, group: int, uid: int, gids: list[int]) -> bool:
    """Whether a user (uid, with these groups) may open a node read-write by its mode bits,
    as libvirt's own check (access(R_OK|W_OK) as the qemu user) decides it."""
    if uid == 0:
        return True
    bits = (mode >> 6) if uid == owner else (mode >> 3) if group in gids else mode
    return bits & 0o6 == 0o6


def qemu_user(conf: str = QEMU_CONF) -> str:
    """The user libvirt runs QEMU as: qemu.conf's `user`, else Debian's libvirt-qemu."""
    try:
        text = Path(conf).read_text()
    except OSError:
        text = ""
    m = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.M)
    user = m.group(1) if m else "libvirt-qemu"
    if user.startswith("+") and user[1:].isdigit():
        try:
            return pwd.getpwuid(int(user[1:])).pw_name
        except KeyError:
            return user
    return user


def check_kvm_device(path: str = KVM_DEVICE, user: str | None = None) -> Check:
    if not os.path.exists(path):
        return Check("kvm-device", OK, path, "absent: guests run under TCG emulation (domain type qemu)")
    st = os.stat(path)
    if not stat.S_ISCHR(st.st_mode):
        return Check("kvm-device", FAIL, path, "is not a character device",
                     "remove it; the kvm kernel module creates the real device")
    owner = _name(pwd.getpwuid, st.st_uid)
    group = _name(grp.getgrgid, st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    what = f"{owner}:{group} {mode:04o}"
    user = user or qemu_user()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return Check("kvm-device", WARN, path, f"{what}; libvirt's qemu user {user} does not exist",
                     "install libvirt-daemon-system (scripts/bootstrap.sh does)")
    gids = os.getgrouplist(user, pw.pw_gid)
    if qemu_can_open(mode, st.st_uid, st.st_gid, pw.pw_uid, gids):
        return Check("kvm-device", OK, path, f"{what}: {user} can open it")
    return Check("kvm-device", FAIL, path,
                 f"{what}: {user} (groups {','.join(_name(grp.getgrgid, g) for g in gids)}) cannot open it, so "
                 "libvirtd re-probes QEMU on every lookup and each define takes about a minute", FIX_KVM_LOCAL)


def _name(lookup: Callable, ident: int) -> str:
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)


def writable_dir(path: str) -> tuple[bool, str, int]:
    """Whether `path`, or the nearest directory above it that exists, takes a new file:
    (yes?, what was found, free bytes there)."""
    p = Path(path)
    base = next((a for a in (p, *p.parents) if a.exists()), Path("/"))
    if not base.is_dir():
        return False, f"{base} is not a directory", 0
    try:
        fd, probe_file = tempfile.mkstemp(dir=base, prefix=".cms-doctor-")
        os.close(fd)
        os.unlink(probe_file)
    except OSError as exc:
        return False, f"{base} cannot be written ({exc.strerror})", 0
    st = os.statvfs(base)
    where = "writable" if base == p else f"does not exist yet; {base} is writable"
    return True, where, st.f_bavail * st.f_frsize


def check_image(cfg: cms_config.Config) -> list[Check]:
    golden = cfg.image.golden
    kernel, initrd = Fleet(cfg).boot_files()
    build = "build it with `make image` (scripts/build-image.sh)" if golden == cms_config.ImageConfig.golden \
        else "set image.golden to a qcow2 image, or build one with `make image`"
    out = []
    for role, path in (("golden image", golden), ("kernel", kernel), ("initrd", initrd)):
        if not path:
            out.append(Check("image", OK, role, "none: guests boot the image's own bootloader" if role == "kernel"
                             else "none"))
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(32)
            size = os.path.getsize(path)
        except FileNotFoundError:
            out.append(Check("image", FAIL, path, f"{role} missing", build))
            continue
        except OSError as exc:
            out.append(Check("image", FAIL, path, f"{role} unreadable: {exc.strerror}", f"make {path} readable"))
            continue
        where = f" (-> {os.path.realpath(path)})" if os.path.islink(path) else ""
        if role == "golden image":
            try:
                size = qcow2_virtual_size(head)
            except ValueError:
                out.append(Check("image", FAIL, path, f"{role} is not a qcow2 image{where}", build))
                continue
        kind = "qcow2, virtual size" if role == "golden image" else "readable,"
        out.append(Check("image", OK, path, f"{role} {kind} {size / 2**20:.0f} MiB{where}"))
    return out


def check_ports(cfg: cms_config.Config) -> list[Check]:
    """The forward ports on each address the hypervisors of this machine bind them on (a
    remote host's or another namespace's cannot be tried from here)."""
    net = cfg.network
    if net.mode != "user":
        return [Check("ports", OK, "forward", f"network.mode = {net.mode}: replicas need no host ports")]
    fleet = Fleet(cfg)
    addresses = sorted({fleet.forward_address(h.name) for h in cfg.hosts
                        if is_local_uri(h.uri) and not h.uri.startswith("test:")})
    if not addresses:
        return [Check("ports", OK, "forward", "no hypervisor on this machine: its ports cannot be tried from here")]
    need = sum(g.max for g in cfg.groups.values())
    return [_port_range(address, net.port_min, net.port_max, need) for address in addresses]


def _port_range(address: str, low: int, high: int, need: int) -> Check:
    span = f"{address}:{low}-{high}"
    if not bindable(address, 0):
        return Check("ports", FAIL, span, f"{address} is not an address of this machine",
                     "set network.forward_address (or the host's forward_address) to one: 127.0.0.1 on one machine")
    free = sum(1 for p in range(low, high + 1) if bindable(address, p))
    detail = f"{free} of {high - low + 1} free to bind; the groups' max adds up to {need}"
    if free == 0:
        return Check("ports", FAIL, span, detail, "stop what holds them, or move network.port_min/port_max")
    if free < need:
        return Check("ports", WARN, span, detail, "widen network.port_min/port_max")
    return Check("ports", OK, span, detail)


def listener(port: int) -> tuple[int, str] | None:
    """(pid, command line) of the process listening on a TCP port, when it can be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return None


def check_zmq(key: str, endpoint: str, several: bool = False) -> Check:
    """One feed endpoint. With several (every controller's), an address not of this machine is
    another controller's, not a fault."""
    m = re.fullmatch(r"tcp://(\*|\[[^\]]+\]|[^:]+):(\d+)", endpoint)
    if not m:
        return Check("zmq", OK, endpoint, f"{key} is not a TCP endpoint; not checked")
    address = {"*": "0.0.0.0"}.get(m.group(1), m.group(1).strip("[]"))
    port = int(m.group(2))
    if bindable(address, port):
        return Check("zmq", OK, endpoint, f"{key} free to bind")
    if not bindable(address, 0):
        if several:
            return Check("zmq", OK, endpoint, f"{key}: another controller's endpoint (not an address of this machine)")
        return Check("zmq", FAIL, endpoint, f"{address} is not an address of this machine",
                     f"set {key} to an address of the machine cms-autoscaler runs on")
    holder = listener(port)
    if holder and ("cms-autoscaler" in holder[1] or "cms.autoscaler" in holder[1]):
        return Check("zmq", OK, endpoint, f"{key} held by cms-autoscaler (pid {holder[0]}), which binds it")
    who = f"pid {holder[0]} ({holder[1][:60]})" if holder else "another process"
    return Check("zmq", FAIL, endpoint, f"{key} is taken by {who}: cms-autoscaler could not bind it",
                 f"stop that process, or set {key} to a free port")


def check_state_db(path: str, password_file: str = "") -> Check:
    """The state database: reachable (and writable, for a SQLite file), and at the schema
    revision this cms needs."""
    from cms import db
    from cms.db import command
    where = db.describe(path)
    if not db.is_postgres(path):
        if not os.path.exists(path):
            directory = os.path.dirname(path) or "."
            ok, found, _free = writable_dir(directory)
            if ok:
                return Check("state-db", OK, path, f"not made yet; {directory}: {found}")
            return Check("state-db", FAIL, path, f"cannot be made: {found}", "make the directory writable or set state_db")
        try:
            con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.Error as exc:
            return Check("state-db", FAIL, path, f"not writable: {exc}",
                         "make the file and its directory writable (or wait for the process holding the lock)")
    try:
        st = command.status(path, password_file)
    except db.CmsError as exc:
        return Check("state-db", FAIL, where, str(exc), "start the database server, or correct state_db and "
                     "state_db_password_file")
    rev = f"schema revision {st['revision'] or 'none'}"
    if st["state"] == "current":
        return Check("state-db", OK, where, f"writable, {rev} (head)" if st["backend"] == "sqlite" else f"{rev} (head)")
    if st["state"] == "empty":
        return Check("state-db", OK, where, "empty: the first cms process to open it makes its tables")
    fix = "upgrade cms" if st["state"] == "ahead" else "run `cms db upgrade`"
    return Check("state-db", FAIL, where, f"{rev}: {command.WORDS[st['state']].split(':')[0]} (head {st['head']})", fix)


def check_host_states(cfg: cms_config.Config) -> list[Check]:
    """Each host's state as cms-autoscaler last declared it (the newest host event in the state
    database): up is ok, suspect or fencing a warning, down a failure; none yet says so."""
    from cms import db
    where = db.describe(cfg.state_db)
    if not db.is_postgres(cfg.state_db) and not os.path.exists(cfg.state_db):
        return [Check("host-state", OK, where, "no state database yet: cms-autoscaler has declared nothing")]
    from sqlalchemy.exc import SQLAlchemyError

    from cms.autoscaler.hoststate import STATE_OF
    from cms.store import Store
    try:
        store = Store.of(cfg)
        try:
            declared = store.latest_events(STATE_OF)
        finally:
            store.close()
    except (db.CmsError, SQLAlchemyError) as exc:
        return [Check("host-state", WARN, where, f"cannot read the hosts' states: {str(exc).splitlines()[0]}")]
    out = []
    for h in cfg.hosts:
        e = declared.get(h.name)
        if e is None:
            out.append(Check("host-state", OK, h.name, "no state declared by cms-autoscaler yet"))
            continue
        state = str(STATE_OF[e.kind])
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts))
        detail = f"{state} since {since}: {e.message}"
        if state == "up":
            out.append(Check("host-state", OK, h.name, detail))
        elif state == "down":
            out.append(Check("host-state", FAIL, h.name, detail,
                             "bring the host (or its link) back: its replicas were replaced elsewhere, and "
                             "cms-autoscaler fences it (destroys what it declared lost there) when it answers"))
        else:
            out.append(Check("host-state", WARN, h.name, detail, "watch it: cms-autoscaler decides within "
                             f"autoscaler.host_down_s ({cfg.autoscaler.host_down_s:g} s)"))
    return out


def check_api(url: str, explicit: bool) -> Check:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/types", timeout=5) as r:
            body = json.loads(r.read())
        if isinstance(body, dict) and "types" in body:
            return Check("api", OK, url, "cms-api answers")
        return Check("api", FAIL, url, "something answers that is not cms-api", "free the address or change api.bind")
    except urllib.error.HTTPError as exc:
        return Check("api", FAIL, url, f"answered HTTP {exc.code} to /v1/types", "see cms-api's log")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        fix = "start it: cms-api (or systemctl start cms-api)"
        if explicit:
            return Check("api", FAIL, url, f"cms-api does not answer: {reason}", fix)
        return Check("api", WARN, url, f"cms-api does not answer ({reason}); fine where it is not meant to run", fix)
