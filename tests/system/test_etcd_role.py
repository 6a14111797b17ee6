"""roles/etcd and site.yml's etcd play, run for real on this machine (no systemd): three members
on loopback, each an inventory host of the `controllers` group with its own ports and paths
under a temporary prefix, started by `site.yml --tags etcd` as background processes; they
form one healthy cluster; a second run and a --check run change nothing. And the controller
units of a coordinated controller start after etcd.service. ~30 s."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cms import config
from tests.support import ROOT, free_port
from tests.system.test_ansible import LINT, ansible_env, changed_tasks, run_playbook

pytestmark = pytest.mark.real


def test_lint_production_profile():
    proc = subprocess.run([str(LINT), "--nocolor", "-f", "pep8", "--profile", "production", "roles/etcd",
                           "playbooks/site.yml"], cwd=ROOT, env=ansible_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def inventory(prefix: Path) -> tuple[Path, list[int]]:
    ports = [(free_port(), free_port()) for _ in range(3)]
    hosts = {f"cms{i}": {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                         "etcd_name": f"m{i}", "etcd_address": "127.0.0.1", "etcd_client_port": c,
                         "etcd_peer_port": p, "etcd_listen_localhost": False, "etcd_service_manager": "local",
                         "etcd_user": "root", "etcd_cluster_token": f"cms-test-{prefix.name}",
                         "etcd_data_dir": str(prefix / f"m{i}" / "data"), "etcd_run_dir": str(prefix / f"m{i}" / "run"),
                         "etcd_log_dir": str(prefix / f"m{i}" / "log")}
             for i, (c, p) in enumerate(ports, 1)}
    inv = prefix / "inventory.json"
    inv.write_text(json.dumps({"all": {"children": {"controllers": {"hosts": hosts}, "hypervisors": {"hosts": {}}}}}))
    return inv, [c for c, _ in ports]


def stop(prefix: Path) -> None:
    for pidfile in prefix.glob("m*/run/etcd.pid"):
        subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--pidfile", str(pidfile), "--retry", "TERM/10/KILL/5"],
                       capture_output=True, timeout=30)


@pytest.mark.timeout(600)
def test_site_yml_makes_one_etcd_cluster_of_the_controllers_idempotently(tmp_path: Path):
    prefix = tmp_path / "etcd"
    prefix.mkdir()
    inv, clients = inventory(prefix)
    args = ["-i", str(inv), "playbooks/site.yml", "--tags", "etcd"]
    try:
        out, counts = run_playbook(args, timeout=300)
        assert set(counts) == {"cms1", "cms2", "cms3"} and all(c["failed"] == 0 for c in counts.values())
        for port in clients:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                assert json.loads(r.read()) == {"health": "true"}
        members = subprocess.run(["etcdctl", "--endpoints", f"127.0.0.1:{clients[0]}", "member", "list", "-w", "json"],
                                 capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"})
        assert sorted(m["name"] for m in json.loads(members.stdout)["members"]) == ["m1", "m2", "m3"]
        for extra in ([], ["--check"]):
            out, counts = run_playbook(args + extra, timeout=300)
            assert all(c["changed"] == 0 for c in counts.values()), changed_tasks(out)
    finally:
        stop(prefix)


def test_a_coordinated_controllers_units_start_after_etcd(tmp_path: Path):
    play = tmp_path / "units.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: cms_controller
        tasks_from: units.yml
      vars:
        _cms_controller_systemd: false
        _cms_controller_coordinated: "{{{{ coordinated }}}}"
        cms_controller_unit_dir: "{tmp_path}/{{{{ coordinated }}}}"
      loop: [true, false]
      loop_control:
        loop_var: coordinated
""")
    run_playbook(["-i", "inventory/local.yml", str(play)], timeout=120)
    for unit in ("cms-autoscaler.service", "cms-api.service"):
        text = (tmp_path / "True" / unit).read_text()
        assert "After=network-online.target libvirtd.service etcd.service\n" in text
        assert "Wants=network-online.target etcd.service\n" in text
        assert "etcd" not in (tmp_path / "False" / unit).read_text()


def test_three_controllers_get_coordination_and_every_controllers_feed_in_cms_toml(tmp_path: Path):
    hosts = {f"cms{i}.example.org": {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                                     "cms_controller_address": f"10.9.0.{i}",
                                     "cms_controller_config_dir": str(tmp_path / f"c{i}")} for i in (1, 2, 3)}
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps({"all": {"children": {"controllers": {"hosts": hosts}}}}))
    play = tmp_path / "config.yml"
    play.write_text(f"""
- hosts: controllers
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: cms_controller
        tasks_from: "{{{{ item }}}}"
      vars:
        _cms_controller_systemd: false
        _cms_controller_hosts: [{{name: hv1, uri: "qemu+ssh://root@hv1/system"}}]
        cms_controller_user: root
        cms_controller_venv: {sys.prefix}
        cms_controller_state_dir: {tmp_path}/state
        cms_controller_api_mutating: false
      loop: [peers.yml, config.yml]
""")
    run_playbook(["-i", str(inv), str(play)], timeout=120)
    cfgs = [config.load(tmp_path / f"c{i}" / "cms.toml") for i in (1, 2, 3)]
    assert [c.coordination.name for c in cfgs] == ["cms1", "cms2", "cms3"]
    for c in cfgs:
        assert c.coordination.url == [f"etcd3+http://10.9.0.{i}:2379" for i in (1, 2, 3)]
        assert c.coordination.lease_ttl_s == 5
        assert c.zmq.publish == [f"tcp://10.9.0.{i}:5556" for i in (1, 2, 3)]
        assert c.zmq.snapshot == [f"tcp://10.9.0.{i}:5557" for i in (1, 2, 3)]
