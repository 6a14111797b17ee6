"""100,000 placements over 10,000 hosts per policy; prints one JSON line.

Usage: .venv/bin/python bench/placement.py [--hosts 10000] [--placements 100000]
Target: each policy in at most 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cms.placement import ALGORITHMS, HostLoad, Placer, Request, Rules  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--placements", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    hosts = [HostLoad(f"h{i}", cpus=rnd.choice([8, 16, 32]), memory_mib=rnd.choice([16384, 32768, 65536]),
                      up=rnd.random() > 0.02) for i in range(a.hosts)]
    shapes = [Request(1, 512, 1 << 30), Request(2, 1024, 2 << 30), Request(4, 2048, 3 << 30)]
    reqs = [rnd.choice(shapes) for _ in range(a.placements)]
    rules = Rules(cpu_overcommit=4.0, ram_reserve_mib=512)
    out: dict[str, object] = {"bench": "placement", "hosts": a.hosts, "placements": a.placements}
    for algo in ALGORITHMS:
        p = Placer(algo, hosts, rules)
        t0 = time.perf_counter()
        placed = 0
        for r in reqs:
            p.place(r)
            placed += 1
        dt = time.perf_counter() - t0
        out[f"{algo}_s"] = round(dt, 3)
        out[f"{algo}_per_s"] = int(placed / dt)
    out["target_s"] = 2.0
    out["ok"] = all(out[f"{x}_s"] <= 2.0 for x in ALGORITHMS)  # type: ignore[operator]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
