#!/usr/bin/env bash
# A multi-host cms lab on this one machine (cms/lab/hosts.py says what it makes, cms/lab/outage.py how
# a host is lost; cms/lab/cli.py is this command line):
#   scripts/lab.sh up N      N hypervisors, each in its own network + mount namespace with its own
#                            libvirtd on 169.254.90.(10+i), reached over qemu+tcp; prints a cms.toml fragment
#   scripts/lab.sh down      removes all of it (also what a crashed run left)
#   scripts/lab.sh status    what of it exists
#   scripts/lab.sh up N --controllers M [--etcd 3]
#                            also M controllers, each in its own network namespace (169.254.90.(1+i)),
#                            and an etcd cluster they alone reach; writes a cms.toml per controller
#   scripts/lab.sh cut-etcd C / heal-etcd C
#                            controller C (2 or c2) loses etcd (still reaching the hosts) / gets it back
#   scripts/lab.sh kill N    host N loses power: its libvirtd and QEMUs killed, its link down
#   scripts/lab.sh cut N     host N is partitioned: its link down, its libvirtd and QEMUs left running
#   scripts/lab.sh fence N   what a fence agent does: host N's libvirtd and QEMUs killed (N or hvN;
#                            the fragment's hosts[].fence_command)
#   scripts/lab.sh revive N  host N's link up, and its libvirtd started again if it was killed
# Options before the command: --name NAME (default cmslab), --subnet S (169.254.S.0/24, default 90).
# Env: CMS_VENV (default .venv). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMS_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "lab: $VENV/bin/python is missing; run scripts/bootstrap.sh first" >&2
  exit 1
fi
exec "$VENV/bin/python" -m cms.lab.cli "$@"
