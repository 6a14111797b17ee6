"""Disk images VMs boot from: checked, hashed, and imported into storage cms owns on every host.

The spec's image_file names files on the controller, at any path: a user's home, a 0700
directory. QEMU runs as its own user on each host and cannot read them there, and a remote
host does not have the path at all. So cms imports each image: its bytes go through
libvirt's volume upload stream (virStorageVolUpload) into the image pool of every host
(``image.pool``, a dir pool at ``image.pool_path``, made where missing), and VMs are backed
by that copy. The copy has the same path on every host, as live migration needs.

* **Keyed by content.** The volume is named by the SHA-256 of the bytes. A volume of that
  name as long as the source is complete (an interrupted upload leaves it shorter, and it is
  made again), so importing the same file twice, or a copy of it under another path, copies
  nothing. The hash of a file is kept with its size, mtime and inode, so an unchanged file
  is not read again either.
* **Checked before anything changes** (``check``): the file must be readable by root (the
  installer and cms-api run as root) and must be a disk image: a qcow2, vmdk, vdi, vhdx, vpc
  or qed header, or raw bytes with a partition table or a file system. libvirt probes the
  uploaded volume too; its format is the one the overlays' backing format follows.
* **Registry**: table ``images_imported`` of the state database maps a source path to its
  hash, format and copy. The API's image ids and names stay those of image_file (and of
  POST /v1/images); this table only says where each one's copy is.
* **When**: ./install imports image_file's images (``cms images import``, with progress,
  before the API starts);
  POST /v1/images imports the one it registers; and a create from an image that has no copy
  yet (image_file edited by hand, or a deployment by site.yml alone) imports it first. One
  import at a time across processes (a lock file in $CMS_RUN_DIR), so two API workers never
  upload the same volume at once.

Progress (hashing and each upload) goes to ``out`` a line per tenth of a large image.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from cms import files, runlock
from cms.errors import CmsError

HEAD_BYTES = 72 * 1024          # reaches the Btrfs superblock at 64 KiB
CHUNK = 4 * 1024 * 1024
LARGE = 64 * 1024 * 1024            # images above this report progress
DISK_FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc", "qed")


class ImageError(CmsError):
    """A file that cannot be an image (unreadable, not a disk image) or an import that failed."""


@dataclass(frozen=True)
class Facts:
    path: str
    size: int
    format: str
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Imported:
    path: str            # the source
    sha256: str
    format: str
    size: int
    copy: str            # the path of the copy, the same on every host
    hosts: tuple[str, ...]
    uploaded: tuple[str, ...]   # hosts that got the bytes this time (empty: all had them)


# -- what a file is -----------------------------------------------------------------------------

def format_of(head: bytes, size: int) -> str | None:
    """The disk image format of a file from its first bytes, or None when it is none.

    Formats with a header are told by their magic (as QEMU and libvirt probe them). Raw has
    no header, so it counts as a disk only with a partition table (MBR boot signature, GPT)
    or a file system at its usual place (ext2/3/4, XFS, Btrfs), and a size in whole sectors.
    """
    magics = ((b"QFI\xfb", "qcow2"), (b"KDMV", "vmdk"), (b"# Disk DescriptorFile", "vmdk"),
              (b"vhdxfile", "vhdx"), (b"conectix", "vpc"), (b"QED\x00", "qed"))
    for magic, fmt in magics:
        if head.startswith(magic):
            return fmt
    if head[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if size % 512 or size < 1024:
        return None
    if head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART":
        return "raw"
    if head[1080:1082] == b"\x53\xef" or head[:4] == b"XFSB" or head[0x10040:0x10048] == b"_BHRfS_M":
        return "raw"
    return None


def check(path: str) -> Facts:
    """What the file at ``path`` is; ImageError with one line naming it when it is not an image."""
    if not os.path.isabs(path):
        raise ImageError(f"{path}: not an absolute path")
    try:
        head, st = files.read_regular(path, HEAD_BYTES)
    except files.Unreadable as exc:
        raise ImageError(f"{path}: " + exc.words({
            files.MISSING: "no such file", files.DIRECTORY: "is a directory, not an image",
            files.SPECIAL: "not a regular file, so not an image file",
            files.DENIED: "cannot be read, not even by root (permission denied)"}, "cannot be read")) from None
    if not st.st_size:
        raise ImageError(f"{path}: is empty, not a disk image")
    fmt = format_of(head, st.st_size)
    if fmt is None:
        raise ImageError(f"{path}: not a disk image (no {', '.join(DISK_FORMATS[:1] + DISK_FORMATS[2:-1])} or "
                         f"{DISK_FORMATS[-1]} header, and no partition table or file system for a raw disk)")
    return Facts(path, st.st_size, fmt, st.st_mtime_ns, st.st_ino)


# -- progress and hashing -----------------------------------------------------------------------

def progress_printer(label: str, total: int, out: TextIO | None) -> Callable[[int], None]:
    """A callback(done_bytes) that prints a line each tenth of a large image."""
    state = {"next": 10, "t0": time.monotonic()}

    def report(done: int) -> None:
        if out is None or total < LARGE:
            return
        pct = done * 100 // total
        if pct >= state["next"] or done >= total:
            mib_s = done / 2**20 / max(time.monotonic() - state["t0"], 1e-3)
            print(f"{label}: {pct}% ({done // 2**20} of {total // 2**20} MiB, {mib_s:.0f} MiB/s)", file=out, flush=True)
            state["next"] = pct // 10 * 10 + 10
    return report


def sha256_of(path: str, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    done = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done)
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return h.hexdigest()


def volume_name(sha256: str, fmt: str) -> str:
    return f"cms-image-{sha256[:32]}.{'img' if fmt == 'raw' else fmt}"


# -- the registry and the import ------------------------------------------------------------------

class ImageStore:
    """Imports images into every host's image pool and remembers where each copy is."""

    def __init__(self, cfg: Any, store: Any, fleet: Any = None) -> None:
        self.cfg, self.store, self.fleet = cfg, store, fleet

    # The state database's modules (SQLAlchemy) are imported where they are used: ./install runs
    # this module's checks (cms.inventory check) on the system python3, before the venv exists.

    def copy_of(self, path: str) -> dict[str, Any] | None:
        """The import record of a source path: sha256, format, size, copy; None when not imported."""
        import sqlalchemy as sa

        from cms.db.schema import images_imported as IMPORTED
        rows = self.store.all(sa.select(IMPORTED).where(IMPORTED.c.path == path))
        return dict(rows[0]) if rows else None

    def record(self, imp: Imported, facts: Facts) -> None:
        from cms import db
        from cms.db.schema import images_imported as IMPORTED
        with self.store.write() as c:
            db.upsert(c, IMPORTED, [{"path": imp.path, "size": facts.size, "mtime_ns": facts.mtime_ns,
                                     "inode": facts.inode, "sha256": imp.sha256, "format": imp.format,
                                     "copy": imp.copy, "hosts": json.dumps(list(imp.hosts)),
                                     "imported": time.time()}], ["path"])

    def _known_hash(self, facts: Facts) -> str | None:
        r = self.copy_of(facts.path)
        if r and (r["size"], r["mtime_ns"], r["inode"]) == (facts.size, facts.mtime_ns, facts.inode):
            return str(r["sha256"])
        return None

    def import_file(self, path: str, label: str = "", out: TextIO | None = None) -> Imported:
        """Check, hash and upload ``path`` to every host (what is there already is kept)."""
        with runlock.held("images"):
            return self._import(path, label, out)

    def copy_or_import(self, path: str) -> dict[str, Any]:
        """The import record of ``path``, importing it first when there is none."""
        rec = self.copy_of(path)
        if rec is None:
            self.import_file(path)
            rec = self.copy_of(path)
            assert rec is not None
        return rec

    def _elsewhere(self, host: str, vol_path: str) -> ImageError:
        img = self.cfg.image
        return ImageError(f"host {host}: pool {img.pool} keeps its volumes in {os.path.dirname(vol_path)}, not in "
                          f"image.pool_path {img.pool_path}; an image must be at the same path on every host")

    def _import(self, path: str, label: str, out: TextIO | None) -> Imported:
        facts = check(path)
        label = label or os.path.basename(path)
        sha = self._known_hash(facts) or sha256_of(path, progress_printer(f"{label}: hashing", facts.size, out))
        vol = volume_name(sha, facts.format)
        img = self.cfg.image
        copy = os.path.join(img.pool_path, vol)
        uploaded = []
        for name in self.fleet.hosts:
            host = self.fleet.host(name)
            host.storage.ensure_pool(img.pool, img.pool_path)
            have = host.storage.volume_facts(img.pool, vol)
            if have is not None and have.physical == facts.size and have.path == copy:
                continue
            if have is not None and have.path != copy:
                raise self._elsewhere(name, have.path)
            if have is not None:        # an upload that did not finish
                host.storage.delete_volume(img.pool, vol)
            with open(path, "rb") as fh:
                got = host.storage.upload_volume(img.pool, vol, fh, facts.size,
                                         progress_printer(f"{label}: copying to {name}", facts.size, out))
            if got.path != copy:
                host.storage.delete_volume(img.pool, vol)
                raise self._elsewhere(name, got.path)
            if got.format not in (facts.format, "") and facts.format != "raw":
                host.storage.delete_volume(img.pool, vol)
                raise ImageError(f"{path}: libvirt reads the copy on {name} as {got.format}, not {facts.format}")
            uploaded.append(name)
        imp = Imported(path, sha, facts.format, facts.size, copy, tuple(self.fleet.hosts), tuple(uploaded))
        self.record(imp, facts)
        return imp
