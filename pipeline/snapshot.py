"""The record as it is now, what changed since it was last seen, and what the rules read besides.

`take` reads the record fresh from its CRM (over the webhook's data; a read is retried in the
job like any call, with the vendor's Retry-After), keeps it as the record's
snapshot and derives the changes the webhook did not spell out (stage, responsible, fields);
`enrich_changes` then adds the data the rules' conditions need (open tasks, activity, files, a
task's parent), once the changes are in the event's progress (a rate limit there defers the event).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Entity, Event, PermanentApiError
from pipeline import CRM_ENTITIES, stages
from pipeline.audit import audit
from pipeline.retry import with_retries
from rules import MODULES
from rules.engine import data_needs

SNAPSHOT_TTL = 90 * 24 * 3600


@dataclass
class Change:
    """One thing to plan for: the event itself or a change derived from the snapshot, with the
    record as the rules see it. `seen_before`: the event's own stage move was handled already
    (None: not checked yet, see stages.already_handled, with `marks` when they were read ahead)."""
    event: Event
    view: dict[str, Any]
    derived: bool = False
    seen_before: bool | None = None
    marks: stages.Marks | None = None


@dataclass
class Record:
    """An event's record, read and kept, and the changes to plan for, in order."""
    event: Event
    entity: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    needs: frozenset[str] = frozenset()   # what the rules read besides the record (enrich_changes adds it)


def take(rt: Any, event: Event, marks: stages.Marks | None) -> Record:
    """Read, keep and compare the event's record (`marks`: its stage marks, if read ahead; they
    serve the first stage change checked, the event's own or a derived one, and no other)."""
    entity = read(rt, event)
    # the vendor's own stage change is checked against its marks now, and the stage it enters is
    # kept in the same round trip as the snapshot (before the actions: one may move the record on)
    seen_before = event.kind == "stage.changed" and stages.already_handled(rt, event, entity, marks)
    entering = None if seen_before or event.kind != "stage.changed" else stages.seen_entry(event, derived=False)
    if past(event):   # a move from the history is of the past: the snapshot stays for the update to compare
        derived = []
        if entering is not None:
            stages.remember(rt, event, derived=False)
    else:
        derived = derive(event, keep(rt, event, entity, entering), entity)
    # the snapshot is kept: what the rules read besides the record is added by enrich_changes once
    # the event's changes are in its progress, so that a rate limit met there defers the event with
    # them (pipeline/resume.py) instead of the worker waiting for its slot
    needs = frozenset(data_needs(rt.ruleset.rules, {event.kind, *(d.kind for d in derived)}))
    own = Change(event, {**entity, **{k: v for k, v in event.data.items() if k == "changed" or k in past(event)}},
                 seen_before=seen_before)
    ahead = None if event.kind == "stage.changed" else marks
    # what a derived change knows of the past (previous stage, changed fields) joins the record
    return Record(event, entity, [own, *(Change(d, {**entity, **{k: v for k, v in d.data.items()
                                                               if k.startswith("previous_") or k == "changed"}},
                                                derived=True, marks=ahead if d.kind == "stage.changed" else None)
                                         for d in derived)], needs)


def enrich_changes(rt: Any, changes: list[Change], entity: dict[str, Any], needs: set[str] | frozenset[str]) -> None:
    """Add what the rules read besides the record (enrich) to every change's view of `entity`
    (the record as read): a key a change sets itself (a stage of the past, `changed`, a previous
    stage) stays the change's. May raise ratelimit.SlotLater: nothing is added, the event is
    deferred with its changes and enriched on its re-run."""
    if not changes or not needs:
        return
    fuller = enrich(rt, changes[0].event, entity, set(needs))
    extra = {k: v for k, v in fuller.items() if k not in entity or entity[k] != v}
    for change in changes:
        own = {k for k in change.view if k not in entity or change.view[k] != entity[k]}
        change.view.update({k: v for k, v in extra.items() if k not in own})


