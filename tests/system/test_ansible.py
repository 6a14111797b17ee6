"""The Ansible side of cms: lint, syntax, and the controller role's no-systemd path run for real.

The local path is what this machine and CI have (no systemd as PID 1): site.yml's
controller play against localhost, with every path under a temporary prefix, cms installed
from a wheelhouse, and the two services started as background processes. Then: the API
answers, the autoscaler runs, a second run changes nothing, --check changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cms.lab.realstack import wait_until
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PLAYBOOK = VENV_BIN / "ansible-playbook"
LINT = VENV_BIN / "ansible-lint"
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yml"))
# The roles this file's author owns; roles/golden_image is linted by its own tests.
OWN_LINT_PATHS = ["playbooks/site.yml", "roles/libvirt_host", "roles/cms_controller", "roles/service_manager",
                  "roles/postgresql",
                  "inventory"]
# cms's runtime dependencies: pyproject's list without ansible and pytest, which a
# controller does not need (installing ansible in a TCG VM takes many minutes).
RUNTIME_DEPS = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                if not d.startswith(("ansible", "pytest"))]
WHEEL_CACHE = Path("/var/cache/cms/wheelhouse")


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env.pop("CMS_CONFIG", None)
    return env


def run_playbook(args: list[str], timeout: float, cwd: Path = ROOT) -> tuple[str, dict[str, dict[str, int]]]:
    """Run ansible-playbook; return its output and the PLAY RECAP counts per host."""
    proc = subprocess.run([str(PLAYBOOK), *args], cwd=cwd, env=ansible_env(), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ansible-playbook {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out, ({} if "--syntax-check" in args else recap(out))


def recap(out: str) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    section = out.rsplit("PLAY RECAP", 1)[-1]
    for line in section.splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            counts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    assert counts, f"no PLAY RECAP in:\n{out[-3000:]}"
    return counts


def changed_tasks(out: str) -> list[str]:
    """Names of the tasks that reported changed (for a useful failure message)."""
    names, task = [], ""
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            names.append(f"{task} {line}")
    return names


def build_wheelhouse(dest: Path) -> Path:
    """cms (from this checkout) plus its runtime closure as wheels, into dest.

    The dependencies' wheels are cached by their requirement list (libvirt-python
    compiles); cms's own wheel is built fresh each time, from the working tree.
    """
    key = hashlib.sha256("\n".join(RUNTIME_DEPS + [sys.version]).encode()).hexdigest()[:16]
    deps = WHEEL_CACHE / key
    if not deps.is_dir():
        tmp = WHEEL_CACHE / f"{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                        "-w", str(tmp), *RUNTIME_DEPS], check=True, timeout=900)
        tmp.rename(deps)
    dest.mkdir(parents=True, exist_ok=True)
    for whl in deps.glob("*.whl"):
        shutil.copy2(whl, dest / whl.name)
    build = dest.parent / "cms-wheel-build"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(
        ".venv", ".git", "out", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "-w", str(dest), str(build)],
                   check=True, timeout=300)
    shutil.rmtree(build, ignore_errors=True)
    return dest


def assert_changes_nothing(args: list[str], host: str = "localhost", timeout: float = 600) -> float:
    """Run the playbook again, then in --check mode: neither may change or fail anything.
    Returns the seconds the second run took."""
    t0 = time.monotonic()
    for extra in ([], ["--check"]):
        out, counts = run_playbook([*args, *extra], timeout=timeout)
        assert counts[host]["changed"] == 0 and counts[host]["failed"] == 0, changed_tasks(out)
        if not extra:
            took = time.monotonic() - t0
    return took


def http_answers(url: str) -> int | None:
    """The HTTP status the URL answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def wait_for(pred, timeout: float, what: str):
    return wait_until(pred, timeout, interval=0.5, what=what)


# --- static checks -----------------------------------------------------------------------

