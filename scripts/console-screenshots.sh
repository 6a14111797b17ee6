#!/usr/bin/env bash
# The console's screenshots in docs/, from a real stack.
#
# Runs tests/integration/test_console.py (a two-host lab, cms-api under gunicorn, cms-autoscaler
# with a replica group booted from the golden image, Debian's Chromium through Playwright): its
# tests scale the group, kill a replica, make, migrate and destroy a VM, then photograph every
# page at 1280 and 390 px into out/console/. This copies the overview, VM, group and host pages
# into docs/console-<page>-<width>.png, except the 1280 px overview: that is
# docs/console-overview.png, the README's first picture. Needs what `make test` needs (`make image` first); takes about
# three minutes. Extra arguments go to pytest.
#
# Usage: scripts/console-screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMS_VENV:-.venv}
rm -f out/console/*.png
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integration/test_console.py "$@"
cp out/console/overview-1280.png docs/console-overview.png
cp out/console/overview-390.png docs/console-overview-390.png
for page in vm group host; do
  for width in 1280 390; do
    cp "out/console/$page-$width.png" "docs/console-$page-$width.png"
  done
done
echo "[console-screenshots] wrote docs/console-overview.png and docs/console-{overview-390,vm-*,group-*,host-*}.png"
