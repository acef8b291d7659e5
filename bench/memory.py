"""Redis memory at steady state: bytes per event per key kind, per pending timer, and a projection.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/2 .venv/bin/python bench/memory.py [--events N] [--timers N]

Drives N real amoCRM stage webhooks (each about a lead of its own) through the real intake
(webhooks.create_app, in this process, Flask's test client) and the real worker code (RQ's
SimpleWorker in burst mode on worker.runtime(), as bench/rq_worker.py), against the fake amoCRM
and the fake Telegram (bench/fakes.py, one process each, loopback). With the project's defaults
(CRMBRIDGE_RESULT_TTL 0, the retentions of config/settings.py). Then it measures every key the
run left, grouped by kind (the part of its name after the prefix), with MEMORY USAGE, and the
key's TTL: bytes per event, retention, and the steady state at EVENTS_PER_DAY events a day,
(a) records reused (RECORDS records, each seeing many events) and (b) a new record per event.
A queued job's hash is measured before the worker runs (it has no TTL while it waits).
Then TIMERS pending timers through TimerIndex.add (pipelined), the bytes each takes, and how long
`cli.py timers --entity` (TimerIndex.pending(entity)) takes to list one record's timers among them.
Only the benchmark's own database is flushed, before and after; the fakes are ended by id.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import REDIS_URL, Fake, Procs, Webhooks, crm_env, crm_path, flush, make_config, make_workdir, redis

EVENTS_PER_DAY = 1_000_000
RECORDS = 100_000          # "records reused": the records a deployment's events are about
DAY = 24 * 3600
# key kinds kept one per CRM record (not one per event)
PER_RECORD = {"snapshot", "stage-seen", "stage-moves", "order", "order-done"}
LABELS = {"seen": "dedupe (seen marks)", "done": "done marks (steps)", "snapshot": "snapshot (per record)",
          "stage-seen": "stage marks (per record)", "order": "order counter (per record)",
          "order-done": "order done (per record)",
          "stage-moves": "stage moves (per record, last 20)", "audit": "audit stream (capped)", "rq:job": "job hashes"}


def log(message: str) -> None:
    print(f"[memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kinds(store, prefix: str) -> dict[str, list[bytes]]:
    """Every key, by kind: `crmbridge:snapshot:…` → snapshot, `rq:job:…` → rq:job."""
    found: dict[str, list[bytes]] = {}
    for key in store.scan_iter(count=5000):
        name = key.decode(errors="replace")
        if name.startswith(prefix):
            kind = name[len(prefix):].split(":", 1)[0]
        else:
            kind = ":".join(name.split(":")[:2])
        found.setdefault(kind, []).append(key)
    return found


def measure(store, keys: list[bytes]) -> tuple[float, int]:
    """All the kind's bytes (MEMORY USAGE on up to 500 keys, scaled) and its longest TTL (-1: none)."""
    sample = keys[:500]
    mean = statistics.mean(store.memory_usage(k, samples=0) or 0 for k in sample)
    ttls = [store.ttl(k) for k in sample[:50]]
    return mean * len(keys), max(ttls) if ttls else -1


def drive(count: int) -> dict:
    """N webhooks through intake and the worker; every key kind left, per event."""
    import webhooks
    import worker
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    app = webhooks.create_app()
    client = app.test_client()
    hooks = Webhooks(first_lead=40_000_000)
    t0 = time.perf_counter()
    for n in range(count):
        answer = client.post(crm_path(), data=hooks.body(40_000_000 + n),
                             content_type="application/x-www-form-urlencoded")
        assert answer.status_code == 200, answer.get_data(as_text=True)
    intake_s = time.perf_counter() - t0
    rt = worker.runtime()
    store = rt.store
    jobs = [k for k in store.scan_iter(match="rq:job:*", count=5000)]
    queued_job = statistics.mean(store.memory_usage(k, samples=0) or 0 for k in jobs[:500]) if jobs else 0
    queued_job_ttl = store.ttl(jobs[0]) if jobs else -2
    log(f"{count} webhooks accepted in {intake_s:.1f} s; running the worker")
    t0 = time.perf_counter()
    SimpleWorker([rt.backend.queue], connection=store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False, logging_level="WARNING")
    log(f"worker done in {time.perf_counter() - t0:.1f} s")
    failed = rt.backend.queue.failed_job_registry.count
    assert failed == 0, f"{failed} jobs failed"
    left = {}
    for kind, keys in kinds(store, rt.keys.prefix).items():
        total, ttl = measure(store, keys)
        left[kind] = {"keys": len(keys), "bytes": total / count, "ttl": ttl}
    moves = [k for k in store.scan_iter(match=rt.keys("stage-moves", "*"), count=5000)][:20]
    move_entry = statistics.mean(len(store.lindex(k, 0) or b"") + 12 for k in moves) if moves else 0
    audit = rt.keys("audit")
    entries = store.xlen(audit)
    audit_entry = (store.memory_usage(audit, samples=0) or 0) / max(1, entries)
    return {"events": count, "kinds": left, "queued_job": queued_job, "queued_job_ttl": queued_job_ttl,
            "audit_entry": audit_entry, "audit_per_event": entries / count, "audit_max": rt.settings.audit_max,
            "move_entry": move_entry,
            "snapshot_full": snapshot_full(rt, count)}


