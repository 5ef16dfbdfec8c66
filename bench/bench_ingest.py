"""Sustained ingest into a real `entmon serve` process on this machine.

16 concurrent clients post realistic step reports (bench/realistic.py), first one report per
request, then batches of 32; in the same run, the same data written straight to the same Redis
with pipelines gives the ceiling. Prints reports/s, p50/p99 latency and the ratios.

    .venv/bin/python bench/bench_ingest.py [--seconds 10] [--clients 16] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from redis import Redis as SyncRedis
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.realistic import realistic_report
from monitor.embedded_redis import EmbeddedRedis, free_port

STEP_MARK = 987654321987  # replaced in pre-serialised bodies, so clients spend no CPU on JSON


@dataclass
class Result:
    name: str
    reports: int
    seconds: float
    latencies_s: list[float]
    service_cpu_s: float = float("nan")  # CPU the service processes spent on this mode
    redis_cpu_s: float = float("nan")

    @property
    def rate(self) -> float:
        return self.reports / self.seconds

    def quantile_ms(self, q: float) -> float:
        if len(self.latencies_s) < 2:
            return float("nan")
        return 1000 * statistics.quantiles(self.latencies_s, n=100)[int(q * 100) - 1]


async def post_load(url: str, *, clients: int, batch: int, seconds: float, run: str) -> Result:
    """`clients` keep-alive connections, each posting its next request as soon as the last one
    is answered. Requests are pre-serialised HTTP/1.1 written to raw sockets, so the load
    generator spends microseconds per request and the figure is the service's."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(rank: int) -> None:
        nonlocal sent
        template = json.dumps(realistic_report(STEP_MARK, rank, seed=rank))
        reader, writer = await asyncio.open_connection(host, int(port))
        step = 0
        while time.perf_counter() < deadline:
            reports = [template.replace(str(STEP_MARK), str(step + i)) for i in range(batch)]
            body = (reports[0] if batch == 1 else "[" + ",".join(reports) + "]").encode()
            head = (
                f"POST /v1/runs/{run}/reports HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head + body)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"ingest answered {status}")
            sent += batch
            step += batch
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(rank) for rank in range(clients)))
    name = "HTTP single" if batch == 1 else f"HTTP batch {batch}"
    return Result(name, sent, time.perf_counter() - started, latencies)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def raw_redis_load(redis_url: str, *, clients: int, batch: int, seconds: float) -> Result:
    """The ceiling: the same keys and documents the service writes, pipelined with multi-field
    commands (a dozen commands per batch), no HTTP, no validation, no idempotency check."""
    latencies: list[float] = []
    written = 0
    deadline = time.perf_counter() + seconds
    redis = Redis.from_url(redis_url, max_connections=clients)
    p = "entmon:{raw}:"

    async def client(rank: int) -> None:
        nonlocal written
        step = 0
        r = realistic_report(STEP_MARK, rank, seed=rank)
        scalars = json.dumps(
            {k: r[k] for k in ("step", "rank", "world_size", "time", "stats", "user")}
        )
        details = json.dumps({"histograms": r["histograms"], "top_tokens": r["top_tokens"]})
        while time.perf_counter() < deadline:
            fields = [f"{step + i}:{rank}" for i in range(batch)]
            started = time.perf_counter()
            async with redis.pipeline(transaction=False) as pipe:  # a few commands per batch
                pipe.hset(
                    p + "scalars",
                    mapping={
                        f: scalars.replace(str(STEP_MARK), str(step + i))
                        for i, f in enumerate(fields)
                    },
                )
                pipe.hset(p + "details", mapping=dict.fromkeys(fields, details))
                pipe.zadd(p + "index", {f: step + i for i, f in enumerate(fields)})
                for counter in ("reports", "tokens", "detached", "penalised", "client_drops"):
                    pipe.hincrby(p + "meta", counter, batch)
                pipe.hset(p + "meta", "last_step", step + batch - 1)
                pipe.zadd("entmon:runs", {"raw": time.time()})
                await pipe.execute()
            latencies.append(time.perf_counter() - started)
            written += batch
            step += batch

    started = time.perf_counter()
    await asyncio.gather(*(client(rank) for rank in range(clients)))
    elapsed = time.perf_counter() - started
    await redis.aclose()
    return Result(f"raw Redis pipeline {batch}", written, elapsed, latencies)


class CpuMeter:
    """CPU seconds the service (its worker processes included) and Redis spend during a mode."""

    def __init__(self, server_pid: int, redis_url: str) -> None:
        self.server = psutil.Process(server_pid)
        self.redis = SyncRedis.from_url(redis_url)

    def _service_s(self) -> float:
        procs = [self.server, *self.server.children(recursive=True)]
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def _redis_s(self) -> float:
        info = self.redis.info("cpu")
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])

    def measure(self, run: Callable[[], Result]) -> Result:
        service, redis = self._service_s(), self._redis_s()
        result = run()
        result.service_cpu_s = self._service_s() - service
        result.redis_cpu_s = self._redis_s() - redis
        return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec"])
    parser.add_argument("--workers", type=int, default=1, help="service processes")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp) / "redis", appendfsync=args.appendfsync) as redis,
    ):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
        env |= {"ENTMON_REDIS_URL": redis.url, "ENTMON_DATA_DIR": tmp}
        serve = ["serve", "--port", str(port), "--log-level", "warning"]
        serve += ["--workers", str(args.workers)]
        server = subprocess.Popen(
            [sys.executable, "-m", "entmon.cli", *serve], env=env, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            common = {"clients": args.clients, "seconds": args.seconds}
            cpu = CpuMeter(server.pid, redis.url)
            modes: list[Callable[[], Coroutine[None, None, Result]]] = [
                lambda: post_load(url, batch=1, run="single", **common),
                lambda: post_load(url, batch=args.batch, run="batched", **common),
                lambda: raw_redis_load(redis.url, batch=args.batch, **common),
            ]
            results = [cpu.measure(lambda m=m: asyncio.run(m())) for m in modes]
        finally:
            server.terminate()
            server.wait()

    print(
        f"{args.clients} clients, {args.seconds:g}s per mode, "
        f"{args.workers} service worker(s), Redis appendfsync={args.appendfsync}, "
        f"{os.cpu_count()} CPUs "
        "(load generator, service and Redis share them)"
    )
    print("CPU us/report: CPU time of the service processes and of Redis per report stored;")
    print("they depend less than reports/s on what else the machine runs.")
    print(
        f"{'mode':<24}{'reports/s':>12}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'service CPU us':>16}{'Redis CPU us':>14}"
    )
    for r in results:
        print(
            f"{r.name:<24}{r.rate:>12.0f}{r.quantile_ms(0.5):>10.2f}{r.quantile_ms(0.99):>10.2f}"
            f"{1e6 * r.service_cpu_s / r.reports:>16.0f}{1e6 * r.redis_cpu_s / r.reports:>14.0f}"
        )
    single, batched, ceiling = results
    print(f"ratio batched / raw Redis ceiling: {batched.rate / ceiling.rate:.2f}")
    print(f"ratio single / raw Redis ceiling:  {single.rate / ceiling.rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
