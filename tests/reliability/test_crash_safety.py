"""Crash safety: thousands of real-format amoCRM webhooks into the app on a real socket, two
`python worker.py` processes SIGKILLed at random moments and restarted, then a bounded wait:
every lead must get exactly one task in FakeAmo and one message in FakeTelegram.

How RQ 2.12 recovers a job whose worker died (rq/registry.py, rq/worker/worker_classes.py):
a SimpleWorker puts the execution in the StartedJobRegistry with the score
now + job.timeout + 60 (180 s default job timeout: 240 s) and never refreshes it while the job runs;
StartedJobRegistry.cleanup, run by a live worker's maintenance pass every maintenance_interval
seconds, only treats entries whose score has passed as abandoned, then re-enqueues the job (through
its Retry intervals) if `job.retries_left`, else moves it to the FailedJobRegistry. A job killed
between its dequeue (LMOVE into the intermediate list) and the registry entry is recovered by
IntermediateQueue.cleanup after more than a minute. And a worker runs its maintenance pass only
between dequeues: an idle worker blocks in BLMOVE for worker_ttl - 15 = 405 s. So a killed job waits
240 s at least and, once the queue is drained, up to about 405 s more (measured: all nine orphans of
a run were handled 411 s after the last kill), whatever CRMBRIDGE_MAINTENANCE_INTERVAL says.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from tests.reliability.harness import (
    TEST_REDIS_URL, Deployment, LiveApp, Vendors, WorkerPool, amo_lead, job_lead, open_test_db,
    percentile, post_leads, quickstart_config, report, rq_state, seeded, started_entries, tally,
    wait_until, worker_names_by_pid,
)

EVENTS = int(os.environ.get("CRMBRIDGE_RELIABILITY_EVENTS", "2000"))
FIRST_LEAD = 7_100_000
PREFIX, QUEUE = "crmrel-crash:", "crmrel-crash"

ABANDONED_LATE = (
    "worker.py relies on RQ's StartedJobRegistry cleanup: a SIGKILLed SimpleWorker's job counts as "
    "abandoned only job.timeout+60 = 240 s after it started, and idle workers run that cleanup only "
    "every 405 s (BLMOVE timeout), not every maintenance_interval: its event waits 4-11 minutes")
DONE_AFTER_CALL = (
    "worker.py execute: the done: key is written after the vendor call returns, so a worker killed "
    "between the two repeats the call when the job is re-run (a second task)")


def run_crash_scenario(tmp_path, *, events: int, recovery_wait: float, kill_phase: float = 45.0,
                       max_kills: int = 16) -> dict[str, Any]:
    store = open_test_db()
    store.flushdb()
    leads = list(range(FIRST_LEAD, FIRST_LEAD + events))
    started = time.monotonic()
    rng = seeded(4242)
    try:
        with Vendors() as vendors:
            for lead in leads:
                vendors.amo.add_lead(amo_lead(lead))
            vendors.amo.delay["get_lead"] = 0.01   # a job spends its time talking to vendors, as in life
            config = quickstart_config(tmp_path / "config", amo_rate=10_000, tg_rate=10_000, chat_per_lead=True)
            deployment = Deployment(config, TEST_REDIS_URL, PREFIX, QUEUE, vendors.env, maintenance_interval=2)
            with LiveApp(deployment.settings) as live, \
                    WorkerPool(deployment.worker_env(), tmp_path / "logs", size=2) as pool:
                posted: list = []
                poster = threading.Thread(target=lambda: posted.extend(
                    post_leads(live.url, leads, threads=6, attempts=5, timeout=120)), daemon=True)
                poster.start()
                orphans: list[dict[str, Any]] = []
                kill_log = []
                deadline = time.monotonic() + kill_phase
                time.sleep(1.5)  # let the workers start and take jobs
                while pool.kills < max_kills and time.monotonic() < deadline:
                    if not poster.is_alive() and rq_state(store, QUEUE)["queued"] == 0:
                        break  # nothing left to interrupt
                    slot = rng.randrange(pool.size)
                    pid = pool.procs[slot].pid
                    name = worker_names_by_pid(store, QUEUE).get(pid)
                    pool.kill(slot)
                    hit = [e for e in started_entries(store, QUEUE) if name and e["worker"] == name]
                    orphans.extend(hit)
                    kill_log.append((round(time.monotonic() - started, 1), slot, len(hit)))
                    time.sleep(rng.uniform(0.0, 0.5))
                    pool.restart(slot)
                    time.sleep(rng.uniform(0.8, 2.5))
                kill_done = time.monotonic()
                poster.join(timeout=max(1.0, 130 - (time.monotonic() - started)))
                handled_all = wait_until(lambda: tally(vendors, leads)["lost"] == 0 and vendors.idle(),
                                         recovery_wait, interval=0.5)
                if handled_all:
                    time.sleep(1.0)  # a late duplicate would show now
                waited = time.monotonic() - kill_done
                counts = tally(vendors, leads)
                state = rq_state(store, QUEUE)
                left_started = started_entries(store, QUEUE)
                orphan_leads = sorted({job_lead(store, e["job"]) for e in orphans} - {None})
                acknowledged = sum(1 for p in posted if p.acknowledged)
                latencies = [x for p in posted for x in p.latencies]
                figures = {
                    "events sent": len(posted), "acknowledged (200)": acknowledged,
                    "intake statuses": _statuses(posted),
                    "intake latency p50/p99/max ms": "/".join(str(round(1000 * percentile(latencies, q)))
                                                              for q in (50, 99, 100)),
                    "handled": counts["handled"], "lost": counts["lost"], "duplicated": counts["duplicated"],
                    "tasks created": counts["tasks"], "messages sent": counts["messages"],
                    "kills (SIGKILL of a worker's process group)": pool.kills,
                    "kills that left a started job (orphans)": len(orphans),
                    "kill log (t, slot, orphans)": kill_log,
                    "orphaned leads": orphan_leads[:10],
                    "lost leads": counts["lost_leads"][:10],
                    "lost leads that were orphaned jobs": len(set(counts["lost_leads"]) & set(orphan_leads)),
                    "duplicated leads": counts["duplicated_leads"][:10],
                    "started registry left (job, abandoned in s)": [(e["job"][-8:], e["abandoned_in"])
                                                                     for e in left_started][:10],
                    "rq state": state,
                    "retries seen by fakes (amo/tg)": f"{vendors.amo.retries()}/{vendors.tg.retries()}",
                    "worker starts / self-exits": f"{pool.starts}/{len(pool.exits)}",
                    "waited after kills s": round(waited, 1),
                    "time s": round(time.monotonic() - started, 1),
                }
                report(f"crash safety ({events} events, recovery wait {recovery_wait:.0f} s)", figures)
                figures["_tail"] = pool.log_tail(8)
                return figures
    finally:
        store.flushdb()
        store.close()


def _statuses(posted) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in posted:
        for s in p.statuses:
            out[s] = out.get(s, 0) + 1
    return dict(sorted(out.items()))


def check(figures: dict[str, Any], events: int) -> None:
    assert figures["events sent"] == events
    assert figures["acknowledged (200)"] == events, figures["intake statuses"]
    assert figures["lost"] == 0 and figures["duplicated"] == 0, (
        f"lost {figures['lost']} {figures['lost leads']}, duplicated {figures['duplicated']} "
        f"{figures['duplicated leads']}; orphans {figures['kills that left a started job (orphans)']}, "
        f"started left {figures['started registry left (job, abandoned in s)']}")


@pytest.mark.timeout(240)
@pytest.mark.xfail(strict=True, reason=ABANDONED_LATE)
def test_workers_killed_at_random_lose_and_duplicate_nothing(tmp_path):
    figures = run_crash_scenario(tmp_path, events=EVENTS, recovery_wait=15)
    check(figures, EVENTS)


@pytest.mark.skipif(os.environ.get("CRMBRIDGE_RELIABILITY_SLOW") != "1",
                    reason="waits out RQ's abandonment (240 s + 405 s idle); set CRMBRIDGE_RELIABILITY_SLOW=1")
@pytest.mark.timeout(900)
def test_workers_killed_at_random_nothing_is_lost_eventually(tmp_path):
    """The same, waiting long enough for RQ to find the abandoned jobs. Not in CI: about 8 minutes.
    Duplicates are printed, not asserted: whether a kill lands between a vendor call and its done:
    key is chance here (the next test makes it certain)."""
    events = min(EVENTS, 1000)
    figures = run_crash_scenario(tmp_path, events=events, recovery_wait=500)
    assert figures["events sent"] == figures["acknowledged (200)"] == events
    assert figures["lost"] == 0, figures["lost leads"]


@pytest.mark.timeout(120)
@pytest.mark.xfail(strict=True, reason=DONE_AFTER_CALL)
def test_a_worker_killed_right_after_the_vendor_acted_does_not_act_twice(tmp_path):
    """The worker process is SIGKILLed the moment FakeAmo has created the task (before the answer
    reaches it, so before its done: key). RQ's own recovery of the job is then fast-forwarded:
    StartedJobRegistry.cleanup with a timestamp past the entry's expiry is exactly what a live
    worker's maintenance pass does 240 s later (the job's failure callback, then job.retry with
    retries_left). The worker's scheduler child outlives it (only the main process is killed, as the
    OOM killer does) and enqueues the retry 5 s later for the restarted worker."""
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    store = open_test_db()
    store.flushdb()
    lead = 7_150_001
    started = time.monotonic()
    try:
        with Vendors() as vendors:
            vendors.amo.add_lead(amo_lead(lead))
            config = quickstart_config(tmp_path / "config")
            deployment = Deployment(config, TEST_REDIS_URL, PREFIX, QUEUE, vendors.env, maintenance_interval=2)
            with LiveApp(deployment.settings) as live, \
                    WorkerPool(deployment.worker_env(), tmp_path / "logs", size=1) as pool:
                killed = threading.Event()

                def kill_the_worker(call):
                    if not killed.is_set():
                        killed.set()
                        pool.kill_main(0)

                vendors.amo.after["create_task"] = kill_the_worker
                answer = post_leads(live.url, [lead])[0]
                assert wait_until(killed.is_set, 30), pool.log_tail()
                orphans = started_entries(store, QUEUE)
                pool.restart(0)
                registry = StartedJobRegistry(QUEUE, connection=store, serializer=JSONSerializer)
                registry.cleanup(timestamp=time.time() + 3600)   # what RQ does 240 s (or more) later
                wait_until(lambda: tally(vendors, [lead])["lost"] == 0 and vendors.idle(), 40, interval=0.2)
                time.sleep(1.0)
                counts = tally(vendors, [lead])
                report("worker killed between the vendor's create and its done: key", {
                    "webhook answer": answer.statuses, "orphaned executions": len(orphans),
                    "tasks for the lead": counts["tasks"], "messages for the lead": counts["messages"],
                    "handled": counts["handled"], "lost": counts["lost"], "duplicated": counts["duplicated"],
                    "retries seen by fakes amo/tg": (vendors.amo.retries(), vendors.tg.retries()),
                    "time s": round(time.monotonic() - started, 1)})
    finally:
        store.flushdb()
        store.close()
    assert len(orphans) == 1
    assert counts["lost"] == 0
    assert counts["tasks"] == 1 and counts["messages"] == 1
