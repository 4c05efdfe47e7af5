"""batcher.reports.metrics: the figures as Prometheus text, and read back."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batcher.ledger import STATES
from batcher.reports.metrics import BatchMetrics, create_outcomes, parse, registry

NIGHTLY = BatchMetrics(
    batch="nightly",
    states={"complete": 1535, "failed": 2},
    credits_charged=7700,
    credits_refunded=20,
    credits_net=7680,
    creates=create_outcomes(sent=1540, created=1537, unconfirmed=1),
    polls=3000,
    webhook_events=12,
    duration_s=61.5,
    last_exit_code=1,
    last_finished_s=1767582000.5,
)


def test_exactly_the_documented_names_and_labels() -> None:
    text = generate_latest(registry([NIGHTLY])).decode()
    names = {sample.name for family in text_string_to_metric_families(text)
             for sample in family.samples}  # fmt: skip
    assert names == {
        "batcher_items", "batcher_credits", "batcher_creates_total", "batcher_polls_total",
        "batcher_webhook_events_total", "batcher_run_duration_seconds",
        "batcher_run_last_exit_code", "batcher_run_last_finished_timestamp_seconds",
    }  # fmt: skip
    assert 'batcher_items{batch="nightly",state="complete"} 1535.0' in text
    assert 'batcher_items{batch="nightly",state="pending"} 0.0' in text
    assert 'batcher_credits{batch="nightly",kind="net"} 7680.0' in text
    assert 'batcher_creates_total{batch="nightly",outcome="not_created"} 2.0' in text
    assert 'batcher_webhook_events_total{batch="nightly"} 12.0' in text


def test_no_exit_code_before_a_run_has_finished() -> None:
    running = BatchMetrics(batch="b", states={"pending": 3})
    text = generate_latest(registry([running])).decode()
    assert "batcher_run_last_exit_code{" not in text
    assert "batcher_run_last_finished_timestamp_seconds{" not in text


def all_states(**counts: int) -> dict[str, int]:
    return {state: counts.get(state, 0) for state in STATES}


def test_a_written_file_reads_back() -> None:
    other = BatchMetrics(batch='odd "name"', states={"pending": 1})
    text = generate_latest(registry([NIGHTLY, other])).decode()
    read = parse(text)
    assert read["nightly"] == replace(NIGHTLY, states=all_states(complete=1535, failed=2))
    assert read['odd "name"'] == replace(
        other,
        states=all_states(pending=1),
        creates={"created": 0, "in_doubt": 0, "not_created": 0},
    )
