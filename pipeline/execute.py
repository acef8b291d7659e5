"""Each planned step once: skipped when its idempotency key is recorded, never repeated blindly.

An `attempted:` mark ("calling") is written before the client is called, turned into "sent" by
clients that report their sends just before a request leaves, and dropped once the step is
recorded done (or the vendor refused it, so nothing was done). A mark found on a later run means
a worker died, or lost Redis, in between: "calling" from such a client is done again (nothing
left); otherwise a repeatable step is done again and any other goes to the dead letters as "may
have been sent". The same holds for a call that got no answer after it was sent
(UncertainApiError). Steps of several calls run from pipeline/steps.

With the replica wait on (CRMBRIDGE_INTAKE_WAIT_REPLICAS, Redis Sentinel), a step's mark is on a
replica before its vendor is called (`replicate`: "sent" as each request leaves, for a client that
reports its sends; else the claim): a primary that dies takes no record of a call with it, so the
replica promoted in its place knows the step may have been sent (read back or parked, never
repeated blindly). A primary no replica follows (a fail-over gone wrong, or a server the Sentinels
no longer name) gets no call at all: the step waits (NotYetReplicated) until a replica has its mark.
The done mark is not waited for: the next step's wait covers it (replication is one ordered stream);
a fail-over in between leaves the "sent" mark, read back or parked.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

import logging_setup as logs
import redisconn
from connectors.base import Entity, Event, PermanentApiError, RetryableApiError, UncertainApiError
from pipeline import clock, stages
from pipeline.audit import audit
from pipeline.dead_letters import dead_letter
from pipeline.retry import with_retries
from pipeline.steps import STEPS, StepContext
from ratelimit import SlotLater
from rules.engine import Plan, PlannedAction

log = logging.getLogger("crmbridge.worker")

# Action methods that may be repeated when it is unknown whether an earlier try was done: they set a
# state (a stage, fields, a keyboard, a text) or answer a callback, so doing them twice leaves the
# same result. Every other method (creates: tasks, notes; messages: send_message, reply, files) is
# not repeated blindly: a step that may have been done goes to the dead letters to be checked.
# set_responsible sets a state; delete_entity counts a record already gone as done (notify is a message).
# find_or_create is not among them: it searches before it creates, but a vendor's search may not show a
# contact created a moment ago (amoCRM's `query` is a full-text index). Where the client can read its
# create back (the step's `settles(client)`: find_contact, copy_entity's find_lead) the step is run again
# and settles its create itself (StepContext.created); elsewhere a create that may have been done is left
# to a person, as other creates are.
REPEATABLE_METHODS = frozenset({"move_to_stage", "move_forward", "set_fields", "edit_buttons", "edit_text",
                                "answer_button", "set_responsible", "delete_entity",
                                "record",    # record: keyed by the step, stored once whatever runs it
                                # an order: looked for by its conversation field before it is made
                                # (pipeline/steps/find_order.py), the card a state
                                "find_or_create_order"})
MAYBE_DONE = "may have been sent: check the vendor, then replay it only if it was not done"
# creates the vendor lets us read back (the method → the client verb that finds what it made): one
# that got no clear answer is looked for, then recorded done or sent once more, never parked blindly
READ_BACK = {"create_task": "find_task", "add_note": "find_note"}
RESEND_ROUNDS = 3   # sends of a create that keeps getting no clear answer, each looked for after
RECORD_PATIENCE = 120.0   # seconds a worker keeps trying to record a done step while Redis is away
REPLICA_PATIENCE = 30.0   # seconds a step waits for a replica to have its claim before its job is tried later
SEND_PATIENCE = 5.0       # …its "sent" mark, a request about to leave (its rate-limit slot held), before a retry


class StepMaybeDone(PermanentApiError):
    """A step that is not repeatable may have been done already (attempted, never recorded)."""


class NotYetReplicated(RetryableApiError):
    """The replica wait is on and no replica has acknowledged the step's marks in time: nothing was
    sent, the step is tried again later (as for a vendor's 503)."""


class PrimaryChanged(NotYetReplicated):
    """The step's mark is not on the primary that answers now: it was written to a server that is no
    longer the primary (its writes are wiped when the Sentinels make it a replica). Nothing was sent;
    the marks are left alone (the primary's may be another run's claim), and the job is run again
    later (RQ's retry), not retried inside this run."""

    retry_here = False


class SettleLater(RetryableApiError):
    """A create that can be read back got no answer at all (a timeout, a lost connection): the
    vendor may still be making it, so it is looked for on a later try of the job (RQ's retry, its
    attempted mark kept), once the request cannot be running any more (settle_after)."""


def settle_after(client: Any) -> float:
    """Seconds after a create was sent by when the vendor has finished it: the client's timeout
    (it gave up on an answer by then) and a margin for the vendor's own work. Shorter than the
    heartbeat TTL (15 s) plus the maintenance interval for amoCRM and Telegram, so the job of a
    worker killed mid-call reads back at once when it comes back."""
    return float(getattr(client, "timeout", 10.0)) + 2.0


def repeatable(action: PlannedAction) -> bool:
    return action.method in REPEATABLE_METHODS


def run_plan(rt: Any, event: Event, result: Plan) -> dict[str, Any]:
    """Audit the plan's decisions, then run its steps in order; a step that cannot succeed goes
    to the dead letters and the others go on."""
    for rule, reason in result.matched:
        audit(rt, event, "rule.matched", rule=rule, reason=reason)
    for rule, message in result.errors:
        log.error("event %s rule %r: %s", event.id, rule, message)
        audit(rt, event, "rule.error", rule=rule, error=message)
    done = failed = 0
    for action in result.actions:
        try:
            with logs.rule_context(action.rule):   # CRMBRIDGE_LOG_FORMAT=json: the step's lines name its rule
                done += execute(rt, event, action)
        except PermanentApiError as exc:
            # retrying will not help: keep the step for a replay once the cause is fixed
            failed += 1
            audit(rt, event, "action.failed", rule=action.rule, action=action.describe(), error=str(exc))
            dead_letter(rt, "worker.handle_event", event.to_dict(), f"{action.describe()}: {exc}", key=action.key)
    return {"actions": len(result.actions), "done": done, "failed": failed, "errors": len(result.errors)}


def execute(rt: Any, event: Event, action: PlannedAction) -> bool:
    """Run one planned action once (see the module's docstring); False if it was done before."""
    done_key, attempted_key = rt.keys("done", action.key), rt.keys("attempted", action.key)
    mark = {"at": clock.now().isoformat(), "pid": os.getpid(), "phase": "calling"}
    claimed = None   # the attempted mark: set (True), found (False), or not tried yet (None)
    if carries_files(action.args):   # files are fetched first: the step is claimed after that
        done = rt.store.exists(done_key)
    else:   # nothing to fetch: the done check and the claim in one round trip
        with rt.store.pipeline(transaction=False) as pipe:
            pipe.exists(done_key)
            pipe.set(attempted_key, json.dumps(mark), nx=True, ex=rt.settings.done_ttl)
            done, claimed = pipe.execute()
    if done:
        if claimed:   # claimed in the same round trip as the done check, for nothing: give it back
            forget_attempt(rt, attempted_key)
        audit(rt, event, "action.skipped", rule=action.rule, action=action.describe(), reason="already done")
        return False
    try:
        client = rt.client(action.connection)
        args = {k: Entity(v["type"], str(v["id"])) if k == "entity" else v for k, v in action.args.items()}
        undo = bool(args.pop("undo", False))  # move_to_stage undoing a refused move (stages.remember_undo)
        # a message the rule would rather send twice than not at all (`on_uncertain: resend`)
        resend = args.pop("on_uncertain", None) == "resend"
        method = callable_for(rt, client, action)
    except BaseException:
        if claimed:   # claimed in the same round trip as the done check, for nothing: give it back
            forget_attempt(rt, attempted_key)
        raise
    if claimed is None:
        args = with_retries(rt, lambda: fetch_files(rt, args))  # files carried from another connection
        claimed = rt.store.set(attempted_key, json.dumps(mark), nx=True, ex=rt.settings.done_ttl)
    if not claimed:
        found = earlier_attempt(rt, event, action, client, args, attempted_key, resend)
        if found is not None:   # the vendor has what the earlier try made: record it, send nothing
            record_done(rt, done_key, attempted_key, found)
            return True
        rt.store.set(attempted_key, json.dumps(mark), ex=rt.settings.done_ttl)
    if not reports_own_sends(client, action):   # (else "sent" is waited for as each request leaves)
        try:
            replicate(rt, attempted_key)   # the claim on a replica before anything is sent
        except NotYetReplicated as exc:
            if not isinstance(exc, PrimaryChanged):
                forget_attempt(rt, attempted_key)   # nothing was sent
            raise
    result = call_once(rt, event, action, client, args, attempted_key, mark, lambda: method(**args), resend)
    record_done(rt, done_key, attempted_key, result)
    # a move left out (only_forward) comes back as {"moved": False}; others return True, a status or None
    if undo and not (isinstance(result, dict) and result.get("moved") is False):
        stages.remember_undo(rt, action.connection, args["entity"], str(args.get("stage")))
    if action.method in ("move_to_stage", "move_forward"):
        stages.forget(rt, action.connection, args["entity"])
    audit(rt, event, "action.done", rule=action.rule, action=action.describe(), result=result)
    return True


def callable_for(rt: Any, client: Any, action: PlannedAction) -> Callable[..., Any]:
    """The step's callable: a step of several calls (pipeline/steps), else the client's verb."""
    step = STEPS.get(action.method)
    if step is not None:
        ctx = StepContext(rt=rt, client=client, key=action.key, connection=action.connection)
        return lambda **args: step.run(ctx, **args)
    if not client.can(action.method):
        raise PermanentApiError(f"connection {action.connection!r} cannot {action.method}")
    return getattr(client, action.method)


def earlier_attempt(rt: Any, event: Event, action: PlannedAction, client: Any, args: dict[str, Any],
                    attempted_key: str, resend: bool = False) -> Any:
    """An attempted mark was there before (a worker died or lost Redis mid-step). A create the
    vendor lets us read back is looked for: found, its id is returned (the step is done); not
    found, the step goes on (nothing was made). Else check_earlier_attempt decides."""
    before = json.loads(rt.store.get(attempted_key) or "{}")
    if before.get("phase") != "calling" and before.get("at") and can_read_back(client, action, args):
        age = (clock.now() - datetime.fromisoformat(before["at"])).total_seconds()
        if age < settle_after(client):
            raise SettleLater(f"{action.describe()}: sent {age:.0f} s ago and not answered; looked for later")
        try:
            found = read_back(rt, client, action, args, before["at"])
        except PermanentApiError:   # cannot be read back here (a Planfix contact's tasks): a person decides
            pass
        else:
            if found is not None:
                audit(rt, event, "action.reconciled", rule=action.rule, action=action.describe(), found=found,
                      reason="attempted before; the vendor has it")
            else:
                audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
                      reason="attempted before; the vendor does not have it")
            return found
    check_earlier_attempt(rt, event, action, client, attempted_key, before, resend)
    return None


