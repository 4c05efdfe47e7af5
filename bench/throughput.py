"""Throughput, adaptivity, memory and resume time of `batcher run`, end to end (issue 4).

Every figure comes from real `batcher` processes talking HTTP to the sandbox
(`batcher sandbox --port 0 ...`), each in its own subprocess; a fresh sandbox
and a fresh SQLite ledger serve every run, so no run inherits another's state.
Runs of the things compared alternate (A B, B A, ...) so slow drift on a noisy
machine spreads evenly; the table shows medians.

Scenarios (``--only 1,3`` picks some):

1. Zero latency, zero render time: creates/s of
   ``batcher run JOB --no-wait --no-preflight --no-download --concurrency 64``
   against a lean reference client written here (one bare ``httpx.AsyncClient()``
   with default limits, 64 anyio workers, no ledger, the same request bodies).
   Target: batcher / reference >= 1.0, with every item recorded in the ledger.
2. 50 ms per request: batcher's creates/s against the in-flight ceiling
   64 / 0.05 s = 1,280/s. Target >= 85 % of it. (The reference client runs too,
   for context; it has no target.)
3. Renders of 2 s +- 20 %, sandbox ``--max-in-flight 16``, batcher told only
   ``--concurrency 64`` (it must find the cap from 429s), following renders
   with ``--no-download``: makespan against the ideal N / 16 x 2 s; 429s and GET
   polls per item from the sandbox's counters. Targets: makespan <= 1.1 x
   ideal, <= 3 polls per item.
4. Peak RSS of a 100,000-prompt ``run --no-wait --no-download`` (target
   < 400 MB), and how long ``resume`` takes to find the remaining work of a
   100,000-item batch that is 99 % complete (target < 2 s): from process start
   to its first create at the sandbox, and, separately, in-process, the time of
   ``service.resume_batch`` plus the first ``Ledger.claim``.

How things are measured:

* creates/s: from the sandbox's journal, the accept times of that run's
  creates, first to last: (N - 1) / (t_last - t_first). Start-up (imports,
  job parsing, ledger creation) and shut-down are outside that window, for
  batcher and the reference alike. Journal times have millisecond resolution.
* makespan (3): the batcher process's exit (wall clock, seen by the wrapper)
  minus the journal time of the first create. Process start-up (spawn to first
  create) is reported apart and is not in the makespan. The time the last
  render finished on the server (sampled from /_sandbox/stats every 50 ms:
  in_flight back to 0 after the last create) is shown too, so the gap between
  a render ending and batcher noticing it and exiting is visible, and so is
  the mean share of the sandbox's 16 render slots that were busy.
* peak memory: ru_maxrss of the batcher child, read by a ~10 MB wrapper
  interpreter that spawns it and waits for it (see WRAPPER: a child spawned
  straight from this script would be charged this script's own RSS).
* the ledger check (1, 2, 4): after the process exits, every project id the
  sandbox handed out is an item of the SQLite ledger in `submitted` with that
  id and one charge row, and nothing else is.
* resume: spawn time to the journal time of its first create; in-process
  figures come from a helper subprocess (this file, ``--resume-probe``) that
  makes the same ledger calls the CLI makes before its first create, on a
  copy of the same ledger, and times each.

    python bench/throughput.py                 # everything, ~10 minutes on 2 cores
    python bench/throughput.py --quick         # small sizes, one run each: a smoke test
    python bench/throughput.py --only 1,2 --runs 5
    python bench/throughput.py --only 4 --json results.json
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
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

SANDBOX_KEY = "sandbox-key"
CONCURRENCY = 64
LATENCY_S = 0.05
RENDER_S = 2.0
MAX_IN_FLIGHT = 16
DEFAULTS = {
    "model": "z-image-turbo",
    "resolution": "1k",
    "aspect_ratio": "16:9",
    "tool": "general",
    "image_count": 1,
}
CREATE_ROUTE = "POST /v1/ai-image-generator"
POLL_ROUTE = "GET /v1/image-projects/{id}"

# Targets.
TARGET_RATIO = 1.0
TARGET_CEILING_SHARE = 0.85
TARGET_MAKESPAN_FACTOR = 1.1
TARGET_POLLS_PER_ITEM = 3.0
TARGET_RSS_MB = 400.0
TARGET_RESUME_S = 2.0

# Default sizes, and the --quick ones.
SIZES = {"s1": 5_000, "s2": 3_000, "s3": 500, "s4": 100_000}
QUICK_SIZES = {"s1": 1_000, "s2": 600, "s3": 100, "s4": 10_000}
RESUME_DONE_SHARE = 0.99


# --------------------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """The environment of every batcher child: no stray settings, the sandbox key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGIC_HOUR_", "BATCHER_"))}
    env["MAGIC_HOUR_API_KEY"] = SANDBOX_KEY
    return env


