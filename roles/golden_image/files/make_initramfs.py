#!/usr/bin/env python3
"""Build a tiny busybox initramfs for direct kernel boot of the golden image.

It holds a static busybox, the few kernel modules the root disk needs (virtio_pci,
virtio_blk and virtio_net with their dependencies, in load order from the image's modules.dep; ext4 is
built into the Debian cloud kernel) and an /init that mounts root= and switch_roots into
systemd. Debian's initramfs-tools initrd probes far more and costs seconds under TCG.

Usage: make_initramfs.py ROOTFS KERNEL_VERSION OUTPUT [MODULE...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "mount", "umount", "insmod", "switch_root", "sleep", "mkdir", "cat", "findfs", "echo",
           "udhcpc", "ifconfig", "route", "ls"]
DEFAULT_MODULES = ["virtio_pci", "virtio_blk", "virtio_net"]

# udhcpc calls this with the lease in the environment; it configures the NIC in the kernel,
# where the address stays after switch_root until systemd-networkd takes the link over.
DHCP_SCRIPT = r"""#!/bin/sh
case "$1" in
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    for r in $router; do route add default gw "$r" dev "$interface"; break; done ;;
  deconfig) ifconfig "$interface" 0.0.0.0 up ;;
esac
exit 0
"""

INIT = r"""#!/bin/sh
# cms golden image initramfs: load the disk drivers, mount root=, hand over to systemd.
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
# Each step is stamped in the kernel log (timestamped, off the quiet console): the guest's
# boot report (cms.boot_report on the kernel command line) reads them back with dmesg.
mark() { echo "<6>cms-initramfs: $*" > /dev/kmsg; }
mark start
for m in $(cat /modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
mark modules loaded
root=/dev/vda; fstype=ext4; flags=rw; init=/sbin/init
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="${arg#root=}" ;;
    rootfstype=*) fstype="${arg#rootfstype=}" ;;
    rootflags=*) flags="rw,${arg#rootflags=}" ;;
    ro) flags="ro${flags#rw}" ;;
    init=*) init="${arg#init=}" ;;
  esac
done
case "$root" in
  UUID=*|LABEL=*) dev=$(findfs "$root" 2>/dev/null) ;;
  *) dev="$root" ;;
esac
# Bounded wait for the disk to appear (virtio_blk probes asynchronously).
i=0
while [ ! -b "$dev" ] && [ $i -lt 500 ]; do
  sleep 0.02; i=$((i + 1))
  case "$root" in UUID=*|LABEL=*) dev=$(findfs "$root" 2>/dev/null) ;; esac
done
mark disk $dev
# Early DHCP on the first NIC (bounded: at most 3 tries of 1 s): the replica is reachable
# as soon as its server listens, without waiting for udev and systemd-networkd in the real
# root. systemd-networkd (KeepConfiguration=yes) later runs DHCP on the link itself.
for n in /sys/class/net/*; do
  n=${n##*/}
  [ "$n" = lo ] && continue
  udhcpc -i "$n" -q -n -t 3 -T 1 -s /bin/dhcp.sh >/dev/null 2>&1
  break
done
mark dhcp done
mkdir -p /newroot
if ! mount -t "$fstype" -o "$flags" "$dev" /newroot; then
  echo "initramfs: cannot mount root $root ($dev); dropping to a shell" > /dev/console
  exec sh
fi
mark switch_root
umount /sys
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"""


def load_order(moddir: Path, wanted: list[str]) -> list[str]:
    builtin = set()
    bpath = moddir / "modules.builtin"
    if bpath.exists():
        builtin = {Path(line.strip()).name.split(".ko")[0] for line in bpath.read_text().splitlines() if line.strip()}
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        by_name[Path(mod).name.split(".ko")[0].replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in reversed(deps.get(mod, [])):
            visit(dep)
        order.append(mod)

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise SystemExit(f"make_initramfs: module {name} is neither built in nor in {moddir}")
        visit(by_name[key])
    return order


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    rootfs, kver, output = Path(argv[1]), argv[2], Path(argv[3])
    wanted = argv[4:] or DEFAULT_MODULES
    moddir = rootfs / "lib/modules" / kver
    order = load_order(moddir, wanted)
    with tempfile.TemporaryDirectory(prefix="cms-initramfs-") as tmp:
        t = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, t / "bin/busybox")
        for applet in APPLETS:
            os.symlink("busybox", t / "bin" / applet)
        for mod in order:
            dest = t / "lib/modules" / mod
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(moddir / mod, dest)
        (t / "modules.order").write_text("".join(m + "\n" for m in order))
        (t / "bin/dhcp.sh").write_text(DHCP_SCRIPT)
        (t / "bin/dhcp.sh").chmod(0o755)
        (t / "init").write_text(INIT)
        (t / "init").chmod(0o755)
        names = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
        tmp_out = output.with_suffix(output.suffix + ".tmp")
        with open(tmp_out, "wb") as out:
            subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=t,
                           input="\n".join(names).encode(), stdout=out, check=True)
        tmp_out.chmod(0o644)
        tmp_out.replace(output)
    print(f"initramfs {output}: modules {' '.join(Path(m).stem for m in order)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
