"""The breaker: stop sending when creates keep coming back in doubt.

A create whose answer was lost, garbled (not JSON, no id, 204), or never
finished by its deadline may have been charged, and the ledger cannot tell.
One now and then is the network; several in a row mean the API (or something
in front of it) takes money and gives no receipts. After `limit` of them in a
row, nothing new is sent: creates in flight settle, renders already created
are followed, and the run ends with exit 1 and the reason. Any clear answer
(a project, or an HTTP refusal) resets the count.
"""

from __future__ import annotations

import logging

from batcher.run.state import STOP_DOUBT, RunState
from batcher.settings import DEFAULT_DOUBT_LIMIT

log = logging.getLogger(__name__)


class DoubtBreaker:
    """Counts creates in doubt in a row, across every sender of one run."""

    def __init__(self, state: RunState, limit: int = DEFAULT_DOUBT_LIMIT) -> None:
        self._state = state
        self._limit = limit
        self._in_a_row = 0

    @property
    def in_a_row(self) -> int:
        return self._in_a_row

    def cleared(self) -> None:
        """A create came back with a clear outcome."""
        self._in_a_row = 0

    def in_doubt(self, why: str) -> None:
        """A create came back in doubt (maybe charged, no usable answer)."""
        self._in_a_row += 1
        if self._in_a_row >= self._limit and not self._state.halted():
            self._state.halt(
                STOP_DOUBT,
                f"{self._in_a_row} creates in a row came back in doubt (maybe charged, "
                f"no usable answer; --doubt-limit {self._limit}), the last: {why}",
            )
