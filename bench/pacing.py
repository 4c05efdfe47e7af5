"""Pacing: how fully batcher keeps the account's render capacity busy, and how many
polls it spends, when the API is the bottleneck (issue 15).

Each run is a real `batcher run` process against a real `batcher sandbox`
process (a fresh one, with a fresh SQLite ledger, per run). batcher is told
only `--concurrency 64`: it must find the render cap and the rate limit itself.

Scenarios (``--only s3,night`` picks some):

- ``s3``: renders of 2 s +- 20 %, a render cap of 16 (``--max-in-flight``), no
  latency, no rate limit. Targets: makespan <= 1.05 x ideal, <= 2 polls per
  project.
- ``fixed``: S3 with every render exactly 2 s (as an independent fake API may
  render), the same targets.
- ``night``: a realistic night: 300 ms latency on every request, renders of
  5 s +- 50 %, a render cap of 12 and a rate limit of 20 requests/s together.
- ``hooks``: the same night with the webhook receiver on
  (``--webhook-listen``): the sandbox sends signed events to it.

Figures: makespan (the batcher process's wall time from its first create in
the sandbox's journal to its exit) against the ideal (N x mean render / cap,
plus one request latency), polls per project (GETs of projects over creates,
from the sandbox's counters) and the 429s of each kind (rate limit, render
cap).

    python bench/pacing.py                           # every scenario, default sizes
    python bench/pacing.py --only s3 --prompts 200   # one, scaled
    python bench/pacing.py --json pacing.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import httpx
import yaml

CONCURRENCY = 64
SECRET = "whsec_bench_pacing"
POLL_ROUTE = "GET /v1/image-projects/{id}"


@dataclass(frozen=True)
class Scenario:
    name: str
    prompts: int
    render_s: float
    jitter: float
    cap: int
    latency_s: float = 0.0
    rate_limit: float | None = None
    webhooks: bool = False

    def sandbox_flags(self) -> list[str]:
        flags = [
            "--render-seconds", str(self.render_s),
            "--render-jitter", str(self.jitter),
            "--max-in-flight", str(self.cap),
            "--latency", str(self.latency_s),
            "--seed", "15",
        ]  # fmt: skip
        if self.rate_limit is not None:
            flags += ["--rate-limit", str(self.rate_limit)]
        return flags

    def ideal_s(self) -> float:
        return self.prompts * self.render_s / self.cap + self.latency_s


SCENARIOS = {
    "s3": Scenario("s3", 500, 2.0, 0.2, 16),
    "fixed": Scenario("fixed", 500, 2.0, 0.0, 16),
    "night": Scenario("night", 600, 5.0, 0.5, 12, latency_s=0.3, rate_limit=20.0),
    "hooks": Scenario("hooks", 600, 5.0, 0.5, 12, latency_s=0.3, rate_limit=20.0, webhooks=True),
}


@dataclass
class Result:
    scenario: str
    prompts: int
    makespan_s: float
    ideal_s: float
    ratio: float
    polls_per_project: float
    rate_limit_429s: int
    render_cap_429s: int
    complete: int
    exit_code: int
    busy_share: float  # mean share of the render cap in use, first create to last render
    exit_lag_s: float  # from the last render's end (as sampled) to batcher's exit


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGIC_HOUR_", "BATCHER_"))}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def journal_first_create(base_url: str) -> float:
    entries = httpx.get(f"{base_url}/_sandbox/journal", timeout=60).json()["entries"]
    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() for e in entries]
    return min(times)


def run(scenario: Scenario, tmp: Path) -> Result:
    job = tmp / f"{scenario.name}.yaml"
    prompts = [
        {"prompt": f"pacing bench prompt {i}", "model": "z-image-turbo", "resolution": "1k"}
        for i in range(scenario.prompts)
    ]
    job.write_text(yaml.safe_dump({"name": f"pacing-{scenario.name}", "prompts": prompts}))
    db = tmp / f"{scenario.name}.db"
    flags = scenario.sandbox_flags()
    listen: list[str] = []
    if scenario.webhooks:
        port = free_port()
        flags += ["--webhook-url", f"http://127.0.0.1:{port}/", "--webhook-secret", SECRET]
        listen = ["--webhook-listen", f"127.0.0.1:{port}"]
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "batcher", "sandbox", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    try:
        assert sandbox.stdout is not None
        base_url = sandbox.stdout.readline().strip()
        argv = [
            sys.executable, "-m", "batcher", "run", str(job),
            "--db", f"sqlite:///{db}", "--base-url", base_url,
            "--concurrency", str(CONCURRENCY), "--no-download", "--no-preflight",
            *listen,
        ]  # fmt: skip
        env = child_env(MAGIC_HOUR_API_KEY="sandbox-key", MAGIC_HOUR_WEBHOOK_SECRET=SECRET)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            with httpx.Client() as client:
                while not done.is_set():
                    stats = client.get(f"{base_url}/_sandbox/stats", timeout=60).json()
                    samples.append((time.time(), int(stats["in_flight"])))
                    done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        child = subprocess.run(
            argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=1800, check=False
        )
        ended = time.time()
        done.set()
        sampler.join()
        stats = httpx.get(f"{base_url}/_sandbox/stats", timeout=60).json()
        first = journal_first_create(base_url)
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    if child.returncode != 0:
        print(child.stderr[-2000:], file=sys.stderr)
    makespan = ended - first
    creates = max(1, int(stats["creates"]))
    polls = sum(stats["requests"].get(POLL_ROUTE, {}).values())
    ideal = scenario.ideal_s()
    busy = [(t, n) for t, n in samples if t >= first]
    last_busy = max((t for t, n in busy if n > 0), default=ended)
    window = [n for t, n in busy if t <= last_busy]
    share = sum(window) / (len(window) * scenario.cap) if window else 0.0
    if os.environ.get("PACING_TRACE"):
        print(" ".join(str(n) for _, n in busy), file=sys.stderr)
    return Result(
        scenario=scenario.name,
        prompts=scenario.prompts,
        makespan_s=round(makespan, 2),
        ideal_s=round(ideal, 2),
        ratio=round(makespan / ideal, 3),
        polls_per_project=round(polls / creates, 2),
        rate_limit_429s=int(stats.get("rate_limit_429s", 0)),
        render_cap_429s=int(stats.get("render_cap_429s", 0)),
        complete=creates,
        exit_code=child.returncode,
        busy_share=round(share, 3),
        exit_lag_s=round(ended - last_busy, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="s3,fixed,night,hooks")
    parser.add_argument("--prompts", type=int, help="scale every scenario to this many prompts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="batcher-pacing-") as folder:
        for name in args.only.split(","):
            scenario = SCENARIOS[name.strip()]
            if args.prompts:
                scenario = Scenario(**{**asdict(scenario), "prompts": args.prompts})
            result = run(scenario, Path(folder))
            results.append(result)
            print(
                f"{result.scenario:6} {result.prompts:4} prompts"
                f"  makespan {result.makespan_s:7.2f} s"
                f"  ideal {result.ideal_s:7.2f} s  x{result.ratio:.3f}"
                f"  polls/project {result.polls_per_project:.2f}"
                f"  429s: rate {result.rate_limit_429s}, cap {result.render_cap_429s}"
                f"  busy {result.busy_share:.0%}  exit lag {result.exit_lag_s:.2f} s"
                f"  exit {result.exit_code}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
