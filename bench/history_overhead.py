"""What recording every decision costs a worker: the same worker process, the same events, with the
decision history off, on SQLite and on PostgreSQL, in alternating rounds (so that the machine's
background load falls on all three alike).

    .venv/bin/python bench/history_overhead.py [--events 300] [--rounds 4] [--redis redis://127.0.0.1:6379/10]
        [--database postgresql://postgres@127.0.0.1:5432/postgres]

Each round posts `--events` recorded amoCRM "Brief received" webhooks (a lead of their own each)
through the real app's intake, then drains them with a real RQ SimpleWorker in this process (as
tests/conftest.py:run_worker) against the benchmark's fakes (bench/fakes.py, processes of their
own) and the benchmark's rules (common.BENCH_RULES: one Telegram message per event), and measures
the drain: events/s (wall) and this process's CPU per event. The PostgreSQL database is one of its
own (created and dropped); its server's CPU is not in the figures (another process). At the end,
bytes per event of each store: PostgreSQL `pg_total_relation_size` of both tables / events kept,
SQLite the file's size / events kept. Uses the Redis database given (flushed before and after).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import Fake, Procs, Webhooks, crm_env, crm_path, exclusive, make_config, make_workdir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"))
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server to create a database of this run's on")
    parser.add_argument("--db-prefix", default="crmbridge_bench_", help="the name of that database starts so")
    args = parser.parse_args()
    lock = exclusive(600)   # one benchmark at a time: they share the CPU (and bench/run.py database 10)
    if lock is None:
        print("another benchmark holds the lock", file=sys.stderr)
        return 1

    import psycopg
    from redis import Redis
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    workdir = make_workdir()
    procs = Procs(workdir)
    admin = psycopg.connect(args.database, autocommit=True)
    dbname = f"{args.db_prefix}{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    store = Redis.from_url(args.redis)
    store.flushdb()
    try:
        amo, tg = Fake(procs, "amo"), Fake(procs, "telegram")
        config = make_config(workdir)
        env = crm_env(config, amo, tg, redis_url=args.redis)
        import logging
        logging.disable(logging.INFO)   # as a production worker at WARNING: log lines are not measured
        import worker
        from config.settings import Settings
        from pipeline.history import PostgresHistory, SQLiteHistory
        from webhooks import create_app
        settings = Settings.from_env(env)
        app = create_app(settings=settings)
        rt = worker.open_runtime(settings)
        stores = {"off": None,
                  "sqlite": SQLiteHistory(workdir / "history.sqlite3", settings.history_retention),
                  "postgresql": PostgresHistory(f"{args.database.rpartition('/')[0]}/{dbname}", settings.history_retention)}
        # seconds inside the history: rows made (in the job), written (by the writer thread)
        spent = {(name, part): 0.0 for name in stores for part in ("rows", "write")}
        current = ["off"]

        def timed(fn, part):
            def wrapper(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    spent[current[0], part] += time.perf_counter() - t
            return wrapper
        from pipeline import history as history_module
        history_module.event_row = timed(history_module.event_row, "rows")
        history_module.decision_row = timed(history_module.decision_row, "rows")
        for h in stores.values():
            if h is not None:
                h.write = timed(h.write, "write")
        web = app.test_client()
        hooks = Webhooks()
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}

        def round_(name: str) -> None:
            for _ in range(args.events):
                lead = hooks.next_lead
                hooks.next_lead += 1
                resp = web.post(crm_path(), data=hooks.body(lead), content_type="application/x-www-form-urlencoded")
                assert resp.status_code == 200, resp.data
            rt.history = stores[name]
            current[0] = name
            w = SimpleWorker([rt.backend.queue], connection=rt.store, serializer=JSONSerializer)
            cpu, wall = time.process_time(), time.perf_counter()
            w.work(burst=True, with_scheduler=False, logging_level="WARNING")
            if rt.history is not None:   # its writer thread done too: the round's whole work
                assert rt.history.flush(60)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert rt.backend.queue.count == 0
            figures[name].append((args.events / wall, cpu / args.events * 1000))

        round_("off")   # warm-up: clients, metadata caches, connections
        round_("sqlite")
        round_("postgresql")
        figures = {name: [] for name in stores}
        spent.update({key: 0.0 for key in spent})
        order = list(stores)
        for n in range(args.rounds):
            for name in order[n % 3:] + order[:n % 3]:   # each store first in turn
                round_(name)
        base = statistics.median(r for r, _ in figures["off"])
        base_cpu = statistics.median(c for _, c in figures["off"])
        print(f"{args.rounds} rounds of {args.events} events each (medians; runs: events/s)")
        print(f"{'history':<11} {'events/s':>9} {'vs off':>7} {'CPU ms/event':>13} {'vs off':>7}  runs")
        for name, runs in figures.items():
            rate, cpu = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
            print(f"{name:<11} {rate:>9.1f} {rate / base - 1:>+7.1%} {cpu:>13.2f} {cpu / base_cpu - 1:>+7.1%}  "
                  f"{', '.join(f'{r:.0f}' for r, _ in runs)}")
        for name in ("sqlite", "postgresql"):
            rows, write = (spent[name, part] / (args.events * args.rounds) * 1000 for part in ("rows", "write"))
            print(f"{name}: per event, rows made in the job {rows:.3f} ms, written by the writer thread {write:.3f} ms "
                  f"(wall; {rows / statistics.median(c for _, c in figures['off']):.1%} and "
                  f"{write / statistics.median(c for _, c in figures['off']):.1%} of a job's CPU with the history off)")
        for name in ("sqlite", "postgresql"):
            stats = stores[name].stats()
            print(f"{name}: {stats['events']} events, {stats['decisions']} decisions, {stats['bytes']:,} bytes: "
                  f"{stats['bytes'] / stats['events']:,.0f} bytes per event")
        for h in stores.values():
            if h is not None:
                h.close()
        app.extensions["crmbridge"].backend.close()
    finally:
        procs.stop_all()
        store.flushdb()
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
