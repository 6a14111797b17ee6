#!/usr/bin/env bash
# The console's screenshots in docs/, from what a `make demo` machine shows.
#
# Runs the real cms-demo (a longer last low phase) and, once its group has scaled out and back
# in (1 -> 2 -> 1), makes a VM of the demo's type 1 through the demo's API as an operator would
# in its console, then photographs the overview, VM, group and host pages at 1280 and 390 px
# with Debian's Chromium (Playwright) into docs/console-<page>-<width>.png, except the 1280 px
# overview: that is docs/console-overview.png, the README's first picture. The VM is
# destroyed and the demo cleans up after itself. Needs what `make demo` and the browser tests
# need (`make image` first); takes about seven minutes. scripts/console_shots.py does the work.
#
# Usage: scripts/console-screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMS_VENV:-.venv}
PYTHONPATH=$PWD exec "$VENV/bin/python" scripts/console_shots.py "$@"