HISTORY_REFS = ("stage", "pipeline", "previous_stage", "previous_pipeline")


def past(event: Event) -> tuple[str, ...]:
    """What a stage move read from the vendor's history (pipeline/catch_up.py) says of the past:
    the stage the record entered then (and left), which the rules see instead of its stage now
    (an intermediate stage is acted on as that stage). Nothing for any other event. Such a move
    keeps no snapshot: the catch-up's update event of the record, queued after its moves,
    compares the record with the snapshot before them (its field changes are derived there)."""
    return HISTORY_REFS if event.data.get("via") == "history" else ()


def read(rt: Any, event: Event) -> dict[str, Any]:
    """The entity as it is now: the webhook's data, overlaid with a fresh read from the CRM."""
    data = dict(event.data)
    entity: dict[str, Any] = {"type": event.entity.type, "id": event.entity.id}
    if event.connection not in rt.connections.connections:
        return {**data, **entity}
    linked = form_record(rt, event)
    if linked is not None:
        return linked
    # a Telegram press or message bound to a CRM record (pipeline/links.py) is read from that record's CRM
    client = rt.client((event.data.get("record") or {}).get("connection") or event.connection)
    fresh = None
    # (a group message that only chat sync handles needs no read: needs_record)
    if event.entity.type in CRM_ENTITIES and client.can("get_entity") and needs_record(rt, event):
        try:
            fresh = with_retries(rt, lambda: client.get_entity(event.entity))
        except PermanentApiError as exc:  # deleted, or no access: the webhook's data must do
            audit(rt, event, "enrich.failed", error=str(exc))
    if client.can("name_refs"):
        data = client.name_refs(json.loads(json.dumps(data)))
    return {**data, **(fresh or {}), **entity}


MESSAGE_KINDS = ("message.received", "message.edited")
_RECORD_FREE: dict[tuple[str, str], tuple[Any, bool]] = {}


def needs_record(rt: Any, event: Event) -> bool:
    """Must the worker read the record this event is about before planning?

    Not for a group message bound to its task (pipeline/links.py) when every rule listening to it has
    no condition, delay or `otherwise:`, and only verbs that plan a chat message from the event
    and the record's reference (their module's RECORD_FREE names the kinds; sync_chat does),
    with no template naming `entity`. Planfix allows one request a second: a busy client group
    would otherwise spend one on every message. Decided once per rule set, event kind and bot."""
    if event.kind not in MESSAGE_KINDS or not (event.data or {}).get("record"):
        return True
    memo = _RECORD_FREE.get((event.kind, event.connection))
    if memo is not None and memo[0] is rt.ruleset:
        return memo[1]
    needed = False
    for rule in rt.ruleset.rules:
        trigger = rule.trigger
        if event.kind not in trigger.events or (trigger.connections and event.connection not in trigger.connections):
            continue
        free = (not rule.conditions and not rule.guard and rule.delay is None and not rule.otherwise
                and not rule.for_each and all(
                    event.kind in getattr(MODULES.get(a.verb), "RECORD_FREE", ()) and "entity" not in repr(a.options)
                    for a in rule.actions))
        needed = needed or not free
    _RECORD_FREE[(event.kind, event.connection)] = (rt.ruleset, needed)
    return needed


def form_record(rt: Any, event: Event) -> dict[str, Any] | None:
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
        fresh = with_retries(rt, lambda: rt.client(spec["connection"]).get_entity(record))
    except PermanentApiError as exc:  # a mistyped number: the rules see the form's data only
        audit(rt, event, "enrich.failed", error=str(exc), record=str(record))
    return {**event.data, **(fresh or {}), "type": record.type, "id": record.id}


