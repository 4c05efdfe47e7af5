"""Who is working on a batch, and whether a worker that stopped beating is dead."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from batcher.ledger import WorkerRecord, utcnow
from batcher.settings import LEASE_S


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """When the process started (Linux clock ticks since boot), to tell a reused pid apart."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: trust kill(0)
    if fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent
    if start_ticks is None:
        return True
    current = process_start_ticks(pid)
    return current is None or current == start_ticks


def new_worker(batch_id: int) -> WorkerRecord:
    now = utcnow()
    pid = os.getpid()
    return WorkerRecord(
        id=uuid.uuid4().hex,
        batch_id=batch_id,
        host=socket.gethostname(),
        pid=pid,
        pid_start=process_start_ticks(pid),
        in_flight=0,
        started_at=now,
        heartbeat_at=now,
        stopped_at=None,
    )


def is_dead(
    worker: WorkerRecord,
    *,
    me: str | None = None,
    now: datetime | None = None,
    lease_s: float = LEASE_S,
    host: str | None = None,
) -> bool:
    """Dead: silent for longer than a lease, or on this host and its process is gone."""
    if worker.id == me or worker.stopped_at is not None:
        return False
    now = now or utcnow()
    if worker.heartbeat_at < now - timedelta(seconds=lease_s):
        return True
    here = host or socket.gethostname()
    return worker.host == here and not process_alive(worker.pid, worker.pid_start)
