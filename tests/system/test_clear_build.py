"""roles/golden_image/files/clear_build.py on a build a killed mmdebstrap left behind: proc,
sys and a tmpfs still mounted inside its root. (CI once failed here: the role's plain delete
hit the read-only /proc inside.) Needs root for the mounts, as the suite has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

CLEAR = ROOT / "roles" / "golden_image" / "files" / "clear_build.py"


def _mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], timeout=10).returncode == 0


def _clear(build: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLEAR), str(build)], capture_output=True, text=True, timeout=60)


def test_an_interrupted_build_with_proc_sys_and_tmpfs_mounted_is_unmounted_and_removed(tmp_path):
    build = tmp_path / "abc.build"
    rootfs = build / "rootfs"
    points = [rootfs / "proc", rootfs / "sys", rootfs / "dev" / "shm"]
    for p in points:
        p.mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "os-release").write_text("ID=debian\n")
    try:
        subprocess.run(["mount", "-t", "proc", "-o", "ro", "proc", str(points[0])], check=True, timeout=10)
        subprocess.run(["mount", "-t", "sysfs", "-o", "ro", "sys", str(points[1])], check=True, timeout=10)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(points[2])], check=True, timeout=10)
        assert all(_mounted(p) for p in points)
        r = _clear(build)
        assert r.returncode == 0, r.stderr
        assert not build.exists()
        assert f"removed interrupted build {build}" in r.stdout
        assert sum(line.startswith("unmounted ") for line in r.stdout.splitlines()) == 3
    finally:
        for p in points:
            if p.exists() and _mounted(p):
                subprocess.run(["umount", "--lazy", str(p)], timeout=10)
    assert not any(str(build) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_a_missing_build_is_nothing_to_do_and_a_plain_one_is_removed(tmp_path):
    r = _clear(tmp_path / "none.build")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    plain = tmp_path / "plain.build"
    (plain / "rootfs" / "usr").mkdir(parents=True)
    r = _clear(plain)
    assert r.returncode == 0 and r.stdout.strip() == f"removed interrupted build {plain}"
    assert not plain.exists()
