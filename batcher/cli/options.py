"""Flags shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from batcher.settings import (
    BASE_URL_ENV,
    DATABASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_DATABASE_URL,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_RENDER_RETRIES,
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
    help="Model catalog file [env BATCHER_CATALOG; default: the packaged one].",
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
        help="Credit cap for the batch's net spend [default: `run`: the job file's "
        "budget; otherwise the batch's current one].",
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
    click.option(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="Serve the account's webhook here during the run (any path, POST); polls "
        "become a fallback for lost events. Needs MAGIC_HOUR_WEBHOOK_SECRET "
        "[env: MAGIC_HOUR_WEBHOOK_SECRET].",
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
