"""The connection-owning side of cms's libvirt layer: ``Host``, one per libvirt URI.

A Host connects lazily, checks the link with a cheap call before use, reconnects when the
link broke, and registers the close callback and domain lifecycle events best effort (a
driver without events, like ``test:///``, breaks nothing). Its calls go through one call
object (``host.calls``, cms.virt.calls: errors translated once, every call observed), which
it hands to what it composes, one helper per concern:
  host.storage    cms.virt.storage    pools and volumes (overlay clones of the golden image)
  host.domains    cms.virt.domains    define, clone-and-start, remove
  host.stats      cms.virt.stats      the owned-domain listing and bulk stats (one getAllDomainStats)
  host.migration  cms.virt.migration  live migration
and ``host.guest(name)`` gives a ``Guest`` (cms.virt.guest): one domain's own operations.
None of them holds the Host; the imports go one way, from here down.

``libvirt`` is a module attribute so tests may swap it; libvirt's own test driver
(``test:///ABS/PATH/node.xml``) is the cheaper fake for most tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

import libvirt

from cms import errors
from cms.virt.calls import Calls, observe
from cms.virt.domains import Domains
from cms.virt.guest import Guest
from cms.virt.migration import Migration
from cms.virt.states import event_name
from cms.virt.stats import Stats
from cms.virt.storage import Storage

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 1.0      # how long close() waits for a call or a connect in progress


# --- the event loop: one native thread per process, callbacks only queue work ------------

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def start_event_loop() -> bool:
    """Register libvirt's default event loop and run it in a daemon thread (once).

    Must happen before connections are opened for keepalives and events to work. Returns
    False when it cannot be set up; cms then runs without events (they are best effort).
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return True
        try:
            libvirt.virEventRegisterDefaultImpl()
        except libvirt.libvirtError as exc:
            log.warning("libvirt event loop unavailable: %s", exc)
            return False

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # keep the loop alive; a failure here is transient
                    time.sleep(0.1)

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()
        return True


@dataclass(frozen=True)
class DomainEvent:
    host: str
    name: str
    uuid: str
    event: str
    detail: int
    at: float


@dataclass(frozen=True)
class Capacity:
    """What a host has, read through libvirt."""
    host: str
    cpus: int
    mhz: int
    memory_mib: int
    free_memory_mib: int
    pool_capacity_bytes: int
    pool_available_bytes: int
    hostname: str


def is_local_uri(uri: str) -> bool:
    """A URI naming no remote machine (qemu:///system, qemu+unix:///..., test:///...)."""
    return "://" in uri and uri.split("://", 1)[1].startswith("/")