def enrich(rt: Any, event: Event, entity: dict[str, Any], needs: set[str]) -> dict[str, Any]:
    """Add what the rules' conditions read besides the record, only when some rule uses it:
    open tasks, activity (when the stage was entered, the last call/note/move), files, and for
    a task its parent record with the same, and its own client's deals where the task is the lead
    (Planfix; the others read none for a task) (rules.engine.data_needs says which)."""
    if not needs or event.entity.type not in CRM_ENTITIES or event.connection not in rt.connections.connections:
        return entity
    client = rt.client(event.connection)
    if not client.can("rule_context"):
        return entity
    try:
        if event.entity.type != "task":
            return {**entity, **with_retries(rt, lambda: client.rule_context(event.entity, needs))}
        if "deals" in needs:   # a task that is itself the lead (Planfix): its client's other leads
            entity = {**entity, **with_retries(rt, lambda: client.rule_context(event.entity, {"deals"}))}
        parent = entity.get("parent") or {}
        if "parent" not in needs or parent.get("type") not in CRM_ENTITIES or not parent.get("id"):
            return entity
        ref = Entity(parent["type"], str(parent["id"]))
        fresh = with_retries(rt, lambda: client.get_entity(ref)) or {}
        context = with_retries(rt, lambda: client.rule_context(ref, needs))
        return {**entity, "parent": {**fresh, **context, "type": ref.type, "id": ref.id}}
    except PermanentApiError as exc:  # the conditions that need it say it was not read
        audit(rt, event, "enrich.failed", error=str(exc), needs=sorted(needs))
        return entity


# what `derive` compares (and `previous_stage`/`previous_responsible` hand on): the snapshot keeps
# only these of the record, not the whole of it
KEPT = ("stage", "responsible", "fields", "modified")


def keep(rt: Any, event: Event, entity: dict[str, Any], entering: str | None = None) -> dict[str, Any] | None:
    """Keep the entity's state (the parts `derive` compares, KEPT, for CRMBRIDGE_SNAPSHOT_TTL
    seconds); return the state kept before (None the first time). `entering`: the stage-seen
    entry of the event's own stage change, written in the same round trip."""
    if event.entity.type not in CRM_ENTITIES or event.kind == "entity.deleted":
        return None
    key = rt.keys("snapshot", event.connection, str(event.entity))
    state = json.dumps({k: entity[k] for k in KEPT if entity.get(k) is not None},
                       ensure_ascii=False, separators=(",", ":"), default=str)
    ttl = getattr(rt.settings, "snapshot_ttl", SNAPSHOT_TTL)
    if entering is None:
        previous = rt.store.set(key, state, ex=ttl, get=True)
    else:
        with rt.store.pipeline(transaction=False) as pipe:
            pipe.set(key, state, ex=ttl, get=True)
            pipe.set(rt.keys("stage-seen", event.connection, str(event.entity)), entering, ex=stages.seen_ttl(rt))
            previous, _ = pipe.execute()
    return json.loads(previous) if previous else None


def derive(event: Event, previous: dict[str, Any] | None, current: dict[str, Any]) -> list[Event]:
    """What changed since the last snapshot, as events of their own.

    Vendors that send only an id (Bitrix24) get stage and responsible changes this way; every
    CRM gets `field.changed` with `changed: {field: {"from", "to"}}`, since update webhooks do
    not say which fields changed.

    First seen (no snapshot yet): an update is the record entering the stage it is in, a
    `stage.changed` with no previous stage (`data.first_seen`); a record created in a stage is its
    own `entity.created` event (docs/rules.md, "First-seen records").
    """
    if event.kind not in ("entity.updated", "task.updated"):   # Bitrix24's ONTASKUPDATE too
        return []
    if previous is None:
        stage = current.get("stage") if isinstance(current.get("stage"), dict) else {}
        where = stage.get("id") or stage.get("name")
        if not where:
            return []
        data = {**event.data, "stage": current["stage"], "previous_stage": None, "first_seen": True}
        return [_derived(event, "stage.changed", f"stage:first-seen>{where}", data)]
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
