"""webhook events received (and refusals counted)

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-02 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import batcher.ledger.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_key", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=True),
        sa.Column("project_id", sa.String(length=200), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("received_by", sa.String(length=64), nullable=True),
        sa.Column("received_at", batcher.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_at", batcher.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('event', 'rejected')", name=op.f("ck_webhook_events_kind")),
        sa.CheckConstraint("deliveries >= 1", name=op.f("ck_webhook_events_deliveries")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_webhook_events_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("event_key", name=op.f("uq_webhook_events_event_key")),
    )
    op.create_index(
        op.f("ix_webhook_events_batch_id"), "webhook_events", ["batch_id"], unique=False
    )
    op.create_index(
        op.f("ix_webhook_events_project_id"), "webhook_events", ["project_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_events_project_id"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_batch_id"), table_name="webhook_events")
    op.drop_table("webhook_events")
