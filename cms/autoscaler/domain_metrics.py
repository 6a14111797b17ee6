"""The exporter's per-domain families: every domain's figures of the last tick, as the store's
samples hold them (``cms_domain_*``: CPU, each vCPU, vCPUs, memory, state).

cms.autoscaler.exporter yields them only with ``[history] source = "prometheus"`` (which reads
them: cms.promhistory) or ``autoscaler.domain_metrics = true``; at 1,000 replicas they take a
scrape from ~110 kB to ~430 kB (bench/monitor_tick.py).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric


def domain_families(domains: Iterable[Mapping[str, Any]]) -> Iterable[Metric]:
    """Every domain's figures of the last tick, as the store's samples hold them: what the
    history API reads with [history] source = "prometheus" (cms.promhistory)."""
    labels = ["domain", "host", "group"]
    cpu = GaugeMetricFamily("cms_domain_cpu_utilization_ratio", "The domain's CPU over the last tick, per vCPU "
                            "(every domain cms owns: replicas and the API's VMs)", labels=labels)
    vcpu = GaugeMetricFamily("cms_domain_vcpu_utilization_ratio", "Each vCPU's busy share over the last tick",
                             labels=["domain", "vcpu"])
    vcpus = GaugeMetricFamily("cms_domain_vcpus", "The domain's vCPUs", labels=labels)
    mem = GaugeMetricFamily("cms_domain_memory_bytes", "The domain's current memory (the balloon's size)",
                            labels=labels)
    state = GaugeMetricFamily("cms_domain_state", "1 for the domain's state: a replica's lifecycle state, "
                              "else libvirt's", labels=["domain", "group", "state"])
    for d in domains:
        key = [d["name"], d.get("host") or "", d.get("group") or ""]
        if d.get("cpu") is not None:
            cpu.add_metric(key, d["cpu"])
        for i, v in enumerate(d.get("vcpu") or ()):
            if v is not None:
                vcpu.add_metric([d["name"], str(i)], v)
        vcpus.add_metric(key, d.get("vcpus") or 0)
        if d.get("memory_kib") is not None:
            mem.add_metric(key, d["memory_kib"] * 1024)
        state.add_metric([d["name"], d.get("group") or "", d.get("state") or ""], 1)
    yield from (cpu, vcpu, vcpus, mem, state)
