"""The back room: handle one event (enrich, match, plan, act, record) and fire timers.

`python worker.py` starts an RQ worker with its scheduler on REDIS_URL. Jobs call
`handle_event(event)` and `fire_timer(timer)`; both are safe to run again after a crash,
because every completed action step is recorded under its idempotency key first.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from redis.exceptions import RedisError
from tenacity import RetryCallState, Retrying, retry_if_exception

import digests
import links
from connectors.base import Entity, Event, PermanentApiError, RetryableApiError, UncertainApiError, event_id
from rules import MODULES
from rules.calendar import parse_duration
from rules.engine import Plan, PlannedAction, data_needs, plan, plan_fired, schedule_timer
from queueing import finish_pipeline
from runtime import Runtime, configure_logging
from config.settings import Settings

log = logging.getLogger("crmbridge.worker")

_runtime: Runtime | None = None
clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # tests replace it
CRM_ENTITIES = {"lead", "deal", "contact", "company", "task", "customer"}
SNAPSHOT_TTL = 90 * 24 * 3600


def install(runtime: Runtime) -> None:
    """Use this runtime in this process (the embedded default, tests)."""
    global _runtime
    _runtime = runtime


def open_runtime(settings: Settings) -> Runtime:
    """Build the runtime with this module's jobs (for the embedded backend) and use it here."""
    rt = Runtime.create(settings, handle_event=handle_event, fire_timer=fire_timer,
                        on_failure=on_embedded_failure)
    install(rt)
    return rt


def runtime() -> Runtime:
    if _runtime is None:
        open_runtime(Settings.from_env())
    return _runtime


# --- jobs -------------------------------------------------------------------------------------

def handle_event(payload: dict[str, Any]) -> dict[str, Any]:
    """One event: enrich it, plan the rules, cancel/set timers, run the actions, record it all."""
    with audit_batch():
        return _handle_event(payload)


def _handle_event(payload: dict[str, Any]) -> dict[str, Any]:
    rt = runtime()
    marks = stage_mark_keys(rt, payload)   # read with the turn's check: one round trip less
    if not wait_for_turn(rt, payload, marks):
        return {"deferred": True}
    event, answered = links.bind(rt, Event.from_dict(payload))  # chats and buttons bound to records
    if answered is not None:
        rt.backend.order.done(payload)
        return answered
    entity = snapshot(rt, event)
    observe(rt, event)
    outcome: dict[str, Any] = {}
    # the vendor's own stage change is checked against its marks (read ahead) now, and the stage
    # it enters is kept in the same round trip as the snapshot (before the actions: one of them
    # may move the record on)
    seen_before = event.kind == "stage.changed" and stage_marks(rt, event, entity, marks)
    entering = None if seen_before or event.kind != "stage.changed" else stage_seen_entry(event, derived=False)
    derived = derive(event, remember(rt, event, entity, entering), entity)
    entity = enrich(rt, event, entity, data_needs(rt.ruleset.rules, {event.kind, *(d.kind for d in derived)}))
    for each in [event, *derived]:
        # what the event knows of the past (previous stage, changed fields) joins the entity; the
        # event's own refs are in the snapshot already, named (a derived event brings its own)
        view = {**entity, **{k: v for k, v in each.data.items()
                             if each is not event and k.startswith("previous_") or k == "changed"}}
        if each.kind == "stage.changed" and (seen_before if each is event else stage_marks(rt, each, view, marks)):
            audit(rt, each, "event.skipped", reason="this stage move was already handled (seen by a catch-up first)")
            outcome[each.kind] = {"already_handled": True}
            continue
        result = plan(each, view, rt.ruleset, clock(), MODULES)
        if not links.claim(rt, each, result):  # an approval already answered by an earlier press
            outcome[each.kind] = {"already_chosen": True}
            continue
        for timer_id, reason in result.cancels:
            if rt.backend.cancel(timer_id):
                audit(rt, each, "timer.cancelled", timer=timer_id, reason=reason)
        for timer in result.timers:
            rt.backend.schedule(timer_as_dict(timer))
            audit(rt, each, "timer.set", timer=timer.timer_id, rule=timer.rule, fire_at=timer.fire_at)
        if each.kind == "stage.changed" and each is not event:  # before the actions (see above)
            remember_stage(rt, each, derived=True)
        outcome[each.kind] = run_plan(rt, each, result)
    order_done(rt, payload)
    return outcome


ORDER_POLL = 5.0          # seconds a worker waits for an earlier event of the same record…
ORDER_GIVE_UP = 15 * 60   # …and how long an event is kept waiting at most, deferred in between


