"""`cms doctor`'s checks of each configured host, through libvirt (cms.virt.probe).

Each host is checked in a thread of its own: ``HostRun`` holds what it found so far, and
``collect`` waits for it with a deadline, so a URI that never answers costs the caller's
timeout, not an ssh or TCP timeout of minutes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from cms import config as cms_config
from cms import errors
from cms.doctor.check import FAIL, FIX_KVM_LOCAL, OK, WARN, Check, gib
from cms.doctor.machine import KVM_DEVICE, writable_dir
from cms.virt import probe
from cms.virt.host import Host, is_local_uri, this_machine_is_a_vm
from cms.virt.storage import Storage

DEFINE_SLOW_S = 2.0
# After the connection, what a host's checks may take: two defines of a minute each at worst.
HOST_BUDGET_S = 150.0


def check_domain_type(host: Host, setting: str, local: bool) -> tuple[Check, str]:
    """The Check and the domain type a replica gets on this host."""
    auto = host.domain_type("auto")
    chosen = auto if setting == "auto" else setting
    if local:
        dev, vm = os.path.exists(KVM_DEVICE), this_machine_is_a_vm()
        why = f"{KVM_DEVICE} {'exists' if dev else 'is absent'} and this machine is {'' if vm else 'not '}itself a VM"
    else:
        why = f"the host's capabilities {'offer' if auto == 'kvm' else 'do not offer'} kvm"
    if setting == "auto":
        return Check("domain-type", OK, host.name, f"auto gives {auto}: {why}"), chosen
    if setting == auto or setting == "qemu":
        return Check("domain-type", OK, host.name, f"{setting} as set (auto would give {auto}: {why})"), chosen
    if local and not os.path.exists(KVM_DEVICE):
        return Check("domain-type", FAIL, host.name, f"kvm is set but {why}: guests cannot start",
                     'set libvirt.domain_type = "auto" or "qemu"'), chosen
    return Check("domain-type", WARN, host.name, f"kvm is set but auto would give qemu: {why}; nested KVM guests "
                 "hang on such machines", 'set libvirt.domain_type = "auto" (or "qemu")'), chosen


def check_define(host: Host, domain_type: str, local: bool,
                 progress: Callable[[str], None] = lambda _m: None) -> Check:
    """Define and undefine a throwaway domain; when that is slow, once more: the first
    lookup after libvirtd starts may fill its capabilities cache, which is fine once."""
    fix = FIX_KVM_LOCAL if local else (f"on {host.name}: run site.yml's hypervisor play (role libvirt_host sets "
                                       "/dev/kvm as udev would) or scripts/kvm-device.sh there")
    what = f"a throwaway {domain_type} domain"
    first = probe.time_define(host, domain_type)
    if first <= DEFINE_SLOW_S:
        return Check("define", OK, host.name, f"{what} defined and undefined in {first:.2f} s")
    progress(f"cms doctor: defining {what} on {host.name} took {first:.1f} s; timing it once more")
    second = probe.time_define(host, domain_type)
    if second <= DEFINE_SLOW_S:
        return Check("define", WARN, host.name, f"{what} took {first:.1f} s, then {second:.2f} s: libvirtd filled its "
                     "QEMU capabilities cache once (normal right after it starts)", "none needed if it stays fast")
    return Check("define", FAIL, host.name,
                 f"{what} took {first:.1f} s and again {second:.1f} s (over {DEFINE_SLOW_S:g} s): libvirtd is most "
                 "likely re-probing QEMU on every lookup because its capabilities cache never stays valid "
                 "(KVM usable for root but not for the qemu user)", fix)


def check_pool(host: Host, cfg: cms_config.Config, local: bool) -> list[Check]:
    lv = cfg.libvirt
    minimum = Storage.MIN_POOL_FREE_BYTES
    st = probe.pool_status(host, lv.pool)
    path = st.path or lv.pool_path
    out = []
    if not st.exists:
        out.append(Check("pool", OK, f"{host.name} {lv.pool}", f"not defined yet: cms defines it over {path} "
                         "on the first spawn"))
    elif not st.active:
        out.append(Check("pool", WARN, f"{host.name} {lv.pool}", f"defined over {path} but not active",
                         f"virsh pool-start {lv.pool} (cms also starts it on the first spawn)"))
    elif st.available_bytes < minimum:
        out.append(Check("pool", FAIL, f"{host.name} {lv.pool}", f"{gib(st.available_bytes)} free over {path}; "
                         f"a new overlay needs {minimum // 2**20} MiB", f"free space in {path}"))
    else:
        out.append(Check("pool", OK, f"{host.name} {lv.pool}", f"active over {path}, "
                         f"{gib(st.available_bytes)} free of {gib(st.capacity_bytes)}"))
    if st.exists and st.path and st.path != lv.pool_path:
        out.append(Check("pool", WARN, f"{host.name} {lv.pool}", f"its directory is {st.path}, "
                         f"libvirt.pool_path says {lv.pool_path}", "make libvirt.pool_path name the pool's directory"))
    if local and not host.is_local_test:
        ok, found, free = writable_dir(path)
        if not ok:
            out.append(Check("pool", FAIL, f"{host.name} {path}", f"cannot hold overlays: {found}",
                             "make the directory writable, or point libvirt.pool_path (and the pool) elsewhere"))
        elif free < minimum:
            out.append(Check("pool", FAIL, f"{host.name} {path}", f"{found}, {gib(free)} free", "free space there"))
        else:
            out.append(Check("pool", OK, f"{host.name} {path}", f"{found}, {gib(free)} free"))
    return out


def check_remote_image(host: Host, files: list[str]) -> list[Check]:
    out = []
    for f in files:
        if probe.volume_known(host, f):
            out.append(Check("image", OK, f"{host.name} {f}", "known to libvirt there"))
        else:
            out.append(Check("image", FAIL, f"{host.name} {f}", "libvirt there knows no volume at this path",
                             "copy it there and refresh the pool over its directory (site.yml's image play does both)"))
    return out


@dataclass
class HostRun:
    """One host's checks, run in their own thread; `out` fills as they finish."""
    name: str
    uri: str
    out: list[Check] = field(default_factory=list)
    step: str = "libvirt"
    connected: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def _unreachable_fix(uri: str) -> str:
    if uri.startswith("qemu:///"):
        return "start libvirtd (scripts/bootstrap.sh does), then run cms doctor again"
    if "+ssh" in uri:
        return "check that this machine's root can ssh to the host with its key and that libvirtd runs there"
    return "check the host's uri in the configuration and that libvirtd listens there"


