"""amoCRM (Kommo) API v4: webhooks in, leads/tasks/notes out.

Webhooks are `application/x-www-form-urlencoded` with PHP bracket keys,
`<entity>[<action>][<n>][<field>]` (e.g. `leads[status][0][status_id]`), plus
`account[subdomain]`; one POST may batch several items. amoCRM does not sign them, so
the webhook URL carries a secret: `https://bridge.example/hooks/<connection>?token=<secret>`.
amoCRM waits 2 s for an answer and switches a hook off after 100 bad answers in 2 hours.
Samples: tests/payloads/amocrm/.
"""
from __future__ import annotations

import hmac
import json
from datetime import datetime
from typing import Any

from connectors.base import (
    BadPayload, BaseClient, Connection, Entity, Event, PermanentApiError, RawWebhook,
    Unauthorized, event_id, indexed, parse_nested_form, utc_iso,
)

SOURCE = "amocrm"
CONTENT_TYPES = ("application/x-www-form-urlencoded",)
BASE_URL_REQUIRED = True  # every account has its own domain (https://<subdomain>.amocrm.ru)

# webhook entity key -> our entity type; companies arrive as contacts[...][type]=company
ENTITY_TYPES = {"leads": "lead", "contacts": "contact", "companies": "company",
                "customers": "customer", "task": "task", "tasks": "task"}
ACTION_KINDS = {"add": "entity.created", "update": "entity.updated", "status": "stage.changed",
                "responsible": "responsible.changed", "delete": "entity.deleted",
                "restore": "entity.created", "note": "note.added"}
API_ENTITY = {"lead": "leads", "contact": "contacts", "company": "companies", "customer": "customers"}
# Compact status webhooks carry no timestamp, so identical moves can only be told apart in
# time: dedupe them over amoCRM's retry ladder (about 1.5 h) instead of days.
COMPACT_DEDUPE_WINDOW = 3 * 3600


def verify(raw: RawWebhook, connection: Connection) -> None:
    """amoCRM sends no signature: compare the URL's `token` with the connection's secret."""
    given = raw.query.get("token", "")
    if not connection.webhook_secret or not hmac.compare_digest(
            given.encode(), connection.webhook_secret.encode()):
        raise Unauthorized("missing or wrong token in the webhook URL")


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
    entity_type = "company" if item.get("type") == "company" else wire_type
    data = normalize_webhook_item(item)
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
    fields = {}
    for cf in indexed(item.get("custom_fields")):
        if isinstance(cf, dict) and cf.get("name"):
            values = [v.get("value") for v in indexed(cf.get("values")) if isinstance(v, dict)]
            fields[cf["name"]] = values[0] if len(values) == 1 else values
    if fields:
        data["fields"] = fields
    return data


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
    note = item.get("note") if isinstance(item.get("note"), dict) else item
    element_id = note.get("element_id") or item.get("id")
    if not element_id:
        raise BadPayload(f"{where} has no element_id")
    data = {"note": {"text": note.get("text", ""), "type": note.get("note_type")}}
    return Event(
        id=event_id(connection.name, wire_type, element_id, "note", item),
        connection=connection.name, source=SOURCE, kind="note.added",
        entity=Entity(wire_type, str(element_id)), data=data, raw=item, occurred_at=utc_iso())


def _task_event(connection: Connection, where: str, action: str, item: dict[str, Any]) -> Event:
    if not item.get("id"):
        raise BadPayload(f"{where} has no id")
    done = str(item.get("status", "0")) == "1"
    kind = "task.created" if action == "add" else ("task.completed" if done else "task.updated")
    data = {"text": item.get("text", ""), "completed": done,
            "parent": {"type": {"1": "contact", "2": "lead", "3": "company"}.get(
                str(item.get("element_type")), "lead"), "id": str(item.get("element_id", ""))}}
    _ref(data, "responsible", item.get("responsible_user_id"))
    return Event(
        id=event_id(connection.name, "task", item["id"], action, item),
        connection=connection.name, source=SOURCE, kind=kind,
        entity=Entity("task", str(item["id"])), data=data, raw=item, occurred_at=utc_iso())


