#!/usr/bin/env bash
# The console's browser libraries, from npm, into the Python package.
#
# cms/api/web/package.json names them and package-lock.json pins each one's exact version and
# integrity hash; `npm ci` installs exactly that into cms/api/web/node_modules/, and the files
# the page loads are copied into cms/api/web/vendor/, which pyproject.toml ships as package
# data (so a wheel, and the Ansible controller role that installs one, carries them). The page
# loads nothing from a CDN: it works with no network.
#
# Usage: scripts/web-assets.sh           vendor the files (nothing to do when they match the lock)
#        scripts/web-assets.sh --check   exit 0 when vendor/ matches the lock, 3 when it does not
# Needs npm only when vendor/ is missing or stale. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../cms/api/web"
say() { printf '[web-assets] %s\n' "$*"; }
FILES=(node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE)

want=$(sha256sum package-lock.json | cut -c1-16)
current() {
  [ -f vendor/.lock ] && [ "$(cat vendor/.lock)" = "$want" ] || return 1
  for f in "${FILES[@]}"; do [ -s "vendor/$(basename "$f")" ] || return 1; done
}
if [ "${1:-}" = --check ]; then
  current && { say "vendor/ matches package-lock.json"; exit 0; }
  say "vendor/ is missing or does not match package-lock.json: run scripts/web-assets.sh"
  exit 3
fi
if current; then
  say "vendor/ up to date"
  exit 0
fi
command -v npm >/dev/null || { echo "web-assets: npm is not installed (Debian: apt-get install npm)" >&2; exit 1; }
say "npm ci (versions and integrity from package-lock.json)"
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
rm -rf vendor.tmp
mkdir vendor.tmp
cp "${FILES[@]}" vendor.tmp/
echo "$want" > vendor.tmp/.lock
rm -rf vendor
mv vendor.tmp vendor
say "vendored: $(cd vendor && ls | tr '\n' ' ')"
