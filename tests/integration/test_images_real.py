"""Image import on the real libvirtd: the upload stream, what libvirt probes, overlays on the copy.

No VM boots here (tests/system/test_install_images.py boots one from an imported image).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import uuid
from pathlib import Path

import pytest

from cms import errors, images
from cms.lab.realstack import TEST_DIR, drop_pool
from cms.store import Store
from cms.virt import Fleet
from tests.support import make_config

pytestmark = pytest.mark.real


@pytest.fixture
def real(tmp_path, run_dir):
    name = f"cmstest-img-{uuid.uuid4().hex[:8]}"
    cfg = make_config(hosts=[{"name": "local", "uri": "qemu:///system"}], state_db=str(tmp_path / "state.db"),
                      libvirt={"domain_type": "qemu", "pool": name, "pool_path": str(TEST_DIR / name)},
                      image={"pool": f"{name}-images", "pool_path": str(TEST_DIR / f"{name}-images")})
    fleet = Fleet(cfg)
    fleet.host("local").storage.ensure_pool(cfg.libvirt.pool, cfg.libvirt.pool_path)    # for the overlays
    try:
        yield cfg, fleet, images.ImageStore(cfg, Store(cfg.state_db), fleet)
    finally:
        drop_pool(fleet.host("local"), cfg.libvirt.pool)
        drop_pool(fleet.host("local"), cfg.image.pool)
        fleet.close()


def _qcow2(path: Path, size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True, timeout=60)
    return path


def test_upload_stream_copies_the_bytes_and_libvirt_probes_the_format(tmp_path, real):
    cfg, fleet, store = real
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    src = _qcow2(home / "a.qcow2")
    src.chmod(0o600)
    out = io.StringIO()
    imp = store.import_file(str(src), out=out)
    host = fleet.host("local")
    facts = host.storage.volume_facts(cfg.image.pool, Path(imp.copy).name)
    assert facts == type(facts)(imp.copy, src.stat().st_size, "qcow2")
    copy = Path(imp.copy)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == imp.sha256
    assert copy.stat().st_mode & 0o777 == 0o644 and Path(cfg.image.pool_path).stat().st_mode & 0o005 == 0o005
    # an overlay on the copy names it, with its format, as its backing store
    disk = host.storage.create_overlay(cfg.libvirt.pool, "ov.qcow2", imp.copy)
    vol_xml = host.conn().storageVolLookupByPath(disk).XMLDesc(0)
    assert f"<path>{imp.copy}</path>" in vol_xml and "<format type='qcow2'/>" in vol_xml.split("<backingStore>")[1]
    host.storage.delete_volume(cfg.libvirt.pool, "ov.qcow2")


def test_a_raw_disk_stays_raw_and_its_overlays_say_so(tmp_path, real):
    cfg, fleet, store = real
    raw = tmp_path / "disk.img"
    raw.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (512 * 2047))     # an MBR, 1 MiB
    imp = store.import_file(str(raw))
    assert (imp.format, Path(imp.copy).suffix) == ("raw", ".img")
    host = fleet.host("local")
    assert host.storage.volume_facts(cfg.image.pool, Path(imp.copy).name).format == "raw"
    disk = host.storage.create_overlay(cfg.libvirt.pool, "ov-raw.qcow2", imp.copy)
    backing = host.conn().storageVolLookupByPath(disk).XMLDesc(0).split("<backingStore>")[1]
    assert "<format type='raw'/>" in backing
    host.storage.delete_volume(cfg.libvirt.pool, "ov-raw.qcow2")


class Breaks(io.BytesIO):
    """A source that fails after some bytes, as a disk or NFS read error would."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.after = after

    def read(self, n: int = -1) -> bytes:
        if self.tell() >= self.after:
            raise OSError(5, "Input/output error")
        return super().read(min(n, self.after - self.tell()))


def test_an_upload_that_fails_leaves_no_volume_and_a_short_one_is_made_again(tmp_path, real):
    cfg, fleet, store = real
    host = fleet.host("local")
    host.storage.ensure_pool(cfg.image.pool, cfg.image.pool_path)
    data = b"x" * (3 << 20)
    with pytest.raises(errors.VirtError, match=r"the source gave 1048576 of 3145728 bytes: Input/output error"):
        host.storage.upload_volume(cfg.image.pool, "broken.img", Breaks(data, 1 << 20), len(data))
    assert "broken.img" not in host.storage.list_volumes(cfg.image.pool)
    # a copy cut short (the process killed mid-upload) is shorter than the source: made again
    src = _qcow2(tmp_path / "b.qcow2")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    vol = images.volume_name(sha, "qcow2")
    host.storage.upload_volume(cfg.image.pool, vol, io.BytesIO(src.read_bytes()[:1000]), 1000)
    imp = store.import_file(str(src))
    assert imp.uploaded == ("local",)
    assert Path(imp.copy).read_bytes() == src.read_bytes()
