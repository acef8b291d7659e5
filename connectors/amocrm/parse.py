"""amoCRM webhooks: verify the URL secret, turn the form body into Events.

Webhooks are `application/x-www-form-urlencoded` with PHP bracket keys,
`<entity>[<action>][<n>][<field>]` (e.g. `leads[status][0][status_id]`), plus
`account[subdomain]`; one POST may batch several items (amocrm.ru/developers/content/
crm_platform/webhooks-format). Companies arrive as `contacts[...]` with `[type]=company`
(same page, "Пример создания компании"). amoCRM does not sign webhooks, so the URL carries a
secret: `https://bridge.example/hooks/<connection>?token=<secret>`. Samples: tests/payloads/amocrm/.

Id grammar: every record id (`[id]`, a note's `[element_id]` and `[id]`, a task's `[id]`) is a positive
decimal integer: API v4 numbers its records (GET /api/v4/leads/{id}, shared/API-REFERENCE.md §1.2; the
official SDK amocrm/amocrm-api-php keeps model ids as int), and every capture in tests/payloads/amocrm/
has digits only. Anything else is refused with 400 before it can reach a URL.
"""
from __future__ import annotations

from typing import Any

from connectors.base import (
    check_secret, BadPayload,
    Connection,
    Entity,
    Event,
    RawWebhook,
    event_id,
    indexed,
    parse_nested_form,
    positive_id,
    utc_iso,
)

SOURCE = "amocrm"
CONTENT_TYPES = ("application/x-www-form-urlencoded",)
BASE_URL_REQUIRED = True  # every account has its own domain (https://<subdomain>.amocrm.ru)

# webhook entity key -> our entity type; the task webhook key is singular `task` (webhooks-format)
ENTITY_TYPES = {"leads": "lead", "contacts": "contact", "companies": "company",
                "customers": "customer", "task": "task", "tasks": "task"}
ACTION_KINDS = {"add": "entity.created", "update": "entity.updated", "status": "stage.changed",
                "responsible": "responsible.changed", "delete": "entity.deleted",
                "restore": "entity.created", "note": "note.added"}
# Notes and tasks name their parent with API v2 element_type numbers: 1 contact, 2 lead,
# 3 company, 12 customer (webhooks-format task sample has element_type "2"; the v2 constants
# TYPE_CONTACT=1 … TYPE_CUSTOMER=12 are in several public amoCRM SDKs).
ELEMENT_TYPES = {"1": "contact", "2": "lead", "3": "company", "12": "customer"}
# Note webhooks carry v2 numeric note types (4 common, 10/11 calls). 5 is "ATTACHMENT / Файл"
# in the v2 constants of several public SDKs; no live capture of an attachment note webhook
# was found, so `options: {attachment_note_types: [...]}` can add the code an account sends.
ATTACHMENT_NOTE_TYPES = frozenset({"5", "attachment"})
# Compact status webhooks carry no timestamp, so identical moves can only be told apart in
# time: dedupe them over amoCRM's retry ladder (about 1.5 h) instead of days.
COMPACT_DEDUPE_WINDOW = 3 * 3600


def verify(raw: RawWebhook, connection: Connection) -> None:
    """amoCRM sends no signature: compare the URL's `token` with the connection's secret."""
    given = raw.query.get("token", "")
    check_secret(given, connection, "missing or wrong token in the webhook URL")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """Every item of every entity/action in the POST becomes one Event."""
    form = parse_nested_form(raw.body)
    events = []
    for key, wire_type in ENTITY_TYPES.items():
        actions = form.get(key)
        if not isinstance(actions, dict):
            continue
        for action, items in actions.items():
            kind = ACTION_KINDS.get(action)
            if kind is None:
                continue
            for n, item in enumerate(indexed(items)):
                if isinstance(item, dict):
                    events.append(_item_event(connection, f"{key}[{action}][{n}]", wire_type, action,
                                              kind, item))
    if not events:
        raise BadPayload("no amoCRM entity found (expected keys like leads[status][0][id])")
    return events


def _item_event(connection: Connection, where: str, wire_type: str, action: str, kind: str,
                item: dict[str, Any]) -> Event:
    if action == "note":
        return _note_event(connection, where, wire_type, item)
    if wire_type == "task":
        return _task_event(connection, where, action, item)
    entity_id = item.get("id")
    if not entity_id:
        raise BadPayload(f"{where} has no id")
    entity_id = positive_id(entity_id, f"{where}[id]")
    entity_type = "company" if item.get("type") == "company" else wire_type
    data = normalize_webhook_item(item)
    if action == "restore":
        data["restored"] = True
    if action == "status" and "status_id" not in item:
        raise BadPayload(f"{where} has no status_id")
    stamp = item.get("last_modified") or item.get("updated_at")
    return Event(
        id=event_id(connection.name, entity_type, entity_id, action, item),
        connection=connection.name, source=SOURCE, kind=kind,
        entity=Entity(entity_type, str(entity_id)), data=data, raw=item,
        occurred_at=utc_iso(stamp) if _is_number(stamp) else utc_iso(),
        dedupe_window=None if stamp else COMPACT_DEDUPE_WINDOW,
    )


