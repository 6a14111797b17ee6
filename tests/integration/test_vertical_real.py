"""Vertical scaling on a two-host lab: a hot replica gets a vCPU live, its guest uses it.

One lab (hv1 counted as 2 CPUs, hv2 as 4; placement overcommit 1.0, so a host takes as many
vCPUs as it has CPUs) and one cms-autoscaler for the module. The group has one replica,
1 vCPU, defined with at most 3; vertical scaling on (hot: CPU above 70 % for 5 s), relief
off so only vertical decisions move it. A closed-loop load saturates it throughout:

1. grow in place: on hv1 it goes 1 -> 2 vCPUs (the plan's cap is 2 for this step); the
   hot-added vCPU comes online in the guest (the image's udev rule), the guest server
   starts a worker for it, /status says 2 CPUs, and the client's throughput rises;
2. grow on a full host: with the cap at 3, hv1 (2 CPUs, both given) has no room for a third
   vCPU, so it is live-migrated to hv2 first, then grown; the client fails no request.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from cms.lab.hosts import running
from cms.lab.realstack import wait_until
from cms.lab.stack import Stack, throughput

pytestmark = pytest.mark.real

GROUP = "vert"
COST = 20000


def guest_status(t) -> dict:
    with urllib.request.urlopen(f"http://{t.address}:{t.port}/status", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("vertical")
    with running(2, name="cmsvert", subnet=95) as (lab, hosts):
        s = Stack(lab, hosts, work, group=GROUP,
                  group_cfg={"min": 1, "max": 1, "vcpus": 1, "memory_mib": 512, "warmup_s": 10, "cooldown_s": 3600,
                             "vertical": {"enabled": True, "max_vcpus": 3, "high": 0.7, "low": 0.05,
                                          "window_s": 5.0, "window_in_s": 3600.0}},
                  cpus={"hv1": 2, "hv2": 4},
                  placement={"algorithm": "first_fit", "cpu_overcommit": 1.0, "ram_reserve_mib": 0},
                  balancer={"enabled": True, "relief": False, "vm_cooldown_s": 0.0, "max_moves": 10})
        try:
            s.start()
            s.vertical(max_vcpus=2)          # step 1 stops at 2 vCPUs
            s.ready(1)
            s.load = s.loadgen("vertical", "--concurrency", "6", "--cost", str(COST), "--duration", "150",
                               "--timeout", "60")
            yield s
        finally:
            s.close()


def test_a_hot_replica_grows_in_place_and_its_guest_serves_more(stack):
    [t] = stack.ready(1)
    assert (t.host, guest_status(t)["cpus"], guest_status(t)["workers"]) == ("hv1", 1, 1)
    grown = stack.wait_event("resized", 90)
    assert grown.subject == t.name and grown.data["vcpus"] == 2 and grown.data["host"] == "hv1"
    assert grown.message.startswith(f"{t.name} cpu ") and "1 -> 2 vCPU, 512 -> 512 MiB in place on hv1" in grown.message
    assert stack.events("balance_migrate") == []
    st = wait_until(lambda: (s := guest_status(t))["cpus"] == 2 and s["workers"] == 2 and s, 30, 0.5,
                    what="the guest to use its second vCPU")
    using = time.time()

    def ticks_past(ts: float):
        """The load client's records once one of its ticks is stamped at or after ts, else None."""
        records = [json.loads(x) for x in (stack.dir / "vertical.jsonl").read_text().splitlines() if x]
        return records if any(r.get("type") == "tick" and r["ts"] >= ts for r in records) else None
    # 15 s of the grown replica under the same load, as the client's own ticks record them
    records = wait_until(lambda: ticks_past(using + 16), 45, 0.5, what="15 s of the client's ticks after the growth")
    before = throughput(records, grown.ts - 9, grown.ts - 1)      # the hot window it grew on, and a bit
    after = throughput(records, using + 1, using + 16)
    print(f"\nvertical in place: guest /status {st}; throughput {before:.2f}/s with 1 vCPU, {after:.2f}/s with 2")
    assert before > 0 and after > 1.3 * before, (before, after)


def test_a_hot_replica_on_a_full_host_migrates_first_then_grows(stack):
    [t] = stack.ready(1)
    last = stack.events()[-1].id
    stack.vertical(max_vcpus=3)
    started = stack.wait_event("balance_migrate", 60, after_id=last)
    assert started.data["strategy"] == "vertical" and (started.data["from"], started.data["to"]) == ("hv1", "hv2")
    assert "has no room for +1 vCPU" in started.message and started.message.endswith("migrating it to hv2 first")
    moved = stack.wait_event("migrated", 120, after_id=last)
    grown = stack.wait_event("resized", 60, after_id=moved.id)
    assert grown.data["vcpus"] == 3 and grown.data["host"] == "hv2"
    assert grown.message.endswith("2 -> 3 vCPU, 512 -> 512 MiB on hv2 after the migration")
    t = stack.track(t.name)
    assert t.host == "hv2" and t.address == "169.254.95.12"
    st = wait_until(lambda: (s := guest_status(t))["cpus"] == 3 and s["workers"] == 3 and s, 30, 0.5,
                    what="the guest to use its third vCPU")
    stack.stop_loadgen(stack.load)
    summary, records = stack.loadgen_result("vertical", stack.load)
    print(f"\nvertical on a full host: migrated in {moved.data['took_s']} s, then grown; guest /status {st}; "
          f"{summary['sent']} requests over the run, {summary['errors']} failed")
    assert summary["errors"] == 0, summary["errors_by_kind"]
    assert [r["endpoint"] for r in records if r.get("event") == "replica_moved"] == [f"169.254.95.12:{t.port}"]
