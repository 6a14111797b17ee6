"""The connection-owning side of cms's libvirt layer: ``Host``, one per libvirt URI.

A Host connects lazily, checks the link with a cheap call before use, reconnects when the
link broke, and registers the close callback and domain lifecycle events best effort (a
driver without events, like ``test:///``, breaks nothing). Every libvirt failure is
translated here, once (``translate``), into cms.errors; nothing above cms.virt sees
``libvirt.libvirtError``.

Every libvirt call runs inside ``Host._call(op, obj)``, which also reports the call to the
process's one observer (``set_call_observer``): the call's libvirt name, its duration and
the libvirt error code or None. The default observer does nothing; an exporter sets one to
count calls, latencies and errors by code.

What a Host can do is split by concern, one module each, and mixed into the class here:
  cms.virt.storage    pools and volumes (overlay clones of the golden image)
  cms.virt.domains    define, clone-and-start, remove; ``guest(name)`` gives a ``Guest``
  cms.virt.guest      ``Guest``: one domain's own operations (start, park, resize, ...)
  cms.virt.stats      the owned-domain listing and bulk stats (one getAllDomainStats)
  cms.virt.migration  live migration

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
from typing import Any, Callable, Iterator

import libvirt

from cms import errors
from cms.virt.domains import Domains
from cms.virt.migration import Migration
from cms.virt.stats import Stats
from cms.virt.storage import Storage

log = logging.getLogger(__name__)

# libvirt prints every error on stderr by default; ours are raised as exceptions instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK,
}
_UNSUPPORTED = {libvirt.VIR_ERR_NO_SUPPORT, getattr(libvirt, "VIR_ERR_ARGUMENT_UNSUPPORTED", -1)}
_EXISTS = {libvirt.VIR_ERR_DOM_EXIST, getattr(libvirt, "VIR_ERR_STORAGE_VOL_EXIST", -1)}
_LINK_DOWN = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_SYSTEM_ERROR,
              libvirt.VIR_ERR_RPC, getattr(libvirt, "VIR_ERR_AUTH_FAILED", -1)}


def translate(exc: "libvirt.libvirtError", host: str, obj: str) -> errors.VirtError:
    """The one place a libvirt error becomes a cms error."""
    code = exc.get_error_code()
    msg = str(exc.get_error_message() or exc).strip()
    low = msg.lower()
    if code in _NOT_FOUND:
        return errors.NotFound(msg, host, obj)
    if code in _EXISTS or "already exists" in low:
        return errors.AlreadyExists(msg, host, obj)
    if "not enough free space" in low or "no space left" in low:
        return errors.NoSpace(msg, host, obj)
    if code in _LINK_DOWN or "unable to connect" in low or "end of file while reading" in low:
        return errors.HostUnreachable(msg, host, obj)
    if code in _UNSUPPORTED:
        return errors.Unsupported(msg, host, obj)
    return errors.VirtError(msg, host, obj)


# libvirt's symbolic error names (VIR_ERR_NO_DOMAIN), without its error levels, which reuse 0-2.
_ERROR_NAMES = {v: k for k, v in vars(libvirt).items()
                if k.startswith("VIR_ERR_") and isinstance(v, int) and k not in ("VIR_ERR_NONE", "VIR_ERR_WARNING",
                                                                                 "VIR_ERR_ERROR")}


def error_name(code: int) -> str:
    """libvirt's name for an error code, e.g. for a metric label; the number when unknown."""
    return _ERROR_NAMES.get(code, str(code))


# --- the call observer: one per process ------------------------------------------------

CallObserver = Callable[[str, float, "int | None"], None]


def _no_observer(_call: str, _seconds: float, _code: int | None) -> None:
    return None


_observer: CallObserver = _no_observer


def set_call_observer(fn: CallObserver | None) -> None:
    """Report every libvirt call to ``fn(call, seconds, error_code_or_None)`` (None: stop).

    ``call`` is libvirt's name for the API (``virDomainCreate``, ...): a bounded set, fit
    for a metric label. The observer runs on the calling thread, so it must be quick; an
    exception from it is logged and swallowed, never raised into cms.
    """
    global _observer
    _observer = fn or _no_observer


def _observe(call: str, seconds: float, code: int | None) -> None:
    try:
        _observer(call, seconds, code)
    except Exception:  # noqa: BLE001 - an observer must never break a libvirt call
        log.exception("libvirt call observer failed")


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


class Host(Storage, Domains, Stats, Migration):
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
        self._meta_cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.uri!r})"

    @property
    def is_local_test(self) -> bool:
        return self.uri.startswith("test://")

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
                _observe("virConnectOpen", time.monotonic() - t0, exc.get_error_code())
                raise errors.HostUnreachable(f"cannot connect to {self.uri}: {exc.get_error_message()}",
                                             self.name) from None
            _observe("virConnectOpen", time.monotonic() - t0, None)
            if c is None:
                raise errors.HostUnreachable(f"cannot connect to {self.uri}", self.name)
            self._broken = False
            self._conn = c
            self._meta_cache.clear()
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
                                                       EVENT_NAMES.get(event, str(event)), detail, time.time()))

            with contextlib.suppress(libvirt.libvirtError):
                c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _call(self, op: str, obj: str = "") -> Iterator[Any]:
        """Run one libvirt call (``op``, libvirt's API name) on the live connection.

        Translates whatever it raises, and reports the call and its outcome to the observer.
        """
        c = self.conn()
        t0 = time.monotonic()
        code: int | None = None
        try:
            yield c
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            err = translate(exc, self.name, obj)
            if isinstance(err, errors.HostUnreachable):
                self._broken = True
            raise err from None
        finally:
            _observe(op, time.monotonic() - t0, code)

    def ping(self) -> bool:
        try:
            with self._call("virConnectGetLibVersion") as c:
                c.getLibVersion()
            return True
        except errors.VirtError:
            return False

    # -- capacity -----------------------------------------------------------------------

    def capacity(self, pool: str | None = None) -> Capacity:
        with self._call("virNodeGetInfo", f"pool {pool}" if pool else "") as c:
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
            with self._call("virNodeGetCPUStats") as c:
                st = c.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        except errors.HostUnreachable:
            raise
        except errors.VirtError:
            return None
        busy = sum(int(st.get(k, 0)) for k in ("kernel", "user"))
        total = busy + sum(int(st.get(k, 0)) for k in ("idle", "iowait"))
        return (busy, total) if total > 0 else None

    def capabilities(self) -> str:
        with self._call("virConnectGetCapabilities") as c:
            return c.getCapabilities()

    def domain_type(self, setting: str) -> str:
        if setting != "auto":
            return setting
        caps = "" if is_local_uri(self.uri) else self.capabilities()
        return resolve_domain_type(setting, self.uri, caps)

    def new_uuid(self) -> str:
        return str(uuidlib.uuid4())
