"""Reading a file an operator names (the configuration, pm/image/types files, a disk image),
with one way of finding out why it cannot be read.

Only regular files are opened: a FIFO would block the reader until a writer comes, and a
device such as /dev/zero never ends. Each caller words the reason for its own kind of file
(``Unreadable.words``), so every message stays one line that names the file.
"""

from __future__ import annotations

import os
import stat

MISSING, DIRECTORY, SPECIAL, DENIED, FAILED = "missing", "directory", "special", "denied", "failed"


class Unreadable(Exception):
    """Why a file could not be read: ``kind`` is one of the constants above; ``detail`` the
    system's words for FAILED."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind if not detail else f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    def words(self, said: dict[str, str], failed: str) -> str:
        """The caller's phrase for this kind, or `failed` with the system's detail."""
        return said.get(self.kind) or f"{failed}: {self.detail}"


def read_regular(path: str | os.PathLike[str], limit: int = -1) -> tuple[bytes, os.stat_result]:
    """The first `limit` bytes (all with -1) of a regular file, and its stat; Unreadable otherwise."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise Unreadable(DIRECTORY)
        if not stat.S_ISREG(mode):
            raise Unreadable(SPECIAL)
        with open(path, "rb") as fh:
            return fh.read(limit), os.fstat(fh.fileno())
    except FileNotFoundError:
        raise Unreadable(MISSING) from None
    except PermissionError:
        raise Unreadable(DENIED) from None
    except IsADirectoryError:
        raise Unreadable(DIRECTORY) from None
    except OSError as exc:
        raise Unreadable(FAILED, exc.strerror or str(exc)) from None
