#!/usr/bin/env bash
# Build the cms golden image (qcow2 + kernel + initrd) with the golden_image Ansible role.
# Cached by a hash of its inputs under /var/cache/cms/images/<hash>; published as symlinks
# in /var/lib/cms/images. Safe to run again: with unchanged inputs it changes nothing and
# takes a few seconds.
# Usage: scripts/build-image.sh [extra ansible-playbook arguments, e.g. -e golden_image_variant=x]
# Env:   CMS_VENV (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMS_VENV:-.venv}
say() { printf '[build-image] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "build-image: run me as root (mmdebstrap and the image directories need it)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/ansible-playbook" ]; then
  echo "build-image: $VENV/bin/ansible-playbook is missing; run scripts/bootstrap.sh first" >&2
  exit 1
fi
for tool in mmdebstrap mkfs.ext4 qemu-img cpio busybox; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is missing; run scripts/bootstrap.sh" >&2; exit 1; }
done

# One build at a time on this machine (make test and make demo may both call this).
mkdir -p /var/cache/cms
exec 9>/var/cache/cms/.build-image.lock
if ! flock -n 9; then
  say "another image build is running; waiting for it (at most 30 min)"
  flock -w 1800 9 || { echo "build-image: gave up waiting for the other build" >&2; exit 1; }
fi

say "running $VENV/bin/ansible-playbook -i localhost, -c local playbooks/golden-image.yml $*"
say "a cold build takes a minute or two (mmdebstrap); a cached one a few seconds"
start=$(date +%s)
ANSIBLE_NOCOLOR=1 "$VENV/bin/ansible-playbook" -i localhost, -c local playbooks/golden-image.yml "$@"
say "done in $(( $(date +%s) - start )) s"
if [ -r /var/lib/cms/images/manifest.json ]; then
  say "published: $(ls -l /var/lib/cms/images/golden.qcow2 | awk '{print $NF}')"
fi
