"""cms.images: what counts as a disk image, the one line for a file that is not one, progress,
and the import into every host's image pool over libvirt test:/// hosts (metadata volumes)."""

from __future__ import annotations

import io
import struct

import pytest

from cms import images
from cms.images import ImageError, ImageStore, check, format_of


def qcow2_header(size: int = 1 << 30) -> bytes:
    return b"QFI\xfb" + struct.pack(">I", 3) + b"\0" * 16 + struct.pack(">Q", size) + b"\0" * 480


def sector(n: int = 2048) -> bytes:
    return b"\0" * (512 * n)


@pytest.mark.parametrize("head, size, want", [
    (qcow2_header(), 200_000, "qcow2"),
    (b"KDMV" + b"\0" * 508, 512 * 100, "vmdk"),
    (b"# Disk DescriptorFile\n", 400, "vmdk"),
    (b"vhdxfile" + b"\0" * 504, 4096, "vhdx"),
    (b"conectix" + b"\0" * 504, 4096, "vpc"),
    (b"QED\0" + b"\0" * 508, 4096, "qed"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0") + b"\x7f\x10\xda\xbe" + b"\0" * 444, 8192, "vdi"),
    (b"\0" * 510 + b"\x55\xaa", 512 * 2048, "raw"),                       # an MBR
    (b"\0" * 512 + b"EFI PART" + b"\0" * 504, 512 * 2048, "raw"),         # a GPT
    (b"\0" * 1080 + b"\x53\xef" + b"\0" * 100, 512 * 2048, "raw"),        # ext4, as mkfs.ext4 -d makes it
    (b"XFSB" + b"\0" * 1000, 512 * 2048, "raw"),
    (b"\0" * 510 + b"\x55\xaa", 512 * 2048 + 1, None),                    # not whole sectors
    (b"hello, I am a text file\n" * 100, 2400, None),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 600, 512 * 4, None),
    (b"\0" * 4096, 512 * 2048, None),                                       # zeros: nothing says disk
    (b"PK\x03\x04" + b"\0" * 508, 512 * 8, None),
])
def test_format_of(head, size, want):
    assert format_of(head, size) == want


def test_check_names_the_file_in_one_line(tmp_path):
    good = tmp_path / "Ubuntu-12.04-amd64.qcow2"
    good.write_bytes(qcow2_header() + b"\0" * 4096)
    f = check(str(good))
    assert (f.format, f.size) == ("qcow2", good.stat().st_size)
    text = tmp_path / "notes.qcow2"
    text.write_text("not a disk\n" * 500)
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    cases = [(text, "not a disk image (no qcow2, vmdk, vdi, vhdx, vpc or qed header, and no partition table or "
                    "file system for a raw disk)"),
             (empty, "is empty, not a disk image"), (tmp_path / "nope.qcow2", "no such file"),
             (tmp_path, "is a directory, not an image")]
    for path, why in cases:
        with pytest.raises(ImageError) as ei:
            check(str(path))
        assert str(ei.value) == f"{path}: {why}"
    with pytest.raises(ImageError, match="not an absolute path"):
        check("relative.qcow2")


def test_unreadable_even_by_root_is_one_line(tmp_path, monkeypatch):
    p = tmp_path / "squashed.qcow2"
    p.write_bytes(qcow2_header())

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(ImageError) as ei:
        check(str(p))
    assert str(ei.value) == f"{p}: cannot be read, not even by root (permission denied)"


