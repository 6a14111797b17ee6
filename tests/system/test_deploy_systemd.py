"""site.yml's controller play against a real systemd: a VM booted through cms's own libvirt layer.

This machine has no systemd as PID 1, so the systemd path of the cms_controller role is
checked inside a guest: the golden_image role builds a "deploytest" variant (sshd,
python3-venv, libvirt0 for libvirt-python's shared library), this test writes an SSH key
into a private copy of it, cms.virt.Fleet boots it with QEMU user networking forwarding a
127.0.0.1 port to the guest's sshd, and Ansible deploys the controller over that port from a
wheelhouse built here. Then: both units are active, the API answers inside the guest (the
one port forward is taken by ssh, so the API is asked from inside), a second run changes
nothing, and `systemd-analyze verify` passes on the deployed units and the guest's unit.

One VM at a time, named cms-deploytest-*, always removed with its pool and files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.system.test_ansible import ROOT, build_wheelhouse, changed_tasks, free_port, run_playbook

VARIANT = "deploytest"
EXTRA_PACKAGES = ["openssh-server", "python3-venv", "libvirt0"]
IMAGES = Path("/var/lib/cms/images") / VARIANT
WORK = Path("/var/lib/cms/test")
# 8080 is the guest server's port in every cms image
API_PORT_IN_GUEST = 8090

pytestmark = [pytest.mark.real, pytest.mark.timeout(2400)]


def _run(argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True, **kw)


def build_variant() -> None:
    """The deploytest image, through the golden_image role (cached by its inputs).

    CMS_DEPLOYTEST_REUSE_IMAGE=1 uses the image the role last published for the variant
    instead (for when the role is being changed and a build would not finish).
    """
    if os.environ.get("CMS_DEPLOYTEST_REUSE_IMAGE") == "1" and (IMAGES / "golden.qcow2").exists():
        return
    run_playbook(["-i", "localhost,", "-c", "local", "playbooks/golden-image.yml", "-e",
                  json.dumps({"golden_image_variant": VARIANT, "golden_image_extra_packages": EXTRA_PACKAGES})],
                 timeout=1800)
    for f in ("golden.qcow2", "vmlinuz", "initrd.img"):
        assert (IMAGES / f).exists(), f"the golden_image role did not publish {IMAGES / f}"


def golden_with_key(dest_dir: Path, pubkey: Path) -> Path:
    """A copy of the variant with pubkey as root's authorized_keys.

    The role has no variable for authorized keys, so the key goes into the ext4 filesystem
    with debugfs (no mount, no loop device): qcow2 -> raw, debugfs -w, raw -> qcow2.
    """
    raw = dest_dir / "golden.raw"
    _run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(IMAGES / "golden.qcow2"), str(raw)], 300)
    cmds = dest_dir / "debugfs.cmds"
    cmds.write_text("\n".join([
        "mkdir /root/.ssh",
        f"write {pubkey} /root/.ssh/authorized_keys",
        "set_inode_field /root/.ssh mode 040700",
        "set_inode_field /root/.ssh/authorized_keys mode 0100600",
        "set_inode_field /root/.ssh/authorized_keys uid 0",
        "set_inode_field /root/.ssh/authorized_keys gid 0",
        "",
    ]))
    _run(["debugfs", "-w", "-f", str(cmds), str(raw)], 120)
    check = _run(["debugfs", "-R", "cat /root/.ssh/authorized_keys", str(raw)], 60).stdout
    assert pubkey.read_text().strip() in check, "the key did not land in the image"
    golden = dest_dir / "golden.qcow2"
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(golden)], 300)
    raw.unlink()
    os.chmod(golden, 0o644)
    return golden


class Guest:
    def __init__(self, port: int, key: Path):
        self.port, self.key = port, key

    def ssh_argv(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                "-o", "BatchMode=yes", "root@127.0.0.1"]

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_argv(), command], capture_output=True, text=True, timeout=timeout)

    def wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                p = self.run("true", timeout=30)
                if p.returncode == 0:
                    return
                last = p.stderr
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(2)
        raise AssertionError(f"no SSH on 127.0.0.1:{self.port} after {timeout}s: {last}")


@pytest.fixture
def guest(tmp_path: Path):
    """A booted deploytest VM reachable over SSH; destroyed, undefined and deleted afterwards."""
    from cms.virt import Fleet, OwnerMeta
    from cms.lab.realstack import drop_pool, real_config

    build_variant()
    tag = uuid.uuid4().hex[:8]
    name = f"cms-deploytest-{tag}"
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    key = tmp_path / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], 60)
    port = free_port()
    fleet = None
    try:
        golden = golden_with_key(work, key.with_suffix(".pub"))
        cfg = real_config(
            tmp_path, pool=name, golden=str(golden),
            libvirt={"domain_type": "qemu", "pool": name, "pool_path": str(work / "pool")},
            # no `quiet`: if a boot ever hangs, the serial log shows where
            image={"golden": str(golden), "kernel": str(IMAGES / "vmlinuz"), "initrd": str(IMAGES / "initrd.img"),
                   "cmdline": "root=/dev/vda rw console=ttyS0 net.ifnames=0"},
            network={"mode": "user", "forward_address": "127.0.0.1", "port_min": port, "port_max": port},
        )
        os.environ.setdefault("CMS_RUN_DIR", str(tmp_path / "run"))
        fleet = Fleet(cfg)
        # One boot under TCG once hung with no SSH for 300 s (seen once in ~5 runs; it
        # answers in ~9 s otherwise). A second boot is allowed, bounded; two failures fail
        # the test with both serial logs.
        failures = []
        for attempt in (1, 2):
            spawned = fleet.build_on("local", name, vcpus=2, memory_mib=1536,
                                  meta=OwnerMeta(group="", role="vm", guest_port=22, image="deploytest"))
            g = Guest(spawned.port, key)
            t0 = time.monotonic()
            try:
                g.wait_ssh(timeout=150)
            except AssertionError as exc:
                serial = Path(f"/var/log/libvirt/qemu/{name}-serial.log")
                tail = serial.read_text(errors="replace")[-3000:] if serial.exists() else "(no serial log)"
                failures.append(f"boot {attempt}: {exc}\n--- serial log tail ---\n{tail}")
                print(failures[-1])
                fleet.remove("local", name)
                continue
            print(f"{name}: ssh answered {time.monotonic() - t0:.1f}s after start (boot {attempt})")
            break
        else:
            raise AssertionError("\n\n".join(failures))
        yield g
    finally:
        if fleet is not None:
            try:
                fleet.remove("local", name)
            finally:
                drop_pool(fleet.host("local"), name)
                fleet.close()
        shutil.rmtree(work, ignore_errors=True)


def test_controller_play_on_systemd(guest: Guest, tmp_path: Path):
    wheelhouse = build_wheelhouse(tmp_path / "wheelhouse")
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({
        "all": {
            "children": {
                "hypervisors": {"hosts": {}},
                "controllers": {"hosts": {"cms-deploytest-vm": {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": guest.port,
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(guest.key),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                    "ansible_python_interpreter": "/usr/bin/python3",
                }}},
            },
            "vars": {
                "cms_controller_wheelhouse": str(wheelhouse),
                "cms_controller_api_token": "deploytest-token-0123456789",
                "cms_controller_api_bind": f"127.0.0.1:{API_PORT_IN_GUEST}",
                "cms_controller_api_workers": 1,
                # the guest has no libvirtd; the test driver keeps both services honest
                "cms_controller_hosts": [{"name": "local", "uri": "test:///default"}],
                "cms_controller_domain_type": "qemu",
                "cms_controller_settings": {"groups": {"web": {"min": 0}}},
            },
        }
    }))
    args = ["-i", str(inventory), "playbooks/site.yml", "--tags", "controller"]

    def journal() -> str:
        return guest.run("journalctl -b --no-pager -n 80 -u cms-api -u cms-autoscaler").stdout

    t0 = time.monotonic()
    try:
        out, counts = run_playbook(args, timeout=1500)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- the guest's journal:\n{journal()}") from None
    first = time.monotonic() - t0
    assert counts["cms-deploytest-vm"]["failed"] == 0 and counts["cms-deploytest-vm"]["changed"] > 0

    active = guest.run("systemctl is-active cms-api cms-autoscaler")
    assert active.stdout.split() == ["active", "active"], (
        active.stdout + journal())
    assert guest.run("systemctl is-enabled cms-api cms-autoscaler").stdout.split() == ["enabled", "enabled"]
    answer = guest.run(
        "python3 -c 'import urllib.request as u, urllib.error as e\n"
        "try:\n  print(u.urlopen(\"http://127.0.0.1:%d/v1/types\", timeout=10).status)\n"
        "except e.HTTPError as x:\n  print(x.code)'" % API_PORT_IN_GUEST)
    assert answer.returncode == 0 and int(answer.stdout.strip()) < 500, answer.stdout + answer.stderr
    mode = guest.run("stat -c %a /etc/cms/cms.toml").stdout.strip()
    assert mode == "600"

    t0 = time.monotonic()
    out, counts = run_playbook(args, timeout=1500)
    second = time.monotonic() - t0
    assert counts["cms-deploytest-vm"]["changed"] == 0, changed_tasks(out)

    verify = guest.run("systemd-analyze verify /etc/systemd/system/cms-api.service "
                       "/etc/systemd/system/cms-autoscaler.service /etc/systemd/system/cms-guest.service")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"first run {first:.1f}s, second run {second:.1f}s")


def test_guest_unit_verifies_here():
    """guest/cms-guest.service passes systemd-analyze verify on this machine too."""
    assert shutil.which("systemd-analyze"), "scripts/bootstrap.sh installs systemd (systemd-analyze)"
    p = subprocess.run(["systemd-analyze", "verify", str(ROOT / "guest" / "cms-guest.service")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
