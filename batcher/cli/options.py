"""Flags shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from batcher.jobfile.catalog import CATALOG_ENV
from batcher.settings import (
    BASE_URL_ENV,
    DATABASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_CREATE_TIMEOUT,
    DEFAULT_DATABASE_URL,
    DEFAULT_DOUBT_LIMIT,
    DEFAULT_GRACE,
    DEFAULT_LEDGER_HOLD_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_OUTAGE_TOLERANCE,
    DEFAULT_POLL_TIMEOUT,
    DEFAULT_RENDER_RETRIES,
    DEFAULT_RENDER_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
)

F = TypeVar("F", bound=Callable[..., Any])


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes: a whole number, or one with a decimal unit (k, M, G;
    a trailing B is allowed): `500k`, `100M`, `1G`."""

    name = "size"
    _UNITS: ClassVar[dict[str, int]] = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B")
        number, unit = text, ""
        if text and text[-1] in self._UNITS:
            number, unit = text[:-1], text[-1]
        if not number.isdigit() or int(number) < 1:
            self.fail(
                f"{value!r} is not a size in bytes (like 100000000, 500k or 100M)", param, ctx
            )
        return int(number) * self._UNITS[unit]


db_option = click.option(
    "--db",
    "db_url",
    metavar="URL",
    help=f"Ledger database URL [env {DATABASE_URL_ENV}; default {DEFAULT_DATABASE_URL}].",
)
catalog_option = click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help=f"Model catalog file [env {CATALOG_ENV}; default: the packaged one].",
)
base_url_option = click.option(
    "--base-url",
    metavar="URL",
    help=f"API base URL [env {BASE_URL_ENV}; default {DEFAULT_BASE_URL}].",
)

# What `run` and `resume` requeue before sending; a joining `worker` takes the
# batch as it is.
requeue_options = _stack(
    click.option(
        "--resend-unconfirmed",
        is_flag=True,
        help="Re-send items in doubt (sent, answer lost): they may be charged twice.",
    ),
    click.option(
        "--retry-failed",
        is_flag=True,
        help="Also retry items the API refused with a 4xx other than 429.",
    ),
)

# `run --canary N` and `resume --canary N` (batcher.run.canary).
canary_options = _stack(
    click.option(
        "--canary",
        type=click.IntRange(min=1),
        metavar="N",
        help="Send N items first (one of each model, resolution and image count before "
        "any repeat), wait for them, report their cost, then ask before sending the rest.",
    ),
    click.option(
        "--yes",
        is_flag=True,
        help="After a --canary that fits the budget and the balance, send the rest without asking.",
    ),
)

