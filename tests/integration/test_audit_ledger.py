"""`batcher audit` over a real ledger (a SQLite file, then the real PostgreSQL
server: the day grouping is dialect-specific SQL) holding a known set of
credit rows.

The rows are written through the ledger's own operations (open_batch,
sync_items, claim, apply, record_refund) by a ledger opened with a pinned
clock (`Ledger.open(..., clock=)`), so every row has a known time. Expected
figures come from a tiny reference computation over the same list of events,
and a few are also spelled out.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest

from batcher.errors import ConfigError
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import BeginSend, Created, Ledger, RenderFinished, SendFailed
from batcher.reports import audit


class Clock:
    """The ledger's notion of now, pinned by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Spec:
    batch: str
    key: str
    model: str
    resolution: str | None
    image_count: int


@dataclass(frozen=True)
class Event:
    """One credit row the test writes: a charge or a refund of one project."""

    at: datetime
    item: Spec
    kind: str
    credits: int
    project: str


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


A1 = Spec("alpha", "a1", "z-image-turbo", "1k", 1)
A2 = Spec("alpha", "a2", "z-image-turbo", "2k", 2)
A3 = Spec("alpha", "a3", "seedream-v4", None, 4)
B1 = Spec("beta", "b1", "z-image-turbo", "1k", 1)
B2 = Spec("beta", "b2", "gpt-image-2", "4k", 1)
A_DOUBT = Spec("alpha", "a-doubt", "z-image-turbo", "1k", 1)
B_DOUBT = Spec("beta", "b-doubt", "gpt-image-2", "4k", 1)

EVENTS = (
    Event(at("2026-01-05T10:00:00"), A1, "charge", 5, "p1"),
    Event(at("2026-01-05T23:59:59.999999"), A2, "charge", 20, "p2"),
    # The refund of p2 lands on the next UTC day, at its very first instant.
    Event(at("2026-01-06T00:00:00"), A2, "refund", 20, "p2"),
    Event(at("2026-01-06T00:00:01"), A2, "charge", 20, "p3"),  # a2 re-created
    Event(at("2026-01-06T12:00:00"), A3, "charge", 160, "p4"),
    Event(at("2026-01-07T09:00:00"), B1, "charge", 5, "p5"),
    Event(at("2026-01-07T09:00:00"), B2, "charge", 100, "p6"),
    Event(at("2026-01-07T09:30:00"), B2, "refund", 100, "p6"),
)
DOUBTS = ((at("2026-01-05T11:00:00"), A_DOUBT), (at("2026-01-07T08:00:00"), B_DOUBT))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def library_name(batch: str, item: JobItem) -> str:
    return f"{batch} {item.key}"


