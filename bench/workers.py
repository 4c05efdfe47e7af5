"""Several `batcher worker` processes on one PostgreSQL batch: creates/s and claim costs (issue 6).

Part 1, throughput: creates/s with 1, 2 and 4 worker processes sharing one
batch of N prompts (default 5,000) on PostgreSQL, against the sandbox at zero
latency and zero render time, each worker with `--no-wait --no-download
--no-preflight --concurrency C` (default 64 each). Every run gets a fresh
database (CREATE DATABASE, dropped afterwards) and a fresh sandbox.

Fairness: the batch and its N items are created before any worker starts,
in this process, with the very code `batcher run` uses for that step
(`service.load_jobs` + `service.prepare_batch`; nothing is sent). Then all
the workers are started at the same instant as identical `batcher worker
NAME` processes, so none gets a head start (a `batcher run` as the first
process would parse the job and insert the items while the others wait, then
start sending alone). creates/s is read from the sandbox's journal, first
create to last, so interpreter start-up and the end of the run (a worker that
finds nothing left sleeps up to 5 s while the others still hold items) are
outside the window. Each run is checked: every prompt created exactly once,
every item `submitted` with its id, one charge row each. Worker counts
alternate in order between rounds; the table shows medians.

Part 2, claim and write costs, in-process against PostgreSQL: drains a fresh
batch of M items (default 3,000) the way a worker does: `Ledger.claim` a page
of pending items, then `Ledger.apply` the group-committed `BeginSend` ops,
then the `Created` ops (keep_claim=False, as with --no-wait), in groups of G.
Reported per item: wall time (what a worker waits: Python, the round trip,
PostgreSQL's work and its commit) and this thread's CPU time (what the
worker's process spends, which competes with its event loop for the GIL).
Page sizes 16, 64, 256 (apply groups of 16), then group sizes 1, 8, 32, 128
(claim pages of 64).

    python bench/workers.py                          # both parts, ~3 minutes on 2 cores
    python bench/workers.py --only throughput --workers 1,2,4 --runs 3
    python bench/workers.py --only claim --pages 16,64,256 --groups 1,8,32,128
    python bench/workers.py --pg postgresql+psycopg://postgres@127.0.0.1:5432

PostgreSQL must be running (`pg_ctlcluster --skip-systemctl-redirect 15 main
start`); the user needs CREATEDB. Databases are named batcher_bench_<pid>_<n>.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (
    Sandbox,
    batcher_argv,
    child_env,
    create_rate,
    journal_times,
    show,
    write_job,
)

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- databases


class Databases:
    """Creates and drops throw-away databases on one PostgreSQL server."""

    def __init__(self, server_url: str) -> None:
        url = make_url(server_url)
        self.server_url = url
        self._admin: dict[str, Any] = {
            "host": url.host or "127.0.0.1",
            "port": url.port or 5432,
            "user": url.username or "postgres",
            "password": url.password,
            "dbname": "postgres",
            "autocommit": True,
        }
        self._count = 0

    def _exec(self, sql: str) -> None:
        with psycopg.connect(**{k: v for k, v in self._admin.items() if v is not None}) as conn:
            conn.execute(sql)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        self._count += 1
        name = f"batcher_bench_{os.getpid()}_{self._count}"
        self._exec(f'DROP DATABASE IF EXISTS "{name}"')
        self._exec(f'CREATE DATABASE "{name}"')
        try:
            yield self.server_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with contextlib.suppress(psycopg.Error):
                self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(db_url: str, job: Path) -> tuple[str, int]:
    """What `batcher run` does before sending: migrations, the batch, its items."""
    from batcher.jobfile.catalog import load_catalog
    from batcher.ledger import Ledger
    from batcher.run import prepare as service

    catalog = load_catalog()
    [spec] = service.load_jobs([job], catalog)
    with Ledger.open(db_url) as ledger:
        prepared = service.prepare_batch(
            ledger, spec, catalog, budget=None, retry_failed=False, resend_unconfirmed=False
        )
    return prepared.batch.name, prepared.batch.id


def postgres_cpu_seconds() -> float:
    """CPU of every process named postgres, reaped backends included (the postmaster's
    cutime/cstime). Approximate: other users of the server count too."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name != "postgres":
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15]) / CLOCK_TICKS
    return total


