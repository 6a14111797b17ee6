"""Benchmark: linked clone, define and start of a replica on the real stack.

Prints one JSON line: clone_ms, define_ms, start_ms (median of 5, with min/max) for a
qcow2 overlay of the golden image (~400 MB) made through the storage volume API, the
domain defined from cms's XML, and started under the configured domain type (TCG here).
Each domain is destroyed and removed again before the next round. Target: clone + define
<= 100 ms.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cms.virt import Fleet, OwnerMeta  # noqa: E402
from cms.virt import xml as vxml  # noqa: E402
from cms.lab.realstack import GOLDEN, drop_pool, real_config  # noqa: E402

ROUNDS = 5


def main() -> None:
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    if not GOLDEN.exists():
        sys.exit(f"golden image {GOLDEN} missing: run `make image` first")
    cfg = real_config(Path(tempfile.mkdtemp()), pool="cms-bench-clone")
    fleet = Fleet(cfg)
    h = fleet.host("local")
    h.storage.ensure_pool(cfg.libvirt.pool, cfg.libvirt.pool_path)
    dtype = h.domain_type(cfg.libvirt.domain_type)
    kernel, initrd = fleet.boot_files()
    clone, define, start = [], [], []
    try:
        for i in range(ROUNDS):
            name = f"cms-bench-clone-{i}"
            t0 = time.perf_counter()
            disk = h.storage.create_overlay(cfg.libvirt.pool, name + ".qcow2", str(GOLDEN))
            t1 = time.perf_counter()
            spec = vxml.DomainSpec(name=name, uuid=h.new_uuid(), vcpus=1, memory_mib=512, disk_path=disk,
                                   meta=OwnerMeta(group="bench", port=0), domain_type=dtype, kernel=kernel,
                                   initrd=initrd, cmdline=cfg.image.cmdline, network_mode="user", host_port=0)
            h.domains.define(spec)
            t2 = time.perf_counter()
            h.guest(name).start()
            t3 = time.perf_counter()
            clone.append((t1 - t0) * 1000)
            define.append((t2 - t1) * 1000)
            start.append((t3 - t2) * 1000)
            h.domains.remove(name, cfg.libvirt.pool)
    finally:
        for d in fleet.owned("bench"):
            fleet.remove(d.host, d.name)
        drop_pool(h, cfg.libvirt.pool)

    def fig(xs):
        return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}

    print(json.dumps({
        "bench": "clone_and_define", "rounds": ROUNDS, "golden_bytes": GOLDEN.stat().st_size,
        "domain_type": dtype, "clone_ms": fig(clone), "define_ms": fig(define), "start_ms": fig(start),
        "clone_plus_define_ms_median": round(statistics.median([a + b for a, b in zip(clone, define)]), 2),
        "target_clone_plus_define_ms": 100,
    }))


if __name__ == "__main__":
    main()
