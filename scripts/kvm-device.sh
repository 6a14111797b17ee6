#!/usr/bin/env bash
# Give /dev/kvm the group and mode udev's rules give it on a normal boot: group kvm, read
# and write for owner and group (0660, or wider if it already is).
#
# Why: on a machine without udev (containers, CI, some cloud VMs) the node stays
# root:root 0600. libvirtd then finds KVM usable when it probes QEMU as root, but not when
# it checks its capabilities cache as the qemu user (libvirt-qemu, group kvm), so it throws
# the cache away and re-probes QEMU on every lookup: each define takes about a minute. This
# happens whatever domain type cms uses, TCG included. roles/libvirt_host does the same on
# hypervisors; `cms doctor` reports the device and times a define.
#
# Usage: scripts/kvm-device.sh [--check] [DEVICE]   (default /dev/kvm; tests pass a mknod'ed node)
#   --check  say what would change, change nothing
# Prints what it changed, or that nothing needed changing. Safe to run again.
# Exit: 0 done (or nothing to do), 1 the change failed, 2 DEVICE is not a character device.
set -euo pipefail
check=0
if [ "${1:-}" = --check ]; then check=1; shift; fi
dev=${1:-/dev/kvm}
say() { printf '[kvm-device] %s\n' "$*"; }

if [ ! -e "$dev" ]; then
  say "$dev does not exist: nothing to do (guests run under TCG)"
  exit 0
fi
if [ ! -c "$dev" ]; then
  echo "kvm-device: $dev is not a character device" >&2
  exit 2
fi
before=$(stat -c '%U:%G %a' "$dev")
group=$(stat -c '%G' "$dev")
mode=$((8#$(stat -c '%a' "$dev")))
if [ "$group" = kvm ] && [ $((mode & 8#0660)) -eq $((8#0660)) ]; then
  say "$dev is $before: already as udev would set it"
  exit 0
fi
if [ $check = 1 ]; then
  say "would change $dev from $before to group kvm, mode ug+rw (check mode: nothing changed)"
  exit 0
fi
if ! getent group kvm >/dev/null; then
  groupadd --system kvm
  say "created the system group kvm"
fi
if ! err=$( { chgrp kvm "$dev" && chmod ug+rw "$dev"; } 2>&1); then
  echo "kvm-device: cannot change $dev ($before): $err" >&2
  echo "kvm-device: give it group kvm and mode 0660 where it is made (the container's host), or remove it (guests then run under TCG)" >&2
  exit 1
fi
say "changed $dev from $before to $(stat -c '%U:%G %a' "$dev") (as udev's rules would)"
if id libvirt-qemu >/dev/null 2>&1 && ! id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm; then
  say "note: libvirt-qemu is not in group kvm; add it (adduser libvirt-qemu kvm) so libvirt's check passes"
fi