def wait_for_turn(rt: Runtime, payload: dict[str, Any], also: dict[str, bytes | None] | None = None) -> bool:
    """True once the record's earlier events are done; else defer this one and return False.
    `also`: keys to read with the first look (Order.is_turn)."""
    deadline = time.monotonic() + ORDER_POLL
    while not rt.backend.order.is_turn(payload, also):
        if also:   # read before the earlier event (which may write them) was done: read again later
            also.clear()
        if time.monotonic() >= deadline:
            first = payload.setdefault("waiting_since", time.time())
            if time.time() - first > ORDER_GIVE_UP:  # an earlier event is stuck: go on, and say so
                audit(rt, Event.from_dict(payload), "order.gave_up", seq=payload.get("seq"))
                return True
            payload["defers"] = payload.get("defers", 0) + 1
            rt.backend.defer_event(payload, 2.0)
            return False
        time.sleep(0.05)
    return True


def fire_timer(timer: dict[str, Any]) -> dict[str, Any]:
    """A timer is due: if it is still the current one, check its guard on fresh data and act."""
    with audit_batch():
        return _fire_timer(timer)


def _fire_timer(timer: dict[str, Any]) -> dict[str, Any]:
    rt = runtime()
    current = rt.backend.timers.get(timer["timer_id"])
    if "event" not in timer:  # an RQ job carries only the timer's id and time: the index has the rest
        if current is None or datetime.fromisoformat(current["fire_at"]).timestamp() != timer["at"]:
            log.info("timer %s: stale (moved or cancelled since it was queued)", timer["timer_id"])
            return {"stale": True}
        timer = current
    event = Event.from_dict(timer["event"])
    if current is None or current["fire_at"] != timer["fire_at"]:
        # replaced, moved or cancelled since this job was scheduled (or fired twice by two schedulers)
        audit(rt, event, "timer.stale", timer=timer["timer_id"])
        return {"stale": True}
    entity = snapshot(rt, event)
    rule = rt.ruleset.by_id(timer["rule_id"])
    entity = enrich(rt, event, entity, data_needs([rule]) if rule else set())
    result = plan_fired(timer, event, entity, rt.ruleset, clock(), MODULES)
    for rule, reason in result.skipped:  # the guard no longer holds: nothing is done, and we say why
        audit(rt, event, "timer.skipped", timer=timer["timer_id"], rule=rule, reason=reason)
    fired = Event(**{**event.__dict__, "id": f"{event.id}|{timer['timer_id']}@{timer['fire_at']}"})
    outcome = run_plan(rt, fired, result)
    if not result.timers:
        rt.backend.timers.remove(timer["timer_id"])
    for nxt in result.timers:
        rt.backend.schedule(timer_as_dict(nxt))
    return outcome


def ensure_schedules(rt: Runtime) -> int:
    """Give every scheduled rule (digests) its next tick, unless it has a current one."""
    count = 0
    for rule in rt.ruleset.rules:
        if not rule.trigger.schedule:
            continue
        timer = timer_as_dict(schedule_timer(rule, rt.ruleset, clock()))
        current = rt.backend.timers.get(timer["timer_id"])
        if current is None or (current["fire_at"] != timer["fire_at"]
                               and datetime.fromisoformat(current["fire_at"]) > clock()):
            rt.backend.schedule(timer)
            count += 1
    return count


# --- catch-up: what the platforms' lost webhooks would have said -----------------------------------

UNIT_SECONDS = {"minutes": 60, "hours": 3600, "days": 86400, "weeks": 7 * 86400}


def catch_up_every(rt: Runtime, name: str) -> float | None:
    """Seconds between catch-ups of a connection (`options: {catch_up: {every: 10 minutes}}`)."""
    spec = rt.connections.connections[name].options.get("catch_up")
    if not spec:
        return None
    every = parse_duration(str(spec.get("every", "10 minutes") if isinstance(spec, dict) else spec))
    return every.amount * UNIT_SECONDS[every.unit]


