"""Benchmark: replica cold boot against the kernel's own floor, and where the seconds go.

Prints one JSON line:
  boot_s           min/median/max seconds from Fleet.build_on (linked clone, define, start)
                   to the first good /health through the 127.0.0.1 port forward, for 3
                   replicas booted one after another (each removed before the next)
  floor_s          the same for the floor: the same domain (kernel, command line, devices,
                   1 vCPU, 512 MiB) with a minimal initramfs whose /init prints one line to
                   the serial port and powers off, from Fleet.build_on to that line in the
                   serial log
  boot_over_floor  median boot_s / median floor_s (target: <= 3)
  no_balloon_s     the same as boot_s for the same replica with the balloon driver kept out
                   (module_blacklist=virtio_balloon on its kernel command line: the
                   initramfs's insmod is refused, so neither the module's load nor its
                   probe happen), booted in turn with the other two; balloon_s, median
                   boot_s - median no_balloon_s: what the driver costs the boot, as the host
                   sees it (noisy: a fraction of the boots' spread)
  spawn_s          the part of boot_s spent in Fleet.build_on itself
  guest            one more replica boot with cms.boot_report on its kernel command line:
                   the guest's own timestamps (seconds since its kernel started) of where
                   the boot went: kernel (to the initramfs's /init), initramfs (to
                   switch_root; of it: modules, disk, dhcp), systemd (to cms-guest's exec;
                   of it: the manager's own security, generators and unit loading), server
                   (exec to READY=1), and outside_guest (that boot's wall time minus the
                   guest's READY time: clone, define, QEMU and firmware start, and /health
                   seen by the host); python_start_warm and python_import_server_warm,
                   python3's start and the server's imports timed again after the boot (files
                   cached); memtotal_mib, what the guest's kernel counts
  guest_no_balloon the same breakdown of one boot without the balloon driver; balloon_guest_s:
                   what the driver costs in the guest's own clock (ready_at, and
                   initramfs_modules: the modules' load, with and without it); and
                   balloon_init_s, the driver's own module init (with its device's probe)
                   as the guest's kernel timed it (initcall_debug, one more report boot)
  build_cold_s     the cold image build time, from the image's manifest
  build_cached_s   wall time of a second scripts/build-image.sh (inputs unchanged)
  image_bytes      golden.qcow2 size on disk; kernel_bytes, initrd_bytes
Usage: bench/boot.py [--image DIR]   (DIR: a built image's directory, e.g. a variant's
/var/lib/cms/images/NAME; default: make the published one with scripts/build-image.sh)
Replica and floor boots alternate, so a machine busy with other work slows both alike. The
boot report's full text (systemd-analyze blame and critical-chain, the guest server's
import times) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
from cms.virt.fleet import SERIAL_LOG_DIR  # noqa: E402

CLONES = 3
BOOT_TIMEOUT_S = 120.0
REPORT_TIMEOUT_S = 90.0
POLL_S = 0.02
FLOOR_MARK = "cms-floor: init reached"
NO_BALLOON = "module_blacklist=virtio_balloon"     # the kernel refuses the module: no driver at all
# The floor's /init: busybox only, nothing mounted but /dev, one line out, power off.
FLOOR_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "{FLOOR_MARK}" > /dev/ttyS0
/bin/busybox poweroff -f
"""


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    except (OSError, ValueError):
        return False


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": round(min(xs), 2), "median": round(statistics.median(xs), 2), "max": round(max(xs), 2)}


def floor_initramfs(directory: Path) -> Path:
    """A newc cpio holding a static busybox and FLOOR_INIT, readable by QEMU's user."""
    tree = directory / "tree"
    for d in ("bin", "dev"):
        (tree / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin/busybox")
    (tree / "init").write_text(FLOOR_INIT)
    (tree / "init").chmod(0o755)
    out = directory / "floor-initrd.img"
    names = "\n".join(sorted(str(p.relative_to(tree)) for p in tree.rglob("*")))
    with open(out, "wb") as fh:
        subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=tree, input=names.encode(),
                       stdout=fh, check=True, timeout=60)
    directory.chmod(0o755)
    out.chmod(0o644)
    return out


def serial_log(name: str) -> str:
    try:
        return Path(f"{SERIAL_LOG_DIR}/{name}-serial.log").read_text(errors="replace")
    except OSError:
        return ""


def boot_replica(fleet: Fleet, name: str) -> tuple[float, float]:
    """(seconds to the first good /health, seconds in build_on) of one new replica."""
    t0 = time.perf_counter()
    s = fleet.build_on("local", name, vcpus=1, memory_mib=512, meta=OwnerMeta(group="benchboot"))
    spawn = time.perf_counter() - t0
    while not healthy(s.port):
        if time.perf_counter() - t0 > BOOT_TIMEOUT_S:
            sys.exit(f"{name} gave no good /health within {BOOT_TIMEOUT_S}s")
        time.sleep(POLL_S)
    return time.perf_counter() - t0, spawn