def build_ledger(ledger: Ledger, clock: Clock) -> None:
    specs = [A1, A2, A3, B1, B2, A_DOUBT, B_DOUBT]
    batches: dict[str, int] = {}
    items: dict[str, int] = {}
    for name in ("alpha", "beta"):
        batch, _ = ledger.open_batch(name, job_path=None, job_hash=None, budget=None, settings={})
        batches[name] = batch.id
        mine = [s for s in specs if s.batch == name]
        ledger.sync_items(
            batch.id,
            [
                JobItem(
                    n,
                    s.key,
                    f"prompt of {s.key}",
                    ItemSettings(s.model, s.resolution, "1:1", "general", s.image_count),
                    "job.yaml",
                    n + 1,
                )
                for n, s in enumerate(mine)
            ],
            estimate=lambda _s: (5, True),
            project_name=functools.partial(library_name, name),
        )
        lease = clock.now + timedelta(days=30)
        for record in ledger.claim(batch.id, "w", states=["pending"], limit=100, lease_until=lease):
            items[record.key] = record.id

    def send(spec: Spec, when: datetime) -> None:
        clock.now = when
        ok = ledger.apply([BeginSend(items[spec.key], batches[spec.batch], "w", 0)])
        assert ok == [True]

    for event in EVENTS:
        batch_id, item_id = batches[event.item.batch], items[event.item.key]
        if event.kind == "charge":
            send(event.item, event.at)
            ledger.apply(
                [Created(item_id, batch_id, event.project, event.credits, 0, keep_claim=True)]
            )
        elif event.project == "p2":
            # The runner's way: the render failed and the item goes back for another try.
            clock.now = event.at
            ledger.apply(
                [RenderFinished(item_id, batch_id, event.project, "pending", refund=event.credits)]
            )
        else:
            # Reconcile's way.
            clock.now = event.at
            assert ledger.record_refund(batch_id, item_id, event.project, event.credits)
    # Every render not refunded saved all its images: `images` counts images saved.
    refunded = {e.project for e in EVENTS if e.kind == "refund"}
    for event in EVENTS:
        if event.kind == "charge" and event.project not in refunded:
            saved = tuple(f"{event.item.key}-{n}.png" for n in range(event.item.image_count))
            ledger.apply(
                [
                    RenderFinished(
                        items[event.item.key],
                        batches[event.item.batch],
                        event.project,
                        "complete",
                        files=saved,
                    )
                ]
            )
    for when, spec in DOUBTS:
        send(spec, when)
        ledger.apply(
            [SendFailed(items[spec.key], batches[spec.batch], "unconfirmed", 0, message="lost")]
        )


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    """On SQLite and on PostgreSQL (`ledger_url` of tests/conftest.py: the shared
    server fixture, which fails instead of skipping under BATCHER_REQUIRE_POSTGRES=1)."""
    with Ledger.open(ledger_url, clock=clock) as opened:
        build_ledger(opened, clock)
        yield opened


# --------------------------------------------------------------------------- reference


def key_of(event: Event, key: str) -> object:
    if key == "day":
        return event.at.date()
    if key == "batch":
        return event.item.batch
    if key == "model":
        return event.item.model
    return event.item.resolution


def expected(
    group_by: tuple[str, ...], since: datetime | None = None, until: datetime | None = None
) -> dict[tuple[object, ...], dict[str, object]]:
    """The documented definitions, computed the slow and obvious way."""
    chosen = [
        e for e in EVENTS if (since is None or e.at >= since) and (until is None or e.at < until)
    ]
    refunded = {e.project for e in EVENTS if e.kind == "refund"}
    groups: dict[tuple[object, ...], list[Event]] = {}
    for event in chosen:
        groups.setdefault(tuple(key_of(event, k) for k in group_by), []).append(event)
    result: dict[tuple[object, ...], dict[str, object]] = {}
    for keys, events in groups.items():
        charged = sum(e.credits for e in events if e.kind == "charge")
        refunds = sum(e.credits for e in events if e.kind == "refund")
        images = sum(
            e.item.image_count for e in events if e.kind == "charge" and e.project not in refunded
        )
        result[keys] = {
            "credits_charged": charged,
            "credits_refunded": refunds,
            "credits_net": charged - refunds,
            "images": images,
            "items": len({e.item.key for e in events if e.kind == "charge"}),
            "failures": sum(1 for e in events if e.kind == "refund"),
            "credits_per_image": round((charged - refunds) / images, 2) if images else None,
        }
    return result


def actual(report: audit.AuditReport) -> dict[tuple[object, ...], dict[str, object]]:
    return {tuple(value for _, value in row.group): dict(row.metrics()) for row in report.rows}


# --------------------------------------------------------------------------- tests


def test_totals_equal_the_credit_rows(ledger: Ledger) -> None:
    report = audit.build_audit(ledger, audit.AuditQuery())
    charged = sum(e.credits for e in EVENTS if e.kind == "charge")
    refunded = sum(e.credits for e in EVENTS if e.kind == "refund")
    assert (charged, refunded) == (310, 120)
    t = report.totals
    assert (t.credits_charged, t.credits_refunded, t.credits_net) == (310, 120, 190)
    # p1 (1 image), p3 (2), p4 (4), p5 (1): p2 and p6 were refunded.
    assert (t.images, t.items, t.failures) == (8, 5, 2)
    assert t.credits_per_image == round(190 / 8, 2)
    assert report.items_in_doubt == 2
    # The rows add up to the totals.
    assert sum(r.credits_net for r in report.rows) == t.credits_net
    assert sum(r.credits_charged for r in report.rows) == t.credits_charged


