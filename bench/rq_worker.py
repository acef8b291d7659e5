"""One RQ worker of a chosen class on crmbridge's runtime, in burst mode (no scheduler).

`python bench/rq_worker.py simple|fork` from the repository root, with the same environment
as `python worker.py`. It mirrors worker.main() but lets the benchmark swap RQ's default
forking `Worker` (a fresh child per job) for the `SimpleWorker` crmbridge uses.

`python bench/rq_worker.py noop` drains the queue "bench-noop" (jobs that do nothing) with a
SimpleWorker: what RQ's own bookkeeping allows one process, whatever the job does; `noop-ours`
does the same with the worker class worker.py runs (rqworker.CrashSafeWorker).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NOOP_QUEUE = "bench-noop"


def main(argv: list[str]) -> int:
    from rq import SimpleWorker, Worker
    from rq.serializers import JSONSerializer

    import worker
    from runtime import configure_logging

    configure_logging()
    kind = argv[0] if argv else "simple"
    if kind in ("noop", "noop-ours"):
        from redis import Redis
        from rq import Queue

        from rqworker import CrashSafeWorker
        store = Redis.from_url(os.environ["REDIS_URL"])
        cls = CrashSafeWorker if kind == "noop-ours" else SimpleWorker
        cls([Queue(NOOP_QUEUE, connection=store, serializer=JSONSerializer)], connection=store,
            serializer=JSONSerializer).work(burst=True, with_scheduler=False, logging_level="WARNING")
        return 0
    rt = worker.runtime()
    cls = Worker if kind == "fork" else SimpleWorker
    cls([rt.backend.queue], connection=rt.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False,
        logging_level=os.environ.get("CRMBRIDGE_LOG_LEVEL", "INFO").upper())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