def test_ansible_lint_production_profile():
    proc = subprocess.run([str(LINT), "--nocolor", "-f", "pep8", "--profile", "production",
                           "--exclude", "roles/golden_image", "--exclude", "playbooks/golden-image.yml",
                           *OWN_LINT_PATHS], cwd=ROOT, env=ansible_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
@pytest.mark.parametrize("inventory", ["inventory/local.yml", "inventory/multi-host.example.yml"])
def test_syntax_check(playbook: Path, inventory: str):
    run_playbook(["-i", inventory, "--syntax-check", str(playbook)], timeout=120)


def test_missing_token_is_named():
    """With mutating API calls on and no token, the assert says which variable is missing."""
    proc = subprocess.run(
        [str(PLAYBOOK), "playbooks/site.yml", "--tags", "controller", "--check",
         "-e", json.dumps({"cms_controller_api_mutating": True, "cms_controller_api_token": ""})],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cms_controller_api_token is required" in proc.stdout + proc.stderr


# --- the local path, run for real -------------------------------------------------------

def controller_vars(prefix: Path, wheelhouse: Path) -> dict:
    """Extra vars putting every path of the controller role under prefix, on free ports,
    with the services run as background processes (no systemd here)."""
    api_port, pub_port, snap_port = free_port(), free_port(), free_port()
    return {
        "cms_controller_service_manager": "local",
        "cms_controller_python": "/usr/bin/python3",
        "cms_controller_venv": str(prefix / "venv"),
        "cms_controller_wheelhouse": str(wheelhouse),
        "cms_controller_wheelhouse_dest": str(prefix / "wheelhouse"),
        "cms_controller_config_dir": str(prefix / "etc"),
        "cms_controller_state_dir": str(prefix / "state"),
        "cms_controller_run_dir": str(prefix / "run"),
        "cms_controller_log_dir": str(prefix / "log"),
        "cms_controller_unit_dir": str(prefix / "units"),
        "cms_controller_install_units": True,
        "cms_controller_golden_image": str(prefix / "images" / "golden.qcow2"),
        "cms_controller_api_bind": f"127.0.0.1:{api_port}",
        "cms_controller_api_workers": 1,
        "cms_controller_zmq_publish": f"tcp://127.0.0.1:{pub_port}",
        "cms_controller_zmq_snapshot": f"tcp://127.0.0.1:{snap_port}",
        # no replicas: the tests create none through the autoscaler
        "cms_controller_settings": {"groups": {"web": {"min": 0}}},
    }


def stop_local_services(prefix: Path) -> None:
    """Stop what the controller role started in local mode under prefix."""
    for svc in ("cms-api", "cms-autoscaler"):
        pidfile = prefix / "run" / f"{svc}.pid"
        if pidfile.exists():
            subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--pidfile", str(pidfile),
                            "--retry", "TERM/20/KILL/5", "--remove-pidfile"], timeout=60, check=False)


def api_get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def local_deploy(tmp_path: Path):
    """Extra vars putting every path of the controller role under tmp_path; stops what it starts."""
    prefix = tmp_path / "cms"
    extra = controller_vars(prefix, build_wheelhouse(tmp_path / "wheelhouse"))
    # the test driver host: the services run without a hypervisor to run replicas on
    extra["cms_controller_hosts"] = [{"name": "local", "uri": "test:///default"}]
    api_port = int(extra["cms_controller_api_bind"].rsplit(":", 1)[1])
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    yield {"prefix": prefix, "vars": vars_file, "api_port": api_port, "extra": extra}
    stop_local_services(prefix)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.mark.real
