"""Delete the event's record (or the record `entity:` names).

    do:
      - delete_entity: {}                                    # the event's deal, lead, contact or task
      - delete_entity: "contact:{{ entity.contacts[0] }}"    # another record

What each CRM does (the client method `delete_entity`):
- Bitrix24: crm.{deal|lead|contact|company}.delete {"id"} (crm-deal-delete.md, crm-lead-delete.md,
  crm-contact-delete.md); the deal's activities and history go with it.
- Planfix: the REST API has no DELETE; POST /{task|contact}/{id} {"isDeleted": true} marks the task
  or contact deleted (TaskUpdateRequest / ContactRequest `isDeleted`, saranchyev/planfix-rest-api-generated).
- amoCRM: refused at start-up. API v4 documents no deletion of leads, contacts or companies
  (leads-api, contacts-api, companies-api: list, get, add, edit only).

A record that is already gone (Bitrix24 "Not found", Planfix "does not exist" or 404) counts as
done, so a repeated step is safe (pipeline.execute.REPEATABLE_METHODS).
"""
from marshmallow import Schema, fields

NAME = "delete_entity"
SHORTHAND = "entity"  # `delete_entity: "contact:…"`; the engine takes `entity:` itself (RuleContext.target)
CLIENT_METHOD = "delete_entity"  # rules/_verb_support.py: refused at start-up where a client has none
REFUSED = {
    "amocrm": "amoCRM API v4 cannot delete leads, contacts or companies (leads-api, contacts-api, "
              "companies-api document list, get, add and edit only); move the deal to a closed stage "
              "(move_to_stage) or mark it with add_tags instead",
}


class Options(Schema):
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    return [ctx.step("delete_entity", options["connection"], entity=ctx.entity_ref)]
