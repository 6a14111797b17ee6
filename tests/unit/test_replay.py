"""cms replay: the model, the simulated clock running the real planner and policy, fitting,
a recorded run replayed back, and bad input (one line, exit 1)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from cms import config as cmsconfig
from cms.autoscaler.lifecycle import State
from cms.replay import command
from cms.replay.fit import cost, fit, stages
from cms.replay.inputs import ClientRecord, Recorded, RecordedStart, Start, Trace, read_csv, started
from cms.replay.model import Model, Queue
from cms.replay.sim import Sim
from cms.store import Sample, Store

T0 = 1_800_000_000.0
DEMO = {"min": 1, "max": 3, "cooldown_s": 10.0, "warmup_s": 15.0,
        "threshold": {"high": 0.9, "low": 0.25, "window_s": 6.0, "window_in_s": 15.0}}
M = Model(service_s=0.1, cpu_idle=0.02, cpu_busy=0.98, spawn_s=0.5, boot_s=7.0)   # one replica: 10 req/s


def group(**over) -> cmsconfig.GroupConfig:
    return cmsconfig.parse({"groups": {"demo": {**DEMO, **over}}}).groups["demo"]


def steps(*phases: tuple[float, float]) -> Trace:
    """(seconds, rate) phases one after the other."""
    times, rates, t = [], [], 0.0
    for secs, rate in phases:
        times.append(t)
        rates.append(rate)
        t += secs
    return Trace(tuple(times), tuple(rates), t, "test")


# --- the model --------------------------------------------------------------------------------

@pytest.mark.parametrize("rate, ready, backlog_before, served, rho, cpu, backlog", [
    (3.0, 1.0, 0.0, 3.0, 0.3, 0.308, 0.0),          # below capacity: all served
    (12.5, 1.0, 0.0, 10.0, 1.0, 0.98, 2.5),          # above: capacity served, the rest waits
    (5.0, 2.0, 10.0, 15.0, 0.75, 0.74, 0.0),         # two replicas clear a backlog
    (5.0, 0.5, 0.0, 5.0, 1.0, 0.98, 0.0),            # ready half the tick: half the capacity
    (4.0, 0.0, 0.0, 0.0, None, None, 4.0),           # nothing ready: all of it waits
])
def test_queue_step(rate, ready, backlog_before, served, rho, cpu, backlog):
    q = Queue(M, vcpus=1)
    q.backlog = backlog_before
    got = q.step(1.0, rate, ready, max(1, math.ceil(ready)))
    assert got.served == pytest.approx(served) and got.backlog == pytest.approx(backlog)
    assert (got.utilization is None) == (rho is None) and (rho is None or got.utilization == pytest.approx(rho))
    assert (got.cpu is None) == (cpu is None) and (cpu is None or got.cpu == pytest.approx(cpu))


def test_queue_latency_grows_with_the_backlog_and_the_client_caps_in_flight():
    q = Queue(M, vcpus=1)
    light = q.step(1.0, 3.0, 1.0, 1)
    assert light.p95_s == pytest.approx(2.0 * 0.1 / 0.7)
    loads = [q.step(1.0, 20.0, 1.0, 1) for _ in range(5)]
    assert [round(x.backlog) for x in loads] == [10, 20, 30, 40, 50]
    assert loads[-1].p95_s > loads[0].p95_s > light.p95_s
    capped = Queue(Model(service_s=0.1, conns_per_replica=4), vcpus=1)
    assert [capped.step(1.0, 20.0, 1.0, 1).in_flight for _ in range(3)] == [4, 4, 4]


# --- the simulated clock: the real planner and policy ------------------------------------------

def test_threshold_scales_out_when_the_window_is_full_and_in_after_the_low_window():
    gc = group()
    run = Sim("demo", gc, M, steps((30, 3.0), (100, 12.5), (60, 3.0)), Start((("r1", -100.0),)),
              tick_s=1.0).replay()
    outs = [d for d in run.decisions if d["action"] == "scale_out"]
    ins = [d for d in run.decisions if d["action"] == "scale_in"]
    # the step is at 30 s: the tick at 31 is the first saturated one, and a 6 s window at t
    # holds the ticks t-6..t (its start included), so 31..37 decide at 37
    assert [(d["t"], d["from"], d["desired"]) for d in outs] == [(37.0, 1, 2)]
    assert "cpu mean over 6s 0.98 > high 0.9" in outs[0]["reason"]
    assert run.ready[run.t.index(44.0)] == 1 and run.ready[run.t.index(45.0)] == 2   # 0.5 + 7 s after 37
    # the low load from 130 s: 3 req/s over 2 x 10 is 0.16; the 15 s mean (two ticks at 0.62 still
    # in it) falls below low 0.25 at 143 -> one scale-in
    assert [(d["t"], d["desired"]) for d in ins] == [(143.0, 1)]
    assert run.actions["spawns"] == 1 and run.actions["drains"] == 1
    assert max(run.serving) == 2


def warm_target() -> tuple[cmsconfig.GroupConfig, Model, Start]:
    """The target policy up to 4 in one step, one ready replica and three paused (0.05 s to unpark)."""
    gc = cmsconfig.parse({"groups": {"demo": {"min": 1, "max": 4, "policy": "target", "warmup_s": 0.0,
                                              "target": {"target": 0.25, "max_step": 3},
                                              "warm_pool": {"size": 3, "state": "paused"}}}}).groups["demo"]
    start = Start((("r1", -100.0),), (("w1", "paused"), ("w2", "paused"), ("w3", "paused")))
    return gc, Model(service_s=0.1, unpark_s={"paused": 0.05}), start


def test_a_decision_for_several_unparks_them_together_from_the_warm_pool():
    gc, model, start = warm_target()
    ticks = []
    run = Sim("demo", gc, model, steps((10, 2.0), (20, 30.0)), start,
              on_tick=lambda now, tracks, load: ticks.append((now, sorted(t.state for t in tracks)))).replay()
    out = next(d for d in run.decisions if d["action"] == "scale_out")
    assert (out["from"], out["desired"]) == (1, 4)
    assert run.actions["unparks"] == 3 and run.actions["spawns"] == 0
    after = dict(ticks)[out["t"] + 1.0]
    assert after.count(State.READY) == 4     # all three were ready by the next tick


def test_the_replay_ticks_on_the_recordings_clock_and_sees_its_figures():
    """The daemon's ticks drift from tick_s; which samples a 6 s window holds depends on them.
    Here the recorded tick at 11.29 s is 6.01 s after the one at 5.28: the real window held six
    samples (mean 0.918 > 0.9) and decided; a clock of whole seconds would hold seven (0.897)."""
    times = [i + 0.28 for i in range(11)] + [11.29]
    cpus = [0.5] * 5 + [0.77, 0.8995, 0.957, 0.767, 0.984, 0.945, 0.959]
    rec = Recorded("demo", T0, 11.29, 1.0, ticks=times, ready=[1] * 12, cpu=cpus, busy=cpus, vcpus=[1] * 12,
                   replica_cpu=[(c,) for c in cpus])
    trace = Trace((0.0,), (3.0,), 11.29, "test")
    run = Sim("demo", group(), M, trace, Start((("r1", -100.0),)), recorded=rec).replay()
    assert run.t == times and run.cpu == cpus and run.recorded_ticks == 12
    assert [(d["t"], d["action"]) for d in run.decisions] == [(11.29, "scale_out")]
    assert "0.92 > high 0.9" in run.decisions[0]["reason"]


def test_the_history_holds_only_what_the_policy_reads():
    sim = Sim("demo", group(), M, steps((60, 3.0)), Start((("r1", -100.0),)))
    sim.replay()
    assert len(sim.history.series("r1")) == 17      # window_in_s 15 at 1 s ticks, and two more


def _slow_boot_recording(starts: list) -> Recorded:
    """A run whose scale-out's replica booted slower than the model's median (8.7 s, not 7.0:
    the machine was busy with the first replica's load), then both replicas at 0.95 for the
    first 7 ticks after the warm-up and at 0.6 from 36.3 s: the real policy's 6 s window first
    filled (from 30.6, the end of the real warm-up) at 37.3 and held 0.85, so one scale-out."""
    times = [i + 0.3 for i in range(80)]
    ready = [1 if t < 15.6 else 2 for t in times]
    cpu = [0.95 if t < 36 else 0.6 for t in times]
    return Recorded("demo", T0, times[-1], 1.0, ticks=times, ready=ready, cpu=cpu,
                    busy=[c * n for c, n in zip(cpu, ready)], vcpus=ready,
                    replica_cpu=[(c,) * n for c, n in zip(cpu, ready)],
                    decisions=[{"t": 6.3, "action": "scale_out", "desired": 2, "reason": ""}], starts=starts)


def test_a_replayed_scale_out_boots_as_the_recorded_one_did():
    """The fault of tests/system/test_demo.py's replay (run 2026-12-06 11:29): the replayed
    replica was ready at the model's median boot, ahead of the real one, so its warm-up ended
    and the policy's window filled a tick or more early, on recorded figures the real policy
    never read together (its mean over the threshold), and the replay scaled out a second time
    where the run had not. The spawn the recording itself made takes the recorded times."""
    model = dataclasses.replace(M, spawn_s=0.5, boot_s=7.0)     # ready 7.5 s after the decision
    trace = Trace((0.0,), (6.0,), 79.3, "test")
    start = Start((("r1", -100.0),))
    real = RecordedStart(6.3, "", 0.6, 8.7)                      # ready at 15.6
    run = Sim("demo", group(), model, trace, start, recorded=_slow_boot_recording([real])).replay()
    assert [(d["t"], d["action"]) for d in run.decisions] == [(6.3, "scale_out")]
    assert run.recorded_starts == 1 and run.recorded_ticks == len(run.t)
    assert run.ready[run.t.index(15.3)] == 1 and run.ready[run.t.index(16.3)] == 2
    # the model's boot alone: ready at 13.8, warm-up over at 28.8, the window full at 35.3 on
    # seven ticks at 0.95 -> a second scale-out the run never made (and, on three replicas, the
    # model's figures from then on)
    median = Sim("demo", group(), model, trace, start, recorded=_slow_boot_recording([])).replay()
    assert [(d["t"], d["action"]) for d in median.decisions][:2] == [(6.3, "scale_out"), (35.3, "scale_out")]
    assert median.recorded_starts == 0 and max(median.ready) == 3


def test_a_start_far_from_the_recorded_one_keeps_the_model_times():
    """Another setting that scales out at another time is not the recorded start."""
    model = dataclasses.replace(M, spawn_s=0.5, boot_s=7.0)
    rec = _slow_boot_recording([RecordedStart(20.3, "", 0.6, 8.7)])    # > 3 ticks from 6.3
    run = Sim("demo", group(), model, Trace((0.0,), (6.0,), 79.3, "test"), Start((("r1", -100.0),)),
              recorded=rec).replay()
    assert run.recorded_starts == 0 and run.ready[run.t.index(14.3)] == 2   # 6.3 + 7.5 = 13.8


def test_unparks_the_recording_made_take_its_unpark_times_by_mode():
    gc, model, start = warm_target()
    ticks = [float(i + 1) for i in range(30)]
    # the run unparked three at 11 s (as the replay decides, below) in 2.5 s each; a saved one
    # at the same time is another mode's and stays unused
    starts = [RecordedStart(11.0, "paused", 0.0, 2.5)] * 3 + [RecordedStart(11.0, "saved", 0.0, 9.0)]
    rec = Recorded("demo", T0, 30.0, 1.0, ticks=ticks, ready=[1] * 30, cpu=[None] * 30, busy=[0.0] * 30,
                   vcpus=[1] * 30, replica_cpu=[()] * 30, starts=starts)
    run = Sim("demo", gc, model, steps((10, 2.0), (20, 30.0)), start, recorded=rec).replay()
    assert (run.decisions[0]["t"], run.decisions[0]["desired"]) == (11.0, 4)
    assert [run.ready[run.t.index(t)] for t in (12.0, 13.0, 14.0)] == [1, 1, 4]     # 11 + 2.5, not 11.05
    assert run.recorded_starts == 3


@pytest.mark.parametrize("kind, data, want", [
    ("ready", {"boot_s": 8.72, "decision_to_ready_s": 9.344}, RecordedStart(100.0 - 9.344, "", 0.624, 8.72)),
    ("warm_used", {"mode": "saved", "seconds": 1.2}, RecordedStart(98.8, "saved", 0.0, 1.2)),
    ("ready", {"boot_s": 8.0}, None),                     # adopted: no decision to start from
    ("ready", {"mode": "paused", "unpark_to_ready_s": 0.1}, None),    # an unpark's ready: its warm_used counts
    ("decision", {"action": "scale_out"}, None),
])
def test_the_starts_a_recording_holds(kind, data, want):
    e = E(kind, data)
    e.ts = T0 + 100.0
    got = started(e, T0)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.mode == want.mode
        assert (got.decided, got.spawn_s, got.ready_s) == pytest.approx((want.decided, want.spawn_s, want.ready_s))


# --- fitting ------------------------------------------------------------------------------

class E:
    def __init__(self, kind, data, subject="r"):
        self.kind, self.data, self.subject, self.ts = kind, data, subject, 0.0


@pytest.mark.parametrize("events, want", [
    ([], {}),
    ([E("ready", {"boot_s": 7.0, "decision_to_ready_s": 7.6}), E("ready", {"boot_s": 9.0, "decision_to_ready_s": 9.4}),
      E("ready", {"boot_s": 8.0})], {"boot_s": 8.0, "spawn_s": 0.5}),
    ([E("warm_used", {"mode": "paused", "seconds": 0.04}), E("warm_used", {"mode": "paused", "seconds": 0.06}),
      E("warm_used", {"mode": "saved", "seconds": 1.2}), E("warm_prepared", {"park_s": 0.2})],
     {"unpark_s": {"paused": 0.05, "saved": 1.2}, "park_s": 0.2}),
])
def test_stages_from_the_events(events, want):
    got = stages(events)
    assert got.pop("unpark_s", {}) == pytest.approx(want.pop("unpark_s", {}))
    assert got == pytest.approx(want)


def test_cost_recovers_idle_cpu_and_the_cost_of_a_request():
    rec = Recorded("demo", T0, 100.0, 1.0)
    client_ticks = []
    for i in range(60):
        n, rate = 1 + i % 2, float(1 + i % 7)
        busy = 0.05 * n + 0.08 * rate                  # idle 5 % per vCPU, 0.08 vCPU-s a request
        rec.ticks.append(float(i))
        rec.cpu.append(busy / n)
        rec.busy.append(busy)
        rec.vcpus.append(n)
        client_ticks.append((T0 + i, rate, None))
    client = ClientRecord(Trace((0.0,), (1.0,), 60.0, "t"), tuple(client_ticks))
    assert cost(rec, client) == pytest.approx((0.05, 0.08))
    m = fit(rec, client, {"boot_s": 3.0})
    assert m.service_s == pytest.approx(0.08 / (m.cpu_busy - 0.05)) and m.boot_s == 3.0
    assert m.fitted["boot_s"] == "[model] in the settings"


# --- a recorded run replayed back ---------------------------------------------------------------

def record(out, gc_data: dict, trace: Trace, polled: bool = False, in_flight: float | None = None) -> list:
    """A run made up by the model itself, written as the daemon and the load client write theirs
    (``polled``: the ready replicas' /status figures too, as the daemon stores them now;
    ``in_flight``: theirs instead of the model's)."""
    from cms.demo.run import demo_config_data
    data = demo_config_data(out, golden="/nonexistent", api_port=1, pub_port=2, snap_port=3)
    data["groups"]["demo"].update(gc_data)
    (out / "demo.toml").write_text(cmsconfig.to_toml(data))
    gc = cmsconfig.load(out / "demo.toml").groups["demo"]
    store = Store(out / "state.db")
    rows, ticks, seen = [], [], set()

    def on_tick(now, tracks, load):
        n = sum(t.state == State.READY for t in tracks)
        for t in tracks:
            if t.state in (State.READY, State.STARTING, State.DRAINING):
                ready = t.state == State.READY
                figures = ((load.in_flight if in_flight is None else in_flight, load.served / n, None)
                           if polled and ready else (None, None, None))
                rows.append(Sample(T0 + now, "local", t.name, "demo", load.cpu if ready else None,
                                   1, 0, str(t.state), (), *figures))
            if t.state == State.READY and t.name not in seen:
                seen.add(t.name)
                store.add_event("ready", "up", group="demo", subject=t.name, ts=T0 + t.ready_at,
                                data={"boot_s": 7.0, "decision_to_ready_s": 7.5})
        ticks.append({"type": "tick", "ts": T0 + now, "interval_s": 1.0, "target_rate": trace.rate_at(now - 0.5),
                      "throughput": load.served, "latency_ms": {"p95": None}})

    run = Sim("demo", gc, M, trace, Start((("demo-r1", -100.0),)), on_tick=on_tick).replay()
    store.add_event("ready", "up", group="demo", subject="demo-r1", ts=T0 - 100.0, data={})
    for d in run.decisions:
        store.add_event("decision", d["reason"], group="demo", ts=T0 + d["t"],
                        data={"action": d["action"], "desired": d["desired"]})
    store.add_samples(rows)
    (out / "loadgen.jsonl").write_text("\n".join(json.dumps(x) for x in ticks) + "\n")
    return run.decisions


def test_a_run_replayed_with_its_own_settings_does_what_it_did(tmp_path, capsys):
    real = record(tmp_path, {}, steps((30, 3.0), (100, 12.5), (60, 3.0)))
    assert [d["action"] for d in real] == ["scale_out", "scale_in"]
    (tmp_path / "s.toml").write_text('[settings.recorded]\n[settings.eager]\nthreshold = {window_s = 2.0}\n'
                                     '[model]\nservice_s = 0.1\ncpu_idle = 0.02\n')
    assert command.main(["--run", str(tmp_path), "--settings", str(tmp_path / "s.toml"),
                         "--out", str(tmp_path / "r")]) == 0
    doc = json.loads((tmp_path / "r" / "replay.json").read_text())
    same = doc["settings"]["recorded"]["against_recorded"]
    assert same["max_ticks_off"] == 0 and same["ready_count_match_share"] == 1.0
    assert [d["t"] for d in doc["settings"]["recorded"]["decisions"]] == [d["t"] for d in real]
    eager = doc["settings"]["eager"]
    assert eager["decisions"][0]["t"] == real[0]["t"] - 4.0        # a 2 s window decides 4 ticks sooner
    assert eager["summary"]["seconds_over_latency_bound"] < doc["settings"]["recorded"]["summary"]["seconds_over_latency_bound"]
    assert doc["model"]["boot_s"] == 7.0 and "events" in doc["model"]["fitted_from"]["boot_s"]
    assert (tmp_path / "r" / "replay.png").stat().st_size > 10_000
    assert "recorded:" in capsys.readouterr().out



def test_the_readme_figure_settings_replay_a_demo_run(tmp_path):
    """docs/replay.toml (what docs/replay.png compares): the run's own threshold and concurrency."""
    record(tmp_path, {}, steps((30, 3.0), (100, 12.5), (60, 3.0)))
    docs = Path(__file__).resolve().parents[2] / "docs" / "replay.toml"
    assert command.main(["--run", str(tmp_path), "--settings", str(docs), "--out", str(tmp_path / "r")]) == 0
    doc = json.loads((tmp_path / "r" / "replay.json").read_text())
    assert set(doc["settings"]) == {"threshold", "concurrency"}
    assert doc["settings"]["threshold"]["against_recorded"]["max_ticks_off"] == 0
    first = doc["settings"]["concurrency"]["decisions"][0]
    assert first["action"] == "scale_out" and "in-flight" in first["reason"]

# --- bad input: one line, exit 1 (2 for usage) ---------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("time,rate\n0,1\n1,x\n", ":3: rate 'x' is not a number"),
    ("0,1\n0,2\n", ":2: time 0 does not come after 0"),
    ("0,1\n1,-3\n", ":2: rate -3 is negative"),
    ("0,1\n5\n", ":2: want time,rate"),
    ("time,rate\n", "no load in it"),
    ("0,1\n", "spans no time"),
    ("0,nan\n1,1\n", "finite number"),
])
def test_bad_trace(tmp_path, capsys, text, words):
    (tmp_path / "t.csv").write_text(text)
    assert command.main(["--trace", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("settings, words", [
    ("[settings.a]\nmax = 0\n", "settings.a.max"),
    ("[settings.a]\npolicy = 'magic'\n", "settings.a.policy"),
    ("[other]\n", "unknown table 'other'"),
    ("[model]\nspeed = 2\n", "[model] has no key 'speed'"),
    ("[model]\nservice_s = 0\n", "model.service_s must be above 0"),
    ("[model]\nunpark_s = {frozen = 1}\n", "model.unpark_s"),
    ("not toml [\n", "not valid TOML"),
])
def test_bad_settings(tmp_path, capsys, settings, words):
    (tmp_path / "t.csv").write_text("0,1\n60,1\n")
    (tmp_path / "s.toml").write_text(settings)
    assert command.main(["--trace", str(tmp_path / "t.csv"), "--settings", str(tmp_path / "s.toml"),
                         "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_missing_inputs(tmp_path, capsys):
    assert command.main(["--run", str(tmp_path / "nope")]) == 1
    assert command.main(["--store", str(tmp_path / "none.db"), "--group", "web"]) == 1
    Store(tmp_path / "empty.db")
    assert command.main(["--store", str(tmp_path / "empty.db"), "--group", "web"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"cms replay: {tmp_path / 'nope'}: no such run directory",
                   f"cms replay: {tmp_path / 'none.db'}: no state database there",
                   f"cms replay: {tmp_path / 'empty.db'}: no samples of group 'web'"]
    with pytest.raises(SystemExit) as e:
        command.main(["--trace", "x.csv", "--since", "1"])
    assert e.value.code == 2


def test_a_trace_replays_from_the_configured_minimum(tmp_path):
    (tmp_path / "t.csv").write_text("# time, rate\n0,2\n100,25\n200,2\n400,2\n")
    tr = read_csv(tmp_path / "t.csv")
    assert (tr.times, tr.rates, tr.end) == ((0.0, 100.0, 200.0, 400.0), (2.0, 25.0, 2.0, 2.0), 400.0)
    assert command.main(["--trace", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"), "--json"]) == 0
    doc = json.loads((tmp_path / "o" / "replay.json").read_text())
    s = doc["settings"]["configured"]["summary"]
    assert s["scale_outs"] >= 1 and s["peak_serving"] <= 3 and doc["input"]["group"] == "web"


def test_cms_replay_is_a_subcommand_that_needs_no_api(tmp_path, capsys):
    from cms import cli
    (tmp_path / "t.csv").write_text("0,2\n120,2\n")
    assert cli.main(["--json", "replay", "--trace", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["configured"]["scale_outs"] == 0
    assert cli.main(["replay", "--trace", str(tmp_path / "missing.csv")]) == 1
    assert "cms replay: " in capsys.readouterr().err


def test_a_store_with_status_figures_replays_on_the_request_rate_its_replicas_answered(tmp_path):
    real = record(tmp_path, {}, steps((30, 3.0), (100, 12.5), (60, 3.0)), polled=True)
    assert command.main(["--store", str(tmp_path / "state.db"), "--group", "demo", "--config",
                         str(tmp_path / "demo.toml"), "--out", str(tmp_path / "r"), "--json"]) == 0
    doc = json.loads((tmp_path / "r" / "replay.json").read_text())
    assert doc["input"]["load"] == "request rates of group demo (/status)"
    rates = {round(r, 6) for r in doc["settings"]["recorded"]["series"]["offered_rps"]}
    assert 3.0 in rates                                  # the low phase, answered in full
    vs = doc["settings"]["recorded"]["against_recorded"]
    assert [d["action"] for d in doc["settings"]["recorded"]["decisions"]] == [d["action"] for d in real]
    assert vs["max_ticks_off"] <= 2 and vs["ready_count_match_share"] >= 0.9


@pytest.mark.parametrize("polled, scales_out", [(True, True), (False, False)])
def test_the_concurrency_policy_replayed_sees_the_recorded_in_flight(tmp_path, polled, scales_out):
    """Replicas that carried 5 requests each (slow requests the model's 0.3 cannot tell): the
    replay's concurrency policy sees the store's figures where it has them, else the model's."""
    record(tmp_path, {}, steps((120, 3.0)), polled=polled, in_flight=5.0)
    (tmp_path / "s.toml").write_text('[settings.kpa]\npolicy = "concurrency"\n'
                                     'concurrency = {stable_window_s = 10.0, panic_window_s = 2.0}\n')
    assert command.main(["--run", str(tmp_path), "--settings", str(tmp_path / "s.toml"),
                         "--out", str(tmp_path / "r")]) == 0
    doc = json.loads((tmp_path / "r" / "replay.json").read_text())
    outs = [d for d in doc["settings"]["kpa"]["decisions"] if d["action"] == "scale_out"]
    assert bool(outs) is scales_out, outs
    if outs:
        assert "in-flight 5.0" in outs[0]["reason"], outs[0]["reason"]


def test_a_store_alone_replays_on_the_load_its_cpu_says_was_served(tmp_path):
    real = record(tmp_path, {}, steps((30, 3.0), (100, 12.5), (60, 3.0)))
    assert command.main(["--store", str(tmp_path / "state.db"), "--group", "demo", "--config",
                         str(tmp_path / "demo.toml"), "--out", str(tmp_path / "r"), "--json"]) == 0
    doc = json.loads((tmp_path / "r" / "replay.json").read_text())
    assert doc["input"]["load"] == "CPU of group demo" and doc["input"]["start"] == T0 + 1.0
    vs = doc["settings"]["recorded"]["against_recorded"]
    assert [d["action"] for d in doc["settings"]["recorded"]["decisions"]] == [d["action"] for d in real]
    assert vs["max_ticks_off"] <= 1 and vs["ready_count_match_share"] >= 0.95
