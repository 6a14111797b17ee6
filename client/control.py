"""Switching the load client's mode while it runs: the schedule, signals, a ZeroMQ control
socket and the terminal's keys. Each only calls the engine's public controls
(set_mode, toggle_mode, stop); a switch holds until the next schedule phase begins.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Callable

from client.engine import Engine
from client.schedule import MODES

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGTERM)


async def run_schedule(phases: list[tuple[str, float]], engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    t = loop.time()
    for mode, dur in phases:
        engine.set_mode(mode, "schedule")
        t += dur
        await asyncio.sleep(max(0.0, t - loop.time()))


def install_signals(loop: asyncio.AbstractEventLoop, engine: Engine) -> Callable[[], None]:
    """SIGUSR1 toggles, SIGUSR2 goes low, SIGINT/SIGTERM stop; returns the undo. Outside
    the main thread (a library caller) there are no signals, and nothing is installed."""
    handlers = ((signal.SIGUSR1, lambda: engine.toggle_mode("SIGUSR1")),
                (signal.SIGUSR2, lambda: engine.set_mode("low", "SIGUSR2")),
                (signal.SIGINT, engine.stop), (signal.SIGTERM, engine.stop))
    for sig, fn in handlers:
        try:
            loop.add_signal_handler(sig, fn)
        except (RuntimeError, ValueError, NotImplementedError):
            pass

    def undo() -> None:
        for sig in SIGNALS:
            try:
                loop.remove_signal_handler(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass
    return undo


def answer(cmd: str, engine: Engine) -> dict:
    """The reply to one control command."""
    if cmd in MODES:
        engine.set_mode(cmd, "control")
        return {"ok": True, "mode": engine.mode}
    if cmd == "toggle":
        return {"ok": True, "mode": engine.toggle_mode("control")}
    if cmd == "status":
        t = engine.totals
        return {"ok": True, "mode": engine.mode, "sent": t.sent, "completed": t.completed, "errors": t.errors,
                "outstanding": t.outstanding, "ready": [r.name for r in engine.ready]}
    if cmd == "stop":
        engine.stop()
        return {"ok": True, "stopping": True}
    return {"ok": False, "error": f"unknown command {cmd!r}: low, high, toggle, status, stop"}


async def control_server(endpoint: str, engine: Engine, stop: asyncio.Event) -> None:
    """A ZeroMQ REP socket at `endpoint` until `stop` is set: see answer()."""
    import zmq
    import zmq.asyncio
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.REP)
    sock.linger = 0
    try:
        sock.bind(endpoint)
        while not stop.is_set():
            if not await sock.poll(200, zmq.POLLIN):
                continue
            cmd = (await sock.recv()).decode("utf-8", "replace").strip().lower()
            await sock.send(json.dumps(answer(cmd, engine)).encode())
    finally:
        sock.close(0)
        ctx.term()


def keys_reader(loop: asyncio.AbstractEventLoop, engine: Engine) -> Callable[[], None]:
    """l (low), h (high), t (toggle), q (quit) from a terminal on stdin; returns the undo."""
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def on_key() -> None:
        try:
            data = os.read(fd, 32)
        except OSError:
            return
        for ch in data.decode("utf-8", "replace").lower():
            if ch == "l":
                engine.set_mode("low", "keyboard")
            elif ch == "h":
                engine.set_mode("high", "keyboard")
            elif ch == "t":
                engine.toggle_mode("keyboard")
            elif ch == "q":
                engine.stop()

    loop.add_reader(fd, on_key)

    def restore() -> None:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore
