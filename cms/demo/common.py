"""What the demo's two scenarios share: their voice, their config file, their processes,
waiting for ready replicas, and how a run ends (Ctrl-C and SIGTERM stop it cleanly).

``cms-demo`` (cms.demo.run) parses the command line and runs the autoscaling scenario, or
hands ``--scenario balance`` to cms.demo.host_balancing; neither imports the other's run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from cms import config as cmsconfig
from cms.errors import CmsError

GROUP = "demo"


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def golden_of(args: Any) -> str:
    """The golden image: --golden, else image.golden of --config, else the default."""
    return args.golden or args.base.get("image", {}).get("golden") or cmsconfig.ImageConfig().golden


def start(log: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start one of the demo's processes in its own session, its output in `log`."""
    p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **env},
                         start_new_session=True)
    say(f"started {log.stem} (pid {p.pid}), log in {log}")
    return p


def wait_ready(cfg: cmsconfig.Config, n: int, timeout: float, alive: Callable[[], None] = lambda: None) -> list[Any]:
    """The group's ready replicas (from the autoscaler's snapshot) once there are `n`;
    CmsError after `timeout` s. `alive()` raises when what should make them has died."""
    from client.replicas import fetch_snapshot
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        try:
            snap = fetch_snapshot(cfg.zmq.snapshot, GROUP, timeout=1.0, curve_server_key=cfg.zmq.curve_public_key)
            ready = [r for r in (snap.groups.get(GROUP, ()) if snap else ()) if r.state == "ready"]
            if len(ready) >= n:
                return ready
        except Exception:  # noqa: BLE001 - the daemon is still starting
            pass
        time.sleep(1.0)
    raise CmsError(f"{n} replica(s) were not ready within {timeout:.0f} s; see the autoscaler's log")


def run_to_end(run: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], Any],
               finish: Callable[[], None] = lambda: None) -> int:
    """Run a scenario and print show(its summary) as JSON: 0; a CmsError is one line and 1;
    Ctrl-C or SIGTERM stop it, 130. `finish` runs in every case (it cleans up)."""
    def on_term(_sig: int, _frm: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            summary = run()
        finally:
            finish()
    except KeyboardInterrupt:
        say("interrupted: everything it started is stopped and removed")
        return 130
    except CmsError as exc:
        say(f"error: {exc}")
        return 1
    print(json.dumps(show(summary)))
    return 0
