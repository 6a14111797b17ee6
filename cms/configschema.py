"""The machinery under cms.config: TOML values checked against dataclasses, and address checks.

cms.config declares the schema (one frozen dataclass per section, each field made with
``setting``, which holds its range or choices); ``build`` walks a parsed TOML table against
such a dataclass: a field's annotation is the accepted TOML type, its metadata the range.
Every failure is a ConfigError with one message naming the file and the key. The value
checks below (libvirt URIs, HOST:PORT, ZeroMQ endpoints) return why a value is wrong, or None;
``cross_checks`` holds the rules between keys, run on the built Config.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import types
import typing
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

from cms.errors import ConfigError


def setting(default: Any, *, min: float | None = None, max: float | None = None,
       choices: tuple[str, ...] | None = None, one_or_many: bool = False, doc: str = "") -> Any:
    """A field of the schema. ``one_or_many`` (on a ``list[str]`` field): a single string in
    the file stands for a list of one, so the single-controller form stays a plain string."""
    md = {"min": min, "max": max, "choices": choices, "one_or_many": one_or_many, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=md)
    return field(default=default, metadata=md)


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is list:
        return "an array"
    if origin is dict or dataclasses.is_dataclass(t):
        return "a table"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(t, str(t))


def _convert(value: Any, t: Any, key: str, src: str) -> Any:
    origin = typing.get_origin(t)
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {key} must be {_type_name(t)}, not {type(value).__name__}")
        return build(t, value, key, src)
    if origin is list:
        (item_t,) = typing.get_args(t)
        if not isinstance(value, list):
            raise ConfigError(f"{src}: {key} must be {_type_name(t)}, not {type(value).__name__}")
        return [_convert(v, item_t, f"{key}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict:
        _, val_t = typing.get_args(t)
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {key} must be {_type_name(t)}, not {type(value).__name__}")
        return {str(k): _convert(v, val_t, f"{key}.{k}", src) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError("unions are not used in the config schema")
    # Scalars. bool is an int subclass in Python, so it is checked first; an integer
    # is accepted where a number (float) is expected, as TOML users write `1` for `1.0`.
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        # TOML has nan and inf; every range check is false for NaN, so it would pass them all
        if ok and not math.isfinite(value):
            raise ConfigError(f"{src}: {key} = {value!r} is not a finite number")
    else:
        ok = isinstance(value, t)
    if not ok:
        raise ConfigError(f"{src}: {key} must be {_type_name(t)}, not {type(value).__name__} ({value!r})")
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        # a NUL or newline in a path, token or address fails far from here, in SQLite or a header
        raise ConfigError(f"{src}: {key} = {value!r} holds a control character")
    return value


def _check_range(value: Any, md: Any, key: str, src: str) -> None:
    lo, hi, choices = md.get("min"), md.get("max"), md.get("choices")
    if lo is not None and value < lo:
        raise ConfigError(f"{src}: {key} = {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{src}: {key} = {value!r} is above the maximum {hi}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{src}: {key} = {value!r} is not one of {', '.join(choices)}")


def build(cls: Any, data: dict[str, Any], prefix: str, src: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{src}: unknown key {key} (known here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            raw = data[name]
            if f.metadata.get("one_or_many") and isinstance(raw, str):
                raw = [raw]
            value = _convert(raw, hints[name], key, src)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
            # defaults held as plain data (lists/dicts of tables) go through the same conversion
            value = _convert(value, hints[name], key, src) if typing.get_origin(hints[name]) else value
        else:
            raise ConfigError(f"{src}: missing key {key}")
        _check_range(value, f.metadata, key, src)
        kwargs[name] = value
    return cls(**kwargs)


# The libvirt URIs cms can drive: its domains are QEMU guests (the test driver stands in for
# QEMU in tests), over any of libvirt's remote transports (libvirt's docs/uri.rst, remote.rst).
URI_DRIVERS = ("qemu", "test")
URI_TRANSPORTS = ("unix", "tls", "tcp", "ssh", "libssh", "libssh2", "ext")


def libvirt_uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not a libvirt URI cms can connect to, or None when it is.

    The form is DRIVER[+TRANSPORT]://[USER@][HOST][:PORT]/PATH[?PARAMS]: DRIVER qemu or test,
    TRANSPORT one of libvirt's; qemu's path is /system or /session.
    """
    want = (f"want DRIVER[+TRANSPORT]://[USER@][HOST][:PORT]/PATH with DRIVER {' or '.join(URI_DRIVERS)} "
            f"and TRANSPORT one of {', '.join(URI_TRANSPORTS)}")
    scheme, sep, _rest = uri.partition("://")
    driver, _, transport = scheme.partition("+")
    if not sep or driver not in URI_DRIVERS or (transport and transport not in URI_TRANSPORTS) or \
            scheme.count("+") > 1:
        return want
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"{exc}; {want}"
    if transport == "unix" and parts.hostname:
        return "the unix transport is local: leave the host out (qemu+unix:///system)"
    if driver == "qemu" and parts.path not in ("/system", "/session"):
        return f"a QEMU URI's path is /system or /session, not {parts.path or 'empty'!r}"
    if driver == "test" and parts.path in ("", "/"):
        return "a test URI names /default or the absolute path of a node XML file"
    return None


