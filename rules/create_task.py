"""Create a task on the event's entity, for its responsible user unless told otherwise.

    do:
      - create_task:
          text: "Contact the client and take the lead in work"
          due: 1 working day            # a duration from now, a date/datetime, or a template
          responsible: "Olena Kovalenko"  # a user name as the CRM shows it, or an id;
                                          # default: the entity's responsible user
          type: 1                       # optional CRM task type id (amoCRM: 1 call, 2 meeting)
          bind: [contact, company]      # Bitrix24: the task is also bound to the event deal's
                                        # contacts and company, or to "contact:12", "company:5"
"""
import re

from marshmallow import Schema, ValidationError, fields

NAME = "create_task"
SHORTHAND = "text"
BIND_WORDS = ("contact", "company")
_REF = re.compile(r"(contact|company|deal|lead)\s*:(.*)", re.DOTALL)


def _bind_item(value: str) -> None:
    if value.strip() not in BIND_WORDS and not _REF.fullmatch(value.strip()):
        raise ValidationError(f"expected contact, company or a record such as 'contact:12', found {value!r}")


class Options(Schema):
    text = fields.String(required=True, metadata={"expected": "the task text"})
    due = fields.Raw(load_default="1 working day", metadata={"expected": "a duration such as '1 working day', or a date"})
    responsible = fields.Raw(load_default=None, metadata={"expected": "a user name or id"})
    type = fields.Integer(load_default=None, metadata={"expected": "a task type id"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})
    bind = fields.List(fields.String(validate=_bind_item), load_default=None,
                       metadata={"expected": "a list of contact, company or 'contact:12'"})


def plan(ctx, options: dict) -> list:
    responsible = options["responsible"] or (ctx.entity.get("responsible") or {}).get("id")
    due = ctx.moment(options["due"]).isoformat()
    extra = {"bind": bindings(ctx, options["bind"])} if options["bind"] is not None else {}
    return [ctx.step("create_task", options["connection"], entity=ctx.entity_ref, text=options["text"],
                     due=due, responsible=responsible, task_type=options["type"], **extra)]


def bindings(ctx, words: list[str]) -> list[dict]:
    """`bind:` words → the records the task is also bound to, from the record the worker read:
    `contact` → its contacts (Bitrix24 reads only the primary CONTACT_ID; for a deal the client adds
    every linked contact when it creates the task: {"contacts_of_deal": id}), `company` → its company,
    "type:id" → that record. A word with nothing to bind (a deal without company) is left out."""
    found: list[dict] = []
    for word in (w.strip() for w in words):
        if word == "contact":
            contacts = [str(c) for c in ctx.entity.get("contacts") or [] if str(c) not in ("", "0")]
            found += [{"type": "contact", "id": c} for c in contacts]
            if contacts and ctx.event.entity.type == "deal":
                found.append({"contacts_of_deal": str(ctx.event.entity.id)})
        elif word == "company":
            company = str((ctx.entity.get("company") or {}).get("id") or "")
            if company not in ("", "0"):
                found.append({"type": "company", "id": company})
        else:
            kind, ident = _REF.fullmatch(word).groups()
            if ident.strip() not in ("", "0"):
                found.append({"type": kind, "id": ident.strip()})
    return [b for i, b in enumerate(found) if b not in found[:i]]
