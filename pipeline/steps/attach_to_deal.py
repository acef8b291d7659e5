"""attach_to_deal (D8): the text as a note on the contact's most recently active open deal.

Built on the CRM client's single calls: search_contacts(by, value, field) → the contacts,
open_deals(contact) → [{"id", "modified"}] per contact, add_note(record, text); with
`none_open: new_deal`, add_deal(title, contact, fields). Each vendor call that changes something runs
through `StepContext.once`, and so does the choice of deal: a retried step resumes where it
stopped and attaches to the deal it chose first, even if another deal became more recent since.
A note whose answer was a 5xx is looked for (the client's find_note) before it is sent once more,
and so is a new deal linked to the contact in the same call (open_deals of the contact).
Where both can be read back (`settles`: Bitrix24, Planfix), each create keeps its own mark
(StepContext.created): a run cut short anywhere, even by a worker killed mid-request, is run
again and looks for what it may have made, never parked. Elsewhere (amoCRM: the lead is linked in
a second call, so it cannot be found by its contact) a create with no answer is left uncertain,
and the executor parks the step for a person.
"""
from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any

from connectors.base import Entity, PermanentApiError, UncertainApiError, contact_matches
from pipeline.steps.base import StepContext, require

METHOD = "attach_to_deal"
REQUIRES = frozenset({"search_contacts", "open_deals", "add_note"})
ONE_CLIENT = True
OLDEST = datetime.min.replace(tzinfo=timezone.utc)


def settles(client: Any) -> bool:
    """Does the step read back its own creates here: notes by find_note, a new deal by the contact's
    open deals (the client links the contact in the same call)? Then pipeline.execute runs a step
    cut short again instead of parking it."""
    return client.can("find_note") and getattr(client, "add_deal_links_contact", True) and not client.record_only


def recency(deal: dict[str, Any]) -> tuple[datetime, int]:
    """The sort key of "most recently active": the modification time (none: the oldest), then the id."""
    try:
        moment = datetime.fromisoformat(str(deal.get("modified"))) if deal.get("modified") else OLDEST
    except ValueError:
        moment = OLDEST
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    ident = str(deal.get("id"))
    return moment, int(ident) if ident.isdigit() else 0


def latest_open_deal(deals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recently active of `deals`: latest `modified`, ties broken by the highest id."""
    return max(deals, key=recency, default=None)


def run(ctx: StepContext, text: str, none_open: str = "contact_note", deal_title: str | None = None,
        deal_fields: dict[str, Any] | None = None, by: str | None = None, value: str | None = None, field: str | None = None,
        contact: str | None = None, entity: Entity | None = None) -> dict[str, Any]:
    require(ctx, METHOD, REQUIRES)
    client = ctx.client
    settle = settles(client)
    with ctx.settling() if settle else nullcontext():   # every create settled
        if contact:
            contacts = [str(contact)]
        else:
            found = [c for c in client.search_contacts(by, value, field) or [] if contact_matches(by, value, c, field)]
            contacts = [str(c["id"]) for c in sorted(found, key=_age)]
        if not contacts:
            return {"attached": None, "reason": f"no contact matches {by} {value!r}"}

        def choose() -> dict[str, Any] | None:
            deals = {str(d["id"]): d for cid in contacts for d in client.open_deals(cid) or []}
            return latest_open_deal(list(deals.values()))

        def note_on(record: Entity) -> Any:
            if settle:
                return ctx.created("note", lambda: client.add_note(record, text),
                                   lambda since: client.find_note(record, text, since))
            return ctx.once("note", lambda: _note(client, record, text))

        chosen = ctx.once("choice", choose)
        if chosen is not None:
            deal = Entity(str(chosen.get("type") or "deal"), str(chosen["id"]))
            return {"attached": str(deal), "note": note_on(deal), "contact": contacts[0]}
        if none_open == "new_deal":
            if not client.can("add_deal"):
                raise PermanentApiError(f"connection {ctx.connection!r} cannot add a deal (none_open: new_deal)")
            title = deal_title or "Новое обращение"
            if settle:   # the step saw no open deal of the contact: one open now is the one it made
                made = ctx.created("deal", lambda: _add_deal(client, title, contacts[0], deal_fields),
                                   lambda since: (latest_open_deal(client.open_deals(contacts[0]) or []) or {}).get("id"))
            else:
                made = ctx.once("deal", lambda: _new_deal(client, title, contacts[0], deal_fields))
            deal = Entity(getattr(client, "deal_type", "deal"), str(made))
            if not getattr(client, "add_deal_links_contact", True):   # amoCRM: the lead, then its link
                ctx.once("link", lambda: client.link_contact(deal, contacts[0]))
            return {"attached": str(deal), "note": note_on(deal), "contact": contacts[0], "created": True}
        if none_open == "contact_note":
            person = Entity("contact", contacts[0])
            return {"attached": str(person), "note": note_on(person), "contact": contacts[0], "no_open_deal": True}
        return {"attached": None, "reason": "the contact has no open deal", "contact": contacts[0]}


def _add_deal(client: Any, title: str, contact: str, fields: dict[str, Any] | None) -> Any:
    return client.add_deal(title, contact, fields) if fields else client.add_deal(title, contact)


def _new_deal(client: Any, title: str, contact: str, fields: dict[str, Any] | None) -> Any:
    """add_deal, settled like _note: where the new deal is linked to the contact in the same call
    (Bitrix24, Planfix), a 5xx answer is read back with open_deals(contact): the step saw the
    contact with no open deal, so one open now is the one made (found → its id; none → sent once
    more). amoCRM links the lead in a second call, so its lead cannot be found by the contact: an
    uncertain create there is left to the executor (parked for a person)."""
    try:
        return _add_deal(client, title, contact, fields)
    except UncertainApiError as exc:
        if exc.status is None or not getattr(client, "add_deal_links_contact", True):
            raise
        found = latest_open_deal(client.open_deals(contact) or [])
        return found["id"] if found is not None else _add_deal(client, title, contact, fields)


def _note(client: Any, record: Entity, text: str) -> Any:
    """add_note, settled like the executor settles a create: a 5xx answer (the vendor finished, the
    note may be there) is read back; found → its id, not there → sent once more."""
    since = datetime.now(timezone.utc).isoformat()
    try:
        return client.add_note(record, text)
    except UncertainApiError as exc:
        if exc.status is None or not client.can("find_note"):
            raise   # no answer: the request may still be running; a person decides
        found = client.find_note(record, text, since)
        return found if found is not None else client.add_note(record, text)


def _age(contact: dict[str, Any]) -> tuple[Any, ...]:
    """Oldest first: by creation time when the vendor gives one, then by id."""
    created, ident = contact.get("created"), str(contact.get("id"))
    return (created is None, float(created or 0), int(ident) if ident.isdigit() else 0, ident)
