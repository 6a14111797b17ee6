"""inventory/multi-host.example.yml's shape, made real on loopback: site.yml, every play.

Two hypervisors, hv1 and hv2, reached by Ansible over SSH and by the cms controller over
qemu+ssh URIs, both pointing at an sshd the test starts on 127.0.0.1:<free port> (its own
host key, config and authorized key, in a temporary directory). Behind that sshd is this
machine's one libvirtd, so the two "hosts" share it: each gets storage pools and an images
directory of its own, and the controller (local connection, every path under a temporary
prefix) uses hv1's pool and image paths, since cms names one pool and one image for all
hosts. The image play hits the shared golden image cache and copies the image to both
hosts over SSH.

Then, through the REST API: /pm/list has both hosts, /pm/query and /v1/hosts show them
reached over qemu+ssh, and one VM is created on each host with /vm/create (its overlay's
backing image found through the images pool, the only way over qemu+ssh) and destroyed
with /vm/destroy. A second run changes nothing. Everything the test made is removed at the
end: domains, volumes, pools, the sshd and its sessions, the files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cms.lab.realstack import wait_until
from tests.system.test_ansible import (KEEP_KVM_DEVICE, _virsh, api_get, build_wheelhouse, changed_tasks,
                                       controller_vars, free_port, http_answers, run_playbook, stop_local_services,
                                       wait_for)

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")    # sshd's compiled-in privilege separation directory


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def loopback_sshd(tmp_path: Path):
    """An sshd of the test's own on 127.0.0.1, accepting one fresh key for root."""
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"cms-{key}", "-f", str(d / key)],
                       check=True, timeout=60)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        # the key lives under /tmp (world-writable), which StrictModes would refuse
        "StrictModes no", "Subsystem sftp internal-sftp", "",
    ]))
    # The client side of qemu+ssh: libvirt runs this as its ssh command; it keeps the host
    # key out of root's known_hosts (libvirt's keyfile= and no_verify=1 add -i and -o
    # StrictHostKeyChecking=no).
    wrapper = d / "ssh"
    wrapper.write_text("#!/bin/sh\nexec ssh -o UserKnownHostsFile=/dev/null -o BatchMode=yes "
                       "-o LogLevel=ERROR -o ConnectTimeout=10 \"$@\"\n")
    os.chmod(wrapper, 0o755)
    made_privsep = not PRIVSEP_DIR.exists()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-f", str(d / "sshd_config"), "-D", "-e"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _port_open(port) or proc.poll() is not None, 20, what="sshd to listen")
        assert proc.poll() is None, (d / "sshd.log").read_text()
        yield {"port": port, "key": d / "client_key", "ssh": wrapper, "log": d / "sshd.log"}
    finally:
        proc.terminate()
        # sessions still open (their sshd processes are the listener's children) end too
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True,
                                  timeout=30).stdout.split()
        for pid in children:
            try:
                os.kill(int(pid), 15)
            except (OSError, ValueError):
                pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()
        if made_privsep:
            try:
                PRIVSEP_DIR.rmdir()
            except OSError:
                pass