def test_default_grouping_is_by_batch_in_creation_order(ledger: Ledger) -> None:
    report = audit.build_audit(ledger, audit.AuditQuery())
    assert [row.group for row in report.rows] == [(("batch", "alpha"),), (("batch", "beta"),)]
    assert actual(report) == expected(("batch",))
    assert actual(report)[("alpha",)] == {
        "credits_charged": 205,
        "credits_refunded": 20,
        "credits_net": 185,
        "images": 7,
        "items": 3,
        "failures": 1,
        "credits_per_image": round(185 / 7, 2),
    }


@pytest.mark.parametrize(
    "group_by",
    [
        ("batch",),
        ("model",),
        ("day",),
        ("resolution",),
        ("batch", "model"),
        ("model", "day"),
        ("batch", "model", "day"),
        ("day", "resolution", "batch", "model"),
    ],
)
def test_every_grouping_matches_the_definitions(ledger: Ledger, group_by: tuple[str, ...]) -> None:
    report = audit.build_audit(ledger, audit.AuditQuery(group_by=group_by))
    assert actual(report) == expected(group_by)
    assert all(tuple(k for k, _ in row.group) == group_by for row in report.rows)


def test_days_are_utc_dates_and_refunds_count_on_their_own_day(ledger: Ledger) -> None:
    report = audit.build_audit(ledger, audit.AuditQuery(group_by=("day",)))
    by_day = actual(report)
    assert list(by_day) == [(date(2026, 1, 5),), (date(2026, 1, 6),), (date(2026, 1, 7),)]
    # p2 was charged on the 5th and refunded at 00:00:00 on the 6th.
    assert by_day[(date(2026, 1, 5),)]["credits_charged"] == 25
    assert by_day[(date(2026, 1, 5),)]["images"] == 1  # p2 delivered nothing
    assert by_day[(date(2026, 1, 6),)]["credits_refunded"] == 20
    assert by_day[(date(2026, 1, 6),)]["failures"] == 1


def test_an_unset_resolution_is_its_own_group(ledger: Ledger) -> None:
    report = audit.build_audit(ledger, audit.AuditQuery(group_by=("resolution",)))
    assert [value for row in report.rows for _, value in row.group] == [None, "1k", "2k", "4k"]


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("2026-01-06", None),  # a date: midnight UTC, inclusive
        (None, "2026-01-06"),  # exclusive: the refund at 00:00:00 is left out
        ("2026-01-05T23:59:59.999999", "2026-01-06T00:00:00.000001"),
        ("2026-01-06T00:00:00", "2026-01-06T00:00:01"),  # exactly the refund
        ("2026-01-06T01:00:00+01:00", "2026-01-07"),  # an offset: the same instant as 00:00Z
        ("2026-01-07T09:00:00", "2026-01-07T09:30:00"),  # charge in, its refund out
        ("2027-01-01", None),  # nothing
    ],
)
def test_date_filters_at_the_boundaries(
    ledger: Ledger, since: str | None, until: str | None
) -> None:
    start = audit.parse_when(since, "--since") if since else None
    end = audit.parse_when(until, "--until") if until else None
    for group_by in (("batch",), ("day", "model")):
        report = audit.build_audit(ledger, audit.AuditQuery(start, end, None, group_by))
        assert actual(report) == expected(group_by, start, end)
        totals = expected((), start, end).get((), None)
        if totals is None:
            assert report.rows == ()
            assert report.totals.credits_charged == report.totals.credits_refunded == 0
            assert report.totals.credits_per_image is None
        else:
            assert report.totals.metrics() == totals


def test_one_refund_exactly_at_since(ledger: Ledger) -> None:
    start = audit.parse_when("2026-01-06", "--since")
    end = audit.parse_when("2026-01-06T00:00:01", "--until")
    report = audit.build_audit(ledger, audit.AuditQuery(start, end))
    assert report.totals.metrics() == {
        "credits_charged": 0,
        "credits_refunded": 20,
        "credits_net": -20,
        "images": 0,
        "items": 0,
        "failures": 1,
        "credits_per_image": None,
    }


