"""Which connection-pool design makes the most creates/s? Measured, not guessed.

Starts a minimal raw-ASGI uvicorn server (httptools, uvloop, no access log,
keep-alive 75 s) in a subprocess on loopback. It answers a create-like POST
with a small JSON body, after `asyncio.sleep(latency)` when the path starts
with `/l<ms>/` (so one server serves every latency). Then, for each client
design, N anyio workers send creates back to back for a fixed time and we
count completions after a warm-up. Designs and latencies alternate inside each
round so slow drift (thermal, other processes) spreads evenly; the table shows
the median of the rounds.

    python bench/pool_experiments.py                      # every design, 3 rounds
    python bench/pool_experiments.py --rounds 5 --duration 4
    python bench/pool_experiments.py --designs reference,magichour --latencies 0

The client runs on the plain asyncio loop (what `anyio.run` gives by default)
unless --uvloop is passed; the server always uses uvloop so it is never the
bottleneck on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httpx

from batcher.client.magic_hour import MagicHourClient, PooledTransport
from batcher.settings import ApiConfig

CREATE_PATH = "/v1/ai-image-generator"
RESPONSE_BODY = b'{"id":"cm1abcdefghijklmnop","credits_charged":5,"frame_cost":5}'
REQUEST_BODY: dict[str, Any] = {
    "image_count": 1,
    "model": "z-image-turbo",
    "aspect_ratio": "16:9",
    "style": {"prompt": "A red bicycle on a beach at dawn", "tool": "general"},
    "name": "nightly-products 0123456789abcdef0123",
    "resolution": "2k",
}
API_KEY = "mhk_live_bench_not_a_secret"


# --------------------------------------------------------------------------- server


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # Raw ASGI: no framework, so the server costs as little CPU as possible and
    # the client is what we measure.
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    path: str = scope["path"]
    if path.startswith("/l"):
        prefix, _, _rest = path[2:].partition("/")
        latency_ms = int(prefix)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(RESPONSE_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": RESPONSE_BODY})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        _asgi_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        backlog=4096,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def server_process() -> Any:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("benchmark server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- designs

Create = Callable[[dict[str, Any]], Awaitable[str]]
Opener = Callable[[str, int], contextlib.AbstractAsyncContextManager[Create]]


@contextlib.asynccontextmanager
async def reference(base_url: str, workers: int) -> AsyncIterator[Create]:
    """The lean reference: one bare AsyncClient with default limits."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        url = base_url + CREATE_PATH

        async def create(body: dict[str, Any]) -> str:
            response = await client.post(url, json=body)
            response.raise_for_status()
            return str(response.json()["id"])

        yield create


def _single(max_keepalive: int | None) -> Opener:
    @contextlib.asynccontextmanager
    async def opener(base_url: str, workers: int) -> AsyncIterator[Create]:
        limits = httpx.Limits(
            max_connections=workers,
            max_keepalive_connections=workers if max_keepalive is None else max_keepalive,
        )
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {API_KEY}"}, limits=limits, trust_env=False
        ) as client:
            url = base_url + CREATE_PATH

            async def create(body: dict[str, Any]) -> str:
                response = await client.post(url, json=body)
                response.raise_for_status()
                return str(response.json()["id"])

            yield create

    return opener


class _ReleaseStream(httpx.AsyncByteStream):
    """Hands the shard's slot back when the body is closed (the connection is free again)."""

    __slots__ = ("_free", "_index", "_released", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, free: list[int], index: int) -> None:
        self._stream = stream
        self._free = free
        self._index = index
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._released:
                self._released = True
                self._free.append(self._index)