def state_db_problem(value: str) -> str | None:
    """Why ``value`` cannot be state_db (a path, or postgresql://USER@HOST[:PORT]/DB); None when it can."""
    if "://" not in value:
        return None if value else "empty: give a file path (SQLite) or a postgresql:// URL"
    want = "want a file path (SQLite) or postgresql://USER@HOST[:PORT]/DB"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{exc}; {want}"
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"{parts.scheme}:// is not supported; {want}"
    if parts.password is not None:
        return "holds a password: put it in a file and name that file in state_db_password_file"
    if not parts.hostname or parts.path in ("", "/"):
        return f"names no {'database' if parts.hostname else 'host'}; {want}"
    return None


def url_problem(value: str) -> str | None:
    """Why ``value`` is not an http(s)://HOST[:PORT][/PATH] URL; None when it is."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "want http://HOST:PORT"
    return None


def host_port_problem(value: str, wildcard_port: bool = False) -> str | None:
    host, sep, port = value.rpartition(":")
    if sep and host and (port.isdigit() and 0 < int(port) < 65536 or wildcard_port and port == "*"):
        return None
    return "want HOST:PORT with a port from 1 to 65535"


def bind_problem(value: str) -> str | None:
    """gunicorn's bind: HOST:PORT or unix:PATH."""
    return None if value.startswith("unix:/") else host_port_problem(value)


def zmq_problem(value: str) -> str | None:
    """A ZeroMQ endpoint: tcp://HOST:PORT, ipc://PATH or inproc://NAME."""
    kind, sep, rest = value.partition("://")
    if sep and kind in ("ipc", "inproc") and rest:
        return None
    if sep and kind == "tcp":
        why = host_port_problem(rest, wildcard_port=True)
        return f"{why} after tcp://" if why else None
    return "want tcp://HOST:PORT, ipc://PATH or inproc://NAME"


# what cms.coordination sets itself from [coordination] (lease_ttl_s, timeout_s), so not in the URL
ETCD_OWN_OPTIONS = ("lock_timeout", "timeout", "membership_timeout")


def etcd_url_problem(url: str) -> str | None:
    """Why ``url`` is not a tooz etcd3gw URL cms can use (etcd3+http://HOST:PORT[?OPTIONS]), or None."""
    want = "want etcd3+http://HOST:PORT or etcd3+https://HOST:PORT (tooz's etcd3gw driver)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"{exc}; {want}"
    if parts.scheme not in ("etcd3+http", "etcd3+https") or not parts.hostname:
        return want
    if parts.path not in ("", "/"):
        return f"no path after the address ({parts.path!r}); {want}"
    own = [kv.split("=")[0] for kv in parts.query.split("&") if kv.split("=")[0] in ETCD_OWN_OPTIONS]
    if own:
        return (f"{own[0]} is set by cms from [coordination] (lease_ttl_s, timeout_s); "
                "leave it out of the URL")
    return None


