"""`batcher audit`: where the credits went, from the ledger's append-only credit rows.

Every figure is a sum over credit rows (one per charge, one per refund), joined
to their items for the model, resolution and image count:

- ``credits_charged``: the sum of charge rows;
- ``credits_refunded``: the sum of refund rows;
- ``credits_net``: charged - refunded;
- ``items``: distinct items with a charge row in the group;
- ``images``: image_count of the charged projects that were never refunded
  (a refunded render delivered nothing);
- ``failures``: refunded projects (renders that failed), counted where the
  refund row falls;
- ``credits_per_image``: net / images, null when there are no images.

A row belongs to the group of its own time: ``--since`` (inclusive) and
``--until`` (exclusive) filter on it, and ``day`` is its UTC date. So a render
charged just before midnight and refunded just after shows its charge on one
day and its refund on the next; figures add up across days and windows.

Items in doubt (state ``unconfirmed``: sent, answer lost) may or may not have
been charged; no credit row exists for them, so the report counts them apart.

Pure report logic: `build_audit` asks the ledger (`Ledger.credit_snapshot`) for
the numbers; everything else here turns values into JSON or CSV. The chart is
`batcher.reports.chart`, the table `batcher.terminal.credit_views`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from batcher.errors import ConfigError
from batcher.ledger import GROUP_KEYS, CreditGroup, CreditWindow, GroupValue, Ledger
from batcher.reports.chart import CHART_GROUPING, ChartData, chart_data

DEFAULT_GROUP_BY: Final = ("batch",)
FORMATS: Final = ("table", "csv", "json")
METRICS: Final = (
    "credits_charged",
    "credits_refunded",
    "credits_net",
    "images",
    "items",
    "failures",
    "credits_per_image",
)

# --------------------------------------------------------------------------- input


def parse_group_by(text: str) -> tuple[str, ...]:
    """`batch,model,day` -> ("batch", "model", "day"); repeated keys count once."""
    keys: list[str] = []
    for raw in text.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        if key not in GROUP_KEYS:
            raise ConfigError(
                f"--by: unknown key {raw.strip()!r}; choose among {', '.join(GROUP_KEYS)} "
                "(several may be joined with commas)"
            )
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ConfigError(f"--by: give at least one of {', '.join(GROUP_KEYS)}")
    return tuple(keys)


def parse_when(text: str, flag: str) -> datetime:
    """An ISO date or datetime as an aware UTC datetime; without an offset it is UTC.

    A bare date means midnight UTC at its start.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not an ISO date or datetime "
            "(e.g. 2026-01-31, 2026-01-31T18:00, 2026-01-31T18:00+01:00)"
        ) from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    batch: str | None = None
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ConfigError(
                f"--since ({iso(self.since)}) must be before --until ({iso(self.until)})"
            )
        unknown = [key for key in self.group_by if key not in GROUP_KEYS]
        if unknown or not self.group_by:
            raise ConfigError(f"--by: choose among {', '.join(GROUP_KEYS)}")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One group of the report (or the totals, with no keys)."""

    group: tuple[tuple[str, GroupValue], ...]  # (key, value) in the order asked
    credits_charged: int
    credits_refunded: int
    images: int
    items: int
    failures: int

    @property
    def credits_net(self) -> int:
        return self.credits_charged - self.credits_refunded

    @property
    def credits_per_image(self) -> float | None:
        if self.images <= 0:
            return None
        return round(self.credits_net / self.images, 2)

    @classmethod
    def from_group(cls, keys: Sequence[str], group: CreditGroup) -> AuditRow:
        return cls(
            group=tuple(zip(keys, group.keys, strict=True)),
            credits_charged=group.credits_charged,
            credits_refunded=group.credits_refunded,
            images=group.images,
            items=group.items,
            failures=group.failures,
        )

    def metrics(self) -> dict[str, int | float | None]:
        return {
            "credits_charged": self.credits_charged,
            "credits_refunded": self.credits_refunded,
            "credits_net": self.credits_net,
            "images": self.images,
            "items": self.items,
            "failures": self.failures,
            "credits_per_image": self.credits_per_image,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    query: AuditQuery
    rows: tuple[AuditRow, ...]
    totals: AuditRow  # over every row of the window; `items` counts each item once
    items_in_doubt: int
    chart: ChartData | None = None  # when asked for
    ledger_found: bool = True  # False: no ledger file at that URL yet, so nothing to show


# --------------------------------------------------------------------------- building


def _window(ledger: Ledger, query: AuditQuery) -> CreditWindow:
    batch_id = ledger.batch_named(query.batch).id if query.batch is not None else None
    return CreditWindow(since=query.since, until=query.until, batch_id=batch_id)


def build_audit(
    ledger: Ledger, query: AuditQuery, *, chart: bool = False, ledger_found: bool = True
) -> AuditReport:
    """The report for `query`; an unknown batch is a ConfigError (exit 2).

    With `chart`, the report also carries the per-day, per-model figures the chart
    draws, read in the same snapshot as the rest.
    """
    window = _window(ledger, query)
    groupings: list[tuple[str, ...]] = [query.group_by, ()]
    if chart:
        groupings.append(CHART_GROUPING)
    snapshot = ledger.credit_snapshot(window, groupings)
    groups, (totals,), *rest = snapshot.groupings
    return AuditReport(
        query=query,
        rows=tuple(AuditRow.from_group(query.group_by, group) for group in groups),
        totals=AuditRow.from_group((), totals),
        items_in_doubt=snapshot.items_in_doubt,
        chart=chart_data(rest[0]) if rest else None,
        ledger_found=ledger_found,
    )


# --------------------------------------------------------------------------- rendering


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plain(value: GroupValue) -> str | None:
    if isinstance(value, date):
        return value.isoformat()
    return value


def audit_json(report: AuditReport) -> dict[str, Any]:
    """`audit --format json`: DESIGN.md's four top-level keys, plus the window and totals."""
    totals = report.totals
    return {
        "rows": [
            {**{key: plain(value) for key, value in row.group}, **row.metrics()}
            for row in report.rows
        ],
        "total_credits_charged": totals.credits_charged,
        "total_credits_refunded": totals.credits_refunded,
        "total_credits_net": totals.credits_net,
        "items_in_doubt": report.items_in_doubt,
        "total_images": totals.images,
        "total_items": totals.items,
        "total_failures": totals.failures,
        "total_credits_per_image": totals.credits_per_image,
        "group_by": list(report.query.group_by),
        "since": iso(report.query.since) if report.query.since else None,
        "until": iso(report.query.until) if report.query.until else None,
        "batch": report.query.batch,
    }


