"""The libvirt layer against libvirt's test driver: a fresh test:///<tmp>/node.xml per test."""

from __future__ import annotations

import pytest

from cms import errors
from cms.virt import Fleet, Host, OwnerMeta
from cms.virt import xml as vxml
from cms.virt.host import resolve_domain_type
from cms.virt.migration import Migration
from tests.support import make_config, write_node_xml


def spec(name="cms-web-1", disk="/var/lib/cms/pool/x.qcow2", **kw):
    base = dict(name=name, uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427", vcpus=1, memory_mib=512,
                disk_path=disk, meta=OwnerMeta(group="web", role="replica", created=1.5, port=20001),
                domain_type="qemu", kernel="/img/vmlinuz", initrd="/img/initrd.img",
                cmdline="root=/dev/vda rw", host_port=20001)
    base.update(kw)
    return vxml.DomainSpec(**base)


def test_domain_xml_has_everything_the_replica_needs():
    x = vxml.render_domain(spec(max_vcpus=4, max_memory_mib=2048))
    assert "<domain type=\"qemu\" xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>" in x
    assert "<vcpu placement='static' current='1'>4</vcpu>" in x
    assert "<memory unit='MiB'>2048</memory><currentMemory unit='MiB'>512</currentMemory>" in x
    assert "<kernel>/img/vmlinuz</kernel><initrd>/img/initrd.img</initrd>" in x
    assert "<cmdline>root=/dev/vda rw systemd.hostname=cms-web-1</cmdline>" in x
    assert "hostfwd=tcp:127.0.0.1:20001-:8080" in x and "addr=0x9" in x
    assert "<source file=\"/var/lib/cms/pool/x.qcow2\"/>" in x
    assert "<cms:owner xmlns:cms=\"https://cms.invalid/xmlns/owner/1\">" in x


def test_domain_xml_bootloader_and_libvirt_network():
    x = vxml.render_domain(spec(kernel="", network_mode="libvirt", network="default"))
    assert "<boot dev='hd'/>" in x and "<kernel>" not in x
    assert "<interface type='network'><source network=\"default\"/>" in x
    assert "qemu:commandline" not in x


def test_bad_name_is_refused():
    with pytest.raises(ValueError, match="bad domain name"):
        vxml.render_domain(spec(name="a b"))


def test_metadata_round_trip():
    m = OwnerMeta(group="web", role="vm", created=12.25, port=20003, guest_port=8081, vmid=7, instance_type=2, image="deb")
    text = vxml.render_metadata(m).replace("cms:owner", "owner").replace(' xmlns:cms="https://cms.invalid/xmlns/owner/1"', "")
    assert vxml.parse_metadata(text) == m


def test_qcow2_header_size():
    hdr = b"QFI\xfb" + b"\x00\x00\x00\x03" + b"\x00" * 16 + (5 * 2**30).to_bytes(8, "big")
    assert vxml.qcow2_virtual_size(hdr) == 5 * 2**30
    with pytest.raises(ValueError):
        vxml.qcow2_virtual_size(b"notqcow2" * 8)


def test_capacity_is_read_through_libvirt(tmp_path):
    uri = write_node_xml(tmp_path / "n.xml", cpus=8, memory_kib=16 * 1024 * 1024)
    cap = Host("h1", uri).capacity("cms")
    # the test driver gives every pool 100 GiB whatever node.xml says
    assert (cap.cpus, cap.memory_mib, cap.pool_capacity_bytes) == (8, 16384, 100 * 2**30)
    assert cap.host == "h1"


