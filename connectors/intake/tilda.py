"""Tilda's form webhook (Site settings → Forms → Webhook): one submission → one `form.submitted`.

Wire format (/work/shared/API-REFERENCE.md §11; help-ru.tilda.cc/formsscript [official];
exceltic.dev/en/kommo-tilda-forma-v-sdelku [2nd-hand]): a POST, form-encoded, one field per form
input under the variable name set in the block (`Name`, `Phone`, `Email` by default; renamed in
the block's settings, so `options.fields` can name others), plus `tranid` (the submission's id,
e.g. `1111111:6161583731`) and `formid` (the form block, e.g. `form123456789`). Hidden `utm_*`
fields are read as UTM tags. Public receivers read JSON bodies too, so JSON is accepted.

Right after the webhook is added Tilda posts `test=test` and wants 200: it is answered with
nothing queued. Tilda waits 5 seconds and tries three times, a minute apart: the same `tranid`
then arrives up to three times, and is one event (its id is the connection and the tranid).
The classic webhook signs nothing and has no key option: the URL carries the secret
(`/hooks/<name>?token=<secret>`), or an `X-Crmbridge-Token` header where a proxy adds one.
"""
from __future__ import annotations

import re

from connectors.base import BadPayload, BaseClient, Connection, Entity, Event, RawWebhook, check_secret, utc_iso
from connectors.intake import leads

SOURCE = "tilda"
INBOUND_ONLY = True
CONTENT_TYPES = (leads.FORM, leads.JSON)
TOKEN_HEADER = "X-Crmbridge-Token"
DEFAULT_FIELDS = {"name": ["Name"], "phone": ["Phone"], "email": ["Email"],
                  "text": ["Comment", "Textarea", "Message"]}
SERVICE = ("tranid", "formid", "COOKIES")   # COOKIES: sent when the cookies box is ticked (name unconfirmed)
TRANID = re.compile(r"[0-9]{1,20}:[0-9]{1,20}")
FORMID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def verify(raw: RawWebhook, connection: Connection) -> None:
    given = raw.headers.get(TOKEN_HEADER) or raw.query.get("token")
    check_secret(given, connection, f"missing or wrong secret (URL 'token' or {TOKEN_HEADER} header)")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    fields = leads.read_fields(raw.body, raw.content_type)
    if fields == {"test": "test"}:
        return []          # the check Tilda makes when the webhook is added: 200, nothing queued
    tranid, formid = fields.get("tranid"), fields.get("formid")
    if not isinstance(tranid, str) or not TRANID.fullmatch(tranid):
        raise BadPayload(f"tranid {str(tranid)[:40]!r}: expected Tilda's submission id (digits:digits)")
    if not isinstance(formid, str) or not FORMID.fullmatch(formid):
        raise BadPayload(f"formid {str(formid)[:40]!r}: expected Tilda's form block id (form123…)")
    options = connection.options or {}
    mapping = {**DEFAULT_FIELDS, **(options.get("fields") or {})}
    answers = {k: v for k, v in fields.items() if k not in SERVICE and k != "token"}
    data = leads.lead(door=SOURCE, connection=connection.name, form=formid,
                      name=leads.first(answers, mapping["name"]), phone=leads.first(answers, mapping["phone"]),
                      email=leads.first(answers, mapping["email"]), text=leads.first(answers, mapping["text"]),
                      utm_tags=leads.utm(answers),
                      region=leads.region_of(options), submission_id=tranid, fields=answers)
    return [Event(id=f"{connection.name}:tranid:{tranid}", connection=connection.name, source=SOURCE,
                  kind="form.submitted", entity=Entity("form", formid), data=data,
                  raw={k: v for k, v in fields.items() if k != "token"}, occurred_at=utc_iso())]


def option_problems(options: dict) -> list[tuple[str, str]]:
    """Checked at start-up (config/connections.py, with file:line)."""
    return leads.form_option_problems(options)


class Client(BaseClient):
    """Tilda's webhook is inbound only."""
