"""The one configuration loader.

One TOML file, default /etc/cms/cms.toml, chosen by ``--config`` or ``CMS_CONFIG``. When
neither names a file and the default does not exist, the embedded defaults below are used:
that is how the local demo runs with no file at all. etc/cms.toml.example documents every
key.

The file is read with tomllib into the frozen dataclasses below and validated at once: an
unknown key, a wrong type or an out-of-range value raises ConfigError with one message that
names the key and the file. ``load_or_exit`` turns that into exit code 2 with no traceback.

Validation is driven by the dataclasses themselves: a field's type annotation gives the
accepted TOML type, and ``setting(default, min=, max=, choices=)`` its range or choices. The
machinery that walks them, the checks of URIs and addresses, and the checks across keys (a
range's ends, the feed's endpoint pairs: ``cross_checks``) are in cms.configschema; this
module is the schema (the scaling policies' part in cms.policyconfig) and the loading.
(`duplicates` pairs the sections with each other: every field is declared the same way, one
``setting`` line each. That sameness is the point of a declarative schema; no logic is
repeated.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cms import files
from cms.configschema import build, cross_checks, libvirt_uri_problem, setting, split_hostport  # noqa: F401
from cms.errors import ConfigError
from cms.policyconfig import ConcurrencyPolicyConfig, TargetPolicyConfig, ThresholdPolicyConfig

DEFAULT_PATH = Path("/etc/cms/cms.toml")
ENV_VAR = "CMS_CONFIG"


@dataclass(frozen=True)
class HostConfig:
    """A hypervisor host cms may place replicas on."""
    name: str = setting("local", doc="unique short name")
    uri: str = setting("qemu:///system", doc="libvirt connection URI")
    migration_address: str = setting("", doc="address this host takes live migrations on: its QEMU listens there and the "
                                        "source sends to tcp://ADDRESS; empty: libvirt's default (the host's hostname)")
    shared_storage: bool = setting(False, doc="true: migrations to this host skip libvirt's shared-storage check "
                                         "(VIR_MIGRATE_UNSAFE), for storage libvirt cannot tell is shared (a local "
                                         "file system two daemons on one machine see; NFS, GFS2, Ceph need no setting)")
    forward_address: str = setting("", doc="address this host's replica port forwards bind (network.mode = user); "
                                      "empty: network.forward_address")
    cpus: int = setting(0, min=0, max=65536, doc="CPUs this host counts for placement and host load; 0: what libvirt "
                                            "reports (set it when hosts share a machine, as the lab's do)")
    timeout_s: float = setting(2.0, min=0.05, max=600.0,
                               doc="a tick waits this long for this host's listing; past it the host did not answer "
                                   "this tick (the other hosts' listings are used at once)")
    fence_command: str = setting("", doc="run with the host's name appended when it is declared down (IPMI power-off, "
                                    "a fence_* agent; the lab's: scripts/lab.sh fence); exit 0 means the host is "
                                    "fenced. Empty: none, so VMs made through the API there are only marked lost")
    fence_timeout_s: float = setting(60.0, min=1.0, max=3600.0,
                                     doc="a fence_command still running after this is killed and counts as failed")


@dataclass(frozen=True)
class LibvirtConfig:
    """How cms uses libvirt on every host: domain type, the overlay pool, keepalives, migration."""
    domain_type: str = setting("kvm", choices=("kvm", "qemu", "auto"),
                          doc="kvm on real hosts; qemu is TCG emulation; auto: kvm when /dev/kvm exists and "
                              "this host is not itself a VM (nested KVM is unreliable), else qemu")
    pool: str = setting("cms", doc="storage pool for replica overlays (a dir pool, created if missing)")
    pool_path: str = setting("/var/lib/cms/pool", doc="directory of that pool when cms creates it")
    keepalive_interval: int = setting(5, min=0, max=600, doc="seconds between libvirt keepalives; 0 disables")
    machine: str = setting("pc", doc="QEMU machine type")
    migrate_timeout_s: float = setting(300.0, min=1.0, max=86400.0,
                                  doc="a live migration still running after this is aborted; the VM stays where it was")
    migrate_bandwidth_mib_s: int = setting(0, min=0, max=1_000_000,
                                     doc="cap on a live migration's stream in MiB/s, so it leaves the link room "
                                         "for the replicas' traffic; 0: no cap (as Nova's live_migration_bandwidth)")


@dataclass(frozen=True)
class ImageConfig:
    """The golden image replicas boot from, and the pool the spec's images are imported into."""
    golden: str = setting("/var/lib/cms/images/golden.qcow2", doc="golden qcow2 image the replicas' overlays are backed by")
    kernel: str = setting("", doc="kernel for direct boot; empty: vmlinuz beside the golden image if present, else the bootloader")
    initrd: str = setting("", doc="initrd for direct boot; empty: initrd.img beside the golden image if present")
    cmdline: str = setting("root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet",
                      doc="kernel command line for direct boot; cms appends systemd.hostname=<replica name>")
    pool: str = setting("cms-images", doc="dir pool on every host that the images of image_file and POST /v1/images "
                                     "are imported into (made where missing); VMs are backed by those copies")
    pool_path: str = setting("/var/lib/cms/images", doc="that pool's directory, the same on every host (live migration "
                                                   "needs the backing image at the same path)")


