"""Storage on one host: the dir pool for replica disks, and its volumes.

A helper each ``cms.virt.host.Host`` composes (``host.storage``), over the host's call object.
A replica's disk is a qcow2 overlay whose ``<backingStore>`` is the golden image, made
through the storage pool volume API, never by running qemu-img.

Images (cms.images decides what and where): ``upload_volume`` fills a new volume through
libvirt's upload stream (virStorageVolUpload), so a host reached over qemu+ssh gets the
bytes over the same connection; ``volume_facts`` reads back what libvirt sees (path, bytes
in the file, the format it probed).
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable
from xml.sax.saxutils import escape

import libvirt

from cms import errors
from cms.virt import xml as vxml
from cms.virt.calls import Calls


UPLOAD_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class VolumeFacts:
    path: str
    physical: int        # bytes in the file (the test driver keeps none: its capacity)
    format: str          # what libvirt probed: qcow2, raw, ...


def _volume_facts(volume_xml: str) -> VolumeFacts:
    root = ET.fromstring(volume_xml)
    fmt = root.find("target/format")
    size = root.find("physical")
    size = size if size is not None else root.find("capacity")
    return VolumeFacts(root.findtext("target/path") or "", int(size.text or 0) if size is not None else 0,
                       fmt.get("type", "") if fmt is not None else "")


def _upload_volume_xml(name: str, capacity: int) -> str:
    # Raw and empty: the upload writes the bytes as they are (a qcow2 stays a qcow2, which
    # libvirt then probes), and one that stops early leaves the file shorter than the source.
    # 0644: QEMU reads it as a backing file under its own uid.
    return (f"<volume type='file'><name>{escape(name)}</name><capacity unit='bytes'>{capacity}</capacity>"
            "<allocation unit='bytes'>0</allocation>"
            "<target><format type='raw'/><permissions><mode>0644</mode></permissions></target></volume>")


class Storage:
    """One host's pools and volumes."""

    # An overlay starts at a few hundred KiB but grows as the guest writes; refuse to make
    # one in a pool with less room than this rather than let the guest hit ENOSPC later.
    MIN_POOL_FREE_BYTES = 256 * 1024 * 1024

    def __init__(self, calls: Calls, uri: str, is_local_test: bool) -> None:
        self._calls = calls
        self.name = calls.host
        self.uri = uri
        self.is_local_test = is_local_test

    def ensure_pool(self, name: str, path: str) -> None:
        """A dir pool for replica overlays: defined, built and started if missing."""
        with self._calls("virStoragePoolDefineXML", f"pool {name}") as c:
            try:
                p = c.storagePoolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                p = c.storagePoolDefineXML(vxml.render_dir_pool(name, path), 0)
                with contextlib.suppress(libvirt.libvirtError):
                    p.build(0)
                with contextlib.suppress(libvirt.libvirtError):
                    p.setAutostart(1)
            if not p.isActive():
                p.create(0)

    def _backing_size(self, c: Any, path: str) -> int:
        try:
            return int(c.storageVolLookupByPath(path).info()[1])
        except libvirt.libvirtError:
            pass
        if self.uri.startswith(("qemu:///", "test://")) and os.path.exists(path):
            # The image sits outside any pool: read its virtual size from the qcow2 header.
            with open(path, "rb") as fh:
                try:
                    return vxml.qcow2_virtual_size(fh.read(32))
                except ValueError:
                    raise errors.ImageMissing(f"golden image {path} is not a qcow2 image", self.name, path) from None
        if self.is_local_test:
            return 1 << 30  # the test driver keeps volumes as metadata only
        raise errors.ImageMissing(f"golden image {path} not found", self.name, path)

    def create_overlay(self, pool: str, vol_name: str, backing_path: str) -> str:
        """A copy-on-write linked clone of the golden image; returns its path."""
        with self._calls("virStorageVolCreateXML", f"volume {pool}/{vol_name}") as c:
            if not self.is_local_test and self.uri.startswith("qemu:///") and not os.path.exists(backing_path):
                raise errors.ImageMissing(f"golden image {backing_path} not found; build it with `make image`",
                                          self.name, backing_path)
            p = c.storagePoolLookupByName(pool)
            if not self.is_local_test:
                with contextlib.suppress(libvirt.libvirtError):
                    p.refresh(0)
            avail = int(p.info()[3])
            if avail < self.MIN_POOL_FREE_BYTES:
                raise errors.NoSpace(f"storage pool {pool} has {avail // 2**20} MiB free, needs at least "
                                     f"{self.MIN_POOL_FREE_BYTES // 2**20} MiB", self.name, f"volume {pool}/{vol_name}")
            size = self._backing_size(c, backing_path)
            vol = p.createXML(vxml.render_overlay_volume(vol_name, backing_path, size,
                                                         self._backing_format(c, backing_path)), 0)
            return vol.path()

    def _backing_format(self, c: Any, path: str) -> str:
        """The format libvirt probed for an image in a pool (an imported image may be raw);
        qcow2, the golden image's, for one outside any pool."""
        try:
            return _volume_facts(c.storageVolLookupByPath(path).XMLDesc(0)).format or "qcow2"
        except libvirt.libvirtError:
            return "qcow2"

    def delete_volume(self, pool: str, vol_name: str) -> bool:
        """Delete a volume; False if it was already gone."""
        try:
            with self._calls("virStorageVolDelete", f"volume {pool}/{vol_name}") as c:
                c.storagePoolLookupByName(pool).storageVolLookupByName(vol_name).delete(0)
            return True
        except errors.NotFound:
            return False

    def list_volumes(self, pool: str) -> list[str]:
        with self._calls("virStoragePoolListAllVolumes", f"pool {pool}") as c:
            p = c.storagePoolLookupByName(pool)
            with contextlib.suppress(libvirt.libvirtError):
                p.refresh(0)
            return sorted(p.listVolumes())

    # -- images ---------------------------------------------------------------------------

    def volume_facts(self, pool: str, vol_name: str) -> VolumeFacts | None:
        """Path, size in bytes and probed format of a volume; None when it does not exist."""
        try:
            with self._calls("virStorageVolGetXMLDesc", f"volume {pool}/{vol_name}") as c:
                p = c.storagePoolLookupByName(pool)
                if not self.is_local_test:
                    with contextlib.suppress(libvirt.libvirtError):
                        p.refresh(0)        # a file another process or a host's role put there
                return _volume_facts(p.storageVolLookupByName(vol_name).XMLDesc(0))
        except errors.NotFound:
            return None

    def upload_volume(self, pool: str, vol_name: str, src: BinaryIO, size: int,
                      progress: Callable[[int], None] | None = None) -> VolumeFacts:
        """A new volume holding the ``size`` bytes read from ``src``, sent through
        virStorageVolUpload. A failed or interrupted upload deletes the volume again."""
        with self._calls("virStorageVolUpload", f"volume {pool}/{vol_name}") as c:
            p = c.storagePoolLookupByName(pool)
            if self.is_local_test:
                # the test driver keeps volumes as metadata and cannot upload: the size is all it keeps
                vol = p.createXML(_upload_volume_xml(vol_name, size), 0)
                if progress:
                    progress(size)
                return VolumeFacts(vol.path(), size, "")     # no bytes, so no probed format
            vol = p.createXML(_upload_volume_xml(vol_name, 0), 0)
            stream = c.newStream(0)
            sent = [0]
            failed: list[OSError] = []

            def read(_stream: Any, nbytes: int, _opaque: Any) -> bytes:
                try:
                    data = src.read(min(nbytes, UPLOAD_CHUNK, size - sent[0]))
                except OSError as exc:      # ends the stream; reported below
                    failed.append(exc)
                    return b""
                sent[0] += len(data)
                if progress and data:
                    progress(sent[0])
                return data

            done = False
            try:
                vol.upload(stream, 0, size, 0)
                stream.sendAll(read, None)
                stream.finish()
                done = True
            finally:
                if not done:
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()
                    with contextlib.suppress(libvirt.libvirtError):
                        vol.delete(0)
            if sent[0] != size:
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
                why = f": {failed[0].strerror or failed[0]}" if failed else ""
                raise errors.VirtError(f"the source gave {sent[0]} of {size} bytes{why}", self.name,
                                       f"volume {pool}/{vol_name}")
            # libvirt refreshes the pool by itself once the stream closes, in a thread of its
            # own; refreshing here makes the probed format visible now
            with contextlib.suppress(libvirt.libvirtError):
                p.refresh(0)
            return _volume_facts(p.storageVolLookupByName(vol_name).XMLDesc(0))
