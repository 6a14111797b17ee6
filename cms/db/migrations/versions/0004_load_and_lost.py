"""The replicas' load figures on samples (issue 24) and API VMs' ha and lost (issue 20).

Revision ID: 0004_load_and_lost
Revises: 0003_sqlite_text_keys

Both issues added their columns before the schema was versioned, the way ``samples.vcpu``
was: on open, with ``ALTER TABLE ... ADD COLUMN`` when missing. So a file the code made
after them already has them (it is upgraded from "none" like any file from before versions,
and 0001 keeps its tables as they are), and one made before them does not; a database made
at 0003 never has them. Each column is added only where it is missing, with the type and
default that code gave it:

* samples: ``in_flight``, ``rate``, ``p95_s`` (a ready replica's /status figures this tick;
  NULL when not polled);
* api_vms: ``ha`` (0 or 1, NOT NULL DEFAULT 0: restarted elsewhere when its host is fenced)
  and ``lost`` (when its host was declared down; NULL: not lost).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

revision = "0004_load_and_lost"
down_revision = "0003_sqlite_text_keys"
branch_labels = None
depends_on = None

# frozen here, as in 0001 (never imported from cms.db.schema, which moves on)
Time = sa.REAL().with_variant(DOUBLE_PRECISION(), "postgresql")
Int64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def columns() -> dict[str, list[sa.Column]]:
    return {"samples": [sa.Column("in_flight", Time), sa.Column("rate", Time), sa.Column("p95_s", Time)],
            "api_vms": [sa.Column("ha", Int64, nullable=False, server_default=sa.text("0")),
                        sa.Column("lost", Time)]}


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    for table, cols in columns().items():
        have = {c["name"] for c in insp.get_columns(table)}
        for col in cols:
            if col.name not in have:
                op.add_column(table, col)


def downgrade() -> None:
    for table, cols in columns().items():
        with op.batch_alter_table(table) as t:
            for col in cols:
                t.drop_column(col.name)