def this_machine_is_a_vm() -> bool:
    """Whether this machine is itself a virtual machine (the CPU's `hypervisor` flag), where
    nested KVM guests hang. When /proc/cpuinfo cannot be read: yes, the safe answer (TCG)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and " hypervisor" in line for line in fh)
    except OSError:
        return True


def resolve_domain_type(setting: str, uri: str, capabilities_xml: str = "") -> str:
    """kvm / qemu as configured; `auto` picks kvm only where it can actually run.

    On these machines /dev/kvm exists but nested KVM spins forever, so `auto` also asks
    whether this machine is itself a VM (the `hypervisor` CPU flag) for a local URI.
    For a remote URI it trusts the host's capabilities.
    """
    if setting in ("kvm", "qemu"):
        return setting
    if is_local_uri(uri):
        return "kvm" if os.path.exists("/dev/kvm") and not this_machine_is_a_vm() else "qemu"
    return "kvm" if "type='kvm'" in capabilities_xml or 'type="kvm"' in capabilities_xml else "qemu"


class Host:
    """One hypervisor host, reached through one libvirt URI."""

    def __init__(self, name: str, uri: str, *, keepalive_interval: int = 5,
                 events: "queue.Queue[DomainEvent] | None" = None) -> None:
        self.name = name
        self.uri = uri
        self.keepalive_interval = keepalive_interval
        self.events = events
        self._conn: Any = None
        self._lock = threading.RLock()
        self._broken = False
        self.is_local_test = uri.startswith("test://")
        self.calls = Calls(name, self.conn, self._link_down)
        self.storage = Storage(self.calls, uri, self.is_local_test)
        self.stats = Stats(self.calls)
        self.calls.owner_changed = self.stats.forget_owner
        self.domains = Domains(self.calls, self.storage)
        self.migration = Migration(self.calls)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.uri!r})"

    # -- connection ---------------------------------------------------------------------

    def conn(self) -> Any:
        """The live connection, opened or reopened as needed."""
        with self._lock:
            if self._conn is not None and not self._broken:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
            if self._conn is not None:
                log.warning("libvirt link to %s (%s) is down; reconnecting", self.name, self.uri)
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
            t0 = time.monotonic()
            try:
                c = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                observe("virConnectOpen", time.monotonic() - t0, exc.get_error_code())
                raise errors.HostUnreachable(f"cannot connect to {self.uri}: {exc.get_error_message()}",
                                             self.name) from None
            observe("virConnectOpen", time.monotonic() - t0, None)
            if c is None:
                raise errors.HostUnreachable(f"cannot connect to {self.uri}", self.name)
            self._broken = False
            self._conn = c
            self.stats.forget_owners()
            self._register_best_effort(c)
            return c

    def _register_best_effort(self, c: Any) -> None:
        def on_close(_conn: Any, reason: int, _opaque: Any) -> None:
            log.warning("libvirt closed the link to %s (reason %s)", self.name, reason)
            self._broken = True

        with contextlib.suppress(libvirt.libvirtError, AttributeError):
            c.registerCloseCallback(on_close, None)
        if self.keepalive_interval and _event_thread is not None:
            with contextlib.suppress(libvirt.libvirtError):
                c.setKeepAlive(self.keepalive_interval, 3)
        if self.events is not None and _event_thread is not None:
            def on_lifecycle(_c: Any, dom: Any, event: int, detail: int, _o: Any) -> None:
                # Runs on the event thread: only queue it.
                with contextlib.suppress(Exception):
                    assert self.events is not None
                    self.events.put_nowait(DomainEvent(self.name, dom.name(), dom.UUIDString(),
                                                       event_name(event), detail, time.time()))

            with contextlib.suppress(libvirt.libvirtError):
                c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)

    def close(self) -> None:
        # A connect to a host whose link is down holds the lock for as long as TCP takes:
        # closing does not wait for it (that attempt ends, or fails, on its own).
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            log.warning("libvirt link to %s (%s): a connect still hangs; not waiting for it to close", self.name,
                        self.uri)
            return
        try:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
        finally:
            self._lock.release()

    def _link_down(self) -> None:
        """A call found the link broken: the next one reconnects."""
        self._broken = True

    def ping(self) -> bool:
        try:
            with self.calls("virConnectGetLibVersion") as c:
                c.getLibVersion()
            return True
        except errors.VirtError:
            return False

    # -- domains ------------------------------------------------------------------------

    def guest(self, name: str) -> Guest:
        """The domain named so; NotFound when there is none."""
        return Guest.lookup(self.calls, name)

    def exists(self, name: str) -> bool:
        try:
            self.guest(name)
            return True
        except errors.NotFound:
            return False

    # -- capacity -----------------------------------------------------------------------

    def capacity(self, pool: str | None = None) -> Capacity:
        with self.calls("virNodeGetInfo", f"pool {pool}" if pool else "") as c:
            info = c.getInfo()
            free = c.getFreeMemory()
            hostname = c.getHostname()
            cap = avail = 0
            if pool:
                with contextlib.suppress(libvirt.libvirtError):
                    p = c.storagePoolLookupByName(pool)
                    if p.isActive() and not self.is_local_test:  # the test driver's refresh resets its figures
                        p.refresh(0)
                    _, cap, _, avail = p.info()
        return Capacity(self.name, cpus=int(info[2]), mhz=int(info[3]), memory_mib=int(info[1]),
                        free_memory_mib=int(free) // (1024 * 1024), pool_capacity_bytes=int(cap),
                        pool_available_bytes=int(avail), hostname=hostname)

    def node_cpu_times(self) -> tuple[int, int] | None:
        """The node's CPU time, busy and total ns over all CPUs (virNodeGetCPUStats), or None
        where libvirt has no such figures (the test driver; some hosts refuse it)."""
        try:
            with self.calls("virNodeGetCPUStats") as c:
                st = c.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        except errors.HostUnreachable:
            raise
        except errors.VirtError:
            return None
        busy = sum(int(st.get(k, 0)) for k in ("kernel", "user"))
        total = busy + sum(int(st.get(k, 0)) for k in ("idle", "iowait"))
        return (busy, total) if total > 0 else None

    def capabilities(self) -> str:
        with self.calls("virConnectGetCapabilities") as c:
            return c.getCapabilities()

    def domain_type(self, setting: str) -> str:
        if setting != "auto":
            return setting
        caps = "" if is_local_uri(self.uri) else self.capabilities()
        return resolve_domain_type(setting, self.uri, caps)

    def new_uuid(self) -> str:
        return str(uuidlib.uuid4())
