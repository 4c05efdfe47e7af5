"""`--notify URL`: one message when a batch's run ends, through Apprise
(`slack://...`, `discord://...`, `mailto://...`, `json://host/path`; the
`batcher[notify]` extra).

The message is built here from the run's summary (pure); `send` hands it to
Apprise. A notification that cannot be sent is a warning for the caller: the
run's exit code is the run's, whatever happens to the message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from batcher.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, ConfigError

log = logging.getLogger(__name__)

EXTRA_HINT = "--notify needs Apprise: pip install 'batcher[notify]'"
# Enough for a chat service to answer; a notifier that hangs must not hold the run.
SEND_TIMEOUT_S = 10

_MEANING = {
    EXIT_OK: "every item complete",
    EXIT_FAILURE: "some items failed, are in doubt, or sending stopped",
    EXIT_INTERRUPTED: "interrupted (SIGINT)",
    EXIT_TERMINATED: "terminated (SIGTERM or SIGHUP)",
}


class RunOutcome(Protocol):
    """What a message tells of a run (batcher.run.summary.RunSummary has it)."""

    @property
    def batch(self) -> str: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def items(self) -> int: ...
    @property
    def states(self) -> Mapping[str, int]: ...
    @property
    def credits_charged(self) -> int: ...
    @property
    def credits_refunded(self) -> int: ...
    @property
    def credits_net(self) -> int: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def gallery(self) -> Path | None: ...


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    failed: bool


def message(summary: RunOutcome) -> Message:
    """Batch, exit code, counts, credits and the gallery's path."""
    states = ", ".join(f"{n:,} {state}" for state, n in summary.states.items() if n)
    meaning = _MEANING.get(summary.exit_code, "")
    lines = [
        f"batch: {summary.batch}",
        f"exit code: {summary.exit_code}" + (f" ({meaning})" if meaning else ""),
        f"items: {summary.items:,} ({states or 'none'})",
        f"credits: {summary.credits_net:,} net ({summary.credits_charged:,} charged, "
        f"{summary.credits_refunded:,} refunded)",
        f"duration: {summary.duration_s:,.1f}s",
        f"gallery: {summary.gallery.resolve() if summary.gallery is not None else 'none'}",
    ]
    verdict = "finished" if summary.exit_code == EXIT_OK else f"ended with exit {summary.exit_code}"
    return Message(
        title=f"batcher: batch {summary.batch} {verdict}",
        body="\n".join(lines),
        failed=summary.exit_code != EXIT_OK,
    )


def _apprise() -> Any:
    try:
        import apprise
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    return apprise


def check_urls(urls: Sequence[str]) -> None:
    """Before anything is sent: Apprise is installed and knows every URL (ConfigError)."""
    if not urls:
        return
    apprise = _apprise()
    for url in urls:
        if not apprise.Apprise().add(url):
            # The URL may hold a token: name its scheme only.
            scheme = url.split("://", 1)[0] if "://" in url else url[:12]
            raise ConfigError(f"--notify: Apprise does not accept this URL ({scheme}://...)")


def send(urls: Sequence[str], note: Message) -> str | None:
    """Send `note` to every URL (blocking); None when all took it, else the warning."""
    apprise = _apprise()
    # Apprise logs its failures itself; the caller's warning says it once.
    logging.getLogger("apprise").addHandler(logging.NullHandler())
    logging.getLogger("apprise").propagate = False
    sender = apprise.Apprise()
    for url in urls:
        sender.add(url)
    try:
        sent = sender.notify(
            body=note.body,
            title=note.title,
            notify_type=apprise.NotifyType.FAILURE if note.failed else apprise.NotifyType.SUCCESS,
            timeout=SEND_TIMEOUT_S,
        )
    except Exception as exc:  # whatever a plugin raises, the run is done
        log.debug("notification failed", exc_info=True)
        return f"the notification was not sent: {type(exc).__name__}: {exc}"
    if not sent:
        return f"the notification was not sent to every --notify URL ({len(urls)} given)"
    return None
