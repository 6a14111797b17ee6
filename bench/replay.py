"""`cms replay` speed: a day of one-second records, replayed per setting (issue 24: <= 10 s).

A 24 h trace made here (a daily curve, a burst every 70 minutes, noise; seeded), replayed
with the model's defaults for each policy cms.policy has, with a warm pool and without.
It times ``cms.replay.sim.Sim.replay`` alone (the real planner and policy every tick), and
the whole command (reading the trace, the JSON document and the plot) once. Prints ONE JSON
line.

    .venv/bin/python bench/replay.py [--hours 24]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cms import config, policy  # noqa: E402
from cms.replay import command  # noqa: E402
from cms.replay.inputs import read_csv  # noqa: E402
from cms.replay.model import Model  # noqa: E402
from cms.replay.sim import Sim  # noqa: E402


def trace(path: Path, hours: float) -> None:
    rnd = random.Random(24)
    with path.open("w") as fh:
        fh.write("time,rate\n")
        for t in range(int(hours * 3600) + 1):
            base = 6 + 5 * math.sin(2 * math.pi * t / 86400)
            burst = 14 if t % 4200 < 120 else 0
            fh.write(f"{t},{max(0.0, base + burst + rnd.gauss(0, 0.5)):.2f}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=24.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cms-bench-replay-"))
    path = tmp / "day.csv"
    trace(path, args.hours)
    tr = read_csv(path)
    model = Model(service_s=0.1)
    result: dict[str, object] = {"bench": "replay", "hours": args.hours, "ticks": int(tr.end)}
    for name in policy.POLICIES:
        for pool in (0, 3):
            gc = config.parse({"groups": {"web": {"policy": name, "max": 6,
                                                  "warm_pool": {"size": pool}}}}).groups["web"]
            t0 = time.perf_counter()
            run = Sim("web", gc, model, tr, command.start_for(gc, None)).replay()
            took = time.perf_counter() - t0
            result[f"{name}{'_warm' if pool else ''}_s"] = round(took, 2)
            result[f"{name}{'_warm' if pool else ''}_us_per_tick"] = round(took / max(1, len(run.t)) * 1e6, 1)
    (tmp / "s.toml").write_text("[settings.threshold]\nmax = 6\n[settings.target]\npolicy = \"target\"\nmax = 6\n"
                                "[model]\nservice_s = 0.1\n")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = command.main(["--trace", str(path), "--settings", str(tmp / "s.toml"), "--out", str(tmp / "out"), "--json"])
    result["command_two_settings_s"] = round(time.perf_counter() - t0, 2)
    result["command_ok"] = rc == 0
    result["target_s_per_setting"] = 10.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