def can_read_back(client: Any, action: PlannedAction, args: dict[str, Any]) -> bool:
    verb = READ_BACK.get(action.method)
    return verb is not None and client.can(verb) and "entity" in args and bool(args.get("text"))


def read_back(rt: Any, client: Any, action: PlannedAction, args: dict[str, Any], since: str) -> Any:
    """What a create made, read back from the vendor (its id), or None (for a step whose
    can_read_back holds)."""
    verb = READ_BACK[action.method]
    return with_retries(rt, lambda: getattr(client, verb)(args["entity"], str(args["text"]), since))


def settle(rt: Any, client: Any, action: PlannedAction, args: dict[str, Any], since: str,
           uncertain: UncertainApiError) -> Any:
    """Read back a create that got no clear answer: its id, or None (not made). A read that fails
    leaves it uncertain (`uncertain` is raised: the step is parked, never sent again blindly)."""
    try:
        return read_back(rt, client, action, args, since)
    except SlotLater:   # no slot to look now: the mark stays "sent", the job's next try looks
        raise SettleLater(f"{uncertain}; looked for at the vendor on the job's next try") from None
    except (RetryableApiError, PermanentApiError):
        raise uncertain from None


def check_earlier_attempt(rt: Any, event: Event, action: PlannedAction, client: Any, attempted_key: str,
                          before: dict[str, Any], resend: bool = False) -> None:
    """An attempted mark was there before: go on only if the earlier try sent nothing or the step
    is repeatable; else raise StepMaybeDone (the step is parked for a person)."""
    step = STEPS.get(action.method)
    if step is not None and getattr(step, "settles", None) is not None and step.settles(client):
        # each of its creates keeps its own mark and is read back (StepContext.created), its other
        # calls are reads and links: run again, whatever this client reports of its sends
        audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
              reason="attempted before; the step reads back what it may have made")
    elif before.get("phase") == "calling" and reports_own_sends(client, action):
        # the worker that tried died before any request of this step left it: nothing was sent
        audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
              reason="attempted before, but no request had left")
    elif resend:
        audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
              reason="attempted before and never recorded done; on_uncertain: resend")
    elif not repeatable(action):
        audit(rt, event, "action.uncertain", rule=action.rule, action=action.describe(),
              reason="attempted before and never recorded done", advice=MAYBE_DONE)
        raise StepMaybeDone(f"attempted before and never recorded done; {MAYBE_DONE}")
    else:
        audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
              reason="attempted before and never recorded done; repeatable")


