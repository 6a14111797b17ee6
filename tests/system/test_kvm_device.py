"""The /dev/kvm step: scripts/kvm-device.sh (what bootstrap runs) and roles/libvirt_host's
tasks/kvm_device.yml, both against a stand-in device node each test makes with mknod in its
own temp dir (the KVM device's numbers, root:root 0600: a machine without udev).

Checked: the group and mode after the step, that a second run reports no change (and the
node's ctime shows nothing was touched), and that check mode changes nothing. /dev/kvm
itself is never changed: every test compares it before and after.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.system.test_ansible import ROOT, changed_tasks, run_playbook

SCRIPT = ROOT / "scripts" / "kvm-device.sh"
KVM_MAJOR, KVM_MINOR = 10, 232


def _snapshot(path: str | Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid, st.st_mode, st.st_ctime_ns


@pytest.fixture(autouse=True)
def real_device_untouched():
    before = _snapshot("/dev/kvm")
    yield
    assert _snapshot("/dev/kvm") == before, "the test changed /dev/kvm itself"


def make_node(path: Path, mode: int = 0o600, gid: int = 0) -> Path:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(KVM_MAJOR, KVM_MINOR))
    os.chown(path, 0, gid)
    os.chmod(path, mode)            # mknod's mode is filtered by the umask
    return path


def owner_group_mode(path: Path) -> tuple[str, str, int]:
    st = os.stat(path)
    return "root" if st.st_uid == 0 else str(st.st_uid), grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def kvm_gid() -> int:
    return grp.getgrnam("kvm").gr_gid


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


# --- scripts/kvm-device.sh -----------------------------------------------------------------

def test_script_sets_group_and_mode_once(tmp_path: Path):
    node = make_node(tmp_path / "kvm")
    first = script(str(node))
    assert first.returncode == 0, first.stderr
    assert f"changed {node} from root:root 600 to root:kvm 660" in first.stdout
    assert owner_group_mode(node) == ("root", "kvm", 0o660)

    before = _snapshot(node)
    second = script(str(node))
    assert second.returncode == 0, second.stderr
    assert "already as udev would set it" in second.stdout and "changed" not in second.stdout
    assert _snapshot(node) == before


def test_script_check_mode_changes_nothing(tmp_path: Path):
    node = make_node(tmp_path / "kvm")
    before = _snapshot(node)
    proc = script("--check", str(node))
    assert proc.returncode == 0, proc.stderr
    assert f"would change {node} from root:root 600" in proc.stdout
    assert _snapshot(node) == before


@pytest.mark.parametrize("mode, group_kvm, after", [
    (0o666, False, 0o666),    # wider stays wider; only the group changes
    (0o604, True, 0o664),     # group kvm already, group bits added
    (0o666, True, 0o666),     # nothing to do
])
def test_script_only_adds_permissions(tmp_path: Path, mode: int, group_kvm: bool, after: int):
    node = make_node(tmp_path / "kvm", mode, kvm_gid() if group_kvm else 0)
    proc = script(str(node))
    assert proc.returncode == 0, proc.stderr
    assert owner_group_mode(node) == ("root", "kvm", after)
    assert ("already" in proc.stdout) == (mode == after and group_kvm)


def test_script_refuses_what_is_not_a_device_and_skips_what_is_absent(tmp_path: Path):
    regular = tmp_path / "kvm"
    regular.write_text("")
    proc = script(str(regular))
    assert proc.returncode == 2 and proc.stderr.strip() == f"kvm-device: {regular} is not a character device"
    proc = script(str(tmp_path / "absent"))
    assert proc.returncode == 0 and "does not exist: nothing to do" in proc.stdout


# --- roles/libvirt_host: tasks/kvm_device.yml --------------------------------------------

def role_step(tmp_path: Path, node: Path, check: bool = False) -> tuple[str, dict[str, int]]:
    """The role's /dev/kvm task file alone (include_role, tasks_from), aimed at `node`."""
    playbook = tmp_path / "kvm.yml"
    playbook.write_text(json.dumps([{
        "name": "The libvirt_host role's /dev/kvm step",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [{"name": "Set the device up", "ansible.builtin.include_role": {
            "name": "libvirt_host", "tasks_from": "kvm_device.yml"}}],
    }]))
    args = ["-i", "localhost,", str(playbook), "-e", json.dumps({"libvirt_host_kvm_device": str(node)})]
    out, counts = run_playbook([*args, "--check"] if check else args, timeout=300)
    return out, counts["localhost"]


def flat(out: str) -> str:
    """The output on one line: the yaml callback wraps long messages."""
    return " ".join(out.split())


def test_role_sets_group_and_mode_once_and_check_mode_changes_nothing(tmp_path: Path):
    node = make_node(tmp_path / "kvm")

    # check mode on a device that needs the change: it says so and touches nothing
    before = _snapshot(node)
    out, counts = role_step(tmp_path, node, check=True)
    assert counts["changed"] == 1 and counts["failed"] == 0, changed_tasks(out)
    assert f"would change {node} from root:root 0600 to group kvm" in flat(out)
    assert _snapshot(node) == before

    out, counts = role_step(tmp_path, node)
    assert counts["changed"] == 1 and counts["failed"] == 0, changed_tasks(out)
    assert f"changed {node} from root:root 0600 to group kvm" in flat(out)
    assert owner_group_mode(node) == ("root", "kvm", 0o660)

    before = _snapshot(node)
    for check in (False, True):
        out, counts = role_step(tmp_path, node, check=check)
        assert counts["changed"] == 0 and counts["failed"] == 0, changed_tasks(out)
        assert f"changed {node}" not in flat(out)
    assert _snapshot(node) == before


def test_role_keeps_a_wider_mode(tmp_path: Path):
    node = make_node(tmp_path / "kvm", 0o666)
    out, counts = role_step(tmp_path, node)
    assert counts["changed"] == 1, changed_tasks(out)
    assert owner_group_mode(node) == ("root", "kvm", 0o666)
