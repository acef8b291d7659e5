"""Keep a client's Telegram group and their CRM task in step, both ways, files included.

    on: {event: [message.received, message.edited, note.added], connection: [agency-bot, agency-planfix],
         entity: task}
    do:
      - sync_chat:
          connection: agency-bot      # the telegram connection (options.link binds groups to tasks)
          field: "Telegram чат"       # the task field holding the group's chat id (what /link wrote)
          marker: "#клієнту"          # optional: a comment starting with it is for the client

- A message in a linked group (the worker binds it to the group's task, see pipeline/links.py) becomes a
  comment on the task: author, local time and text, photos and documents uploaded as files.
  Such comments start with "💬 Telegram", so the comment scenario's webhook for them is
  recognised and never sent back to the chat (as are comments whose id the bridge recorded when
  it wrote them, `echo`). Messages from bots never get here.
- A CRM comment for the client (`comment.for_client`: the connection's `client_marker`, this
  `marker`, or the scenario's flag) is sent to the group, its files as documents.
"""
from zoneinfo import ZoneInfo

from marshmallow import Schema, fields

from rules.engine import to_datetime

NAME = "sync_chat"
# a chat message is written to the task from the event and the task's reference alone: the worker
# need not read the task first (pipeline.snapshot.needs_record); a CRM comment needs the task's chat field
RECORD_FREE = ("message.received", "message.edited")
ECHO_MARK = "💬 Telegram"      # how the comments the bridge writes from the chat begin
DOWNLOAD_LIMIT = 20_000_000      # bots download at most 20 MB (Bot API getFile)


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a telegram connection name"})
    field = fields.String(load_default="Telegram чат",
                          metadata={"expected": "the task field that holds the group's chat id"})
    marker = fields.String(load_default=None, metadata={"expected": "a text that marks a comment for the client"})


def plan(ctx, options: dict) -> list:
    if ctx.event.kind in ("message.received", "message.edited"):
        return _to_crm(ctx, options)
    if ctx.event.kind == "note.added":
        return _to_chat(ctx, options)
    raise ValueError(f"sync_chat works on message.received, message.edited and note.added, not {ctx.event.kind}")


def _to_crm(ctx, options: dict) -> list:
    data = ctx.event.data
    if not data.get("record"):
        raise ValueError("this chat is not linked to a task (write /link <task number> in the group)")
    if (data.get("from") or {}).get("is_bot"):
        return []
    local = to_datetime(ctx.event.occurred_at, ctx.calendar, None).astimezone(ZoneInfo(ctx.calendar.timezone))
    when = local.strftime("%d.%m.%Y %H:%M")
    author = (data.get("from") or {}).get("name") or "?"
    edited = " (змінено)" if ctx.event.kind == "message.edited" else ""   # (edited)
    lines = [f"{ECHO_MARK} · {author} · {when}{edited}"]
    if data.get("text"):
        lines.append(data["text"])
    uploads = []
    for file in data.get("files") or []:
        name = file.get("name") or f"{file['kind']}_{file['file_id'][-8:]}"
        if (file.get("size") or 0) > DOWNLOAD_LIMIT:
            # "…: the file is larger than 20 MB, the bot cannot download it — see the chat"
            lines.append(f"📎 {name}: файл більший за 20 МБ, бот не може його завантажити — дивіться в чаті")
            continue
        uploads.append({"name": name, "content": {"$download": {
            "connection": ctx.event.connection, "file_id": file["file_id"], "size": file.get("size")}}})
    return [ctx.step("add_chat_comment", ctx.default_connection, entity=ctx.entity_ref, text="\n".join(lines),
                     uploads=uploads)]


def _to_chat(ctx, options: dict) -> list:
    data = ctx.event.data
    comment = data.get("comment") or {}
    text = str(comment.get("text") or "")
    if data.get("echo") or text.startswith(ECHO_MARK):
        return []  # the bridge's own comment, coming back through the comment scenario
    marker = (options["marker"] or "").strip()
    for_client = bool(comment.get("for_client"))
    if marker and marker.lower() in text.lower():
        at = text.lower().index(marker.lower())
        text, for_client = (text[:at] + text[at + len(marker):]).strip(" :—-\n"), True
    if not for_client:
        return []
    chat = str((ctx.entity.get("fields") or {}).get(options["field"]) or "").strip()
    if not chat:
        raise ValueError(f"field {options['field']!r} of {ctx.entity_ref['type']} {ctx.entity_ref['id']} is empty: "
                         "the task has no linked group (write /link <task number> in the group)")
    files = data.get("files") or comment.get("files") or []
    # a file the scenario sent without its id cannot be downloaded through the API: name it
    unnamed = [f"📎 {f.get('name') or f.get('url')}" for f in files if not f.get("id") and (f.get("name") or f.get("url"))]
    text = "\n".join([text, *unnamed]).strip()
    steps = [ctx.step("send_message", options["connection"], chat=chat, text=text)] if text else []
    for file in files:
        if file.get("id"):
            steps.append(ctx.step("send_document", options["connection"], chat=chat, filename=file.get("name") or
                                  f"file-{file['id']}", content={"$download": {
                                      "connection": ctx.event.connection, "file_id": file["id"]}}))
    return steps
