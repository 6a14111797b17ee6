"""SQLite: the text primary keys NOT NULL.

Revision ID: 0003_sqlite_text_keys
Revises: 0002_api_vms_host

The code before versions declared ``name TEXT PRIMARY KEY`` and the like, and SQLite, unlike
PostgreSQL (and unlike SQLite's own INTEGER PRIMARY KEY), lets such a key hold NULL. A file
made by that code has its four text keys rebuilt NOT NULL (batch mode: a new table, every
row copied, the old one dropped), so it matches a database made new. A database made by
revision 0001 has them NOT NULL already, and PostgreSQL always: nothing is done there.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_sqlite_text_keys"
down_revision = "0002_api_vms_host"
branch_labels = None
depends_on = None

KEYS = {"scale_requests": "grp", "replicas": "name", "images_imported": "path", "placement_state": "key"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    insp = sa.inspect(bind)
    for table, key in KEYS.items():
        col = next(c for c in insp.get_columns(table) if c["name"] == key)
        if col["nullable"]:
            with op.batch_alter_table(table, recreate="always") as t:
                t.alter_column(key, existing_type=sa.Text(), nullable=False)


def downgrade() -> None:
    pass        # NOT NULL keys are what 0002 had on every database made new
