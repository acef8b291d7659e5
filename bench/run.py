"""crmbridge's benchmark: the service as README's Production section runs it, against a baseline
measured in the same run, on local fakes and the real Redis.

    .venv/bin/python bench/run.py            # the full run, about 4½ minutes
    .venv/bin/python bench/run.py --quick    # every phase with tiny counts (a smoke run, ~17 s)

crmbridge: `gunicorn --workers 4 'webhooks:create_app()'` and `python worker.py` processes on
Redis 127.0.0.1:6379 database 10 (BENCH_REDIS_URL), with the quickstart configuration copied
to a temporary directory, base URLs pointing at the fake amoCRM and the fake Telegram
(bench/fakes.py, one process each), and a rule that sends one Telegram message per webhook
(common.BENCH_RULES). Baseline: the thinnest receiver (bench/baseline_app.py: LPUSH the raw
body, answer 200) under the same gunicorn settings, and a worker that only BRPOPs and POSTs
to the same fake Telegram (bench/baseline_worker.py). The machine is shared, so every figure
is printed next to its baseline and as a ratio to it; see BENCHMARKS.md.

Phases: intake (16 concurrent clients, no workers; the two receivers take turns); what a
queued event costs in Redis; one worker in burst mode on pre-queued events, RQ's forking
Worker against SimpleWorker, and RQ alone on jobs that do nothing; end to end with the
workers running (closed loop at 16 concurrent, then paced below saturation, then paced at
50/s); what stays in Redis per handled event; pending timers (100,000 through
RQBackend.schedule: memory, and lateness of a few hundred due ones under load); Redis AOF
fsync policies on intake (a redis-server of our own). A sampler records the CPU other
people's processes use meanwhile, printed per phase.
Everything the benchmark starts is ended in a `finally`, and only database 10 is flushed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import (
    BENCH,
    GUNICORN_WORKERS,
    PYTHON,
    REDIS_URL,
    ROOT,
    TIMER_RULE,
    Background,
    Fake,
    Procs,
    Web,
    Webhooks,
    collect,
    cpu_seconds,
    crm_env,
    crm_path,
    exclusive,
    flush,
    free_port,
    make_config,
    make_workdir,
    peak_rss_mb,
    redis,
    tree,
)
from load import closed_loop, paced, percentile

CONCURRENCY = 16
PHASES = {"intake", "workers", "fork", "e2e", "timers", "aof"}
PER_RECORD = {"crmbridge:snapshot", "crmbridge:order", "crmbridge:order-done"}  # one per CRM record, not event
BELOW = 0.8               # "below saturation": this share of the closed-loop delivery rate
CRM_PREFIX = "📥"
BASE_PREFIX = "baseline"
TIMER_PREFIX = "⏰"


@dataclass(frozen=True)
class Scale:
    warmup: float            # seconds of load before each intake measurement
    intake: float            # seconds of measured intake
    burst_events: int        # events pre-queued for the one-worker burst
    fork_events: int         # events for the forking Worker vs SimpleWorker comparison
    e2e_events: int          # webhooks in the closed-loop end-to-end run
    paced_seconds: float     # length of each paced run
    timers: int              # pending filler timers
    due_timers: int          # timers due during the load
    due_lead: float          # the first is due this long after scheduling…
    due_window: float        # …and the last this much later
    aof_seconds: float       # measured intake per AOF policy (0: skip)
    settle: float = 1.0      # seconds to wait after the last delivery, to see duplicates
    timer_procs: int = 3     # processes creating the filler timers (0: in this process)
    timer_loads: int = 2     # timer lateness under 50/s, then also under the below-saturation load
    workers: int = 2         # worker.py processes (and baseline workers) for end to end


FULL = Scale(warmup=1.5, intake=8, burst_events=1500, fork_events=150, e2e_events=1500,
             paced_seconds=10, timers=100_000, due_timers=300, due_lead=2.5, due_window=10, aof_seconds=5)
QUICK = Scale(warmup=0.2, intake=0.6, burst_events=20, fork_events=0, e2e_events=30,
              paced_seconds=0.5, timers=200, due_timers=8, due_lead=0.8, due_window=0.4, aof_seconds=0,
              settle=0.2, timer_procs=0, timer_loads=1)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return seconds * 1000


def run_closed(port: int, stream, *, duration: float | None = None, count: int | None = None):
    return asyncio.run(closed_loop("127.0.0.1", port, stream, CONCURRENCY, duration=duration, count=count))


def run_paced(port: int, stream, rate: float, seconds: float):
    return asyncio.run(paced("127.0.0.1", port, stream, rate, max(1, int(rate * seconds))))


# --- phases ---------------------------------------------------------------------------------------

def intake(webs: dict[str, Web], hooks: Webhooks, path: str, scale: Scale, seconds: float,
           expect: dict[str, bytes] | None = None, rounds: int = 4) -> dict[str, dict[str, Any]]:
    """Webhooks acknowledged per second and ack latency, 16 concurrent clients, no workers.

    The systems take turns, `rounds` slices each (A B A B …), so that a change in the shared
    machine's background load hits them alike."""
    for web in webs.values():
        run_closed(web.port, hooks.stream(web.port, path), duration=scale.warmup)
    acc = {name: {"ok": [], "all": 0, "elapsed": 0.0, "cpu": 0.0} for name in webs}
    for _ in range(rounds):
        for name, web in webs.items():
            pids = web.pids()
            cpu0 = cpu_seconds(pids)
            run = run_closed(web.port, hooks.stream(web.port, path), duration=seconds / rounds)
            a = acc[name]
            a["cpu"] += cpu_seconds(pids) - cpu0
            a["ok"] += run.ok
            a["all"] += len(run.results)
            a["elapsed"] += run.elapsed
    out = {}
    for name, a in acc.items():
        ok = a["ok"]
        wrong = [r for r in ok if expect and name in expect and r.body.strip() != expect[name]]
        lat = [r.latency for r in ok]
        out[name] = {"rate": len(ok) / a["elapsed"], "p50": ms(percentile(lat, 50)), "p99": ms(percentile(lat, 99)),
                     "count": len(ok), "failed": a["all"] - len(ok) + len(wrong),
                     "cpu_ms": ms(a["cpu"] / max(1, len(ok)))}
    return out


