"""The tables as cms made them before its schema was versioned.

Revision ID: 0001_initial
Revises: -

Until then each module made its own tables with ``CREATE TABLE IF NOT EXISTS`` (cms.store,
cms.api.service, cms.scheduler, cms.images, cms.autoscaler.balancing) and cms.store added
``samples.vcpu`` to older files by hand. This revision is that layout, frozen here (never
imported from cms.db.schema, which moves on): on an empty database it makes every table;
on a file made by that code it makes only what is missing (a table made lazily that was
never used, ``samples.vcpu`` on a file from before it existed) and keeps every row.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

Time = sa.REAL().with_variant(DOUBLE_PRECISION(), "postgresql")
# SQLite's INTEGER is 64 bits; on PostgreSQL (never made by the code before versions) the same
# meaning is BIGINT.
Int64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
C = sa.Column


def tables() -> list[tuple[str, list, dict]]:
    text = sa.Text
    integer = Int64
    return [
        ("samples", [C("ts", Time, nullable=False), C("host", text, nullable=False), C("domain", text, nullable=False),
                     C("grp", text, nullable=False), C("cpu", Time), C("vcpus", integer), C("memory_kib", Int64),
                     C("state", text), C("vcpu", text)], {}),
        ("host_samples", [C("ts", Time, nullable=False), C("host", text, nullable=False), C("cpu", Time),
                          C("node_cpu", Time), C("cpus", integer), C("vms", integer), C("vcpus", integer),
                          C("free_memory_mib", integer)], {}),
        ("events", [C("id", Int64, primary_key=True), C("ts", Time, nullable=False), C("kind", text, nullable=False),
                    C("grp", text, nullable=False, server_default=""),
                    C("subject", text, nullable=False, server_default=""),
                    C("message", text, nullable=False, server_default=""),
                    C("data", text, nullable=False, server_default="{}")], {"sqlite_autoincrement": True}),
        ("scale_requests", [C("grp", text, primary_key=True), C("replicas", integer, nullable=False),
                            C("ts", Time, nullable=False)], {}),
        ("replicas", [C("name", text, primary_key=True), C("grp", text, nullable=False),
                      C("host", text, nullable=False, server_default=""), C("state", text, nullable=False),
                      C("address", text, nullable=False, server_default=""),
                      C("port", integer, nullable=False, server_default=sa.text("0")),
                      C("updated", Time, nullable=False)], {}),
        ("balance_requests", [C("id", integer, primary_key=True), C("ts", Time, nullable=False)],
         {"sqlite_autoincrement": True}),
        ("api_vms", [C("vmid", integer, primary_key=True), C("name", text, nullable=False, unique=True),
                     C("domain", text, nullable=False, server_default=""),
                     C("host", text, nullable=False, server_default=""),
                     C("instance_type", integer, nullable=False), C("image_id", integer, nullable=False),
                     C("state", text, nullable=False), C("created", Time, nullable=False)],
         {"sqlite_autoincrement": True}),
        ("api_types", [C("tid", integer, primary_key=True, autoincrement=False), C("cpu", integer, nullable=False),
                       C("ram", integer, nullable=False), C("disk", integer, nullable=False)], {}),
        ("api_images", [C("id", integer, primary_key=True, autoincrement=False), C("name", text, nullable=False),
                        C("path", text, nullable=False)], {}),
        ("api_images_added", [C("id", integer, primary_key=True, autoincrement=False),
                              C("name", text, nullable=False, unique=True),
                              C("path", text, nullable=False, unique=True), C("added", Time, nullable=False)], {}),
        ("api_pms", [C("pmid", integer, primary_key=True, autoincrement=False), C("name", text, nullable=False),
                     C("uri", text, nullable=False)], {}),
        ("images_imported", [C("path", text, primary_key=True), C("size", Int64, nullable=False),
                             C("mtime_ns", Int64, nullable=False), C("inode", Int64, nullable=False),
                             C("sha256", text, nullable=False), C("format", text, nullable=False),
                             C("copy", text, nullable=False), C("hosts", text, nullable=False),
                             C("imported", Time, nullable=False)], {}),
        ("placement_state", [C("key", text, primary_key=True), C("value", integer, nullable=False)], {}),
    ]


INDEXES = [("samples_grp_ts", "samples", ["grp", "ts"]), ("samples_domain_ts", "samples", ["domain", "ts"]),
           ("samples_host_ts", "samples", ["host", "ts"]), ("host_samples_host_ts", "host_samples", ["host", "ts"]),
           ("events_ts", "events", ["ts"])]


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    have = set(insp.get_table_names())
    for name, columns, kw in tables():
        if name not in have:
            op.create_table(name, *columns, **kw)
    if "samples" in have and "vcpu" not in {c["name"] for c in insp.get_columns("samples")}:
        op.add_column("samples", sa.Column("vcpu", sa.Text))
    indexes = {i["name"] for t in have for i in insp.get_indexes(t)}
    for name, table, cols in INDEXES:
        if name not in indexes:
            op.create_index(name, table, cols)


def downgrade() -> None:
    for name, _columns, _kw in reversed(tables()):
        op.drop_table(name)