def snapshot_full(rt, count: int) -> float:
    """Bytes a snapshot took when the whole record was kept (before the cut): the record as the
    worker reads it (pipeline/snapshot.read: the webhook's data over the fake amoCRM's lead),
    kept as before (the whole of it, JSON with spaces) in scratch keys, measured, deleted."""
    import timers as bench_timers

    from connectors.base import Event
    from pipeline import snapshot
    sizes = []
    for n in range(min(50, count)):
        event = Event.from_dict(bench_timers.sample_event(rt, 40_000_000 + n))
        entity = snapshot.read(rt, event)
        key = rt.keys("bench-scratch", str(n))
        rt.store.set(key, json.dumps(entity, ensure_ascii=False, default=str), ex=60)
        sizes.append(rt.store.memory_usage(key, samples=0) or 0)
        rt.store.delete(key)
    return statistics.mean(sizes) if sizes else 0.0


def legacy_timers(rt, event: dict, count: int) -> float:
    """Bytes a pending timer took as kept before the cut (the whole timer with the vendor's raw
    payload, JSON with spaces, no per-record set): `count` of them under a scratch prefix, used_memory
    delta, then deleted."""
    import timers as bench_timers
    store = rt.store
    zkey, hkey = "bench-legacy:timers", "bench-legacy:timer-data"
    mem0 = store.info("memory")["used_memory"]
    base = datetime.now(UTC) + timedelta(days=30)
    for first in range(0, count, 1000):
        with store.pipeline(transaction=False) as pipe:
            for n in range(first, min(count, first + 1000)):
                timer = bench_timers.planned("bench filler", bench_timers.FILLER_RULE_ID, 80_000_000 + n,
                                             base + timedelta(seconds=n % DAY), event)
                pipe.zadd(zkey, {timer["timer_id"]: base.timestamp() + n % DAY})
                pipe.hset(hkey, timer["timer_id"], json.dumps(timer, ensure_ascii=False))
            pipe.execute()
    per_timer = (store.info("memory")["used_memory"] - mem0) / count
    store.delete(zkey, hkey)
    return per_timer


def legacy_listing(rt, entity: str) -> float:
    """Seconds `timers --entity` took before the per-record sets: every pending timer read, filtered."""
    t0 = time.perf_counter()
    ids = rt.store.zrange(rt.keys("timers"), 0, -1)
    timers = [rt.backend.timers.unpack(i.decode(), t) for i, t in zip(ids, rt.store.hmget(rt.keys("timer-data"), ids))
              if t]   # (read and decoded as they are kept now)
    found = [t for t in timers if f"{t['entity']['type']}:{t['entity']['id']}" == entity]
    assert len(found) == 1
    return time.perf_counter() - t0


