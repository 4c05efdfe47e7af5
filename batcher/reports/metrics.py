"""`--metrics-file`: a run's figures as Prometheus metrics (DESIGN.md, Nightly
operations), for node_exporter's textfile collector. Pure: values in, a
prometheus_client registry out; batcher.run.metrics_file writes it.

    batcher_items{batch,state}                         items per state (the ledger's)
    batcher_credits{batch,kind}                        charged, refunded, net (the ledger's)
    batcher_creates_total{batch,outcome}               this run's create requests:
                                                       created, in_doubt, not_created
    batcher_polls_total{batch}                         this run's project polls
    batcher_webhook_events_total{batch}                this run's verified webhook events
    batcher_run_duration_seconds{batch}                this run's time so far
    batcher_run_last_exit_code{batch}                  the last finished run's exit code
    batcher_run_last_finished_timestamp_seconds{batch} and when it finished (Unix time)

Items and credits are sums of the ledger, so they equal `status --json` and the
audit; the counters are the process's own, from zero at each run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from batcher.ledger import STATES

CREATE_OUTCOMES = ("created", "in_doubt", "not_created")
CREDIT_KINDS = ("charged", "refunded", "net")


@dataclass(frozen=True, slots=True)
class BatchMetrics:
    """One batch's figures at one moment."""

    batch: str
    states: Mapping[str, int] = field(default_factory=dict)
    credits_charged: int = 0
    credits_refunded: int = 0
    credits_net: int = 0
    creates: Mapping[str, int] = field(default_factory=dict)  # outcome -> requests
    polls: int = 0
    webhook_events: int = 0
    duration_s: float = 0.0
    last_exit_code: int | None = None  # None until a run of the batch has finished
    last_finished_s: float | None = None  # Unix time


def create_outcomes(*, sent: int, created: int, unconfirmed: int) -> dict[str, int]:
    """Create requests by what came of them: a project, an answer lost (in doubt),
    nothing (refused, throttled, a server error, unreachable)."""
    return {
        "created": created,
        "in_doubt": unconfirmed,
        "not_created": max(0, sent - created - unconfirmed),
    }


class _Batches(Collector):
    def __init__(self, batches: Iterable[BatchMetrics]) -> None:
        self._batches = sorted(batches, key=lambda metrics: metrics.batch)

    def collect(self) -> Iterator[Metric]:
        # Families, not Counter/Gauge objects: no `_created` series beside the
        # counters, so the file holds exactly the documented names.
        items = GaugeMetricFamily("batcher_items", "Items per state.", labels=["batch", "state"])
        credits = GaugeMetricFamily(
            "batcher_credits", "Credits charged, refunded and net.", labels=["batch", "kind"]
        )
        creates = CounterMetricFamily(
            "batcher_creates", "Create requests this run, by outcome.", labels=["batch", "outcome"]
        )
        polls = CounterMetricFamily("batcher_polls", "Project polls this run.", labels=["batch"])
        webhooks = CounterMetricFamily(
            "batcher_webhook_events", "Verified webhook events this run.", labels=["batch"]
        )
        duration = GaugeMetricFamily(
            "batcher_run_duration_seconds", "This run's duration so far.", labels=["batch"]
        )
        exit_code = GaugeMetricFamily(
            "batcher_run_last_exit_code", "The last finished run's exit code.", labels=["batch"]
        )
        finished = GaugeMetricFamily(
            "batcher_run_last_finished_timestamp_seconds",
            "When the last run finished (Unix time).",
            labels=["batch"],
        )
        for metrics in self._batches:
            name = metrics.batch
            for state in STATES:
                items.add_metric([name, state], metrics.states.get(state, 0))
            for kind, value in zip(
                CREDIT_KINDS,
                (metrics.credits_charged, metrics.credits_refunded, metrics.credits_net),
                strict=True,
            ):
                credits.add_metric([name, kind], value)
            for outcome in CREATE_OUTCOMES:
                creates.add_metric([name, outcome], metrics.creates.get(outcome, 0))
            polls.add_metric([name], metrics.polls)
            webhooks.add_metric([name], metrics.webhook_events)
            duration.add_metric([name], round(metrics.duration_s, 3))
            if metrics.last_exit_code is not None:
                exit_code.add_metric([name], metrics.last_exit_code)
            if metrics.last_finished_s is not None:
                finished.add_metric([name], round(metrics.last_finished_s, 3))
        yield from (items, credits, creates, polls, webhooks, duration, exit_code, finished)


def registry(batches: Iterable[BatchMetrics]) -> CollectorRegistry:
    """A registry holding the batches' metrics (for `write_to_textfile`)."""
    held = CollectorRegistry(auto_describe=False)
    held.register(_Batches(batches))
    return held


def parse(text: str) -> dict[str, BatchMetrics]:
    """The batches of a metrics file written before (by this module), so that one
    file keeps every batch and a batch's last exit code lasts through the next run."""
    found: dict[str, dict[str, object]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            batch = sample.labels.get("batch")
            if batch is None:
                continue
            fields = found.setdefault(batch, {"states": {}, "creates": {}})
            value = sample.value
            label = sample.labels
            if sample.name == "batcher_items":
                fields["states"][label["state"]] = int(value)  # type: ignore[index]
            elif sample.name == "batcher_credits":
                fields[f"credits_{label['kind']}"] = int(value)
            elif sample.name == "batcher_creates_total":
                fields["creates"][label["outcome"]] = int(value)  # type: ignore[index]
            elif sample.name == "batcher_polls_total":
                fields["polls"] = int(value)
            elif sample.name == "batcher_webhook_events_total":
                fields["webhook_events"] = int(value)
            elif sample.name == "batcher_run_duration_seconds":
                fields["duration_s"] = value
            elif sample.name == "batcher_run_last_exit_code":
                fields["last_exit_code"] = int(value)
            elif sample.name == "batcher_run_last_finished_timestamp_seconds":
                fields["last_finished_s"] = value
    return {batch: BatchMetrics(batch, **fields) for batch, fields in found.items()}  # type: ignore[arg-type]
