"""A small asyncio HTTP/1.1 load generator: closed loop (N concurrent clients) or paced.

Requests are prebuilt bytes on raw asyncio streams, so the client costs a few tens of µs per
request. Connections are kept alive when the server allows it; gunicorn's sync workers answer
`Connection: close`, and then each request pays its connect, as a vendor's would. Latency is
measured from the start of a request (its connect included) to the last byte of the answer.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Result:
    key: str            # what identifies the webhook (the lead id)
    sent_at: float      # wall clock (time.time()) when the request started
    latency: float      # seconds to the full answer
    status: int
    body: bytes
    late: float = 0.0   # paced runs: how far behind its schedule the request started


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    started: float = 0.0
    elapsed: float = 0.0
    errors: int = 0

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.status == 200]


def build_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


class Lane:
    """One client: one connection at a time, reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, data: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(data)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if fresh or attempt:
                    raise
                continue  # a kept-alive connection the server had closed: once more, fresh
            status = int(head[9:12])
            lower = head.lower()
            length = 0
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(lower[at + 15:lower.index(b"\r\n", at)])
            body = await self.reader.readexactly(length) if length else b""
            if b"connection: close" in lower or head.startswith(b"HTTP/1.0"):
                self.close()
            return status, body
        raise ConnectionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(lane: Lane, key: str, data: bytes, run: Run, late: float = 0.0) -> None:
    sent_at, t0 = time.time(), time.perf_counter()
    try:
        status, body = await lane.send(data)
    except (OSError, asyncio.IncompleteReadError) as exc:
        lane.close()
        status, body = 0, repr(exc).encode()
        run.errors += 1
    run.results.append(Result(key, sent_at, time.perf_counter() - t0, status, body, late))


async def closed_loop(host: str, port: int, requests: Iterator[tuple[str, bytes]], concurrency: int,
                      duration: float | None = None, count: int | None = None) -> Run:
    """`concurrency` clients, each sending its next request as soon as the last is answered,
    until `count` requests were sent or `duration` seconds passed."""
    run = Run(started=time.time())
    t0 = time.perf_counter()
    deadline = t0 + duration if duration else float("inf")
    sent = 0

    async def client() -> None:
        nonlocal sent
        lane = Lane(host, port)
        while time.perf_counter() < deadline and (count is None or sent < count):
            sent += 1
            key, data = next(requests)
            await _one(lane, key, data, run)
        lane.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - t0
    return run


async def paced(host: str, port: int, requests: Iterator[tuple[str, bytes]], rate: float, count: int,
                lanes: int = 32) -> Run:
    """Open loop: request i starts at t0 + i/rate on a free lane, whatever the answers do."""
    run = Run(started=time.time())
    queue: asyncio.Queue = asyncio.Queue()
    t0 = time.perf_counter()

    async def client() -> None:
        lane = Lane(host, port)
        while True:
            item = await queue.get()
            if item is None:
                break
            due, key, data = item
            await _one(lane, key, data, run, late=time.perf_counter() - due)
        lane.close()

    workers = [asyncio.ensure_future(client()) for _ in range(lanes)]
    for i in range(count):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        key, data = next(requests)
        queue.put_nowait((due, key, data))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    run.elapsed = time.perf_counter() - t0
    return run


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def run_sync(coro_factory: Callable[[], asyncio.Future]) -> Run:
    return asyncio.run(coro_factory())
