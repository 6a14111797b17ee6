"""cms.demo.report on a recorded run made up here: one step of load, one scale-out, one scale-in.

What the demo's summary says (the decisions, how many scale-outs, the peak) and what its plot
draws (the thresholds the run used, not fixed numbers) are read from the run's own files.
"""

from __future__ import annotations

import json

from cms.demo.report import analyse, build_report
from cms.config import to_toml
from cms.demo.common import GROUP
from cms.demo.run import demo_config_data
from cms.store import Sample, Store

T0 = 1_800_000_000.0


def _tick(t: float, mode: str, rate: float, ready: int, p50: float) -> dict:
    return {"type": "tick", "ts": t, "mode": mode, "target_rate": rate, "sent": rate, "completed": rate,
            "errors": 0, "throughput": rate, "outstanding": 0, "ready": ready,
            "latency_ms": {"p50": p50, "p95": p50 * 1.2}}


def _recorded_run(out):
    data = demo_config_data(out, golden="/nonexistent/golden.qcow2", api_port=1, pub_port=2, snap_port=3)
    (out / "demo.toml").write_text(to_toml(data))
    store = Store(out / "state.db")
    ev = [(35, "decision", "", "scale_out to 2", {"action": "scale_out"}),
          (35.5, "added", "r2", "spawned", {"clone_s": 0.02, "define_s": 0.01, "start_s": 0.4}),
          (43, "ready", "r2", "answered /health", {"boot_s": 7.0}),
          (85, "decision", "", "scale_in to 1", {"action": "scale_in"}),
          (86, "draining", "r2", "scale in", {}), (92, "removed", "r2", "gone", {})]
    for dt, kind, subject, msg, d in ev:
        store.add_event(kind, msg, group=GROUP, subject=subject, data=d, ts=T0 + dt)
    store.add_samples(Sample(T0 + s, "local", dom, GROUP, cpu, 1, 0, "running")
                      for s in range(100) for dom, cpu in (("r1", 1.0 if 30 <= s < 45 else 0.6),
                                                           ("r2", 0.6 if 43 <= s < 86 else None)))
    lines = [{"type": "event", "event": "mode", "mode": m, "ts": T0 + t} for t, m in ((0, "low"), (30, "high"), (70, "low"))]
    for s in range(100):
        mode = "high" if 30 <= s < 70 else "low"
        lines.append(_tick(T0 + s, mode, 10.0 if mode == "high" else 2.0, 2 if 43 <= s < 86 else 1,
                           900.0 if 30 <= s < 45 else 120.0))
    (out / "loadgen.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (out / "loadgen-summary.json").write_text(json.dumps({
        "sent": 500, "completed": 500, "errors": 0, "outstanding": 0, "accounted": True, "retries": 0,
        "replicas": {"r2": {"announced_ready_at": T0 + 43.01, "ready_to_first_send_s": 0.05,
                            "first_sent_at": T0 + 43.06, "completed": 200}}}))


def test_the_summary_counts_the_decisions_and_the_plot_draws_the_runs_own_thresholds(tmp_path):
    _recorded_run(tmp_path)
    a = analyse(tmp_path, GROUP)
    assert a["thresholds"] == (0.9, 0.25)       # the demo's threshold policy, read from demo.toml
    s = build_report(tmp_path, GROUP, max_replicas=3)
    h = s["headline"]
    assert (h["scaled_out"], h["scaled_in"], h["scale_outs"], h["peak_replicas"]) == (True, True, 1, 2)
    assert [d["action"] for d in s["decisions"]] == ["scale_out", "scale_in"]
    assert all(e["kind"] != "decision" for e in s["events"])
    r = s["reaction"]
    assert r["load_step_to_decision_s"] == 5.0 and r["decision_to_announced_ready_s"] == 8.0
    # side by side with another policy's run: the decision's replicas ready, and serving
    assert (h["policy"], h["decision_to_ready_s"], h["step_to_serving_s"]) == ("threshold", 8.0, 13.06)
    assert r["load_step_to_first_send_s"] == 13.06
    assert s["before_scale_out"]["p50_ms"] == 900.0 and s["after_scale_out"]["throughput"] == 10.0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["headline"] == h


def test_the_demo_runs_either_policy_and_make_demo_stays_on_threshold(tmp_path):
    from cms import config
    for policy, want in ((None, "threshold"), ("concurrency", "concurrency")):
        kw = {"policy": policy} if policy else {}
        data = demo_config_data(tmp_path, golden="/nonexistent/golden.qcow2", api_port=1, pub_port=2, snap_port=3, **kw)
        (tmp_path / "demo.toml").write_text(to_toml(data))
        gc = config.load(tmp_path / "demo.toml").groups[GROUP]
        assert gc.policy == want and gc.warm_pool.size == 0


def test_the_demos_api_offers_types_and_the_golden_image_and_a_token_opens_its_actions(tmp_path):
    """A demo machine's console can make a VM: cms-api finds the demo's types_file and
    image_file beside demo.toml (where it looks), and demo.toml carries the run's token."""
    from cms import config, inventory
    from cms.demo.api import DEMO_TYPES, write_api_inventory
    data = demo_config_data(tmp_path, golden="/cache/golden.qcow2", api_port=1, pub_port=2, snap_port=3, token="t0k")
    (tmp_path / "demo.toml").write_text(to_toml(data))
    write_api_inventory(tmp_path, "/cache/golden.qcow2")
    cfg = config.load(tmp_path / "demo.toml")
    image_file, types_file = inventory.default_paths(cfg)
    assert [t.as_json() for t in inventory.parse_types_file(types_file)] == DEMO_TYPES["types"]
    assert [i.path for i in inventory.parse_image_file(image_file)] == ["/cache/golden.qcow2"]
    assert cfg.api.token == "t0k"


def test_the_demo_destroys_the_vms_made_through_its_api_before_stopping_it(tmp_path, monkeypatch):
    import http.server
    import threading
    from types import SimpleNamespace

    from cms import config
    from cms.demo.run import Demo
    seen: list[tuple[str, str, str]] = []

    class Api(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            seen.append(("GET", self.path, self.headers.get("Authorization", "")))
            self._answer({"vms": [{"vmid": 0, "name": "made-0"}, {"vmid": 1, "name": "made-1"}]})

        def do_DELETE(self):
            seen.append(("DELETE", self.path, self.headers.get("Authorization", "")))
            self._answer({"status": "ok"})

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        data = demo_config_data(tmp_path, golden="/g", api_port=srv.server_address[1], pub_port=2, snap_port=3,
                                token="t0k")
        (tmp_path / "demo.toml").write_text(to_toml(data))
        d = Demo(SimpleNamespace(out=str(tmp_path)))
        d.cfg = config.load(tmp_path / "demo.toml")
        d.procs["api"] = SimpleNamespace(poll=lambda: None)      # its API runs
        d.destroy_api_vms()
    finally:
        srv.shutdown()
    assert seen == [("GET", "/v1/vms", "Bearer t0k"), ("DELETE", "/v1/vms/0", "Bearer t0k"),
                    ("DELETE", "/v1/vms/1", "Bearer t0k")]
