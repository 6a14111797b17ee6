"""playbooks/monitoring.yml (roles/cms_monitoring) run for real on this machine, no systemd.

Every path under a temporary prefix and Prometheus on a free loopback port: the play installs
(here: finds) Debian's prometheus, loads cms's rules and scrapes both cms jobs; a second run
and a --check run change nothing; a changed scrape interval reloads Prometheus in place.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from cms.lab.realstack import wait_until
from tests.support import ROOT, free_port
from tests.system.test_ansible import LINT, ansible_env, changed_tasks, run_playbook

pytestmark = pytest.mark.real
RULES = ["CmsApiErrorRate", "CmsAutoscalerStalled", "CmsGroupAtMaxAndHot", "CmsHostDown", "CmsNoLeader",
         "CmsReplicaFailed", "CmsSpawnFailures", "CmsTargetDown", "CmsTicksOverrunning"]


def prom_get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def test_lint_production_profile():
    proc = subprocess.run([str(LINT), "--nocolor", "-f", "pep8", "--profile", "production",
                           "roles/cms_monitoring", "playbooks/monitoring.yml"],
                          cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(600)
def test_monitoring_play_local_idempotent(tmp_path: Path):
    prefix = tmp_path / "mon"
    port = free_port()
    extra = {
        "cms_monitoring_service_manager": "local",
        "cms_monitoring_user": "root",     # the pytest directories are private to root
        "cms_monitoring_config_dir": str(prefix / "etc"),
        "cms_monitoring_storage_dir": str(prefix / "data"),
        "cms_monitoring_run_dir": str(prefix / "run"),
        "cms_monitoring_log_dir": str(prefix / "log"),
        "cms_monitoring_listen": f"127.0.0.1:{port}",
        "cms_monitoring_api_targets": ["127.0.0.1:18080"],
        "cms_monitoring_autoscaler_targets": ["127.0.0.1:19481"],
        # Grafana "installed": its provisioning directory exists, so the dashboard is provisioned
        "cms_monitoring_grafana_provisioning_dir": str(prefix / "grafana" / "provisioning"),
        "cms_monitoring_grafana_dashboards_dir": str(prefix / "grafana" / "dashboards"),
    }
    (prefix / "grafana" / "provisioning").mkdir(parents=True)
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    args = ["-i", "inventory/local.yml", "playbooks/monitoring.yml", "-e", f"@{vars_file}"]
    pidfile = prefix / "run" / "prometheus.pid"
    try:
        out, counts = run_playbook(args, timeout=300)
        assert counts["localhost"]["failed"] == 0 and counts["localhost"]["changed"] > 0
        pid = pidfile.read_text().strip()

        groups = prom_get(port, "/api/v1/rules")["groups"]
        assert sorted(r["name"] for g in groups for r in g["rules"]) == RULES
        want = {("cms-api", "127.0.0.1:18080"), ("cms-autoscaler", "127.0.0.1:19481"),
                ("prometheus", f"127.0.0.1:{port}")}

        def jobs():
            return {(t["labels"]["job"], t["labels"]["instance"])
                    for t in prom_get(port, "/api/v1/targets")["activeTargets"]}
        wait_until(lambda: jobs() == want, 30, 0.5, f"the scrape targets {want}")
        grafana = prefix / "grafana"
        assert (grafana / "dashboards" / "cms-dashboard.json").read_bytes() == \
            (ROOT / "etc" / "grafana" / "cms-dashboard.json").read_bytes()
        assert f"path: {grafana / 'dashboards'}" in (grafana / "provisioning" / "dashboards" / "cms.yml").read_text()
        assert f"url: http://127.0.0.1:{port}" in (grafana / "provisioning" / "datasources" / "cms.yml").read_text()

        for extra_args in ([], ["--check"]):
            out, counts = run_playbook([*args, *extra_args], timeout=300)
            assert counts["localhost"]["changed"] == 0 and counts["localhost"]["failed"] == 0, changed_tasks(out)
        assert pidfile.read_text().strip() == pid, "a second run restarted Prometheus"

        # A configuration change reloads the running server (SIGHUP): same process, new setting.
        vars_file.write_text(json.dumps({**extra, "cms_monitoring_scrape_interval": "7s"}))
        out, counts = run_playbook(args, timeout=300)
        assert counts["localhost"]["changed"] > 0
        assert pidfile.read_text().strip() == pid
        wait_until(lambda: "scrape_interval: 7s" in prom_get(port, "/api/v1/status/config")["yaml"], 30,
                   0.5, "Prometheus to reload its configuration")
    finally:
        if pidfile.exists():
            subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--pidfile", str(pidfile),
                            "--retry", "TERM/20/KILL/5", "--remove-pidfile"], timeout=60, check=False)