def test_spawn_list_stats_remove(node_uri):
    h = Host("h1", node_uri)
    uuid = h.domains.clone_and_start(spec(), "cms", "/var/lib/cms/images/golden.qcow2").uuid
    assert h.storage.list_volumes("cms") == ["cms-web-1.qcow2"]
    [d] = h.stats.owned_domains()
    assert (d.name, d.uuid, d.state, d.meta.group, d.meta.port, d.meta.created) == \
        ("cms-web-1", uuid, "running", "web", 20001, 1.5)
    assert h.stats.owned_domains(group="other") == []
    stats = h.stats.bulk_stats()
    assert stats[uuid]["name"] == "cms-web-1" and stats[uuid]["state.state"] == 1
    assert h.stats.bulk_stats({"nope"}) == {}
    h.guest("cms-web-1").set_vcpus(1)
    h.domains.remove("cms-web-1", "cms")
    assert h.stats.owned_domains() == [] and h.storage.list_volumes("cms") == []
    h.domains.remove("cms-web-1", "cms")  # idempotent


def test_name_clash_leaves_nothing_half_made(node_uri):
    h = Host("h1", node_uri)
    h.domains.clone_and_start(spec(), "cms", "/g.qcow2")
    with pytest.raises(errors.AlreadyExists) as ei:
        h.domains.clone_and_start(spec(uuid="2b4e28ba-2fa1-11d2-883f-0016d3cca427"), "cms", "/g.qcow2")
    assert "h1" in str(ei.value) and "cms-web-1" in str(ei.value)
    # the first domain is intact, and the failed spawn left no second volume
    assert [d.name for d in h.stats.owned_domains()] == ["cms-web-1"]
    assert h.storage.list_volumes("cms") == ["cms-web-1.qcow2"]


def test_failed_define_removes_the_volume(node_uri):
    h = Host("h1", node_uri)
    with pytest.raises(errors.VirtError):
        h.domains.clone_and_start(spec(domain_type="nonsense"), "cms", "/g.qcow2")
    assert h.storage.list_volumes("cms") == [] and h.stats.owned_domains() == []


def test_full_pool_is_no_space(tmp_path):
    uri = write_node_xml(tmp_path / "n.xml")
    h = Host("small", uri)
    # fill the pool to 100 MiB short of full
    with h.calls("test") as c:
        p = c.storagePoolLookupByName("cms")
        free = p.info()[3] - 100 * 2**20
        p.createXML(f"<volume><name>filler</name><capacity>{free}</capacity><allocation>{free}</allocation></volume>", 0)
    with pytest.raises(errors.NoSpace) as ei:
        h.domains.clone_and_start(spec(), "cms", "/g.qcow2")
    assert "small" in str(ei.value) and "storage pool cms has 100 MiB free" in str(ei.value)
    assert h.stats.owned_domains() == [] and h.storage.list_volumes("cms") == ["filler"]


def test_unknown_pool_and_domain_are_not_found(node_uri):
    h = Host("h1", node_uri)
    with pytest.raises(errors.NotFound, match="h1"):
        h.storage.create_overlay("nopool", "v.qcow2", "/g.qcow2")
    with pytest.raises(errors.NotFound, match="domain ghost"):
        h.guest("ghost")
    assert not h.exists("ghost")


def test_unreachable_uri_names_the_host():
    h = Host("far", "qemu+tcp://127.0.0.1:1/system")
    with pytest.raises(errors.HostUnreachable) as ei:
        h.capacity()
    assert "far" in str(ei.value) and "127.0.0.1:1" in str(ei.value)
    assert h.ping() is False


def test_reconnects_after_the_link_breaks(node_uri):
    h = Host("h1", node_uri)
    first = h.conn()
    first.close()  # the link goes away behind the layer's back
    assert h.ping()
    assert h.conn() is not first


def test_missing_golden_image_on_local_qemu_host_is_named(run_dir, node_uri):
    h = Host("local", "qemu:///system")
    with pytest.raises(errors.ImageMissing) as ei:
        h.storage.create_overlay("cms", "x.qcow2", "/nonexistent/golden.qcow2")
    assert "/nonexistent/golden.qcow2" in str(ei.value) and "local" in str(ei.value)


