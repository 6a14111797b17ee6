"""How cms calls libvirt: on a host's live connection, errors translated once, every call observed.

Every libvirt call in cms runs inside a ``Calls`` object's context (``with calls(op, obj) as
conn``): it translates whatever libvirt raises into cms.errors (``translate``, the one place;
nothing above cms.virt sees ``libvirt.libvirtError``) and reports the call to the process's
one observer (``set_call_observer``): libvirt's name for the call, its duration and the
libvirt error code or None. The default observer does nothing; an exporter sets one to
count calls, latencies and errors by code.

A Host makes one ``Calls`` and hands it to what it composes (storage, stats, domains,
migration) and to every ``Guest`` it looks up, so none of them holds the Host: the call
object knows only the host's name, how to get its live connection, and whom to tell when
the link went down or a domain's owner record changed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator

import libvirt

from cms import errors

log = logging.getLogger(__name__)

# libvirt prints every error on stderr by default; ours are raised as exceptions instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK,
}
_UNSUPPORTED = {libvirt.VIR_ERR_NO_SUPPORT, getattr(libvirt, "VIR_ERR_ARGUMENT_UNSUPPORTED", -1)}
_EXISTS = {libvirt.VIR_ERR_DOM_EXIST, getattr(libvirt, "VIR_ERR_STORAGE_VOL_EXIST", -1)}
_LINK_DOWN = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_SYSTEM_ERROR,
              libvirt.VIR_ERR_RPC, getattr(libvirt, "VIR_ERR_AUTH_FAILED", -1)}

# ... and what the link's end says in words under other codes (a keepalive timeout is an
# internal error to libvirt, but to cms the host did not answer).
_LINK_DOWN_WORDS = ("unable to connect", "end of file while reading", "keepalive timeout", "connection closed")


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
    if code in _LINK_DOWN or any(w in low for w in _LINK_DOWN_WORDS):
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


def observe(call: str, seconds: float, code: int | None) -> None:
    try:
        _observer(call, seconds, code)
    except Exception:  # noqa: BLE001 - an observer must never break a libvirt call
        log.exception("libvirt call observer failed")


def _nobody(_uuid: str) -> None:
    return None


class Calls:
    """One host's libvirt calls: ``with calls(op, obj) as conn: ...``.

    ``connect`` gives the live connection (opening or reopening it); ``link_down`` is told
    when a call found the link broken, so the next call reconnects. ``owner_changed(uuid)``
    is the hook a rewrite of a domain's owner record calls (the listing drops its cached
    copy); it does nothing until the Host plugs the listing's in.
    """

    def __init__(self, host: str, connect: Callable[[], Any], link_down: Callable[[], None]) -> None:
        self.host = host
        self.connect = connect
        self._link_down = link_down
        self.owner_changed: Callable[[str], None] = _nobody

    @contextlib.contextmanager
    def __call__(self, op: str, obj: str = "") -> Iterator[Any]:
        """Run one libvirt call (``op``, libvirt's API name; ``obj`` names its object for
        errors) on the live connection: what it raises is translated, and the call observed."""
        c = self.connect()
        t0 = time.monotonic()
        code: int | None = None
        try:
            yield c
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            err = translate(exc, self.host, obj)
            if isinstance(err, errors.HostUnreachable):
                self._link_down()
            raise err from None
        finally:
            observe(op, time.monotonic() - t0, code)
