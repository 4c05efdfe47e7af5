"""`batcher sandbox`: serve the local emulator of the Magic Hour API."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
