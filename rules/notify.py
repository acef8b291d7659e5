"""A CRM notification to a user: the bell in the CRM, not a chat message.

    do:
      - notify: "Зустріч через годину: {{ entity.name }}"     # to the record's responsible user
      - notify: {user: "Ольга Коваленко", text: "NPS 10 від {{ entity.name }} 🎉"}

`user` is a name as the CRM shows it, an id, or a template; default: the record's responsible user.
`text` is a template (any language: it is sent as UTF-8 JSON).

What each CRM does (the client method `notify`):
- Bitrix24: im.notify.system.add {"USER_ID", "MESSAGE"} → the notification's id (API-REFERENCE §2.2,
  im/notifications in bitrix24/b24restdocs).
- amoCRM and Planfix: refused at start-up. Neither REST API has a method that notifies a user
  (amoCRM's notification centre is a widget's JavaScript API, APP.notifications in
  notifications/adding_notifications); send a Telegram message instead (send_message).

A notification is a message: a step that may have been sent is not sent again blindly (it is not
in pipeline.execute.REPEATABLE_METHODS).
"""
from marshmallow import Schema, fields

NAME = "notify"
SHORTHAND = "text"
CLIENT_METHOD = "notify"  # rules/_verb_support.py: refused at start-up where a client has none
_INSTEAD = "send a Telegram message instead (send_message: {connection, chat, text})"
REFUSED = {
    "amocrm": "amoCRM API v4 has no method that notifies a user (the notification centre is reached "
              "only from a widget's JavaScript in the browser, APP.notifications); " + _INSTEAD,
    "planfix": "the Planfix REST API v2 has no method that notifies a user (help.planfix.com/restapidocs: "
               "tasks, contacts, comments, files, directories, reports); " + _INSTEAD,
}


class Options(Schema):
    text = fields.String(required=True, metadata={"expected": "the notification text (a template)"})
    user = fields.Raw(load_default=None, metadata={"expected": "a user name as the CRM shows it, an id, or a "
                                                                "template (default: the record's responsible)"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    user = options["user"] if options["user"] not in (None, "") else (ctx.entity.get("responsible") or {}).get("id")
    user = str(user if user is not None else "").strip()
    if not user:
        raise ValueError("no user to notify: user is empty and the record has no responsible user")
    text = options["text"].strip()
    if not text:
        raise ValueError("text is empty after rendering the template")
    return [ctx.step("notify", options["connection"], user=user, text=text)]