def split_hostport(value: str) -> tuple[str, int] | None:
    """"HOST:PORT" or "[V6]:PORT" into (host, port); None when it is not that."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "/[]" for c in host):
        return None
    return host, int(port)


def cross_checks(cfg: Any) -> None:
    """The rules between keys of a built cms.config.Config (hosts named once, a range's low
    end below its high one, the feed's endpoints in pairs ...): the first broken one is a
    ConfigError naming the keys and the file."""
    src = cfg.source
    if not cfg.hosts:
        raise ConfigError(f"{src}: hosts must name at least one hypervisor host")
    names = [h.name for h in cfg.hosts]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{src}: hosts: duplicate host name {sorted(dup)[0]!r}")
    for i, h in enumerate(cfg.hosts):
        if not h.name or not h.uri:
            raise ConfigError(f"{src}: hosts[{i}] needs both name and uri")
        why = libvirt_uri_problem(h.uri)
        if why:
            raise ConfigError(f"{src}: hosts[{i}].uri = {h.uri!r} is not a libvirt URI cms can use: {why}")
        if h.fence_command:
            try:
                shlex.split(h.fence_command)
            except ValueError as exc:
                raise ConfigError(f"{src}: hosts[{i}].fence_command = {h.fence_command!r}: {exc} (it is split "
                                  "like a shell command line)") from None
    checks = [("state_db", cfg.state_db, state_db_problem(cfg.state_db)),
              ("history.prometheus_url", cfg.history.prometheus_url,
               cfg.history.source == "prometheus" and url_problem(cfg.history.prometheus_url)),
              ("api.bind", cfg.api.bind, bind_problem(cfg.api.bind))]
    checks += [(f"zmq.{k}[{i}]", e, zmq_problem(e)) for k in ("publish", "snapshot")
               for i, e in enumerate(getattr(cfg.zmq, k))]
    checks += [(f"coordination.url[{i}]", u, etcd_url_problem(u)) for i, u in enumerate(cfg.coordination.url)]
    for key, value, why in checks:
        if why:
            raise ConfigError(f"{src}: {key} = {value!r}: {why}")
    _feed_checks(cfg)
    if cfg.network.port_min > cfg.network.port_max:
        raise ConfigError(f"{src}: network.port_min ({cfg.network.port_min}) is above network.port_max ({cfg.network.port_max})")
    if cfg.autoscaler.metrics_listen and split_hostport(cfg.autoscaler.metrics_listen) is None:
        raise ConfigError(f"{src}: autoscaler.metrics_listen = {cfg.autoscaler.metrics_listen!r} is not HOST:PORT "
                          "(e.g. 127.0.0.1:9481, [::1]:9481; empty turns the endpoint off)")
    if cfg.libvirt.migrate_timeout_s >= cfg.api.timeout:
        # otherwise gunicorn kills the API worker mid-migration before the abort runs
        raise ConfigError(f"{src}: libvirt.migrate_timeout_s ({cfg.libvirt.migrate_timeout_s:g}) must be below "
                          f"api.timeout ({cfg.api.timeout})")
    for g, gc in cfg.groups.items():
        if not g.replace("-", "").isalnum():
            raise ConfigError(f"{src}: groups.{g}: a group name may hold only letters, digits and '-'")
        if gc.min > gc.max:
            raise ConfigError(f"{src}: groups.{g}.min ({gc.min}) is above groups.{g}.max ({gc.max})")
        if gc.concurrency.panic_window_s > gc.concurrency.stable_window_s:
            raise ConfigError(f"{src}: groups.{g}.concurrency.panic_window_s ({gc.concurrency.panic_window_s:g}) is longer "
                              f"than its stable_window_s ({gc.concurrency.stable_window_s:g})")
        if gc.threshold.low >= gc.threshold.high:
            raise ConfigError(f"{src}: groups.{g}.threshold.low ({gc.threshold.low}) must be below "
                              f"groups.{g}.threshold.high ({gc.threshold.high})")
        vt = gc.vertical
        if vt.enabled and vt.max_vcpus < gc.vcpus:
            raise ConfigError(f"{src}: groups.{g}.vertical.max_vcpus ({vt.max_vcpus}) is below groups.{g}.vcpus "
                              f"({gc.vcpus})")
        if vt.enabled and vt.max_memory_mib and vt.max_memory_mib < gc.memory_mib:
            raise ConfigError(f"{src}: groups.{g}.vertical.max_memory_mib ({vt.max_memory_mib}) is below "
                              f"groups.{g}.memory_mib ({gc.memory_mib})")
    verticals = [(f"groups.{g}.vertical", gc.vertical) for g, gc in cfg.groups.items()]
    verticals += [(f"vertical.types.{k}", v) for k, v in cfg.vertical.types.items()]
    verticals += [(f"vertical.vms.{k}", v) for k, v in cfg.vertical.vms.items()]
    for key, vt in verticals:
        if vt.low >= vt.high:
            raise ConfigError(f"{src}: {key}.low ({vt.low}) must be below {key}.high ({vt.high})")
        if vt.window_in_s < vt.window_s:
            raise ConfigError(f"{src}: {key}.window_in_s ({vt.window_in_s:g}) must be at least {key}.window_s "
                              f"({vt.window_s:g})")
    for k in cfg.vertical.types:
        if not k.isdigit():
            raise ConfigError(f"{src}: vertical.types.{k}: the key is an instance type id (a number)")
    if cfg.balancer.consolidate and cfg.balancer.headroom >= cfg.balancer.high:
        raise ConfigError(f"{src}: balancer.headroom ({cfg.balancer.headroom}) must be below balancer.high "
                          f"({cfg.balancer.high})")


def _feed_checks(cfg: Any) -> None:
    src, z = cfg.source, cfg.zmq
    if not z.publish or not z.snapshot:
        raise ConfigError(f"{src}: zmq.publish and zmq.snapshot need at least one endpoint each")
    if len(z.publish) != len(z.snapshot):
        raise ConfigError(f"{src}: zmq.publish lists {len(z.publish)} endpoint(s) and zmq.snapshot "
                          f"{len(z.snapshot)}: one pair per controller, in the same order")
    if len(z.publish) > 1 and not cfg.coordination.enabled:
        raise ConfigError(f"{src}: zmq.publish lists {len(z.publish)} controllers' endpoints: several controllers "
                          "need [coordination] url (etcd), or list one endpoint")
