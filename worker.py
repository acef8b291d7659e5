"""The back room's jobs, and `python worker.py`, the process that runs them.

Each job reads as the steps it takes (pipeline/, one module per step; the diagram is in
pipeline/__init__.py). All are safe to run again after a crash: every completed action step is
recorded under its idempotency key first.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import logging_setup as logs
from config.loader import ConfigErrors
from config.settings import Settings
from connectors.base import Event
from pipeline import audit, clock, dead_letters, execute, links, observers, order, resume, retry, snapshot, stages, timers
from pipeline import catch_up as catching_up, lead_rate, mailbox
from pipeline.snapshot import Change
from rules import MODULES
from ratelimit import SlotLater
from rules.engine import Plan, data_needs, plan, plan_fired
from runtime import Runtime, configure_logging

_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Use this runtime in this process (the embedded default, tests)."""
    global _runtime
    _runtime = runtime


def open_runtime(settings: Settings) -> Runtime:
    """Build the runtime with this module's jobs (for the embedded backend) and use it here."""
    rt = Runtime.create(settings, handle_event=handle_event, fire_timer=fire_timer, on_failure=on_embedded_failure)
    install(rt)
    return rt


def runtime() -> Runtime:
    if _runtime is None:
        open_runtime(Settings.from_env())
    return _runtime


# --- jobs (RQ calls them by these names) ----------------------------------------------------------

def handle_event(payload: dict[str, Any]) -> dict[str, Any]:
    """One event: wait for its turn, bind it, read its record, then plan and act on each change.
    A step that gets no rate-limit slot soon defers the event, which goes on later where it left
    off (pipeline/resume.py)."""
    rt = runtime()
    # every line of the job names its event
    with audit.batch(), logs.event_context(payload), retry.budget(rt), resume.patience(rt, payload):
        turn = order.take_turn(rt, payload)
        if not turn.ready:
            return {"superseded": True} if turn.superseded else {"deferred": True}
        progress = resume.saved(payload, turn.kept)
        try:
            if progress is None:
                lead_rate.take(rt, payload)   # a door with leads_limit: its slot first, else later (E1 bursts)
                event, answered = links.bind(rt, Event.from_dict(payload))  # chats and buttons bound to records
                if answered is not None:
                    order.done(rt, payload)
                    return answered
                record = snapshot.take(rt, event, turn.marks)
                if found := observers.observe(rt, event):
                    audit.audit(rt, event, "connector.observed", **found)
                progress = resume.of(record)
                resume.keep(rt, payload["id"], progress)
            progress.enriched(rt)   # a rate limit here defers the event with its changes
            for change in progress.pending():
                if progress.plan is None:
                    decided = decide(rt, change)
                    if isinstance(decided, dict):   # nothing to do for this change
                        progress.finish(change, decided)
                        continue
                    progress.plan = decided
                progress.finish(change, execute.run_plan(rt, change.event, progress.plan))
        except SlotLater as exc:   # nothing was sent for the step that got no slot: go on later
            return resume.defer(rt, payload, progress, exc)
        order.done(rt, payload)
        resume.forget(rt, payload["id"], progress)
        return progress.answered


def act(rt: Runtime, change: Change) -> dict[str, Any]:
    """One change of a record: plan the rules, claim an approval, set timers, run the steps."""
    decided = decide(rt, change)
    return decided if isinstance(decided, dict) else execute.run_plan(rt, change.event, decided)


def decide(rt: Runtime, change: Change) -> Plan | dict[str, Any]:
    """Plan the rules for one change of a record, claim an approval, set timers: the plan whose
    steps to run, or the outcome if there is nothing to run (already handled or chosen)."""
    event = change.event
    audit.received(rt, event, change.view, change.derived)   # the decision history keeps it
    if event.kind == "stage.changed" and (change.seen_before if not change.derived
                                          else stages.already_handled(rt, event, change.view, change.marks)):
        audit.audit(rt, event, "event.skipped", reason="this stage move was already handled (seen by a catch-up first)")
        return {"already_handled": True}
    decisions = plan(event, change.view, rt.ruleset, clock.now(), MODULES)
    audit.planned(rt, event, decisions)   # every rule skipped, and why
    if not links.claim(rt, event, decisions):  # an approval already answered by an earlier press
        return {"already_chosen": True}
    timers.apply(rt, event, decisions)
    if event.kind == "stage.changed" and change.derived:  # before the steps: one may move the record on
        stages.remember(rt, event, derived=True)
    return decisions


