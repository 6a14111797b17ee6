"""An index on api_vms.host.

Revision ID: 0002_api_vms_host
Revises: 0001_initial

The spec's /pm/listvms and /pm/query, and every /v1 host page, select a host's VMs; at the
fleet sizes placement is measured for (100,000 VMs) that was a scan of every row per call.
"""

from alembic import op

revision = "0002_api_vms_host"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("api_vms_host", "api_vms", ["host"])


def downgrade() -> None:
    op.drop_index("api_vms_host", table_name="api_vms")