def proc_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --------------------------------------------------------------------------- part 1


@dataclass
class ThroughputRun:
    workers: int
    rate: float
    wall: float  # spawn to the last worker's exit
    worker_cpu: float  # user+sys of all worker processes
    sandbox_cpu: float
    postgres_cpu: float
    creates: int
    per_worker: list[int] = field(default_factory=list)  # creates made by each worker
    polls: int = 0  # GETs of projects: workers adopting renders the others submitted
    polled_complete: int = 0  # items those polls marked complete


def run_workers(
    dbs: Databases, job: Path, count: int, workers: int, concurrency: int, tmp: Path
) -> tuple[ThroughputRun, str]:
    with dbs.fresh() as db_url, Sandbox(["--render-seconds", "0"]) as sandbox:
        name, _ = prepare(db_url, job)
        run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix=f"w{workers}-"))
        argv = batcher_argv(
            "worker",
            name,
            "--no-wait",
            "--no-download",
            "--no-preflight",
            "--concurrency",
            str(concurrency),
            "--base-url",
            sandbox.base_url,
            "--db",
            db_url,
            "--out",
            str(run_dir / "out"),
        )
        assert sandbox.process is not None
        sandbox_cpu0 = proc_cpu_seconds(sandbox.process.pid)
        pg_cpu0 = postgres_cpu_seconds()
        started = time.time()
        procs = []
        usage_cpu = 0.0
        for index in range(workers):
            err = (run_dir / f"worker-{index}.err").open("w")
            procs.append(
                (
                    subprocess.Popen(
                        argv, cwd=run_dir, env=child_env(), stdout=subprocess.DEVNULL, stderr=err
                    ),
                    err,
                )
            )
        failures = []
        for proc, err in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.close()
            usage_cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                failures.append(proc.returncode)
        ended = time.time()
        sandbox_cpu = proc_cpu_seconds(sandbox.process.pid) - sandbox_cpu0
        pg_cpu = postgres_cpu_seconds() - pg_cpu0
        if failures:
            tail = (run_dir / "worker-0.err").read_text()[-2000:]
            raise RuntimeError(f"{workers} workers: exit codes {failures}\n{tail}")
        journal = sandbox.journal()
        stats = sandbox.stats()
        polls = sum(stats["requests"].get("GET /v1/image-projects/{id}", {}).values())
        polled_complete = check_exactly_once(db_url, journal, count)
        per_worker = [
            creates_sent((run_dir / f"worker-{i}.err").read_text()) for i in range(workers)
        ]
        shutil.rmtree(run_dir, ignore_errors=True)
    return (
        ThroughputRun(
            workers=workers,
            rate=create_rate(journal_times(journal)),
            wall=ended - started,
            worker_cpu=usage_cpu,
            sandbox_cpu=sandbox_cpu,
            postgres_cpu=pg_cpu,
            creates=len(journal),
            per_worker=per_worker,
            polls=polls,
            polled_complete=polled_complete,
        ),
        show(argv, tmp).replace(db_url, "postgresql+psycopg://postgres@127.0.0.1:5432/<fresh db>"),
    )