run_options = _stack(
    click.option(
        "--concurrency",
        type=click.IntRange(1, 1024),
        default=DEFAULT_CONCURRENCY,
        show_default=True,
        help="Most requests in flight (a ceiling: 429s lower it).",
    ),
    click.option(
        "--rate",
        type=click.FloatRange(0, min_open=True),
        metavar="N",
        help="Most requests per second (a ceiling) [default: none, adapt to 429s].",
    ),
    click.option(
        "--budget",
        type=click.IntRange(0),
        metavar="CREDITS",
        help="Credit cap for the batch's net spend [default: the job file's budget].",
    ),
    click.option(
        "--out",
        "out_dir",
        # Not file_okay=False: the library refuses a file (and an unwritable
        # folder) itself, in one line, for library callers too.
        type=click.Path(path_type=Path),
        metavar="DIR",
        help="Folder for images and the manifest [default: out/<batch name>/].",
    ),
    click.option("--no-wait", is_flag=True, help="Submit only; do not follow renders."),
    click.option("--no-download", is_flag=True, help="Follow renders but save no images."),
    click.option(
        "--no-metadata",
        is_flag=True,
        help="Save images byte for byte as downloaded: no provenance chunks in PNGs.",
    ),
    click.option(
        "--max-image-bytes",
        type=ByteSize(),
        default=DEFAULT_MAX_IMAGE_BYTES,
        metavar="SIZE",
        help="Refuse a downloaded image larger than this (bytes, or 500k, 100M, 1G); "
        "it is fetched again from fresh URLs, then the item fails [default: 100M].",
    ),
    click.option(
        "--max-body-bytes",
        type=ByteSize(),
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="SIZE",
        help="Read no API answer (create, poll, account) beyond this size; a larger one "
        "counts as garbled: a create is in doubt, a poll is tried again [default: 8 MiB].",
    ),
    click.option(
        "--render-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_RENDER_TIMEOUT,
        metavar="S",
        show_default=True,
        help="Follow a render at most this long; then it is reported and left submitted "
        "for `resume` or `reconcile` to look at again.",
    ),
    click.option(
        "--no-gallery",
        is_flag=True,
        help="Do not refresh the batch's gallery page (out/<batch>/index.html) at the end.",
    ),
    click.option(
        "--render-retries",
        type=click.IntRange(0, 10),
        default=DEFAULT_RENDER_RETRIES,
        show_default=True,
        help="Re-create a render that failed (and was refunded) this many times.",
    ),
    click.option(
        "--ledger-hold",
        type=click.FloatRange(0),
        default=DEFAULT_LEDGER_HOLD_S,
        show_default=True,
        metavar="S",
        help="While the ledger cannot be written, send nothing and hold answers this "
        "long; then save them to a rescue file and exit 1.",
    ),
    click.option(
        "--batch-concurrency",
        type=click.IntRange(0),
        metavar="N",
        help="Requests in flight for the whole batch, shared by all its workers "
        "(stored in the ledger; 0 clears it).",
    ),
    click.option(
        "--batch-rate",
        type=click.FloatRange(0),
        metavar="N",
        help="Requests per second for the whole batch, shared by all its workers "
        "(stored in the ledger; 0 clears it).",
    ),
    # Surviving the night (README, "What survives what").
    click.option(
        "--outage-tolerance",
        type=click.FloatRange(0, min_open=True),
        default=DEFAULT_OUTAGE_TOLERANCE,
        show_default=True,
        metavar="S",
        help="While the API cannot be reached, pause and probe it; stop sending "
        "after this many seconds of continuous outage.",
    ),
    click.option(
        "--stall-timeout",
        type=click.FloatRange(0, min_open=True),
        default=DEFAULT_STALL_TIMEOUT,
        show_default=True,
        metavar="S",
        help="Stop (exit 1) after this many seconds in which no item moved forward.",
    ),
    click.option(
        "--doubt-limit",
        type=click.IntRange(1),
        default=DEFAULT_DOUBT_LIMIT,
        show_default=True,
        metavar="N",
        help="Stop sending after N creates in a row whose outcome is unknown "
        "(answer lost or unusable; maybe charged).",
    ),
    click.option(
        "--create-timeout",
        type=click.FloatRange(0, min_open=True),
        default=DEFAULT_CREATE_TIMEOUT,
        show_default=True,
        metavar="S",
        help="A create's overall deadline; past it, its outcome is in doubt.",
    ),
    click.option(
        "--grace",
        type=click.FloatRange(0),
        default=DEFAULT_GRACE,
        show_default=True,
        metavar="S",
        help="After a first Ctrl-C/SIGTERM, wait this long for creates in flight, "
        "then record them in doubt.",
    ),
    click.option(
        "--poll-timeout",
        type=click.FloatRange(0, min_open=True),
        default=DEFAULT_POLL_TIMEOUT,
        show_default=True,
        metavar="S",
        help="A poll's first read timeout; it follows the latency seen, up to 10x.",
    ),
    click.option(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="Serve the account's webhook here during the run (any path, POST); polls "
        "become a fallback for lost events; the signing secret comes from "
        "[env MAGIC_HOUR_WEBHOOK_SECRET; required with it].",
    ),
    click.option(
        "--no-preflight",
        is_flag=True,
        help="Skip the account check (balance and tier) before sending.",
    ),
    db_option,
    catalog_option,
    base_url_option,
)

max_items_option = click.option(
    "--max-items",
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse a job that makes more than N items (default: the job file's max_items, "
    "else 100,000).",
)

# How a sending command reports (Nightly operations in DESIGN.md): for cron,
# systemd and a monitoring stack.
report_options = _stack(
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON object per batch on stdout when it ends (batch, exit_code, "
        "items, states, credits, times, out, manifest, gallery) instead of the summary.",
    ),
    click.option(
        "--progress-interval",
        type=click.FloatRange(0, min_open=True),
        default=30.0,
        show_default=True,
        metavar="S",
        help="Without a terminal, a progress line on stderr every S seconds.",
    ),
    click.option(
        "--log-file",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Also append every log record, with all its fields, to FILE.",
    ),
    click.option(
        "--metrics-file",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Write Prometheus metrics to FILE at the start, every 15 s and at the end, "
        "atomically (for node_exporter's textfile collector: name it *.prom).",
    ),
    click.option(
        "--notify",
        multiple=True,
        metavar="URL",
        help="Send one message when the run ends to this Apprise URL (slack://, discord://, "
        "mailto://, json://...); repeatable. Needs batcher[notify].",
    ),
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="--log-file's format: text lines, or JSON lines.",
    ),
)
