"""credit changes: a project may have several charge and refund rows

A project's `credits_charged` can change after its create (a surcharge, a
partial refund, a charge unknown at create time and learnt from a poll).
Each change seen is one more credit row, numbered per project and kind by
`seq`; the unique constraint moves from (kind, project_id) to (kind,
project_id, seq), so that two recorders of the same change still write it
once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 14:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("credit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), server_default="0", nullable=False))
        batch_op.drop_constraint("uq_credit_events_kind_project_id", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_credit_events_kind_project_id_seq"), ["kind", "project_id", "seq"]
        )


def downgrade() -> None:
    # Only the first row of each kind fits the old constraint: later changes go.
    op.execute("DELETE FROM credit_events WHERE seq > 0")
    with op.batch_alter_table("credit_events", schema=None) as batch_op:
        batch_op.drop_constraint("uq_credit_events_kind_project_id_seq", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_credit_events_kind_project_id"), ["kind", "project_id"]
        )
        batch_op.drop_column("seq")
