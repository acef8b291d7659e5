"""Any website form builder's POST: one submission → one `form.submitted` event with the lead in it.

    site-form:
      type: webform
      webhook_secret: ${SITE_FORM_SECRET}     # the URL is /hooks/site-form?token=<this>
      options:
        form_id: contacts                     # what the event's entity is (default: the connection)
        region: UA                            # how a phone typed without its country code is read
        fields:                               # the builder's field names (default: the usual ones)
          name: your-name
          phone: tel-412
          email: your-email
          text: message
        submission_id: _wpcf7_submission_id   # the builder's own id of a submission (dedupe key)

The body is form-encoded (`application/x-www-form-urlencoded`), `multipart/form-data` (text parts
as fields, file parts as `attachments` like a letter's: up to 256 KiB carried as base64, bigger ones
described) or a JSON object. The caller proves itself with the connection's secret in the URL (`token`) or in
an `X-Crmbridge-Token` header, compared in constant time; a secret field in the body is never kept.
A submission is one event per builder id (`submission_id`'s field); a builder that sends none is
keyed by the body's content, so the same POST delivered twice is one event, and a second person's
identical-looking form with other values is another.
"""
from __future__ import annotations

import re
from typing import Any

from connectors.base import BadPayload, BaseClient, Connection, Entity, Event, RawWebhook, check_secret, event_id, utc_iso
from connectors.intake import leads

SOURCE = "webform"
INBOUND_ONLY = True
CONTENT_TYPES = (leads.FORM, leads.MULTIPART, leads.JSON)
TOKEN_HEADER = "X-Crmbridge-Token"
# the names builders and hand-written forms commonly give (en, uk, ru); options.fields overrides
DEFAULT_FIELDS = {
    "name": ["name", "your-name", "fio", "full_name", "имя", "ім'я", "фио", "піб"],
    "phone": ["phone", "tel", "your-phone", "telephone", "телефон"],
    "email": ["email", "e-mail", "your-email", "mail", "почта", "пошта"],
    "text": ["message", "comment", "your-message", "text", "сообщение", "повідомлення", "комментарий", "коментар"],
}
SECRET_KEYS = ("token", "secret")
ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def verify(raw: RawWebhook, connection: Connection) -> None:
    given = raw.headers.get(TOKEN_HEADER) or raw.query.get("token")
    check_secret(given, connection, f"missing or wrong secret (URL 'token' or {TOKEN_HEADER} header)")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    options = connection.options or {}
    if raw.content_type == leads.MULTIPART:
        fields, files = leads.read_multipart(raw)
    else:
        fields, files = leads.read_fields(raw.body, raw.content_type), []
    fields = {k: v for k, v in fields.items() if k not in SECRET_KEYS}
    if not fields and not files:
        raise BadPayload("no form fields in the body")
    mapping = {**DEFAULT_FIELDS, **{k: v for k, v in (options.get("fields") or {}).items()}}
    form_id = str(options.get("form_id") or connection.name)
    if not ID.fullmatch(form_id):
        raise BadPayload(f"form id {form_id[:40]!r}: expected 1-128 of A-Z a-z 0-9 _ . : @ -")
    submission = leads.first(fields, options.get("submission_id")) if options.get("submission_id") else None
    if submission is not None and not (isinstance(submission, str) and ID.fullmatch(submission)):
        raise BadPayload(f"submission id {str(submission)[:40]!r}: expected 1-128 of A-Z a-z 0-9 _ . : @ -")
    data = leads.lead(door=SOURCE, connection=connection.name, form=form_id,
                      name=leads.first(fields, mapping["name"]), phone=leads.first(fields, mapping["phone"]),
                      email=leads.first(fields, mapping["email"]), text=leads.first(fields, mapping["text"]),
                      page=leads.first(fields, mapping.get("page") or ["page", "page_url", "referer"]),
                      utm_tags=leads.utm(fields), region=leads.region_of(options),
                      submission_id=submission, fields=fields, attachments=files)
    key = (f"{connection.name}:submission:{submission}" if submission
           else event_id(connection.name, form_id, fields, [f["sha256"] for f in files]))
    return [Event(id=key, connection=connection.name, source=SOURCE, kind="form.submitted",
                  entity=Entity("form", form_id), data=data, raw=fields, occurred_at=utc_iso())]


def option_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """Checked at start-up (config/connections.py, with file:line)."""
    found = leads.form_option_problems(options)
    for key in ("form_id", "submission_id"):
        value = options.get(key)
        if value is not None and not (isinstance(value, str) and ID.fullmatch(value)):
            found.append((key, f"expected 1-128 of A-Z a-z 0-9 _ . : @ -, found {value!r}"))
    return found


class Client(BaseClient):
    """A website form is inbound only: rules act through the CRM's connection."""
