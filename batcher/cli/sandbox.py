"""`batcher sandbox`: serve the local emulator of the Magic Hour API."""

from __future__ import annotations

import sys
from typing import Any

import click

from batcher.errors import ConfigError
from batcher.sandbox import (
    BAD_DOWNLOADS,
    CREATE_GARBLES,
    HONEST,
    IMAGE_FORMATS,
    POLL_GARBLES,
    SANDBOX_KEY,
    SandboxConfig,
    serve,
)
from batcher.sandbox.config import DEFAULT_CREDITS, DEFAULT_TIER, parse_retry_after
from batcher.sandbox.emulator import Emulator
from batcher.terminal import console as output

_DEFAULTS = SandboxConfig()
_RATE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)


def _retry_after(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    try:
        return parse_retry_after(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--host", default=_DEFAULTS.host, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65_535),
    default=_DEFAULTS.port,
    show_default=True,
    help="Port; 0 picks a free one.",
)
@click.option(
    "--key",
    default=SANDBOX_KEY,
    show_default=True,
    help="The bearer key the sandbox accepts (a fake one; never a real API key).",
)
@click.option(
    "--catalog",
    type=click.Path(dir_okay=False),
    envvar="BATCHER_CATALOG",
    help="Model catalog to validate and price against "
    "[env BATCHER_CATALOG; default: the packaged one].",
)
@click.option(
    "--tier",
    default=DEFAULT_TIER,
    show_default=True,
    help="The account's plan: free, creator, pro or business (as in the catalog).",
)
@click.option(
    "--credits",
    type=click.IntRange(min=0),
    default=DEFAULT_CREDITS,
    show_default=True,
    help="Starting balance.",
)
@click.option(
    "--charge-factor",
    type=click.FloatRange(min=0.0, min_open=True),
    default=_DEFAULTS.charge_factor,
    show_default=True,
    help="Charge this many times the catalog price (above 1: more than clients estimate).",
)
@click.option(
    "--render-seconds",
    type=_SECONDS,
    default=_DEFAULTS.render_seconds,
    show_default=True,
    help="How long a render takes.",
)
@click.option(
    "--render-jitter",
    type=_RATE,
    default=_DEFAULTS.render_jitter,
    show_default=True,
    help="Render time varies uniformly by this fraction either way.",
)
@click.option(
    "--render-error-rate",
    type=_RATE,
    default=0.0,
    help="Share of renders that fail and are refunded.",
)
@click.option(
    "--download-ttl",
    type=_SECONDS,
    default=_DEFAULTS.download_ttl,
    show_default=True,
    help="Seconds a download URL stays valid after the GET that issued it.",
)
@click.option("--latency", type=_SECONDS, default=0.0, help="Seconds added to every API request.")
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0.0, min_open=True),
    help="API requests per second over all /v1/ requests (burst as large); beyond: 429.",
)
@click.option(
    "--retry-after",
    is_flag=False,
    flag_value=HONEST,
    default=None,
    callback=_retry_after,
    metavar="[SECONDS]",
    help="Send Retry-After with 429s: SECONDS, or alone for the real time until capacity frees.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=0),
    help="Renders queued or rendering at once; a create beyond it gets 429.",
)
@click.option(
    "--error-rate",
    type=_RATE,
    default=0.0,
    help="Share of creates answered 500/502/503 (nothing created or charged).",
)
@click.option(
    "--poll-error-rate", type=_RATE, default=0.0, help="Share of project GETs answered 5xx."
)
@click.option(
    "--drop-rate",
    type=_RATE,
    default=0.0,
    help="Share of creates that charge and create, then close the connection unanswered.",
)
@click.option(
    "--poll-404-rate",
    type=_RATE,
    default=0.0,
    help="Share of GETs of a known project answered 404 (paid for, not refunded).",
)
@click.option(
    "--surcharge-rate",
    type=_RATE,
    default=0.0,
    help="Share of completed renders whose credits_charged rises 10x on a later GET; "
    "the account is charged the difference.",
)
@click.option(
    "--stuck-rate", type=_RATE, default=0.0, help="Share of renders that stay rendering forever."
)
@click.option(
    "--cancel-rate",
    type=_RATE,
    default=0.0,
    help="Share of renders that end canceled (not refunded).",
)
@click.option(
    "--bad-downloads",
    type=click.Choice(BAD_DOWNLOADS),
    metavar="MODE",
    help="Complete projects with unusable images: empty (downloads: []), short (fewer URLs "
    "than image_count), html (an HTML page, 200), empty-body (200, no bytes), huge "
    "(a body far larger than an image).",
)
@click.option(
    "--bad-download-rate",
    type=_RATE,
    default=_DEFAULTS.bad_download_rate,
    show_default=True,
    help="Share of GETs of complete projects (and webhook payloads) given --bad-downloads.",
)
@click.option(
    "--huge-download-bytes",
    type=click.IntRange(min=0),
    default=_DEFAULTS.huge_download_bytes,
    show_default=True,
    help="Size of a --bad-downloads huge body (streamed, chunked, no Content-Length).",
)
@click.option(
    "--create-garble",
    type=click.Choice(CREATE_GARBLES),
    metavar="MODE",
    help="Creates that charge and create, then answer unusably: non-json, no-id, "
    "no-credits, string-credits, float-credits (5.5), bool-credits, negative-credits, "
    "huge-credits (10**18), status-204, status-302, slow-drip (1 byte every "
    "--drip-seconds), endless (a body without end).",
)
@click.option(
    "--create-garble-rate",
    type=_RATE,
    default=_DEFAULTS.create_garble_rate,
    show_default=True,
    help="Share of accepted creates given --create-garble.",
)
@click.option(
    "--poll-garble",
    type=click.Choice(POLL_GARBLES),
    metavar="MODE",
    help="GETs of projects answered unusably: non-json (an HTML page), unknown-status "
    "(a status no client knows), endless (a body without end), key-echo (a render error "
    "whose message echoes the key, not refunded).",
)
@click.option(
    "--poll-garble-rate",
    type=_RATE,
    default=_DEFAULTS.poll_garble_rate,
    show_default=True,
    help="Share of project GETs given --poll-garble.",
)
@click.option(
    "--drip-seconds",
    type=_SECONDS,
    default=_DEFAULTS.drip_seconds,
    show_default=True,
    help="Seconds between bytes of a slow-drip answer.",
)
@click.option(
    "--image-format",
    type=click.Choice(IMAGE_FORMATS),
    default=_DEFAULTS.image_format,
    show_default=True,
    help="The bytes of downloads (mixed rotates); the URL always ends in .png.",
)
@click.option(
    "--webhook-url",
    metavar="URL",
    help="Send signed image.completed / image.errored events here when each render ends.",
)
@click.option(
    "--webhook-secret",
    metavar="SECRET",
    envvar="MAGIC_HOUR_WEBHOOK_SECRET",
    help="Key of the events' HMAC-SHA256 signatures; required with --webhook-url "
    "[env MAGIC_HOUR_WEBHOOK_SECRET].",
)
@click.option("--webhook-drop-rate", type=_RATE, default=0.0, help="Share of events never sent.")
@click.option(
    "--webhook-duplicate-rate", type=_RATE, default=0.0, help="Share of events sent twice."
)
@click.option(
    "--webhook-foreign-rate",
    type=_RATE,
    default=0.0,
    help="Share of renders that also bring an event for another account's project.",
)
@click.option(
    "--webhook-backoff",
    type=_SECONDS,
    default=_DEFAULTS.webhook_backoff,
    show_default=True,
    help="First retry of a failed delivery after this many seconds, then doubling.",
)
@click.option(
    "--webhook-attempts",
    type=click.IntRange(min=1),
    default=_DEFAULTS.webhook_attempts,
    show_default=True,
    help="Attempts per delivery in all (17 at 1 s doubling span about 18 hours).",
)
@click.option("--seed", type=int, help="Make faults, render times and render errors reproducible.")
def sandbox(**options: Any) -> None:
    """Serve a local emulator of the Magic Hour API.

    It validates, charges and renders like the real API (renders are fake
    images showing their prompt) and can inject faults. The first line on
    stdout is the base URL; point clients at it with MAGIC_HOUR_BASE_URL and
    the key (default "sandbox-key") in MAGIC_HOUR_API_KEY. Stop with Ctrl-C.

    With --webhook-url it POSTs {"type", "payload"} (payload: the project's
    GET shape) when each render ends, signed in magic-hour-event-timestamp and
    magic-hour-event-signature (hex HMAC-SHA256 of "{timestamp}.{body}"), and
    retries a non-2xx answer or a failed connection after 1, 2, 4, 8 s...
    (--webhook-backoff). Canceled renders send image.errored; stuck ones none.

    Every fault and rate below can also be changed while it runs, by its
    setting name (the flag with underscores) through /_sandbox/faults.

    \b
    Inspection (no key needed):
      GET  /_sandbox/journal           every accepted create, its charge and faults
      GET  /_sandbox/stats             request counters, 429s by kind, credits
      GET  /_sandbox/webhooks          every webhook delivery and its attempts
      GET|POST /_sandbox/faults        read or change fault settings (JSON)
      POST /_sandbox/faults/reset      back to the starting settings
      POST /_sandbox/expire-downloads  expire every download URL issued so far
    """
    try:
        config = SandboxConfig(**options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        serve(config, on_ready=_announce)
    except KeyboardInterrupt:  # Ctrl-C is how a sandbox is meant to stop: not an error
        output.note("sandbox: stopped")


def _announce(base_url: str, emulator: Emulator) -> None:
    """The URL first, alone on stdout, for scripts; the rest for humans on stderr."""
    print(base_url, flush=True)
    config = emulator.config
    # The default key is public; any other one the user chose is not repeated.
    key = config.key if config.key == SANDBOX_KEY else "the one given with --key"
    faults = [
        f"{name}={value}"
        for name, value in config.runtime_settings().items()
        if value != getattr(_DEFAULTS, name) and name not in ("tier", "render_seconds")
    ]
    output.note(
        f"sandbox: serving the Magic Hour API at {base_url} (key: {key}; tier {config.tier}; "
        f"{emulator.credits} credits; renders {config.render_seconds:g} s"
        + (f"; {', '.join(faults)}" if faults else "")
        + (f"; seed {config.seed}" if config.seed is not None else "")
        + "). Ctrl-C stops it."
    )
    sys.stderr.flush()


COMMANDS: list[click.Command] = [sandbox]
