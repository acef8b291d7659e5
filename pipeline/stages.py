"""A record's stage marks: the stage last seen entering (so a move seen twice, by a catch-up and by
the vendor's late webhook, is handled once) and crmbridge's own undo (so the move back it made is
known to the rules as `data.undo`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from connectors.base import Entity, Event
from pipeline import CRM_ENTITIES, clock

UNDO_TTL = 3600  # how long a move crmbridge undid waits for the CRM to announce it


@dataclass(frozen=True)
class Marks:
    """A record's two stage marks as read with its turn's check (one round trip less per event)."""
    undo: bytes | None
    seen: bytes | None


def keys(rt: Any, connection: str, record: str) -> tuple[str, str]:
    """A record's two stage marks: crmbridge's own undo, and the stage last seen."""
    return rt.keys("undo", connection, record), rt.keys("stage-seen", connection, record)


def mark_keys(rt: Any, payload: dict[str, Any]) -> list[str]:
    """The keys `already_handled` reads for a record, to be read ahead (none: nothing to read)."""
    if payload.get("kind") not in ("stage.changed", "entity.updated"):
        return []
    return list(keys(rt, payload["connection"], f"{payload['entity']['type']}:{payload['entity']['id']}"))


def already_handled(rt: Any, event: Event, view: dict[str, Any], ahead: Marks | None = None) -> bool:
    """A stage change's two marks, read in one round trip (or `ahead`, read with the turn's
    check): crmbridge's own undo (the change is marked `data.undo` for the rules, once), and the
    stage last seen (True: this move was already handled under another event id)."""
    undo_key, seen_key = keys(rt, event.connection, str(event.entity))
    undo_mark, seen = rt.store.mget(undo_key, seen_key) if ahead is None else (ahead.undo, ahead.seen)
    if was_undo(undo_mark, view):
        rt.store.delete(undo_key)
        event.data["undo"] = True
    if event.data.get("via") == "history":   # a row of the vendor's history is one move: the log says
        return moved_already(rt, event)       # (the stage last seen cannot tell an earlier entry apart)
    return seen_already(event, seen) or moved_already(rt, event)


def remember(rt: Any, event: Event, derived: bool) -> None:
    """Keep the stage a record was last seen entering, and as of when (seen_entry)."""
    entry = seen_entry(event, derived)
    if entry is not None:
        rt.store.set(rt.keys("stage-seen", event.connection, str(event.entity)), entry, ex=seen_ttl(rt))


def seen_ttl(rt: Any) -> int:
    """How long the stage last seen is kept: as long as a late webhook or a catch-up can report the
    same move again, which the done marks' retention (settings.done_ttl) already covers."""
    return rt.settings.done_ttl


def forget(rt: Any, connection: str, entity: Entity) -> None:
    """crmbridge moved the record: it left the stage last seen, so a move back in is new."""
    rt.store.delete(rt.keys("stage-seen", connection, str(entity)))


def seen_entry(event: Event, derived: bool) -> str | None:
    """What `remember` keeps for a stage change (None: nothing to keep).

    A move seen in a fresh read (a catch-up's, or an update webhook's snapshot diff) is known as
    of now; one the vendor reported, as of the change itself.
    """
    stage = (event.data.get("stage") or {}).get("id")
    if stage is None or event.entity.type not in CRM_ENTITIES:
        return None
    as_of = clock.now().isoformat() if derived else event.occurred_at
    return json.dumps({"stage": str(stage), "as_of": as_of, "event": event.id})


def seen_already(event: Event, raw: bytes | None) -> bool:
    """Is this stage move one already handled under another event id?

    A catch-up that runs before the vendor's own (delayed) status webhook derives the move from
    a fresh read; the webhook, arriving later, reports the same move again with an earlier
    change time. The record was already known to be in that stage as of a moment not before the
    change: the move is the same one. A later move into the same stage (after leaving it) has a
    later change time, or another stage was seen in between, and is handled.
    """
    stage = (event.data.get("stage") or {}).get("id")
    if stage is None or event.entity.type not in CRM_ENTITIES or raw is None:
        return False
    seen = json.loads(raw)
    if seen.get("event") == event.id:  # the same event again (a replay, a re-run job): its steps decide
        return False
    try:
        return seen["stage"] == str(stage) and (datetime.fromisoformat(event.occurred_at)
                                                <= datetime.fromisoformat(seen["as_of"]))
    except (TypeError, ValueError):
        return False


