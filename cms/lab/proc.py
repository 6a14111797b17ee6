"""What the lab's modules share for running things: a command with a deadline, ending processes,
and the one error they raise (cms.lab.hosts, cms.lab.controllers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from cms.errors import CmsError


class LabError(CmsError):
    """The lab cannot be made or removed; the text says why, in one line."""


def _run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is missing (iproute2 and util-linux are needed)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout:g}s") from None
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {(p.stderr or p.stdout).strip()}")
    return p


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM these processes, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
            for p in pids:  # reap our own children, or they stay zombies that look alive
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(p, os.WNOHANG)
            time.sleep(0.05)
        pids = [p for p in pids if _pid_alive(p)]
        if not pids:
            return