def test_progress_prints_each_tenth_of_a_large_image_only():
    out = io.StringIO()
    report = images.progress_printer("image 100 u: copying to pm1", 100 * 2**20, out)
    for done in range(0, 100 * 2**20 + 1, 2**20):
        report(done)
    lines = out.getvalue().splitlines()
    assert [ln.split(": ")[2].split("%")[0] for ln in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[-1].startswith("image 100 u: copying to pm1: 100% (100 of 100 MiB, ")
    small = io.StringIO()
    report = images.progress_printer("x", 2**20, small)
    report(2**20)
    assert small.getvalue() == ""


def test_volume_names_are_keyed_by_content():
    h = "ab" * 32
    assert images.volume_name(h, "qcow2") == f"cms-image-{'ab' * 16}.qcow2"
    assert images.volume_name(h, "raw") == f"cms-image-{'ab' * 16}.img"
    assert images.volume_name(h, "vmdk") == f"cms-image-{'ab' * 16}.vmdk"


# -- the import, over two libvirt test:/// hosts ----------------------------------------------------

@pytest.fixture
def two_hosts(tmp_path, run_dir, state_db):
    from cms.store import Store
    from cms.virt import Fleet
    from tests.support import make_config, write_node_xml
    cfg = make_config(hosts=[{"name": "pm1", "uri": write_node_xml(tmp_path / "a.xml")},
                             {"name": "pm2", "uri": write_node_xml(tmp_path / "b.xml")}],
                      state_db=state_db, image={"pool": "imgs", "pool_path": "/srv/cms-images"})
    fleet = Fleet(cfg)
    yield cfg, ImageStore(cfg, Store(cfg.state_db), fleet), fleet
    fleet.close()


def test_import_to_every_host_once_by_content(tmp_path, two_hosts):
    cfg, store, fleet = two_hosts
    src = tmp_path / "home" / "Ubuntu-12.04-amd64.qcow2"
    src.parent.mkdir(mode=0o700)
    src.write_bytes(qcow2_header() + b"\1" * 100_000)
    imp = store.import_file(str(src))
    vol = images.volume_name(imp.sha256, "qcow2")
    assert (imp.format, imp.size, imp.hosts, imp.uploaded) == ("qcow2", src.stat().st_size, ("pm1", "pm2"), ("pm1", "pm2"))
    assert imp.copy == f"/srv/cms-images/{vol}"
    for h in ("pm1", "pm2"):
        assert fleet.host(h).storage.list_volumes("imgs") == [vol]
        assert fleet.host(h).storage.volume_facts("imgs", vol).physical == src.stat().st_size
    assert store.copy_of(str(src))["copy"] == imp.copy
    # again: nothing copied; the same bytes at another path: nothing copied, the same copy
    assert store.import_file(str(src)).uploaded == ()
    twin = tmp_path / "twin.qcow2"
    twin.write_bytes(src.read_bytes())
    again = store.import_file(str(twin))
    assert (again.uploaded, again.copy, again.sha256) == ((), imp.copy, imp.sha256)
    # other bytes: another volume
    other = tmp_path / "other.qcow2"
    other.write_bytes(qcow2_header() + b"\2" * 100_000)
    assert store.import_file(str(other)).uploaded == ("pm1", "pm2")
    assert len(fleet.host("pm1").storage.list_volumes("imgs")) == 2


def test_an_unchanged_file_is_not_hashed_again(tmp_path, two_hosts, monkeypatch):
    _cfg, store, _fleet = two_hosts
    src = tmp_path / "a.qcow2"
    src.write_bytes(qcow2_header() + b"\1" * 1000)
    store.import_file(str(src))
    monkeypatch.setattr(images, "sha256_of", lambda *a, **k: pytest.fail("hashed again"))
    assert store.import_file(str(src)).uploaded == ()


def test_a_partial_copy_is_made_again(tmp_path, two_hosts):
    _cfg, store, fleet = two_hosts
    src = tmp_path / "a.qcow2"
    src.write_bytes(qcow2_header() + b"\1" * 5000)
    imp = store.import_file(str(src))
    vol = images.volume_name(imp.sha256, "qcow2")
    fleet.host("pm2").storage.delete_volume("imgs", vol)
    fleet.host("pm2").storage.upload_volume("imgs", vol, io.BytesIO(b"x" * 10), 10)   # as an upload cut short
    from cms.db.schema import images_imported
    with store.store.write() as c:
        c.execute(images_imported.delete())
    again = store.import_file(str(src))
    assert again.uploaded == ("pm2",)
    assert fleet.host("pm2").storage.volume_facts("imgs", vol).physical == src.stat().st_size


def test_a_host_whose_pool_is_elsewhere_is_refused(tmp_path, two_hosts):
    _cfg, store, fleet = two_hosts
    fleet.host("pm2").storage.ensure_pool("imgs", "/elsewhere")
    src = tmp_path / "a.qcow2"
    src.write_bytes(qcow2_header() + b"\1" * 5000)
    with pytest.raises(ImageError) as ei:
        store.import_file(str(src))
    assert str(ei.value) == ("host pm2: pool imgs keeps its volumes in /elsewhere, not in image.pool_path "
                             "/srv/cms-images; an image must be at the same path on every host")
    assert store.copy_of(str(src)) is None


def test_not_an_image_is_refused_before_any_host_is_touched(tmp_path, two_hosts):
    _cfg, store, fleet = two_hosts
    src = tmp_path / "notes.txt"
    src.write_text("hello\n" * 1000)
    with pytest.raises(ImageError, match="not a disk image"):
        store.import_file(str(src))
    with pytest.raises(Exception):
        fleet.host("pm1").storage.list_volumes("imgs")      # the pool was not even made


def test_a_fifo_or_device_is_refused_without_opening_it(tmp_path):
    import os
    fifo = tmp_path / "pipe.qcow2"
    os.mkfifo(fifo)
    for p in (str(fifo), "/dev/zero", "/dev/null"):
        with pytest.raises(ImageError) as ei:
            check(p)
        assert str(ei.value) == f"{p}: not a regular file, so not an image file"


def test_cms_images_import_is_the_installers_command(tmp_path, run_dir, capsys):
    """`cms images import IMAGE_FILE` (what ./install runs, without the API): a line per image,
    2 and one line for a bad image_file, 1 and one line for an image that cannot be imported."""
    from cms import cli, config
    from cms.store import Store
    from tests.support import write_node_xml
    src = tmp_path / "Debian-12.qcow2"
    src.write_bytes(qcow2_header() + b"\3" * 50_000)
    toml = tmp_path / "cms.toml"
    toml.write_text(f'state_db = "{tmp_path / "state.db"}"\n\n[[hosts]]\nname = "pm1"\n'
                    f'uri = "{write_node_xml(tmp_path / "n.xml")}"\n\n[image]\npool = "imgs"\n'
                    'pool_path = "/srv/cms-images"\n')
    image_file = tmp_path / "image_file"
    image_file.write_text(f"{src}\n")
    assert cli.main(["images", "import", "--config", str(toml), str(image_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    record = ImageStore(config.load(toml), Store(tmp_path / "state.db")).copy_of(str(src))
    assert record is not None and out[-1] == (f"image 100 Debian-12: qcow2, 0 MiB, sha256 {record['sha256'][:12]}: "
                                              f"copied to pm1 ({record['copy']})")
    image_file.write_text("relative/path.qcow2\n")
    assert cli.main(["images", "import", "--config", str(toml), str(image_file)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("cms: image_file ") and "is not a full path" in err[0]
    (tmp_path / "text.img").write_text("not an image\n")
    image_file.write_text(f"{tmp_path / 'text.img'}\n")
    assert cli.main(["images", "import", "--config", str(toml), str(image_file)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("cms: ") and "text.img" in err[0]
