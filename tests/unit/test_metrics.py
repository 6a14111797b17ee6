"""Utilization arithmetic on injected counter series, and the libvirt source's plumbing."""

from __future__ import annotations

import pytest

from cms import metrics
from cms.metrics import History, Rater, Raw, parse_stats
from cms.virt import Fleet, OwnerMeta
from tests.support import make_config

S = 1_000_000_000  # ns


@pytest.mark.parametrize("prev, cur, dwall, vcpus, want", [
    (0, S, 1.0, 1, 1.0),
    (0, S // 2, 1.0, 1, 0.5),
    (0, S, 2.0, 1, 0.5),             # Δwall, not the tick length, is the denominator
    (0, S, 1.0, 2, 0.5),             # two vCPUs: one busy core is half
    (0, 3 * S, 1.0, 2, 1.5),         # QEMU's own threads on top: above 1 is possible
    (5 * S, 4 * S, 1.0, 1, None),    # counter went backwards: a reset, no figure
    (None, S, 1.0, 1, None),         # no baseline yet
    (0, S, 0.0, 1, None),            # zero interval
    (0, S, 1.0, 0, None),
    (0, None, 1.0, 1, None),
])
def test_utilization(prev, cur, dwall, vcpus, want):
    got = metrics.utilization(prev, cur, dwall, vcpus)
    assert got == (None if want is None else pytest.approx(want))


def test_per_vcpu_and_host():
    got = metrics.per_vcpu({0: 0, 1: 0}, {0: S, 1: S // 4, 2: 7}, 1.0)
    assert got == {0: pytest.approx(1.0), 1: pytest.approx(0.25), 2: None}
    assert metrics.host_utilization([S, S], 1.0, 4) == pytest.approx(0.5)
    assert metrics.host_utilization([S], 0.0, 4) is None


def test_parse_stats():
    raw = parse_stats({"state.state": 1, "cpu.time": 42, "vcpu.current": 2, "vcpu.maximum": 2, "vcpu.0.time": 10,
                       "vcpu.1.time": 20, "vcpu.0.state": 1, "balloon.current": 524288})
    assert raw == Raw(42, {0: 10, 1: 20}, 2, 524288, 1)
    # the test driver gives state only: vCPUs from the domain, no CPU figure
    assert parse_stats({"state.state": 1}, 3) == Raw(None, {}, 3, 0, 1)


def test_rater_series_with_reset():
    r = Rater()
    series = [(0.0, 0), (1.0, S // 2), (2.5, 2 * S), (3.5, S // 10), (4.5, S // 10 + S // 5)]
    got = [r.rate("u", "d", "h", t, Raw(ns, {0: ns}, 1, 0, 1)).cpu for t, ns in series]
    assert got[0] is None
    assert got[1] == pytest.approx(0.5)
    assert got[2] == pytest.approx(1.0)        # 1.5 s of CPU over 1.5 s
    assert got[3] is None                      # restarted: counter reset
    assert got[4] == pytest.approx(0.2)        # the new baseline holds


def test_rater_multi_vcpu():
    r = Rater()
    r.rate("u", "d", "h", 0.0, Raw(0, {0: 0, 1: 0}, 2, 0, 1))
    m = r.rate("u", "d", "h", 2.0, Raw(3 * S, {0: 2 * S, 1: S // 2}, 2, 0, 1))
    assert m.cpu == pytest.approx(0.75)
    assert m.vcpu == {0: pytest.approx(1.0), 1: pytest.approx(0.25)}
    assert m.dcpu_ns == 3 * S


def test_history_is_bounded():
    h = History(3)
    for i in range(5):
        h.add("a", float(i), i / 10)
    assert h.series("a") == ((2.0, 0.2), (3.0, 0.3), (4.0, 0.4))
    assert h.series("a", since=3.0) == ((3.0, 0.3), (4.0, 0.4))
    h.forget("a")
    assert h.series("a") == ()


def test_libvirt_source_one_bulk_call_per_host(node_uri, run_dir, monkeypatch):
    cfg = make_config(hosts=[{"name": "n1", "uri": node_uri}], image={"golden": "/nonexistent.qcow2"})
    fleet = Fleet(cfg)
    try:
        for i in range(3):
            fleet.build_on("n1", f"cms-m-{i}", vcpus=2, memory_mib=128, meta=OwnerMeta(group="m"))
        owned = fleet.owned("m")
        host = fleet.host("n1")
        calls = []
        clock = iter([9.9, 10.1, 11.5, 12.5])  # read before and after each call: midpoints 10 and 12
        counters = iter([0, S])

        def fake_bulk(uuids=None):
            calls.append(uuids)
            c = next(counters)
            return {u: {"state.state": 1, "cpu.time": c, "vcpu.current": 2, "name": "x"} for u in uuids}

        monkeypatch.setattr(host.stats, "bulk_stats", fake_bulk)
        src = metrics.LibvirtMetrics(fleet, clock=lambda: next(clock))
        t1 = src.sample(owned)
        t2 = src.sample(owned)
        assert len(calls) == 2 and calls[0] == {d.uuid for d in owned}
        assert all(m.cpu is None for m in t1.domains.values())
        assert [round(m.cpu, 3) for m in t2.domains.values()] == [0.25] * 3    # 1 s CPU / (2 s x 2 vCPUs)
        assert t2.hosts["n1"].cpu == pytest.approx(3 * S / (2.0 * S * 4))      # node.xml has 4 CPUs
        rows = metrics.to_samples(t2, owned, {})
        assert {r.group for r in rows} == {"m"} and len(rows) == 3
    finally:
        fleet.close()


def test_a_tick_over_listed_domains_reuses_the_listings_stats_call(node_uri, run_dir, monkeypatch):
    """One getAllDomainStats per host per tick: owned_domains' call, not a second one."""
    from cms.virt import Fleet, OwnerMeta
    from tests.support import make_config
    fleet = Fleet(make_config(hosts=[{"name": "n1", "uri": node_uri}], libvirt={"domain_type": "qemu"}))
    try:
        fleet.build_on("n1", "cms-m-0", vcpus=1, memory_mib=128, meta=OwnerMeta(group="m"))
        host = fleet.host("n1")
        conn = host.conn()
        calls = []
        real = conn.getAllDomainStats
        monkeypatch.setattr(conn, "getAllDomainStats", lambda *a: calls.append(a) or real(*a), raising=False)
        src = metrics.LibvirtMetrics(fleet)
        for _ in range(2):
            owned = fleet.owned("m")
            tick = src.sample(owned)
        assert len(calls) == 2  # one per tick, made by the listing
        assert set(tick.domains) == {d.uuid for d in owned}
    finally:
        fleet.close()


def test_history_keeps_the_load_series_beside_cpu():
    h = History(2)
    h.add("a", 1.0, 0.5)
    for i in range(3):
        h.add_load("a", float(i), i + 0.5, None if i == 1 else 0.2)
    assert h.series("a") == ((1.0, 0.5),)
    assert h.series("a", kind="in_flight") == ((1.0, 1.5), (2.0, 2.5))
    assert h.series("a", kind="p95", since=2.0) == ((2.0, 0.2),)
    h.forget("a")
    assert h.series("a", kind="in_flight") == () and h.names() == []