def ensure_catch_ups(rt: Runtime) -> list[str]:
    """Plan the next catch-up of every connection that has one (one job per slot and connection)."""
    planned = []
    for name in rt.connections.connections:
        every = catch_up_every(rt, name)
        if every and hasattr(rt.client(name), "changed_since"):
            slot = int(clock().timestamp() // every) + 1
            rt.backend.call_at(datetime.fromtimestamp(slot * every, timezone.utc), "worker.catch_up", name,
                               f"catch-up:{name}:{slot}")
            planned.append(name)
    return planned


def catch_up(name: str) -> dict[str, int]:
    """Ask the CRM what changed since the last look; feed it through the webhooks' own path.

    Each change becomes an `entity.updated` event whose id is the record and its modification
    time, so a change seen before is a duplicate; the worker then compares the record with
    its last snapshot, so stage and field changes that a lost webhook would have carried
    are derived, and changes already handled derive nothing.
    """
    rt = runtime()
    client, now = rt.client(name), clock()
    mark = rt.keys("catch-up", name)
    since = (rt.store.get(mark) or b"").decode() or (now - timedelta(seconds=catch_up_every(rt, name) or 600)).isoformat()
    accepted = seen = 0
    for item in client.changed_since(since) or []:
        kind = item.get("type") or getattr(client, "catch_up_entity", "deal")
        modified = item.get("modified") or item.get("updated_at")
        event = Event(id=event_id(name, "catch-up", kind, item["id"], modified), connection=name,
                      source=rt.connections.connections[name].type, kind="entity.updated",
                      entity=Entity(kind, str(item["id"])), data={"needs_snapshot_diff": True, "via": "catch-up"},
                      raw=item, occurred_at=now.isoformat())
        if rt.backend.accept(event.to_dict(), rt.keys("seen", event.id), rt.settings.dedupe_ttl):
            accepted += 1
        else:
            seen += 1
    rt.store.set(mark, (now - timedelta(seconds=60)).isoformat())  # overlap a minute: clocks differ
    ensure_catch_ups(rt)
    log.info("catch-up %s since %s: %d new, %d already seen", name, since, accepted, seen)
    return {"accepted": accepted, "seen": seen}


def timer_as_dict(timer: Any) -> dict[str, Any]:
    return dict(timer.__dict__)


def snapshot(rt: Runtime, event: Event) -> dict[str, Any]:
    """The entity as it is now: the webhook's data, overlaid with a fresh read from the CRM."""
    data = dict(event.data)
    entity: dict[str, Any] = {"type": event.entity.type, "id": event.entity.id}
    if event.connection not in rt.connections.connections:
        return {**data, **entity}
    linked = form_record(rt, event)
    if linked is not None:
        return linked
    # a Telegram press or message bound to a CRM record (links.py) is read from that record's CRM
    client = rt.client((event.data.get("record") or {}).get("connection") or event.connection)
    fresh = None
    # (a group message that only chat sync handles needs no read: links.needs_record)
    if event.entity.type in CRM_ENTITIES and hasattr(client, "get_entity") and links.needs_record(rt, event):
        try:
            fresh = client.get_entity(event.entity)
        except PermanentApiError as exc:  # deleted, or no access: the webhook's data must do
            audit(rt, event, "enrich.failed", error=str(exc))
    if hasattr(client, "name_refs"):
        data = client.name_refs(json.loads(json.dumps(data)))
    return {**data, **(fresh or {}), **entity}


STAGE_SEEN_TTL = 30 * 24 * 3600


def stage_keys(rt: Runtime, connection: str, record: str) -> tuple[str, str]:
    """A record's two stage marks: crmbridge's own undo, and the stage last seen."""
    return rt.keys("undo", connection, record), rt.keys("stage-seen", connection, record)


def stage_mark_keys(rt: Runtime, payload: dict[str, Any]) -> dict[str, bytes | None]:
    """The keys stage_marks reads for a record, to be read ahead (empty: nothing to read)."""
    if payload.get("kind") not in ("stage.changed", "entity.updated"):
        return {}
    return dict.fromkeys(stage_keys(rt, payload["connection"], f"{payload['entity']['type']}:{payload['entity']['id']}"))


def stage_marks(rt: Runtime, event: Event, view: dict[str, Any], ahead: dict[str, bytes | None] | None = None) -> bool:
    """A stage change's two marks, read in one round trip (or read ahead, with the turn's check:
    `ahead` holds them once, and is emptied): crmbridge's own undo (the change is marked
    `data.undo` for the rules, once), and the stage last seen (True: this move was already
    handled under another event id)."""
    undo_key, seen_key = stage_keys(rt, event.connection, str(event.entity))
    if ahead and undo_key in ahead and seen_key in ahead:   # (Order.is_turn empties it unless it read them)
        undo_mark, seen = ahead.pop(undo_key), ahead.pop(seen_key)
    else:
        undo_mark, seen = rt.store.mget(undo_key, seen_key)
    if was_undo(undo_mark, view):
        rt.store.delete(undo_key)
        event.data["undo"] = True
    return stage_seen_already(event, seen)


def remember_stage(rt: Runtime, event: Event, derived: bool) -> None:
    """Keep the stage a record was last seen entering, and as of when (stage_seen_entry)."""
    entry = stage_seen_entry(event, derived)
    if entry is not None:
        rt.store.set(rt.keys("stage-seen", event.connection, str(event.entity)), entry, ex=STAGE_SEEN_TTL)


def stage_seen_entry(event: Event, derived: bool) -> str | None:
    """What remember_stage keeps for a stage change (None: nothing to keep).

    A move seen in a fresh read (a catch-up's, or an update webhook's snapshot diff) is known as
    of now; one the vendor reported, as of the change itself.
    """
    stage = (event.data.get("stage") or {}).get("id")
    if stage is None or event.entity.type not in CRM_ENTITIES:
        return None
    as_of = clock().isoformat() if derived else event.occurred_at
    return json.dumps({"stage": str(stage), "as_of": as_of, "event": event.id})


def stage_seen_already(event: Event, raw: bytes | None) -> bool:
    """Is this stage move one already handled under another event id?

    A catch-up that runs before the vendor's own (delayed) status webhook derives the move from
    a fresh read; the webhook, arriving later, reports the same move again with an earlier
    change time. The record was already known to be in that stage as of a moment not before the
    change: the move is the same one. A later move into the same stage (after leaving it) has a
    later change time, or another stage was seen in between, and is handled.
    """
    stage = (event.data.get("stage") or {}).get("id")
    if stage is None or event.entity.type not in CRM_ENTITIES:
        return False
    if raw is None:
        return False
    seen = json.loads(raw)
    if seen.get("event") == event.id:  # the same event again (a replay, a re-run job): its steps decide
        return False
    try:
        return seen["stage"] == str(stage) and (datetime.fromisoformat(event.occurred_at)
                                                <= datetime.fromisoformat(seen["as_of"]))
    except (TypeError, ValueError):
        return False


def form_record(rt: Runtime, event: Event) -> dict[str, Any] | None:
    """The CRM record a form submission is about, when the form connection names one.

    `options: {record: {connection: agency-planfix, type: task, answer: "Номер задачі"}}`: the
    answer to that question (pre-filled in the link sent to the client) is the record's id; the
    record is read fresh and becomes the rules' `entity`, the answers staying in `data`.
    """
    spec = rt.connections.connections[event.connection].options.get("record")
    if event.kind != "form.submitted" or not isinstance(spec, dict) or spec.get("connection") not in rt.connections.connections:
        return None
    ident = str((event.data.get("answers") or {}).get(str(spec.get("answer"))) or "").strip()
    if not ident:
        return None
    record = Entity(str(spec.get("type") or "task"), ident)
    fresh = None
    try:
        fresh = rt.client(spec["connection"]).get_entity(record)
    except PermanentApiError as exc:  # a mistyped number: the rules see the form's data only
        audit(rt, event, "enrich.failed", error=str(exc), record=str(record))
    return {**event.data, **(fresh or {}), "type": record.type, "id": record.id}


def enrich(rt: Runtime, event: Event, entity: dict[str, Any], needs: set[str]) -> dict[str, Any]:
    """Add what the rules' conditions read besides the record, only when some rule uses it:
    open tasks, activity (when the stage was entered, the last call/note/move), files, and for
    a task its parent record with the same (rules.engine.data_needs says which)."""
    if not needs or event.entity.type not in CRM_ENTITIES or event.connection not in rt.connections.connections:
        return entity
    client = rt.client(event.connection)
    if not hasattr(client, "rule_context"):
        return entity
    try:
        if event.entity.type != "task":
            return {**entity, **client.rule_context(event.entity, needs)}
        parent = entity.get("parent") or {}
        if "parent" not in needs or parent.get("type") not in CRM_ENTITIES or not parent.get("id"):
            return entity
        ref = Entity(parent["type"], str(parent["id"]))
        fresh = client.get_entity(ref) or {}
        return {**entity, "parent": {**fresh, **client.rule_context(ref, needs), "type": ref.type, "id": ref.id}}
    except PermanentApiError as exc:  # the conditions that need it say it was not read
        audit(rt, event, "enrich.failed", error=str(exc), needs=sorted(needs))
        return entity


def remember(rt: Runtime, event: Event, entity: dict[str, Any], entering: str | None = None) -> dict[str, Any] | None:
    """Keep the entity's state; return the state kept before (None the first time). `entering`:
    the stage-seen entry of the event's own stage change, written in the same round trip."""
    if event.entity.type not in CRM_ENTITIES or event.kind == "entity.deleted":
        return None
    key = rt.keys("snapshot", event.connection, str(event.entity))
    state = json.dumps(entity, ensure_ascii=False, default=str)
    if entering is None:
        previous = rt.store.set(key, state, ex=SNAPSHOT_TTL, get=True)
    else:
        with rt.store.pipeline(transaction=False) as pipe:
            pipe.set(key, state, ex=SNAPSHOT_TTL, get=True)
            pipe.set(rt.keys("stage-seen", event.connection, str(event.entity)), entering, ex=STAGE_SEEN_TTL)
            previous, _ = pipe.execute()
    return json.loads(previous) if previous else None


def derive(event: Event, previous: dict[str, Any] | None, current: dict[str, Any]) -> list[Event]:
    """What changed since the last snapshot, as events of their own.

    Vendors that send only an id (Bitrix24) get stage and responsible changes this way; every
    CRM gets `field.changed` with `changed: {field: {"from", "to"}}`, since update webhooks do
    not say which fields changed.
    """
    if previous is None or event.kind != "entity.updated":
        return []
    derived = []
    if event.data.get("needs_snapshot_diff"):
        for key, kind in (("stage", "stage.changed"), ("responsible", "responsible.changed")):
            before, after = (previous.get(key) or {}).get("id"), (current.get(key) or {}).get("id")
            if after is not None and before != after:
                data = {**event.data, key: current[key], f"previous_{key}": previous.get(key)}
                derived.append(_derived(event, kind, f"{key}:{before}>{after}", data))
    old, new = previous.get("fields") or {}, current.get("fields") or {}
    changed = {name: {"from": old.get(name), "to": new.get(name)}
               for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)}
    if changed:
        derived.append(_derived(event, "field.changed", json.dumps(changed, sort_keys=True, default=str),
                                {**event.data, "changed": changed}))
    return derived