def reports_own_sends(client: Any, action: PlannedAction) -> bool:
    """Is every request of the step one the client reports before it leaves (`client.sending`)? A
    step of several calls may use other connections, which do not report theirs."""
    step = STEPS.get(action.method)
    return client.reports_sends and (step is None or getattr(step, "ONE_CLIENT", False))


def call_once(rt: Any, event: Event, action: PlannedAction, client: Any, args: dict[str, Any], attempted_key: str,
              mark: dict[str, Any], call: Callable[[], Any], resend: bool = False) -> Any:
    """Call the vendor with retries; the attempted mark is dropped when nothing was done, kept
    when something may have been. A create that got no clear answer (UncertainApiError) is read
    back when the vendor allows it: found, done; not found, sent again (RESEND_ROUNDS in all)."""
    sent = json.dumps({**mark, "phase": "sent"})
    # a client that reports its sends marks the step "sent" just before a request leaves (after its
    # rate limits): a worker killed before that is known to have sent nothing
    def sending() -> None:
        rt.store.set(attempted_key, sent, xx=True, ex=rt.settings.done_ttl)
        # "sent" on a replica before the request leaves; else it does not leave (briefly: the rate
        # limit's slot is held meanwhile; with_retries tries again later)
        replicate(rt, attempted_key, patience=SEND_PATIENCE)
    client.sending = sending
    try:
        for round_ in range(1, RESEND_ROUNDS + 1):
            try:
                return with_retries(rt, call, repeat_uncertain=repeatable(action) or resend)
            except UncertainApiError as exc:
                if repeatable(action) or not can_read_back(client, action, args):
                    raise
                if exc.status is None:   # no answer: the vendor may still be at it (SettleLater)
                    audit(rt, event, "action.unsettled", rule=action.rule, action=action.describe(), error=str(exc),
                          reason="no answer; looked for at the vendor on the job's next try")
                    raise SettleLater(f"{exc}; looked for at the vendor on the job's next try") from None
                found = settle(rt, client, action, args, mark["at"], exc)
                if found is not None:
                    audit(rt, event, "action.reconciled", rule=action.rule, action=action.describe(), found=found,
                          error=str(exc), reason="no clear answer; the vendor has it")
                    return found
                if round_ == RESEND_ROUNDS:
                    raise
                audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(), error=str(exc),
                      reason="no clear answer; the vendor does not have it")
    except UncertainApiError as exc:
        if not (repeatable(action) or resend):   # the mark stays: a replay must be a decision, not an accident
            audit(rt, event, "action.uncertain", rule=action.rule, action=action.describe(), error=str(exc),
                  advice=MAYBE_DONE)
            raise StepMaybeDone(f"{exc}; {MAYBE_DONE}") from None
        forget_attempt(rt, attempted_key)
        raise
    except (SettleLater, PrimaryChanged):
        raise   # the mark stays: the next try reads back what it says was sent (or it is another run's)
    except (RetryableApiError, PermanentApiError):
        forget_attempt(rt, attempted_key)   # the vendor refused it (or it never left): nothing was done
        raise
    # anything else (the job's timeout firing mid-call, a shutdown) keeps the mark: it may have been sent
    finally:
        client.sending = None


