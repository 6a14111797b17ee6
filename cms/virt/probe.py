"""Read-mostly libvirt probes for `cms doctor` and the test suite's slow-define guard.

Functions over a ``Host`` rather than more Host methods: none of them is on the path that
makes or watches VMs. They call libvirt through the Host's call object (``host.calls``),
like every other libvirt call in cms: errors translated, calls observed.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from cms.virt.host import Host

# A throwaway domain's name: never a replica's (cms-<group>-...) nor an API VM's (cms-vm-N).
PROBE_PREFIX = "cms-probe-"


def dotted(version: int) -> str:
    """libvirt's packed version number (major * 1,000,000 + minor * 1,000 + micro) as text."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


@dataclass(frozen=True)
class Versions:
    library: str      # the libvirt library this process is linked with
    daemon: str       # the libvirt the daemon at the URI runs
    hypervisor: str   # the hypervisor driver's version (QEMU's for qemu:// URIs)
    hostname: str


def versions(host: Host) -> Versions:
    """Connect (HostUnreachable when the URI does not answer) and read the versions."""
    with host.calls("virConnectGetVersion") as c:
        return Versions(dotted(libvirt.getVersion()), dotted(c.getLibVersion()), dotted(c.getVersion()),
                        c.getHostname())


@dataclass(frozen=True)
class PoolStatus:
    name: str
    exists: bool
    active: bool = False
    path: str = ""                 # the pool's target directory, as libvirt has it
    capacity_bytes: int = 0        # 0 when inactive: libvirt knows the figures only then
    available_bytes: int = 0


def pool_status(host: Host, name: str) -> PoolStatus:
    """What libvirt says about a storage pool (refreshed first when active)."""
    with host.calls("virStoragePoolGetInfo", f"pool {name}") as c:
        try:
            p = c.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return PoolStatus(name, exists=False)
            raise
        path = ET.fromstring(p.XMLDesc(0)).findtext("target/path") or ""
        if not p.isActive():
            return PoolStatus(name, True, False, path)
        if not host.is_local_test:  # the test driver's refresh resets its figures
            with contextlib.suppress(libvirt.libvirtError):
                p.refresh(0)
        _state, capacity, _allocation, available = p.info()
        return PoolStatus(name, True, True, path, int(capacity), int(available))


def volume_known(host: Host, path: str) -> bool:
    """Whether libvirt on the host knows a volume at this path (how a remote host sees the
    golden image: through a pool over its directory)."""
    with host.calls("virStorageVolLookupByPath", f"volume {path}") as c:
        try:
            c.storageVolLookupByPath(path)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise


def throwaway_domain_xml(name: str, domain_type: str) -> str:
    """The smallest domain libvirt accepts: no disk, no devices, never started."""
    return (f"<domain type='{domain_type}'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")


def time_define(host: Host, domain_type: str) -> float:
    """Seconds libvirt took to define and undefine a throwaway domain.

    Defining makes libvirtd look its QEMU capabilities up, so this is where a capabilities
    cache that never stays valid shows (each lookup probes QEMU again, for a minute).
    """
    name = f"{PROBE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with host.calls("virDomainDefineXML", f"domain {name}") as c:
        t0 = time.monotonic()
        c.defineXML(throwaway_domain_xml(name, domain_type)).undefine()
        return time.monotonic() - t0