def test_batch_filter_and_unknown_batch(ledger: Ledger) -> None:
    report = audit.build_audit(ledger, audit.AuditQuery(batch="beta", group_by=("model",)))
    assert actual(report) == {
        ("gpt-image-2",): {
            "credits_charged": 100,
            "credits_refunded": 100,
            "credits_net": 0,
            "images": 0,
            "items": 1,
            "failures": 1,
            "credits_per_image": None,
        },
        ("z-image-turbo",): {
            "credits_charged": 5,
            "credits_refunded": 0,
            "credits_net": 5,
            "images": 1,
            "items": 1,
            "failures": 0,
            "credits_per_image": 5.0,
        },
    }
    assert report.items_in_doubt == 1
    with pytest.raises(ConfigError, match="no batch named 'gamma'"):
        audit.build_audit(ledger, audit.AuditQuery(batch="gamma"))


def test_items_in_doubt_follow_the_window(ledger: Ledger) -> None:
    since = audit.parse_when("2026-01-06", "--since")
    assert audit.build_audit(ledger, audit.AuditQuery(since=since)).items_in_doubt == 1
    until = audit.parse_when("2026-01-06", "--until")
    assert audit.build_audit(ledger, audit.AuditQuery(until=until)).items_in_doubt == 1


def test_chart_data_is_net_per_day_and_model(ledger: Ledger) -> None:
    data = audit.build_audit(ledger, audit.AuditQuery(), chart=True).chart
    assert data is not None
    assert data.days == (date(2026, 1, 5), date(2026, 1, 6), date(2026, 1, 7))
    assert dict(data.series) == {
        "seedream-v4": (0, 160, 0),
        "z-image-turbo": (25, 0, 5),
        "gpt-image-2": (0, 0, 0),
    }


def test_an_empty_ledger_reports_zeros(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as empty:
        report = audit.build_audit(empty, audit.AuditQuery(group_by=("batch", "day")))
    assert report.rows == ()
    assert report.totals.metrics()["credits_net"] == 0
    assert report.items_in_doubt == 0


def test_images_count_files_saved_whatever_the_files_column_holds(
    ledger_url: str, clock: Clock
) -> None:
    """A failed item's files may be SQL NULL or a JSON null: neither breaks the sum."""
    with Ledger.open(ledger_url, clock=clock) as ledger:
        batch, _ = ledger.open_batch(
            "gamma", job_path=None, job_hash=None, budget=None, settings={}
        )
        specs = [Spec("gamma", f"g{n}", "z-image-turbo", "1k", 2) for n in range(3)]
        ledger.sync_items(
            batch.id,
            [
                JobItem(
                    n,
                    s.key,
                    f"prompt of {s.key}",
                    ItemSettings(s.model, s.resolution, "1:1", "general", s.image_count),
                    "job.yaml",
                    n + 1,
                )
                for n, s in enumerate(specs)
            ],
            estimate=lambda _s: (5, True),
            project_name=functools.partial(library_name, "gamma"),
        )
        lease = clock.now + timedelta(days=30)
        claimed = ledger.claim(batch.id, "w", states=["pending"], limit=10, lease_until=lease)
        for n, record in enumerate(claimed):
            assert ledger.apply([BeginSend(record.id, batch.id, "w", 0)]) == [True]
            ledger.apply([Created(record.id, batch.id, f"g-p{n}", 10, 0, keep_claim=True)])
        first, second, _third = claimed  # the third is still rendering: files SQL NULL
        ledger.apply([RenderFinished(first.id, batch.id, "g-p0", "complete", files=("a.png",))])
        ledger.apply([RenderFinished(second.id, batch.id, "g-p1", "failed", files=None)])
        totals = audit.build_audit(ledger, audit.AuditQuery()).totals
    assert (totals.images, totals.items, totals.credits_charged) == (1, 3, 30)
