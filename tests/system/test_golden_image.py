"""The golden image `make image` builds (scripts/build-image.sh, the golden_image role)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path("/var/lib/cms/images")
PLAYBOOK_TIMEOUT_S = 1800


def run_playbook(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(ROOT / "playbooks/golden-image.yml"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1"})


def recap(output: str) -> dict[str, int]:
    m = re.search(r"localhost\s*:\s*(ok=\d+.*)$", output, re.M)
    assert m, f"no play recap in:\n{output[-2000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


@pytest.fixture(scope="module")
def built():
    """Build (or find cached) the image once, as `make image` does."""
    proc = subprocess.run([str(ROOT / "scripts/build-image.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=PLAYBOOK_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((IMAGES / "manifest.json").read_text())


def test_artefacts_exist_and_libvirt_qemu_can_read_them(built):
    for name in ("golden.qcow2", "vmlinuz", "initrd.img", "manifest.json"):
        p = IMAGES / name
        assert p.exists(), p
        real = p.resolve()
        assert real.parent.name == built["input_hash"]
        assert real.stat().st_mode & 0o777 == 0o644, f"{real} is not 0644"
        d = real.parent
        while d != Path("/"):
            assert d.stat().st_mode & stat.S_IXOTH, f"{d} is not searchable by others"
            d = d.parent
    with open(IMAGES / "golden.qcow2", "rb") as fh:
        assert fh.read(4) == b"QFI\xfb"
    with open(IMAGES / "vmlinuz", "rb") as fh:
        assert fh.read(0x206)[0x202:0x206] == b"HdrS"  # a bzImage
    with open(IMAGES / "initrd.img", "rb") as fh:
        assert fh.read(6) == b"070701"  # newc cpio


def test_manifest_fields(built):
    assert re.fullmatch(r"[0-9a-f]{16}", built["input_hash"])
    assert built["variant"] == "minimal"
    assert built["build_time_s"] > 0
    assert built["kernel_version"].endswith("-cloud-amd64")
    for name in ("golden.qcow2", "vmlinuz", "initrd.img"):
        assert built["sizes"][name] == (IMAGES / name).stat().st_size > 0
    assert {"systemd-sysv", "python3", "linux-image-cloud-amd64"} <= set(built["packages"])


def test_second_run_changes_nothing(built):
    proc = run_playbook()
    assert proc.returncode == 0, proc.stdout[-3000:]
    r = recap(proc.stdout)
    assert r["changed"] == 0 and r["failed"] == 0, proc.stdout[-3000:]
    assert json.loads((IMAGES / "manifest.json").read_text())["input_hash"] == built["input_hash"]


def dry_run_hash(*extra: str) -> tuple[str, str]:
    proc = run_playbook("-e", "golden_image_dry_run=true", *extra)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert recap(proc.stdout)["changed"] == 0
    m = re.search(r"golden image (\S+) inputs ([0-9a-f]{16}): (cached|not cached)", proc.stdout)
    assert m, proc.stdout[-3000:]
    return m.group(2), m.group(3)


def test_a_variant_is_cached_apart_and_leaves_the_stable_paths_alone(built):
    """Different inputs hash to a different cache dir; the stable paths stay on minimal."""
    h, state = dry_run_hash()
    assert (h, state) == (built["input_hash"], "cached")
    variant = '{"golden_image_variant": "probe", "golden_image_extra_packages": ["openssh-server"]}'
    hv, _ = dry_run_hash("-e", variant)
    assert hv != h
    hv2, _ = dry_run_hash("-e", '{"golden_image_variant": "probe", "golden_image_extra_packages": ["libvirt0"]}')
    assert hv2 not in (h, hv)
    assert json.loads((IMAGES / "manifest.json").read_text())["input_hash"] == built["input_hash"]


def test_role_and_playbook_pass_ansible_lint_production():
    proc = subprocess.run([str(ROOT / ".venv/bin/ansible-lint"), "--nocolor", "-f", "pep8", "--profile", "production",
                           "roles/golden_image", "playbooks/golden-image.yml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ.get('PATH', '')}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