def _derived(event: Event, kind: str, what: str, data: dict[str, Any]) -> Event:
    digest = hashlib.sha1(what.encode()).hexdigest()[:12]
    return Event(**{**event.__dict__, "id": f"{event.id}|{kind}|{digest}", "kind": kind, "data": data})


def run_plan(rt: Runtime, event: Event, result: Plan) -> dict[str, Any]:
    for rule, reason in result.matched:
        audit(rt, event, "rule.matched", rule=rule, reason=reason)
    for rule, message in result.errors:
        log.error("event %s rule %r: %s", event.id, rule, message)
        audit(rt, event, "rule.error", rule=rule, error=message)
    done = failed = 0
    for action in result.actions:
        try:
            done += execute(rt, event, action)
        except PermanentApiError as exc:
            # retrying will not help: keep the step for a replay once the cause is fixed,
            # and go on with the other steps
            failed += 1
            audit(rt, event, "action.failed", rule=action.rule, action=action.describe(), error=str(exc))
            dead_letter(rt, "worker.handle_event", event.to_dict(), f"{action.describe()}: {exc}", key=action.key)
    return {"actions": len(result.actions), "done": done, "failed": failed, "errors": len(result.errors)}


# Action methods that may be repeated when it is unknown whether an earlier try was done: they set a
# state (a stage, fields, a keyboard, a text) or answer a callback, so doing them twice leaves the
# same result. Every other method (creates: tasks, notes; messages: send_message, reply, files) is
# not repeated blindly: a step that may have been done goes to the dead letters to be checked.
# set_responsible sets a state; delete_entity counts a record already gone as done (notify is a message).
# find_or_create is not among them: it searches before it creates, but a vendor's search may not show a
# contact created a moment ago (amoCRM's `query` is a full-text index), so a create that may have been
# done is left to a person, as other creates are.
REPEATABLE_METHODS = frozenset({"move_to_stage", "set_fields", "edit_buttons", "edit_text", "answer_button",
                                "set_responsible", "delete_entity"})
