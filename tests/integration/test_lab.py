"""The multi-host lab itself (cms.lab.hosts, scripts/lab.sh): what `up` makes, and that `down` leaves nothing.

Every test uses the lab name "cmstest" on 169.254.93.0/24, apart from the operator's default
lab (cmslab, 169.254.90.0/24) and from the balancing tests' labs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from cms import config
from cms.lab import qemucaps
from cms.lab.hosts import Lab, LabError, running
from cms.virt import Host
from tests.support import ROOT

pytestmark = pytest.mark.real

NAME, SUBNET = "cmstest", 93
LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")


def netns_pids(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
    return {int(p) for p in out.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def leftovers(lab: Lab) -> dict:
    return {"netns": lab._our_netns(), "links": lab._our_links(), "root": lab.root.exists()}


def assert_gone(lab: Lab, pids) -> None:
    assert leftovers(lab) == {"netns": [], "links": [], "root": False}
    assert [p for p in pids if alive(p)] == []


def test_up_makes_hosts_each_in_its_namespaces_with_its_own_libvirtd_and_down_removes_all():
    lab = Lab(NAME, SUBNET)
    hosts = lab.up(2)
    pids = [h.pid for h in hosts]
    try:
        assert [h.name for h in hosts] == ["hv1", "hv2"]
        # each libvirtd took the QEMU capabilities it was given instead of probing QEMU again
        # (seconds under TCG at its first define); had the first refused its copy, up would
        # say why, and the second would start from the first one's fresh files
        assert hosts[0].caps_note == "" or "probed QEMU" in hosts[0].caps_note, hosts[0]
        assert (hosts[1].caps_note, qemucaps.probed(Path(hosts[1].root))) == ("", False), hosts[1]
        assert lab._our_netns() == ["cmstest-hv1", "cmstest-hv2"]
        assert sorted(lab._our_links()) == ["cmstest1", "cmstest2", "cmstestbr"]
        own_net, own_mnt = os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/mnt")
        seen_uuids = set()
        for h in hosts:
            addr = ipaddress.ip_address(h.address)
            assert addr in LINK_LOCAL and not any(addr in ipaddress.ip_network(n) for n in
                                                  ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
            assert h.uri == f"qemu+tcp://{h.address}/system"
            # its libvirtd runs in the host's network namespace and in a mount namespace of its own,
            # where the libvirt state directories are the lab's
            assert h.pid in netns_pids(h.netns)
            assert os.readlink(f"/proc/{h.pid}/ns/net") != own_net
            assert os.readlink(f"/proc/{h.pid}/ns/mnt") != own_mnt
            mounts = open(f"/proc/{h.pid}/mountinfo").read()
            for path in ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"):
                assert f" {path} " in mounts, path
            assert os.path.exists(f"/proc/{h.pid}/root/run/libvirt/libvirtd.pid") is False  # its pidfile is the lab's
            assert os.path.exists(f"{h.root}/libvirtd.pid")
            # reached from here over qemu+tcp at its own address; its own host UUID; the images pool
            conn = Host(h.name, h.uri)
            try:
                assert conn.ping()
                caps = conn.capabilities()
                assert f"<uuid>{h.host_uuid}</uuid>" in caps
                seen_uuids.add(h.host_uuid)
                assert "golden.qcow2" in conn.storage.list_volumes("cms-images")
                assert conn.storage.list_volumes(lab.pool) == []
            finally:
                conn.close()
        assert len(seen_uuids) == 2
        # the shared storage: a file in the lab's pool directory is a volume on every host
        open(os.path.join(lab.pool_path, "shared-probe.qcow2"), "wb").close()
        for h in hosts:
            conn = Host(h.name, h.uri)
            try:
                assert "shared-probe.qcow2" in conn.storage.list_volumes(lab.pool)
            finally:
                conn.close()
        # the fragment makes a valid cms configuration of these hosts
        cfg = config.parse(lab.config_data(hosts, cpus=1), "<lab>")
        assert [(h.name, h.uri, h.migration_address, h.forward_address, h.shared_storage, h.cpus)
                for h in cfg.hosts] == [(h.name, h.uri, h.address, h.address, True, 1) for h in hosts]
        assert cfg.libvirt.pool_path == lab.pool_path
    finally:
        removed = lab.down()
    assert any(r.startswith("processes") for r in removed) and "netns cmstest-hv1" in removed
    assert_gone(lab, pids)
    assert lab.down() == []     # nothing left to remove


def test_a_refused_capabilities_cache_is_named_and_probed_once_for_the_lab(tmp_path):
    """A copy libvirtd refuses (written by a libvirtd of another build): the first host probes
    QEMU and up names why, from that libvirtd's log; the second host starts from the files the
    first one has just written and takes them."""
    stale = tmp_path / "caps"
    stale.mkdir()
    for f in qemucaps.SYSTEM.glob("*.xml"):
        (stale / f.name).write_text(re.sub(r"<selfctime>\d+</selfctime>", "<selfctime>1</selfctime>", f.read_text()))
    lab = Lab(NAME, SUBNET, caps_seed=stale)
    try:
        hv1, hv2 = lab.up(2)
        assert "probed QEMU" in hv1.caps_note and "Outdated capabilities" in hv1.caps_note, hv1
        assert "libvirt changed (1 vs " in hv1.caps_note
        assert (hv2.caps_note, qemucaps.probed(Path(hv2.root))) == ("", False), hv2
    finally:
        lab.down()


def test_up_reaps_what_a_crashed_run_left():
    first = Lab(NAME, SUBNET).up(1)
    # the run "crashes": nobody calls down; a new run of the same lab starts over
    lab = Lab(NAME, SUBNET)
    try:
        again = lab.up(1)
        assert not alive(first[0].pid)
        assert alive(again[0].pid) and netns_pids(again[0].netns) == {again[0].pid}
    finally:
        lab.down()
    assert_gone(lab, [first[0].pid, again[0].pid])


def test_running_cleans_up_after_a_failing_block():
    pids = []
    with pytest.raises(RuntimeError, match="the test failed"):
        with running(1, name=NAME, subnet=SUBNET) as (lab, hosts):
            pids = [h.pid for h in hosts]
            assert alive(pids[0])
            raise RuntimeError("the test failed")
    assert_gone(Lab(NAME, SUBNET), pids)


def test_lab_sh_up_prints_a_fragment_cms_reads_and_down_cleans_up():
    sh = str(ROOT / "scripts" / "lab.sh")
    up = subprocess.run([sh, "--name", NAME, "--subnet", str(SUBNET), "up", "2"], capture_output=True, text=True,
                        timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        head, frag = up.stdout.split("cms.toml fragment", 1)
        assert "hv1: netns cmstest-hv1, address 169.254.93.11" in head
        assert "hv2: netns cmstest-hv2, address 169.254.93.12" in head
        frag = frag.split("\n", 1)[1].lstrip("\n")
        cfg = config.parse(tomllib.loads(frag), "<fragment>")
        assert [h.uri for h in cfg.hosts] == ["qemu+tcp://169.254.93.11/system", "qemu+tcp://169.254.93.12/system"]
        assert all(h.shared_storage and h.cpus == max(1, (os.cpu_count() or 1) // 2) for h in cfg.hosts)
        assert frag == (Lab(NAME, SUBNET).root / "cms.toml").read_text()
    finally:
        down = subprocess.run([sh, "--name", NAME, "--subnet", str(SUBNET), "down"], capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0 and down.stdout.startswith("lab cmstest: removed processes")
    assert_gone(Lab(NAME, SUBNET), [])


@pytest.mark.parametrize("argv, needle", [
    (["up", "0"], "a lab has 1 to 200 hosts, not 0"),
    (["--name", "Bad-Name", "up", "1"], "lab name 'Bad-Name': at most 10 lowercase letters and digits"),
    (["--subnet", "300", "up", "1"], "subnet 300: 0 to 255 (the lab uses 169.254.SUBNET.0/24)"),
])
def test_lab_sh_refuses_bad_input_in_one_line(argv, needle):
    p = subprocess.run([str(ROOT / "scripts" / "lab.sh"), *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == f"lab: {needle}\n"


def test_lab_refuses_a_name_that_would_not_fit_an_interface_name():
    with pytest.raises(LabError, match="at most 10"):
        Lab("averylongname")


# -- losing a host (cms.lab.outage) ------------------------------------------------------------

def tiny_domain(h, name: str) -> None:
    """A real QEMU on the lab host with no disk: it sits in its firmware, costing next to nothing."""
    from cms.lab.realstack import wait_until
    from cms.virt.host import resolve_domain_type
    kind = resolve_domain_type("auto", "qemu:///system")
    xml = (f"<domain type='{kind}'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")
    h.conn().defineXML(xml).create()
    wait_until(lambda: h.guest(name).state() == "running", 30, what=f"{name} running")


def link(address: str) -> str:
    """What this machine sees at the host's libvirtd port: listening, refused (the link is up but
    nothing listens) or silent (the packets go nowhere)."""
    import socket
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((address, 16509))
        return "listening"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"
    finally:
        s.close()


def lab_sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "scripts" / "lab.sh"), "--name", NAME, "--subnet", str(SUBNET), *argv],
                          capture_output=True, text=True, timeout=120)


def test_a_host_can_be_killed_cut_fenced_and_revived():
    import shlex
    from cms.lab.outage import is_running, libvirtd_pid
    from cms.lab.realstack import wait_until
    with running(2, name=NAME, subnet=SUBNET) as (lab, hosts):
        h1, h2 = hosts
        conns = {h.name: Host(h.name, h.uri) for h in hosts}
        try:
            for h in hosts:
                tiny_domain(conns[h.name], f"cms-labtest-{h.name}")
            qemu = {h.name: [p for p in netns_pids(h.netns) if p != h.pid] for h in hosts}
            assert all(len(q) == 1 for q in qemu.values()), qemu

            # (libvirtd is this process's child: a killed one stays a zombie here, which is_running
            # tells from a running one)
            # cut: a partition. Nothing answers from here, but libvirtd and the QEMU run on.
            p = lab_sh("cut", "1")
            assert p.returncode == 0 and p.stdout == "lab cmstest: hv1: link cmstest1 down\n", p.stderr
            assert link(h1.address) == "silent" and alive(h1.pid) and alive(qemu["hv1"][0])
            p = lab_sh("revive", "hv1")
            assert p.returncode == 0 and p.stdout == "lab cmstest: hv1: link cmstest1 up\n", p.stderr
            wait_until(lambda: link(h1.address) == "listening", 30, what="hv1 reachable again")
            assert libvirtd_pid(lab, 1) == h1.pid
            assert Host("again", h1.uri).guest("cms-labtest-hv1").state() == "running"

            # kill: a power cut. Its libvirtd and QEMU are gone and its link is down.
            p = lab_sh("kill", "2")
            assert p.returncode == 0, p.stderr
            assert p.stdout == (f"lab cmstest: hv2: killed processes {', '.join(map(str, sorted([h2.pid] + qemu['hv2'])))}"
                                "; link cmstest2 down\n")
            assert not is_running(h2.pid) and not is_running(qemu["hv2"][0]) and netns_pids(h2.netns) == set()
            assert link(h2.address) == "silent"
            # revive: the link up and libvirtd started again on its own state: the same host, its
            # domain defined and shut off, as after a reboot
            p = lab_sh("revive", "2")
            assert p.returncode == 0 and p.stdout.startswith("lab cmstest: hv2: link cmstest2 up; libvirtd started "
                                                             "again (pid "), p.stderr
            new_pid = libvirtd_pid(lab, 2)
            assert new_pid != h2.pid and is_running(new_pid) and netns_pids(h2.netns) == {new_pid}
            back = Host("back", h2.uri)
            assert f"<uuid>{h2.host_uuid}</uuid>" in back.capabilities()
            assert back.guest("cms-labtest-hv2").state() == "shutoff"
            back.close()

            # fence, the way cms runs hosts[].fence_command: the host's name appended
            fenced = subprocess.run(shlex.split(lab.fence_command()) + ["hv1"], capture_output=True, text=True,
                                    timeout=60)
            assert fenced.returncode == 0, fenced.stderr
            assert fenced.stdout.startswith("lab cmstest: hv1: fenced: killed processes ")
            assert not is_running(h1.pid) and not is_running(qemu["hv1"][0]) and netns_pids(h1.netns) == set()
            assert link(h1.address) == "refused"       # the link stays up; nothing listens
            assert lab_sh("revive", "1").returncode == 0
            assert Host("fenced", h1.uri).guest("cms-labtest-hv1").state() == "shutoff"

            p = lab_sh("kill", "7")
            assert p.returncode == 1 and p.stderr == ("lab: lab cmstest has no host hv7 (scripts/lab.sh status "
                                                      "lists what it has)\n")
        finally:
            for c in conns.values():
                c.close()
