#!/usr/bin/env bash
# Give /dev/kvm the group and mode udev's rules give it on a normal boot: group kvm, read
# and write for owner and group (0660, or wider if it already is).
#
# Why: on a machine without udev (containers, CI, some cloud VMs) the node stays
# root:root 0600. libvirtd then finds KVM usable when it probes QEMU as root, but not when
# it checks its capabilities cache as the qemu user (group kvm), so it throws the cache
# away and re-probes QEMU on every lookup: each define takes about a minute. This happens
# whatever domain type cms uses, TCG included.
#
# Usage: scripts/kvm-device.sh [DEVICE]   (default /dev/kvm; tests pass a mknod'ed node)
# Prints what it changed, or that nothing needed changing. Safe to run again.
set -euo pipefail
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
if ! getent group kvm >/dev/null; then
  groupadd --system kvm
  say "created the system group kvm"
fi
before=$(stat -c '%U:%G %a' "$dev")
group=$(stat -c '%G' "$dev")
mode=$((8#$(stat -c '%a' "$dev")))
if [ "$group" = kvm ] && [ $((mode & 8#0660)) -eq $((8#0660)) ]; then
  say "$dev is $before: already as udev would set it"
  exit 0
fi
chgrp kvm "$dev"
chmod ug+rw "$dev"
say "changed $dev from $before to $(stat -c '%U:%G %a' "$dev") (as udev's rules would)"
