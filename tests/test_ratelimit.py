"""The shared token bucket: bursts allowed, the rate kept, across clients of one connection."""
from __future__ import annotations

import threading
import time

from ratelimit import Limit, RateLimiter


def test_burst_then_rate(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=20, burst=5)
    assert [limiter.wait_time("c", limit) for _ in range(5)] == [0.0] * 5
    wait = limiter.wait_time("c", limit)
    assert 0.0 < wait <= 0.05 + 1e-6


def test_two_processes_worth_of_callers_share_one_bucket(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=10, burst=1)
    stamps: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(5):
            limiter.acquire("amo", limit)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(stamps) == 10
    # 10 calls at 10/s with a burst of 1 take at least 0.9 s, whoever makes them
    assert time.monotonic() - start >= 0.85
    window = sorted(stamps)
    assert all(b - a >= 0.05 for a, b in zip(window, window[1:]))  # never two in the same ~tenth


def test_runtime_clients_get_their_connections_limit(runtime, fake_amo):
    client = runtime.client("quickstart-amo")
    assert client.limiter is not None
    for _ in range(7):  # amoCRM's burst is a second's worth: 7
        client.limiter()
    before = time.monotonic()
    client.limiter()
    assert time.monotonic() - before >= 0.1


def test_telegram_keeps_one_message_per_second_per_chat(runtime, fake_tg):
    bot = runtime.client("quickstart-bot")
    start = time.monotonic()
    for _ in range(3):
        bot.send_message("-1001234567890", "x")
    assert time.monotonic() - start >= 1.9      # 3 messages to one group: at least 2 s apart in all
    assert len(fake_tg.method_calls("sendMessage")) == 3
    other = time.monotonic()
    bot.send_message("42", "y")                 # another chat does not wait for that one
    assert time.monotonic() - other < 0.5