# How the measured batcher processes are started; --batcher-command replaces it (to
# measure another checkout's interpreter, or an instrumented wrapper) but never the
# sandbox, which always runs as `python -m batcher sandbox` from this environment.
BATCHER_COMMAND: list[str] = [sys.executable, "-m", "batcher"]


def batcher_argv(*args: str) -> list[str]:
    return [*BATCHER_COMMAND, *args]


def show(argv: Sequence[str], tmp: Path | None = None) -> str:
    """A command line for the report: the interpreter as `python`, temp paths as <tmp>."""
    words = list(argv)
    if words and words[0] == sys.executable:
        words[0] = "python"
    text = re.sub(r"http://127\.0\.0\.1:\d+", "<sandbox URL>", shlex.join(words))
    if tmp is not None:
        text = text.replace(str(tmp), "<tmp>")
    return text


@dataclass
class Child:
    """A finished child process, as this script saw it."""

    argv: list[str]
    started: float  # wall clock just before the spawn
    ended: float  # wall clock just after it was reaped
    returncode: int
    maxrss_mb: float  # peak resident set of that child (ru_maxrss, see WRAPPER)
    cpu_s: float  # user + system CPU of that child
    stderr: str

    @property
    def wall(self) -> float:
        return self.ended - self.started


# A child's ru_maxrss is not only its own: Linux charges it the RSS of the process it
# was forked (vforked) from, up to its exec. Spawned straight from this script, a
# batcher child would report at least this script's RSS (hundreds of MB once it has
# read a 100,000-entry journal). So every measured child is started by this tiny
# wrapper, a fresh interpreter of ~10 MB, which reports its child's rusage and the
# wall-clock times just before the spawn and just after the reap.
WRAPPER = """
import json, os, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.time()
child = subprocess.Popen(argv)
_, status, usage = os.wait4(child.pid, 0)
ended = time.time()
with open(out, "w") as f:
    json.dump({"started": started, "ended": ended, "code": os.waitstatus_to_exitcode(status),
               "maxrss_kb": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime}, f)
"""