def test_fleet_build_on_picks_ports_and_remove_cleans(run_dir, tmp_path):
    uri = write_node_xml(tmp_path / "n.xml")
    cfg = make_config(hosts=[{"name": "t", "uri": uri}], libvirt={"domain_type": "qemu"},
                      network={"port_min": 21000, "port_max": 21001})
    fleet = Fleet(cfg)
    a = fleet.build_on("t", "cms-web-a", vcpus=1, memory_mib=256, meta=OwnerMeta(group="web"))
    b = fleet.build_on("t", "cms-web-b", vcpus=1, memory_mib=256, meta=OwnerMeta(group="web"))
    assert {a.port, b.port} == {21000, 21001} and a.address == "127.0.0.1"
    with pytest.raises(errors.NoSpace, match="no free port"):
        fleet.build_on("t", "cms-web-c", vcpus=1, memory_mib=256, meta=OwnerMeta(group="web"))
    assert [d.name for d in fleet.owned("web")] == ["cms-web-a", "cms-web-b"]
    assert fleet.address_of(fleet.owned("web")[0]) == ("127.0.0.1", a.port)
    fleet.remove("t", "cms-web-a")
    fleet.remove("t", "cms-web-b")
    assert fleet.owned() == [] and fleet.host("t").storage.list_volumes("cms") == []


# (<memory> MiB, vCPUs at most, MiB the golden image's kernel kept out of MemTotal): measured
MEASURED_KEPT = [(128, 1, 35.44), (256, 1, 37.62), (512, 1, 42.0), (1024, 1, 50.75), (2048, 1, 68.25),
                 (512, 2, 42.27), (512, 8, 43.7), (1024, 2, 51.02), (2048, 4, 68.96), (3500, 1, 95.25),
                 (4096, 8, 169.67), (557, 1, 44.8)]


@pytest.mark.parametrize("mib, vcpus, kept", MEASURED_KEPT)
def test_the_kernel_share_follows_what_the_guest_kernel_was_measured_to_keep(mib, vcpus, kept):
    assert abs(vxml.kernel_kept_mib(mib, vcpus) - kept) <= 1.0


@pytest.mark.parametrize("size, top, vcpus", [(256, 512, 1), (512, 1024, 2), (1024, 2048, 4), (2048, 4096, 8),
                                              (64, 64, 1), (3400, 3400, 1), (3500, 3500, 1)])
def test_the_share_leaves_the_guest_its_size_at_any_size_up_to_the_maximum(size, top, vcpus):
    share = vxml.kernel_share_mib(top, vcpus)
    kept = vxml.kernel_kept_mib(top + share, vcpus)    # the kernel keeps it of the domain's real maximum
    for now in (size, top):
        assert now <= now + share - kept < now + 1    # MemTotal: the size, to 1 MiB above


def test_a_vm_is_given_its_kernel_share_and_listed_in_its_types_terms(run_dir, tmp_path):
    cfg = make_config(hosts=[{"name": "t", "uri": write_node_xml(tmp_path / "n.xml")}], libvirt={"domain_type": "qemu"})
    fleet = Fleet(cfg)
    fleet.build_on("t", "cms-web-a", vcpus=1, memory_mib=256, max_vcpus=2, max_memory_mib=512,
                   meta=OwnerMeta(group="web"))
    share = vxml.kernel_share_mib(512, 2)
    g = fleet.guest("t", "cms-web-a")
    assert g.limits() == (2, 512 + share)
    assert f"<currentMemory unit='KiB'>{(256 + share) * 1024}</currentMemory>" in g.xml()
    [d] = fleet.owned("web")
    assert (d.memory_mib, d.given_mib, d.meta.memory_mib, d.meta.kernel_mib) == (256, 256 + share, 256, share)
    # a VM made before the share (no <kernel-mib>) reads as libvirt has it
    g.set_owner(vxml.OwnerMeta(**{**d.meta.__dict__, "kernel_mib": 0}))
    assert fleet.owned("web")[0].memory_mib == 256 + share
    fleet.remove("t", "cms-web-a")


