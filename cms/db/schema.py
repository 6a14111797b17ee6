"""Every table cms keeps, declared once (SQLAlchemy Core ``Table`` objects, not the ORM).

This module is the schema: the store, the API, the scheduler, the image registry and host
balancing all read and write these tables and declare none of their own. A change here is a
change of the schema, so it comes with a migration in ``cms/db/migrations/versions``
(``tests/unit/test_db.py`` compares the two and fails on any drift).

Who writes and who reads each table (docs/architecture.md, "The state database"):

========================  ======================================  ===========================
table                     written by                              read by
========================  ======================================  ===========================
samples, host_samples     cms-autoscaler, each tick (not with     the history API, host
                          ``[history] source = "prometheus"``)    balancing, ``cms group``
events                    cms-autoscaler (journal), cms-api       the API, the console, balancing
scale_requests            cms-api (POST /v1/groups/NAME/scale)    cms-autoscaler, which deletes it
replicas                  cms-autoscaler, as states change        the API (/v1/groups)
balance_requests          cms-api (``cms balance run``)           cms-autoscaler, which deletes it
api_vms                   cms-api (create, destroy, migrate),     the API, host balancing
                          cms-autoscaler (a balancing move)
api_types, api_images,    cms-api at start (types_file,           the API, host balancing
api_pms                   image_file, cms.toml)
api_images_added          cms-api (POST /v1/images)               cms-api at start
images_imported           whoever imports an image (./install,    the API, image imports
                          cms-api)
placement_state           the scheduler, under the spawn lock     the scheduler
========================  ======================================  ===========================

Types are chosen to mean the same on SQLite and PostgreSQL: times are epoch seconds in
``Time`` (REAL on SQLite, double precision on PostgreSQL, where REAL would be 4 bytes and
lose whole minutes of an epoch); every integer is ``Int64`` (SQLite's INTEGER is 64 bits
already, PostgreSQL's 32: an id the API accepts must compare there); JSON documents are text. On PostgreSQL the API's vmids come
from the sequence ``api_vms_vmid_seq`` (the column is BIGSERIAL), so workers on any number of
machines never hand out one vmid twice, and a vmid is never used again, as SQLite's
AUTOINCREMENT does within its one file. (`duplicates` pairs tables by shape: one Column line
per column is what a declarative schema is; no logic repeats.)
"""

from __future__ import annotations

from sqlalchemy import REAL, BigInteger, Column, Index, Integer, MetaData, Table, Text, text
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

Time = REAL().with_variant(DOUBLE_PRECISION(), "postgresql")
Float = Time
# SQLite's INTEGER is 64 bits (and its AUTOINCREMENT needs exactly INTEGER); PostgreSQL's is 32,
# so every integer column is BIGINT there: ids the API takes up to 2**63 - 1, bytes, nanoseconds.
Int64 = BigInteger().with_variant(Integer(), "sqlite")
EMPTY = text("''")          # as SQL: Alembic's comparison misreads SQLite's '' default given as a string

metadata = MetaData()

samples = Table(
    "samples", metadata,
    Column("ts", Time, nullable=False),
    Column("host", Text, nullable=False),
    Column("domain", Text, nullable=False),
    Column("grp", Text, nullable=False),
    Column("cpu", Float),
    Column("vcpus", Int64),
    Column("memory_kib", Int64),
    Column("state", Text),
    Column("vcpu", Text),            # JSON list: each vCPU's busy fraction
    # a ready replica's /status poll this tick (issue 24): mean requests in flight, answers per
    # second, p95 latency in seconds; NULL when not polled or no answer
    Column("in_flight", Float),
    Column("rate", Float),
    Column("p95_s", Float),
    Index("samples_grp_ts", "grp", "ts"),
    Index("samples_domain_ts", "domain", "ts"),
    Index("samples_host_ts", "host", "ts"),
)

host_samples = Table(
    "host_samples", metadata,
    Column("ts", Time, nullable=False),
    Column("host", Text, nullable=False),
    Column("cpu", Float),
    Column("node_cpu", Float),
    Column("cpus", Int64),
    Column("vms", Int64),
    Column("vcpus", Int64),
    Column("free_memory_mib", Int64),
    Index("host_samples_host_ts", "host", "ts"),
)

events = Table(
    "events", metadata,
    Column("id", Int64, primary_key=True),
    Column("ts", Time, nullable=False),
    Column("kind", Text, nullable=False),
    Column("grp", Text, nullable=False, server_default=EMPTY),
    Column("subject", Text, nullable=False, server_default=EMPTY),
    Column("message", Text, nullable=False, server_default=EMPTY),
    Column("data", Text, nullable=False, server_default="{}"),   # JSON object
    Index("events_ts", "ts"),
    sqlite_autoincrement=True,
)

scale_requests = Table(
    "scale_requests", metadata,
    Column("grp", Text, primary_key=True),
    Column("replicas", Int64, nullable=False),
    Column("ts", Time, nullable=False),
)

replicas = Table(
    "replicas", metadata,
    Column("name", Text, primary_key=True),
    Column("grp", Text, nullable=False),
    Column("host", Text, nullable=False, server_default=EMPTY),
    Column("state", Text, nullable=False),
    Column("address", Text, nullable=False, server_default=EMPTY),
    Column("port", Int64, nullable=False, server_default=text("0")),
    Column("updated", Time, nullable=False),
)

balance_requests = Table(
    "balance_requests", metadata,
    Column("id", Int64, primary_key=True),
    Column("ts", Time, nullable=False),
    sqlite_autoincrement=True,
)

api_vms = Table(
    "api_vms", metadata,
    Column("vmid", Int64, primary_key=True),       # PostgreSQL: BIGSERIAL, i.e. api_vms_vmid_seq
    Column("name", Text, nullable=False, unique=True),
    Column("domain", Text, nullable=False, server_default=EMPTY),
    Column("host", Text, nullable=False, server_default=EMPTY),
    Column("instance_type", Int64, nullable=False),
    Column("image_id", Int64, nullable=False),
    Column("state", Text, nullable=False),            # creating | active
    Column("created", Time, nullable=False),
    # issue 20: 1 = restarted on a live host when its host is fenced; lost = when its host was
    # declared down and it was not restarted elsewhere (NULL: not lost)
    Column("ha", Int64, nullable=False, server_default=text("0")),
    Column("lost", Time),
    Index("api_vms_host", "host"),
    sqlite_autoincrement=True,
)

api_types = Table(
    "api_types", metadata,
    Column("tid", Int64, primary_key=True, autoincrement=False),
    Column("cpu", Int64, nullable=False),
    Column("ram", Int64, nullable=False),
    Column("disk", Int64, nullable=False),
)

api_images = Table(
    "api_images", metadata,
    Column("id", Int64, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
)

api_images_added = Table(
    "api_images_added", metadata,
    Column("id", Int64, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False, unique=True),
    Column("path", Text, nullable=False, unique=True),
    Column("added", Time, nullable=False),
)

api_pms = Table(
    "api_pms", metadata,
    Column("pmid", Int64, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("uri", Text, nullable=False),
)

images_imported = Table(
    "images_imported", metadata,
    Column("path", Text, primary_key=True),
    Column("size", Int64, nullable=False),
    Column("mtime_ns", Int64, nullable=False),
    Column("inode", Int64, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("copy", Text, nullable=False),
    Column("hosts", Text, nullable=False),           # JSON list of host names
    Column("imported", Time, nullable=False),
)

placement_state = Table(
    "placement_state", metadata,
    Column("key", Text, primary_key=True),
    Column("value", Int64, nullable=False),
)
