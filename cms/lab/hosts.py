"""A multi-host lab on one machine: N hypervisors, each in its own network and mount namespace.

    python -m cms.lab.cli up N [--name cmslab] [--subnet 90] [--cpus C]   (scripts/lab.sh up N)
    python -m cms.lab.cli down [--name cmslab]                            (scripts/lab.sh down)
    python -m cms.lab.cli status [--name cmslab]
    python -m cms.lab.cli up N --controllers M [--etcd 3]    (controllers and etcd: cms.lab.controllers)
    python -m cms.lab.cli cut-etcd|heal-etcd C               (controller C loses etcd, or gets it back)
    python -m cms.lab.cli kill|cut|fence|revive N    (losing a host: cms.lab.outage)

What ``up`` makes, for host i of N (hv1, hv2, ...):

* a network namespace ``NAME-hvI`` whose ``eth0`` is one end of a veth pair; the other end,
  ``NAMEI``, is a port of the bridge ``NAMEbr`` in the root namespace. The bridge holds
  169.254.S.1/24 (S is ``--subnet``), the controller's side; host i holds 169.254.S.(10+i).
  Link-local addresses only: never 10.x, 172.16-31.x or 192.168.x.
* its own libvirtd, started in that network namespace and in a private mount namespace
  where /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
  /var/log/libvirt are directories of the lab (ROOT/hvI/...), so it has its own state,
  sockets, logs and ``host_uuid``. It listens on qemu+tcp at the host's address (no
  authentication: the address is reachable only from this machine's bridge), and runs
  its QEMUs in the namespace, so a replica's port forward listens on the host's address.
* storage shared the way NFS would share it: every other path is the root namespace's, so
  the golden image's directory (a ``cms-images`` pool on every host, as
  roles/libvirt_host makes) and the lab's replica pool directory are the same files at the
  same paths on every host. Live migration then needs no disk copy (``shared_storage``).

``up`` prints what it made and a cms.toml fragment for those hosts (also written to
ROOT/cms.toml). Each new libvirtd's QEMU capabilities cache is a copy of a good one, and
``up`` checks that it was taken (cms.lab.qemucaps). ``down`` ends the lab's processes by
their ids (the libvirtds it started and every process left in its namespaces, i.e. their
QEMUs), then removes the namespaces, the links and ROOT. It needs no state file and no
libvirt: the names say what is the lab's, so it also reaps what a crashed run left, and
``up`` calls it first. ``running`` is the same as a context manager, for pytest fixtures::

    @pytest.fixture(scope="module")
    def lab():
        with running(2, name="cmstest", subnet=91) as hosts:
            yield hosts
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

from cms.config import to_toml
from cms.lab import qemucaps
from cms.lab.proc import LabError, _kill, _pid_alive, _run  # noqa: F401 - the lab's helpers, used here and by its users

LIBVIRTD = "/usr/sbin/libvirtd"
BASE = Path("/var/lib/cms/lab")
IMAGES_POOL = "cms-images"
OVERLAID = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
            "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}
LIBVIRT_PORT = 16509
MAX_HOSTS = 200


@dataclass(frozen=True)
class LabHost:
    name: str            # hv1
    netns: str           # cmslab-hv1
    address: str         # 169.254.90.11
    uri: str             # qemu+tcp://169.254.90.11/system
    pid: int             # its libvirtd
    host_uuid: str
    root: str            # its state directories
    first_define_s: float = 0.0   # a throwaway define right after up: fast when its cache copy was taken
    caps_note: str = ""           # why that define was slow (libvirtd probed QEMU), from its log


class Lab:
    def __init__(self, name: str = "cmslab", subnet: int = 90, base: Path = BASE,
                 golden: str = "/var/lib/cms/images/golden.qcow2", caps_seed: Path | None = None) -> None:
        if not name.isalnum() or not name.islower() or len(name) > 10:
            raise LabError(f"lab name {name!r}: at most 10 lowercase letters and digits")
        if not 0 <= subnet <= 255:
            raise LabError(f"subnet {subnet}: 0 to 255 (the lab uses 169.254.SUBNET.0/24)")
        self.name, self.subnet = name, subnet
        self.root = base / name
        self.golden = golden
        self.bridge = f"{name}br"
        self.gateway = f"169.254.{subnet}.1"
        self.pool = name
        self.pool_path = str(self.root / "pool")
        # QEMU capabilities: the last lab host's, kept across labs (no lab is named so), unless
        # caps_seed names the files every new host starts from
        self.caps_shared = base / "qemu-capabilities"
        self.caps_seed = caps_seed

    # -- names ------------------------------------------------------------------------------

    def netns(self, i: int) -> str:
        return f"{self.name}-hv{i}"

    def address(self, i: int) -> str:
        return f"169.254.{self.subnet}.{10 + i}"

    def uri(self, i: int) -> str:
        return f"qemu+tcp://{self.address(i)}/system"

    def _our_netns(self) -> list[str]:
        out = _run("ip", "netns", "list").stdout.split("\n")
        names = [line.split()[0] for line in out if line.strip()]
        return sorted(n for n in names if n.startswith(f"{self.name}-hv") and n[len(self.name) + 3:].isdigit())

    def _our_links(self) -> list[str]:
        out = _run("ip", "-o", "link", "show").stdout.splitlines()
        names = [line.split(":", 2)[1].strip().split("@")[0] for line in out if ":" in line]
        return [n for n in names if n == self.bridge or (n.startswith(self.name) and n[len(self.name):].isdigit())]

    # -- up -------------------------------------------------------------------------------------

    def up(self, n: int, timeout: float = 60.0) -> list[LabHost]:
        if not 1 <= n <= MAX_HOSTS:
            raise LabError(f"a lab has 1 to {MAX_HOSTS} hosts, not {n}")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, bridges, privileged libvirtds)")
        if not os.path.exists(LIBVIRTD):
            raise LabError(f"{LIBVIRTD} is missing; run scripts/bootstrap.sh")
        self.down()   # whatever an earlier run left
        hosts: list[LabHost] = []
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o755)
            Path(self.pool_path).mkdir(mode=0o755, exist_ok=True)
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(1, n + 1):
                self._plumb(i)
                hosts.append(self._start_libvirtd(i))
            for h in hosts:
                self._wait_and_prepare(h, timeout)
            from cms.virt.host import resolve_domain_type
            checked = qemucaps.check([(h.name, h.uri, Path(h.root)) for h in hosts], self.caps_shared,
                                     resolve_domain_type("auto", "qemu:///system"))
            hosts = [replace(h, first_define_s=t, caps_note=why) for h, (t, why) in zip(hosts, checked)]
        except BaseException:
            self.down()
            raise
        (self.root / "lab.json").write_text(json.dumps({"hosts": [asdict(h) for h in hosts]}, indent=1))
        (self.root / "cms.toml").write_text(self.config_fragment(hosts))
        return hosts

    def _plumb(self, i: int) -> None:
        ns, outside, inside = self.netns(i), f"{self.name}{i}", f"{self.name}{i}p"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", outside, "master", self.bridge, "up")
        _run("ip", "link", "set", inside, "netns", ns)
        _run("ip", "-n", ns, "link", "set", inside, "name", "eth0")
        _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _start_libvirtd(self, i: int, host_uuid: str = "") -> LabHost:
        """Configure and start host i's libvirtd; ``host_uuid`` given: the same host again
        (scripts/lab.sh revive), its state directories as they were left."""
        hroot = self.root / f"hv{i}"
        for sub in [*OVERLAID, "log/qemu", qemucaps.CACHE_SUBDIR, "sock"]:
            (hroot / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(hroot / sub, 0o755 if sub != "sock" else 0o700)
        host_uuid = host_uuid or str(uuid.uuid4())
        (hroot / "etc" / "libvirtd.conf").write_text(
            "# written by cms.lab.hosts\n"
            f'unix_sock_dir = "{hroot / "sock"}"\n'
            'unix_sock_rw_perms = "0700"\n'
            "listen_tls = 0\nlisten_tcp = 1\n"
            f'listen_addr = "{self.address(i)}"\n'
            f'tcp_port = "{LIBVIRT_PORT}"\n'
            'auth_tcp = "none"\n'
            f'host_uuid = "{host_uuid}"\n'
            f'log_filters = "{qemucaps.LOG_FILTERS}"\n'
            f'log_outputs = "1:file:{hroot}/libvirtd.log"\n')
        # stdio "file": no virtlogd of its own; no cgroups: the system daemon's /machine
        # hierarchy names a domain's group by its id, which every daemon hands out from 1.
        # QEMU as root with no relabelling: the images and overlays are shared by all the
        # hosts, and one daemon must not chown a disk another host's QEMU is using.
        (hroot / "etc" / "qemu.conf").write_text(
            "# written by cms.lab.hosts\n"
            'stdio_handler = "file"\ncgroup_controllers = [ ]\n'
            'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = "none"\n')
        # libvirt's probe of the QEMU binary takes seconds under TCG: start from a good cache
        qemucaps.seed(hroot / qemucaps.CACHE_SUBDIR, self.caps_seed or self.caps_shared,
                      self.caps_seed or qemucaps.SYSTEM)
        mounts = " && ".join(f"mount --bind {hroot / sub} {path}" for sub, path in OVERLAID.items())
        script = f"{mounts} && exec {LIBVIRTD} --listen -f {hroot}/etc/libvirtd.conf -p {hroot}/libvirtd.pid"
        with open(hroot / "libvirtd.out", "wb") as out:
            # its own session: it outlives `lab.sh up`, and `down` ends it by its pid
            proc = subprocess.Popen(["ip", "netns", "exec", self.netns(i), "unshare", "--mount", "--propagation",
                                     "private", "sh", "-ec", script], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        (hroot / "launcher.pid").write_text(str(proc.pid))
        return LabHost(f"hv{i}", self.netns(i), self.address(i), self.uri(i), proc.pid, host_uuid, str(hroot))

    def _wait_and_prepare(self, h: LabHost, timeout: float) -> None:
        from cms import errors
        from cms.virt import Host
        probe = Host(h.name, h.uri)
        deadline = time.monotonic() + timeout
        try:
            while not probe.ping():
                if not _pid_alive(h.pid):
                    tail = Path(h.root, "libvirtd.out").read_text(errors="replace")[-800:].strip()
                    raise LabError(f"the libvirtd of {h.name} exited: {tail or 'no output'}")
                if time.monotonic() > deadline:
                    raise LabError(f"the libvirtd of {h.name} did not answer at {h.uri} within {timeout:g}s")
                time.sleep(0.1)
            try:
                probe.storage.ensure_pool(IMAGES_POOL, os.path.dirname(self.golden))
                probe.storage.ensure_pool(self.pool, self.pool_path)
            except errors.VirtError as exc:
                raise LabError(f"{h.name}: cannot define its storage pools: {exc}") from None
        finally:
            probe.close()

    # -- down -----------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything of this lab, from this run or an earlier one; what was removed."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, bridges, privileged libvirtds)")
        from cms.lab.controllers import Controllers
        removed = Controllers(self).down() if self.root.is_dir() or self._our_netns() else []
        launchers = []
        for f in sorted(self.root.glob("hv*/launcher.pid")) if self.root.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                launchers.append(int(f.read_text().strip()))
        namespaces = self._our_netns()
        in_ns = []
        for ns in namespaces:
            in_ns += [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
        pids = sorted({p for p in launchers + in_ns if _pid_alive(p)})
        if pids:
            _kill(pids)
            removed.append(f"processes {', '.join(map(str, pids))}")
        for ns in namespaces:
            _run("ip", "netns", "del", ns)
            removed.append(f"netns {ns}")
        for link in self._our_links():
            if _run("ip", "link", "del", link, check=False).returncode == 0:
                removed.append(f"link {link}")
        if self.root.exists():
            shutil.rmtree(self.root)
            removed.append(f"directory {self.root}")
        return removed

    def status(self) -> dict:
        namespaces = self._our_netns()
        from cms.lab.controllers import Controllers
        return {"name": self.name, "root": str(self.root), "netns": namespaces, "links": self._our_links(),
                "processes": {ns: _run("ip", "netns", "pids", ns, check=False).stdout.split() for ns in namespaces},
                "controllers": Controllers(self).status()}

    # -- what cms needs to use it ---------------------------------------------------------------

    def fence_command(self) -> str:
        """The lab's fence agent (cms.lab.outage) as a hosts[].fence_command; cms appends the
        host's name, which ``fence`` takes as well as its number."""
        return f"{shlex.quote(sys.executable)} -m cms.lab.cli --name {self.name} --subnet {self.subnet} fence"

    def config_data(self, hosts: list[LabHost], cpus: int = 0, fence: bool = False) -> dict:
        """The lab's part of a cms configuration, as plain data (cms.config.parse takes it);
        ``fence``: with the lab's fence agent as each host's fence_command (cms.lab.outage)."""
        from cms.virt.host import resolve_domain_type
        return {
            "libvirt": {"domain_type": resolve_domain_type("auto", "qemu:///system"), "pool": self.pool,
                        "pool_path": self.pool_path},
            "image": {"golden": self.golden},
            "hosts": [{"name": h.name, "uri": h.uri, "migration_address": h.address, "shared_storage": True,
                       "forward_address": h.address, "cpus": cpus, **({"fence_command": self.fence_command()}
                                                                      if fence else {})} for h in hosts],
        }

    def config_fragment(self, hosts: list[LabHost], cpus: int = 0) -> str:
        d = self.config_data(hosts, cpus, fence=True)
        return (f"# cms.toml fragment for the lab {self.name!r} (cms.lab.hosts): {len(hosts)} host(s) on "
                f"169.254.{self.subnet}.0/24, shared storage under {self.root}\n\n" + to_toml(d))


@contextlib.contextmanager
def running(n: int, *, name: str = "cmslab", subnet: int = 90, **kw) -> Iterator[tuple[Lab, list[LabHost]]]:
    """A lab of n hosts for the duration of the block; removed afterwards whatever happened."""
    lab = Lab(name, subnet, **kw)
    try:
        yield lab, lab.up(n)
    finally:
        lab.down()