def audit_csv(report: AuditReport) -> str:
    """One header row, then one row per group: ISO dates, plain numbers, no totals row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*report.query.group_by, *METRICS])
    for row in report.rows:
        writer.writerow(
            [
                *("" if value is None else plain(value) for _, value in row.group),
                *("" if value is None else value for value in row.metrics().values()),
            ]
        )
    return buffer.getvalue()


def totals_line(report: AuditReport) -> str:
    """The totals in one line, for stderr beside CSV output."""
    t = report.totals
    per_image = "n/a" if t.credits_per_image is None else f"{t.credits_per_image:g}"
    return (
        f"total: {t.credits_charged:,} charged, {t.credits_refunded:,} refunded, "
        f"{t.credits_net:,} net; {t.images:,} images from {t.items:,} items, "
        f"{t.failures:,} failures; {per_image} credits per image"
    )


def doubt_message(report: AuditReport) -> str | None:
    if not report.items_in_doubt:
        return None
    return (
        f"{report.items_in_doubt:,} item(s) are in doubt (sent, answer lost): their cost is "
        "unknown and not in these figures; `batcher reconcile` lists them"
    )


def report_title(query: AuditQuery) -> str:
    """What the report covers, in words: the grouping, the batch, the window."""
    parts = ["credits by " + ", ".join(query.group_by)]
    if query.batch is not None:
        parts.append(f"batch {query.batch}")
    if query.since is not None:
        parts.append(f"from {iso(query.since)}")
    if query.until is not None:
        parts.append(f"until {iso(query.until)} (exclusive)")
    return "; ".join(parts)