MAYBE_DONE = "may have been sent: check the vendor, then replay it only if it was not done"


class StepMaybeDone(PermanentApiError):
    """A step that is not repeatable may have been done already (attempted, never recorded)."""


def repeatable(action: PlannedAction) -> bool:
    return action.method in REPEATABLE_METHODS


def execute(rt: Runtime, event: Event, action: PlannedAction) -> bool:
    """Run one planned action once: skipped if its idempotency key is already recorded.

    An `attempted:` mark ("calling") is written before the client is called, turned into "sent"
    by clients that report their sends just before a request leaves, and dropped once the step is
    recorded done (or the vendor refused it, so nothing was done). A mark found on a later run
    means a worker died, or lost Redis, in between: "calling" from such a client is done again
    (nothing left); otherwise a repeatable step is done again and any other goes to the dead
    letters as "may have been sent". The same holds for a call that got no answer after it was
    sent (UncertainApiError).
    """
    done_key, attempted_key = rt.keys("done", action.key), rt.keys("attempted", action.key)
    mark = {"at": clock().isoformat(), "pid": os.getpid(), "phase": "calling"}
    claimed = None   # the attempted mark: set (True), found (False), or not tried yet (None)
    if _carries_files(action.args):   # files are fetched first: the step is claimed after that
        done = rt.store.exists(done_key)
    else:   # nothing to fetch: the done check and the claim in one round trip
        with rt.store.pipeline(transaction=False) as pipe:
            pipe.exists(done_key)
            pipe.set(attempted_key, json.dumps(mark), nx=True, ex=rt.settings.done_ttl)
            done, claimed = pipe.execute()
    try:
        if done:
            audit(rt, event, "action.skipped", rule=action.rule, action=action.describe(), reason="already done")
            return False
        client = rt.client(action.connection)
        args = {k: Entity(v["type"], str(v["id"])) if k == "entity" else v for k, v in action.args.items()}
        undo = bool(args.pop("undo", False))  # move_to_stage undoing a refused move (remember_undo)
        method = getattr(client, action.method, None) or composite(rt, action)
        if method is None:
            raise PermanentApiError(f"connection {action.connection!r} cannot {action.method}")
    except BaseException:
        if claimed:   # claimed in the same round trip as the done check, for nothing: give it back
            _forget_attempt(rt, attempted_key)
        raise
    if claimed is None:
        args = with_retries(rt, lambda: links.fetch_files(rt, args))  # files carried from another connection
        claimed = rt.store.set(attempted_key, json.dumps(mark), nx=True, ex=rt.settings.done_ttl)
    if not claimed:
        before = json.loads(rt.store.get(attempted_key) or "{}")
        own = getattr(client, action.method, None) is not None   # not a step spanning connections
        if before.get("phase") == "calling" and client.reports_sends and own:
            # the worker that tried died before any request of this step left it: nothing was sent
            audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
                  reason="attempted before, but no request had left")
        elif not repeatable(action):
            audit(rt, event, "action.uncertain", rule=action.rule, action=action.describe(),
                  reason="attempted before and never recorded done", advice=MAYBE_DONE)
            raise StepMaybeDone(f"attempted before and never recorded done; {MAYBE_DONE}")
        else:
            audit(rt, event, "action.repeated", rule=action.rule, action=action.describe(),
                  reason="attempted before and never recorded done; repeatable")
        rt.store.set(attempted_key, json.dumps(mark), ex=rt.settings.done_ttl)
    sent = json.dumps({**mark, "phase": "sent"})
    # a client that reports its sends marks the step "sent" just before a request leaves (after its
    # rate limits): a worker killed before that is known to have sent nothing
    client.sending = lambda: rt.store.set(attempted_key, sent, xx=True, ex=rt.settings.done_ttl)
    try:
        result = with_retries(rt, lambda: method(**args), repeat_uncertain=repeatable(action))
    except UncertainApiError as exc:
        if not repeatable(action):   # the mark stays: a replay must be a decision, not an accident
            audit(rt, event, "action.uncertain", rule=action.rule, action=action.describe(), error=str(exc),
                  advice=MAYBE_DONE)
            raise StepMaybeDone(f"{exc}; {MAYBE_DONE}") from None
        _forget_attempt(rt, attempted_key)
        raise
    except (RetryableApiError, PermanentApiError):
        _forget_attempt(rt, attempted_key)   # the vendor refused it (or it never left): nothing was done
        raise
    # anything else (the job's timeout firing mid-call, a shutdown) keeps the mark: it may have been sent
    finally:
        client.sending = None
    record_done(rt, done_key, attempted_key, result)
    # a client reports a move it left out (only_forward) as {"moved": False}; others return True,
    # a status name or None
    if undo and not (isinstance(result, dict) and result.get("moved") is False):
        remember_undo(rt, action.connection, args["entity"], str(args.get("stage")))
    if action.method == "move_to_stage":  # the record left the stage last seen: a move back in is new
        rt.store.delete(rt.keys("stage-seen", action.connection, str(args["entity"])))
    audit(rt, event, "action.done", rule=action.rule, action=action.describe(), result=result)
    return True


