"""Crash safety: thousands of real-format amoCRM webhooks into the app on a real socket, two
`python worker.py` processes SIGKILLed at random moments and restarted, then a bounded wait:
every lead must get exactly one task in FakeAmo and one message in FakeTelegram.

How a killed worker's job comes back (rqworker.py, over RQ 2.12): the running job's
StartedJobRegistry entry lives job_heartbeat_ttl seconds (15) and a thread of the worker renews it
every 3 s; once the worker is dead the entry expires, and the next maintenance pass of a live worker
(every maintenance_interval seconds: 2 here, and an idle worker blocks in BLMOVE no longer than
that) puts the job back at the front of the queue. The re-run skips the steps recorded done; a
step that was attempted (vendor called) but never recorded done is repeated only if it is
idempotent; a create or a message goes to the dead letters as "may have been sent", and the test
then does what an operator does: checks the vendor, and replays only what the vendor does not have.
(RQ alone: the entry lives job.timeout + 60 = 240 s and an idle worker runs maintenance every 405 s.)
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import pytest

from pipeline import dead_letters
from tests.reliability.harness import (
    TEST_REDIS_URL,
    Deployment,
    LiveApp,
    Vendors,
    WorkerPool,
    amo_lead,
    job_lead,
    open_test_db,
    percentile,
    post_leads,
    quickstart_config,
    report,
    rq_state,
    seeded,
    started_entries,
    tally,
    wait_until,
    worker_names_by_pid,
)

EVENTS = int(os.environ.get("CRMBRIDGE_RELIABILITY_EVENTS", "2000"))
FIRST_LEAD = 7_100_000
PREFIX, QUEUE = "crmrel-crash:", "crmrel-crash"

RECOVERY_BOUND = 40.0   # seconds: heartbeat ttl 15 + maintenance 2 + Retry-free requeue, on a loaded CI box


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

                def settled() -> bool:   # every lead handled, or parked in the dead letters, and all quiet
                    parked = {lead for lead, _ in uncertain_steps(store)}
                    return (all(lead in parked for lead in tally(vendors, leads)["lost_leads_all"])
                            and vendors.idle() and rq_state(store, QUEUE)["queued"] == 0
                            and not started_entries(store, QUEUE))

                settled_in_time = wait_until(settled, recovery_wait, interval=0.5)
                waited = time.monotonic() - kill_done
                # the operator: "may have been sent — check and replay"
                parked = uncertain_steps(store)
                other_dead = store.hlen(f"{PREFIX}dead") - len(parked)
                replayed, resolved = operator_resolves(live.runtime, store, vendors, parked)
                handled_all = wait_until(lambda: tally(vendors, leads)["lost"] == 0 and vendors.idle(),
                                         30 if replayed else 1, interval=0.5)
                if handled_all:
                    time.sleep(1.0)  # a late duplicate would show now
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
                    "scheduled jobs": scheduled_descriptions(store),
                    "retries seen by fakes (amo/tg)": f"{vendors.amo.retries()}/{vendors.tg.retries()}",
                    "worker starts / self-exits": f"{pool.starts}/{len(pool.exits)}",
                    "settled (handled or parked) within the recovery wait": settled_in_time,
                    "last kill to settled s": round(waited, 1),
                    "steps parked as 'may have been sent'": len(parked),
                    "parked, the vendor had it (dead letter dropped)": resolved,
                    "parked, the vendor did not have it (replayed)": replayed,
                    "other dead letters": other_dead,
                    "time s": round(time.monotonic() - started, 1),
                }
                report(f"crash safety ({events} events, recovery wait {recovery_wait:.0f} s)", figures)
                figures["_tail"] = pool.log_tail(8)
                return figures
    finally:
        store.flushdb()
        store.close()


def scheduled_descriptions(store) -> dict[str, int]:
    from rq.job import Job
    from rq.serializers import JSONSerializer
    out: dict[str, int] = {}
    for job_id in store.zrange(f"rq:scheduled:{QUEUE}", 0, -1):
        try:
            job = Job.fetch(job_id.decode(), connection=store, serializer=JSONSerializer)
            result = job.latest_result()
            why = (result.exc_string or "").strip().splitlines()[-1][:120] if result and result.exc_string else "-"
            what = f"retries_left={job.retries_left}: {why}"
        except Exception as exc:  # noqa: BLE001 - a figure, not a check
            what = type(exc).__name__
        out[what] = out.get(what, 0) + 1
    return out


def uncertain_steps(store) -> list[tuple[int, str]]:
    """(lead, dead-letter key) of the steps parked as "may have been sent"."""
    out = []
    for key, raw in store.hgetall(f"{PREFIX}dead").items():
        entry = json.loads(raw)
        if "may have been sent" in entry["error"]:
            out.append((int(entry["payload"]["entity"]["id"]), key.decode()))
    return out


def operator_resolves(rt, store, vendors, parked: list[tuple[int, str]]) -> tuple[int, int]:
    """Check each parked step at the vendor: drop the dead letter if the vendor has it, replay it
    (`cli.py dead-letters replay KEY`) if not. Returns (replayed, resolved)."""
    replayed = resolved = 0
    for lead, key in parked:
        error = json.loads(store.hget(f"{PREFIX}dead", key))["error"]
        have = vendors.amo.tasks_per_lead()[lead] if ".create_task(" in error else vendors.tg.messages_per_lead()[lead]
        if have:
            store.hdel(f"{PREFIX}dead", key)
            resolved += 1
        else:
            assert dead_letters.replay(rt, key)
            replayed += 1
    return replayed, resolved


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


@pytest.mark.timeout(300)
def test_workers_killed_at_random_lose_and_duplicate_nothing(tmp_path):
    figures = run_crash_scenario(tmp_path, events=EVENTS, recovery_wait=RECOVERY_BOUND)
    check(figures, EVENTS)
    # every orphaned job came back by itself within the bound (RQ alone: 240 s or more)
    assert figures["settled (handled or parked) within the recovery wait"], figures["started registry left (job, abandoned in s)"]
    assert figures["other dead letters"] == 0
    # the test proves something only if a kill hit a job mid-run (left it in the started registry)
    assert figures["kills that left a started job (orphans)"] >= 1, figures["kill log (t, slot, orphans)"]
    # a re-run job ends cleanly: no failure, no retry left waiting in RQ's scheduled registry
    assert figures["rq state"]["failed"] == 0 and figures["scheduled jobs"] == {}, figures["scheduled jobs"]


@pytest.mark.timeout(120)
def test_a_worker_killed_right_after_the_vendor_acted_does_not_act_twice(tmp_path):
    """The worker process is SIGKILLed the moment FakeAmo has created the task (before the answer
    reaches it, so before its done: key; only the main process, as the OOM killer does). A new
    worker starts; nothing is fast-forwarded: the dead worker's entry expires (heartbeat ttl 15 s)
    and the new worker's maintenance pass puts the job back. The re-run finds the task attempted
    and not recorded: a create is not repeated blindly, it is read back from amoCRM (find_task),
    found and recorded (audited `action.reconciled`), and the rest of the job (the message) is
    done. Nothing is parked."""
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
                kill_at: list[float] = []

                def kill_the_worker(call):
                    if not killed.is_set():
                        killed.set()
                        kill_at.append(time.monotonic())
                        pool.kill_main(0)

                vendors.amo.after["create_task"] = kill_the_worker
                answer = post_leads(live.url, [lead])[0]
                assert wait_until(killed.is_set, 30), pool.log_tail()
                orphans = started_entries(store, QUEUE)
                pool.restart(0)
                came_back = wait_until(lambda: tally(vendors, [lead])["messages"] >= 1 and vendors.idle(), 60,
                                       interval=0.2)
                recovery = time.monotonic() - kill_at[0]
                time.sleep(1.0)
                counts = tally(vendors, [lead])
                dead = {k.decode(): json.loads(v) for k, v in store.hgetall(f"{PREFIX}dead").items()}
                audit = [json.loads(e[b"entry"]) for _, e in store.xrange(f"{PREFIX}audit")]
                uncertain = [a for a in audit if a["what"] == "action.uncertain"]
                reconciled = [a for a in audit if a["what"] == "action.reconciled"]
                report("worker killed between the vendor's create and its done: key", {
                    "webhook answer": answer.statuses, "orphaned executions": len(orphans),
                    "job came back after the kill s": round(recovery, 1),
                    "tasks for the lead": counts["tasks"], "messages for the lead": counts["messages"],
                    "duplicated": counts["duplicated"],
                    "dead letters": [(e["error"][:90]) for e in dead.values()],
                    "audited as uncertain": len(uncertain),
                    "audited as reconciled (read back)": len(reconciled),
                    "retries seen by fakes amo/tg": (vendors.amo.retries(), vendors.tg.retries()),
                    "time s": round(time.monotonic() - started, 1)})
    finally:
        store.flushdb()
        store.close()
    assert len(orphans) == 1
    assert came_back and recovery < RECOVERY_BOUND, recovery
    assert counts["tasks"] == 1 and counts["messages"] == 1 and counts["duplicated"] == 0
    assert dead == {} and uncertain == []
    assert len(reconciled) == 1 and reconciled[0]["action"].startswith("quickstart-amo.create_task(")
