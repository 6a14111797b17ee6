-- Test data: the state database's layout as cms made it before its schema was versioned
-- (main at 80512f4), frozen: each module's SCHEMA string, run in this order, then
-- cms.store's `ALTER TABLE samples ADD COLUMN vcpu TEXT` (added after the table, so files
-- from before it lack the column). tests/unit/test_db.py makes a file with it, fills it as
-- that code did, and upgrades it with `cms db upgrade`.

-- cms.store.SCHEMA
CREATE TABLE IF NOT EXISTS samples (
    ts REAL NOT NULL, host TEXT NOT NULL, domain TEXT NOT NULL, grp TEXT NOT NULL,
    cpu REAL, vcpus INTEGER, memory_kib INTEGER, state TEXT
);
CREATE INDEX IF NOT EXISTS samples_grp_ts ON samples(grp, ts);
CREATE INDEX IF NOT EXISTS samples_domain_ts ON samples(domain, ts);
CREATE INDEX IF NOT EXISTS samples_host_ts ON samples(host, ts);
CREATE TABLE IF NOT EXISTS host_samples (
    ts REAL NOT NULL, host TEXT NOT NULL, cpu REAL, node_cpu REAL, cpus INTEGER, vms INTEGER,
    vcpus INTEGER, free_memory_mib INTEGER
);
CREATE INDEX IF NOT EXISTS host_samples_host_ts ON host_samples(host, ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    grp TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS scale_requests (grp TEXT PRIMARY KEY, replicas INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    name TEXT PRIMARY KEY, grp TEXT NOT NULL, host TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '', port INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL
);

-- cms.api.service.SCHEMA
CREATE TABLE IF NOT EXISTS api_vms (
    vmid INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, domain TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '', instance_type INTEGER NOT NULL, image_id INTEGER NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_types (tid INTEGER PRIMARY KEY, cpu INTEGER NOT NULL, ram INTEGER NOT NULL,
    disk INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_images (id INTEGER PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_images_added (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_pms (pmid INTEGER PRIMARY KEY, name TEXT NOT NULL, uri TEXT NOT NULL);

-- cms.scheduler.SCHEMA
CREATE TABLE IF NOT EXISTS placement_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);

-- cms.images.SCHEMA
CREATE TABLE IF NOT EXISTS images_imported (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL, format TEXT NOT NULL, copy TEXT NOT NULL, hosts TEXT NOT NULL, imported REAL NOT NULL
);

-- cms.autoscaler.balancing.SCHEMA
CREATE TABLE IF NOT EXISTS balance_requests (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL);

-- cms.store: Store._add_columns("samples", {"vcpu": "TEXT"})
ALTER TABLE samples ADD COLUMN vcpu TEXT;