def normalize_webhook_item(item: dict[str, Any]) -> dict[str, Any]:
    """Webhook item fields in the common words rules read."""
    data: dict[str, Any] = {}
    for wire, ours in (("name", "name"), ("price", "price")):
        if wire in item:
            data[ours] = item[wire]
    _ref(data, "stage", item.get("status_id"))
    _ref(data, "previous_stage", item.get("old_status_id"))
    _ref(data, "pipeline", item.get("pipeline_id"))
    _ref(data, "previous_pipeline", item.get("old_pipeline_id"))
    _ref(data, "responsible", item.get("responsible_user_id"))
    _ref(data, "previous_responsible", item.get("old_responsible_user_id"))
    fields, enums = webhook_fields(item.get("custom_fields"))
    if fields:
        data["fields"] = fields
    if enums:
        data["field_enums"] = enums
    tags = [t.get("name") for t in indexed(item.get("tags")) if isinstance(t, dict) and t.get("name")]
    if tags:
        data["tags"] = tags
    return data


def webhook_fields(node: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Custom fields by name, and the enum ids of select/multiselect/multitext values by name.

    A value is `[values][n][value]` (+ `[enum]` for enum fields), or a bare `[values][n]` for
    dates (2018 capture in tests/payloads/amocrm/lead_status_select_fields_2018.form).
    """
    fields: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    for cf in indexed(node):
        if not isinstance(cf, dict) or not cf.get("name"):
            continue
        values, ids = [], []
        for v in indexed(cf.get("values")):
            values.append(v.get("value") if isinstance(v, dict) else v)
            if isinstance(v, dict) and v.get("enum") not in (None, ""):
                ids.append(str(v["enum"]))
        fields[cf["name"]] = _one_or_many(values)
        if ids:
            enums[cf["name"]] = _one_or_many(ids)
    return fields, enums


def _one_or_many(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _ref(data: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, ""):
        data[key] = {"id": str(value)}


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _note_event(connection: Connection, where: str, wire_type: str, item: dict[str, Any]) -> Event:
    """`<entity>[note][n][note][...]`: id, element_id, element_type, note_type, text (public code)."""
    note = item.get("note") if isinstance(item.get("note"), dict) else item
    element_id = note.get("element_id") or item.get("id")
    if not element_id:
        raise BadPayload(f"{where} has no element_id")
    element_id = positive_id(element_id, f"{where}[element_id]")
    if note.get("id"):
        positive_id(note["id"], f"{where}[note][id]")
    entity_type = ELEMENT_TYPES.get(str(note.get("element_type", "")), wire_type)
    data: dict[str, Any] = {"note": {"text": note.get("text", ""), "type": note.get("note_type")}}
    if note.get("id"):
        data["note"]["id"] = str(note["id"])
    kind = "note.added"
    if str(note.get("note_type", "")) in _attachment_types(connection):
        kind, data["file"] = "file.added", _attachment(note)
    return Event(
        id=event_id(connection.name, entity_type, element_id, "note", item),
        connection=connection.name, source=SOURCE, kind=kind,
        entity=Entity(entity_type, str(element_id)), data=data, raw=item, occurred_at=utc_iso())


def _attachment_types(connection: Connection) -> frozenset[str]:
    extra = connection.options.get("attachment_note_types") or []
    return ATTACHMENT_NOTE_TYPES | {str(t) for t in extra}


def _attachment(note: dict[str, Any]) -> dict[str, Any]:
    """The file of an attachment note, named as the API v4 note does (params.original_name,
    params.file_name; `text` holds the original name there: events-and-notes, notes list sample)."""
    params = note.get("params") if isinstance(note.get("params"), dict) else {}
    name = params.get("original_name") or params.get("file_name") or note.get("text") or ""
    found = {"name": name, "note_id": str(note["id"]) if note.get("id") else None}
    if params.get("file_uuid"):
        found["uuid"] = params["file_uuid"]
    return found


def _task_event(connection: Connection, where: str, action: str, item: dict[str, Any]) -> Event:
    """`task[add|update][n][...]` (webhooks-format, "Пример массива для задач")."""
    item = _unwrap_task(item)
    if not item.get("id"):
        raise BadPayload(f"{where} has no id")
    positive_id(item["id"], f"{where}[id]")
    if item.get("element_id") not in (None, "", "0"):   # 0: a task bound to no record
        positive_id(item["element_id"], f"{where}[element_id]")
    done = str(item.get("status", "0")) == "1"  # "0 - не завершена, 1 - завершена"
    kind = "task.created" if action == "add" else ("task.completed" if _closed_now(item, done)
                                                   else "task.updated")
    data: dict[str, Any] = {"text": item.get("text", ""), "completed": done, "parent": {
        "type": ELEMENT_TYPES.get(str(item.get("element_type")), "lead"),
        "id": str(item.get("element_id", ""))}}
    _ref(data, "responsible", item.get("responsible_user_id"))
    for wire, ours in (("task_type", "task_type"), ("complete_till", "due_local")):
        if item.get(wire) not in (None, ""):
            data[ours] = item[wire]  # "2017-07-22 23:59:00": the account's local time, no zone
    result = item.get("result")
    if isinstance(result, dict) and result.get("text"):
        data["result"] = result["text"]
    return Event(
        id=event_id(connection.name, "task", item["id"], action, item),
        connection=connection.name, source=SOURCE, kind=kind,
        entity=Entity("task", str(item["id"])), data=data, raw=item, occurred_at=utc_iso())


def _closed_now(item: dict[str, Any], done: bool) -> bool:
    """`action_close` is 1 only on the update that closed the task; adding a result to a
    closed task sends a second update with 0 (webhooks-format). Older hooks lack the key."""
    if "action_close" in item:
        return str(item["action_close"]) == "1"
    return done


def _unwrap_task(item: dict[str, Any]) -> dict[str, Any]:
    """The docs' sample nests the task once more (`update: [{"0": {...}}]`); accept both."""
    inner = item.get("0")
    if "id" not in item and isinstance(inner, dict):
        return inner
    return item
