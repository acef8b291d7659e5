"""Callers that hammer one amoCRM connection and one Telegram bot through the real clients and the
runtime's shared limiter, for a bounded time: threads in this process, and the same again in
another process (`python -m tests.limit_hammer …`, which prints its counts as JSON). The fakes
(tests/fakes.py, enforce_limits) say whether the vendor saw its limits kept.

Each thread plays one part: amoCRM reads and notes on one lead; messages to one Telegram group;
messages to private chats of their own (so only the bot's limit binds them).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

from redis import Redis

import runtime
from config.connections import Connections
from connectors import amocrm, telegram
from connectors.base import ApiError, Connection, Entity
from queueing import Keys

LEAD = 31926520
GROUP = "-1001234567890"
TG_TOKEN = "123456:TEST-token"


def connections(amo_url: str, tg_url: str) -> dict[str, Connection]:
    return {"hammer-amo": Connection(name="hammer-amo", type="amocrm", base_url=amo_url, credentials={"token": "t"}),
            "hammer-bot": Connection(name="hammer-bot", type="telegram", base_url=tg_url,
                                     credentials={"token": TG_TOKEN})}


def hammer(redis_url: str, prefix: str, amo_url: str, tg_url: str, *, seconds: float, threads: int,
           tag: str = "") -> dict[str, Any]:
    """Run `threads` callers for `seconds`; answer what they did: calls, and calls refused (429)."""
    conns = connections(amo_url, tg_url)
    store = Redis.from_url(redis_url)
    rt = runtime.Runtime(settings=None, connections=Connections(connections=conns), ruleset=None, store=store,
                         keys=Keys(prefix), backend=None)
    counts: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    serial = itertools.count()

    def client(name: str, cls: type) -> Any:
        made = cls(conns[name], store=store, key_prefix=prefix)
        made.limiter = rt._limiter_for(conns[name], made)
        return made

    def amo_part() -> None:
        crm = client("hammer-amo", amocrm.Client)
        lead = Entity("lead", str(LEAD))
        while time.monotonic() < deadline:
            n = next(serial)
            done(lambda: crm.get_raw(lead) if n % 2 else crm.add_note(lead, f"hammer {tag}{n}"), "amo")

    def group_part() -> None:
        bot = client("hammer-bot", telegram.Client)
        while time.monotonic() < deadline:
            done(lambda: bot.send_message(GROUP, f"group {tag}{next(serial)}"), "group")

    def private_part() -> None:
        bot = client("hammer-bot", telegram.Client)
        while time.monotonic() < deadline:
            n = next(serial)
            done(lambda: bot.send_message(f"{os.getpid()}{n}", f"private {tag}{n}"), "private")

    def done(call: Any, part: str) -> None:
        try:
            call()
            outcome = part
        except ApiError as exc:
            outcome = f"{part} refused" if exc.status == 429 else f"{part} failed: {exc}"
        with lock:
            counts[outcome] += 1

    parts = [amo_part, group_part, private_part, private_part]
    workers = [threading.Thread(target=parts[i % len(parts)], daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 90)
    store.close()
    return dict(counts)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("redis", "prefix", "amo", "tg"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(hammer(args.redis, args.prefix, args.amo, args.tg, seconds=args.seconds,
                            threads=args.threads, tag="p2-")))


if __name__ == "__main__":
    main(sys.argv[1:])
