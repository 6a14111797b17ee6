"""What runs on one host, read in ONE getAllDomainStats call: the owned-domain listing.

A helper each ``cms.virt.host.Host`` composes (``host.stats``). vdsm and virt-manager read all domains' stats in one
bulk call per tick, keyed by UUID; so does cms. The listing carries each domain's stats
record and the call's time, so a monitoring tick, placement and a spawn's port choice all
work from the same listing instead of asking libvirt again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import libvirt

from cms.virt import xml as vxml
from cms.virt.calls import Calls
from cms.virt.states import ALIVE_STATES, SHUTOFF, SHUTOFF_SAVED, STATE_NAMES, state_name

_UNREAD = object()

STATS_FLAGS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
               | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_BALLOON)


@dataclass(frozen=True)
class OwnedDomain:
    """A domain carrying cms's <metadata>: enough to rebuild cms's view after a restart."""
    host: str
    name: str
    uuid: str
    state: str
    vcpus: int
    memory_mib: int         # the balloon's size less the guest kernel's share (meta.kernel_mib): the type's terms
    meta: vxml.OwnerMeta
    # The listing's own bulk stats record (libvirt's flat dict) and the monotonic midpoint
    # of that call: a monitoring tick computes utilization from these rather than asking
    # libvirt a second time.
    stats: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    stats_at: float = field(default=0.0, compare=False, repr=False)
    reason: int = field(default=0, compare=False)     # libvirt's state reason

    @property
    def given_mib(self) -> int:
        """What its host gives it now: memory_mib plus its guest kernel's share."""
        return self.memory_mib + self.meta.kernel_mib

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    @property
    def saved(self) -> bool:
        """Shut off by a managed save: the next start restores its RAM."""
        return self.state == STATE_NAMES[SHUTOFF] and self.reason == SHUTOFF_SAVED


class Stats:
    """One host's owned-domain listing and bulk stats, and the cache of owner records it keeps."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls
        self._meta_cache: dict[str, Any] = {}

    def forget_owner(self, uuid: str) -> None:
        """Drop the cached <metadata> of one domain (it was rewritten): the hook
        ``Calls.owner_changed`` that Guest.set_owner calls."""
        self._meta_cache.pop(uuid, None)

    def forget_owners(self) -> None:
        """Drop every cached <metadata> (a new connection: the domains may have changed meanwhile)."""
        self._meta_cache.clear()

    def owned_domains(self, group: str | None = None) -> list[OwnedDomain]:
        """Every domain carrying cms's metadata (optionally of one group), defined or running.

        One getAllDomainStats call (the same one as bulk_stats) gives every domain's state,
        vCPUs, memory and CPU counters; the owner metadata is read once per UUID and cached
        (cms rewrites it only through Guest.set_owner, which drops the cached copy). So a
        monitoring tick over 1,000 domains costs one round trip: each OwnedDomain carries
        its stats record and the call's time.
        """
        out = []
        with self._calls("virConnectGetAllDomainStats", "domains") as c:
            before = time.monotonic()
            records = c.getAllDomainStats(STATS_FLAGS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
            at = (before + time.monotonic()) / 2
            seen = set()
            for dom, stats in records:
                u = dom.UUIDString()
                seen.add(u)
                meta = self._meta_cache.get(u, _UNREAD)
                if meta is _UNREAD:
                    try:
                        meta = vxml.parse_metadata(
                            dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, vxml.METADATA_NS, 0))
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                            continue  # vanished meanwhile; ask again if it comes back
                        meta = None  # not ours: no metadata in our namespace
                    self._meta_cache[u] = meta
                if meta is None or (group is not None and meta.group != group):
                    continue
                vcpus = stats.get("vcpu.current")
                mem_kib = stats.get("balloon.current")
                if vcpus is None or mem_kib is None:  # inactive domains report no live figures
                    try:
                        _st, _maxmem, mem_kib, vcpus, _cpu = dom.info()
                    except libvirt.libvirtError:
                        continue
                state = state_name(stats.get("state.state", 0))
                mib = max(0, int(mem_kib) // 1024 - meta.kernel_mib)   # in the type's terms
                out.append(OwnedDomain(self._calls.host, dom.name(), u, state, int(vcpus), mib, meta,
                                       stats=dict(stats, name=dom.name()), stats_at=at,
                                       reason=int(stats.get("state.reason", 0) or 0)))
            for u in set(self._meta_cache) - seen:
                del self._meta_cache[u]
        return sorted(out, key=lambda d: (d.meta.created, d.name))

    def bulk_stats(self, uuids: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """State, CPU, vCPU and balloon stats of all domains in ONE getAllDomainStats call.

        Keyed by UUID; restricted to `uuids` when given. Each value is libvirt's flat dict
        (``cpu.time`` ns, ``vcpu.N.time``, ``balloon.current`` KiB, ``state.state``…) with
        ``name`` added.
        """
        with self._calls("virConnectGetAllDomainStats", "domain stats") as c:
            # NOWAIT: stats that need a busy QEMU's monitor (vCPU halt state, balloon) are
            # left out rather than waited for. A call held up for a second would put the
            # cpu.time reading and the caller's clock reading a second apart, and the
            # utilization computed from them would spike far above 100 %.
            records = c.getAllDomainStats(STATS_FLAGS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
            out = {}
            for dom, stats in records:
                u = dom.UUIDString()
                if uuids is not None and u not in uuids:
                    continue
                stats = dict(stats)
                stats["name"] = dom.name()
                out[u] = stats
            return out