def remember_undo(rt: Any, connection: str, entity: Entity, stage: str) -> None:
    """crmbridge moved a record back (`move_to_stage: {undo: true}`): the CRM's stage change that
    follows is marked `data.undo`, so that rules on entering that stage can leave it alone."""
    rt.store.set(rt.keys("undo", connection, str(entity)), stage, ex=UNDO_TTL)


def was_undo(stage: bytes | None, view: dict[str, Any]) -> bool:
    """Is this stage change the one crmbridge's undo caused: the stage it moved the record to?"""
    now = view.get("stage") or {}
    return stage is not None and stage.decode() in (str(now.get("id")), str(now.get("name")))


# --- the record's stage moves, as the vendor timed them (catch-up from the vendor's history) -------

# A record's last moves kept (the list is trimmed to this many), for as long as done steps are
# remembered (settings.done_ttl): the log only has to match a move seen both ways between two
# catch-up looks (minutes apart), and to let a re-run of the same event find its own entry.
MOVES_KEPT = 20
SAME_MOVE = 2.0      # seconds between a webhook's change time and the history's for one move


def moved_already(rt: Any, event: Event) -> bool:
    """Was this stage move handled already under the other path? A move read from the vendor's
    change history (`data.via == "history"`, pipeline/catch_up.py) and the same move reported by
    a webhook (or derived from an update webhook's snapshot) are one move: the second is skipped,
    whichever comes first. Two history rows are never one move (the vendor numbers them), so
    intermediate stages and a return to a stage are each handled. A move that is handled now is
    logged here in the same call (a re-run of the same event finds its own entry and goes on)."""
    stage = (event.data.get("stage") or {}).get("id")
    if event.kind != "stage.changed" or stage is None or event.entity.type not in CRM_ENTITIES:
        return False
    # a move seen in a fresh read, or reported with no change time of its own (amoCRM's compact
    # status webhook: its time is when it arrived), is known as of now, not as of the move
    untimed = event.data.get("needs_snapshot_diff") or event.dedupe_window is not None
    via = "history" if event.data.get("via") == "history" else ("derived" if untimed else "webhook")
    at = _stamp(clock.now().isoformat() if via == "derived" else event.occurred_at)
    key = rt.keys("stage-moves", event.connection, str(event.entity))
    moves = [json.loads(raw) for raw in rt.store.lrange(key, 0, MOVES_KEPT - 1)]
    if any(m.get("event") == event.id for m in moves):   # this very event, run again: its steps decide
        return False
    if at is not None and _same_move(moves, str(stage), at, via):
        return True
    with rt.store.pipeline(transaction=False) as pipe:
        pipe.lpush(key, json.dumps({"stage": str(stage), "at": at, "via": via, "event": event.id}))
        pipe.ltrim(key, 0, MOVES_KEPT - 1)
        pipe.expire(key, rt.settings.done_ttl)
        pipe.execute()
    return False


def _same_move(moves: list[dict[str, Any]], stage: str, at: float, via: str) -> bool:
    """Is a move into `stage` at `at` (seen `via`) one of the logged moves, seen the other way?"""
    for move in moves:
        if move.get("stage") != stage or move.get("at") is None or (move.get("via") == "history") == (via == "history"):
            continue
        if move.get("via") == "derived" or via == "derived":
            # a move seen in a fresh read is known as of when it was read: the history's move is
            # that one if it came before, with no move into another stage logged in between
            moved, seen = (at, move["at"]) if via == "history" else (move["at"], at)
            if moved <= seen and not any(other.get("stage") != stage and other.get("at") is not None
                                         and moved < other["at"] < seen for other in moves):
                return True
        elif abs(move["at"] - at) <= SAME_MOVE:
            return True
    return False


def _stamp(moment: str | None) -> float | None:
    try:
        parsed = datetime.fromisoformat(str(moment))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
