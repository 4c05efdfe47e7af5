"""items.vars: a template's variable values and matrix settings per item

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-02 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column: rows written before it read back as items without vars.
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vars", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("vars")
