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
the numbers; everything else here turns values into JSON, CSV, a Rich table or
a chart file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from rich.table import Table
from rich.text import Text

from batcher.errors import ConfigError
from batcher.ledger import GROUP_KEYS, CreditGroup, CreditWindow, GroupValue, Ledger
from batcher.run.prepare import find_batch

DEFAULT_GROUP_BY: Final = ("batch",)
CHART_GROUPING: Final = ("day", "model")
FORMATS: Final = ("table", "csv", "json")
CHART_SUFFIXES: Final = (".png", ".svg")
CHART_INSTALL_HINT: Final = "the chart needs matplotlib: install batcher[chart]"
KEY_MIN_WIDTH: Final = 14  # a squeezed table keeps this much of each name column
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
                f"--since ({_iso(self.since)}) must be before --until ({_iso(self.until)})"
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
class ChartData:
    """Net credits per UTC day and model, every day of the span present."""

    days: tuple[date, ...]
    series: Mapping[str, tuple[int, ...]]  # model -> net credits per day, aligned with days


@dataclass(frozen=True, slots=True)
class AuditReport:
    query: AuditQuery
    rows: tuple[AuditRow, ...]
    totals: AuditRow  # over every row of the window; `items` counts each item once
    items_in_doubt: int
    chart: ChartData | None = None  # when asked for


# --------------------------------------------------------------------------- building


def _window(ledger: Ledger, query: AuditQuery) -> CreditWindow:
    batch_id = find_batch(ledger, query.batch).id if query.batch is not None else None
    return CreditWindow(since=query.since, until=query.until, batch_id=batch_id)


def build_audit(ledger: Ledger, query: AuditQuery, *, chart: bool = False) -> AuditReport:
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
    )


def chart_data(groups: Sequence[CreditGroup]) -> ChartData:
    """Net credits per day and model from ("day", "model") groups; gaps become zero days."""
    net: dict[tuple[date, str], int] = {}
    for group in groups:
        day, model = group.keys
        assert isinstance(day, date) and isinstance(model, str)
        net[day, model] = net.get((day, model), 0) + group.credits_charged - group.credits_refunded
    if not net:
        return ChartData(days=(), series={})
    first = min(day for day, _ in net)
    last = max(day for day, _ in net)
    days = tuple(first + timedelta(days=n) for n in range((last - first).days + 1))
    # Biggest spender first: it sits at the bottom of the stack and tops the legend.
    spend: dict[str, int] = {}
    for (_, model), credits in net.items():
        spend[model] = spend.get(model, 0) + credits
    models = sorted(spend, key=lambda m: (-spend[m], m))
    return ChartData(
        days=days,
        series={model: tuple(net.get((day, model), 0) for day in days) for model in models},
    )


# --------------------------------------------------------------------------- rendering


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: GroupValue) -> str | None:
    if isinstance(value, date):
        return value.isoformat()
    return value


def audit_json(report: AuditReport) -> dict[str, Any]:
    """`audit --format json`: DESIGN.md's four top-level keys, plus the window and totals."""
    totals = report.totals
    return {
        "rows": [
            {**{key: _plain(value) for key, value in row.group}, **row.metrics()}
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
        "since": _iso(report.query.since) if report.query.since else None,
        "until": _iso(report.query.until) if report.query.until else None,
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
                *("" if value is None else _plain(value) for _, value in row.group),
                *("" if value is None else value for value in row.metrics().values()),
            ]
        )
    return buffer.getvalue()


def totals_line(report: AuditReport) -> str:
    """The totals in one line, for stderr beside CSV output."""
    t = report.totals
    per_image = "n/a" if t.credits_per_image is None else f"{t.credits_per_image:g}"
    return (
        f"total: {t.credits_charged} charged, {t.credits_refunded} refunded, "
        f"{t.credits_net} net; {t.images} images from {t.items} items, "
        f"{t.failures} failures; {per_image} credits per image"
    )


def doubt_message(report: AuditReport) -> str | None:
    if not report.items_in_doubt:
        return None
    return (
        f"{report.items_in_doubt} item(s) are in doubt (sent, answer lost): their cost is "
        "unknown and not in these figures; `batcher reconcile` lists them"
    )


_HEADERS: Final = {
    "batch": "batch",
    "model": "model",
    "day": "day (UTC)",
    "resolution": "resolution",
    "credits_charged": "charged",
    "credits_refunded": "refunded",
    "credits_net": "net",
    "images": "images",
    "items": "items",
    "failures": "failures",
    "credits_per_image": "per image",
}


