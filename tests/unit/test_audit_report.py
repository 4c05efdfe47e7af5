"""The audit report's pure parts: input parsing, JSON/CSV/table shapes, chart data and file."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from batcher.errors import ConfigError
from batcher.ledger import CreditGroup
from batcher.reports import audit, chart
from batcher.terminal.credit_views import audit_table


def report(
    rows: list[CreditGroup],
    group_by: tuple[str, ...],
    *,
    in_doubt: int = 0,
    since: datetime | None = None,
) -> audit.AuditReport:
    totals = CreditGroup(
        (),
        sum(r.credits_charged for r in rows),
        sum(r.credits_refunded for r in rows),
        sum(r.images for r in rows),
        sum(r.items for r in rows),
        sum(r.failures for r in rows),
    )
    query = audit.AuditQuery(since=since, group_by=group_by)
    return audit.AuditReport(
        query=query,
        rows=tuple(audit.AuditRow.from_group(group_by, r) for r in rows),
        totals=audit.AuditRow.from_group((), totals),
        items_in_doubt=in_doubt,
    )


ROWS = [
    CreditGroup(
        ("nightly, products", date(2026, 1, 5), "z-image-turbo"), 12_500, 500, 2400, 2500, 100
    ),
    CreditGroup(("nightly, products", date(2026, 1, 6), "seedream-v4"), 160, 160, 0, 1, 1),
]
KEYS = ("batch", "day", "model")


# --------------------------------------------------------------------------- input


def test_group_keys_are_parsed_in_order_and_deduplicated() -> None:
    assert audit.parse_group_by("batch") == ("batch",)
    assert audit.parse_group_by(" Model, day ,model,") == ("model", "day")
    assert audit.parse_group_by("resolution,batch,day,model") == (
        "resolution",
        "batch",
        "day",
        "model",
    )


@pytest.mark.parametrize("text", ["week", "batch,colour", "", " , "])
def test_unknown_or_missing_group_keys_are_input_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--by") as caught:
        audit.parse_group_by(text)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T18:30", datetime(2026, 1, 31, 18, 30, tzinfo=UTC)),
        ("2026-01-31 18:30:05", datetime(2026, 1, 31, 18, 30, 5, tzinfo=UTC)),
        ("2026-01-31T18:30:00Z", datetime(2026, 1, 31, 18, 30, tzinfo=UTC)),
        ("2026-01-31T18:30:00+02:00", datetime(2026, 1, 31, 16, 30, tzinfo=UTC)),
    ],
)
def test_dates_and_datetimes_become_aware_utc(text: str, moment: datetime) -> None:
    parsed = audit.parse_when(text, "--since")
    assert parsed == moment
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "31/01/2026", ""])
def test_bad_dates_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--until") as caught:
        audit.parse_when(text, "--until")
    assert caught.value.exit_code == 2


def test_since_must_come_before_until() -> None:
    day = datetime(2026, 1, 5, tzinfo=UTC)
    with pytest.raises(ConfigError, match="before --until"):
        audit.AuditQuery(since=day, until=day)


# --------------------------------------------------------------------------- values


def test_credits_per_image_is_net_over_images_or_none() -> None:
    row = audit.AuditRow((), 100, 10, 9, 3, 1)
    assert row.credits_net == 90
    assert row.credits_per_image == 10.0
    assert audit.AuditRow((), 10, 0, 3, 1, 0).credits_per_image == 3.33
    assert audit.AuditRow((), 10, 10, 0, 1, 1).credits_per_image is None


# --------------------------------------------------------------------------- JSON


def test_json_has_the_documented_keys() -> None:
    document = audit.audit_json(report(ROWS, KEYS, in_doubt=3))
    for key in (
        "rows",
        "total_credits_charged",
        "total_credits_refunded",
        "total_credits_net",
        "items_in_doubt",
    ):
        assert key in document
    assert document["total_credits_charged"] == 12_660
    assert document["total_credits_refunded"] == 660
    assert document["total_credits_net"] == 12_000
    assert document["items_in_doubt"] == 3
    first, second = document["rows"]
    assert list(first) == [
        "batch",
        "day",
        "model",
        "credits_charged",
        "credits_refunded",
        "credits_net",
        "images",
        "items",
        "failures",
        "credits_per_image",
    ]
    assert first["day"] == "2026-01-05"
    assert first["credits_per_image"] == 5.0
    assert second["credits_per_image"] is None
    # It survives a round trip through the json module unchanged.
    assert json.loads(json.dumps(document)) == document


def test_json_names_the_window() -> None:
    since = datetime(2026, 1, 5, tzinfo=UTC)
    document = audit.audit_json(report([], ("model",), since=since))
    assert document["rows"] == []
    assert document["since"] == "2026-01-05T00:00:00Z"
    assert document["until"] is None
    assert document["group_by"] == ["model"]
    assert document["total_credits_per_image"] is None


# --------------------------------------------------------------------------- CSV


def test_csv_is_one_header_then_plain_rows() -> None:
    text = audit.audit_csv(report(ROWS, KEYS))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [*KEYS, *audit.METRICS]
    assert len(rows) == 3  # no totals row among the data
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["batch"] == "nightly, products"  # quoted, comma and all
    assert first["day"] == "2026-01-05"
    assert first["credits_charged"] == "12500"  # no thousands separator
    assert first["credits_per_image"] == "5.0"
    second = dict(zip(rows[0], rows[2], strict=True))
    assert second["credits_per_image"] == ""  # blank, not "None"
    for row in rows[1:]:
        for name in ("credits_charged", "credits_refunded", "credits_net", "images"):
            int(row[rows[0].index(name)])


def test_csv_of_nothing_is_just_the_header() -> None:
    assert audit.audit_csv(report([], ("batch",))).splitlines() == [
        ",".join(("batch", *audit.METRICS))
    ]


def test_totals_line_for_stderr() -> None:
    line = audit.totals_line(report(ROWS, KEYS))
    assert "12,660 charged" in line and "660 refunded" in line and "12,000 net" in line


# --------------------------------------------------------------------------- table


def render(table: object) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_table_has_totals_and_the_items_in_doubt() -> None:
    text = render(audit_table(report(ROWS, KEYS, in_doubt=2)))
    assert "day (UTC)" in text
    assert "total" in text and "12,660" in text and "12,000" in text
    assert "2 item(s) are in doubt" in text


def test_table_shows_names_literally_and_an_unset_resolution() -> None:
    rows = [CreditGroup(("[bold]x[/]", None), 5, 0, 1, 1, 0)]
    text = render(audit_table(report(rows, ("batch", "resolution"))))
    assert "[bold]x[/]" in text
    assert "(server's choice)" in text


# --------------------------------------------------------------------------- chart


def test_chart_data_fills_missing_days_and_orders_models_by_spend() -> None:
    groups = [
        CreditGroup((date(2026, 1, 1), "a"), 5, 0, 1, 1, 0),
        CreditGroup((date(2026, 1, 3), "b"), 50, 0, 1, 1, 0),
        CreditGroup((date(2026, 1, 3), "a"), 0, 5, 0, 0, 1),
    ]
    data = chart.chart_data(groups)
    assert data.days == (date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3))
    assert list(data.series) == ["b", "a"]
    assert data.series["a"] == (5, 0, -5)
    assert chart.chart_data([]).days == ()


CHART_GROUPS = [
    CreditGroup((date(2026, 1, 1), "z-image-turbo"), 25, 0, 5, 5, 0),
    CreditGroup((date(2026, 1, 2), "seedream-v4"), 160, 40, 3, 1, 1),
    CreditGroup((date(2026, 1, 4), "z-image-turbo"), 0, 20, 0, 0, 1),  # negative day
]
CHART_DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]


def test_the_chart_draws_each_models_net_per_day_stacked() -> None:
    pytest.importorskip("matplotlib")
    figure = chart.draw_chart(chart.chart_data(CHART_GROUPS), title="Net credits per day by model")
    [axes] = figure.axes
    assert axes.get_title() == "Net credits per day by model"
    assert [label.get_text() for label in axes.get_xticklabels()] == CHART_DAYS
    legend = axes.get_legend()
    assert legend is not None
    # The biggest spender first: the bottom of the stack and the top of the legend.
    assert [text.get_text() for text in legend.get_texts()] == ["seedream-v4", "z-image-turbo"]
    seedream, turbo = axes.containers
    assert [bar.get_height() for bar in seedream] == [0, 120, 0, 0]
    assert [bar.get_height() for bar in turbo] == [25, 0, 0, -20]
    # A day's refund recorded after its charge goes below zero, not into the bars above.
    assert [bar.get_y() for bar in turbo] == [0, 120, 0, 0]


def _pixels_of(image: Any, colour: str) -> int:
    from matplotlib.colors import to_rgb

    wanted = tuple(round(255 * c) for c in to_rgb(colour))
    return sum(
        count
        for count, rgb in image.convert("RGB").getcolors(maxcolors=1 << 20)
        if all(abs(a - b) <= 2 for a, b in zip(rgb, wanted, strict=True))
    )


def test_a_png_chart_shows_a_bar_colour_per_model(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    path = tmp_path / "out" / "credits.png"
    chart.write_chart(chart.chart_data(CHART_GROUPS), path, title="Net credits per day by model")
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (700, 500)  # 7 x 5 inches at 100 dpi: four days fit the minimum
        # The first two colours of matplotlib's cycle: seedream-v4, then z-image-turbo.
        first, second = _pixels_of(image, "C0"), _pixels_of(image, "C1")
    assert first > 1000 and second > 1000, (first, second)
    # seedream's one bar (120) is far taller than z-image-turbo's two (25 and -20).
    assert first > second


def test_an_svg_chart_names_the_days_models_and_title(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "credits.svg"
    chart.write_chart(chart.chart_data(CHART_GROUPS), path, title="Net credits per day by model")
    svg = path.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    for expected in [*CHART_DAYS, "seedream-v4", "z-image-turbo", "Net credits per day by model"]:
        assert expected in texts, expected
    # One bar per model and day: eight patches drawn in the plot area.
    assert len(re.findall(r'<g id="patch_\d+">', svg)) >= 8
    # The same ledger gives the same file: no creation date in it.
    assert "<dc:date>" not in svg


def test_an_empty_chart_is_still_a_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    figure = chart.draw_chart(chart.chart_data([]), title="t")
    [axes] = figure.axes
    assert axes.containers == []
    assert "no credits in this window" in [text.get_text() for text in axes.texts]
    path = tmp_path / "empty.png"
    chart.write_chart(chart.chart_data([]), path, title="t")
    assert path.stat().st_size > 0
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_chart_suffix_must_be_png_or_svg(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.png or \.svg"):
        chart.check_chart_path(tmp_path / "chart.pdf")


def test_missing_matplotlib_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"install batcher\[chart\]") as caught:
        chart.require_matplotlib()
    assert caught.value.exit_code == 2