def queued_memory(store) -> dict[str, Any]:
    """Redis bytes per queued crmbridge event: every key family that grows with the events
    (RQ job hashes, tickets, order counters…, found by SCAN, whatever intake writes today),
    MEMORY USAGE on up to 300 keys of each, plus the queue list's bytes per entry."""
    qkey = "rq:queue:crmbridge"
    queued = store.llen(qkey)
    families: dict[str, list[bytes]] = {}
    for key in store.scan_iter(count=2000):
        name = key.decode(errors="replace")
        parts = name.split(":")
        family = ":".join(parts[:2]) if name.startswith(("rq:", "crmbridge:")) else name
        families.setdefault(family, []).append(key)
    per_event: dict[str, float] = {}
    for family, keys in families.items():
        if family == qkey.rsplit(":", 1)[0] or len(keys) < queued / 2:
            continue  # the queue itself (below), and singletons (rq:queues, metadata…)
        sample = keys[:300]
        mean = statistics.mean(store.memory_usage(k, samples=0) or 0 for k in sample)
        per_event[family] = mean * len(keys) / max(1, queued)
    per_event["queue entry"] = (store.memory_usage(qkey, samples=0) or 0) / max(1, queued)
    seen = per_event.pop("crmbridge:seen", float("nan"))
    return {"queued": queued, "parts": per_event, "seen": seen, "event": sum(per_event.values())}


def baseline_memory(store) -> float:
    key = "bench-baseline:bodies"
    return (store.memory_usage(key, samples=0) or 0) / max(1, store.llen(key))


def prequeue(web: Web, hooks: Webhooks, path: str, count: int) -> set[str]:
    run = run_closed(web.port, hooks.stream(web.port, path), count=count)
    assert len(run.ok) == count, f"pre-queueing: {len(run.results) - len(run.ok)} of {count} failed"
    return {r.key for r in run.ok}


def delivery_rate(got: dict[str, list[float]]) -> float:
    """Deliveries per second once going: from the 10th delivery to the last."""
    stamps = sorted(v[0] for v in got.values())
    skip = min(10, max(0, len(stamps) - 2))
    span = stamps[-1] - stamps[skip] if len(stamps) > 1 else 0
    return (len(stamps) - 1 - skip) / span if span > 0 else float("nan")


def job_times(store, queue: str = "crmbridge") -> dict[str, tuple[float, float, float]]:
    """{lead id: (enqueued_at, started_at, ended_at)} of crmbridge's finished RQ jobs, from the
    job hashes RQ keeps for result_ttl (the description names the lead)."""
    from datetime import datetime
    ids = store.zrange(f"rq:finished:{queue}", 0, -1)
    pipe = store.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(b"rq:job:" + job_id, "description", "enqueued_at", "started_at", "ended_at")
    found = {}

    def stamp(raw: bytes) -> float:
        return datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    for desc, enq, start, end in pipe.execute():
        if desc and enq and start and end:
            key = desc.decode().rsplit(":", 1)[-1] if queue == "crmbridge" else len(found)
            found[str(key)] = (stamp(enq), stamp(start), stamp(end))
    return found


def breakdown(store, sent: dict[str, float], got: dict[str, list[float]]) -> dict[str, float]:
    """Where end-to-end time goes: queue wait (enqueued → started), the job up to the Telegram
    call (started → received by the fake), and the whole job (started → ended); p50/p99 in ms."""
    times = job_times(store)
    wait, to_call, job = [], [], []
    for key, (enq, start, end) in times.items():
        if key in sent and key in got:
            wait.append(start - enq)
            to_call.append(got[key][0] - start)
            job.append(end - start)
    out = {}
    for name, values in (("wait", wait), ("to_call", to_call), ("job", job)):
        out[f"{name}_p50"], out[f"{name}_p99"] = ms(percentile(values, 50)), ms(percentile(values, 99))
    out["jobs"] = len(job)
    return out