def fire_timer(job: dict[str, Any]) -> dict[str, Any]:
    """A timer is due: if it is still the current one, check its guard on fresh data and act."""
    rt = runtime()
    with audit.batch(), logs.event_context(job), retry.budget(rt):
        timer = timers.current(rt, job)
        if timer is None:
            return {"stale": True}
        logs.bind_event(timer)
        event = Event.from_dict(timer["event"])
        rule = rt.ruleset.by_id(timer["rule_id"])
        entity = snapshot.enrich(rt, event, snapshot.read(rt, event), data_needs([rule]) if rule else set())
        decisions = plan_fired(timer, event, entity, rt.ruleset, clock.now(), MODULES)
        for name, reason in decisions.skipped:  # the guard no longer holds: nothing is done, and we say why
            audit.audit(rt, event, "timer.skipped", timer=timer["timer_id"], rule=name, reason=reason)
        outcome = execute.run_plan(rt, timers.fired_event(timer), decisions)
        timers.reschedule(rt, timer, decisions)
        return outcome


def catch_up(name: str) -> dict[str, int]:
    """Ask a CRM what changed since the last look (its lost webhooks) and queue it as events."""
    return catching_up.look(runtime(), name)


def send_campaign_message(payload: dict[str, Any]) -> str:
    """One recipient of a bulk send: opt-outs checked, the message sent once (pipeline/campaigns.py)."""
    from pipeline import campaigns
    rt = runtime()
    with audit.batch():
        return campaigns.deliver(rt, payload)


def on_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: dead-letter the job once it has no retries left."""
    if job.retries_left:
        return
    name = "worker.fire_timer" if job.func_name.endswith("fire_timer") else "worker.handle_event"
    dead_letters.give_up(runtime(), name, job.args[0], f"{exc_type.__name__}: {exc_value}")


def on_embedded_failure(name: str, payload: dict[str, Any], exc: Exception) -> None:
    dead_letters.give_up(runtime(), name, payload, f"{type(exc).__name__}: {exc}")


# --- the RQ worker process -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Start an RQ worker (non-forking, with the scheduler) on REDIS_URL."""
    from rqworker import run_worker, wait_for_redis

    configure_logging()
    settings = Settings.from_env()
    if not settings.redis_url:
        print("worker.py needs REDIS_URL; without it, `python webhooks.py` runs web and worker "
              "in one process.", file=sys.stderr)
        return 2
    import worker as this  # jobs name "worker.…": share that module's runtime, not __main__'s
    try:
        rt = this.runtime()
    except ConfigErrors as exc:   # the same list as cli.py validate and gunicorn print, no traceback
        print(exc, file=sys.stderr)
        return 1
    wait_for_redis(rt.store.ping)   # started before Redis (a reboot, a fail-over): wait, do not exit
    timers.ensure_schedules(rt)
    catching_up.ensure(rt)
    mailbox.ensure(rt)   # the imap connections' polls (pipeline/mailbox.py)
    burst = "--burst" in (argv or sys.argv[1:])
    if burst:
        rt.backend.fire_due_timers()
    else:
        timers.start_poll(rt)
    # RQ's SimpleWorker (no fork per job: clients and caches live across jobs) with a heartbeat for
    # the running job and quick recovery of a dead worker's job (rqworker.py); RQ's work loop is
    # started again whenever Redis failed it
    return run_worker(rt.backend.queue, settings, burst=burst,
                      logging_level=os.environ.get("CRMBRIDGE_LOG_LEVEL", "INFO").upper())


if __name__ == "__main__":
    sys.exit(main())
