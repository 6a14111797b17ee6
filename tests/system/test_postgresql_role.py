"""roles/postgresql (site.yml's database play) run for real on this machine, no systemd.

A throwaway cluster of Debian's postgresql-common (its own name, port and data directory,
dropped at the end): the play makes it, the cms user with its password and the database;
cms connects with the password from a file and `cms db upgrade` makes the schema; a second
run changes nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from cms.cli import main as cli
from cms.store import Store
from tests.support import free_port
from tests.system.test_ansible import changed_tasks, run_playbook

pytestmark = pytest.mark.real


@pytest.mark.timeout(600)
def test_postgresql_role_makes_the_database_cms_uses(tmp_path: Path, capsys):
    cluster, port = f"cmstest{uuid.uuid4().hex[:6]}", free_port()
    data = Path(tempfile.mkdtemp(prefix="cms-pgrole-"))     # postgres must reach it: not under pytest's 0700 dirs
    data.chmod(0o755)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}},
        "children": {"cms_db": {"hosts": {"localhost": {}}}}}}))
    password = uuid.uuid4().hex
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"postgresql_service_manager": "local", "postgresql_cluster": cluster,
                                 "postgresql_port": port, "postgresql_data_dir": str(data / "data"),
                                 "postgresql_cms_password": password}))
    args = ["-i", str(inventory), "playbooks/site.yml", "--tags", "database", "-e", f"@{extra}"]
    try:
        out, counts = run_playbook(args, timeout=300)
        assert counts["localhost"]["failed"] == 0 and counts["localhost"]["changed"] >= 3
        (tmp_path / "pw").write_text(password + "\n")
        toml = tmp_path / "cms.toml"
        toml.write_text(f'state_db = "postgresql://cms@127.0.0.1:{port}/cms"\n'
                        f'state_db_password_file = "{tmp_path / "pw"}"\n')
        assert cli(["db", "upgrade", "--config", str(toml)]) == 0
        assert "upgraded from none to" in capsys.readouterr().out
        s = Store(f"postgresql://cms@127.0.0.1:{port}/cms", str(tmp_path / "pw"))
        s.add_event("x", "on the role's database")
        assert [e.message for e in s.events()] == ["on the role's database"]
        s.close()
        (tmp_path / "pw").write_text("wrong\n")
        assert cli(["db", "current", "--config", str(toml)]) == 1
        assert "password authentication failed" in capsys.readouterr().err
        out, counts = run_playbook(args, timeout=300)
        assert counts["localhost"]["changed"] == 0, changed_tasks(out)
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", cluster], capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)