def burst(procs: Procs, name: str, cmd: list[str], env: dict[str, str], tg: Fake, keys: set[str],
          prefix: str, timeout: float) -> dict[str, Any]:
    """Run one worker process in burst mode on pre-queued events; its steady delivery rate."""
    t0 = time.time()
    proc = procs.start(name, cmd, env)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} still running after {timeout:.0f} s; stopped")
    procs.stop(proc)
    wall = time.time() - t0
    got = collect(tg, keys, prefix, timeout=5, settle=0.2)
    lost = len(keys - got.keys())
    jobs = [end - start for key, (enq, start, end) in job_times(redis()).items() if key in keys]
    return {"rate": delivery_rate(got), "delivered": len(got), "lost": lost,
            "dup": sum(len(v) - 1 for v in got.values()), "wall": wall,
            "job_ms": ms(statistics.mean(jobs)) if jobs else float("nan")}


def rq_floor(procs: Procs, env: dict[str, str], store, count: int, kind: str = "noop") -> dict[str, float]:
    """Jobs per second one worker process does when the job does nothing: RQ's own cost
    (`noop`: RQ's SimpleWorker; `noop-ours`: the worker class worker.py runs)."""
    from rq import Queue
    from rq.serializers import JSONSerializer
    from rq_worker import NOOP_QUEUE
    queue = Queue(NOOP_QUEUE, connection=store, serializer=JSONSerializer)
    store.delete(f"rq:finished:{NOOP_QUEUE}")
    for start in range(0, count, 500):
        queue.enqueue_many([Queue.prepare_data("math.floor", (1.5,), result_ttl=300)
                            for _ in range(min(500, count - start))])
    proc = procs.start(f"rq-{kind}", [PYTHON, str(BENCH / "rq_worker.py"), kind], env)
    proc.wait(300)
    starts = sorted(t[1] for t in job_times(store, NOOP_QUEUE).values())
    skip = min(10, max(0, len(starts) - 2))
    span = starts[-1] - starts[skip] if len(starts) > 1 else 0
    return {"rate": (len(starts) - 1 - skip) / span if span > 0 else float("nan"), "jobs": len(starts)}


def retained_memory(store, handled: int) -> dict[str, Any]:
    """What stays in Redis per handled event once its job is done: every key family that grows
    with the events, with its bytes per event (MEMORY USAGE on up to 300 keys) and its TTL."""
    families: dict[str, list[bytes]] = {}
    for key in store.scan_iter(count=2000):
        name = key.decode(errors="replace")
        if name.startswith(("rq:", "crmbridge:")):
            families.setdefault(":".join(name.split(":")[:2]), []).append(key)
    kept = {}
    for family, keys in families.items():
        if len(keys) < handled / 2:
            continue
        sample = keys[:300]
        mean = statistics.mean(store.memory_usage(k, samples=0) or 0 for k in sample)
        ttls = [t for t in (store.ttl(k) for k in sample[:20]) if t and t > 0]
        kept[family] = {"bytes": mean * len(keys) / max(1, handled), "ttl": max(ttls) if ttls else -1}
    audit = store.keys("*:audit")
    entries = sum(store.xlen(k) for k in audit)
    audit_bytes = sum(store.memory_usage(k, samples=0) or 0 for k in audit)
    return {"handled": handled, "families": kept, "audit_entry": audit_bytes / max(1, entries),
            "audit_per_event": entries / max(1, handled)}


def start_workers(procs: Procs, env: dict[str, str], count: int, store) -> tuple[list, list]:
    crm = [procs.start(f"crm-worker-{i}", [PYTHON, "worker.py"], env) for i in range(count)]
    base = [procs.start(f"baseline-worker-{i}", [PYTHON, str(BENCH / "baseline_worker.py")], env)
            for i in range(count)]
    deadline = time.monotonic() + 60
    while store.scard("rq:workers:crmbridge") < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in crm + base):
            raise RuntimeError("worker.py processes did not start; see their logs")
        time.sleep(0.1)
    time.sleep(0.5)
    return crm, base


def end_to_end(web: Web, hooks: Webhooks, path: str, *, tg: Fake, prefix: str, count: int | None = None,
               rate: float | None = None, seconds: float = 0, worker_pids: list[int] | None = None,
               settle: float = 1.0) -> dict[str, Any]:
    """Send webhooks (closed loop of 16, or paced), wait for every message; latency and completeness."""
    tg.reset()
    pids = worker_pids or []
    cpu0 = cpu_seconds(pids)
    stream = hooks.stream(web.port, path)
    run = run_closed(web.port, stream, count=count) if rate is None else run_paced(web.port, stream, rate, seconds)
    sent = {r.key: r.sent_at for r in run.ok}
    got = collect(tg, set(sent), prefix, timeout=max(30.0, 3 * run.elapsed), settle=settle)
    cpu = cpu_seconds(pids) - cpu0
    lat = [got[k][0] - t for k, t in sent.items() if k in got]
    last = max((v[0] for v in got.values()), default=run.started)
    parts = breakdown(redis(), sent, got) if prefix == CRM_PREFIX else {}
    return {**parts, "sent": len(sent), "failed": len(run.results) - len(sent), "delivered": len(got),
            "lost": len(set(sent) - got.keys()), "dup": sum(len(v) - 1 for v in got.values()),
            "p50": ms(percentile(lat, 50)), "p99": ms(percentile(lat, 99)),
            "rate_in": len(sent) / run.elapsed, "rate_out": len(got) / max(1e-9, last - run.started),
            "late_sends": sum(1 for r in run.results if r.late > 0.005),
            "cpu_ms": ms(cpu / max(1, len(got)))}


