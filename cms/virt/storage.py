"""Storage on one host: the dir pool for replica disks, and its volumes.

Mixed into ``cms.virt.host.Host`` (it uses the Host's ``_call``, ``name`` and ``uri``).
A replica's disk is a qcow2 overlay whose ``<backingStore>`` is the golden image, made
through the storage pool volume API, never by running qemu-img.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import libvirt

from cms import errors
from cms.virt import xml as vxml


class Storage:
    """Pools and volumes (a mixin of Host)."""

    name: str
    uri: str
    is_local_test: bool
    _call: Any

    # An overlay starts at a few hundred KiB but grows as the guest writes; refuse to make
    # one in a pool with less room than this rather than let the guest hit ENOSPC later.
    MIN_POOL_FREE_BYTES = 256 * 1024 * 1024

    def ensure_pool(self, name: str, path: str) -> None:
        """A dir pool for replica overlays: defined, built and started if missing."""
        with self._call("virStoragePoolDefineXML", f"pool {name}") as c:
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
        with self._call("virStorageVolCreateXML", f"volume {pool}/{vol_name}") as c:
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
            vol = p.createXML(vxml.render_overlay_volume(vol_name, backing_path, size), 0)
            return vol.path()

    def delete_volume(self, pool: str, vol_name: str) -> bool:
        """Delete a volume; False if it was already gone."""
        try:
            with self._call("virStorageVolDelete", f"volume {pool}/{vol_name}") as c:
                c.storagePoolLookupByName(pool).storageVolLookupByName(vol_name).delete(0)
            return True
        except errors.NotFound:
            return False

    def list_volumes(self, pool: str) -> list[str]:
        with self._call("virStoragePoolListAllVolumes", f"pool {pool}") as c:
            p = c.storagePoolLookupByName(pool)
            with contextlib.suppress(libvirt.libvirtError):
                p.refresh(0)
            return sorted(p.listVolumes())
