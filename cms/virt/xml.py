"""Pure rendering and parsing of the libvirt XML cms uses: no libvirt import, no I/O.

Every domain cms owns carries, in its <metadata>, one element in cms's namespace:

    <cms:owner xmlns:cms="https://cms.invalid/xmlns/owner/1">
      <group>web</group>            replica group ("" for a VM made through the API)
      <role>replica</role>          replica | vm
      <created>1763700000.25</created>  epoch seconds
      <port>20001</port>            service port as reached from the controller
      <guest-port>8080</guest-port> service port inside the guest
      <vmid>0</vmid>                the API's id for the VM (0 for replicas)
      <instance-type>0</instance-type>
      <image>golden</image>
      <warm>False</warm>            True: a warm-pool member (never announced, never counted)
      <memory-mib>512</memory-mib>  the memory cms set the balloon to, in the type's terms (0: not recorded)
      <kernel-mib>43</kernel-mib>   what the domain has above that: its guest kernel's share (kernel_share_mib)
    </cms:owner>

That element is all cms needs to rebuild its view of the fleet from libvirt after a
restart, so nothing about ownership lives only in cms's memory or database.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields
from xml.sax.saxutils import escape, quoteattr

METADATA_NS = "https://cms.invalid/xmlns/owner/1"
METADATA_KEY = "cms"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class OwnerMeta:
    group: str = ""
    role: str = "replica"
    created: float = 0.0
    port: int = 0
    guest_port: int = 8080
    vmid: int = 0
    instance_type: int = 0
    image: str = ""
    warm: bool = False
    term: int = 0          # the leader's term it was made or last changed under (cms.leadership)
    memory_mib: int = 0     # the balloon's target in the type's terms: the guest's MemTotal once its driver acts
    kernel_mib: int = 0     # MiB the domain has above memory_mib and its maximum (0: none, a VM made before)


_META_TAGS = {f.name: f.name.replace("_", "-") for f in fields(OwnerMeta)}


def render_metadata(meta: OwnerMeta, prefixed: bool = True) -> str:
    """The <cms:owner> element as a domain's <metadata> holds it; ``prefixed=False``: the bare
    <owner> element virDomainSetMetadata takes (it adds the namespace from its own arguments)."""
    parts = "".join(f"<{tag}>{escape(str(getattr(meta, name)))}</{tag}>" for name, tag in _META_TAGS.items())
    if not prefixed:
        return f"<owner>{parts}</owner>"
    return f'<{METADATA_KEY}:owner xmlns:{METADATA_KEY}="{METADATA_NS}">{parts}</{METADATA_KEY}:owner>'


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no", ""):
        return False
    raise ValueError(raw)


def parse_metadata(text: str) -> OwnerMeta:
    """Read an <owner> element back (libvirt returns it without the prefix)."""
    root = ET.fromstring(text)
    values: dict[str, object] = {}
    for f in fields(OwnerMeta):
        el = root.find(_META_TAGS[f.name])
        if el is None or el.text is None:
            continue
        raw = el.text.strip()
        try:
            values[f.name] = {"int": int, "float": float, "bool": _parse_bool}.get(str(f.type), str)(raw)
        except ValueError:
            continue  # a hand-edited field that no longer parses keeps its default
    return OwnerMeta(**values)  # type: ignore[arg-type]


# What the golden image's kernel keeps of a domain's memory for itself, out of MemTotal:
# its code and data, the page map of the whole maximum (struct page, made for whole 128-MiB
# sections), the per-CPU areas of every possible vCPU, and 64 MiB of bounce buffers once a
# pc machine puts memory above 4 GiB (it does from 3.5 GiB). Measured with the image's
# cloud kernel, pc machine, TCG, MemTotal against <memory> D MiB and V vCPUs at most: 35.4
# MiB kept at D=128, 37.6 at 256, 42.0 at 512 (current 256 or 512 alike), 50.8 at 1024,
# 68.3 at 2048 (V=1); +0.27 at V=2, +1.7 at V=8; 95.3 at D=3500; 169.7 at D=4096, V=8.
# Within 1 MiB of (an under-estimate leaves MemTotal that much below the type):
KERNEL_FIXED_MIB = 33.25
KERNEL_PER_MIB = 35 / 2048           # of D in whole sections: the page map and the kernel's page tables
SECTION_MIB = 128
KERNEL_PER_VCPU_MIB = 0.25           # per possible vCPU beyond the first
BOUNCE_FROM_MIB, BOUNCE_MIB = 3584, 64


def kernel_kept_mib(memory_mib: int, max_vcpus: int = 1) -> float:
    """What the guest kernel keeps of a domain with `memory_mib` at most (<memory>)."""
    sections = -(-memory_mib // SECTION_MIB) * SECTION_MIB
    return (KERNEL_FIXED_MIB + KERNEL_PER_MIB * sections + KERNEL_PER_VCPU_MIB * max(0, max_vcpus - 1)
            + (BOUNCE_MIB if memory_mib >= BOUNCE_FROM_MIB else 0))


def kernel_share_mib(max_memory_mib: int, max_vcpus: int = 1) -> int:
    """The whole MiB cms gives a VM above its type, so its guest's MemTotal is its type.

    A VM of `max_memory_mib` at most (in the type's terms) is defined with that plus this
    share, and its balloon set to its size plus this share; the kernel keeps the share
    (computed for the domain's real maximum, share included), so MemTotal is the size to
    within 1 MiB above, at any size up to the maximum. Recorded as the VM's <kernel-mib>:
    what cms reads back is the figure it added, whatever this function says later.
    """
    share = math.ceil(kernel_kept_mib(max_memory_mib, max_vcpus))
    while share < kernel_kept_mib(max_memory_mib + share, max_vcpus):
        share = math.ceil(kernel_kept_mib(max_memory_mib + share, max_vcpus))
    return share


def vm_share_mib(vcpus: int, memory_mib: int, max_vcpus: int = 0, max_memory_mib: int = 0) -> int:
    """The share a VM of this size and these maxima (0: its size) is given: what placement
    charges for it and what its domain is defined with, from one computation."""
    return kernel_share_mib(max(max_memory_mib, memory_mib), max(max_vcpus, vcpus))


@dataclass(frozen=True)
class DomainSpec:
    """Everything that decides a domain's XML. Built by the caller from the config."""
    name: str
    uuid: str
    vcpus: int
    memory_mib: int             # what the domain is given (a VM's type plus its kernel share)
    disk_path: str
    meta: OwnerMeta
    domain_type: str = "kvm"
    max_vcpus: int = 0          # 0: same as vcpus; more leaves room for vertical scaling
    max_memory_mib: int = 0     # 0: same as memory_mib; more leaves balloon room (share included)
    machine: str = "pc"
    kernel: str = ""            # direct kernel boot when set, else the disk's bootloader
    initrd: str = ""
    cmdline: str = ""
    network_mode: str = "user"  # user | libvirt | none
    network: str = "default"
    forward_address: str = "127.0.0.1"
    host_port: int = 0
    guest_port: int = 8080
    serial_log: str = ""
    extra_devices: tuple[str, ...] = field(default=())


def render_domain(s: DomainSpec) -> str:
    if not NAME_RE.match(s.name):
        raise ValueError(f"bad domain name {s.name!r}: letters, digits, '_', '.', '-' only, at most 63")
    max_vcpus = max(s.max_vcpus, s.vcpus)
    max_mem = max(s.max_memory_mib, s.memory_mib)
    machine = f" machine={quoteattr(s.machine)}" if s.machine else ""
    os_lines = [f"<type arch='x86_64'{machine}>hvm</type>"]
    if s.kernel:
        os_lines.append(f"<kernel>{escape(s.kernel)}</kernel>")
        if s.initrd:
            os_lines.append(f"<initrd>{escape(s.initrd)}</initrd>")
        cmdline = " ".join(p for p in (s.cmdline, f"systemd.hostname={s.name}") if p)
        os_lines.append(f"<cmdline>{escape(cmdline)}</cmdline>")
    else:
        os_lines.append("<boot dev='hd'/>")

    devices = [
        "<disk type='file' device='disk'>"
        "<driver name='qemu' type='qcow2' cache='unsafe' discard='unmap'/>"
        f"<source file={quoteattr(s.disk_path)}/><target dev='vda' bus='virtio'/></disk>",
    ]
    qemu_args: list[str] = []
    if s.network_mode == "libvirt":
        devices.append(f"<interface type='network'><source network={quoteattr(s.network)}/>"
                       "<model type='virtio'/></interface>")
    elif s.network_mode == "user":
        # libvirt 9.0 has no port forward for user networking (passt is refused), so the
        # NIC goes on QEMU's own command line. Its PCI slot is fixed: without it the NIC
        # takes slot 2 and collides with the balloon.
        fwd = f",hostfwd=tcp:{s.forward_address}:{s.host_port}-:{s.guest_port}" if s.host_port else ""
        qemu_args += ["-netdev", f"user,id=cmsnet0{fwd}",
                      "-device", "virtio-net-pci,netdev=cmsnet0,addr=0x9"]
    elif s.network_mode != "none":
        raise ValueError(f"unknown network mode {s.network_mode!r}")
    log = f"<log file={quoteattr(s.serial_log)} append='off'/>" if s.serial_log else ""
    devices.append(f"<serial type='pty'>{log}<target port='0'/></serial>")
    devices.append("<console type='pty'><target type='serial' port='0'/></console>")
    devices.append("<memballoon model='virtio'><stats period='2'/></memballoon>")
    devices.extend(s.extra_devices)

    ns = f" xmlns:qemu='{QEMU_NS}'" if qemu_args else ""
    qemu_cl = ""
    if qemu_args:
        qemu_cl = "<qemu:commandline>" + "".join(f"<qemu:arg value={quoteattr(a)}/>" for a in qemu_args) + "</qemu:commandline>"
    return (
        f"<domain type={quoteattr(s.domain_type)}{ns}>"
        f"<name>{escape(s.name)}</name><uuid>{escape(s.uuid)}</uuid>"
        f"<metadata>{render_metadata(s.meta)}</metadata>"
        f"<memory unit='MiB'>{max_mem}</memory><currentMemory unit='MiB'>{s.memory_mib}</currentMemory>"
        f"<vcpu placement='static' current='{s.vcpus}'>{max_vcpus}</vcpu>"
        f"<os>{''.join(os_lines)}</os>"
        "<features><acpi/><apic/></features>"
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
        f"<devices>{''.join(devices)}</devices>"
        f"{qemu_cl}</domain>"
    )


def render_overlay_volume(name: str, backing_path: str, capacity_bytes: int, backing_format: str = "qcow2") -> str:
    """A qcow2 volume whose <backingStore> is the golden image: a copy-on-write linked clone."""
    return (
        "<volume type='file'>"
        f"<name>{escape(name)}</name>"
        f"<capacity unit='bytes'>{int(capacity_bytes)}</capacity>"
        "<allocation unit='bytes'>0</allocation>"
        "<target><format type='qcow2'/><permissions><mode>0600</mode></permissions></target>"
        f"<backingStore><path>{escape(backing_path)}</path><format type={quoteattr(backing_format)}/></backingStore>"
        "</volume>"
    )


def render_dir_pool(name: str, path: str) -> str:
    return (f"<pool type='dir'><name>{escape(name)}</name>"
            f"<target><path>{escape(path)}</path><permissions><mode>0755</mode></permissions></target></pool>")


def qcow2_virtual_size(header: bytes) -> int:
    """The virtual disk size from a qcow2 header (bytes 24..31, big endian)."""
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        raise ValueError("not a qcow2 image")
    return int.from_bytes(header[24:32], "big")


_HOSTFWD_RE = re.compile(r"(hostfwd=tcp:)[^,'\"]*?:(\d+)(-:\d+)")
_OWNER_PORT_RE = re.compile(r"(<(?:\w+:)?owner\b[^>]*>.*?<port>)\d+(</port>)", re.S)


def retarget_forward(domain_xml: str, address: str, port: int) -> str:
    """The domain's XML with its user-mode port forward on `address`:`port` (and its owner
    record's port to match): the destination XML of a live migration to a host whose
    forwards listen elsewhere. An XML without a forward is returned unchanged."""
    out = _HOSTFWD_RE.sub(lambda m: f"{m.group(1)}{address}:{port}{m.group(3)}", domain_xml)
    if out != domain_xml:
        out = _OWNER_PORT_RE.sub(lambda m: f"{m.group(1)}{port}{m.group(2)}", out, count=1)
    return out


def domain_disk_paths(domain_xml: str) -> list[str]:
    root = ET.fromstring(domain_xml)
    return [src.get("file", "") for src in root.findall("./devices/disk/source") if src.get("file")]