def host_checks(run: HostRun, cfg: cms_config.Config, skip: set[str], files: list[str],
                 progress: Callable[[str], None]) -> None:
    host = Host(run.name, run.uri, keepalive_interval=0)
    local = is_local_uri(run.uri)
    try:
        try:
            v = probe.versions(host)
        finally:
            run.connected.set()
        run.out.append(Check("libvirt", OK, run.name, f"{run.uri} answers: libvirt {v.library} here, daemon "
                             f"{v.daemon}, hypervisor {v.hypervisor}, host {v.hostname}"))
        run.step = "domain-type"
        if host.is_local_test:
            dcheck, dtype = Check("domain-type", OK, run.name, "libvirt's test driver: domains of type test"), "test"
        else:
            dcheck, dtype = check_domain_type(host, cfg.libvirt.domain_type, local)
        run.out.append(dcheck)
        if "define" not in skip:
            run.step = "define"
            run.out.append(check_define(host, dtype, local, progress))
        if "pool" not in skip:
            run.step = "pool"
            run.out.extend(check_pool(host, cfg, local))
        if "image" not in skip and not local:
            run.step = "image"
            run.out.extend(check_remote_image(host, files))
    except errors.VirtError as exc:
        if not run.out:     # the connection itself
            reason = str(exc).replace(f"cannot connect to {run.uri}: ", "")
            run.out.append(Check("libvirt", FAIL, run.name, f"{run.uri} does not answer: {reason}",
                                 _unreachable_fix(run.uri)))
        else:
            run.out.append(Check(run.step, FAIL, run.name, f"{run.uri}: {exc}", _unreachable_fix(run.uri)
                                 if isinstance(exc, errors.HostUnreachable) else "see libvirtd's log on the host"))
    finally:
        host.close()


def start(name: str, uri: str, cfg: cms_config.Config, skip: set[str], files: list[str],
          progress: Callable[[str], None]) -> HostRun:
    run = HostRun(name, uri)
    run.thread = threading.Thread(target=host_checks, args=(run, cfg, skip, files, progress),
                                  name=f"doctor-{name}", daemon=True)
    run.thread.start()
    return run


def collect(run: HostRun, started: float, timeout: float) -> list[Check]:
    """What the host's checks found: the URI gets `timeout` seconds from `started` to
    answer, the checks after that HOST_BUDGET_S more. A thread still waiting on libvirt
    past them is left behind (a daemon thread; the command is about to end)."""
    if not run.connected.wait(max(0.0, started + timeout - time.monotonic())):
        return [Check("libvirt", FAIL, run.name, f"{run.uri} did not answer within {timeout:g} s",
                      _unreachable_fix(run.uri))]
    assert run.thread is not None
    run.thread.join(max(0.0, started + timeout + HOST_BUDGET_S - time.monotonic()))
    out = list(run.out)
    if run.thread.is_alive():
        out.append(Check(run.step, FAIL, run.name, f"no answer from {run.uri} within {HOST_BUDGET_S:g} s",
                         "see libvirtd's log on the host"))
    return out