@dataclass(frozen=True)
class NetworkConfig:
    """How a replica's service is reached: a QEMU port forward (user) or a libvirt network."""
    mode: str = setting("user", choices=("user", "libvirt"),
                   doc="user: QEMU user networking, each replica's port forwarded from forward_address; "
                       "libvirt: a libvirt network, the address read from its DHCP leases")
    network: str = setting("default", doc="libvirt network name (mode = libvirt)")
    forward_address: str = setting("127.0.0.1", doc="host address the port forwards bind (mode = user)")
    port_min: int = setting(20000, min=1024, max=65535, doc="lowest host port handed to a replica (mode = user)")
    port_max: int = setting(20999, min=1024, max=65535, doc="highest host port handed to a replica (mode = user)")


@dataclass(frozen=True)
class WarmPoolConfig:
    """Pre-booted replicas kept parked, taken first on a scale-out or a replacement."""
    size: int = setting(0, min=0, max=1000, doc="warm replicas to keep (never past max with the serving ones); 0: no pool")
    state: str = setting("paused", choices=("paused", "saved", "stopped"),
                    doc="paused: suspended, RAM held; saved: managed save, RAM on disk; "
                        "stopped: defined and shut off (a cold boot, but no clone or define)")
    reuse_on_scale_in: bool = setting(True, doc="a drained replica is parked back into the pool when it is short")


@dataclass(frozen=True)
class VerticalConfig:
    """Vertical scaling of one VM, applied by the balancer ([balancer] enabled): one vCPU more when hot,
    one less when idle, memory through the balloon, within these maximums."""
    enabled: bool = setting(False, doc="this group's replicas (or these VMs) are grown and shrunk live")
    max_vcpus: int = setting(2, min=1, max=256, doc="most vCPUs; replicas are defined with this many at most")
    max_memory_mib: int = setting(0, min=0, max=1048576, doc="most memory; 0: no memory growth")
    high: float = setting(0.8, min=0.0, max=1.0, doc="grow when its CPU (or memory use) mean over window_s is above this")
    low: float = setting(0.2, min=0.0, max=1.0, doc="shrink when it stays below this for window_in_s")
    window_s: float = setting(10.0, min=0.0, max=3600.0, doc="how long it must be hot")
    window_in_s: float = setting(60.0, min=0.0, max=86400.0, doc="how long it must be idle (longer than window_s)")


@dataclass(frozen=True)
class VerticalVmsConfig:
    """Vertical scaling for VMs made through the API: by instance type (its id) or by VM name."""
    types: dict[str, VerticalConfig] = setting({})
    vms: dict[str, VerticalConfig] = setting({})