def run_child(
    argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> Child:
    """Run to completion through WRAPPER; its rusage is that child's alone."""
    stamp = time.monotonic_ns()
    err_path = cwd / f"stderr-{stamp}.txt"
    out_path = cwd / f"rusage-{stamp}.json"
    with err_path.open("w") as err:
        wrapper = subprocess.Popen(
            [sys.executable, "-S", "-c", WRAPPER, str(out_path), *argv],
            cwd=cwd,
            env=env or child_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            wrapper.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
            raise RuntimeError(f"timed out after {timeout:.0f} s: {show(argv)}") from None
    stderr = err_path.read_text(errors="replace")
    if not out_path.exists():
        raise RuntimeError(f"the wrapper failed ({wrapper.returncode}): {stderr[-2000:]}")
    usage = json.loads(out_path.read_text())
    return Child(
        argv=argv,
        started=usage["started"],
        ended=usage["ended"],
        returncode=usage["code"],
        maxrss_mb=usage["maxrss_kb"] / 1024,
        cpu_s=usage["cpu"],
        stderr=stderr,
    )


class Sandbox:
    """`batcher sandbox --port 0 ...` in a subprocess; inspection over HTTP."""

    def __init__(self, flags: Sequence[str]) -> None:
        self.argv = [
            sys.executable, "-m", "batcher", "sandbox", "--port", "0",
            "--credits", "1000000000", *flags,
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Sandbox:
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_env(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.__exit__()
            raise RuntimeError(f"the sandbox did not print its URL (got {line!r})")
        self.base_url = line
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.base_url}/_sandbox/stats", timeout=60).json()
        return data

    def journal(self) -> list[dict[str, Any]]:
        data = httpx.get(f"{self.base_url}/_sandbox/journal", timeout=300).json()
        entries: list[dict[str, Any]] = data["entries"]
        return entries


def journal_times(entries: Sequence[dict[str, Any]]) -> list[float]:
    """Accept times of creates, wall clock seconds, sorted."""
    return sorted(
        datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() for e in entries
    )


def create_rate(times: Sequence[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


# --------------------------------------------------------------------------- jobs


def write_job(folder: Path, name: str, count: int) -> Path:
    """A job of `count` distinct prompts under the same defaults, inline in the YAML."""
    document = {
        "name": name,
        "defaults": DEFAULTS,
        "prompts": [
            f"bench prompt number {i}, a red bicycle on a beach at dawn" for i in range(count)
        ],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    return path


def bodies_of(job: Path) -> list[dict[str, Any]]:
    """The create bodies batcher sends for this job, built with batcher's own code."""
    from batcher.client.body import create_body
    from batcher.jobfile.catalog import load_catalog
    from batcher.jobfile.items import project_name
    from batcher.jobfile.loader import load_job

    spec = load_job(job, load_catalog())
    return [
        create_body(item.prompt, item.settings, project_name(spec.name, item.key, item.settings))
        for item in spec.items()
    ]


def ledger_check(db: Path, journal: Sequence[dict[str, Any]], *, state: str) -> str:
    """Every create the sandbox accepted is an item in `state` with its id and a charge row."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        ids = {
            row[0]
            for row in conn.execute(
                "SELECT project_id FROM items WHERE state = ? AND project_id IS NOT NULL", (state,)
            )
        }
        charged = {
            row[0]
            for row in conn.execute("SELECT project_id FROM credit_events WHERE kind='charge'")
        }
    served = {e["id"] for e in journal}
    if served == ids == charged:
        return f"ok ({len(ids)} ids)"
    return (
        f"MISMATCH: sandbox {len(served)}, ledger items {len(ids)} "
        f"({len(served - ids)} missing), charge rows {len(charged)}"
    )


# --------------------------------------------------------------------------- the reference client


def reference_client(base_url: str, bodies_path: Path, workers: int) -> int:
    """64 anyio workers over one bare httpx.AsyncClient(): no ledger, no retry, no limiter."""
    import anyio

    bodies: list[dict[str, Any]] = json.loads(bodies_path.read_text())
    failures = 0

    async def main() -> None:
        nonlocal failures
        url = base_url + "/v1/ai-image-generator"
        headers = {"Authorization": f"Bearer {SANDBOX_KEY}"}
        queue = iter(bodies)
        async with httpx.AsyncClient(headers=headers) as client:

            async def worker() -> None:
                nonlocal failures
                for body in queue:
                    response = await client.post(url, json=body)
                    if response.status_code != 200:
                        failures += 1
                    else:
                        response.json()["id"]

            async with anyio.create_task_group() as tasks:
                for _ in range(workers):
                    tasks.start_soon(worker)

    anyio.run(main)
    return 1 if failures else 0


# --------------------------------------------------------------------------- scenario results


@dataclass
class Figure:
    """One line of the final table."""

    scenario: str
    name: str
    values: list[float]
    unit: str
    target: str = ""
    passed: bool | None = None  # None: no target
    digits: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cell(self) -> str:
        fmt = f"{{:,.{self.digits}f}}"
        runs = ", ".join(fmt.format(v) for v in self.values)
        main = fmt.format(self.median)
        return f"{main} {self.unit}".strip() + (f" ({runs})" if len(self.values) > 1 else "")


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail_child(what: str, child: Child) -> RuntimeError:
    tail = "\n".join(child.stderr.strip().splitlines()[-15:])
    return RuntimeError(f"{what} exited {child.returncode}:\n{tail}")


# --------------------------------------------------------------------------- scenarios 1 and 2


def creates_scenario(
    report: Report,
    *,
    label: str,
    sandbox_flags: list[str],
    count: int,
    runs: int,
    tmp: Path,
) -> tuple[list[float], list[float]]:
    """Alternate batcher and the reference client on fresh sandboxes; creates/s of each."""
    job = write_job(tmp, f"bench-{label}", count)
    bodies_path = tmp / f"bodies-{label}.json"
    bodies_path.write_text(json.dumps(bodies_of(job)))
    rates: dict[str, list[float]] = {"batcher": [], "reference": []}
    for round_no in range(runs):
        order = ["batcher", "reference"] if round_no % 2 == 0 else ["reference", "batcher"]
        for who in order:
            with Sandbox(sandbox_flags) as sandbox:
                run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{label}-{who}-"))
                db = run_dir / "ledger.db"
                if who == "batcher":
                    argv = batcher_argv(
                        "run",
                        str(job),
                        "--no-wait",
                        "--no-preflight",
                        "--no-download",
                        "--concurrency",
                        str(CONCURRENCY),
                        "--base-url",
                        sandbox.base_url,
                        "--db",
                        f"sqlite:///{db}",
                        "--out",
                        str(run_dir / "out"),
                    )
                else:
                    argv = [
                        sys.executable, __file__, "--reference-client", sandbox.base_url,
                        str(bodies_path), str(CONCURRENCY),
                    ]  # fmt: skip
                child = run_child(argv, cwd=run_dir, timeout=600)
                if child.returncode != 0:
                    raise fail_child(f"{label} {who}", child)
                journal = sandbox.journal()
                if len(journal) != count:
                    raise RuntimeError(f"{label} {who}: {len(journal)} creates, expected {count}")
                rate = create_rate(journal_times(journal))
                rates[who].append(rate)
                extra = ""
                if who == "batcher":
                    check = ledger_check(db, journal, state="submitted")
                    report.raw.setdefault(f"{label}_ledger", []).append(check)
                    if not check.startswith("ok"):
                        raise RuntimeError(f"{label}: ledger does not match the sandbox: {check}")
                    extra = f", ledger {check}, CPU {child.cpu_s:.2f} s"
                    report.commands[f"{label} batcher"] = show(argv, tmp)
                else:
                    report.commands[f"{label} reference"] = show(argv, tmp)
                log(
                    f"[{label}] round {round_no + 1} {who:9s} {rate:7.0f} creates/s "
                    f"(wall {child.wall:.2f} s{extra}) load {os.getloadavg()[0]:.2f}"
                )
            shutil.rmtree(run_dir, ignore_errors=True)
    report.commands[f"{label} sandbox"] = show(Sandbox(sandbox_flags).argv)
    return rates["batcher"], rates["reference"]


def scenario_1(report: Report, sizes: dict[str, int], runs: int, tmp: Path) -> None:
    count = sizes["s1"]
    batcher, reference = creates_scenario(
        report, label="s1", sandbox_flags=["--render-seconds", "0"], count=count, runs=runs, tmp=tmp
    )
    ratios = [b / r for b, r in zip(batcher, reference, strict=True)]
    scenario = f"1: 0 ms, {count:,} prompts, c={CONCURRENCY}"
    report.add(Figure(scenario, "batcher creates/s", batcher, "/s"))
    report.add(Figure(scenario, "reference creates/s", reference, "/s"))
    ratio = statistics.median(batcher) / statistics.median(reference)
    report.add(
        Figure(
            scenario,
            "ratio batcher / reference (of medians; per round in brackets)",
            [ratio],
            "",
            target=f">= {TARGET_RATIO:.2f}, every item in the ledger",
            passed=ratio >= TARGET_RATIO,
            digits=2,
        )
    )
    report.notes.append(
        "1: per-round ratios "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + "; ledger checks "
        + "; ".join(report.raw.get("s1_ledger", []))
    )
    report.raw["s1"] = {"batcher": batcher, "reference": reference, "ratios": ratios}


def scenario_2(report: Report, sizes: dict[str, int], runs: int, tmp: Path) -> None:
    count = sizes["s2"]
    batcher, reference = creates_scenario(
        report,
        label="s2",
        sandbox_flags=["--render-seconds", "0", "--latency", str(LATENCY_S)],
        count=count,
        runs=runs,
        tmp=tmp,
    )
    ceiling = CONCURRENCY / LATENCY_S
    scenario = f"2: 50 ms, {count:,} prompts, c={CONCURRENCY}"
    share = statistics.median(batcher) / ceiling
    report.add(Figure(scenario, "batcher creates/s", batcher, "/s"))
    report.add(
        Figure(
            scenario,
            f"batcher share of the {ceiling:,.0f}/s ceiling",
            [b / ceiling * 100 for b in batcher],
            "%",
            target=f">= {TARGET_CEILING_SHARE * 100:.0f} %",
            passed=share >= TARGET_CEILING_SHARE,
            digits=1,
        )
    )
    report.add(Figure(scenario, "reference creates/s (context, no target)", reference, "/s"))
    report.raw["s2"] = {"batcher": batcher, "reference": reference, "ceiling": ceiling}


# --------------------------------------------------------------------------- scenario 3


class StatsSampler:
    """Samples /_sandbox/stats: when the last render finished (in_flight back to 0)."""

    def __init__(self, sandbox: Sandbox, creates: int, period: float = 0.05) -> None:
        self.sandbox = sandbox
        self.creates = creates
        self.period = period
        self.renders_done: float | None = None
        self.peak_in_flight = 0
        self.samples: list[tuple[float, int]] = []  # (wall time, renders in flight)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatsSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy_share(self, start: float, end: float, slots: int) -> float:
        """Mean renders in flight over [start, end], as a share of the server's slots."""
        window = [n for t, n in self.samples if start <= t <= end]
        return statistics.fmean(window) / slots if window else float("nan")

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.period):
                try:
                    stats = client.get(f"{self.sandbox.base_url}/_sandbox/stats").json()
                except httpx.HTTPError:
                    continue
                self.peak_in_flight = max(self.peak_in_flight, stats["in_flight"])
                self.samples.append((time.time(), int(stats["in_flight"])))
                if stats["creates"] >= self.creates and stats["in_flight"] == 0:
                    if self.renders_done is None:
                        self.renders_done = time.time()
                else:
                    self.renders_done = None


def scenario_3(report: Report, sizes: dict[str, int], runs: int, tmp: Path) -> None:
    count = sizes["s3"]
    ideal = count / MAX_IN_FLIGHT * RENDER_S
    flags = [
        "--render-seconds", str(RENDER_S), "--render-jitter", "0.2",
        "--max-in-flight", str(MAX_IN_FLIGHT),
    ]  # fmt: skip
    job = write_job(tmp, "bench-s3", count)
    makespans, startups, throttles, polls, server_spans, exits = [], [], [], [], [], []
    busy_shares: list[float] = []
    for round_no in range(runs):
        with Sandbox(flags) as sandbox:
            run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="s3-"))
            argv = batcher_argv(
                "run",
                str(job),
                "--no-preflight",
                "--no-download",
                "--concurrency",
                str(CONCURRENCY),
                "--base-url",
                sandbox.base_url,
                "--db",
                f"sqlite:///{run_dir / 'ledger.db'}",
                "--out",
                str(run_dir / "out"),
            )
            with StatsSampler(sandbox, count) as sampler:
                child = run_child(argv, cwd=run_dir, timeout=max(300, ideal * 4))
            if child.returncode != 0:
                raise fail_child("s3 batcher", child)
            stats = sandbox.stats()
            journal = sandbox.journal()
            times = journal_times(journal)
            first = times[0]
            creates = len(journal)
            makespan = child.ended - first
            created_429 = int(stats["requests"].get(CREATE_ROUTE, {}).get("429", 0))
            all_429 = sum(int(codes.get("429", 0)) for codes in stats["requests"].values())
            gets = sum(stats["requests"].get(POLL_ROUTE, {}).values())
            done = sampler.renders_done
            busy = sampler.busy_share(first, done or child.ended, MAX_IN_FLIGHT)
            busy_shares.append(busy * 100)
            makespans.append(makespan)
            startups.append(first - child.started)
            throttles.append(all_429)
            polls.append(gets / count)
            if done is not None:
                server_spans.append(done - first)
                exits.append(child.ended - done)
            report.commands["s3 batcher"] = show(argv, tmp)
            log(
                f"[s3] round {round_no + 1} makespan {makespan:6.2f} s (ideal {ideal:.1f}) "
                f"start-up {first - child.started:.2f} s, creates {creates}, 429s {all_429} "
                f"(creates {created_429}), GETs {gets} = {gets / count:.2f}/item, "
                f"renders done at +{(done - first) if done else float('nan'):.2f} s, "
                f"peak in flight {sampler.peak_in_flight}, server slots busy {busy * 100:.1f} %, "
                f"CPU {child.cpu_s:.1f} s"
            )
        shutil.rmtree(run_dir, ignore_errors=True)
    report.commands["s3 sandbox"] = show(Sandbox(flags).argv)
    scenario = f"3: 2 s renders, cap 16, {count:,} prompts, c={CONCURRENCY}"
    limit = TARGET_MAKESPAN_FACTOR * ideal
    report.add(
        Figure(
            scenario,
            f"makespan, first create to process exit (ideal {ideal:.1f} s)",
            makespans,
            "s",
            target=f"<= {limit:.2f} s (1.1 x ideal)",
            passed=statistics.median(makespans) <= limit,
            digits=2,
        )
    )
    report.add(
        Figure(
            scenario,
            "makespan / ideal",
            [m / ideal for m in makespans],
            "x",
            target=f"<= {TARGET_MAKESPAN_FACTOR}",
            passed=statistics.median(makespans) / ideal <= TARGET_MAKESPAN_FACTOR,
            digits=3,
        )
    )
    if server_spans:
        report.add(
            Figure(
                scenario,
                "  of which: first create to last render done (server)",
                server_spans,
                "s",
                digits=2,
            )
        )
        report.add(
            Figure(scenario, "  of which: last render done to process exit", exits, "s", digits=2)
        )
    report.add(
        Figure(
            scenario,
            "  server's 16 render slots busy, first create to renders done",
            busy_shares,
            "%",
            digits=1,
        )
    )
    report.add(
        Figure(
            scenario, "start-up: spawn to first create (not in makespan)", startups, "s", digits=2
        )
    )
    report.add(Figure(scenario, "429s received", [float(t) for t in throttles], "", digits=0))
    report.add(
        Figure(
            scenario,
            "GET polls per item",
            polls,
            "",
            target=f"<= {TARGET_POLLS_PER_ITEM:.0f}",
            passed=statistics.median(polls) <= TARGET_POLLS_PER_ITEM,
            digits=2,
        )
    )
    report.raw["s3"] = {
        "ideal": ideal,
        "makespan": makespans,
        "startup": startups,
        "throttles": throttles,
        "polls_per_item": polls,
        "server_span": server_spans,
        "exit_lag": exits,
        "busy_share": busy_shares,
    }


# --------------------------------------------------------------------------- scenario 4


def make_resume_ledger(source: Path, dest: Path, done_share: float) -> tuple[str, int]:
    """Copy a --no-wait ledger and mark all but the last items complete; the rest pending."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(dest)) as dst,
    ):
        src.backup(dst)
    with contextlib.closing(sqlite3.connect(dest)) as conn, conn:
        [(batch_id, name)] = conn.execute("SELECT id, name FROM batches").fetchall()
        [(total,)] = conn.execute("SELECT count(*) FROM items WHERE batch_id = ?", (batch_id,))
        cut = round(total * done_share)
        conn.execute(
            "UPDATE items SET state = 'complete', finished_at = submitted_at,"
            " worker_id = NULL, lease_expires_at = NULL WHERE batch_id = ? AND ordinal < ?",
            (batch_id, cut),
        )
        conn.execute(
            "DELETE FROM credit_events WHERE item_id IN"
            " (SELECT id FROM items WHERE batch_id = ? AND ordinal >= ?)",
            (batch_id, cut),
        )
        conn.execute(
            "UPDATE items SET state = 'pending', project_id = NULL, attempts = 0,"
            " sent_at = NULL, submitted_at = NULL, worker_id = NULL, lease_expires_at = NULL,"
            " credits_reserved = 0 WHERE batch_id = ? AND ordinal >= ?",
            (batch_id, cut),
        )
        conn.execute(
            "UPDATE batches SET credits_reserved = 0, credits_net = (SELECT coalesce(sum("
            "CASE kind WHEN 'charge' THEN credits ELSE -credits END), 0) FROM credit_events"
            " WHERE batch_id = ?) WHERE id = ?",
            (batch_id, batch_id),
        )
        conn.execute("UPDATE workers SET stopped_at = coalesce(stopped_at, heartbeat_at)")
        [(pending,)] = conn.execute(
            "SELECT count(*) FROM items WHERE batch_id = ? AND state = 'pending'", (batch_id,)
        )
    return str(name), int(pending)


def resume_probe(db: str, name: str) -> int:
    """In a fresh interpreter: the ledger calls `batcher resume` makes before its first
    create, in the same order, each timed. Prints one JSON object."""
    from datetime import timedelta

    from batcher.ledger import Ledger, utcnow
    from batcher.run import prepare as service
    from batcher.run.liveness import is_dead, new_worker
    from batcher.settings import LEASE_S

    timings: dict[str, float] = {}

    def timed(key: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = func(*args, **kwargs)
        timings[key] = time.perf_counter() - t0
        return result

    ledger = timed("Ledger.open (migrations check)", Ledger.open, db, create=False)
    batch = timed("Ledger.batch_named", ledger.batch_named, name)
    prepared = timed(
        "service.resume_batch",
        service.resume_batch,
        ledger,
        name,
        budget=None,
        retry_failed=False,
        resend_unconfirmed=False,
    )
    batch = prepared.batch
    timed("state_counts (_drive)", ledger.state_counts, batch.id)
    worker = new_worker(batch.id)
    timed(
        "recover",
        ledger.recover,
        batch.id,
        is_dead=lambda w: is_dead(w, me=worker.id, lease_s=LEASE_S),
    )
    timed("register_worker", ledger.register_worker, worker)
    timed("observed_charges", ledger.observed_charges, batch.id)
    timed("state_counts (run)", ledger.state_counts, batch.id)
    lease = utcnow() + timedelta(seconds=LEASE_S)
    page = max(16, 2 * CONCURRENCY)
    timed(
        "claim submitted (adopt)",
        ledger.claim,
        batch.id,
        worker.id,
        states=["submitted"],
        limit=page,
        lease_until=lease,
    )
    items = timed(
        "first Ledger.claim (pending)",
        ledger.claim,
        batch.id,
        worker.id,
        states=["pending"],
        limit=page,
        lease_until=lease,
    )
    ledger.close()
    timings["claimed"] = len(items)
    print(json.dumps(timings))
    return 0


def scenario_4(report: Report, sizes: dict[str, int], runs: int, tmp: Path) -> None:
    count = sizes["s4"]
    job = write_job(tmp, "bench-s4", count)
    rss, rates, startups, walls = [], [], [], []
    kept_ledger: Path | None = None
    for round_no in range(runs):
        with Sandbox(["--render-seconds", "0"]) as sandbox:
            run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="s4-"))
            db = run_dir / "ledger.db"
            argv = batcher_argv(
                "run",
                str(job),
                "--no-wait",
                "--no-download",
                "--no-preflight",
                "--concurrency",
                str(CONCURRENCY),
                "--base-url",
                sandbox.base_url,
                "--db",
                f"sqlite:///{db}",
                "--out",
                str(run_dir / "out"),
            )
            child = run_child(argv, cwd=run_dir, timeout=1200)
            if child.returncode != 0:
                raise fail_child("s4 batcher run", child)
            journal = sandbox.journal()
            times = journal_times(journal)
            check = ledger_check(db, journal, state="submitted")
            del journal
            rss.append(child.maxrss_mb)
            rates.append(create_rate(times))
            startups.append(times[0] - child.started)
            walls.append(child.wall)
            report.commands["s4 run"] = show(argv, tmp)
            log(
                f"[s4] round {round_no + 1} peak RSS {child.maxrss_mb:.0f} MB, "
                f"wall {child.wall:.1f} s, {create_rate(times):.0f} creates/s, "
                f"spawn to first create {times[0] - child.started:.2f} s, "
                f"CPU {child.cpu_s:.1f} s, ledger {check}"
            )
            if kept_ledger is None:
                kept_ledger = tmp / "s4-source.db"
                with (
                    contextlib.closing(sqlite3.connect(db)) as src,
                    contextlib.closing(sqlite3.connect(kept_ledger)) as dst,
                ):
                    src.backup(dst)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert kept_ledger is not None
    scenario = f"4: {count:,} prompts, --no-wait"
    report.add(
        Figure(
            scenario,
            "peak RSS of `run --no-wait --no-download`",
            rss,
            "MB",
            target=f"< {TARGET_RSS_MB:.0f} MB",
            passed=statistics.median(rss) < TARGET_RSS_MB,
        )
    )
    report.add(Figure(scenario, "  its creates/s (context)", rates, "/s"))
    report.add(
        Figure(
            scenario, "  its spawn to first create (job load + sync_items)", startups, "s", digits=2
        )
    )

    # Resume: a 99 %-done copy of the first run's ledger.
    prepared = tmp / "s4-resume.db"
    name, pending = make_resume_ledger(kept_ledger, prepared, RESUME_DONE_SHARE)
    firsts, resume_walls, probes, helps = [], [], [], []
    for round_no in range(runs):
        # Alternate the CLI measurement, the in-process probe and the start-up baseline.
        order = ["cli", "probe", "help"]
        order = order[round_no % 3 :] + order[: round_no % 3]
        for what in order:
            run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="s4r-"))
            db = run_dir / "ledger.db"
            shutil.copyfile(prepared, db)
            if what == "help":
                # Interpreter start, every import the CLI makes, click: no ledger, no HTTP.
                argv = batcher_argv("resume", "--help")
                child = run_child(argv, cwd=run_dir, timeout=60)
                helps.append(child.wall)
                report.commands["s4 start-up baseline"] = show(argv, tmp)
            elif what == "probe":
                argv = [sys.executable, __file__, "--resume-probe", str(db), name]
                out = subprocess.run(
                    argv, capture_output=True, text=True, env=child_env(), check=True
                )
                timings = json.loads(out.stdout)
                probes.append(timings)
                report.commands["s4 resume probe"] = show(argv, tmp)
                resumed = timings["service.resume_batch"] * 1000
                claimed = timings["first Ledger.claim (pending)"] * 1000
                log(
                    f"[s4] resume probe: resume_batch {resumed:.1f} ms, "
                    f"first claim {claimed:.1f} ms ({timings['claimed']} items)"
                )
            else:
                with Sandbox(["--render-seconds", "0"]) as sandbox:
                    argv = batcher_argv(
                        "resume",
                        name,
                        "--no-wait",
                        "--no-download",
                        "--no-preflight",
                        "--concurrency",
                        str(CONCURRENCY),
                        "--base-url",
                        sandbox.base_url,
                        "--db",
                        f"sqlite:///{db}",
                        "--out",
                        str(run_dir / "out"),
                    )
                    child = run_child(argv, cwd=run_dir, timeout=600)
                    if child.returncode != 0:
                        raise fail_child("s4 resume", child)
                    journal = sandbox.journal()
                    if len(journal) != pending:
                        raise RuntimeError(f"resume sent {len(journal)}, expected {pending}")
                    times = journal_times(journal)
                first = times[0] - child.started
                firsts.append(first)
                resume_walls.append(child.wall)
                report.commands["s4 resume"] = show(argv, tmp)
                log(
                    f"[s4] resume round {round_no + 1}: spawn to first create {first:.2f} s, "
                    f"{pending} sent, wall {child.wall:.2f} s"
                )
            shutil.rmtree(run_dir, ignore_errors=True)
    scenario = f"4: resume, {count:,} items, {pending:,} pending"
    report.add(
        Figure(
            scenario,
            "`batcher resume`: spawn to first create at the sandbox",
            firsts,
            "s",
            target=f"< {TARGET_RESUME_S:.0f} s",
            passed=statistics.median(firsts) < TARGET_RESUME_S,
            digits=2,
        )
    )
    keys = [k for k in probes[0] if k != "claimed"]
    in_process = [p["service.resume_batch"] + p["first Ledger.claim (pending)"] for p in probes]
    report.add(
        Figure(
            scenario,
            "in-process: service.resume_batch + first Ledger.claim",
            [v * 1000 for v in in_process],
            "ms",
            target=f"< {TARGET_RESUME_S * 1000:.0f} ms",
            passed=statistics.median(in_process) < TARGET_RESUME_S,
            digits=1,
        )
    )
    for key in keys:
        report.add(
            Figure(
                scenario,
                f"  in-process step: {key}",
                [p[key] * 1000 for p in probes],
                "ms",
                digits=1,
            )
        )
    report.add(
        Figure(
            scenario,
            "  start-up baseline: `python -m batcher resume --help` wall",
            helps,
            "s",
            digits=2,
        )
    )
    report.add(
        Figure(
            scenario,
            f"  resume process wall ({pending:,} creates, exit)",
            resume_walls,
            "s",
            digits=2,
        )
    )
    report.raw["s4"] = {
        "rss_mb": rss,
        "rates": rates,
        "startup": startups,
        "resume_first_create": firsts,
        "resume_wall": resume_walls,
        "probes": probes,
        "help_wall": helps,
    }


# --------------------------------------------------------------------------- main


def print_report(
    report: Report, args: argparse.Namespace, sizes: dict[str, int], started: float
) -> None:
    print()
    print("| scenario | figure | median (runs) | target | result |")
    print("|---|---|---|---|---|")
    for f in report.figures:
        result = "" if f.passed is None else ("PASS" if f.passed else "FAIL")
        print(f"| {f.scenario} | {f.name} | {f.cell()} | {f.target} | {result} |")
    print()
    for note in report.notes:
        print(note)
    print(
        "\ncommands (<tmp>: this run's temporary folder; <sandbox URL>: the first stdout line "
        "of the sandbox command; every run had a fresh sandbox and ledger):"
    )
    for key, command in report.commands.items():
        print(f"  {key}: {command}")
    import httpx as _httpx

    print(
        f"\nruns per figure: {args.runs}; sizes {sizes}; python {sys.version.split()[0]}, "
        f"httpx {_httpx.__version__}; cpus {os.cpu_count()}; load average now "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; took {time.time() - started:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="1,2,3,4", help="scenarios to run, e.g. 1,3")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES}")
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="sN=COUNT",
        help="override one scenario's prompt count, e.g. s1=10000",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--batcher-command",
        metavar="CMD",
        help="start the measured batcher processes with CMD instead of "
        "'python -m batcher' (e.g. an instrumented wrapper); the sandbox is unaffected",
    )
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    parser.add_argument("--reference-client", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--resume-probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_client:
        url, bodies, workers = args.reference_client
        return reference_client(url, Path(bodies), int(workers))
    if args.resume_probe:
        db, name = args.resume_probe
        return resume_probe(f"sqlite:///{db}", name)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.batcher_command:
        BATCHER_COMMAND[:] = shlex.split(args.batcher_command)

    sizes = dict(QUICK_SIZES if args.quick else SIZES)
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in sizes:
            parser.error(f"--size: unknown scenario {key!r}")
        sizes[key] = int(value)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    only = {int(x) for x in args.only.split(",") if x.strip()}
    scenarios = {1: scenario_1, 2: scenario_2, 3: scenario_3, 4: scenario_4}
    report = Report()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="batcher-throughput-"))
    try:
        for number in sorted(only):
            log(f"--- scenario {number}")
            scenarios[number](report, sizes, args.runs, tmp)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(report, args, sizes, started)
    if args.json:
        args.json.write_text(json.dumps(report.raw, indent=2, default=str))
    failed = [f for f in report.figures if f.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