class ShardTransport(httpx.AsyncBaseTransport):
    """Prototype: several small httpcore pools; pick one by free slot or round robin."""

    def __init__(self, shards: int, per_shard: int, policy: str) -> None:
        ssl_context = httpx.create_ssl_context()
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self._shards = [
            httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits, trust_env=False)
            for _ in range(shards)
        ]
        self._policy = policy
        self._free = [i for _ in range(per_shard) for i in range(shards)]
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._policy == "slots" and self._free:
            index = self._free.pop()
            try:
                response = await self._shards[index].handle_async_request(request)
            except BaseException:
                self._free.append(index)
                raise
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _ReleaseStream(response.stream, self._free, index)
            return response
        index = self._next
        self._next = (index + 1) % len(self._shards)
        return await self._shards[index].handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def _sharded(per_shard: int, policy: str, lean: bool) -> Opener:
    @contextlib.asynccontextmanager
    async def opener(base_url: str, workers: int) -> AsyncIterator[Create]:
        shards = max(1, -(-workers // per_shard))
        transport = ShardTransport(shards, per_shard, policy)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            headers=headers, transport=transport, trust_env=False
        ) as client:
            url = base_url + CREATE_PATH
            if not lean:

                async def create(body: dict[str, Any]) -> str:
                    response = await client.post(url, json=body)
                    response.raise_for_status()
                    return str(response.json()["id"])

            else:
                json_headers = {"Content-Type": "application/json"}
                dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

                async def create(body: dict[str, Any]) -> str:
                    content = dumps(body).encode()
                    response = await client.post(url, content=content, headers=json_headers)
                    if response.status_code != 200:
                        raise RuntimeError(response.status_code)
                    return str(json.loads(response.content)["id"])

            yield create

    return opener


def _pooled(direct: bool) -> Opener:
    """batcher.client.pool.PooledTransport, through AsyncClient.post or straight into it."""

    @contextlib.asynccontextmanager
    async def opener(base_url: str, workers: int) -> AsyncIterator[Create]:
        transport = PooledTransport(workers)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            headers=headers, transport=transport, trust_env=False
        ) as client:
            url = base_url + CREATE_PATH
            if not direct:

                async def create(body: dict[str, Any]) -> str:
                    response = await client.post(url, json=body)
                    response.raise_for_status()
                    return str(response.json()["id"])

            else:
                raw_headers = [
                    (b"Authorization", f"Bearer {API_KEY}".encode()),
                    (b"Content-Type", b"application/json"),
                ]
                target = httpx.URL(url)
                dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
                extensions = {
                    "timeout": {"connect": 10.0, "read": 60.0, "write": 10.0, "pool": 60.0}
                }

                async def create(body: dict[str, Any]) -> str:
                    request = httpx.Request(
                        "POST",
                        target,
                        headers=raw_headers,
                        content=dumps(body).encode(),
                        extensions=extensions,
                    )
                    response = await transport.handle_async_request(request)
                    try:
                        data = await response.aread()
                    finally:
                        await response.aclose()
                    if response.status_code != 200:
                        raise RuntimeError(response.status_code)
                    return str(json.loads(data)["id"])

            yield create

    return opener


@contextlib.asynccontextmanager
async def magichour(base_url: str, workers: int) -> AsyncIterator[Create]:
    """What ships: batcher.client.magic_hour.MagicHourClient.create_image, parsing and all."""
    config = ApiConfig(base_url=base_url, api_key=API_KEY)
    async with MagicHourClient(config, concurrency=workers) as client:

        async def create(body: dict[str, Any]) -> str:
            return (await client.create_image(body)).project_id

        yield create


DESIGNS: dict[str, Opener] = {
    "reference": reference,
    "single-64/64": _single(None),
    "single-64/20": _single(20),
    "shard-8x8-rr": _sharded(8, "rr", lean=False),
    "shard-8x8-slots": _sharded(8, "slots", lean=False),
    "shard-16x4-slots": _sharded(4, "slots", lean=False),
    "shard-8x8-slots-lean": _sharded(8, "slots", lean=True),
    "pooled-via-client": _pooled(direct=False),
    "pooled-direct": _pooled(direct=True),
    "magichour": magichour,
}


# --------------------------------------------------------------------------- measurement


