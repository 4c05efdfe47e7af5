"""How much CPU the sandbox spends per request, measured from its own process.

Starts `batcher sandbox --port 0` as a subprocess, drives it with an httpx
client over keep-alive connections, and reads the server process's CPU time
(utime + stime from /proc/PID/stat) before and after each phase. The client's
own speed does not matter to the figure: it is the server's CPU seconds
divided by the requests it answered.

    python bench/sandbox_cpu.py                    # 10,000 creates, then 10,000 polls
    python bench/sandbox_cpu.py -n 20000 -c 16 --check

The target (issue 3): at most 330 µs of sandbox CPU per create at zero
latency, so 3,000 creates per CPU-second or more; `--check` exits 1 above it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

TARGET_US_PER_CREATE = 330.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BODY = {
    "image_count": 1,
    "model": "z-image-turbo",
    "resolution": "1k",
    "aspect_ratio": "16:9",
    "style": {"prompt": "A red bicycle on a beach at dawn", "tool": "general"},
    "name": "bench 0123456789abcdef0123",
}


@dataclass
class Phase:
    name: str
    requests: int
    cpu_seconds: float
    wall_seconds: float
    failures: int

    @property
    def us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6

    def report(self) -> str:
        return (
            f"{self.name:7} {self.requests:6d} requests  "
            f"{self.us_per_request:7.1f} µs sandbox CPU each  "
            f"({self.requests / self.cpu_seconds:7.0f} per CPU-second)  "
            f"{self.requests / self.wall_seconds:6.0f}/s wall  "
            f"{self.failures} failed"
        )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def drive(
    base_url: str, key: str, total: int, connections: int, ids: list[str] | None
) -> tuple[float, int, list[str]]:
    """Send `total` creates (or, with `ids`, polls of them); wall time, failures, new ids."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {key}"}
    created: list[str] = []
    failures = 0
    remaining = iter(range(total))

    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30.0
    ) as client:

        async def worker() -> None:
            nonlocal failures
            for n in remaining:
                if ids is None:
                    response = await client.post("/v1/ai-image-generator", json=BODY)
                    if response.status_code == 200:
                        created.append(response.json()["id"])
                else:
                    response = await client.get(f"/v1/image-projects/{ids[n % len(ids)]}")
                if response.status_code != 200:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - started, failures, created


def measure(
    pid: int,
    base_url: str,
    key: str,
    name: str,
    total: int,
    connections: int,
    ids: list[str] | None,
) -> tuple[Phase, list[str]]:
    before = cpu_seconds(pid)
    wall, failures, created = asyncio.run(drive(base_url, key, total, connections, ids))
    spent = cpu_seconds(pid) - before
    return Phase(name, total, spent, wall, failures), created


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=10_000, help="per phase")
    parser.add_argument("-c", "--connections", type=int, default=12, help="keep-alive connections")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 above the target")
    args = parser.parse_args()

    command = [sys.executable, "-m", "batcher", "sandbox", "--port", "0", "--credits", "1000000000"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        if not base_url.startswith("http://"):
            print("the sandbox did not print its URL", file=sys.stderr)
            return 2
        key = "sandbox-key"
        measure(server.pid, base_url, key, "warmup", args.warmup, args.connections, None)
        creates, ids = measure(
            server.pid, base_url, key, "creates", args.requests, args.connections, None
        )
        polls, _ = measure(server.pid, base_url, key, "polls", args.requests, args.connections, ids)
    finally:
        server.terminate()
        server.wait(10)

    if args.json:
        print(
            json.dumps(
                {
                    phase.name: {
                        "requests": phase.requests,
                        "us_cpu_per_request": round(phase.us_per_request, 1),
                        "per_cpu_second": round(phase.requests / phase.cpu_seconds),
                        "per_wall_second": round(phase.requests / phase.wall_seconds),
                        "failures": phase.failures,
                    }
                    for phase in (creates, polls)
                }
            )
        )
    else:
        print(f"sandbox at {base_url}, {args.connections} keep-alive connections")
        print(creates.report())
        print(polls.report())
        print(f"target: at most {TARGET_US_PER_CREATE:.0f} µs per create")
    if creates.failures or polls.failures:
        return 1
    if args.check and creates.us_per_request > TARGET_US_PER_CREATE:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
