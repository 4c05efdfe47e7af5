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

Layout: config.py (settings), emulator.py (all state and rules, no I/O),
images.py (the PNGs), app.py (raw ASGI), server.py (uvicorn, threads).
"""

from batcher.sandbox.config import HONEST, RUNTIME_FIELDS, SANDBOX_KEY, SandboxConfig
from batcher.sandbox.emulator import Emulator, JournalEntry, SandboxStats
from batcher.sandbox.server import SandboxHandle, running_sandbox, serve

__all__ = [
    "HONEST",
    "RUNTIME_FIELDS",
    "SANDBOX_KEY",
    "Emulator",
    "JournalEntry",
    "SandboxConfig",
    "SandboxHandle",
    "SandboxStats",
    "running_sandbox",
    "serve",
]