UNDO_TTL = 3600  # how long a move crmbridge undid waits for the CRM to announce it


def remember_undo(rt: Runtime, connection: str, entity: Entity, stage: str) -> None:
    """crmbridge moved a record back (`move_to_stage: {undo: true}`): the CRM's stage change that
    follows is marked `data.undo`, so that rules on entering that stage can leave it alone."""
    rt.store.set(rt.keys("undo", connection, str(entity)), stage, ex=UNDO_TTL)


def was_undo(stage: bytes | None, view: dict[str, Any]) -> bool:
    """Is this stage change the one crmbridge's undo caused: the stage it moved the record to?"""
    now = view.get("stage") or {}
    return stage is not None and stage.decode() in (str(now.get("id")), str(now.get("name")))


def composite(rt: Runtime, action: PlannedAction) -> Callable[..., Any] | None:
    """A step that touches two connections (a digest reads the CRM and writes to a chat)."""
    if action.method == "send_digest":
        return lambda **args: digests.send_digest(rt, action.key, **args)
    return None


def observe(rt: Runtime, event: Event) -> None:
    """Let the event's own connector learn from it (a call that ended in a talk pauses callbacks)."""
    if event.connection not in rt.connections.connections:
        return
    learn = getattr(rt.client(event.connection), "observe", None)
    found = learn(event) if learn else None
    if found:
        audit(rt, event, "connector.observed", **found)


