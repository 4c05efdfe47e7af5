"""reviews, and the item a rerun redoes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 07:40:35.510359
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import batcher.ledger.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", batcher.ledger.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "verdict IN ('pick', 'reject', 'clear')", name=op.f("ck_reviews_verdict")
        ),
        sa.CheckConstraint("image >= 0", name=op.f("ck_reviews_image")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_reviews_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_reviews_item_id_items"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index(op.f("ix_reviews_batch_id"), "reviews", ["batch_id"], unique=False)
    op.create_index("ix_reviews_item_id_image", "reviews", ["item_id", "image"], unique=False)

    # On SQLite batch mode rebuilds the table to add the foreign key (migrate.py
    # turns foreign keys off meanwhile, so the rebuild cascades into nothing).
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("redo_of_item_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_items_redo_of_item_id"), ["redo_of_item_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_items_redo_of_item_id_items"),
            "items",
            ["redo_of_item_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_items_redo_of_item_id_items"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_items_redo_of_item_id"))
        batch_op.drop_column("redo_of_item_id")

    op.drop_index("ix_reviews_item_id_image", table_name="reviews")
    op.drop_index(op.f("ix_reviews_batch_id"), table_name="reviews")
    op.drop_table("reviews")
