"""/vm/query throughput and p99 latency at 50 concurrent connections, against cms-api (gunicorn) here.

Starts cms-api on a free 127.0.0.1 port over a libvirt test:/// host, creates one VM, then
runs wrk (-c 50, --latency) on /vm/query?vmid=N. It does this for the default worker class
(sync), its peer (gthread), and the same sync server of an earlier commit (--against: by
default the commit before Prometheus support came in, i.e. before prometheus-client was added
to pyproject.toml, extracted with git archive and run from its own tree), interleaved over
--rounds rounds, each run on a state database and VM of its own. It also times cms-api's
Prometheus request hook (cms.api.prom.RequestMetrics: its process_request and
process_response, as every request runs them) in this process's Python, once with
prometheus_client's multiprocess mode (what cms-api runs: every worker writes its figures
to mmapped files) and once in one process's memory. Prints ONE JSON line: the worst round
of each server (lowest throughput, highest p99), the ratios, the hook's cost per request,
and every round.
Usage: .venv/bin/python bench/api.py [--duration 10] [--connections 50] [--workers N] [--rounds 2]
                                      [--against REF|none]
Target (the default worker class, every round): >= 2000 req/s and p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = """<node><cpu><mhz>2000</mhz><model>i686</model><active>8</active><nodes>1</nodes><sockets>1</sockets>
<cores>8</cores><threads>1</threads></cpu><memory>16777216</memory>
<pool type='dir'><name>cms</name><uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid><capacity>107374182400</capacity>
<allocation>0</allocation><available>107374182400</available><source/><target><path>/var/lib/cms/pool</path></target></pool></node>
"""
HOOK_CALLS = 20000


def _ms(v: str, unit: str) -> float:
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def prepare(tmp: Path) -> None:
    """The test driver's node, and the image and type the API creates its VM from."""
    (tmp / "node.xml").write_text(NODE)
    # a small real qcow2: its first create imports it into the test driver's pool, which keeps metadata only
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / "bench.qcow2"), "8M"], check=True, timeout=60)
    (tmp / "image_file").write_text(f"{tmp / 'bench.qcow2'}\n")
    (tmp / "types_file").write_text(json.dumps({"types": [{"tid": 1, "cpu": 1, "ram": 256, "disk": 1}]}))


def run_one(tmp: Path, label: str, tree: Path, worker_class: str, workers: int, duration: int,
            connections: int, rnd: int, state_db: str = "") -> dict:
    """Start cms-api from `tree` with one worker class on a fresh state database (state_db:
    a new PostgreSQL database's URL; default a new SQLite file), create a VM, run wrk on
    /vm/query, stop cms-api."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = f"{label}-{rnd}"
    conf = tmp / f"cms-{run}.toml"
    conf.write_text(f'state_db = "{state_db or f"{tmp}/state-{run}.db"}"\nlog_level = "warning"\n'
                    f'[libvirt]\ndomain_type = "qemu"\n[api]\nbind = "127.0.0.1:{port}"\n'
                    f'workers = {workers}\nworker_class = "{worker_class}"\n'
                    f'[[hosts]]\nname = "pm1"\nuri = "test://{tmp}/node.xml"\n')
    env = {**os.environ, "CMS_RUN_DIR": str(tmp / f"run-{run}"), "PYTHONPATH": str(tree),
           "CMS_IMAGE_FILE": str(tmp / "image_file"), "CMS_TYPES_FILE": str(tmp / "types_file")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    logpath = tmp / f"api-{run}.log"
    log = open(logpath, "w")
    proc = subprocess.Popen([sys.executable, "-m", "cms.api.serve", "--config", str(conf)],
                            cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/vm/create?name=bench{rnd}&instance_type=1", timeout=5) as r:
                    vmid = json.loads(r.read())["vmid"]
                if not vmid:
                    raise SystemExit(f"cms-api ({run}) could not create the VM to query: "
                                     + logpath.read_text()[-2000:])
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"cms-api ({run}) did not start: " + logpath.read_text()[-2000:])
                time.sleep(0.2)
        with urllib.request.urlopen(f"{url}/vm/query?vmid={vmid}", timeout=5) as r:
            assert json.loads(r.read())["vmid"] == vmid
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s",
                              f"{url}/vm/query?vmid={vmid}"], capture_output=True, text=True, timeout=duration + 60).stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = _ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out).groups())
    p50 = _ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out).groups())
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"req_per_s": round(rps, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": sock.group(1) if sock else ""}


def hook_cost_child() -> None:
    """In a child process (prometheus_client reads PROMETHEUS_MULTIPROC_DIR when imported):
    microseconds per request of RequestMetrics' two hooks, printed as JSON."""
    import falcon
    import falcon.testing

    from cms.api.prom import RequestMetrics
    metrics = RequestMetrics()
    req = falcon.testing.create_req(path="/vm/query", query_string="vmid=1")
    resp = falcon.Response()

    def one() -> None:
        metrics.process_request(req, resp)
        metrics.process_response(req, resp, None, True)

    one()
    took = min(timeit.repeat(one, number=HOOK_CALLS, repeat=3))
    print(json.dumps({"us_per_request": round(took / HOOK_CALLS * 1e6, 2),
                      "multiprocess": metrics.multiprocess}))


