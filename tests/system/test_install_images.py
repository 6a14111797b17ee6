"""004's own scenario on the real libvirtd: ./install with its image in a root-only directory.

The image file sits in a 0700 directory, where QEMU (uid libvirt-qemu) cannot read it. The
install imports it into the host's image pool; /vm/create then boots a VM from that copy and
the guest's server answers /health; /image/list keeps the spec's name and id; a second
install with the same files copies nothing. (Bad images are refused in test_install.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from cms.lab.realstack import GOLDEN, TEST_DIR, drop_pool, wait_until
from cms.virt import Host
from tests.support import free_port
from tests.system.test_install import run_install

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]


def _get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def _stop_api(run: Path) -> None:
    pidfile = run / "cms-api.pid"
    if pidfile.exists():
        subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--pidfile", str(pidfile),
                        "--retry", "TERM/20/KILL/5", "--remove-pidfile"], timeout=60, check=False)


def test_install_then_create_from_a_0700_directory_and_install_again(tmp_path):
    assert GOLDEN.exists(), "make test builds the golden image first"
    home = tmp_path / "home"                 # as a user's home: root only
    home.mkdir(mode=0o700)
    img = home / "img" / "Ubuntu-12.04-amd64.qcow2"
    img.parent.mkdir(mode=0o700)
    shutil.copyfile(os.path.realpath(GOLDEN), img)
    img.chmod(0o600)
    (home / "pm_file").write_text("qemu:///system\n")
    (home / "image_file").write_text(f"{img}\n")
    (home / "types_file").write_text(json.dumps({"types": [{"tid": 1, "cpu": 1, "ram": 512, "disk": 1}]}))
    files = [home / "pm_file", home / "image_file", home / "types_file"]

    name = f"cmstest-inst-{uuid.uuid4().hex[:8]}"
    state = TEST_DIR / name                  # the VMs' pool lives under the state dir: QEMU must reach it
    image_pool, image_pool_path = f"{name}-images", str(TEST_DIR / f"{name}-images")
    port = free_port()
    env = {"CMS_ETC": str(tmp_path / "etc"), "CMS_STATE": str(state), "CMS_RUN_DIR": str(tmp_path / "run"),
           "CMS_LOG_DIR": str(tmp_path / "log"), "CMS_BIND": f"127.0.0.1:{port}", "CMS_INSTALL_MODE": "direct",
           "CMS_POOL": name, "CMS_IMAGE_POOL": image_pool, "CMS_IMAGE_POOL_PATH": image_pool_path}
    url = f"http://127.0.0.1:{port}"
    host = Host("local", "qemu:///system")
    try:
        r = run_install(files, env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert r.stdout.strip().splitlines()[-1] == url
        # progress while hashing and copying a large image, then what became of it
        assert re.search(r"\[install\] image 100 Ubuntu-12.04-amd64: hashing: 100% ", r.stdout), r.stdout
        assert re.search(r"\[install\] image 100 Ubuntu-12.04-amd64: copying to pm1: 100% ", r.stdout), r.stdout
        assert "copied to pm1" in r.stdout
        vols = host.storage.list_volumes(image_pool)
        assert len(vols) == 1 and re.fullmatch(r"cms-image-[0-9a-f]{32}\.qcow2", vols[0]), vols
        copy = Path(image_pool_path) / vols[0]
        assert copy.stat().st_size == img.stat().st_size and copy.stat().st_mode & 0o777 == 0o644
        # the spec's list: the name and id from image_file, as before
        assert _get(url + "/image/list") == {"images": [{"id": 100, "name": "Ubuntu-12.04-amd64"}]}
        v1 = _get(url + "/v1/images")["images"]
        assert [(i["id"], i["path"], i["imported"], i["copy"], i["format"]) for i in v1] == \
            [(100, str(img), True, str(copy), "qcow2")]

        vmid = _get(url + "/vm/create?name=test_vm&instance_type=1", timeout=120)["vmid"]
        assert vmid > 0, (tmp_path / "log" / "cms-api.log").read_text()[-3000:]
        assert _get(f"{url}/vm/query?vmid={vmid}") == {"vmid": vmid, "name": "test_vm", "instance_type": 1, "pmid": 1}
        (dom,) = [d for d in host.stats.owned_domains() if d.meta.vmid == vmid]
        assert dom.meta.image == str(copy)   # backed by the copy, not by the file in the 0700 directory
        xml = host.conn().lookupByName(dom.name).XMLDesc(0)
        assert str(copy) in xml and str(img) not in xml
        wait_until(lambda: _health(dom.meta.port), 180, interval=1.0, what="the VM's /health")

        # again with the same files: nothing copied, the same single volume, the VM untouched
        before = copy.stat()
        r = run_install(files, env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert "image 100 Ubuntu-12.04-amd64: qcow2" in r.stdout and "already on every host" in r.stdout, r.stdout
        assert "copying to" not in r.stdout and "copied to" not in r.stdout
        assert host.storage.list_volumes(image_pool) == vols
        after = copy.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert _get(f"{url}/vm/query?vmid={vmid}")["name"] == "test_vm"
        assert _health(dom.meta.port)
        assert _get(f"{url}/vm/destroy?vmid={vmid}") == {"status": 1}
        assert not host.exists(dom.name)
    finally:
        _stop_api(tmp_path / "run")
        for d in host.stats.owned_domains():
            if name in host.conn().lookupByName(d.name).XMLDesc(0):
                host.domains.remove(d.name, name)
        drop_pool(host, name)
        drop_pool(host, image_pool)
        host.close()
        shutil.rmtree(state, ignore_errors=True)
