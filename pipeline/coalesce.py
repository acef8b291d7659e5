"""Coalesced reads: the records of a connection's waiting events read together, in one request.

A CRM connection's events wait in its lane (pipeline/lanes.py) when they come faster than its
vendor's limit; each would spend one request reading its record. Intake notes each such event's
record in the connection's `unread:<connection>` set (rqintake.py; a sorted set, oldest first).
When a worker reads a record of that connection, it reads with it up to BATCH - 1 other records of
the set in the same request (amoCRM: GET /api/v4/leads?filter[id][]=…, up to 250), and keeps each
record read for READ_TTL seconds (`read:<connection>:<type>:<id>`) for the events that will want
it.

Same snapshot semantics as reading one by one: an event must see its record as it is after its
webhook arrived. Before the request, the worker reads each record's order counter (queueing.Order:
intake numbers a record's events as they arrive), and keeps it with the record ("upto"): the
record was read after every event numbered up to it had arrived. An event uses a kept record only
if its number is at most that; an event that arrived after the read (a later number), or one with
no number (a timer, a replay), reads its record fresh. A lone event reads as before (one GET, no
wait for company): nothing waits to be read with it.
"""
from __future__ import annotations

import json
import time
from typing import Any

from connectors.base import Event
from queueing import UNREAD_TTL

BATCH = 250          # records a request reads at most (amoCRM's list limit)
READ_TTL = 120       # seconds a record read for the events waiting for it is kept


def unread_key(keys: Any, connection: str) -> str:
    return keys("unread", connection)


def member(event: dict[str, Any]) -> str:
    return f"{event['entity']['type']}:{event['entity']['id']}"


def read(rt: Any, client: Any, event: Event, seq: int | None) -> dict[str, Any] | None:
    """The event's record as client.get_entity gives it: kept by an earlier read for this event, or
    read now with the records other waiting events of the connection want."""
    entity = event.entity
    if (not seq or event.connection not in getattr(rt.backend, "paces", {}) or not client.can("get_entities")
            or client.connection.name != event.connection
            or entity.type not in getattr(client, "BATCH_TYPES", ())):
        return client.get_entity(entity)
    store, me = rt.store, f"{entity.type}:{entity.id}"
    kept_key, unread = rt.keys("read", event.connection, me), unread_key(rt.keys, event.connection)
    kept, waiting = _look(store, kept_key, unread)
    if kept is not None:
        found = json.loads(kept)
        if seq <= found["upto"]:
            store.zrem(unread, me)
            return found["entity"]
    ids = [entity.id] + [m.split(":", 1)[1] for m in (w.decode() for w in waiting)
                         if m.startswith(entity.type + ":") and m != me][:BATCH - 1]
    if len(ids) == 1:   # nothing else waits: as one by one
        store.zrem(unread, me)
        return client.get_entity(entity)
    counters = store.mget([rt.keys("order", event.connection, f"{entity.type}:{i}") for i in ids])
    records = client.get_entities(entity.type, ids)   # after the counters: read after those events arrived
    with store.pipeline(transaction=False) as pipe:
        for record_id, upto in zip(ids, counters):
            if upto is not None:
                pipe.set(rt.keys("read", event.connection, f"{entity.type}:{record_id}"),
                         json.dumps({"upto": int(upto), "entity": records.get(record_id)}, ensure_ascii=False,
                                    default=str), ex=READ_TTL)
        pipe.zrem(unread, *(f"{entity.type}:{i}" for i in ids))
        pipe.execute()
    return records.get(entity.id)


def _look(store: Any, kept_key: str, unread: str) -> tuple[bytes | None, list[bytes]]:
    """The record kept for this event's connection and the records waiting to be read, oldest
    first, in one round trip."""
    with store.pipeline(transaction=False) as pipe:
        pipe.get(kept_key)
        # an event that never read its record (it failed; its read was not needed) leaves it here:
        # what was noted more than UNREAD_TTL ago goes (intake's clock is Redis's, in ms)
        pipe.zremrangebyscore(unread, "-inf", int((time.time() - UNREAD_TTL) * 1000))
        pipe.zrange(unread, 0, BATCH - 1)
        kept, _, waiting = pipe.execute()
    return kept, waiting
