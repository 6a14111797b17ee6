"""/vm/query throughput and p99 latency at 50 concurrent connections, against cms-api (gunicorn) here.

Starts cms-api on a free 127.0.0.1 port over a libvirt test:/// host, creates one VM, then
runs wrk (-c 50, --latency) on /vm/query?vmid=N and prints ONE JSON line.
Usage: .venv/bin/python bench/api.py [--duration 10] [--connections 50] [--workers N]
Target: >= 2000 req/s and p99 <= 20 ms.
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = """<node><cpu><mhz>2000</mhz><model>i686</model><active>8</active><nodes>1</nodes><sockets>1</sockets>
<cores>8</cores><threads>1</threads></cpu><memory>16777216</memory>
<pool type='dir'><name>cms</name><uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid><capacity>107374182400</capacity>
<allocation>0</allocation><available>107374182400</available><source/><target><path>/var/lib/cms/pool</path></target></pool></node>
"""


def _ms(v: str, unit: str) -> float:
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0, help="gunicorn workers (0: cms-api's default)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cms-bench-api-"))
    (tmp / "node.xml").write_text(NODE)
    (tmp / "image_file").write_text("/srv/bench.qcow2\n")
    (tmp / "types_file").write_text(json.dumps({"types": [{"tid": 1, "cpu": 1, "ram": 512, "disk": 1}]}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "cms.toml").write_text(f'state_db = "{tmp}/state.db"\nlog_level = "warning"\n'
                                  f'[libvirt]\ndomain_type = "qemu"\n[api]\nbind = "127.0.0.1:{port}"\n'
                                  f'workers = {a.workers}\n[[hosts]]\nname = "pm1"\nuri = "test://{tmp}/node.xml"\n')
    env = {**os.environ, "CMS_RUN_DIR": str(tmp / "run")}
    log = open(tmp / "api.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cms.api.serve", "--config", str(tmp / "cms.toml")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/vm/create?name=bench&instance_type=1", timeout=5) as r:
                    vmid = json.loads(r.read())["vmid"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("cms-api did not start: " + (tmp / "api.log").read_text()[-2000:])
                time.sleep(0.2)
        with urllib.request.urlopen(f"{url}/vm/query?vmid={vmid}", timeout=5) as r:
            assert json.loads(r.read())["vmid"] == vmid
        out = subprocess.run(["wrk", "-t2", f"-c{a.connections}", f"-d{a.duration}s", "--latency", "--timeout", "5s",
                              f"{url}/vm/query?vmid={vmid}"], capture_output=True, text=True, timeout=a.duration + 60).stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = _ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out).groups())
    p50 = _ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out).groups())
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    print(json.dumps({"bench": "api", "url": "/vm/query", "connections": a.connections, "duration_s": a.duration,
                      "workers": a.workers or 2 * (os.cpu_count() or 1) + 1, "req_per_s": round(rps, 1),
                      "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                      "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": sock.group(1) if sock else "",
                      "target": {"req_per_s": 2000, "p99_ms": 20},
                      "ok": rps >= 2000 and p99 <= 20}))


if __name__ == "__main__":
    main()
