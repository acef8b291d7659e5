"""Make a user responsible for the event's record (or the record `entity:` names).

    do:
      - set_responsible: "Olena Kovalenko"                   # a user name as the CRM shows it, or an id
      - set_responsible: {user: "{{ entity.responsible.id }}", entity: "contact:{{ entity.contacts[0] }}"}
                                                             # the deal's responsible takes its contact

What each CRM does (the client method `set_responsible`):
- amoCRM: PATCH /api/v4/{leads|contacts|companies}/{id} {"responsible_user_id"} (leads-api,
  contacts-api, companies-api "Редактирование"); a name is resolved through the account's users.
- Bitrix24: crm.{deal|lead|contact|company}.update {"fields": {"ASSIGNED_BY_ID"}} (crm-deal-update.md
  and its lead/contact pages); a name is "NAME LAST_NAME" as user.get gives it.
- Planfix: a task's assignees become this one user, POST /task/{id} {"assignees": {"users":
  [{"id": "user:N"}]}} (TaskUpdateRequest.assignees; API-REFERENCE §3.1); a contact's supervisors
  (curators), POST /contact/{id} {"supervisors": {…}} (ContactRequest.supervisors).

Setting the same user again changes nothing, so a repeated step is safe (pipeline.execute.REPEATABLE_METHODS).
"""
from marshmallow import Schema, fields

NAME = "set_responsible"
SHORTHAND = "user"
CLIENT_METHOD = "set_responsible"  # rules/_verb_support.py: refused at start-up where a client has none


class Options(Schema):
    user = fields.Raw(required=True, metadata={"expected": "a user name as the CRM shows it, an id, or a template"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    user = str(options["user"] if options["user"] is not None else "").strip()
    if not user:
        raise ValueError("user is empty after rendering the template; expected a user name or id")
    return [ctx.step("set_responsible", options["connection"], entity=ctx.entity_ref, user=user)]