@pytest.mark.timeout(900)
def test_local_path_deploys_idempotently(local_deploy):
    prefix, vars_file, port = local_deploy["prefix"], local_deploy["vars"], local_deploy["api_port"]
    args = ["-i", "inventory/local.yml", "playbooks/site.yml", "--tags", "controller", "-e", f"@{vars_file}"]

    t0 = time.monotonic()
    out, counts = run_playbook(args, timeout=600)
    first = time.monotonic() - t0
    assert counts["localhost"]["failed"] == 0
    assert counts["localhost"]["changed"] > 0

    config = prefix / "etc" / "cms.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    status = wait_for(lambda: http_answers(f"http://127.0.0.1:{port}/v1/types"), 60, "the API to answer")
    assert status < 500, f"the API answered {status}"
    for svc in ("cms-api", "cms-autoscaler"):
        assert _alive(prefix / "run" / f"{svc}.pid"), (prefix / "log" / f"{svc}.log").read_text()[-3000:]
    api_pid = (prefix / "run" / "cms-api.pid").read_text()

    t0 = time.monotonic()
    out, counts = run_playbook(args, timeout=600)
    second = time.monotonic() - t0
    assert counts["localhost"]["changed"] == 0, changed_tasks(out)
    assert (prefix / "run" / "cms-api.pid").read_text() == api_pid, "a second run restarted the API"

    out, counts = run_playbook([*args, "--check"], timeout=600)
    assert counts["localhost"]["changed"] == 0 and counts["localhost"]["failed"] == 0, changed_tasks(out)

    # A configuration change restarts both services, and only then.
    extra = dict(local_deploy["extra"], cms_controller_log_level="debug")
    vars_file.write_text(json.dumps(extra))
    out, counts = run_playbook(args, timeout=600)
    assert counts["localhost"]["changed"] > 0
    assert (prefix / "run" / "cms-api.pid").read_text() != api_pid
    status = wait_for(lambda: http_answers(f"http://127.0.0.1:{port}/v1/types"), 60, "the API to answer again")
    assert status < 500
    print(f"first run {first:.1f}s, second run {second:.1f}s")

    # The unit files the role renders pass systemd's own checks.
    if shutil.which("systemd-analyze"):
        units = sorted((prefix / "units").glob("*.service"))
        assert [u.name for u in units] == ["cms-api.service", "cms-autoscaler.service"]
        proc = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60)


# The hypervisor play in these tests leaves /dev/kvm alone (tests/system/test_kvm_device.py
# runs that step on a stand-in node): tests change the real device only through bootstrap.
KEEP_KVM_DEVICE = {"libvirt_host_kvm_device": ""}


@pytest.mark.real
@pytest.mark.timeout(600)
def test_hypervisor_play_on_this_machine(tmp_path: Path):
    """The hypervisor play against localhost: no systemd here, so the daemons are probed (and
    started directly when down); two pools of its own are defined, started and made
    autostart, one from the role's template and one from a template of the test's own.
    No network (inventory/local.yml): private address ranges are off limits here."""
    name = f"cms-deploytest-{os.getpid()}"
    work = Path(f"/var/lib/cms/test/{name}")
    # a template of the test's own, using a key of its own in the item
    own_template = tmp_path / "my-pool.xml.j2"
    own_template.write_text("<pool type='dir'><name>{{ libvirt_host_pool.name }}</name>"
                            "<uuid>{{ libvirt_host_pool.uuid }}</uuid><target><path>{{ libvirt_host_pool.path }}</path>"
                            "</target></pool>\n")
    own_uuid = str(uuid.uuid4())
    pools = [{"name": name, "path": str(work / "pool")},
             {"name": f"{name}-own", "path": str(work / "own"), "template": str(own_template), "uuid": own_uuid}]
    extra = {**KEEP_KVM_DEVICE, "libvirt_host_pools": pools, "libvirt_host_images_dir": str(work / "images")}
    args = ["playbooks/site.yml", "--tags", "hypervisor", "-e", json.dumps(extra)]
    try:
        out, counts = run_playbook(args, timeout=600)
        assert counts["localhost"]["failed"] == 0
        for pool in pools:
            info = _virsh("pool-info", pool["name"])
            assert "State:          running" in info.stdout and re.search(r"Autostart:\s+yes", info.stdout), info.stdout
            assert ET.fromstring(_virsh("pool-dumpxml", pool["name"]).stdout).findtext("target/path") == pool["path"]
        assert _virsh("pool-uuid", f"{name}-own").stdout.strip() == own_uuid
        assert_changes_nothing(args)
    finally:
        for pool in (p["name"] for p in pools):
            for cmd in ("pool-destroy", "pool-undefine"):
                _virsh(cmd, pool)
        shutil.rmtree(work, ignore_errors=True)
    assert all(_virsh("pool-info", p["name"]).returncode != 0 for p in pools), "a test pool is still defined"


# --- the libvirt network ----------------------------------------------------------------