def timers(count: int) -> dict:
    """`count` pending timers through TimerIndex.add (pipelined, 1,000 per round trip): bytes each,
    and the time to list one record's timers among them."""
    import timers as bench_timers
    import worker

    rt = worker.runtime()
    store = rt.store
    event = bench_timers.sample_event(rt, 70_000_000)
    before = legacy_timers(rt, event, min(count, 20_000))
    rt.backend.timers.pending("lead:1")   # the per-record sets' one-time entry of older timers: none here
    full = json.dumps(bench_timers.planned("bench filler", bench_timers.FILLER_RULE_ID, 70_000_000,
                                           datetime.now(UTC), event), ensure_ascii=False)
    mem0 = store.info("memory")["used_memory"]
    base = datetime.now(UTC) + timedelta(days=30)
    t0 = time.perf_counter()
    for first in range(0, count, 1000):
        with store.pipeline(transaction=False) as pipe:
            for n in range(first, min(count, first + 1000)):
                lead = 70_000_000 + n
                rt.backend.timers.add(bench_timers.planned("bench filler", bench_timers.FILLER_RULE_ID, lead,
                                                           base + timedelta(seconds=n % DAY), event), pipe)
            pipe.execute()
    created = time.perf_counter() - t0
    mem1 = store.info("memory")["used_memory"]
    per_timer = (mem1 - mem0) / count
    stored = store.hget(rt.keys("timer-data"), f"timer:{bench_timers.FILLER_RULE_ID}:quickstart-amo:lead:70000000")
    listings = []
    for lead in (70_000_000, 70_000_000 + count // 2, 70_000_000 + count - 1):
        t0 = time.perf_counter()
        found = rt.backend.timers.pending(f"lead:{lead}")
        listings.append(time.perf_counter() - t0)
        assert len(found) == 1 and found[0]["entity"]["id"] == str(lead), found
    return {"count": count, "bytes": per_timer, "create_s": created, "list_ms": 1000 * max(listings),
            "before_bytes": before, "before_list_ms": 1000 * legacy_listing(rt, "lead:70000000"),
            "stored_chars": len(stored or b""), "full_chars": len(full.encode())}


def projection(r: dict) -> tuple[list[tuple], float, float]:
    """Rows (kind, keys per event, bytes per event, retention days, GB reused, GB new record each)."""
    rows, reused, fresh = [], 0.0, 0.0
    for kind, k in sorted(r["kinds"].items(), key=lambda kv: -kv[1]["bytes"]):
        if kind == "audit":
            gb = r["audit_entry"] * r["audit_max"] / 1e9   # capped: at most audit_max entries
            rows.append((LABELS["audit"], r["audit_per_event"], r["audit_entry"] * r["audit_per_event"],
                         f"cap {r['audit_max']:,}", gb, gb))
            reused, fresh = reused + gb, fresh + gb
            continue
        if k["keys"] < r["events"] / 2:
            continue  # singletons (rq:queues, metrics, the worker's own keys)
        days = k["ttl"] / DAY if k["ttl"] > 0 else float("inf")
        every = k["bytes"] * EVENTS_PER_DAY * days / 1e9 if k["ttl"] > 0 else float("inf")
        if kind in PER_RECORD:
            per_key = k["bytes"] * r["events"] / k["keys"]
            if kind == "stage-moves":   # a list: one entry per move, trimmed to MOVES_KEPT 
                from pipeline.stages import MOVES_KEPT
                per_key += r["move_entry"] * (min(MOVES_KEPT, EVENTS_PER_DAY * days / RECORDS) - 1)
            mine = (per_key * RECORDS / 1e9, every)
        else:
            mine = (every, every)
        ttl = "none" if k["ttl"] <= 0 else f"{days:.0f} d" if days >= 1 else f"{k['ttl']} s"
        rows.append((LABELS.get(kind, kind), k["keys"] / r["events"], k["bytes"], ttl, *mine))
        reused, fresh = reused + mine[0], fresh + mine[1]
    return rows, reused, fresh


def table(r: dict, t: dict | None) -> str:
    rows, reused, fresh = projection(r)
    out = [f"{r['events']:,} amoCRM stage webhooks → 1 Telegram message each; intake + worker in process, "
           f"fakes on loopback, project defaults",
           "",
           f"| key kind | keys/event | bytes/event | retention | GB at {EVENTS_PER_DAY:,}/day, "
           f"{RECORDS:,} records reused | GB, a new record per event |",
           "|---|---:|---:|---|---:|---:|"]
    for name, keys, size, days, gb_reused, gb_fresh in rows:
        out.append(f"| {name} | {keys:.2f} | {size:,.0f} | {days} | {gb_reused:.2f} | {gb_fresh:.2f} |")
    out.append(f"| **total** | | {sum(x[2] for x in rows):,.0f} | | **{reused:.2f}** | **{fresh:.2f}** |")
    snap = r["kinds"].get("snapshot")
    if snap:
        now = snap["bytes"] * r["events"] / snap["keys"]
        out += ["", f"snapshot per record: {now:,.0f} B kept now; {r['snapshot_full']:,.0f} B for the whole "
                    f"record (as kept before), measured in this run"]
    out += [f"queued job hash while it waits: {r['queued_job']:,.0f} B, TTL {r['queued_job_ttl']} "
            f"(-1: none; gone when the job ends, result TTL {os.environ.get('CRMBRIDGE_RESULT_TTL', '0')} s)"]
    if t:
        out += ["", f"pending timers: {t['count']:,} → {t['bytes']:,.0f} B each (used_memory delta), "
                    f"{t['bytes'] * 1e6 / 1e9:.2f} GB per million; stored timer {t['stored_chars']:,} B "
                    f"packed (the whole timer as JSON with its event: {t['full_chars']:,} B); created in "
                    f"{t['create_s']:.1f} s; one record's timers listed in {t['list_ms']:.1f} ms (worst of 3)",
                f"  as kept before (whole event with its raw payload, no per-record set), same run: "
                f"{t['before_bytes']:,.0f} B each ({t['before_bytes'] * 1e6 / 1e9:.2f} GB per million); one "
                f"record's timers listed by reading every timer: {t['before_list_ms']:,.0f} ms"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--timers", type=int, default=100_000)
    args = parser.parse_args(argv)
    workdir = make_workdir()
    (workdir / "logs").mkdir()
    procs = Procs(workdir / "logs")
    store = redis()
    try:
        amo, tg = Fake(procs, "amo"), Fake(procs, "telegram")
        env = crm_env(make_config(workdir), amo, tg, REDIS_URL)
        env["CRMBRIDGE_RESULT_TTL"] = "0"           # the production default (crm_env keeps jobs for run.py)
        env["CRMBRIDGE_HISTORY_PATH"] = str(workdir / "history.sqlite3")
        env["CRMBRIDGE_LOG_LEVEL"] = "WARNING"
        os.environ.update(env)
        flush(store)
        result = drive(args.events)
        t = timers(args.timers) if args.timers else None
        print(table(result, t))
    finally:
        procs.stop_all()
        flush(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
