"""make_document: number, fill and convert a document, attach it to the record, send it on request.

rules/make_document.py plans it with everything rendered; here, in order:

1. the number: documents.numbering.allocate, keyed by the step's own key (event id | rule |
   action index), so a retried or re-run step gets the number it was given first;
2. the DOCX (docxtpl) and, with `pdf`, its PDF (LibreOffice headless, its own profile and a
   timeout): made again on a retry from the same values and number, nothing of it kept in Redis;
3. the file attached to the record the way the CRM's users see files, through the client's
   single calls: upload_file (amoCRM: a drive upload session; Planfix: POST /file/) then
   attach_file (amoCRM: the file linked to the lead and an attachment note; Planfix: a comment
   naming it), or attach_file with the content (Bitrix24: a timeline comment carrying it);
4. with `send`, the file to the client: Telegram sendDocument, or an e-mail with it attached.

Every vendor call runs through StepContext.once: a step tried again resumes after the last call
that succeeded. Telegram is told the same `sending` mark as the CRM's client, so one mark covers
every request the step makes (ONE_CLIENT). A call that got no clear answer is not repeated: the
step is parked for a person (an upload or a note that may be there twice is theirs to check).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from connectors.base import Entity, PermanentApiError, RetryableApiError
from documents import numbering, render
from documents.words import amount, as_date
from pipeline.steps.base import StepContext

METHOD = "make_document"
REQUIRES = frozenset({"attach_file"})
ONE_CLIENT = True   # the Telegram client of `send` reports its sends through the same mark
MIME = {"pdf": "application/pdf",
        "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}
UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def run(ctx: StepContext, template: str, series: str, number_format: str, language: str, currency: str,
        items: list[dict[str, Any]], date: str, entity: Entity | None = None, number_start: int = 1,
        items_from_crm: bool = False,
        vat: Any = None, vat_included: bool = True, client: dict[str, Any] | None = None,
        company: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None, file_name: str | None = None, pdf: bool = True,
        attach: bool = True, comment: str | None = None, send: dict[str, Any] | None = None) -> dict[str, Any]:
    path = ctx.rt.settings.config_dir / render.TEMPLATE_DIR / template
    if not path.is_file():
        raise PermanentApiError(f"make_document: no template {render.TEMPLATE_DIR / template} in the configuration")
    if items_from_crm:
        items, vat, vat_included = crm_rows(ctx, entity, vat, vat_included)
    year = as_date(date).year
    seq = numbering.allocate(ctx.rt.store, ctx.rt.keys, series, year, ctx.key, start=number_start)
    try:
        number = numbering.formatted(seq, year, number_format)
        values_ = render.context(number=number, date=date, language=language, currency=currency, items=items,
                                 vat_rate=vat, vat_included=vat_included, entity=record, client=client,
                                 company=company, values=values)
        content = render.render_docx(path, values_)
        stem = safe_name((file_name or Path(template).stem + " {number}").replace("{number}", number))
        made = {"docx": content}
        if pdf:
            made = {"pdf": render.to_pdf(content, f"{stem}.docx")}
    except render.DocumentError as exc:   # ConversionUnavailable too: installing LibreOffice is a fix, not a retry
        raise PermanentApiError(f"make_document: {exc}") from None
    except render.ConversionFailed as exc:
        raise RetryableApiError(f"make_document: {exc}") from None
    kind, data = next(iter(made.items()))
    name = f"{stem}.{kind}"
    result: dict[str, Any] = {"number": number, "file": name, "size": len(data), "total": values_["total"]}
    if attach and entity is not None:
        text = (comment or name).replace("{number}", number)
        result["attached"] = attach_to(ctx, entity, data, name, MIME[kind], text)
    if send:
        result["sent"] = send_file(ctx, send, data, name, number, MIME[kind])
    return result


def crm_rows(ctx: StepContext, entity: Entity | None, vat: Any, vat_included: bool) -> tuple[list, Any, bool]:
    """The record's product rows read from its CRM (once: a retried step fills the same rows), and
    the VAT they carry: one rate and one way (included or on top) for the whole document. Rows
    without a rate (amoCRM's, or a Bitrix24 deal without taxes) take the rule's `vat:`."""
    client = ctx.client
    if entity is None:
        raise PermanentApiError("make_document: items: crm needs the event's record")
    if not client.can("product_rows"):
        raise PermanentApiError(f"make_document: items: crm: connection {ctx.connection!r} has no product rows to "
                                f"read (Planfix's REST API has no product rows: an account keeps them, if at all, "
                                f"in a data tag, аналитика, with fields of its own naming, which crmbridge does not "
                                f"read); list the rows in items:")
    outer, client.sending = client.sending, None   # a read: it sends nothing, so it marks nothing "sent"
    try:
        rows = ctx.once("rows", lambda: client.product_rows(entity)) or []
    finally:
        client.sending = outer
    if not rows and not getattr(client, "record_only", False):   # record-only reads nothing: an empty table
        raise PermanentApiError(f"make_document: items: crm: the {entity.type} {entity.id} has no product rows")
    rates = {None if r.get("vat_rate") in (None, "", 0, "0") else amount(r["vat_rate"]) for r in rows}
    ways = {bool(r.get("vat_included", True)) for r in rows if r.get("vat_rate") not in (None, "", 0, "0")}
    if len(rates) > 1 or len(ways) > 1:
        shown = ", ".join(sorted("no VAT" if r is None else f"{r} %" for r in rates))
        raise PermanentApiError(f"make_document: items: crm: the rows carry different VAT ({shown}"
                                f"{'; included and on top' if len(ways) > 1 else ''}): one document has one VAT "
                                f"rate; split the rows into two deals or list them in items:")
    rate = next(iter(rates), None)
    if rate is not None:
        vat, vat_included = rate, ways.pop()
    return [{k: r.get(k) for k in ("name", "quantity", "unit", "price")} for r in rows], vat, vat_included


def attach_to(ctx: StepContext, entity: Entity, data: bytes, name: str, mime: str, text: str) -> Any:
    """The file on the record: uploaded first where the CRM stores files apart (upload_file), then
    named on the record (attach_file); in one call where the comment carries it (Bitrix24)."""
    client = ctx.client
    if not client.can("attach_file"):
        raise PermanentApiError(f"connection {ctx.connection!r} cannot attach a file to a record")
    if client.can("upload_file"):
        uploaded = ctx.once(f"upload|{name}", lambda: client.upload_file(data, name, mime))
        return ctx.once(f"attach|{name}", lambda: client.attach_file(entity, name, text, file=uploaded))
    return ctx.once(f"attach|{name}", lambda: client.attach_file(entity, name, text, content=data))


def send_file(ctx: StepContext, send: dict[str, Any], data: bytes, name: str, number: str,
              mime: str = MIME["pdf"]) -> Any:
    """The file to the client through the `send` connection: Telegram sendDocument (`chat`), or an
    e-mail with the file attached (`to`); the request reported like the CRM's."""
    bot = ctx.rt.client(send["connection"])
    by_mail = "to" in send
    if not bot.can("send_email" if by_mail else "send_document"):
        raise PermanentApiError(f"make_document: connection {send['connection']!r} cannot send a document "
                                f"{'by e-mail' if by_mail else 'to a chat'}")

    def text(key: str, default: str = "") -> str:
        return (send.get(key) or default).replace("{number}", number)

    def call() -> Any:
        bot.sending = ctx.client.sending   # one mark for the step: a send about to leave marks it "sent"
        try:
            if by_mail:
                return bot.send_email(send["to"], text("subject", name), text("text", name),
                                      attachments=[(name, data, mime)])
            return bot.send_document(send["chat"], data, name, caption=text("caption") or None)
        finally:
            bot.sending = None
    return ctx.once(f"send|{send['connection']}|{send.get('to') or send.get('chat')}|{name}", call)


def safe_name(text: str) -> str:
    """A file name without path separators or characters a file system refuses ("2027/015" → "2027-015")."""
    cleaned = UNSAFE.sub("-", text).strip(" .-")
    return cleaned[:120] or "document"
