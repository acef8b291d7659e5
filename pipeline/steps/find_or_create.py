"""find_or_create: the one CRM contact a phone, an email or an inbox sender names; created when
none matches; linked to the event's deal, lead or task (rules/find_or_create.py plans it).

Built on three single calls of the CRM's client: search_contacts(by, value, field) → candidates
(the vendor's search may be fuzzy: each is checked here, contact_matches), add_contact(name, by,
value, fields) → the new id, link_contact(entity, contact_id) → None when linked, else why not.
The client's FIND_BY says which `by:` its search can do.
"""
from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import LockError

from connectors.base import Entity, PermanentApiError, RetryableApiError, contact_matches, match_key
from pipeline.steps.base import StepContext, require

METHOD = "find_or_create"
REQUIRES = frozenset({"search_contacts", "add_contact", "link_contact"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)
LOCK_SECONDS = 120   # one find_or_create per person and connection at a time (two messages at once)

log = logging.getLogger("crmbridge.steps")


def settles(client: Any) -> bool:
    """Does the step settle its own create here? With find_contact, the create is made through
    StepContext.created (read back when uncertain) and the other calls are a search and a link
    (made twice, one link): a run cut short anywhere, a worker killed mid-call included, is run
    again (pipeline.execute), never parked."""
    return client.can("find_contact") and not client.record_only


def run(ctx: StepContext, by: str, value: str, name: str | None = None, fields: dict[str, Any] | None = None,
        field: str | None = None, entity: Entity | None = None) -> dict[str, Any]:
    """The contact `value` names: {contact, created, by, value, linked | not_linked, several_matched}.

    It always searches before creating (a contact made by an earlier run is found when the vendor's
    search already shows it). A search may lag behind a create, so the create itself is never
    repeated blindly: where the client can read a contact back (find_contact), a create that got a
    5xx or no answer, or whose worker died, is looked for (StepContext.created) and made again
    only if it is not there; elsewhere the executor parks it. Several matches: the oldest is taken
    and the result says `several_matched`. `entity` (a deal, lead or task): the contact is linked to it."""
    client = ctx.client
    if by not in client.FIND_BY:
        raise PermanentApiError(f"{ctx.connection}: cannot find contacts by {by!r}")
    require(ctx, METHOD, REQUIRES)
    value = str(value if value is not None else "").strip()
    if by == "inbox_sender":
        value = value.rstrip("/")   # a profile link with or without its trailing slash is one sender
    if not match_key(by, value):
        raise PermanentApiError(f"find_or_create: nothing to match by {by} in {value!r}")
    if by == "inbox_sender" and not field:
        raise PermanentApiError("find_or_create by inbox_sender needs the contact field that keeps the sender")
    values = dict(fields or {})
    if by == "inbox_sender":
        values[field] = value   # the sender's id/link is what later messages are matched on
    lock = None
    if not client.record_only:
        lock = ctx.rt.store.lock(ctx.rt.keys("find-or-create", ctx.connection, by, match_key(by, value)),
                                 timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS / 2)
        if not lock.acquire():
            raise RetryableApiError(f"find_or_create: another worker is matching {value!r} ({by})")
    try:
        if not settles(client):   # an uncertain create is parked by the executor
            return _find_or_create(ctx, by, value, name, values, field, entity)
        with ctx.settling():   # the search, the create (read back when uncertain) and the link
            return _find_or_create(ctx, by, value, name, values, field, entity)
    finally:
        if lock is not None:
            try:
                lock.release()
            except LockError:   # expired meanwhile: nothing to release
                log.warning("%s: find_or_create lock had expired", ctx.connection)


def _find_or_create(ctx: StepContext, by: str, value: str, name: str | None, values: dict[str, Any],
                    field: str | None, entity: Entity | None) -> dict[str, Any]:
    client = ctx.client
    result: dict[str, Any] = {"by": by, "value": value}
    # an earlier run of this step that made the contact and was cut short (a worker killed before
    # the step was recorded, a 5xx): the contact it made, recorded or read back, is the result
    known, made = ctx.made_before("create", _finder(ctx, name or value, by, value, field)) \
        if settles(client) else (False, None)
    found = [] if known else [c for c in client.search_contacts(by, value, field) or []
                              if contact_matches(by, value, c, field)]
    found = sorted({str(c["id"]): c for c in found}.values(), key=_age)
    if known:
        result.update(contact=None if made is None else str(made), created=True)
    elif found:
        result.update(contact=str(found[0]["id"]), created=False)
        if len(found) > 1:
            result["several_matched"] = [str(c["id"]) for c in found]
            log.warning("%s: %d contacts match %s %r: %s; took the oldest", ctx.connection, len(found), by, value,
                        ", ".join(result["several_matched"]))
    else:
        made = _create(ctx, name or value, by, value, values, field)
        result.update(contact=None if made is None else str(made), created=True)
    if entity is not None and result["contact"] is not None:
        why_not = client.link_contact(entity, result["contact"])
        result["linked"] = None if why_not else str(entity)
        if why_not:
            result["not_linked"] = why_not
    return result


def _create(ctx: StepContext, name: str, by: str, value: str, values: dict[str, Any], field: str | None) -> Any:
    """add_contact, never repeated blindly where the client can read a contact back (find_contact:
    one with that name and value made since the first try): StepContext.created."""
    client = ctx.client
    if not client.can("find_contact"):
        return client.add_contact(name, by, value, values)
    return ctx.created("create", lambda: client.add_contact(name, by, value, values),
                       _finder(ctx, name, by, value, field))


def _finder(ctx: StepContext, name: str, by: str, value: str, field: str | None) -> Any:
    """find(since) for StepContext.created: the contact add_contact made since `since`, or None."""
    return lambda since: ctx.client.find_contact(name, by, value, since, field)


def _age(contact: dict[str, Any]) -> tuple[Any, ...]:
    """Oldest first: by creation time (unix seconds) when the vendor gives one, then by id."""
    created = contact.get("created")
    ident = str(contact.get("id"))
    return (created is None, float(created or 0), int(ident) if ident.isdigit() else 0, ident)
