"""Writes tests/data/state-before-versions.db with the code of cms before its schema was
versioned (main at a716b26, before issue 21), through that code's own calls; run it from
such a tree: ``PYTHONPATH=/path/to/old/cms python tests/data/make_legacy_state_db.py OUT``.
tests/unit/test_db.py upgrades a copy of the file it made with `cms db upgrade`."""

import sys

from cms import images, scheduler
from cms.api_tables import ApiTables
from cms.autoscaler import rebalance
from cms.store import Event, HostSample, ReplicaRow, Sample, Store  # noqa: F401

out = sys.argv[1]
s = Store(out)
s.add_samples([Sample(1000.0 + i, "local", f"cms-vm-{i % 3 + 1}", "web" if i % 3 == 0 else "", 0.25 * (i % 4),
                      2, 524288, "running", (0.5, 0.25)) for i in range(30)])
s.add_host_samples([HostSample(1000.0 + i, "local", 0.5, 4, 3, 3, 20000, 0.125) for i in range(10)])
for i in range(5):
    s.add_event("vm_create", f"VM vm{i} created", subject=f"vm{i}", data={"vmid": i + 1}, ts=1000.0 + i)
s.add_event("scale_out", "web: 1 -> 2", group="web", subject="cms-web-2", ts=1010.0)
s.request_scale("web", 2, ts=1011.0)
s.set_replicas([ReplicaRow("cms-web-1", "web", "local", "ready", "127.0.0.1", 20001, 1012.0)])
t = ApiTables(s)
t.replace_inventory([(1, 1, 512, 1), (2, 2, 1024, 2)], [(100, "golden", "/var/lib/cms/images/golden.qcow2")],
                    [("local", "qemu:///system")])
t.add_image("extra", "/var/lib/cms/images/extra.qcow2")
for i in range(3):
    vmid = t.reserve_vm(f"vm{i}", 1, 100)
    t.activate_vm(vmid, f"cms-vm-{vmid}", "local")
t.drop_vm(3)                       # AUTOINCREMENT: vmid 3 is never given again
t.reserve_vm("half-made", 2, 100)  # a create that never finished: a 'creating' row
rebalance.request_run(s)
s.ensure_schema(scheduler.SCHEMA)
s.ensure_schema(images.SCHEMA)
with s.write() as c:               # what Scheduler and ImageStore write, without a fleet
    c.execute("INSERT INTO placement_state(key, value) VALUES('rr_cursor', 4)")
    c.execute("INSERT INTO images_imported VALUES ('/a.qcow2', 1, 2, 3, 'ab', 'qcow2', '/p/ab', '[\"local\"]', 1.0)")
s.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
s.close()
