#!/usr/bin/env python3
"""Remove old golden image builds of one variant from the cache, keeping the newest few.

Usage: prune_cache.py CACHE_DIR VARIANT KEEP [PROTECTED_DIR...]
A build directory counts as this variant's when its manifest.json says so. The newest KEEP
of them (by build time) stay, as do any PROTECTED_DIR (the one just built, whatever the
stable paths point at). Prints one line per directory removed; exit 0 either way.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    cache, variant, keep = Path(argv[1]), argv[2], int(argv[3])
    protected = {Path(p).resolve() for p in argv[4:]}
    builds = []
    for d in cache.iterdir():
        m = d / "manifest.json"
        if not d.is_dir() or d.name.endswith(".build") or not m.is_file():
            continue
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if data.get("variant") == variant:
            builds.append((m.stat().st_mtime, d))
    builds.sort(reverse=True)
    for _, d in builds[keep:]:
        if d.resolve() in protected:
            continue
        shutil.rmtree(d, ignore_errors=True)
        print(f"removed {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
