"""``cms replay``: what one or more policy settings would have done on load that really happened.

    cms replay --run DIR                      a cms-demo output directory (state.db, loadgen.jsonl, demo.toml)
    cms replay --store DB --group G [--load FILE] [--since T] [--until T]
    cms replay --trace FILE [--config cms.toml] [--group G]
      [--settings FILE.toml] [--latency-bound S] [--out DIR] [--json]

The settings file names each setting to compare; a setting is a group's keys as in
cms.toml's ``[groups.NAME]``, laid over the run's own group (``--config``, or the run
directory's demo.toml; else the defaults) and validated by the same loader::

    [settings.recorded]                 # nothing changed: what the run's own settings do

    [settings.faster]
    cooldown_s = 5.0
    threshold = {high = 0.8, window_s = 3.0}

    [model]                             # optional: figures that override the fitted model
    boot_s = 12.0                       # (cms.replay.model: service_s, cpu_idle, cpu_busy,
                                        #  spawn_s, boot_s, park_s, p95_factor, conns_per_replica,
                                        #  unpark_s = {paused = 0.05})

Without a settings file the one setting is the run's own group. A setting with a warm pool
starts with its pool full when the recording had none parked. Writes DIR/replay.json and
DIR/replay.png (default out/replay) and prints a line per setting. Exit 0 done, 1 the
input could not be replayed, 2 usage; every failure is one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from cms import config as cmsconfig
from cms.autoscaler.planner import pool_target
from cms.errors import ConfigError
from cms.replay import fit as fitting
from cms.replay import report
from cms.replay.inputs import (ClientRecord, Recorded, ReplayError, Start, Trace, offered_from_cpu, offered_from_rates,
                               read_load, read_store)
from cms.replay.model import Model
from cms.replay.sim import Sim

MODEL_KEYS = {f.name: f.type for f in dataclasses.fields(Model) if f.name != "fitted"}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cms replay", description="Replay recorded load against policy settings.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="a cms-demo output directory")
    src.add_argument("--store", metavar="DB", help="a cms state database (with --group)")
    src.add_argument("--trace", metavar="FILE", help="a trace: CSV of time,rate, or a cms-loadgen --out file")
    ap.add_argument("--load", metavar="FILE", help="with --store: the offered load (CSV or cms-loadgen --out); "
                    "without it, the load the replicas' CPU says they served")
    ap.add_argument("--group", help="the group to replay (default: the configuration's only or first group)")
    ap.add_argument("--config", help="the run's cms.toml (its group is the base of every setting)")
    ap.add_argument("--since", type=float, help="with --store: window start, epoch seconds")
    ap.add_argument("--until", type=float, help="with --store: window end, epoch seconds")
    ap.add_argument("--settings", metavar="FILE.toml", help="[settings.NAME] tables to compare, and [model]")
    ap.add_argument("--latency-bound", type=float, default=1.0, metavar="S",
                    help="p95 latency counted as too slow (default 1 s)")
    ap.add_argument("--out", default="out/replay", help="output directory (default out/replay)")
    ap.add_argument("--json", action="store_true", help="print the per-setting summaries as one JSON line")
    return ap


def _toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{path}: not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_overrides(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ReplayError(f"{where}: [model] must be a table")
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k not in MODEL_KEYS:
            raise ReplayError(f"{where}: [model] has no key {k!r} (known: {', '.join(sorted(MODEL_KEYS))})")
        if k == "unpark_s":
            if not isinstance(v, dict) or any(m not in ("paused", "saved", "stopped") or isinstance(x, bool)
                                              or not isinstance(x, (int, float)) or x < 0 for m, x in v.items()):
                raise ReplayError(f"{where}: model.unpark_s wants seconds per park mode, e.g. {{paused = 0.05}}")
            out[k] = {m: float(x) for m, x in v.items()}
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "conns_per_replica" and v != int(v)):
            raise ReplayError(f"{where}: model.{k} must be a number >= 0" + (" (whole)" if k == "conns_per_replica" else ""))
        if k == "service_s" and v <= 0:
            raise ReplayError(f"{where}: model.service_s must be above 0")
        out[k] = int(v) if k == "conns_per_replica" else float(v)
    return out


@dataclasses.dataclass
class Inputs:
    cfg: cmsconfig.Config
    group: str
    base: dict[str, Any]                    # the run's group as TOML data
    trace: Trace | None
    client: ClientRecord | None
    rec: Recorded | None
    source: str


def gather(a: argparse.Namespace) -> Inputs:
    config = a.config
    store, load = a.store, a.load
    if a.run:
        d = Path(a.run)
        if not d.is_dir():
            raise ReplayError(f"{d}: no such run directory")
        store = str(d / "state.db")
        load = load or (str(d / "loadgen.jsonl") if (d / "loadgen.jsonl").exists() else None)
        config = config or (str(d / "demo.toml") if (d / "demo.toml").exists() else None)
    try:
        cfg = cmsconfig.load(config) if config else cmsconfig.parse({})
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None
    raw = _toml(Path(config), "configuration") if config else {}
    group = a.group or (next(iter(cfg.groups)) if cfg.groups else "web")
    if config and group not in cfg.groups:
        raise ReplayError(f"{config}: no group {group!r} in it")
    base = (raw.get("groups") or {}).get(group, {})
    trace = client = rec = None
    if a.trace or load:
        got = read_load(a.trace or load)
        client = got if isinstance(got, ClientRecord) else None
        trace = got.trace if isinstance(got, ClientRecord) else got
    if store:
        if trace is not None and trace.start:
            rec = read_store(store, group, trace.start, trace.start + trace.end, origin=trace.start)
        else:
            rec = read_store(store, group, a.since, a.until)
    return Inputs(cfg, group, base, trace, client, rec, a.run or a.trace or store)


def settings(inp: Inputs, path: str | None) -> tuple[dict[str, cmsconfig.GroupConfig], dict[str, Any]]:
    data = _toml(Path(path), "settings") if path else {}
    unknown = set(data) - {"settings", "model"}
    if unknown:
        raise ReplayError(f"{path}: unknown table {sorted(unknown)[0]!r} (want [settings.NAME] and [model])")
    tables = data.get("settings") or {"recorded" if inp.rec else "configured": {}}
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ReplayError(f"{path}: [settings.NAME] must be tables of group keys")
    out = {}
    for name, over in tables.items():
        try:
            cfg = cmsconfig.parse({"groups": {inp.group: _merge(inp.base, over)}}, path or "settings")
        except ConfigError as exc:
            raise ReplayError(str(exc).replace(f"groups.{inp.group}", f"settings.{name}")) from None
        out[name] = cfg.groups[inp.group]
    return out, model_overrides(data.get("model", {}), str(path)) if "model" in data else {}


def start_for(gc: cmsconfig.GroupConfig, rec: Recorded | None) -> Start:
    if rec is not None and (rec.begin.ready or rec.begin.parked):
        if rec.begin.parked or not gc.warm_pool.size:
            return rec.begin
        n = len(rec.begin.ready)
        return dataclasses.replace(rec.begin, parked=tuple((f"warm{i}", gc.warm_pool.state)
                                                           for i in range(pool_target(gc, n))))
    ready = tuple((f"ready{i}", -1e9) for i in range(gc.min))
    return Start(ready, tuple((f"warm{i}", gc.warm_pool.state) for i in range(pool_target(gc, gc.min))))


def replay(inp: Inputs, groups: dict[str, cmsconfig.GroupConfig], overrides: dict[str, Any],
           bound_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    model = fitting.fit(inp.rec, inp.client, overrides)
    trace = inp.trace
    if trace is None:
        assert inp.rec is not None
        trace = offered_from_rates(inp.rec) or offered_from_cpu(inp.rec, model.cpu_idle, model.cpu_busy, model.service_s)
    a = inp.cfg.autoscaler
    runs, took = {}, {}
    for name, gc in groups.items():
        t0 = time.perf_counter()
        runs[name] = Sim(inp.group, gc, model, trace, start_for(gc, inp.rec), tick_s=a.tick_s, drain_s=a.drain_s,
                         history=a.history, hosts=tuple(h.name for h in inp.cfg.hosts), name=name,
                         recorded=inp.rec, client=inp.client).replay()
        took[name] = time.perf_counter() - t0
    doc: dict[str, Any] = {
        "input": {"source": inp.source, "group": inp.group, "load": trace.source, "start": trace.start or None,
                  "seconds": trace.end, "tick_s": a.tick_s},
        "model": {**{k: v for k, v in dataclasses.asdict(model).items() if k != "fitted"}, "fitted_from": model.fitted},
        "latency_bound_s": bound_s,
        "settings": {},
    }
    for name, run in runs.items():
        gc = groups[name]
        entry = {"group": dataclasses.asdict(gc), "replay_seconds": round(took[name], 3),
                 "summary": report.summary(run, a.tick_s, bound_s, gc.threshold.high),
                 "decisions": run.decisions, "series": report.series(run)}
        if inp.rec is not None:
            entry["against_recorded"] = report.compare(run, inp.rec)
        doc["settings"][name] = entry
    if inp.rec is not None:
        doc["recorded"] = report.reality(inp.rec)
    return doc, runs


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if (a.since is not None or a.until is not None) and not a.store:
        ap.error("--since and --until choose a window of --store")
    if a.load and not a.store:
        ap.error("--load goes with --store (a --trace is the load itself; --run finds its own)")
    if not 0 < a.latency_bound <= 3600:
        ap.error("--latency-bound must be above 0 and at most 3600 seconds")
    try:
        inp = gather(a)
        groups, overrides = settings(inp, a.settings)
        doc, runs = replay(inp, groups, overrides, a.latency_bound)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay.json").write_text(json.dumps(doc, indent=1) + "\n")
        report.plot(doc, runs, inp.rec, out / "replay.png")
    except ReplayError as exc:
        print(f"cms replay: {cmsconfig.one_line(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cms replay: cannot write {a.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sums = {n: s["summary"] for n, s in doc["settings"].items()}
    if a.json:
        print(json.dumps(sums))
        return 0
    print(f"replayed {doc['input']['seconds']:.0f} s of {doc['input']['source']} ({doc['input']['load']}); "
          f"wrote {out / 'replay.json'} and {out / 'replay.png'}")
    for n, s in sums.items():
        vs = doc["settings"][n].get("against_recorded")
        print(f"  {n}: {s['replica_seconds']:.0f} replica-s, {s['seconds_over_latency_bound']:.0f} s over "
              f"{a.latency_bound:g} s p95, {s['seconds_cpu_above_high']:.0f} s CPU above {s['high']:g}, "
              f"{s['scale_outs']} out / {s['scale_ins']} in, peak {s['peak_serving']}"
              + (f"; against the recording: ready count equal {vs['ready_count_match_share']:.0%} of ticks, "
                 f"decisions at most {vs['max_ticks_off']} ticks off" if vs else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