def check_exactly_once(db_url: str, journal: Sequence[dict[str, Any]], count: int) -> int:
    """Every prompt created once, known to the ledger with one charge; returns how many
    items are `complete` (polled by a worker) rather than `submitted`."""
    from sqlalchemy import create_engine, text

    names = [e["name"] for e in journal]
    if len(names) != count or len(set(names)) != count:
        raise RuntimeError(f"{len(names)} creates for {len(set(names))} names, expected {count}")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            ids = set(
                conn.scalars(
                    # `complete`: a worker that starts while others are sending first polls
                    # the renders they already submitted (see the README), even with --no-wait.
                    text(
                        "SELECT project_id FROM items WHERE state IN ('submitted', 'complete')"
                        " AND project_id IS NOT NULL"
                    )
                )
            )
            charges = set(
                conn.scalars(text("SELECT project_id FROM credit_events WHERE kind = 'charge'"))
            )
            complete = int(
                conn.scalar(text("SELECT count(*) FROM items WHERE state = 'complete'")) or 0
            )
    finally:
        engine.dispose()
    served = {e["id"] for e in journal}
    if not (served == ids == charges):
        raise RuntimeError(
            f"ledger and sandbox disagree: {len(served)} served, {len(ids)} submitted items, "
            f"{len(charges)} charges"
        )
    return complete


SENT_RE = re.compile(r"creates sent this run\s*\W\s*([\d,]+)")


def creates_sent(stderr: str) -> int:
    """A worker's own count, from the summary table it prints on exit."""
    match = SENT_RE.search(stderr)
    return int(match.group(1).replace(",", "")) if match else -1