def timers_memory(procs: Procs, env: dict[str, str], store, scale: Scale, rt: Any) -> dict[str, Any]:
    """Create the pending filler timers through RQBackend.schedule; Redis memory they take."""
    import timers as bench_timers

    mem0 = store.info("memory")["used_memory"]
    if scale.timer_procs:
        share = scale.timers // scale.timer_procs
        counts = [share] * (scale.timer_procs - 1) + [scale.timers - share * (scale.timer_procs - 1)]
        fillers = [procs.start(f"timers-{i}", [PYTHON, str(BENCH / "timers.py"), str(70_000_000 + i * share),
                                               str(n)], env, stdout=subprocess.PIPE)
                   for i, n in enumerate(counts)]
        took = []
        for p in fillers:
            out, _ = p.communicate(timeout=600)
            if p.returncode:
                raise RuntimeError("bench/timers.py failed; see its log")
            took.append(json.loads(out)["seconds"])
        created = max(took)  # they ran side by side
    else:
        created = bench_timers.fill(rt, 70_000_000, scale.timers)
    mem1 = store.info("memory")["used_memory"]
    scheduled = store.zcard("rq:scheduled:crmbridge")
    jobs = [j.decode() for j in store.zrange("rq:scheduled:crmbridge", 0, 199)]
    structure = ((store.memory_usage(rt.keys("timers"), samples=0) or 0)
                 + (store.memory_usage(rt.keys("timer-data"), samples=0) or 0)
                 + (store.memory_usage("rq:scheduled:crmbridge", samples=0) or 0)
                 + (statistics.mean(store.memory_usage(f"rq:job:{j}", samples=0) or 0 for j in jobs) * scheduled
                    if jobs else 0))
    return {"count": store.zcard(rt.keys("timers")), "scheduled": scheduled, "create_rate": scale.timers / created,
            "info_bytes": (mem1 - mem0) / max(1, scale.timers), "structure_bytes": structure / max(1, scale.timers)}


def timers_lateness(store, scale: Scale, rt: Any, web: Web, hooks: Webhooks, tg: Fake, rate: float,
                    first_lead: int) -> dict[str, Any]:
    """Schedule timers due within the next seconds (among the pending ones), run paced intake
    load while the real scheduler (in the worker.py processes) fires them; how late they fire."""
    import timers as bench_timers

    rule = next(r for r in rt.ruleset.rules if r.name == TIMER_RULE)
    tg.reset()
    due = bench_timers.due_timers(rt, rule.name, rule.id, first_lead, scale.due_timers, scale.due_lead,
                                  scale.due_window)
    load_seconds = scale.due_lead + scale.due_window + min(1.5, scale.settle * 3)
    run = run_paced(web.port, hooks.stream(web.port, crm_path()), rate, load_seconds)
    got = collect(tg, set(due), TIMER_PREFIX, timeout=30, settle=scale.settle)
    late = [got[k][0] - at for k, at in due.items() if k in got]
    times = job_times(store)
    moved = [times[k][0] - at for k, at in due.items() if k in times]      # fire_at → on the queue
    waited = [times[k][1] - times[k][0] for k in due if k in times]         # on the queue → started
    called = [got[k][0] - times[k][1] for k in due if k in times and k in got]  # started → Telegram
    return {"due": len(due), "fired": len(got), "lost": len(set(due) - got.keys()),
            "dup": sum(len(v) - 1 for v in got.values()),
            "p50": ms(percentile(late, 50)), "p99": ms(percentile(late, 99)),
            "min": ms(min(late, default=float("nan"))), "early": sum(1 for x in late if x < 0),
            "load_rate": rate, "load_sent": len(run.ok),
            "enqueue_p50": ms(percentile(moved, 50)), "enqueue_p99": ms(percentile(moved, 99)),
            "enqueue_min": ms(min(moved, default=float("nan"))),
            "wait_p50": ms(percentile(waited, 50)), "wait_p99": ms(percentile(waited, 99)),
            "call_p50": ms(percentile(called, 50)), "call_p99": ms(percentile(called, 99))}