def test_domain_type_auto():
    assert resolve_domain_type("qemu", "qemu:///system") == "qemu"
    assert resolve_domain_type("kvm", "qemu:///system") == "kvm"
    assert resolve_domain_type("auto", "qemu+ssh://h/system", "<domain type='kvm'/>") == "kvm"
    assert resolve_domain_type("auto", "qemu+ssh://h/system", "<domain type='qemu'/>") == "qemu"
    assert resolve_domain_type("auto", "qemu:///system") in ("kvm", "qemu")


class _Timer:
    """threading.Timer as a test drives it: it fires when the test says (fire), never by itself."""

    made: list["_Timer"] = []

    def __init__(self, interval, fn) -> None:
        self.interval, self.fn = interval, fn
        self.started = self.cancelled = False
        self.daemon = False
        _Timer.made.append(self)

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert self.started and not self.cancelled
        self.fn()


class _Migration:
    """A domain's migration: `stuck` never converges, so the test's timer fires (the timeout
    passes) while it runs and the job is aborted; otherwise it finishes at once."""

    def __init__(self, stuck: bool) -> None:
        self.stuck = stuck
        self.aborts = 0
        self.aborted_before_timeout = None

    def migrate3(self, dconn, params, flags):
        import libvirt
        if not self.stuck:
            return None
        self.aborted_before_timeout = self.aborts > 0
        _Timer.made[-1].fire()                 # the timeout passes while the job runs
        exc = libvirt.libvirtError("operation aborted")
        # as libvirt fills it in (not from whatever error this thread saw last)
        exc.err = (libvirt.VIR_ERR_OPERATION_ABORTED, libvirt.VIR_FROM_QEMU,
                   "operation aborted: migration out job: canceled by client", libvirt.VIR_ERR_ERROR,
                   None, None, None, 0, 0)
        raise exc

    def abortJob(self):
        self.aborts += 1
        return 0


@pytest.mark.parametrize("stuck", [True, False])
def test_migration_is_aborted_when_its_timeout_passes_and_only_then(monkeypatch, stuck):
    # A real slow migration cannot be made on demand here (a tiny guest moves in ~1.6 s,
    # tests/integration/test_migrate_real.py); the timer and the error are what this checks,
    # with a timer the test fires (the timeout passing) instead of the clock.
    from cms.virt import migration
    src, dst = Host("src", "test:///default"), Host("dst", "test:///default")
    job = _Migration(stuck)
    monkeypatch.setattr(Migration, "_lookup_for_migration", lambda self, c, name: job)
    monkeypatch.setattr(migration, "Timer", _Timer)
    _Timer.made.clear()
    try:
        if stuck:
            with pytest.raises(errors.VirtError, match=r"migration aborted after 0.3 s \(it still runs here\)") as ei:
                src.migration.migrate("vm1", dst.calls, timeout_s=0.3)
            assert job.aborted_before_timeout is False and job.aborts == 1
            assert "host src" in str(ei.value) and "canceled by client" in str(ei.value)
        else:
            src.migration.migrate("vm1", dst.calls, timeout_s=0.3)
            assert job.aborts == 0
        [timer] = _Timer.made
        assert timer.interval == 0.3 and timer.started and timer.cancelled    # no abort left behind
    finally:
        src.close()
        dst.close()


def test_migration_stream_cap_and_address_reach_libvirt(monkeypatch):
    import libvirt

    class _Recorder:
        def migrate3(self, dconn, params, flags):
            self.params, self.flags = params, flags

    src, dst = Host("src", "test:///default"), Host("dst", "test:///default")
    rec = _Recorder()
    monkeypatch.setattr(Migration, "_lookup_for_migration", lambda self, c, name: rec)
    src.migration.migrate("vm1", dst.calls, address="169.254.1.2", bandwidth_mib_s=8)
    assert rec.params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 8
    assert rec.params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://169.254.1.2"
    assert rec.flags & libvirt.VIR_MIGRATE_LIVE
    src.migration.migrate("vm1", dst.calls)                       # no cap: the parameter is left out
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH not in rec.params
    src.close()
    dst.close()
