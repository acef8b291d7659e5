"""Opening-time herds, the poll stage only: TIMERS timers due at one instant across CONNECTIONS
connections, turned into RQ jobs by the real `RQBackend.fire_due_timers` (as every worker's poll
thread calls it), with POLLERS threads polling at once. Prints how long until all are queued,
whether each was queued once, and the order the queue holds them in across connections (a worker
takes them from the front): the longest run of one connection's jobs and where each connection's
first job stands. Jobs are not run (firing them is the worker's, measured by bench/run.py).

    BENCH_REDIS_URL=redis://127.0.0.1:6379/2 .venv/bin/python bench/herd.py [--timers 20000] [--pollers 1]

Loopback Redis, its own database, flushed before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import REDIS_URL, flush, make_config, make_workdir, redis

CONNECTIONS = ("agency-amo", "clinic-amo", "shop-bitrix", "studio-planfix")


def timer(n: int, connection: str, at: datetime) -> dict:
    entity = {"type": "lead", "id": str(n)}
    return {"rule": "Herd", "rule_id": "herd", "timer_id": f"timer:herd:{connection}:lead:{n}",
            "fire_at": at.isoformat(), "entity": entity, "occurrence": 0,
            "event": {"id": f"{connection}:{n}", "connection": connection, "source": "amocrm",
                      "kind": "stage.changed", "entity": entity, "data": {"stage": {"id": "1"}},
                      "raw": None, "occurred_at": at.isoformat(), "dedupe_window": None}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timers", type=int, default=20_000)
    parser.add_argument("--pollers", type=int, default=1)
    args = parser.parse_args(argv)
    workdir = make_workdir()
    os.environ.update(REDIS_URL=REDIS_URL, CRMBRIDGE_CONFIG=str(make_config(workdir)),
                      CRMBRIDGE_HISTORY_PATH=str(workdir / "history.sqlite3"), CRMBRIDGE_LOG_LEVEL="WARNING",
                      AMO_BASE_URL="http://127.0.0.1:9", AMO_TOKEN="t", AMO_WEBHOOK_SECRET="s",
                      TELEGRAM_API_URL="http://127.0.0.1:9", TELEGRAM_BOT_TOKEN="1:t",
                      TELEGRAM_WEBHOOK_SECRET="s", TEAM_CHAT_ID="-1")
    store = redis()
    flush(store)
    try:
        import worker
        rt = worker.runtime()
        due = datetime.fromtimestamp(time.time() + 3, UTC).replace(microsecond=0)
        for first in range(0, args.timers, 1000):
            with store.pipeline(transaction=False) as pipe:
                for n in range(first, min(args.timers, first + 1000)):
                    rt.backend.timers.add(timer(n, CONNECTIONS[n % len(CONNECTIONS)], due), pipe)
                pipe.execute()
        while time.time() < due.timestamp():
            time.sleep(0.01)
        start = time.time()

        def poll() -> None:
            while store.zcard(rt.keys("timers")):
                rt.backend.fire_due_timers()
        threads = [threading.Thread(target=poll) for _ in range(args.pollers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        took = time.time() - start
        ids = rt.backend.queue.get_job_ids()
        jobs = [rt.backend.queue.fetch_job(i) for i in ids]
        order = [j.args[0]["timer_id"].split(":")[2] for j in jobs]
        run, longest = 1, 1
        for a, b in zip(order, order[1:]):
            run = run + 1 if a == b else 1
            longest = max(longest, run)
        firsts = {c: order.index(c) for c in CONNECTIONS if c in order}
        print(f"{args.timers:,} timers due at one instant across {len(CONNECTIONS)} connections, "
              f"{args.pollers} poller(s): all queued in {took:.2f} s ({args.timers / took:,.0f}/s); "
              f"queued {len(ids):,} jobs ({len(set(ids)):,} distinct)")
        print(f"queue order from the front: longest run of one connection {longest:,}; "
              f"first job of each connection at position {firsts}")
    finally:
        flush(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