@dataclass(frozen=True)
class BalancerConfig:
    """Host balancing (cms.hostplan): live migrations, consolidation and vertical scaling, run by cms-autoscaler."""
    enabled: bool = setting(False, doc="the autoscaler applies the plan each tick; off by default: migration needs "
                                  "shared storage (the overlays and the golden image at the same paths on every host)")
    relief: bool = setting(True, doc="a host above high for window_s sheds the VM whose move best evens the load")
    high: float = setting(0.8, min=0.01, max=4.0, doc="host load (busy cores over its CPUs) that is too much")
    window_s: float = setting(30.0, min=0.0, max=86400.0, doc="how long a host must stay above high")
    consolidate: bool = setting(False, doc="empty the least-loaded host when the others can take its VMs")
    headroom: float = setting(0.2, min=0.0, max=1.0, doc="consolidation keeps every receiver at most high - headroom")
    consolidate_window_s: float = setting(120.0, min=0.0, max=86400.0,
                                     doc="how long every host must stay below high - headroom first")
    vm_cooldown_s: float = setting(120.0, min=0.0, max=86400.0, doc="a VM moved this recently stays where it is")
    min_stay_s: float = setting(600.0, min=0.0, max=86400.0, doc="a VM never goes back to a host it left this recently")
    max_moves: int = setting(2, min=0, max=100000, doc="most migrations started per budget_interval_s, fleet-wide")
    budget_interval_s: float = setting(300.0, min=1.0, max=86400.0, doc="the window max_moves counts in")


@dataclass(frozen=True)
class GroupConfig:
    """A replica group: N copies of the guest server behind the load client."""
    min: int = setting(1, min=0, max=1000)
    max: int = setting(3, min=1, max=1000)
    vcpus: int = setting(1, min=1, max=256)
    memory_mib: int = setting(512, min=64, max=1048576)
    port: int = setting(8080, min=1, max=65535, doc="the guest server's port inside the VM")
    policy: str = setting("threshold", choices=("threshold", "target", "concurrency"))
    cooldown_s: float = setting(15.0, min=0.0, max=3600.0, doc="no scaling action for this long after one")
    warmup_s: float = setting(5.0, min=0.0, max=3600.0, doc="a new replica's CPU is left out for this long after ready, "
                                                                 "and the policy holds until then")
    scale_in_order: str = setting("newest", choices=("newest", "oldest", "consolidate"),
                             doc="which replica scale-in removes; consolidate: the one whose removal empties, or "
                                 "leaves emptiest, a host (cms.hostplan.consolidate_order)")
    anti_affinity: bool = setting(False, doc="the balancer keeps this group's replicas on different hosts")
    threshold: ThresholdPolicyConfig = field(default_factory=ThresholdPolicyConfig)
    target: TargetPolicyConfig = field(default_factory=TargetPolicyConfig)
    concurrency: ConcurrencyPolicyConfig = field(default_factory=ConcurrencyPolicyConfig)
    warm_pool: WarmPoolConfig = field(default_factory=WarmPoolConfig)
    vertical: VerticalConfig = field(default_factory=VerticalConfig)


@dataclass(frozen=True)
class AutoscalerConfig:
    """The reconcile loop's pace, health checking, draining and its metrics endpoint."""
    tick_s: float = setting(1.0, min=0.05, max=3600.0, doc="seconds between monitoring ticks")
    history: int = setting(900, min=10, max=1000000, doc="samples kept in memory per domain")
    health_timeout_s: float = setting(120.0, min=1.0, max=3600.0, doc="how long a new replica may take to answer /health")
    health_failures: int = setting(3, min=1, max=1000, doc="failed health checks in a row that make a replica failed")
    health_check_timeout_s: float = setting(5.0, min=0.1, max=600.0,
                                       doc="one /health check's timeout; generous, as a saturated replica answers slowly")
    drain_s: float = setting(3.0, min=0.0, max=3600.0, doc="time given to in-flight work after draining is announced")
    shutdown_timeout_s: float = setting(10.0, min=0.0, max=3600.0, doc="graceful shutdown wait before destroy")
    host_down_s: float = setting(10.0, min=0.1, max=3600.0,
                                 doc="a host that has not answered for this long is down: its replicas are declared "
                                     "lost and replaced on live hosts (vSphere HA waits 15 s)")
    metrics_listen: str = setting("127.0.0.1:9481", doc="HOST:PORT where the daemon serves Prometheus' /metrics; "
                                                   "empty: no endpoint")
    domain_metrics: bool = setting(False, doc="export each domain's tick figures (on with history.source = prometheus)")