def aof(procs: Procs, workdir: Path, config: Path, amo: Fake, tg: Fake, scale: Scale) -> dict[str, Any]:
    """Intake on a redis-server of our own, AOF off / everysec / always."""
    from redis import Redis
    port = free_port()
    data = workdir / "redis-aof"
    data.mkdir()
    server = procs.start("redis-aof", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                       "--appendonly", "no", "--dir", str(data), "--maxmemory-policy", "noeviction"],
                         dict(os.environ))
    url = f"redis://127.0.0.1:{port}/10"
    own = Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            own.ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    env = crm_env(config, amo, tg, redis_url=url)
    web = Web(procs, "crm-web-aof", "webhooks:create_app()", env, ROOT).ready()
    hooks = Webhooks(first_lead=80_000_000)
    acc: dict[str, list[dict[str, Any]]] = {"no": [], "everysec": [], "always": []}
    try:
        run_closed(web.port, hooks.stream(web.port, crm_path()), duration=scale.warmup)
        for _ in range(2):  # taking turns, as the intake phase does
            for policy, runs in acc.items():
                own.flushdb()
                own.config_set("appendonly", "no" if policy == "no" else "yes")
                if policy != "no":
                    own.config_set("appendfsync", policy)
                while any(own.info("persistence").get(k) for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")):
                    time.sleep(0.05)
                runs.append(intake({"crm": web}, hooks, crm_path(), Scale(**{**scale.__dict__, "warmup": 0.2}),
                                          scale.aof_seconds / 2, rounds=1)["crm"])
        results = {policy: {"rate": statistics.mean(r["rate"] for r in runs),
                            "p99": statistics.mean(r["p99"] for r in runs)} for policy, runs in acc.items()}
    finally:
        procs.stop(web.proc)
        own.close()
        procs.stop(server)
    return results


# --- the table ------------------------------------------------------------------------------------

def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if value != value:  # noqa: PLR0124 (NaN)
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def ratio(a: Any, b: Any) -> str:
    try:
        return f"{a / b:.2f}×" if b and a == a and b == b else "—"  # noqa: PLR0124 (NaN)
    except TypeError:
        return "—"


def row(measure: str, crm: Any, base: Any = None, unit: str = "", target: str = "", holds: bool | None = None,
        show_ratio: bool = True) -> list[str]:
    verdict = "" if holds is None else ("yes" if holds else "NO")
    return [measure, fmt(crm, unit), fmt(base, unit), ratio(crm, base) if show_ratio and base is not None else "—",
            target, verdict]


def table(r: dict[str, Any], scale: Scale) -> str:
    rows: list[list[str]] = []
    if "intake" in r:
        ci, bi = r["intake"]["crm"], r["intake"]["base"]
        rows.append(row("Intake: webhooks acked/s (16 concurrent)", ci["rate"], bi["rate"], "/s",
                        "≥ 0.7× baseline", ci["rate"] >= 0.7 * bi["rate"]))
        rows.append(row("Intake: ack latency p50", ci["p50"], bi["p50"], "ms"))
        rows.append(row("Intake: ack latency p99", ci["p99"], bi["p99"], "ms", "< 20 ms", ci["p99"] < 20))
        rows.append(row("Intake: web CPU per webhook", ci["cpu_ms"], bi["cpu_ms"], "ms"))
        rows.append(row("Intake: non-200 or unexpected answers", ci["failed"], bi["failed"], "", "0",
                        ci["failed"] == 0, show_ratio=False))
    if "crm" in r.get("workers", {}):
        cw, bw = r["workers"]["crm"], r["workers"]["base"]
        rows.append(row("One worker process, burst: events/s", cw["rate"], bw["rate"], "/s",
                        "≥ 0.5× baseline", cw["rate"] >= 0.5 * bw["rate"]))
        rows.append(row("  crmbridge: mean job run time (RQ started → ended)", cw["job_ms"], None, "ms"))
    if "workers" in r:
        if r["workers"].get("fork"):
            fk, sw = r["workers"]["fork"], r["workers"]["simple"]
            rows.append(row("RQ forking Worker vs SimpleWorker: events/s", fk["rate"], sw["rate"], "/s",
                            "(baseline column = SimpleWorker)"))
        base_rate = r["workers"].get("base", {}).get("rate")
        if r["workers"].get("noop"):
            rows.append(row("RQ SimpleWorker alone, jobs that do nothing: jobs/s (vs baseline worker)",
                            r["workers"]["noop"]["rate"], base_rate, "/s"))
        if r["workers"].get("noop_ours"):
            rows.append(row("worker.py's worker class alone, jobs that do nothing: jobs/s (vs baseline worker)",
                            r["workers"]["noop_ours"]["rate"], base_rate, "/s"))
    for key, label in (("sat", f"E2E closed loop, {CONCURRENCY} concurrent"),
                       ("below", "E2E paced below saturation"), ("light", "E2E paced 50 webhooks/s")):
        if key not in r:
            continue
        c, b = r[key]["crm"], r[key]["base"]
        rate_note = f" @ {c['rate_in']:.0f}/s" if key == "below" else ""
        if key == "sat":
            rows.append(row(f"{label}: delivered/s", c["rate_out"], b["rate_out"], "/s"))
        target, holds = "", None
        if key == "below":
            target, holds = "p99 < 250 ms", c["p99"] < 250
        elif key == "light":
            target, holds = "p99 < 10 ms", c["p99"] < 10
        rows.append(row(f"{label}{rate_note}: p50", c["p50"], b["p50"], "ms"))
        rows.append(row(f"{label}{rate_note}: p99", c["p99"], b["p99"], "ms", target, holds))
        if "wait_p50" in c:
            rows.append(row("  crmbridge: queue wait, p50 / p99", f"{c['wait_p50']:.1f} / {c['wait_p99']:.1f} ms",
                            None, show_ratio=False))
            rows.append(row("  crmbridge: job start → Telegram call, p50 / p99",
                            f"{c['to_call_p50']:.1f} / {c['to_call_p99']:.1f} ms", None, show_ratio=False))
        rows.append(row(f"{label}: lost / duplicated", f"{c['lost']} / {c['dup']} of {c['sent']}",
                        f"{b['lost']} / {b['dup']} of {b['sent']}", "", "0 / 0",
                        c["lost"] == 0 and c["dup"] == 0 and c["failed"] == 0, show_ratio=False))
        if key == "sat":
            rows.append(row("E2E: worker CPU per event", c["cpu_ms"], b["cpu_ms"], "ms"))
    if "rss" in r:
        rss = r["rss"]
        rows.append(row("Peak RSS: one web worker process", rss["crm_web_max"], rss["base_web_max"], "MB"))
        rows.append(row("Peak RSS: web total (master + 4 workers)", rss["crm_web_total"], rss["base_web_total"], "MB"))
        rows.append(row("Peak RSS: one worker process", rss["crm_worker_max"], rss["base_worker_max"], "MB"))
    if "memory" in r:
        m = r["memory"]
        rows.append(row("Redis bytes per queued event", m["event"], m["baseline"], "B"))
        rows.append(row("  of which " + ", ".join(m["parts"]),
                        " + ".join(f"{v:.0f}" for v in m["parts"].values()) + " B", None, show_ratio=False))
        rows.append(row("Redis bytes per dedupe key (crmbridge:seen)", m["seen"], None, "B"))
    if "retained" in r:
        kept = {f: v for f, v in r["retained"]["families"].items() if v["ttl"] > 3600}
        gone = {f: v for f, v in r["retained"]["families"].items() if v["ttl"] <= 3600}

        def days(ttl: float) -> str:
            return f"{ttl / 86400:.0f} d" if ttl >= 86400 else f"{ttl / 3600:.0f} h" if ttl >= 3600 else f"{ttl:.0f} s"
        per_event = {f: v for f, v in kept.items() if f not in PER_RECORD}
        per_record = {f: v for f, v in kept.items() if f in PER_RECORD}

        def listed(fams: dict[str, Any]) -> str:
            return ", ".join(f"{f.split(':', 1)[1]} {v['bytes']:.0f} ({days(v['ttl'])})" for f, v in fams.items())
        rows.append(row("Redis bytes kept per handled event after its job (per-event keys)",
                        sum(v["bytes"] for v in per_event.values()), None, "B"))
        rows.append(row("  of which (TTL)", listed(per_event), None, show_ratio=False))
        rows.append(row("Redis bytes kept per CRM record touched (per-record keys)",
                        sum(v["bytes"] for v in per_record.values()), None, "B"))
        rows.append(row("  of which (TTL)", listed(per_record), None, show_ratio=False))
        rows.append(row("  kept for minutes only (RQ job and result)", ", ".join(
            f"{f} {v['bytes']:.0f} B ({days(v['ttl'])})" for f, v in gone.items()), None, show_ratio=False))
        rows.append(row("  audit stream (capped at 100,000 entries): bytes per entry, entries per event",
                        f"{r['retained']['audit_entry']:.0f} B, {r['retained']['audit_per_event']:.1f}", None,
                        show_ratio=False))
        steady = sum(v["bytes"] * 10 * v["ttl"] for f, v in kept.items() if f not in PER_RECORD)
        rows.append(row("  → per-event keys at a steady 10 webhooks/s, each kept its TTL", steady / 2**30, None,
                        "GiB"))
    if "timers" in r:
        t = r["timers"]
        rows.append(row(f"Timers: Redis bytes per pending timer ({t['count']:,} pending, INFO delta)",
                        t["info_bytes"], None, "B"))
        rows.append(row("Timers: same, from MEMORY USAGE of their keys", t["structure_bytes"], None, "B"))
        rows.append(row(f"Timers: created per second ({scale.timer_procs or 1} process(es), RQBackend.schedule)",
                        t["create_rate"], None, "/s"))
    for key in ("timers_light", "timers_below"):
        if key not in r:
            continue
        t = r[key]
        at = f"{t['load_rate']:.0f}/s load"
        rows.append(row(f"Timers under {at}: lateness p50 ({t['fired']}/{t['due']} fired)", t["p50"], None, "ms"))
        rows.append(row(f"Timers under {at}: lateness p99", t["p99"], None, "ms", "< 1000 ms", t["p99"] < 1000))
        rows.append(row("  fire_at → on the queue (timer poll), p50 / p99 / min",
                        f"{t['enqueue_p50']:.0f} / {t['enqueue_p99']:.0f} / {t['enqueue_min']:.0f} ms", None,
                        show_ratio=False))
        rows.append(row("  queue wait, p50 / p99", f"{t['wait_p50']:.0f} / {t['wait_p99']:.0f} ms", None,
                        show_ratio=False))
        rows.append(row("  job start → Telegram call, p50 / p99", f"{t['call_p50']:.0f} / {t['call_p99']:.0f} ms",
                        None, show_ratio=False))
        rows.append(row("  earliest (negative: before fire_at) / how many fired early",
                        f"{t['min']:.0f} ms / {t['early']}", None, show_ratio=False))
        rows.append(row(f"Timers under {at}: lost / duplicated", f"{t['lost']} / {t['dup']}", None, "", "0 / 0",
                        t["lost"] == 0 and t["dup"] == 0, show_ratio=False))
    if "aof" in r:
        a = r["aof"]
        rows.append(row("Disk: one small append + fsync (what appendfsync always waits for)", a["fsync_ms"], None,
                        "ms"))
        for policy in ("everysec", "always"):
            rows.append(row(f"Intake with AOF appendfsync {policy}: acked/s (baseline col = AOF off)",
                            a[policy]["rate"], a["no"]["rate"], "/s"))
            rows.append(row(f"Intake with AOF appendfsync {policy}: ack p99 (baseline col = AOF off)",
                            a[policy]["p99"], a["no"]["p99"], "ms"))
    head = ["measure", "crmbridge", "baseline", "ratio", "target", "holds"]
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(x) for x in rows]
    return "\n".join(out)


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    redis_version = redis().info("server").get("redis_version")
    return (f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}, Redis {redis_version}, load average "
            f"{os.getloadavg()[0]:.2f} at start")


