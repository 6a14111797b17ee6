#!/usr/bin/env bash
# Prepare this machine for cms: apt packages, a virtualenv, libvirtd and virtlogd.
# Safe to run again: each step checks before it acts, and says what it does.
# Usage: scripts/bootstrap.sh            (as root, Debian 12 / Ubuntu 22.04+)
# Env:   CMS_VENV (default .venv), CMS_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMS_VENV:-.venv}
say() { printf '[bootstrap] %s\n' "$*"; }

APT_PACKAGES=(
  libvirt-daemon-system libvirt-dev qemu-system-x86 qemu-utils pkg-config
  gcc python3-dev python3-venv
  mmdebstrap e2fsprogs busybox-static cpio zstd
  openssh-client openssh-server iproute2 wrk curl systemd
  chromium prometheus etcd-server postgresql
)

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: run me as root (apt-get and libvirtd need it)" >&2
  exit 1
fi

if [ "${CMS_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "apt packages present"
  fi
fi

# The virtualenv, with cms installed editable. Reinstalled only when pyproject.toml changes.
PY=${CMS_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.cms-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing cms and its dependencies into $VENV (libvirt-python compiles; ~1 min the first time)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev,coordination]'
  echo "$want" > "$stamp"
else
  say "virtualenv up to date"
fi

# The console's browser files: uPlot at the version and integrity pinned in
# cms/api/web/package-lock.json, copied into cms/api/web/vendor/ (scripts/web-assets.sh).
if ! command -v npm >/dev/null && [ "${CMS_SKIP_APT:-0}" != 1 ]; then
  say "installing npm (the console's uPlot comes from the npm registry)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
scripts/web-assets.sh

# /dev/kvm as udev would leave it, before libvirtd probes QEMU (see scripts/kvm-device.sh).
scripts/kvm-device.sh

# libvirtd and virtlogd: started by hand when no systemd runs them (CI, containers).
start_daemon() {
  local name=$1 sock=$2
  if [ -S "$sock" ] && pgrep -x "$name" >/dev/null; then
    say "$name running"
    return
  fi
  if [ -d /run/systemd/system ]; then
    say "starting $name with systemctl"
    systemctl start "$name"
  else
    say "starting $name (no systemd here)"
    # without the caller's open files: a daemon that inherits a descriptor (a `flock` lock
    # around `make image`, a pipe) holds it for as long as it runs
    (
      for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
      done
      exec "/usr/sbin/$name" -d
    )
  fi
  for _ in $(seq 50); do [ -S "$sock" ] && return; sleep 0.1; done
  echo "bootstrap: $name did not create $sock" >&2
  exit 1
}
start_daemon virtlogd /run/libvirt/virtlogd-sock
start_daemon libvirtd /run/libvirt/libvirt-sock
say "ready: $("$VENV/bin/python" -c 'import libvirt; c=libvirt.open("qemu:///system"); print("libvirt", c.getLibVersion(), "on", c.getHostname())')"

# `cms doctor` (cms/doctor/): what would make the demo or the tests fail or crawl, each with
# its fix. A failure stops bootstrap: a libvirt that does not answer, or a define that takes
# a minute (the /dev/kvm case), makes every later step fail or time out, so the run ends at
# the line that names the fix instead. Left out: the golden image (scripts/build-image.sh
# makes it after bootstrap) and the API (started by whatever needs it).
# CMS_SKIP_DOCTOR=1 skips this (the problem is then reported again where it bites).
if [ "${CMS_SKIP_DOCTOR:-0}" != 1 ]; then
  say "checking this machine: cms doctor --skip image,api,controller"
  if ! "$VENV/bin/cms" doctor --skip image,api,controller; then
    {
      echo "[bootstrap] ========================================================================"
      echo "[bootstrap] cms doctor found a problem: see the FAIL lines above, each names its fix."
      echo "[bootstrap] Fix it, then run scripts/bootstrap.sh again (CMS_SKIP_DOCTOR=1 skips the check)."
      echo "[bootstrap] ========================================================================"
    } >&2
    exit 1
  fi
fi