def _cell(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def audit_table(report: AuditReport) -> Table:
    """A Rich table, the totals in its footer and the items in doubt in its caption."""
    keys = report.query.group_by
    totals = report.totals.metrics()
    table = Table(
        title=Text(_title(report.query)),
        title_justify="left",
        show_footer=True,
        caption=doubt_message(report),
        caption_justify="left",
    )
    # A narrow terminal folds names rather than cutting them with an ellipsis:
    # an audit must never hide which model or batch a figure belongs to.
    for index, key in enumerate(keys):
        longest = max(
            (len(_group_cell(key, row.group[index][1])) for row in report.rows), default=0
        )
        table.add_column(
            _HEADERS[key],
            footer="total" if index == 0 else "",
            overflow="fold",
            min_width=min(max(longest, 5), KEY_MIN_WIDTH),
        )
    for metric in METRICS:
        # Figures are never cut: a column is at least as wide as its widest figure.
        widest = max(
            (len(_cell(row.metrics()[metric])) for row in report.rows),
            default=0,
        )
        footer = _cell(totals[metric])
        table.add_column(
            _HEADERS[metric],
            justify="right",
            footer=footer,
            overflow="fold",
            min_width=max(widest, len(footer), len(_HEADERS[metric])),
        )
    for row in report.rows:
        table.add_row(
            *(_group_cell(key, value) for key, value in row.group),
            *(_cell(value) for value in row.metrics().values()),
        )
    return table


def _group_cell(key: str, value: GroupValue) -> Text:
    if value is None:
        # Only resolution can be NULL: the job set none and the server chose.
        return Text("(server's choice)" if key == "resolution" else "-")
    # Text, not str: a batch named "[red]" is a name, not markup.
    return Text(_plain(value) or "")


def _title(query: AuditQuery) -> str:
    parts = ["credits by " + ", ".join(query.group_by)]
    if query.batch is not None:
        parts.append(f"batch {query.batch}")
    if query.since is not None:
        parts.append(f"from {_iso(query.since)}")
    if query.until is not None:
        parts.append(f"until {_iso(query.until)} (exclusive)")
    return "; ".join(parts)


# --------------------------------------------------------------------------- chart


def check_chart_path(path: Path) -> None:
    """Refuse, before any work, a chart file matplotlib should not guess a format for."""
    if path.suffix.lower() not in CHART_SUFFIXES:
        raise ConfigError(f"--chart: {path} must end in .png or .svg")


def require_matplotlib() -> None:
    """ConfigError (exit 2) naming the extra when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(CHART_INSTALL_HINT) from None


def write_chart(data: ChartData, path: Path, *, title: str) -> None:
    """Net credits per UTC day, stacked by model, as PNG or SVG (from the file's suffix)."""
    check_chart_path(path)
    try:
        # Imported here: matplotlib is an optional extra and slow to import.
        # No pyplot: a bare Figure on the Agg canvas has no global state and
        # never opens a window, whatever the environment says.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError(CHART_INSTALL_HINT) from None

    days = data.days
    width = min(16.0, max(7.0, 0.35 * len(days) + 3.0))
    figure = Figure(figsize=(width, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(days)))
    # Refunds recorded on a later day than their charge make a day's net
    # negative for a model: stack those below zero rather than into the bars.
    above = [0] * len(days)
    below = [0] * len(days)
    for model, values in data.series.items():
        bottoms = [above[i] if value >= 0 else below[i] for i, value in enumerate(values)]
        axes.bar(positions, values, bottom=bottoms, label=model, width=0.8)
        for i, value in enumerate(values):
            if value >= 0:
                above[i] += value
            else:
                below[i] += value
    axes.set_title(title)
    axes.set_xlabel("day (UTC)")
    axes.set_ylabel("net credits (charged - refunded)")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.axhline(0, color="black", linewidth=0.6)
    if days:
        step = max(1, len(days) // 20)  # about 20 labels at most, whatever the span
        shown = positions[::step]
        axes.set_xticks(shown, [days[i].isoformat() for i in shown], rotation=45, ha="right")
        axes.set_xlim(-0.6, len(days) - 0.4)
        # Outside the plot, right of it: never hides a bar, however many models.
        axes.legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        axes.set_xticks([])
        axes.set_yticks([0])
        axes.text(
            0.5,
            0.5,
            "no credits in this window",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    # SVG embeds the time it was made by default; leave it out so that the same
    # ledger gives the same file.
    metadata = {"Date": None} if path.suffix.lower() == ".svg" else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format=path.suffix.lower().lstrip("."), metadata=metadata)
    except OSError as exc:
        raise ConfigError(f"--chart: cannot write {path}: {exc.strerror or exc}") from None


def chart_title(query: AuditQuery) -> str:
    parts = ["Net credits per day by model"]
    if query.batch is not None:
        parts.append(f"batch {query.batch}")
    return " - ".join(parts)