@dataclass
class Result:
    design: str
    latency: float
    rate: float
    errors: int
    cpu_us: float  # client CPU per counted create: robust to other load on the machine
    load: float  # 1-minute load average when the run started


async def _measure(
    opener: Opener, base_url: str, workers: int, warmup: float, duration: float
) -> tuple[float, int, float]:
    async with opener(base_url, workers) as create:
        start = anyio.current_time() + warmup
        end = start + duration
        counted = 0
        errors = 0
        cpu: list[float] = []

        async def meter() -> None:
            await anyio.sleep_until(start)
            cpu.append(time.process_time())
            await anyio.sleep_until(end)
            cpu.append(time.process_time())

        async def worker() -> None:
            nonlocal counted, errors
            body = dict(REQUEST_BODY)
            while True:
                try:
                    await create(body)
                except Exception:
                    errors += 1
                now = anyio.current_time()
                if now >= end:
                    return
                if now >= start:
                    counted += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(meter)
            for _ in range(workers):
                tg.start_soon(worker)
        return counted / duration, errors, (cpu[1] - cpu[0]) / max(1, counted) * 1e6


def run_one(
    name: str,
    base_url: str,
    latency: float,
    workers: int,
    warmup: float,
    duration: float,
    use_uvloop: bool,
) -> Result:
    url = f"{base_url}/l{round(latency * 1000)}"
    load = os.getloadavg()[0]
    rate, errors, cpu_us = anyio.run(
        _measure,
        DESIGNS[name],
        url,
        workers,
        warmup,
        duration,
        backend="asyncio",
        backend_options={"use_uvloop": use_uvloop},
    )
    return Result(name, latency, rate, errors, cpu_us, load)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--latencies", default="0,0.05")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    parser.add_argument("--json", type=Path, help="also write raw results here")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    # A plain `kill` should still stop the server subprocess (the finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    names = [n.strip() for n in args.designs.split(",") if n.strip()]
    unknown = [n for n in names if n not in DESIGNS]
    if unknown:
        parser.error(f"unknown designs: {', '.join(unknown)}; known: {', '.join(DESIGNS)}")
    latencies = [float(x) for x in args.latencies.split(",")]
    results: list[Result] = []
    with server_process() as base_url:
        for round_no in range(args.rounds):
            # Alternate the order every round so no design always runs first.
            order = names if round_no % 2 == 0 else list(reversed(names))
            for latency in latencies:
                for name in order:
                    result = run_one(
                        name,
                        base_url,
                        latency,
                        args.workers,
                        args.warmup,
                        args.duration,
                        args.uvloop,
                    )
                    results.append(result)
                    print(
                        f"round {round_no + 1} latency {latency:g}s {name:24s} "
                        f"{result.rate:8.0f}/s {result.cpu_us:6.0f} us/create "
                        f"errors {result.errors} load {result.load:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )

    header = "| design | " + " | ".join(
        f"creates/s at {x * 1000:g} ms: median (runs) | CPU us/create" for x in latencies
    )
    print(header + " |")
    print("|---|" + "---|---|" * len(latencies))
    for name in names:
        cells = []
        for latency in latencies:
            runs = [r for r in results if r.design == name and r.latency == latency]
            rates = ", ".join(f"{r.rate:.0f}" for r in runs)
            cells.append(f"**{statistics.median(r.rate for r in runs):.0f}** ({rates})")
            cells.append(f"{statistics.median(r.cpu_us for r in runs):.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    errors = sum(r.errors for r in results)
    loads = [r.load for r in results]
    print(
        f"\n{args.workers} workers, {args.rounds} rounds, {args.duration:g} s measured after "
        f"{args.warmup:g} s warm-up, client loop: {'uvloop' if args.uvloop else 'asyncio'}, "
        f"httpx {httpx.__version__}, httpcore {httpcore.__version__}, cpus {os.cpu_count()}, "
        f"errors {errors}, load average {min(loads):.2f}..{max(loads):.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
