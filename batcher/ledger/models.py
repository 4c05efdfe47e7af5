"""The ledger schema, as SQLAlchemy typed ORM models.

Only batcher/ledger/ touches these; the rest of the program gets value
objects from `batcher.ledger`. Every change to this file needs an Alembic
revision in migrations/ (a test runs `alembic check` against it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on engines with or without time zones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store naive UTC so that text comparisons order correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Batch(Base):
    """One named batch: everything a job file run (and its resumes) asked for."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    job_path: Mapped[str | None] = mapped_column(Text)
    job_hash: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    budget: Mapped[int | None] = mapped_column(BigInteger)
    # Kept in step with credit_events and items.credits_reserved in the same
    # transactions, so a budget check is one row lock instead of a sum.
    credits_net: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    # Ceilings shared by every worker of the batch (several processes or machines).
    shared_rate: Mapped[float | None] = mapped_column(Float)
    shared_concurrency: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Item(Base):
    """One prompt of a batch and everything that happened to it."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("batch_id", "key"),
        # The feeder's query: the next items of a state, in job order.
        Index("ix_items_batch_state_ordinal", "batch_id", "state", "ordinal"),
        CheckConstraint(
            "state IN ('pending', 'sending', 'unconfirmed', 'submitted', 'complete', 'failed')",
            name="state",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    ordinal: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(100))
    resolution: Mapped[str | None] = mapped_column(String(20))
    aspect_ratio: Mapped[str] = mapped_column(String(20))
    tool: Mapped[str] = mapped_column(String(100))
    image_count: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(Text)  # the job's own name for the item, if any
    project_name: Mapped[str] = mapped_column(Text)  # the `name` sent with the create
    source_path: Mapped[str | None] = mapped_column(Text)
    source_line: Mapped[int | None] = mapped_column(Integer)
    # A template's variable values and matrix settings for this item ({name:
    # value}); NULL for an item that is no combination of a template.
    vars: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    estimate: Mapped[int] = mapped_column(BigInteger)
    estimate_exact: Mapped[bool] = mapped_column(Boolean)

    state: Mapped[str] = mapped_column(String(16), default="pending")
    failure: Mapped[str | None] = mapped_column(String(16))  # why a failed item failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # creates sent
    render_failures: Mapped[int] = mapped_column(Integer, default=0)
    project_id: Mapped[str | None] = mapped_column(String(200), index=True)
    credits_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    error_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The saved images: [{path, sha256, bytes, width, height}] (older rows: [path]).
    files: Mapped[list[Any] | None] = mapped_column(JSON)
    # A rerun of a rejected image points at the item it redoes; the gallery
    # shows the two side by side. SET NULL: deleting the old item keeps the new.
    redo_of_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("items.id", ondelete="SET NULL"), index=True
    )

    # Rebuilt by `batcher recover` from the batch's manifest after its ledger was lost.
    recovered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    worker_id: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[datetime | None]

    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    submitted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class CreditEvent(Base):
    """Append-only: one row per charge and per refund. Reports are sums of these."""

    __tablename__ = "credit_events"
    __table_args__ = (
        # Each change of a project's charge seen is one row, numbered per kind
        # by `seq` (0: the charge at create, the first refund): whoever records
        # a change, it is written once.
        UniqueConstraint("kind", "project_id", "seq"),
        CheckConstraint("kind IN ('charge', 'refund')", name="kind"),
        CheckConstraint("credits >= 0", name="credits"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    credits: Mapped[int] = mapped_column(BigInteger)
    project_id: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(index=True)


class Review(Base):
    """One review decision on one image of an item. Append-only: the latest row
    per (item, image) is the decision in force, and a "clear" is recorded like
    any other, so the morning's history stays readable."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint("verdict IN ('pick', 'reject', 'clear')", name="verdict"),
        CheckConstraint("image >= 0", name="image"),
        # The latest decision per image: max(id) grouped by (item, image).
        Index("ix_reviews_item_id_image", "item_id", "image"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    image: Mapped[int] = mapped_column(Integer)  # the image's index within its item, from 0
    verdict: Mapped[str] = mapped_column(String(8))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class WebhookEvent(Base):
    """A verified webhook event (one row per project and event type, however often
    it was delivered), or a receiver's count of refused deliveries. Any worker may
    record an event; the worker that follows the project settles it from here
    (DESIGN.md, "Webhooks instead of polls")."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        # "{type}:{project_id}" for an event, "rejected:{worker}" for refusals:
        # a second delivery of the same event only counts.
        UniqueConstraint("event_key"),
        CheckConstraint("kind IN ('event', 'rejected')", name="kind"),
        CheckConstraint("deliveries >= 1", name="deliveries"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_key: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(8))
    event_type: Mapped[str | None] = mapped_column(String(40))
    project_id: Mapped[str | None] = mapped_column(String(200), index=True)
    # The batch the receiving worker served (refusals are counted per batch).
    batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the project, as sent
    deliveries: Mapped[int] = mapped_column(Integer, default=1)
    received_by: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime]
    last_at: Mapped[datetime]


class Worker(Base):
    """A process working on a batch; its heartbeat keeps its item leases alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    pid_start: Mapped[int | None] = mapped_column(BigInteger)  # tells a reused pid apart
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]


def utcnow() -> datetime:
    return datetime.now(UTC)
