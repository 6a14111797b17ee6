"""When the load client issues requests: the open loop (on the clock) or the closed loop
(a fixed number outstanding).

Both drive an ``issue(intended_time)`` callback and are told when something changes:
``rate_changed()`` when the mode switches, ``settled()`` when a request ends. Latency is
measured from the intended time, so in the open loop a request that waited in the client
because every connection was busy counts that wait, and a slow server cannot hide behind
a slow client (no coordinated omission).
"""

from __future__ import annotations

import asyncio
from typing import Callable

MAX_BURST = 2000   # arrivals issued at once after a stall, before the loop yields


class OpenLoop:
    """Arrivals spaced 1/rate apart on the loop's clock, whatever the replies do."""

    def __init__(self, rate: Callable[[], float], issue: Callable[[float], None]) -> None:
        self.rate = rate
        self.issue = issue
        self.stopping = False
        self._wake: asyncio.Event | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task:
        self._wake = asyncio.Event()
        return loop.create_task(self._run(loop))

    def rate_changed(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def settled(self) -> None:
        pass  # the clock decides, not the replies

    def stop(self) -> None:
        self.stopping = True
        self.rate_changed()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        wake = self._wake
        assert wake is not None
        next_t = loop.time()
        while not self.stopping:
            rate = self.rate()
            now = loop.time()
            if rate <= 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
                next_t = loop.time()
                continue
            gap = 1.0 / rate
            if wake.is_set():
                # the rate changed: the next arrival follows the new spacing at once
                wake.clear()
                next_t = min(next_t, now + gap)
            n = 0
            while next_t <= now and n < MAX_BURST and not self.stopping:
                self.issue(next_t)
                next_t += gap
                n += 1
            delay = next_t - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(wake.wait(), delay) if delay > 0.05 else await asyncio.sleep(delay)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)


class ClosedLoop:
    """Keeps ``target()`` requests outstanding: a new one each time one ends."""

    def __init__(self, target: Callable[[], int], outstanding: Callable[[], int],
                 issue: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.target = target
        self.outstanding = outstanding
        self.issue = issue
        self.clock = clock
        self.stopping = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fill()

    def rate_changed(self) -> None:
        self.fill()

    def settled(self) -> None:
        self.fill()

    def stop(self) -> None:
        self.stopping = True

    def fill(self) -> None:
        if self.stopping:
            return
        now = self.clock()
        # bounded: at most `target` new requests per call
        for _ in range(max(0, self.target() - self.outstanding())):
            self.issue(now)
