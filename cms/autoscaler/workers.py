"""The daemon's background threads: one ``Workers`` per owner (the executor, the balancer).

A worker runs one slow job (a spawn, a drain, a migration) off the tick's thread. Its failure
is logged and ends only that job; ``done`` runs whatever happened (it clears a replica's
``busy`` flag). Finished threads are forgotten at the next ``start`` or ``prune``; ``join``
waits for the rest together, up to one deadline, at shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("cms.autoscaler")


class Workers:
    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def start(self, name: str, fn: Callable[..., None], *args: Any,
              done: Callable[[], None] | None = None) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a worker's failure is logged, the loop goes on
                log.exception("worker %s failed", name)
            finally:
                if done is not None:
                    done()

        self.prune()
        w = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(w)
        w.start()

    def prune(self) -> None:
        self._threads = [w for w in self._threads if w.is_alive()]

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in list(self._threads):
            w.join(max(0.0, deadline - time.monotonic()))
