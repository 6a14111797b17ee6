"""The lab libvirtds' QEMU capabilities cache: seeded from a good one, checked at the first define.

libvirtd probes each QEMU binary for what it can do (about 4 s per binary under TCG here)
and keeps the answer in ``/var/cache/libvirt/qemu/capabilities/<sha256 of the path>.xml``.
A lab host's libvirtd has a /var/cache/libvirt of its own, so without a copy its first
define would wait for that probe. It takes a copied file only if every key in it still
holds for itself: libvirtd's own binary (ctime and version), QEMU's binary and module
directory (ctimes), the kernel, the CPU's microcode and CPU data, and whether KVM is usable.
Otherwise it logs why at debug level ("Outdated capabilities for ...: libvirt changed (A vs
B)", "KVM was enabled when probing ...") and probes again.

The copy came from the system daemon's files only, and lab hosts' first defines took
3.6-3.7 s. A system daemon keeps trusting what it validated when it started, so its files
can stay stale for a new daemon while it stays fast itself (libvirtd's binary changed under
it, say). Replaying a copy with another libvirtd ctime gives the same first define (4.1 s)
and that "libvirt changed" line; on a machine where the system files are current the copy is
taken and the first define takes 0.03 s. So:

* ``seed`` fills a new host's cache with the system daemon's files, and over them the ones
  lab hosts probed themselves (``shared``, kept beside the labs across runs);
* the lab's libvirtds log this module of libvirt at debug level (``LOG_FILTERS``), so the
  reason is in the host's libvirtd.log;
* ``check`` times each host's first define (a throwaway domain), one host after the other,
  and reads its log: a host that saved capabilities of its own probed QEMU, so the copy was
  refused. It returns the reason, and copies the files that host saved to the hosts not
  checked yet (libvirtd reads a file at its first lookup) and to ``shared``, so one probe
  serves the whole lab and the labs after it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

SYSTEM = Path("/var/cache/libvirt/qemu/capabilities")
CACHE_SUBDIR = "cache/qemu/capabilities"          # under a lab host's root (its /var/cache/libvirt)
LOG_FILTERS = "1:qemu.qemu_capabilities"
_SAVED = re.compile(r"virQEMUCapsSaveFile:\d+ : Saved caps '[^']*/([^'/]+\.xml)'")   # written after a probe
_REFUSED = re.compile(r"debug : virQEMUCaps\w+:\d+ : ((?:Outdated capabilities|KVM was|Different CPU|"
                      r"Failed to|Unable to)[^\n]*)")


def _copy(src: Path, dest: Path, names: list[str] | None = None) -> None:
    files = sorted(src.glob("*.xml")) if names is None and src.is_dir() else [src / n for n in names or []]
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.is_file():
            shutil.copy(f, dest / f.name)


def seed(dest: Path, shared: Path, system: Path = SYSTEM) -> None:
    """Fill a new lab host's cache: the system daemon's files, and over them lab hosts' own."""
    _copy(system, dest)
    if shared != system:
        _copy(shared, dest)


def _log(root: Path) -> str:
    try:
        return (root / "libvirtd.log").read_text(errors="replace")
    except OSError:
        return ""


def saved(root: Path) -> list[str]:
    """The cache files the lab host's libvirtd (its state under `root`) wrote after probing QEMU itself."""
    return sorted(set(_SAVED.findall(_log(root))))


def probed(root: Path) -> bool:
    """Whether the lab host's libvirtd probed QEMU itself instead of taking a copied file."""
    return bool(saved(root))


def refusal(root: Path) -> str:
    """Why the lab host's libvirtd did not take its cached capabilities ('' when its log does not say)."""
    found = _REFUSED.findall(_log(root))
    return found[0].strip() if found else ""


def check(hosts: list[tuple[str, str, Path]], shared: Path, domain_type: str) -> list[tuple[float, str]]:
    """(first define in s, why libvirtd probed QEMU or '') for each (name, uri, root) lab host, in order."""
    from cms.virt import Host, probe
    out: list[tuple[float, str]] = []
    for i, (name, uri, root) in enumerate(hosts):
        host = Host(name, uri, keepalive_interval=0)
        try:
            took = probe.time_define(host, domain_type)
        finally:
            host.close()
        why, fresh = "", saved(root)
        if fresh:
            why = (f"its libvirtd probed QEMU ({took:.1f} s) instead of taking the copied capabilities: "
                   f"{refusal(root) or 'there were none for this QEMU'}")
            for target in [later / CACHE_SUBDIR for _n, _u, later in hosts[i + 1:]] + [shared]:
                _copy(root / CACHE_SUBDIR, target, fresh)
        out.append((round(took, 3), why))
    return out
