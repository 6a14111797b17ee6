"""Locks that cms's processes on one machine share: a file under $CMS_RUN_DIR (default
/run/cms), held with flock, and a lock of this process's threads beside it.

The scheduler's spawn lock (``spawn``) and the image import's (``images``) are such locks:
gunicorn's workers and the autoscaler are separate processes, and flock is released by the
kernel when a holder dies, so a crash never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

_threads: dict[str, threading.Lock] = {}
_guard = threading.Lock()


@contextlib.contextmanager
def held(name: str) -> Iterator[None]:
    """Hold the lock `name` (the file ``$CMS_RUN_DIR/<name>.lock``) across processes and threads."""
    with _guard:
        thread_lock = _threads.setdefault(name, threading.Lock())
    lock_dir = Path(os.environ.get("CMS_RUN_DIR", "/run/cms"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    with thread_lock, open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