def test_two_hypervisors_over_qemu_ssh(loopback_sshd, tmp_path: Path):
    port, key = loopback_sshd["port"], loopback_sshd["key"]
    tag = f"{os.getpid() % 100000:05d}"
    prefix = Path("/var/lib/cms/test") / f"cms-multihost-{tag}"
    pools = {hv: f"cms-mh-{tag}-{hv}" for hv in ("hv1", "hv2")}
    images_pools = {hv: f"cms-mh-{tag}-{hv}-images" for hv in ("hv1", "hv2")}

    def hypervisor(hv: str) -> dict:
        return {
            "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            # no ControlPersist master outliving the test (and its sshd)
            "ansible_ssh_args": "-o ControlMaster=no",
            "ansible_python_interpreter": "/usr/bin/python3",
            "libvirt_host_name": hv,
            "libvirt_host_uri": (f"qemu+ssh://root@127.0.0.1:{port}/system"
                                 f"?keyfile={key}&no_verify=1&command={loopback_sshd['ssh']}"),
            # the replicas' pool and a pool over the images directory, as on a real host
            "libvirt_host_pools": [{"name": pools[hv], "path": str(prefix / hv / "pool")},
                                   {"name": images_pools[hv], "path": str(prefix / hv / "images")}],
            "libvirt_host_images_dir": str(prefix / hv / "images"),
            # private address ranges are off limits here
            "libvirt_host_networks": [],
            **KEEP_KVM_DEVICE,
        }

    controller = controller_vars(prefix / "controller", build_wheelhouse(tmp_path / "wheelhouse"))
    controller.update({
        "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
        "cms_controller_pool": pools["hv1"], "cms_controller_pool_path": str(prefix / "hv1" / "pool"),
        # the image play publishes here (from the shared cache) and copies to each host
        "golden_image_output_dir": str(prefix / "controller" / "images"),
        "cms_controller_golden_image": str(prefix / "hv1" / "images" / "golden.qcow2"),
        "cms_controller_domain_type": "qemu",
        "cms_controller_api_mutating": False,
        # the spec API's instance types and images: the role writes types_file and image_file
        "cms_controller_types": [{"tid": 1, "cpu": 1, "ram": 256, "disk": 1}],
    })
    controller["cms_controller_images"] = [controller["cms_controller_golden_image"]]
    api = int(controller["cms_controller_api_bind"].rsplit(":", 1)[1])
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"children": {
        "hypervisors": {"hosts": {"hv1.loopback": hypervisor("hv1"), "hv2.loopback": hypervisor("hv2")}},
        "controllers": {"hosts": {"localhost": controller}},
    }}}))
    args = ["-i", str(inventory), "playbooks/site.yml"]
    created: list[int] = []
    try:
        t0 = time.monotonic()
        out, counts = run_playbook(args, timeout=600)
        first = time.monotonic() - t0
        for host in ("hv1.loopback", "hv2.loopback", "localhost"):
            assert counts[host]["failed"] == 0 and counts[host]["unreachable"] == 0, counts
        assert "Accepted publickey for root" in loopback_sshd["log"].read_text(), "Ansible did not go through sshd"
        assert counts["hv1.loopback"]["changed"] > 0
        for hv in ("hv1", "hv2"):
            assert (prefix / hv / "images" / "golden.qcow2").is_file(), f"the image play copied nothing to {hv}"
        for pool in [*pools.values(), *images_pools.values()]:
            info = _virsh("pool-info", pool)
            assert info.returncode == 0 and "running" in info.stdout, info.stdout + info.stderr

        wait_for(lambda: http_answers(f"http://127.0.0.1:{api}/v1/types") == 200, 60, "the API to answer")
        assert api_get(api, "/pm/list") == {"pmids": [1, 2]}
        for pmid in (1, 2):
            pm = api_get(api, f"/pm/query?pmid={pmid}")
            assert pm["pmid"] == pmid and pm["capacity"]["cpu"] > 0, pm
        hosts = api_get(api, "/v1/hosts")
        hosts = hosts.get("hosts", hosts) if isinstance(hosts, dict) else hosts
        assert [h["name"] for h in hosts] == ["hv1", "hv2"]
        assert all(h["uri"].startswith(f"qemu+ssh://root@127.0.0.1:{port}/system") and h["up"] for h in hosts), hosts

        # one VM on each host, over qemu+ssh (round_robin placement alternates)
        vmids = []
        for i in (1, 2):
            vmid = api_get(api, f"/vm/create?name=mh{tag}vm{i}&instance_type=1")["vmid"]
            assert vmid > 0, f"/vm/create failed; the API's log:\n{_log(prefix)}"
            vmids.append(vmid)
            created.append(vmid)
        placed = {api_get(api, f"/vm/query?vmid={v}")["pmid"] for v in vmids}
        assert placed == {1, 2}, placed
        for pmid in (1, 2):
            assert len(api_get(api, f"/pm/listvms?pmid={pmid}")["vmids"]) == 1
        # the domains, by UUID (another test's API may use the same cms-vm-N names later)
        uuids = [_virsh("domuuid", f"cms-vm-{v}").stdout.strip() for v in vmids]
        assert all(uuids), "a created VM is not in libvirt"
        for v in vmids:
            assert api_get(api, f"/vm/destroy?vmid={v}") == {"status": 1}
            created.remove(v)
        assert not any(_virsh("domuuid", u).returncode == 0 for u in uuids), "a destroyed VM is still defined"

        out, counts = run_playbook(args, timeout=600)
        assert all(c["changed"] == 0 for c in counts.values()), changed_tasks(out)
        print(f"site.yml on two hypervisors: first run {first:.1f}s")
    finally:
        for v in created:    # what a failed assertion left behind, through the API that made it
            try:
                api_get(api, f"/vm/destroy?vmid={v}")
            except OSError:
                pass
        stop_local_services(prefix / "controller")
        for pool in pools.values():
            vols = _virsh("vol-list", pool)
            for line in vols.stdout.splitlines()[2:]:
                if line.split():
                    _virsh("vol-delete", "--pool", pool, line.split()[0])
            for cmd in ("pool-destroy", "pool-undefine"):
                _virsh(cmd, pool)
        for pool in images_pools.values():
            for cmd in ("pool-destroy", "pool-undefine"):
                _virsh(cmd, pool)
        shutil.rmtree(prefix, ignore_errors=True)
    for pool in [*pools.values(), *images_pools.values()]:
        assert _virsh("pool-info", pool).returncode != 0, f"pool {pool} is still defined"


def _log(prefix: Path) -> str:
    p = prefix / "controller" / "log" / "cms-api.log"
    return p.read_text(errors="replace")[-3000:] if p.exists() else "(no log)"
