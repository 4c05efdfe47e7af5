"""A faithful local emulator of the Magic Hour API (issue 3).

`batcher sandbox` serves it in the foreground; tests and `batcher run
--sandbox` start one in-process:

    with running_sandbox(SandboxConfig(render_seconds=0.05)) as sandbox:
        client = httpx.Client(
            base_url=sandbox.base_url,
            headers={"Authorization": f"Bearer {sandbox.key}"},
        )
        ...
        assert sandbox.journal()[0].credits_charged == 5

Layout: config.py (settings), clock.py (real and manual time), emulator.py
(all state and rules, no I/O), replies.py (answers as values), faults.py
(the hostile answers), webhooks.py (events, signatures, the delivery books),
images.py (the images), app.py (raw ASGI), scheduler.py (render ends and
webhook sending, in the server's loop), server.py (uvicorn, threads).
"""

from batcher.sandbox.clock import Clock, ManualClock, SystemClock
from batcher.sandbox.config import (
    BAD_DOWNLOADS,
    CREATE_GARBLES,
    HONEST,
    IMAGE_FORMATS,
    POLL_GARBLES,
    RUNTIME_FIELDS,
    SANDBOX_KEY,
    SandboxConfig,
)
from batcher.sandbox.emulator import Emulator, JournalEntry, SandboxStats
from batcher.sandbox.server import SandboxHandle, running_sandbox, serve
from batcher.sandbox.webhooks import WebhookAttempt, WebhookDelivery, sign

__all__ = [
    "BAD_DOWNLOADS",
    "CREATE_GARBLES",
    "HONEST",
    "IMAGE_FORMATS",
    "POLL_GARBLES",
    "RUNTIME_FIELDS",
    "SANDBOX_KEY",
    "Clock",
    "Emulator",
    "JournalEntry",
    "ManualClock",
    "SandboxConfig",
    "SandboxHandle",
    "SandboxStats",
    "SystemClock",
    "WebhookAttempt",
    "WebhookDelivery",
    "running_sandbox",
    "serve",
    "sign",
]