def _carries_files(value: Any) -> bool:
    """Does an action's argument hold a {"$download": …} (links.fetch_files) anywhere?"""
    if isinstance(value, dict):
        return "$download" in value or any(_carries_files(v) for v in value.values())
    if isinstance(value, list):
        return any(_carries_files(v) for v in value)
    return False


def _forget_attempt(rt: Runtime, attempted_key: str) -> None:
    try:
        rt.store.delete(attempted_key)
    except RedisError:   # the mark stays: a later run dead-letters the step instead of repeating it
        log.warning("could not drop %s (Redis unavailable)", attempted_key)


RECORD_PATIENCE = 120.0   # seconds a worker keeps trying to record a done step while Redis is away


def record_done(rt: Runtime, done_key: str, attempted_key: str, result: Any) -> None:
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


def _wait(state: RetryCallState) -> float:
    """Exponential backoff with full jitter, never shorter than the vendor's Retry-After."""
    exc = state.outcome.exception() if state.outcome else None
    base = min(30.0, 0.5 * 2 ** (state.attempt_number - 1))
    wait = random.uniform(base / 2, base)
    retry_after = getattr(exc, "retry_after", None)
    return max(wait, float(retry_after)) if retry_after else wait


MAX_INLINE_WAIT = 60.0  # a vendor asking for a longer pause (Planfix's daily quota) fails the job instead


def _give_up(state: RetryCallState) -> bool:
    exc = state.outcome.exception() if state.outcome else None
    too_long = (getattr(exc, "retry_after", None) or 0) > MAX_INLINE_WAIT
    return too_long or state.attempt_number >= runtime().settings.action_attempts


def with_retries(rt: Runtime, call: Callable[[], Any], *, repeat_uncertain: bool = True) -> Any:
    """Retry what may pass (429, 5xx, timeouts) in this job; RQ retries the job after that.

    A call that may have been done (UncertainApiError: no answer after it was sent) is tried
    again only when `repeat_uncertain` (the call is idempotent)."""
    def worth_trying(exc: BaseException) -> bool:
        return isinstance(exc, RetryableApiError) and (repeat_uncertain or not isinstance(exc, UncertainApiError))
    retrying = Retrying(retry=retry_if_exception(worth_trying), wait=_wait, reraise=True, stop=_give_up)
    return retrying(call)


# --- record ---------------------------------------------------------------------------------

_batch = threading.local()   # the audit entries of the job this thread runs (see audit_batch)


@contextlib.contextmanager
def audit_batch() -> Iterator[None]:
    """Write a job's audit entries in one round trip when it ends, failed or not (a worker killed
    in the middle loses that job's entries; its re-run writes its own)."""
    if getattr(_batch, "entries", None) is not None:  # nested: the outer job writes them
        yield
        return
    _batch.entries, _batch.handled = [], []
    failed = True
    try:
        yield
        failed = False
    finally:
        entries, _batch.entries = _batch.entries, None
        handled, _batch.handled = _batch.handled if not failed else [], None
        if entries or handled:
            try:
                store = (entries or handled)[0][0].store
                pipe = store.pipeline(transaction=False)
                for rt, text in entries:
                    pipe.xadd(rt.keys("audit"), {"entry": text}, maxlen=rt.settings.audit_max, approximate=True)
                # the record's next event may go (Order.done)
                redo = [again for rt, payload in handled if (again := rt.backend.order.done(payload, pipe))]
                finish_pipeline(pipe.execute(raise_on_error=False), redo)
            except Exception:
                if not failed:
                    raise
                log.exception("audit entries of a failed job not written")


def order_done(rt: Runtime, payload: dict[str, Any]) -> None:
    """The event is handled: its record's next event may go. Inside a job, written with the
    job's audit entries when it ends well (one round trip); else now."""
    if getattr(_batch, "handled", None) is not None:
        _batch.handled.append((rt, payload))
    else:
        rt.backend.order.done(payload)


