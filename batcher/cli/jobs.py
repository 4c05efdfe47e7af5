"""`batcher validate` and `batcher plan`."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
