"""Which API a run talks to: the real one (key from the environment), another
base URL, or a sandbox started for the run; and whether a batch may follow it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from batcher.client.magic_hour import check_api_config
from batcher.errors import ConfigError
from batcher.ledger import BatchRecord, Ledger
from batcher.run.prepare import require_key
from batcher.run.webhooks import WebhookListen
from batcher.settings import SANDBOX_ENDPOINT, ApiConfig

ENDPOINT_SETTING: Final = "endpoint"


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: ApiConfig
    label: str  # SANDBOX_ENDPOINT or the base URL, as recorded on the batch


@contextlib.contextmanager
def open_endpoint(
    *,
    sandbox: bool,
    base_url: str | None,
    environ: Mapping[str, str] | None,
    on_sandbox: Callable[[str], None] | None = None,
    offers_sandbox: bool = True,
    webhook: WebhookListen | None = None,
) -> Iterator[Endpoint]:
    """The API to talk to. With `sandbox`, an emulator on a free loopback port for
    the duration of the block (no key needed, nothing charged), whose webhook
    points at the run's receiver when `webhook` is given; otherwise the base
    URL (flag over environment over default) and the key, which must be set (the
    message suggests --sandbox only where the command has it: `offers_sandbox`)."""
    if not sandbox:
        api = ApiConfig.from_env(base_url, environ)
        require_key(api, sandbox_hint=offers_sandbox)
        check_api_config(api)
        yield Endpoint(api, api.base_url)
        return
    # Imported here: the emulator pulls in uvicorn, needed only with --sandbox.
    from batcher.sandbox import SandboxConfig, running_sandbox

    config = SandboxConfig()
    if webhook is not None:
        if webhook.port == 0:
            raise ConfigError(
                "--webhook-listen with --sandbox needs a port (not 0): the sandbox is "
                "told where to send its events before the run starts"
            )
        config = SandboxConfig(webhook_url=webhook.url, webhook_secret=webhook.secret)
    with running_sandbox(config) as emulator:
        if on_sandbox is not None:
            on_sandbox(emulator.base_url)
        yield Endpoint(
            ApiConfig(base_url=emulator.base_url, api_key=emulator.key), SANDBOX_ENDPOINT
        )


def check_endpoint(ledger: Ledger, batch: BatchRecord, endpoint: Endpoint) -> str | None:
    """A batch's project ids only mean something to the API that created them.

    Records the endpoint on a batch's first run; refuses to mix the sandbox and a
    real API (ConfigError); returns a warning when the base URL changed.
    """
    recorded = batch.settings.get(ENDPOINT_SETTING)
    label = endpoint.label
    if recorded is None:
        ledger.update_settings(batch.id, {ENDPOINT_SETTING: label})
        return None
    if (recorded == SANDBOX_ENDPOINT) != (label == SANDBOX_ENDPOINT):
        if recorded == SANDBOX_ENDPOINT:
            raise ConfigError(
                f"batch {batch.name!r} was run against the sandbox; add --sandbox "
                "(or use another batch name for the real API)"
            )
        raise ConfigError(
            f"batch {batch.name!r} was run against {recorded}; the sandbox cannot follow "
            "its projects (drop --sandbox)"
        )
    if recorded != label:
        return f"batch {batch.name!r} was started against {recorded}, now {label}"
    return None