def audit(rt: Runtime, event: Event, what: str, **details: Any) -> None:
    """One line of the audit trail: to the log, and to a capped Redis stream (at the end of the
    job, see audit_batch)."""
    entry = {"at": clock().isoformat(), "event": event.id, "kind": event.kind,
             "entity": str(event.entity), "what": what, **details}
    text = json.dumps(entry, ensure_ascii=False, default=str)
    log.info("%s", text)
    if getattr(_batch, "entries", None) is not None:
        _batch.entries.append((rt, text))
        return
    rt.store.xadd(rt.keys("audit"), {"entry": text}, maxlen=rt.settings.audit_max, approximate=True)


def dead_letter(rt: Runtime, job_name: str, payload: dict[str, Any], error: str,
                key: str | None = None) -> str:
    """Keep a job (or one step of it) that gave up, with its event and error, for a replay."""
    key = key or payload.get("timer_id") or payload.get("id") or "unknown"
    entry = {"job": job_name, "payload": payload, "error": error[-2000:], "at": clock().isoformat()}
    rt.store.hset(rt.keys("dead"), key, json.dumps(entry, ensure_ascii=False, default=str))
    log.error("dead letter %s (%s): %s", key, job_name, error.splitlines()[-1] if error else "")
    return key


def on_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: dead-letter the job once it has no retries left."""
    if job.retries_left:
        return
    name = "worker.fire_timer" if job.func_name.endswith("fire_timer") else "worker.handle_event"
    payload = job.args[0]
    if name == "worker.fire_timer" and "event" not in payload:  # the dead letter keeps the whole timer
        payload = runtime().backend.timers.get(payload["timer_id"]) or payload
    give_up(name, payload, f"{exc_type.__name__}: {exc_value}")


def on_embedded_failure(name: str, payload: dict[str, Any], exc: Exception) -> None:
    give_up(name, payload, f"{type(exc).__name__}: {exc}")


def give_up(name: str, payload: dict[str, Any], error: str) -> None:
    """A job that will not be retried: dead-letter it, and let its record's next event go."""
    rt = runtime()
    dead_letter(rt, name, payload, error)
    if name == "worker.handle_event":
        rt.backend.order.done(payload)


def replay(rt: Runtime, key: str) -> bool:
    """Put a dead letter back on the queue (completed steps are still skipped)."""
    raw = rt.store.hget(rt.keys("dead"), key)
    if raw is None:
        return False
    entry = json.loads(raw)
    if entry["job"].endswith("fire_timer"):
        rt.backend.schedule({**entry["payload"], "fire_at": clock().isoformat()})
    else:
        rt.backend.enqueue_event(entry["payload"])
    # a step dead-lettered as "may have been sent" keeps its attempted mark until someone decides:
    # replaying it is that decision
    rt.store.delete(rt.keys("attempted", key))
    rt.store.hdel(rt.keys("dead"), key)
    return True


# --- the RQ worker process -----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Start an RQ worker (non-forking, with the scheduler) on REDIS_URL."""
    from rqworker import run_worker

    configure_logging()
    settings = Settings.from_env()
    if not settings.redis_url:
        print("worker.py needs REDIS_URL; without it, `python webhooks.py` runs web and worker "
              "in one process.", file=sys.stderr)
        return 2
    import worker as this  # jobs name "worker.…": share that module's runtime, not __main__'s
    rt = this.runtime()
    this.ensure_schedules(rt)
    this.ensure_catch_ups(rt)
    burst = "--burst" in (argv or sys.argv[1:])
    if burst:
        rt.backend.fire_due_timers()
    else:
        this.start_timer_poll(rt)
    # RQ's SimpleWorker (no fork per job: clients and caches live across jobs) with a heartbeat for
    # the running job and quick recovery of a dead worker's job (rqworker.py); RQ's work loop is
    # started again whenever Redis failed it
    return run_worker(rt.backend.queue, settings, burst=burst,
                      logging_level=os.environ.get("CRMBRIDGE_LOG_LEVEL", "INFO").upper())


TIMER_POLL = 0.2  # seconds between two looks for due timers (RQ's own scheduler looks once a second)


def start_timer_poll(rt: Runtime, interval: float = TIMER_POLL) -> threading.Thread:
    """Queue due timers every `interval` seconds, in a thread of this worker process (any number
    of workers may poll: each timer is queued once, see RQBackend.fire_due_timers)."""
    def poll() -> None:
        while True:
            try:
                rt.backend.fire_due_timers()
            except Exception:  # Redis away for a moment: RQ's worker in this process says so; try again
                log.warning("timer poll failed", exc_info=True)
                time.sleep(1.0)
            time.sleep(interval)
    thread = threading.Thread(target=poll, name="crmbridge-timers", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    sys.exit(main())