def boot_floor(fleet: Fleet, name: str) -> float:
    """Seconds from build_on to the floor's line on the serial port (its /init ran); then it
    must power off. Not timed to the power-off: libvirt takes seconds more to see QEMU go."""
    t0 = time.perf_counter()
    fleet.build_on("local", name, vcpus=1, memory_mib=512, meta=OwnerMeta(group="benchboot"))
    while FLOOR_MARK not in serial_log(name):
        if time.perf_counter() - t0 > BOOT_TIMEOUT_S:
            sys.exit(f"the floor domain {name} printed no {FLOOR_MARK!r} within {BOOT_TIMEOUT_S}s: "
                     f"{serial_log(name)[-1000:]!r}")
        time.sleep(POLL_S)
    took = time.perf_counter() - t0
    g = fleet.guest("local", name)
    while g.is_active():
        if time.perf_counter() - t0 > BOOT_TIMEOUT_S:
            sys.exit(f"the floor domain {name} did not power off within {BOOT_TIMEOUT_S}s")
        time.sleep(0.1)
    return took


def parse_report(text: str) -> dict[str, float]:
    """The guest's boot report (the image's cms-boot-report) as a breakdown in seconds."""
    lines = [ln.split("cms-boot-report: ", 1)[1].rstrip("\r") for ln in text.splitlines() if "cms-boot-report: " in ln]
    kv = dict(ln.split("=", 1) for ln in lines if re.match(r"^[\w.]+=", ln))

    def mono(key: str) -> float:
        return int(kv.get(key) or 0) / 1e6

    marks: dict[str, float] = {}
    for ln in lines:
        m = re.match(r"kmsg \[\s*([\d.]+)\] cms-initramfs: (\w+)", ln)
        if m:
            marks.setdefault(m.group(2), float(m.group(1)))
    exec_at, ready_at = mono("guest.ExecMainStartTimestampMonotonic"), mono("guest.ActiveEnterTimestampMonotonic")
    start, switch = marks.get("start", 0.0), marks.get("switch_root", 0.0)
    out = {
        "kernel": start,
        "initramfs": switch - start,
        "initramfs_modules": marks.get("modules", start) - start,
        "initramfs_disk": marks.get("disk", start) - marks.get("modules", start),
        "initramfs_dhcp": marks.get("dhcp", switch) - marks.get("disk", start),
        "systemd": exec_at - switch,
        "systemd_security": mono("manager.SecurityFinishTimestampMonotonic") - mono("manager.SecurityStartTimestampMonotonic"),
        "systemd_generators": mono("manager.GeneratorsFinishTimestampMonotonic") - mono("manager.GeneratorsStartTimestampMonotonic"),
        "systemd_units_load": mono("manager.UnitsLoadFinishTimestampMonotonic") - mono("manager.UnitsLoadStartTimestampMonotonic"),
        "server": ready_at - exec_at,
        "ready_at": ready_at,
        "boot_finished_at": mono("manager.FinishTimestampMonotonic"),
    }
    for key in ("start", "import_server"):
        if kv.get(f"python.{key}_ms", "").isdigit():
            out[f"python_{key}_warm"] = int(kv[f"python.{key}_ms"]) / 1000
    for ln in lines:     # with initcall_debug: the balloon driver's init, its probe included
        m = re.search(r"initcall virtio_balloon_driver_init\S* \[virtio_balloon\] returned -?\d+ after (\d+) usecs", ln)
        if m:
            out["balloon_init_s"] = int(m.group(1)) / 1e6
    res = {k: round(v, 3) for k, v in out.items()}
    if kv.get("memtotal_kib"):
        res["memtotal_mib"] = round(int(kv["memtotal_kib"]) / 1024, 1)
    return res