class Client(BaseClient):
    """Actions on one amoCRM account through API v4. Every method is one or two API calls."""

    rate_per_second = 7  # "not more than 7 requests per second" (developers.kommo.com/docs/limitations)
    docs_url = "https://www.amocrm.ru/developers/content/crm_platform/api-reference"
    metadata_ttl = 3600

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.credentials.get('token', '')}"}

    def error_message(self, resp) -> str:
        try:
            body = resp.json()
        except ValueError:
            return resp.text[:300]
        problems = [f"{e.get('path')}: {e.get('detail')}" for ve in body.get("validation-errors", [])
                    for e in ve.get("errors", [])]
        return "; ".join([body.get("detail") or body.get("title") or "", *problems]).strip("; ")

    # --- reading -------------------------------------------------------------------------

    def get_entity(self, entity: Entity) -> dict[str, Any] | None:
        """The entity's current state in the common shape, or None in record-only mode."""
        path = f"/api/v4/{API_ENTITY.get(entity.type, entity.type)}/{entity.id}"
        resp = self.request("GET", path, params={"with": "contacts"})
        if resp is None or resp.status_code == 204:
            return None
        return self.normalize(resp.json())

    def normalize(self, lead: dict[str, Any]) -> dict[str, Any]:
        """An API v4 entity in the common shape, with stage/pipeline/user names resolved."""
        snap: dict[str, Any] = {"id": str(lead["id"]), "name": lead.get("name"),
                                "price": lead.get("price")}
        if lead.get("status_id") is not None:
            snap["stage"] = {"id": str(lead["status_id"])}
            snap["pipeline"] = {"id": str(lead.get("pipeline_id"))}
        if lead.get("responsible_user_id") is not None:
            snap["responsible"] = {"id": str(lead["responsible_user_id"])}
        snap["fields"] = {cf.get("field_name"): _cf_value(cf) for cf in
                          lead.get("custom_fields_values") or []}
        embedded = lead.get("_embedded") or {}
        snap["tags"] = [t.get("name") for t in embedded.get("tags") or []]
        snap["contacts"] = [str(c["id"]) for c in embedded.get("contacts") or []]
        return self.name_refs(snap)

    def name_refs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add CRM names to stage/pipeline/responsible refs, from cached metadata."""
        if self.record_only:
            return data
        pipelines = self.pipelines()
        users = self.users()
        for key in ("pipeline", "previous_pipeline"):
            if key in data:
                data[key]["name"] = pipelines.get(data[key]["id"], {}).get("name")
        for key, pkey in (("stage", "pipeline"), ("previous_stage", "previous_pipeline")):
            if key in data:
                data[key]["name"] = _stage_name(pipelines, data[key]["id"],
                                                (data.get(pkey) or data.get("pipeline") or {}).get("id"))
        for key in ("responsible", "previous_responsible"):
            if key in data:
                data[key]["name"] = users.get(data[key]["id"])
        return data

    def pipelines(self) -> dict[str, dict[str, Any]]:
        """{pipeline id: {"name", "statuses": {status id: name}}}, cached."""
        def fetch() -> dict[str, Any]:
            resp = self.request("GET", "/api/v4/leads/pipelines")
            result = {}
            for p in resp.json().get("_embedded", {}).get("pipelines", []):
                statuses = {str(s["id"]): s["name"] for s in p.get("_embedded", {}).get("statuses", [])}
                result[str(p["id"])] = {"name": p["name"], "statuses": statuses}
            return result
        return self.cached("pipelines", fetch)

    def users(self) -> dict[str, str]:
        """{user id: name}, cached."""
        def fetch() -> dict[str, str]:
            resp = self.request("GET", "/api/v4/users", params={"limit": 250})
            if resp is None or resp.status_code == 204:
                return {}
            return {str(u["id"]): u["name"] for u in resp.json().get("_embedded", {}).get("users", [])}
        return self.cached("users", fetch)

    def cached(self, name: str, fetch) -> Any:
        key = f"{self.key_prefix}meta:{self.connection.name}:{name}"
        if self.store is not None:
            hit = self.store.get(key)
            if hit:
                return json.loads(hit)
        value = fetch()
        if self.store is not None:
            self.store.set(key, json.dumps(value, ensure_ascii=False), ex=self.metadata_ttl)
        return value

    def forget(self, name: str) -> None:
        if self.store is not None:
            self.store.delete(f"{self.key_prefix}meta:{self.connection.name}:{name}")

    def resolve_stage(self, stage: str, pipeline: str | None = None) -> tuple[int, int | None]:
        """A stage name or id (and optional pipeline name or id) → (status_id, pipeline_id)."""
        if str(stage).isdigit() and (pipeline is None or str(pipeline).isdigit()):
            return int(stage), int(pipeline) if pipeline else None
        for attempt in range(2):  # refresh the cache once on a miss
            for pid, p in self.pipelines().items():
                if pipeline not in (None, pid, p["name"]):
                    continue
                for sid, sname in p["statuses"].items():
                    if str(stage) in (sid, sname):
                        return int(sid), int(pid)
            self.forget("pipelines")
        where = f" in pipeline {pipeline!r}" if pipeline else ""
        raise PermanentApiError(f"amoCRM has no stage {stage!r}{where}")

    def resolve_user(self, user: str | int | None) -> int | None:
        if user in (None, ""):
            return None
        if str(user).isdigit():
            return int(user)
        for attempt in range(2):
            for uid, name in self.users().items():
                if name == user:
                    return int(uid)
            self.forget("users")
        raise PermanentApiError(f"amoCRM has no user {user!r}")

    def resolve_field(self, entity_type: str, field: str) -> int:
        if str(field).isdigit():
            return int(field)
        def fetch() -> dict[str, int]:
            resp = self.request("GET", f"/api/v4/{API_ENTITY[entity_type]}/custom_fields",
                                params={"limit": 50})
            return {f["name"]: f["id"] for f in resp.json().get("_embedded", {}).get("custom_fields", [])}
        for attempt in range(2):
            found = self.cached(f"fields:{entity_type}", fetch).get(field)
            if found:
                return int(found)
            self.forget(f"fields:{entity_type}")
        raise PermanentApiError(f"amoCRM has no {entity_type} field {field!r}")

    # --- acting -----------------------------------------------------------------------------

    def move_to_stage(self, entity: Entity, stage: str, pipeline: str | None = None) -> None:
        """Move a lead to a stage (PATCH /api/v4/leads/{id} with status_id and pipeline_id)."""
        body: dict[str, Any] = {}
        if not self.record_only:
            status_id, pipeline_id = self.resolve_stage(stage, pipeline)
            body = {"status_id": status_id, **({"pipeline_id": pipeline_id} if pipeline_id else {})}
        else:
            body = {"status_id": stage, **({"pipeline_id": pipeline} if pipeline else {})}
        self.request("PATCH", f"/api/v4/leads/{entity.id}", json_body=body)

    def set_fields(self, entity: Entity, fields: dict[str, Any]) -> None:
        """Write custom fields by name or id."""
        values = []
        for name, value in fields.items():
            fid = name if self.record_only else self.resolve_field(entity.type, name)
            values.append({"field_id": fid, "values": [{"value": value}]})
        self.request("PATCH", f"/api/v4/{API_ENTITY[entity.type]}/{entity.id}",
                     json_body={"custom_fields_values": values})

    def create_task(self, entity: Entity, text: str, due: str, responsible: str | int | None = None,
                    task_type: int | None = None) -> int | None:
        """POST /api/v4/tasks: a task on the entity, due at `due` (ISO 8601)."""
        task: dict[str, Any] = {"text": text, "complete_till": int(datetime.fromisoformat(due).timestamp()),
                                "entity_id": int(entity.id), "entity_type": API_ENTITY[entity.type]}
        user = responsible if self.record_only else self.resolve_user(responsible)
        if user not in (None, ""):
            task["responsible_user_id"] = int(user) if str(user).isdigit() else user
        if task_type:
            task["task_type_id"] = task_type
        resp = self.request("POST", "/api/v4/tasks", json_body=[task])
        if resp is None:
            return None
        return resp.json()["_embedded"]["tasks"][0]["id"]

    def add_note(self, entity: Entity, text: str) -> int | None:
        """A common note on the entity (POST /api/v4/<entity>/notes)."""
        body = [{"entity_id": int(entity.id), "note_type": "common", "params": {"text": text}}]
        resp = self.request("POST", f"/api/v4/{API_ENTITY[entity.type]}/notes", json_body=body)
        if resp is None:
            return None
        return resp.json()["_embedded"]["notes"][0]["id"]


def _stage_name(pipelines: dict[str, Any], stage_id: str, pipeline_id: str | None) -> str | None:
    if pipeline_id and pipeline_id in pipelines:
        return pipelines[pipeline_id]["statuses"].get(stage_id)
    for p in pipelines.values():
        if stage_id in p["statuses"]:
            return p["statuses"][stage_id]
    return None


def _cf_value(cf: dict[str, Any]) -> Any:
    values = [v.get("value") for v in cf.get("values") or []]
    return values[0] if len(values) == 1 else values