def part_throughput(args: argparse.Namespace, dbs: Databases, tmp: Path) -> dict[str, Any]:
    job = write_job(tmp, "bench-workers", args.prompts)
    counts = [int(x) for x in args.workers.split(",")]
    runs: list[ThroughputRun] = []
    command = ""
    for round_no in range(args.runs):
        order = counts if round_no % 2 == 0 else list(reversed(counts))
        for workers in order:
            result, command = run_workers(dbs, job, args.prompts, workers, args.concurrency, tmp)
            runs.append(result)
            per = 1e6 / result.creates
            print(
                f"[throughput] round {round_no + 1} {workers} worker(s): "
                f"{result.rate:7.0f} creates/s, wall {result.wall:5.2f} s, CPU per create: "
                f"workers {result.worker_cpu * per:5.0f} us, "
                f"sandbox {result.sandbox_cpu * per:4.0f} us, "
                f"postgres {result.postgres_cpu * per:4.0f} us; "
                f"per worker {result.per_worker}; GETs {result.polls} ({result.polled_complete} "
                f"items completed by them); load {os.getloadavg()[0]:.2f}",
                file=sys.stderr,
                flush=True,
            )
    print()
    print(
        f"Part 1: {args.prompts:,} prompts, sandbox at 0 ms / 0 s renders, "
        f"--concurrency {args.concurrency} per worker, PostgreSQL ledger"
    )
    print(
        "| workers | creates/s median (runs) | vs 1 worker | wall s "
        "| CPU µs/create: workers | sandbox | postgres | GET polls |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(r.rate for r in runs if r.workers == counts[0])
    table = {}
    for workers in counts:
        mine = [r for r in runs if r.workers == workers]
        rate = statistics.median(r.rate for r in mine)
        table[workers] = rate
        print(
            f"| {workers} | **{rate:,.0f}** ({', '.join(f'{r.rate:,.0f}' for r in mine)}) "
            f"| {rate / base:.2f}x | {statistics.median(r.wall for r in mine):.1f} "
            f"| {statistics.median(r.worker_cpu / r.creates * 1e6 for r in mine):,.0f} "
            f"| {statistics.median(r.sandbox_cpu / r.creates * 1e6 for r in mine):,.0f} "
            f"| {statistics.median(r.postgres_cpu / r.creates * 1e6 for r in mine):,.0f} "
            f"| {statistics.median(r.polls for r in mine):,.0f} |"
        )
    print(
        "\nCPU per create is whole-process CPU / creates: it includes each worker's start-up "
        "(interpreter, imports: ~0.7 s of CPU each), so more workers cost more per create at "
        "this batch size. GET polls: a worker that starts after the others have submitted "
        "items first polls those (see bench/README.md)."
    )
    print(f"command (each worker, all started at once): {command}")
    print(
        "batch prepared beforehand in-process with service.load_jobs + service.prepare_batch "
        "(what `batcher run` does before sending); sandbox: "
        + show(Sandbox(["--render-seconds", "0"]).argv)
    )
    return {"runs": [r.__dict__ for r in runs], "median_rate": table}


# --------------------------------------------------------------------------- part 2


@dataclass
class Drain:
    page: int
    group: int
    items: int
    claim_wall: float
    claim_cpu: float
    claims: int
    begin_wall: float
    begin_cpu: float
    created_wall: float
    created_cpu: float
    commits: int


def drain(db_url: str, job: Path, page: int, group: int) -> Drain:
    """Claim every item of a fresh batch page by page; BeginSend then Created per group."""
    from batcher.ledger import BeginSend, Created, Ledger, utcnow
    from batcher.run.liveness import new_worker
    from batcher.settings import LEASE_S

    _, batch_id = prepare(db_url, job)
    result = Drain(page, group, 0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0)
    serial = 0
    with Ledger.open(db_url) as ledger:
        worker = new_worker(batch_id)
        ledger.register_worker(worker)
        while True:
            lease = utcnow() + timedelta(seconds=LEASE_S)
            w0, c0 = time.perf_counter(), time.thread_time()
            items = ledger.claim(
                batch_id, worker.id, states=["pending"], limit=page, lease_until=lease
            )
            w1, c1 = time.perf_counter(), time.thread_time()
            if not items:
                break
            result.claims += 1
            result.claim_wall += w1 - w0
            result.claim_cpu += c1 - c0
            result.items += len(items)
            for start in range(0, len(items), group):
                chunk = items[start : start + group]
                w0, c0 = time.perf_counter(), time.thread_time()
                ok = ledger.apply(
                    [BeginSend(i.id, i.batch_id, worker.id, i.estimate) for i in chunk]
                )
                w1, c1 = time.perf_counter(), time.thread_time()
                if not all(ok):
                    raise RuntimeError("BeginSend refused")
                ops = []
                for item in chunk:
                    serial += 1
                    ops.append(
                        Created(
                            item.id,
                            item.batch_id,
                            f"cbench{serial:020d}",
                            5,
                            item.estimate,
                            keep_claim=False,
                        )
                    )
                ledger.apply(ops)
                w2, c2 = time.perf_counter(), time.thread_time()
                result.begin_wall += w1 - w0
                result.begin_cpu += c1 - c0
                result.created_wall += w2 - w1
                result.created_cpu += c2 - c1
                result.commits += 2
        ledger.stop_worker(worker.id)
    return result


def part_claim(args: argparse.Namespace, dbs: Databases, tmp: Path) -> dict[str, Any]:
    job = write_job(tmp, "bench-claim", args.claim_items)
    pages = [int(x) for x in args.pages.split(",")]
    groups = [int(x) for x in args.groups.split(",")]
    configs = [(page, args.fixed_group) for page in pages]
    configs += [(args.fixed_page, g) for g in groups if (args.fixed_page, g) not in configs]
    results: dict[tuple[int, int], list[Drain]] = {c: [] for c in configs}
    for round_no in range(args.runs):
        order = configs if round_no % 2 == 0 else list(reversed(configs))
        for page, group in order:
            with dbs.fresh() as db_url:
                d = drain(db_url, job, page, group)
            results[(page, group)].append(d)
            per = 1e6 / d.items
            print(
                f"[claim] round {round_no + 1} page {page:3d} group {group:3d}: claim "
                f"{d.claim_wall * per:6.1f} us/item wall ({d.claim_cpu * per:5.1f} CPU), "
                f"BeginSend {d.begin_wall * per:6.1f} ({d.begin_cpu * per:5.1f}), "
                f"Created {d.created_wall * per:6.1f} ({d.created_cpu * per:5.1f})",
                file=sys.stderr,
                flush=True,
            )

    def med(rows: list[Drain], attr: str) -> float:
        return float(statistics.median(getattr(r, attr) / r.items * 1e6 for r in rows))

    print()
    print(
        f"Part 2a: Ledger.claim per item, in-process on PostgreSQL, {args.claim_items:,} "
        f"items drained per run (BeginSend/Created applied in groups of {args.fixed_group} "
        "between claims)"
    )
    print("| page size | claims | claim wall µs/item | claim CPU µs/item | claim wall ms/call |")
    print("|---|---|---|---|---|")
    out: dict[str, Any] = {"claim": {}, "apply": {}}
    for page in pages:
        rows = results[(page, args.fixed_group)]
        per_call = statistics.median(r.claim_wall / r.claims * 1e3 for r in rows)
        print(
            f"| {page} | {rows[0].claims} | **{med(rows, 'claim_wall'):.1f}** "
            f"({', '.join(f'{r.claim_wall / r.items * 1e6:.1f}' for r in rows)}) "
            f"| {med(rows, 'claim_cpu'):.1f} | {per_call:.2f} |"
        )
        out["claim"][page] = {"wall_us": med(rows, "claim_wall"), "cpu_us": med(rows, "claim_cpu")}
    print()
    print(
        f"Part 2b: group-committed Ledger.apply per item (claim pages of {args.fixed_page}): "
        "one commit of G BeginSend ops, then one of G Created ops"
    )
    print(
        "| group size G | BeginSend wall µs/item | BeginSend CPU | Created wall µs/item "
        "| Created CPU | both wall µs/item | both CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for group in groups:
        rows = results[(args.fixed_page, group)]
        bw, bc = med(rows, "begin_wall"), med(rows, "begin_cpu")
        cw, cc = med(rows, "created_wall"), med(rows, "created_cpu")
        cells = f"{bw:.1f} | {bc:.1f} | {cw:.1f} | {cc:.1f} | **{bw + cw:.1f}** | {bc + cc:.1f}"
        print(f"| {group} | {cells} |")
        out["apply"][group] = {
            "begin_wall_us": bw,
            "begin_cpu_us": bc,
            "created_wall_us": cw,
            "created_cpu_us": cc,
        }
    print(
        "\nwall: what the calling thread waits (Python + round trips + PostgreSQL + commit); "
        "CPU: this thread's own CPU (SQLAlchemy, psycopg), which in a worker competes with "
        "the event loop for the GIL."
    )
    return out


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="throughput,claim", help="throughput, claim or both")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL server URL (no database)")
    parser.add_argument("--prompts", type=int, default=5_000, help="part 1 batch size")
    parser.add_argument("--workers", default="1,2,4", help="part 1 worker counts")
    parser.add_argument("--concurrency", type=int, default=64, help="part 1, per worker")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--claim-items", type=int, default=3_000, help="part 2 batch size")
    parser.add_argument("--pages", default="16,64,256", help="part 2a claim page sizes")
    parser.add_argument("--groups", default="1,8,32,128", help="part 2b apply group sizes")
    parser.add_argument("--fixed-group", type=int, default=16, help="apply group size in 2a")
    parser.add_argument("--fixed-page", type=int, default=64, help="claim page size in 2b")
    parser.add_argument("--batcher-command", metavar="CMD", help="instead of 'python -m batcher'")
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.batcher_command:
        import throughput

        throughput.BATCHER_COMMAND[:] = shlex.split(args.batcher_command)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"throughput", "claim"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    dbs = Databases(args.pg)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="batcher-workers-"))
    raw: dict[str, Any] = {}
    try:
        if "throughput" in parts:
            raw["throughput"] = part_throughput(args, dbs, tmp)
        if "claim" in parts:
            raw["claim"] = part_claim(args, dbs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    admin = make_url(args.pg).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    loads = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\nPostgreSQL {version[0] if version else '?'} "
        f"(synchronous_commit={sync[0] if sync else '?'}), runs {args.runs}, "
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, cpus {os.cpu_count()}, "
        f"load average now {loads}, took {time.time() - started:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
