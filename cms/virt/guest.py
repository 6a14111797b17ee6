"""``Guest``: one libvirt domain and what can be done to it (like Nova's ``Guest``).

A Guest is got from ``Host.guest(name)`` (a lookup), used for a few calls and dropped: it
holds the domain handle and its host's call object (cms.virt.calls), never a state of its
own and never the Host. Every call goes through the call object, so errors are translated
and calls observed in the one place.

Parking a booted guest (the warm pool) uses three of libvirt's levers:
  ``suspend`` / ``resume``        RAM stays resident, no CPU used while paused;
  ``managed_save`` / ``start``    RAM goes to disk; the next start restores it;
  ``shutdown`` / ``start``        a plain power-off; the next start is a cold boot.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import libvirt

from cms import errors
from cms.virt import xml as vxml
from cms.virt.calls import Calls
from cms.virt.states import state_name


class Guest:
    def __init__(self, calls: Calls, dom: Any) -> None:
        self.calls = calls
        self._dom = dom
        self.name: str = dom.name()

    @classmethod
    def lookup(cls, calls: Calls, name: str) -> "Guest":
        """The domain named so on the calls' host; NotFound when there is none."""
        with calls("virDomainLookupByName", f"domain {name}") as c:
            return cls(calls, c.lookupByName(name))

    def __repr__(self) -> str:
        return f"Guest({self.calls.host!r}, {self.name!r})"

    @contextlib.contextmanager
    def _call(self, op: str) -> Iterator[Any]:
        with self.calls(op, f"domain {self.name}"):
            yield self._dom

    def _do(self, op: str, fn: Callable[[Any], Any]) -> Any:
        """One call on the domain handle, named ``op`` (libvirt's API name) for errors and timings."""
        with self._call(op) as d:
            return fn(d)

    # -- state ----------------------------------------------------------------------------

    @property
    def uuid(self) -> str:
        return self._do("virDomainGetUUIDString", lambda d: d.UUIDString())

    def state(self) -> str:
        with self._call("virDomainGetState") as d:
            st, _reason = d.state()
        return state_name(st)

    def is_active(self) -> bool:
        return bool(self._do("virDomainIsActive", lambda d: d.isActive()))

    def xml(self) -> str:
        return self._do("virDomainGetXMLDesc", lambda d: d.XMLDesc(0))

    def disk_paths(self) -> list[str]:
        return vxml.domain_disk_paths(self.xml())

    # -- power ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start it: a cold boot, or a restore when it has a managed-save image."""
        self._do("virDomainCreate", lambda d: d.create())

    def shutdown(self) -> None:
        """Ask the guest to power off (ACPI); returns at once."""
        self._do("virDomainShutdown", lambda d: d.shutdown())

    def power_off(self, graceful_timeout: float = 0.0, wait: Callable[[float], Any] = time.sleep) -> None:
        """Shut it down: by ACPI first when a timeout is given (waiting with `wait`, which a
        daemon makes its stop event's), then pull the plug if it still runs."""
        if graceful_timeout > 0 and self.is_active():
            with contextlib.suppress(errors.VirtError):
                self.shutdown()
            deadline = time.monotonic() + graceful_timeout
            while self.is_active() and time.monotonic() < deadline:
                wait(0.2)
        self.destroy()

    def destroy(self) -> None:
        """Pull the plug. Not an error if it is already off."""
        with self._call("virDomainDestroy") as d:
            if d.isActive():
                d.destroy()

    def undefine(self) -> None:
        """Forget its definition, with any managed-save image and snapshot metadata."""
        with self._call("virDomainUndefineFlags") as d:
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            try:
                d.undefineFlags(flags)
            except libvirt.libvirtError:
                d.undefine()

    # -- parking ----------------------------------------------------------------------------

    def suspend(self) -> None:
        self._do("virDomainSuspend", lambda d: d.suspend())

    def resume(self) -> None:
        self._do("virDomainResume", lambda d: d.resume())

    def managed_save(self) -> None:
        """Save its RAM to disk and stop it; the next ``start`` restores it."""
        self._do("virDomainManagedSave", lambda d: d.managedSave(0))

    def has_managed_save(self) -> bool:
        return bool(self._do("virDomainHasManagedSaveImage", lambda d: d.hasManagedSaveImage(0)))

    def remove_managed_save(self) -> None:
        with self._call("virDomainManagedSaveRemove") as d:
            if d.hasManagedSaveImage(0):
                d.managedSaveRemove(0)

    # -- metadata ---------------------------------------------------------------------------

    def set_owner(self, meta: vxml.OwnerMeta) -> None:
        """Rewrite cms's <metadata> element, live (when running) and in the persistent config."""
        with self._call("virDomainSetMetadata") as d:
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if d.isActive() else 0)
            d.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, vxml.render_metadata(meta, prefixed=False),
                          vxml.METADATA_KEY,
                          vxml.METADATA_NS, flags)
            self.calls.owner_changed(d.UUIDString())

    # -- vertical scaling -------------------------------------------------------------------

    def limits(self) -> tuple[int, int]:
        """The most vCPUs and MiB the domain was defined with: a live resize stays within them."""
        with self._call("virDomainGetVcpusFlags") as d:
            vmax = d.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_MAXIMUM | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            return int(vmax), int(d.maxMemory()) // 1024

    def _live_then_config(self, op: str, setter: str, value: int, live: bool) -> None:
        """Apply a change to the running domain (when it runs), then to its persistent config.

        Two calls rather than AFFECT_LIVE | AFFECT_CONFIG in one: some drivers (the test
        driver among them) refuse the two flags together. The live change goes first, as it
        is the one that can be refused (the guest's balloon, hot-plug limits); the config is
        then made to match it.
        """
        with self._call(op) as d:
            if live and d.isActive():
                getattr(d, setter)(value, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            getattr(d, setter)(value, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def set_vcpus(self, vcpus: int, live: bool = True) -> None:
        """Change the vCPU count, live when running (up to the domain's maximum) and in its config."""
        self._live_then_config("virDomainSetVcpusFlags", "setVcpusFlags", vcpus, live)

    def set_memory(self, memory_mib: int, live: bool = True) -> None:
        """Change the current memory through the balloon (up to the domain's maximum)."""
        self._live_then_config("virDomainSetMemoryFlags", "setMemoryFlags", memory_mib * 1024, live)

    # -- networking -------------------------------------------------------------------------

    def lease_address(self) -> str | None:
        """The IPv4 address a libvirt network's DHCP gave the domain, if any yet."""
        with self._call("virDomainInterfaceAddresses") as d:
            try:
                ifaces = d.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return None  # not running
                raise
        for iface in (ifaces or {}).values():
            for addr in iface.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return str(addr["addr"])
        return None
