"""The keyword arguments of the sending calls (`batcher.run`, `resume`, `worker`,
`rerun`), declared once.

Each setting is a field of `SendSettings` (what the run does) or of `Context`
(where it reads and writes). The library's functions take them as `**settings`
typed by these dicts, so a new flag is added here and in `SendSettings`, not
in every function of the API; `split()` turns them back into the two values
and refuses a keyword that the call does not take, as a plain signature would.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from batcher.run.observer import RunObserver
    from batcher.run.session import Context, SendSettings

PathLike = str | os.PathLike[str]


class WhereArgs(TypedDict, total=False):
    """Where a call reads and writes, flag over environment over default."""

    db: str | None  # the ledger's URL (BATCHER_DATABASE_URL, else sqlite:///batcher.db)
    catalog: PathLike | None  # the model catalog (BATCHER_CATALOG, else the packaged one)
    base_url: str | None  # the API (MAGIC_HOUR_BASE_URL, else https://api.magichour.ai)
    env: Mapping[str, str] | None  # the environment to read (default os.environ)
    observer: RunObserver | None  # progress and notes for the caller; none by default
    handle_signals: bool  # the first SIGINT/SIGTERM/SIGHUP stops sending (main thread only)


class WorkerArgs(WhereArgs, total=False):
    """The settings of a worker joining a batch as it is (`worker`, `rerun`)."""

    concurrency: int  # requests in flight at most (8)
    rate: float | None  # requests per second at most (none: adapt to 429s)
    budget: int | None  # credits this batch may spend at most
    out: PathLike | None  # the output folder (out/<batch>/)
    wait: bool  # follow renders to the end (False: --no-wait)
    download: bool  # save the images (False: --no-download)
    metadata: bool  # provenance chunks in PNGs (False: --no-metadata)
    max_image_bytes: int  # the cap on one downloaded image
    max_body_bytes: int  # the cap on one API answer (create, poll, account)
    render_timeout: float  # seconds a render may take; then reported, left submitted
    gallery: bool  # refresh out/<batch>/index.html at the end (False: --no-gallery)
    render_retries: int  # re-creates of a render that failed and was refunded (1)
    batch_concurrency: int | None  # a ceiling shared by every worker of the batch
    batch_rate: float | None  # a rate shared by every worker of the batch
    preflight: bool  # check the account's balance before sending
    # Surviving the night (README, "What survives what"):
    outage_tolerance: float  # seconds the API may be unreachable before sending stops
    stall_timeout: float  # seconds without progress before the run stops
    doubt_limit: int  # consecutive creates in doubt before sending stops (the breaker)
    create_timeout: float  # a create's overall deadline, seconds (then in doubt)
    grace: float  # seconds after the first signal before creates in flight are given up
    poll_timeout: float  # the floor of a poll's read timeout, seconds
    ledger_hold: float  # seconds to wait for a ledger that cannot commit, then rescue
    # HOST:PORT: serve the account's webhook during the run, with its secret from
    # MAGIC_HOUR_WEBHOOK_SECRET; polls become the fallback for lost events.
    webhook_listen: str | None
    # Reports for cron and monitoring:
    metrics_file: PathLike | None  # Prometheus text, rewritten every 15 s and at the end
    notify: Sequence[str]  # Apprise URLs told once when the run ends


class RunArgs(WorkerArgs, total=False):
    """The settings of `run` and `resume`: a worker's, what they requeue first,
    and the canary (a worker joins a batch already under way)."""

    resend_unconfirmed: bool  # re-send items in doubt (may pay twice)
    retry_failed: bool  # re-send items the API refused with a 4xx
    canary: int | None  # send this many items first, report, then ask (`yes`)
    yes: bool  # after a canary that fits the budget and balance, go on without asking


_WHERE = frozenset(WhereArgs.__annotations__)
_JOIN = frozenset(WorkerArgs.__annotations__) | _WHERE
_SEND = frozenset(RunArgs.__annotations__) | _JOIN


def split(
    call: str, settings: Mapping[str, Any], *, joining: bool = False
) -> tuple[SendSettings, Context]:
    """`settings` as given to `call` -> what the run does, and where."""
    from batcher.run.session import Context, SendSettings

    allowed = _JOIN if joining else _SEND
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise TypeError(f"{call}() got unexpected keyword argument(s): {', '.join(unknown)}")
    send = {key: value for key, value in settings.items() if key not in _WHERE}
    listen = send.pop("webhook_listen", None)
    if listen is not None:
        from batcher.run.webhooks import webhook_settings

        env = settings.get("env")
        send["webhook"] = webhook_settings(listen, os.environ if env is None else env)
    for name in ("out", "metrics_file"):
        if send.get(name) is not None:
            send[name] = Path(send[name])
    if isinstance(send.get("notify"), str):
        send["notify"] = (send["notify"],)
    elif "notify" in send:
        send["notify"] = tuple(send["notify"])
    names = {field.name for field in dataclasses.fields(SendSettings)}
    assert set(send) <= names, set(send) - names  # the dicts above follow SendSettings
    context = Context.resolve(
        db=settings.get("db"),
        catalog=settings.get("catalog"),
        base_url=settings.get("base_url"),
        environ=settings.get("env"),
        observer=settings.get("observer"),
        handle_signals=settings.get("handle_signals", True),
    )
    return SendSettings(**send), context
