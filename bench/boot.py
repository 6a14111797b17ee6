"""Benchmark: replica boot time and golden image build time, on the real stack.

Prints one JSON line:
  boot_s            min/median/max seconds from Fleet.build_on (linked clone, define, start)
                    to the first good /health through the 127.0.0.1 port forward, for 3
                    clones booted one after another (each removed before the next)
  spawn_s           the part of that spent in Fleet.build_on itself
  build_cold_s      the cold image build time, from the image's manifest
  build_cached_s    wall time of a second scripts/build-image.sh (inputs unchanged)
  image_bytes       golden.qcow2 size on disk; kernel_bytes, initrd_bytes
Target: boot <= 8 s under TCG (domain type qemu).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cms.virt import Fleet, OwnerMeta  # noqa: E402
from cms.lab.realstack import GOLDEN, drop_pool, real_config  # noqa: E402

CLONES = 3
BOOT_TIMEOUT_S = 120.0


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    except (OSError, ValueError):
        return False


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 2), "median": round(statistics.median(xs), 2), "max": round(max(xs), 2)}


def main() -> None:
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    t = time.perf_counter()
    proc = subprocess.run([str(ROOT / "scripts/build-image.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    build_cached = time.perf_counter() - t
    if proc.returncode != 0 or not GOLDEN.exists():
        sys.exit(f"image build failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    manifest = json.loads((GOLDEN.parent / "manifest.json").read_text())

    cfg = real_config(Path(tempfile.mkdtemp()), pool="cms-bench-boot")
    fleet = Fleet(cfg)
    h = fleet.host("local")
    boots, spawns = [], []
    try:
        for i in range(CLONES):
            name = f"cms-benchboot-{int(time.time() * 1000):x}"
            t0 = time.perf_counter()
            s = fleet.build_on("local", name, vcpus=1, memory_mib=512, meta=OwnerMeta(group="benchboot"))
            spawns.append(time.perf_counter() - t0)
            deadline = t0 + BOOT_TIMEOUT_S
            while not healthy(s.port):
                if time.perf_counter() > deadline:
                    sys.exit(f"{name} gave no good /health within {BOOT_TIMEOUT_S}s")
                time.sleep(0.05)
            boots.append(time.perf_counter() - t0)
            fleet.remove("local", name)
    finally:
        for d in fleet.owned("benchboot"):
            fleet.remove(d.host, d.name)
        drop_pool(h, cfg.libvirt.pool)
        dtype = h.domain_type(cfg.libvirt.domain_type)
        fleet.close()
    print(json.dumps({
        "bench": "boot",
        "domain_type": dtype,
        "clones": CLONES,
        "boot_s": stats(boots),
        "spawn_s": stats(spawns),
        "target_boot_s": 8.0,
        "build_cold_s": manifest["build_time_s"],
        "build_cached_s": round(build_cached, 2),
        "image_bytes": GOLDEN.resolve().stat().st_size,
        "kernel_bytes": manifest["sizes"]["vmlinuz"],
        "initrd_bytes": manifest["sizes"]["initrd.img"],
        "input_hash": manifest["input_hash"],
        "host_load_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
