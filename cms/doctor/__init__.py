"""`cms doctor`: can this machine, and every configured host, run cms? Needs no API.

One line per check, each ok, warn or fail, the last two with the fix in words. Exit 0 when
nothing fails, 1 when something does (2: a bad configuration or usage). ``--json`` prints
the same checks as data. The configuration comes from --config, $CMS_CONFIG,
/etc/cms/cms.toml or the embedded defaults, as for every other entry point.

The checks, by name (``--skip`` takes these):
  config       which configuration was read
  kvm-device   /dev/kvm: owner, mode, and whether libvirt's qemu user can open it
  libvirt      each host's URI answers; libvirt here, in the daemon, and the hypervisor's version
  domain-type  what libvirt.domain_type (``auto`` included) gives on each host, and why
  define       a throwaway domain defined and undefined on each host, timed
  pool         the storage pool: defined, active, free space; its directory writable (local hosts)
  image        the golden image, kernel and initrd: present and readable (known to libvirt on remote hosts)
  ports        the replicas' forward ports (network.mode = user): free to bind
  zmq          the ZeroMQ endpoints: free to bind, or held by cms-autoscaler
  state-db     the SQLite state database: writable
  host-state   each host's state as cms-autoscaler last declared it (up, suspect, down, fencing)
  api          cms-api answers (a fail only when a URL was given with --url or $CMS_URL)
  controller   cms-autoscaler's /health: the leader (its term) or a follower (naming the leader)
  etcd         with [coordination]: every etcd member's health; a fail without a majority

Why a slow define is a fail: on a machine without udev, /dev/kvm stays root:root 0600.
libvirtd then finds KVM usable when it probes QEMU as root but not when it checks its
cache as the qemu user, so it throws the cache away and probes QEMU again on every lookup:
each define takes about a minute. scripts/kvm-device.sh (bootstrap) and the libvirt_host
role set the device as udev would.

Modules: check (the result), machine (this machine's checks), hosts (each host's, through
cms.virt.probe, in threads with a deadline), controller (the role and etcd).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from typing import Callable

from cms import config as cms_config
from cms.doctor.check import FAIL, OK, WARN, Check
from cms.doctor import hosts
from cms.doctor.controller import check_controller, check_etcd
from cms.doctor.machine import (KVM_DEVICE, check_api, check_host_states, check_image, check_kvm_device,
                                check_ports, check_state_db, check_zmq)
from cms.virt.fleet import Fleet
from cms.virt.host import is_local_uri

CHECKS = ("config", "kvm-device", "libvirt", "domain-type", "define", "pool", "image", "ports", "zmq",
          "state-db", "host-state", "api", "controller", "etcd")
__all__ = ["CHECKS", "Check", "OK", "WARN", "FAIL", "run", "command"]


def run(cfg: cms_config.Config, *, skip: set[str] = frozenset(), timeout: float = 20.0, url: str = "",
        kvm_device: str = KVM_DEVICE, progress: Callable[[str], None] = lambda _m: None) -> list[Check]:
    """Every check not skipped, in report order. Hosts are checked in parallel."""
    start = time.monotonic()
    kernel, initrd = Fleet(cfg).boot_files()
    files = [f for f in (cfg.image.golden, kernel, initrd) if f]
    runs = []
    if {"libvirt", "domain-type", "define", "pool", "image"} - skip:
        for h in cfg.hosts:
            runs.append(hosts.start(h.name, h.uri, cfg, skip, files, progress))
    out = [Check("config", OK, cfg.source, f"{len(cfg.hosts)} host(s): {', '.join(h.name for h in cfg.hosts)}")]
    if any(h.uri.startswith("qemu") and is_local_uri(h.uri) for h in cfg.hosts):
        out.append(check_kvm_device(kvm_device))
    for r in runs:
        out.extend(hosts.collect(r, start, timeout))
    out.extend(check_image(cfg))
    out.extend(check_ports(cfg))
    for k in ("publish", "snapshot"):
        eps = getattr(cfg.zmq, k)
        out.extend(check_zmq(f"zmq.{k}", e, several=len(eps) > 1) for e in eps)
    out.append(check_state_db(cfg.state_db, cfg.state_db_password_file))
    if "host-state" not in skip:
        out.extend(check_host_states(cfg))
    out.append(check_api(url or cfg.api.url, explicit=bool(url)))
    out.append(check_controller(cfg))
    out.extend(check_etcd(cfg))
    return [c for c in out if c.check not in skip]


def command(config_path: str | None, *, as_json: bool, skip: str, timeout: float, url: str) -> int:
    """`cms doctor`: print the checks; 0 when none fails, 1 when one does, 2 on bad usage."""
    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    unknown = sorted(skipped - set(CHECKS))
    if unknown:
        print(f"cms: doctor: no check named {unknown[0]!r} (checks: {', '.join(CHECKS)})", file=sys.stderr)
        return 2
    cfg = cms_config.load_or_exit(config_path)
    checks = run(cfg, skip=skipped, timeout=timeout, url=url or os.environ.get("CMS_URL", ""),
                 progress=lambda m: print(m, file=sys.stderr, flush=True))
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        print(json.dumps({"ok": not failed, "config": cfg.source, "checks": [asdict(c) for c in checks]}))
    else:
        print("\n".join(c.line() for c in checks))
        warned = sum(c.status == WARN for c in checks)
        print(f"cms doctor: {len(failed)} failed, {warned} warnings, {len(checks)} checks")
    return 1 if failed else 0