def boot_report(fleet: Fleet, name: str) -> dict[str, float]:
    """One replica booted with cms.boot_report: its breakdown; the report's text to stderr."""
    wall, _spawn = boot_replica(fleet, name)
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while "cms-boot-report: end" not in (text := serial_log(name)):
        if time.monotonic() > deadline:
            sys.exit(f"{name} wrote no boot report within {REPORT_TIMEOUT_S}s: {text[-2000:]!r}")
        time.sleep(0.2)
    print("\n".join(ln for ln in text.splitlines() if "cms-boot-report: " in ln), file=sys.stderr)
    out = parse_report(text)
    out["outside_guest"] = round(wall - out["ready_at"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Replica cold boot against the kernel's floor; one JSON line.")
    ap.add_argument("--image", type=Path, help="a built image's directory (default: build and use the published one)")
    a = ap.parse_args()
    os.environ.setdefault("CMS_RUN_DIR", tempfile.mkdtemp(prefix="cms-bench-"))
    golden = (a.image / "golden.qcow2") if a.image else GOLDEN
    build_cached = None
    if not a.image:
        t = time.perf_counter()
        proc = subprocess.run([str(ROOT / "scripts/build-image.sh")], cwd=ROOT, capture_output=True, text=True,
                              timeout=1800)
        build_cached = round(time.perf_counter() - t, 2)
        if proc.returncode != 0:
            sys.exit(f"image build failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if not golden.exists():
        sys.exit(f"{golden} is missing: run `make image` first")
    manifest = json.loads((golden.parent / "manifest.json").read_text())

    work = Path(tempfile.mkdtemp(prefix="cms-bench-boot-"))
    work.chmod(0o755)  # QEMU runs as its own user and reads the floor's initramfs in here
    floor_initrd = floor_initramfs(work / "floor")
    img = {"golden": str(golden)}
    cfg = real_config(work, pool="cms-bench-boot", image=img)
    fleets = {
        "replica": Fleet(cfg),
        "floor": Fleet(real_config(work, pool="cms-bench-boot", image={**img, "initrd": str(floor_initrd)})),
        "report": Fleet(real_config(work, pool="cms-bench-boot",
                                    image={**img, "cmdline": f"{cfg.image.cmdline} cms.boot_report"})),
        "no_balloon": Fleet(real_config(work, pool="cms-bench-boot",
                                        image={**img, "cmdline": f"{cfg.image.cmdline} {NO_BALLOON}"})),
        "report_no_balloon": Fleet(real_config(work, pool="cms-bench-boot", image={
            **img, "cmdline": f"{cfg.image.cmdline} cms.boot_report {NO_BALLOON}"})),
        "report_initcalls": Fleet(real_config(work, pool="cms-bench-boot", image={
            **img, "cmdline": f"{cfg.image.cmdline} cms.boot_report initcall_debug log_buf_len=4M"})),
    }
    h = fleets["replica"].host("local")
    boots, spawns, floors, bare = [], [], [], []
    try:
        for _ in range(CLONES):
            name = f"cms-benchboot-{int(time.time() * 1000):x}"
            took, spawn = boot_replica(fleets["replica"], name)
            boots.append(took)
            spawns.append(spawn)
            fleets["replica"].remove("local", name)
            name = f"cms-benchfloor-{int(time.time() * 1000):x}"
            floors.append(boot_floor(fleets["floor"], name))
            fleets["floor"].remove("local", name)
            name = f"cms-benchbare-{int(time.time() * 1000):x}"
            bare.append(boot_replica(fleets["no_balloon"], name)[0])
            fleets["no_balloon"].remove("local", name)
        guests = {}
        for kind in ("report", "report_no_balloon", "report_initcalls"):
            name = f"cms-benchreport-{int(time.time() * 1000):x}"
            guests[kind] = boot_report(fleets[kind], name)
            fleets[kind].remove("local", name)
        guest, guest_bare = guests["report"], guests["report_no_balloon"]
    finally:
        for d in fleets["replica"].owned("benchboot"):
            fleets["replica"].remove(d.host, d.name)
        drop_pool(h, cfg.libvirt.pool)
        dtype = h.domain_type(cfg.libvirt.domain_type)
        for f in fleets.values():
            f.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "bench": "boot",
        "domain_type": dtype,
        "clones": CLONES,
        "boot_s": stats(boots),
        "floor_s": stats(floors),
        "boot_over_floor": round(statistics.median(boots) / statistics.median(floors), 2),
        "target_boot_over_floor": 3.0,
        "spawn_s": stats(spawns),
        "no_balloon_s": stats(bare),
        "balloon_s": round(statistics.median(boots) - statistics.median(bare), 2),
        "guest": guest,
        "guest_no_balloon": guest_bare,
        "balloon_guest_s": {k: round(guest[k] - guest_bare[k], 3) for k in ("ready_at", "initramfs_modules")},
        "balloon_init_s": guests["report_initcalls"].get("balloon_init_s"),
        "build_cold_s": manifest["build_time_s"],
        "build_cached_s": build_cached,
        "image_bytes": golden.resolve().stat().st_size,
        "kernel_bytes": manifest["sizes"]["vmlinuz"],
        "initrd_bytes": manifest["sizes"]["initrd.img"],
        "input_hash": manifest["input_hash"],
        "host_load_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