def record_done(rt: Any, done_key: str, attempted_key: str, result: Any) -> None:
    """Record a step the vendor did. Only this process knows it was done, so a Redis outage is
    waited out (with backoff, up to RECORD_PATIENCE) instead of failing the job and leaving an
    attempted mark that a re-run would have to dead-letter."""
    value = json.dumps(result, default=str)
    deadline, pause = time.monotonic() + RECORD_PATIENCE, 0.2
    while True:
        try:
            with rt.store.pipeline() as pipe:
                pipe.set(done_key, value, ex=rt.settings.done_ttl)
                pipe.delete(attempted_key)
                pipe.execute()
            return
        except RedisError as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("step done but not recorded yet (%s); trying again in %.1f s", exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def replicate(rt: Any, mark: str, patience: float | None = None) -> None:
    """With the replica wait on, return once `intake_wait_replicas` replicas have every write this
    process has made (redisconn.replicate), the step's `mark` among them, trying again through a
    fail-over for up to `patience` seconds (REPLICA_PATIENCE); else NotYetReplicated. A primary whose
    replicas do not answer may be one the Sentinels no longer name: the next try asks them again
    (redisconn.rediscover). If the mark is not on the primary that answers, the primary changed
    after it was written: NotYetReplicated at once (another run of the step may have claimed it there).
    Without the wait, nothing."""
    replicas = getattr(rt.settings, "intake_wait_replicas", 0)
    if not replicas:
        return
    timeout_ms = rt.settings.intake_wait_ms
    marker = rt.keys("replicated", str(os.getpid()))
    deadline, pause = time.monotonic() + (REPLICA_PATIENCE if patience is None else patience), 0.2
    while True:
        try:
            acknowledged, present = redisconn.replicate(rt.store, marker, replicas, timeout_ms, present=mark)
            if not present:
                raise PrimaryChanged("not sent: the step's mark is not on the primary (it changed meanwhile)")
            if acknowledged >= replicas:
                return
            problem = f"{acknowledged} of {replicas} replica(s) acknowledged the step's marks within {timeout_ms} ms"
            redisconn.rediscover(rt.store)
        except RedisError as exc:
            problem = f"Redis: {exc}"
        if time.monotonic() + pause > deadline:
            raise NotYetReplicated(f"not sent: {problem}")
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def forget_attempt(rt: Any, attempted_key: str) -> None:
    try:
        rt.store.delete(attempted_key)
    except RedisError:   # the mark stays: a later run dead-letters the step instead of repeating it
        log.warning("could not drop %s (Redis unavailable)", attempted_key)


def carries_files(value: Any) -> bool:
    """Does an action's argument hold a {"$download": …} (fetch_files) anywhere?"""
    if isinstance(value, dict):
        return "$download" in value or any(carries_files(v) for v in value.values())
    if isinstance(value, list):
        return any(carries_files(v) for v in value)
    return False


def fetch_files(rt: Any, value: Any) -> Any:
    """Replace every {"$download": {connection, file_id, size}} in an action's arguments by the
    file's bytes, read through that connection's client: a chat file becomes a CRM upload."""
    if isinstance(value, dict) and set(value) == {"$download"}:
        spec = value["$download"]
        found = rt.client(spec["connection"]).download(str(spec["file_id"]), spec.get("size"))
        if found is None:  # record-only mode: nothing to carry
            return b""
        return found[0]
    if isinstance(value, dict):
        return {k: fetch_files(rt, v) for k, v in value.items()}
    if isinstance(value, list):
        return [fetch_files(rt, v) for v in value]
    return value