def render_network_xml(tmp_path: Path, overrides: dict) -> str:
    """roles/libvirt_host's network template rendered by Ansible for the role's default
    network with `overrides` merged into it, as the role renders each item."""
    out = tmp_path / "network.xml"
    playbook = tmp_path / "render.yml"
    playbook.write_text(json.dumps([{
        "name": "Render the network template",
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(ROOT / "roles" / "libvirt_host" / "defaults" / "main.yml")],
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}",
                 "libvirt_host_network": "{{ libvirt_host_networks[0] | combine(network_overrides) }}"},
        "tasks": [{"name": "Render", "ansible.builtin.template": {
            "src": str(ROOT / "roles" / "libvirt_host" / "templates" / "network.xml.j2"),
            "dest": str(out), "mode": "0644"}}],
    }]))
    run_playbook(["-i", "localhost,", "-c", "local", str(playbook), "-e",
                  json.dumps({"network_overrides": overrides})], timeout=120)
    return out.read_text()


@pytest.mark.parametrize("overrides, forward, ips", [
    # the shipped default: NAT with DHCP on 192.168.150.0/24 (only parsed here, never started)
    ({}, "nat", [("192.168.150.1", "255.255.255.0", ("192.168.150.10", "192.168.150.250"))]),
    ({"forward": "isolated", "address": ""}, None, []),
    ({"forward": "route", "dhcp_start": ""}, "route",
     [("192.168.150.1", "255.255.255.0", None)]),
], ids=["default-nat", "isolated", "route-no-dhcp"])
def test_network_template_parses_in_libvirt(tmp_path: Path, overrides: dict, forward, ips):
    """The rendered XML is defined on libvirt's test driver and read back."""
    import libvirt

    xml = render_network_xml(tmp_path, overrides)
    conn = libvirt.open("test:///default")
    try:
        net = conn.networkDefineXML(xml)
        back = ET.fromstring(net.XMLDesc(0))
    finally:
        conn.close()
    assert back.findtext("name") == "cms"
    assert back.find("bridge").get("name") == "cmsbr0"
    fwd = back.find("forward")
    assert (fwd.get("mode") if fwd is not None else None) == forward
    got = []
    for ip in back.findall("ip"):
        rng = ip.find("dhcp/range")
        got.append((ip.get("address"), ip.get("netmask"),
                    (rng.get("start"), rng.get("end")) if rng is not None else None))
    assert got == ips


@pytest.mark.real
@pytest.mark.timeout(600)
def test_hypervisor_play_defines_an_isolated_network(tmp_path: Path):
    """The role's network tasks for real, with an isolated network (no addresses, no dnsmasq:
    nothing touches a private range): defined, active, autostart, its bridge up; a second
    run and --check change nothing."""
    import libvirt

    tag = f"{os.getpid() % 100000:05d}"
    name, bridge = f"cms-nettest-{tag}", f"cmsnt{tag}"
    work = Path(f"/var/lib/cms/test/{name}")
    extra = {**KEEP_KVM_DEVICE, "libvirt_host_pools": [{"name": name, "path": str(work / "pool")}],
             "libvirt_host_images_dir": str(work / "images"),
             "libvirt_host_networks": [{"name": name, "bridge": bridge, "forward": "isolated"}]}
    args = ["playbooks/site.yml", "--tags", "hypervisor", "-e", json.dumps(extra)]
    try:
        out, counts = run_playbook(args, timeout=600)
        assert counts["localhost"]["failed"] == 0
        assert counts["localhost"]["changed"] > 0
        conn = libvirt.open("qemu:///system")
        try:
            net = conn.networkLookupByName(name)
            assert net.isPersistent() and net.isActive() and net.autostart()
            assert net.bridgeName() == bridge
            desc = ET.fromstring(net.XMLDesc(0))
            assert desc.find("forward") is None and desc.find("ip") is None
        finally:
            conn.close()
        link = subprocess.run(["ip", "-j", "addr", "show", "dev", bridge], capture_output=True, text=True,
                              timeout=30)
        assert link.returncode == 0, link.stderr
        info = json.loads(link.stdout)[0]
        assert info["ifname"] == bridge
        assert [a for a in info.get("addr_info", []) if a.get("family") == "inet"] == []

        assert_changes_nothing(args)
    finally:
        for cmd in ("net-destroy", "net-undefine"):
            _virsh(cmd, name)
        for cmd in ("pool-destroy", "pool-undefine"):
            _virsh(cmd, name)
        shutil.rmtree(work, ignore_errors=True)
    assert _virsh("net-info", name).returncode != 0, "the test network is still defined"
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True, timeout=30).returncode != 0
