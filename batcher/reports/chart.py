"""The audit's chart: net credits per UTC day, stacked by model, as a PNG or SVG file.

`chart_data` is pure (credit groups in, aligned series out); `draw_chart`
builds a matplotlib Figure from it and `write_chart` saves that Figure.
matplotlib is an optional extra (`batcher[chart]`), imported only here and
only when a chart is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from batcher.errors import ConfigError
from batcher.ledger import CreditGroup

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CHART_GROUPING: Final = ("day", "model")
CHART_SUFFIXES: Final = (".png", ".svg")
CHART_INSTALL_HINT: Final = "the chart needs matplotlib: install batcher[chart]"
MAX_DAY_LABELS: Final = 20


@dataclass(frozen=True, slots=True)
class ChartData:
    """Net credits per UTC day and model, every day of the span present."""

    days: tuple[date, ...]
    series: Mapping[str, tuple[int, ...]]  # model -> net credits per day, aligned with days


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


def chart_title(batch: str | None = None) -> str:
    parts = ["Net credits per day by model"]
    if batch is not None:
        parts.append(f"batch {batch}")
    return " - ".join(parts)


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


def draw_chart(data: ChartData, *, title: str) -> Figure:
    """The chart as a matplotlib Figure, one bar container per model in series order."""
    try:
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
        step = max(1, len(days) // MAX_DAY_LABELS)
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
    return figure


def write_chart(data: ChartData, path: Path, *, title: str) -> None:
    """Net credits per UTC day, stacked by model, as PNG or SVG (from the file's suffix)."""
    check_chart_path(path)
    figure = draw_chart(data, title=title)
    from matplotlib import rc_context

    svg = path.suffix.lower() == ".svg"
    # SVG embeds the time it was made by default; leave it out so that the same
    # ledger gives the same file. Its text stays text (searchable, selectable).
    metadata = {"Date": None} if svg else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with rc_context({"svg.fonttype": "none"}):
            figure.savefig(path, format=path.suffix.lower().lstrip("."), metadata=metadata)
    except OSError as exc:
        raise ConfigError(f"--chart: cannot write {path}: {exc.strerror or exc}") from None