@dataclass(frozen=True)
class ZmqConfig:
    """Where the replica feed (the ZeroMQ Clone pattern, cms.messages) is published. With several
    controllers each key lists every controller's endpoint, in the same order in both: a
    controller binds the first pair it can (an address of its own, ports free), and clients
    connect to them all and follow the leader."""
    publish: list[str] = setting(["tcp://127.0.0.1:5556"], one_or_many=True,
                                 doc="PUB endpoint the daemon binds for replica updates (a list: every controller's)")
    snapshot: list[str] = setting(["tcp://127.0.0.1:5557"], one_or_many=True,
                                  doc="ROUTER endpoint the daemon binds for snapshots (a list: every controller's)")
    curve_secret_key: str = setting("", doc="Z85 server secret key; with curve_public_key enables CURVE")
    curve_public_key: str = setting("", doc="Z85 server public key, which clients also need")


@dataclass(frozen=True)
class CoordinationConfig:
    """Several controllers, one leader (cms.coordination): the election is tooz's lease-backed
    lock in etcd. Without a url, cms runs one controller, always the leader, as it always has."""
    url: list[str] = setting([], one_or_many=True,
                             doc="tooz URL of etcd, etcd3+http://HOST:PORT (https, and tooz's ca_cert, cert_key, "
                                 "cert_cert, api_version options too); a list: every etcd member, the next tried "
                                 "when one does not answer; empty: one controller, no election")
    name: str = setting("", doc="this controller's name, as the leader is shown; empty: the host name")
    lease_ttl_s: int = setting(5, min=2, max=300,
                               doc="the leader's lease in etcd: a dead leader is replaced after at most this plus "
                                   "a tick; a leader that could not renew for half of it stops acting. etcd's "
                                   "shortest is 2 s (its election timeout's 3/2, rounded up)")
    timeout_s: int = setting(1, min=1, max=60, doc="one call to etcd waits at most this (whole seconds: tooz's unit)")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class ApiConfig:
    """cms-api under gunicorn: where it listens, its workers, token and limits."""
    bind: str = setting("127.0.0.1:8080", doc="host:port gunicorn listens on")
    workers: int = setting(0, min=0, max=256, doc="gunicorn workers; 0 means 2 x CPUs + 1")
    worker_class: str = setting("sync", choices=("sync", "gthread"),
                           doc="sync: one call per worker, the shortest tail; gthread: threads per worker")
    threads: int = setting(16, min=1, max=1024, doc="threads per worker with worker_class gthread")
    timeout: int = setting(600, min=10, max=86400, doc="seconds one call may run before its worker is restarted")
    token: str = setting("", doc="bearer token for mutating /v1 calls; empty disables them")
    open_spec_urls: bool = setting(True, doc="the spec's GET URLs answer without a token")
    max_body_bytes: int = setting(65536, min=1024, max=64 << 20,
                             doc="largest request body taken; a bigger one is refused with 413 before it is read")

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the API: bind, with a wildcard address as loopback."""
        host, _, port = self.bind.rpartition(":")
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '', '::', '[::]') else host}:{port}"


@dataclass(frozen=True)
class PlacementConfig:
    """Which host takes a new VM (cms.placement) and how much each host may carry."""
    algorithm: str = setting("round_robin", choices=("round_robin", "first_fit", "spread"))
    cpu_overcommit: float = setting(4.0, min=0.1, max=64.0, doc="vCPUs per physical CPU a host may carry")
    ram_reserve_mib: int = setting(512, min=0, max=1048576, doc="host RAM never given to VMs")


@dataclass(frozen=True)
class HistoryConfig:
    """Where the console's charts and /v1/.../metrics read history (cms.history); how long the store keeps it."""
    source: str = setting("store", choices=("store", "prometheus"), doc="prometheus: read prometheus_url, store no samples")
    prometheus_url: str = setting("", doc="the Prometheus that scrapes cms-autoscaler (source = prometheus)")
    prometheus_timeout_s: float = setting(10.0, min=0.1, max=300.0, doc="deadline of each query to it")
    retention_s: float = setting(86400.0, min=60.0, max=31536000.0,
                            doc="per-domain and per-host samples older than this are deleted (one row per domain "
                                "per tick: about 11 MB per domain and day at tick_s = 1)")
    events_retention_s: float = setting(2592000.0, min=60.0, max=315360000.0, doc="events older than this are deleted")
    prune_interval_s: float = setting(60.0, min=1.0, max=86400.0, doc="how often the autoscaler deletes what is past them")


