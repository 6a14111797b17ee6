#!/usr/bin/env python3
"""Remove an interrupted golden image build directory, unmounting what it left mounted first.

Usage: clear_build.py BUILD_DIR

mmdebstrap mounts proc, sys, dev/pts and dev/shm inside the root it is building and unmounts
them when it ends. A build that was killed (a CI timeout, a machine restart) leaves them
mounted, and a plain recursive delete then fails on the read-only /proc inside. So: every
mount at or under BUILD_DIR is detached (deepest first, lazily), and the directory is removed
only when none is left; deleting through a mount could reach the host's own files.

Prints one line per thing done (nothing when BUILD_DIR does not exist), exit 0; exit 1 with
one line when a mount cannot be detached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in a path as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == str(root) or point.startswith(prefix):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    build = Path(os.path.realpath(argv[1]))
    if not build.exists():
        return 0
    for point in mounts_under(build):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
        print(f"unmounted {point}")
    left = mounts_under(build)
    if left:
        print(f"clear_build: {left[0]} is still mounted; unmount it by hand, then build again",
              file=sys.stderr)
        return 1
    shutil.rmtree(build)
    print(f"removed interrupted build {build}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
