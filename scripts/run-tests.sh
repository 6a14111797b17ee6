#!/usr/bin/env bash
# The whole test suite: unit tests, then the real stack (libvirtd + QEMU, gunicorn, ZeroMQ,
# SQLite, Ansible). `make test` installs what it needs first (scripts/bootstrap.sh and
# scripts/build-image.sh), so this expects the virtualenv and the golden image.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMS_VENV:-.venv}
echo "[test] running pytest (every test bounded by pytest-timeout)"
set +e
"$VENV/bin/python" -m pytest -ra -p no:cacheprovider --timeout=900 --durations=15 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "[test] pytest collected no tests" >&2
  exit 1
fi
exit $rc