@dataclass(frozen=True)
class Config:
    state_db: str = setting("/var/lib/cms/state.db", doc="a path (SQLite) or postgresql://USER@HOST/DB (cms.db)")
    state_db_password_file: str = setting("", doc="the PostgreSQL password, read from this file")
    log_level: str = setting("info", choices=("debug", "info", "warning", "error"))
    hosts: list[HostConfig] = setting([{"name": "local", "uri": "qemu:///system"}])
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    groups: dict[str, GroupConfig] = setting({"web": {}})
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    zmq: ZmqConfig = field(default_factory=ZmqConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    vertical: VerticalVmsConfig = field(default_factory=VerticalVmsConfig)
    source: str = field(default="<embedded defaults>", metadata={"internal": True})

    def host(self, name: str) -> HostConfig:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


# --- the loader --------------------------------------------------------------------------

def parse(data: dict[str, Any], source: str = "<embedded defaults>") -> Config:
    """Build a validated Config from already-parsed TOML data."""
    cfg = build(Config, data, "", source)
    cfg = dataclasses.replace(cfg, source=source)
    cross_checks(cfg)
    return cfg


def resolve_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: --config, else $CMS_CONFIG, else /etc/cms/cms.toml if it exists."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    p = resolve_path(path)
    if p is None:
        return parse({})
    try:
        raw, _ = files.read_regular(p)
    except files.Unreadable as exc:
        raise ConfigError(f"{p}: " + exc.words({
            files.MISSING: "no such configuration file", files.DENIED: "permission denied reading the configuration file",
            files.DIRECTORY: "is a directory, not a configuration file",
            files.SPECIAL: "not a regular file, so not a configuration file"},
            "cannot read the configuration file")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          "a TOML file is UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse(data, str(p))


def load_or_exit(path: str | os.PathLike[str] | None = None) -> Config:
    """For command-line entry points: a bad configuration is one line on stderr and exit 2."""
    try:
        return load(path)
    except ConfigError as exc:
        print(f"cms: configuration error: {one_line(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(text: str) -> str:
    """``text`` with control characters escaped: a key or value read from a file may hold a
    newline, and an error is one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Plain data (what ``parse`` takes) as TOML text: scalars and lists of scalars, tables, and
    lists of flat tables as arrays of tables. The one writer of a cms.toml: the demo's and the
    lab's configurations are written with it."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables += ["", f"[{prefix}{k}]", to_toml(v, f"{prefix}{k}.").rstrip("\n")]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                tables += ["", f"[[{prefix}{k}]]", *(f"{ik} = {json.dumps(iv)}" for ik, iv in item.items())]
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines + tables).strip("\n") + "\n"