def hook_cost(tmp: Path) -> dict:
    out = {}
    for mode in ("multiprocess", "one_process"):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if mode == "multiprocess":
            d = tmp / "prom-multiproc"
            d.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(d)
        p = subprocess.run([sys.executable, __file__, "--hook-cost-child"], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        if p.returncode != 0:
            raise SystemExit(f"timing the Prometheus hook ({mode}) failed: {p.stderr.strip()[-1000:]}")
        out[mode] = json.loads(p.stdout)["us_per_request"]
    out["multiprocess_extra_us"] = round(out["multiprocess"] - out["one_process"], 2)
    return out


def before_prometheus() -> str:
    """The commit before the one that brought prometheus-client into pyproject.toml."""
    p = subprocess.run(["git", "log", "--format=%H", "--reverse", "-S", "prometheus-client", "--", "pyproject.toml"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    first = p.stdout.split()[0] if p.returncode == 0 and p.stdout.split() else ""
    if not first:
        raise SystemExit("--against: no commit in this checkout's history adds prometheus-client (give a REF)")
    return first + "^"


def extract(ref: str, dest: Path) -> str:
    """The tree of commit `ref` in `dest` (git archive); returns its short hash and subject."""
    desc = subprocess.run(["git", "log", "-1", "--format=%h %s", ref], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    if desc.returncode != 0:
        raise SystemExit(f"--against {ref}: not a commit here: {desc.stderr.strip()}")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", ref], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True, timeout=120)
    if archive.wait(timeout=60) != 0:
        raise SystemExit(f"--against {ref}: git archive failed")
    return desc.stdout.strip()[:100]


def worst(runs: list[dict]) -> dict:
    return {"req_per_s": min(x["req_per_s"] for x in runs), "p50_ms": max(x["p50_ms"] for x in runs),
            "p99_ms": max(x["p99_ms"] for x in runs),
            "errors": sum(x["non_2xx"] for x in runs) + sum(bool(x["socket_errors"]) for x in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0, help="gunicorn workers (0: cms-api's default)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every server")
    ap.add_argument("--against", default="before-prometheus",
                    help="commit whose sync server runs beside this one (default: the one before Prometheus "
                         "support); none: no such run")
    ap.add_argument("--hook-cost-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hook_cost_child:
        return hook_cost_child()
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="cms-bench-api-"))
    prepare(tmp)
    servers = {"sync": (ROOT, "sync"), "gthread": (ROOT, "gthread")}
    against = ""
    if a.against != "none":
        ref = before_prometheus() if a.against == "before-prometheus" else a.against
        against = extract(ref, tmp / "against")
        servers["against"] = (tmp / "against", "sync")
    runs: dict[str, list[dict]] = {k: [] for k in servers}
    for r in range(a.rounds):
        for label, (tree, worker_class) in servers.items():
            runs[label].append(run_one(tmp, label, tree, worker_class, a.workers, a.duration, a.connections, r))
            print(f"round {r + 1}/{a.rounds} {label}: {runs[label][-1]}", file=sys.stderr, flush=True)
    hooks = hook_cost(tmp)
    # The figure for each server is its worst round: the target has to hold in every one.
    w = {k: worst(v) for k, v in runs.items()}
    d = w["sync"]
    out = {"bench": "api", "url": "/vm/query", "connections": a.connections, "duration_s": a.duration,
           "rounds": a.rounds, "workers": a.workers or 2 * (os.cpu_count() or 1) + 1,
           "default_worker_class": "sync", **d, "gthread": w["gthread"],
           "p99_gthread_over_sync": round(w["gthread"]["p99_ms"] / d["p99_ms"], 2) if d["p99_ms"] else None}
    if against:
        b = w["against"]
        out.update(against={"commit": against, **b},
                   req_per_s_over_against=round(d["req_per_s"] / b["req_per_s"], 2) if b["req_per_s"] else None,
                   p50_ms_minus_against=round(d["p50_ms"] - b["p50_ms"], 2))
    out.update(prometheus_hook_us=hooks, runs=runs, target={"req_per_s": 2000, "p99_ms": 20},
               ok=d["req_per_s"] >= 2000 and d["p99_ms"] <= 20 and d["errors"] == 0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