# --- main -------------------------------------------------------------------------------------------

def fsync_ms(directory: Path, count: int = 200) -> float:
    """Milliseconds per small append + fsync on this disk (what appendfsync always waits for)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 256)
            os.fsync(fd)
        return ms((time.perf_counter() - t0) / count)
    finally:
        os.close(fd)
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of every phase")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configuration)")
    parser.add_argument("--only", default="",
                        help="comma-separated phases to run (intake, workers, fork, e2e, timers, aof); default all")
    parser.add_argument("--lock-wait", type=float, default=900,
                        help="seconds to wait for another benchmark run to finish (exit 3 if it does not)")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = only - PHASES
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(PHASES))}")

    def wanted(name: str) -> bool:
        return not only or name in only
    lock = exclusive(args.lock_wait)
    if lock is None:
        print("another benchmark (bench/run.py or bench/profiling.py) is running on this machine", file=sys.stderr)
        return 3
    started = time.time()
    workdir = make_workdir()
    procs = Procs(workdir)
    store = redis()
    store.ping()
    flush(store)
    results: dict[str, Any] = {"machine": machine(), "scale": scale.__dict__}
    redis_pid = store.info("server").get("process_id")
    background = Background(exclude={int(redis_pid)} if redis_pid else set()).start()
    windows: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def phase(name: str):
        t0 = time.time()
        try:
            yield
        finally:
            windows[name] = (t0, time.time())

    log(f"work directory {workdir}; Redis {REDIS_URL}")
    # the timer phases build a Runtime here: import it while the servers boot
    preload = threading.Thread(target=lambda: [importlib.import_module(m) for m in ("worker", "runtime", "timers")],
                               daemon=True)
    preload.start()
    try:
        amo, tg = Fake(procs, "amo"), Fake(procs, "telegram")
        config = make_config(workdir)
        env = crm_env(config, amo, tg)
        crm = Web(procs, "crm-web", "webhooks:create_app()", env, ROOT)
        base = Web(procs, "baseline-web", "baseline_app:create_app()", env, BENCH)
        crm.ready()
        base.ready()
        hooks = Webhooks()

        if wanted("intake"):
            log("intake (no workers)")
            with phase("intake"):
                results["intake"] = intake({"base": base, "crm": crm}, hooks, crm_path(), scale, scale.intake,
                                           expect={"crm": b'{"accepted":1,"duplicates":0}'})
            results["memory"] = {**queued_memory(store), "baseline": baseline_memory(store)}
            flush(store)

        if wanted("workers"):
            log(f"one worker, burst, {scale.burst_events} pre-queued events")
            with phase("workers"):
                keys = prequeue(crm, hooks, crm_path(), scale.burst_events)
                cw = burst(procs, "crm-burst", [PYTHON, "worker.py", "--burst"], env, tg, keys, CRM_PREFIX, 300)
                keys = prequeue(base, hooks, crm_path(), scale.burst_events)
                bw = burst(procs, "baseline-burst", [PYTHON, str(BENCH / "baseline_worker.py"), "--burst"], env,
                           tg, keys, BASE_PREFIX, 300)
            results["workers"] = {"crm": cw, "base": bw}
            flush(store)
            tg.reset()
        if scale.fork_events and wanted("fork"):
            log(f"RQ forking Worker vs SimpleWorker, {scale.fork_events} events each")
            results.setdefault("workers", {})
            with phase("fork"):
                for kind in ("fork", "simple"):
                    keys = prequeue(crm, hooks, crm_path(), scale.fork_events)
                    results["workers"][kind] = burst(procs, f"rq-{kind}",
                                                     [PYTHON, str(BENCH / "rq_worker.py"), kind],
                                                     env, tg, keys, CRM_PREFIX, 300)
                    flush(store)
                    tg.reset()
                results["workers"]["noop"] = rq_floor(procs, env, store, 2000)
                flush(store)
                results["workers"]["noop_ours"] = rq_floor(procs, env, store, 2000, "noop-ours")
                flush(store)

        crm_workers: list = []
        base_workers: list = []
        below = 50
        if wanted("e2e") or wanted("timers"):
            log(f"end to end: {scale.workers} worker.py + {scale.workers} baseline workers")
            crm_workers, base_workers = start_workers(procs, env, scale.workers, store)
        if wanted("e2e"):
            crm_wpids = [p for w in crm_workers for p in tree(w.pid)]
            base_wpids = [p for w in base_workers for p in tree(w.pid)]
            e2e = {"tg": tg, "settle": scale.settle}
            with phase("sat"):
                results["sat"] = {
                    "base": end_to_end(base, hooks, crm_path(), prefix=BASE_PREFIX, count=scale.e2e_events,
                                       worker_pids=base_wpids, **e2e),
                    "crm": end_to_end(crm, hooks, crm_path(), prefix=CRM_PREFIX, count=scale.e2e_events,
                                      worker_pids=crm_wpids, **e2e)}
            below = round(max(5.0, BELOW * results["sat"]["crm"]["rate_out"]))
            for key, rate in (("below", below), ("light", 50)):
                log(f"end to end paced at {rate}/s" + (f" ({BELOW:.0%} of crmbridge's closed-loop delivery rate)"
                                                        if key == "below" else ""))
                with phase(key):
                    results[key] = {
                        "crm": end_to_end(crm, hooks, crm_path(), prefix=CRM_PREFIX, rate=rate,
                                          seconds=scale.paced_seconds, **e2e),
                        "base": end_to_end(base, hooks, crm_path(), prefix=BASE_PREFIX, rate=rate,
                                           seconds=scale.paced_seconds, **e2e)}

            handled = sum(results[k]["crm"]["sent"] for k in ("sat", "below", "light"))
            results["retained"] = retained_memory(store, handled)

        if wanted("timers"):
            preload.join()
            from config.settings import Settings
            from runtime import Runtime
            rt = Runtime.create(Settings.from_env(env))
            log(f"timers: {scale.timers:,} pending through RQBackend.schedule")
            with phase("timers"):
                results["timers"] = timers_memory(procs, env, store, scale, rt)
            loads = (("timers_light", 50, 90_000_000), ("timers_below", below, 91_000_000))[:scale.timer_loads]
            for key, rate, first in loads:
                log(f"timers: {scale.due_timers} due under {rate}/s intake load")
                with phase(key):
                    results[key] = timers_lateness(store, scale, rt, crm, hooks, tg, rate, first)

        if crm_workers:
            results["rss"] = {
                "crm_web_max": max(peak_rss_mb(p) for p in crm.worker_pids()),
                "crm_web_total": sum(peak_rss_mb(p) for p in crm.pids()),
                "base_web_max": max(peak_rss_mb(p) for p in base.worker_pids()),
                "base_web_total": sum(peak_rss_mb(p) for p in base.pids()),
                "crm_worker_max": max(peak_rss_mb(w.pid) for w in crm_workers),
                "base_worker_max": max(peak_rss_mb(w.pid) for w in base_workers)}
            procs.stop_many(crm_workers + base_workers + [crm.proc, base.proc])
        flush(store)

        if scale.aof_seconds and wanted("aof"):
            log("intake with Redis AOF: off, everysec, always (a redis-server of our own)")
            with phase("aof"):
                results["aof"] = aof(procs, workdir, config, amo, tg, scale)
                results["aof"]["fsync_ms"] = fsync_ms(workdir)
    finally:
        background.stop()
        procs.stop_all()
        with contextlib.suppress(Exception):   # Redis gone: nothing to flush
            flush(store)
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.time() - started
    results["background"] = {name: background.mean(*w) for name, w in windows.items()}
    results["background_all"] = background.mean(started, time.time())
    print(f"crmbridge benchmark{' (--quick: tiny counts, figures not meaningful)' if args.quick else ''}")
    print(f"machine: {results['machine']}")
    print(f"setup: gunicorn --workers {GUNICORN_WORKERS} (both receivers), {scale.workers} worker.py processes "
          f"(one per core) and {scale.workers} baseline workers; Redis {REDIS_URL}; run took "
          f"{results['seconds']:.0f} s")
    print("background CPU of other processes on the machine (cores, mean per phase): "
          + ", ".join(f"{name} {v:.2f}" for name, v in results["background"].items())
          + f"; whole run {results['background_all']:.2f}\n")
    print(table(results, scale))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
