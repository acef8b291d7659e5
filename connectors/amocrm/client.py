"""amoCRM API v4 client: auth, metadata, reads, and the actions rules call.

Facts from amocrm.ru/developers/content (read via the verbatim mirror biradrags/amo-docs):
lists take `limit` (max 250) and `page`, answer `_links.next` while more pages exist and
HTTP 204 with no body when nothing matches; single entities answer 204 when missing.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import requests

from connectors.amocrm.auth import TokenAuth
from connectors.base import (
    BaseClient, Changed, Entity, Moved, PermanentApiError, RetryableApiError, contact_matches, fields_match,
    phone_digits, recipient_row, segment, utc_iso,
)

log = logging.getLogger("crmbridge.connectors.amocrm")

API_ENTITY = {"lead": "leads", "contact": "contacts", "company": "companies", "customer": "customers"}
SINGULAR = {plural: singular for singular, plural in API_ENTITY.items()}
# GET /api/v4/<entity>/{id}?with=…: leads-api (contacts), contacts-api (leads), companies-api
WITH = {"lead": "contacts", "contact": "leads", "company": "contacts,leads"}
PAGE_LIMIT = 250        # "limit … (Максимум – 250)" on every list page
FIELDS_PAGE_LIMIT = 50  # custom-fields: "Метод возвращает до 50 полей за один запрос"
FILES_PAGE_LIMIT = 50   # files-api, GET /api/v4/leads/{id}/files pages with limit + before_id
MAX_PAGES = 400         # a guard against a server that always answers `next`
READ_BACK_SLACK = 60    # seconds find_task/find_note look before `since`: our clock and amoCRM's may differ
ENUM_TYPES = {"select", "multiselect", "radiobutton", "category"}  # write enum_id only
PAIRED_TYPES = {"multitext", "smart_address"}  # value + enum_id (custom-fields, fill examples)


class Client(TokenAuth, BaseClient):
    """Actions on one amoCRM account through API v4."""

    rate_per_second = 7  # "not more than 7 requests per second" (developers.kommo.com/docs/limitations)
    reports_sends = True  # every API call goes through request() (the token refresh is not an action)
    capabilities = frozenset({
        "get_entity", "name_refs", "rule_context", "changed_since", "list_tasks", "overdue_tasks",
        "set_fields", "move_to_stage", "create_task", "add_note", "set_responsible", "complete_task",
        "complete_tasks_matching", "change_tags", "get_raw", "create_copy", "link_copy", "search_contacts",
        "add_contact", "find_task", "find_note",
        "link_contact", "find_catalog_elements", "read_stage", "find_stage", "stage_order",
        "deals_without_task",
        "stage_history", "find_lead", "find_contact",
        "upload_file", "attach_file", "product_rows", "open_deals", "add_deal", "bulk_recipients",
    })
    add_deal_links_contact = False   # a lead is created, then linked (entity-links-api): two calls
    deal_type = "lead"               # amoCRM's deals are leads
    docs_url = "https://www.amocrm.ru/developers/content/crm_platform/api-reference"

    def idempotent(self, method: str, path: str) -> bool:
        """POST creates (leads, contacts, tasks, notes), except a link (entity-links-api): linking
        what is already linked leaves the same links."""
        return super().idempotent(method, path) or path.endswith(("/link", "/unlink"))

    def error_message(self, resp: requests.Response) -> str:
        try:
            body = resp.json()
        except ValueError:
            return resp.text[:300]
        if not isinstance(body, dict):
            return resp.text[:300]
        problems = [f"{e.get('path')}: {e.get('detail')}" for ve in body.get("validation-errors", [])
                    for e in ve.get("errors", [])]
        # OAuth errors add a `hint` ("Authorization code has been revoked") to the problem JSON
        head = body.get("detail") or body.get("title") or ""
        if body.get("hint"):
            head = f"{head} ({body['hint']})"
        return "; ".join([head, *problems]).strip("; ")

    # --- reading ---------------------------------------------------------------------------

    def pages(self, path: str, key: str, params: dict[str, Any] | None = None,
              limit: int = PAGE_LIMIT) -> Iterator[dict[str, Any]]:
        """Every item of a paged list: `page` 1, 2… while `_links.next` is there; 204 = none."""
        for page in range(1, MAX_PAGES + 1):
            resp = self.request("GET", path, params={**(params or {}), "limit": limit, "page": page})
            if resp is None or resp.status_code == 204:
                return
            body = resp.json()
            yield from (body.get("_embedded") or {}).get(key) or []
            if not (body.get("_links") or {}).get("next"):
                return
        log.warning("%s: GET %s stopped after %d pages", self.connection.name, path, MAX_PAGES)

    def get_raw(self, entity: Entity) -> dict[str, Any] | None:
        """The entity as API v4 returns it (with its links), or None if missing/record-only."""
        params = {"with": WITH[entity.type]} if entity.type in WITH else None
        resp = self.request("GET", f"/api/v4/{segment(API_ENTITY.get(entity.type, entity.type))}/{segment(entity.id)}",
                            params=params)
        if resp is None or resp.status_code == 204:
            return None
        return resp.json()

    def get_entity(self, entity: Entity) -> dict[str, Any] | None:
        """The entity's current state in the common shape, or None in record-only mode."""
        if entity.type == "task":  # task webhooks: the same shape as get_task
            return self.get_task(entity.id)
        found = self.get_raw(entity)
        return self.normalize(found) if found is not None else None

    def get_contact(self, contact: Entity | str | int) -> dict[str, Any] | None:
        """A contact in the common shape (fields by name, its leads and company)."""
        return self.get_entity(contact if isinstance(contact, Entity) else Entity("contact", str(contact)))

    def normalize(self, item: dict[str, Any]) -> dict[str, Any]:
        """An API v4 lead, contact or company in the common shape, with names resolved."""
        snap: dict[str, Any] = {"id": str(item["id"]), "name": item.get("name"), "price": item.get("price")}
        for key in ("first_name", "last_name"):
            if item.get(key) is not None:
                snap[key] = item[key]
        if item.get("status_id") is not None:
            snap["stage"] = {"id": str(item["status_id"])}
            snap["pipeline"] = {"id": str(item.get("pipeline_id"))}
        if item.get("responsible_user_id") is not None:
            snap["responsible"] = {"id": str(item["responsible_user_id"])}
        if item.get("updated_at"):
            snap["updated_at"] = utc_iso(item["updated_at"])
        snap["fields"], enums = api_fields(item.get("custom_fields_values"))
        if enums:
            snap["field_enums"] = enums
        snap.update(contact_channels(item.get("custom_fields_values")))
        snap.update(_embedded(item.get("_embedded") or {}))
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
                pipeline_id = (data.get(pkey) or data.get("pipeline") or {}).get("id")
                data[key]["name"] = _stage_name(pipelines, data[key]["id"], pipeline_id)
                data[key]["position"] = _stage_position(pipelines, data[key]["id"], pipeline_id)
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
                ordered = sorted(p.get("_embedded", {}).get("statuses", []), key=lambda s: s.get("sort", 0))
                statuses = {str(s["id"]): s["name"] for s in ordered}  # in the pipeline's order (`sort`)
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

    def custom_fields(self, entity_type: str) -> dict[str, dict[str, Any]]:
        """{field name: {"id", "type", "code", "enums": {value: enum id}}} of leads, contacts or companies, cached."""
        def fetch() -> dict[str, Any]:
            found = {}
            for f in self.pages(f"/api/v4/{API_ENTITY[entity_type]}/custom_fields", "custom_fields",
                                limit=FIELDS_PAGE_LIMIT):
                found[f["name"]] = {"id": f["id"], "type": f.get("type"), "code": f.get("code"),
                                    "enums": {e["value"]: e["id"] for e in f.get("enums") or []}}
            return found
        return self.cached(f"custom_fields:{entity_type}", fetch)

    def catalogs(self) -> dict[str, str]:
        """{list (catalog) name: id}, cached (GET /api/v4/catalogs, catalogs-api "Доступные списки")."""
        def fetch() -> dict[str, str]:
            return {c["name"]: str(c["id"]) for c in self.pages("/api/v4/catalogs", "catalogs")}
        return self.cached("catalogs", fetch)

    def resolve_catalog(self, catalog: str | int) -> int:
        """A list named as amoCRM shows it (or its id) → its id."""
        if str(catalog).isdigit():
            return int(catalog)
        for attempt in range(2):
            found = self.catalogs().get(str(catalog))
            if found:
                return int(found)
            self.forget("catalogs")
        raise PermanentApiError(f"amoCRM has no list (catalog) {catalog!r}")

    def find_catalog_elements(self, catalog: str | int, query: str) -> list[dict[str, Any]]:
        """Elements of a list that amoCRM's search finds for `query` (GET /api/v4/catalogs/{id}/elements
        ?query=…, "поиск по заполненным полям"), all pages, as {"id", "name", "fields"} (fields by name).
        How the search matches is not documented: callers match the names themselves."""
        catalog_id = catalog if self.record_only else self.resolve_catalog(catalog)
        return [{"id": str(e["id"]), "name": e.get("name"), "fields": api_fields(e.get("custom_fields_values"))[0]}
                for e in self.pages(f"/api/v4/catalogs/{segment(catalog_id)}/elements", "elements", {"query": query})
                if not e.get("is_deleted")]

    def product_rows(self, entity: Entity) -> list[dict[str, Any]]:
        """The list (catalog) elements linked to a lead, as document rows: the links (GET
        /api/v4/leads/{id}/links?filter[to_entity_type]=catalog_elements; entity-links-api: each
        link's metadata has quantity, catalog_id and price_id, "the Price field set for the element
        in the context of the lead"), then each catalog's elements by id (GET /api/v4/catalogs/
        {catalog_id}/elements?filter[id][]=…, catalogs-api) for the name and the price: the field
        price_id names, else the one with field_code PRICE (products-api: products have sku,
        description, price, group). amoCRM keeps no unit or VAT per element: the rule gives `vat:`."""
        kind = API_ENTITY.get(entity.type, entity.type)
        links = [link for link in self.pages(f"/api/v4/{segment(kind)}/{segment(entity.id)}/links", "links",
                                             {"filter[to_entity_type]": "catalog_elements"})
                 if link.get("to_entity_type") == "catalog_elements"]
        by_catalog: dict[int, list[int]] = {}
        for link in links:
            catalog_id = (link.get("metadata") or {}).get("catalog_id")
            if not str(catalog_id or "").isdigit():
                raise PermanentApiError(f"amoCRM: the lead's product {link.get('to_entity_id')} is linked without "
                                        f"its list (metadata.catalog_id: {catalog_id!r})")
            by_catalog.setdefault(int(catalog_id), []).append(int(link["to_entity_id"]))
        elements: dict[int, dict[str, Any]] = {}
        for catalog_id, ids in by_catalog.items():
            for start in range(0, len(ids), 50):   # 50 ids a request: the URL stays short
                for element in self.pages(f"/api/v4/catalogs/{catalog_id}/elements", "elements",
                                          {"filter[id][]": ids[start:start + 50]}):
                    elements[int(element["id"])] = element
        rows = []
        for link in links:
            meta = link.get("metadata") or {}
            element = elements.get(int(link["to_entity_id"]))
            if element is None:   # deleted from the list since it was linked
                raise PermanentApiError(f"amoCRM: the lead's product {link['to_entity_id']} (list "
                                        f"{meta.get('catalog_id')}) is no longer in its list")
            values = element.get("custom_fields_values") or []
            price = next((f for f in values if meta.get("price_id") and f.get("field_id") == meta["price_id"]), None) \
                or next((f for f in values if f.get("field_code") == "PRICE"), None)
            if price is None or not price.get("values"):
                raise PermanentApiError(f"amoCRM: the product {element.get('name')!r} (list {meta.get('catalog_id')}) "
                                        f"has no price")
            rows.append({"name": element.get("name") or "", "quantity": meta.get("quantity", 1), "unit": "",
                         "price": price["values"][0].get("value")})
        return rows

    def drive_url(self) -> str:
        """The account's files host (GET /api/v4/account?with=drive_url, account-info), cached."""
        def fetch() -> str:
            resp = self.request("GET", "/api/v4/account", params={"with": "drive_url"})
            url = resp.json().get("drive_url")
            if not url:
                raise PermanentApiError("amoCRM did not name the account's drive_url")
            return url.rstrip("/")
        return self.cached("drive_url", fetch)

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
        for attempt in range(2):
            found = self.custom_fields(entity_type).get(field)
            if found:
                return int(found["id"])
            self.forget(f"custom_fields:{entity_type}")
        raise PermanentApiError(f"amoCRM has no {entity_type} field {field!r}")

    def changed_since(self, since: float | str) -> list[Changed]:
        """Leads updated at or after `since` (unix time or ISO 8601), oldest first (for catch-up
        jobs); each one's `raw` is the lead in the common shape, `modified` its updated_at."""
        unix_ts = datetime.fromisoformat(since).timestamp() if isinstance(since, str) else float(since)
        # filters-api: filter[updated_at][from]=<ts>; leads-api: order[updated_at]=asc
        params = {"filter[updated_at][from]": int(unix_ts), "order[updated_at]": "asc", "with": "contacts"}
        return [Changed("lead", lead["id"], lead.get("updated_at") or "", lead)
                for lead in (self.normalize(item) for item in self.pages("/api/v4/leads", "leads", params))]

    def bulk_recipients(self, stages: list[str] | None = None, pipeline: str | None = None,
                        tags: list[str] | None = None, fields: dict[str, Any] | None = None,
                        updated_from: float | None = None, updated_to: float | None = None) -> list[dict[str, Any]]:
        """A bulk send's list (pipeline/steps/send_bulk.py): GET /api/v4/leads with `with=contacts`,
        every page, filtered by amoCRM where its filter grammar allows (filters-api, leads-api):
        `filter[statuses][i][pipeline_id]` + `filter[statuses][i][status_id]` for the stages,
        `filter[updated_at][from|to]` (unix) for the last activity. leads-api documents no filter by
        tag or by a custom field's value, so those are matched here, on each lead's `_embedded.tags`
        and on the lead's and its contact's `custom_fields_values`. Each lead's main contact (else its first) is then read with
        GET /api/v4/contacts?filter[id][]=… (250 a page); a lead without a contact is left out."""
        params: dict[str, Any] = {"with": "contacts", "order[id]": "asc"}
        for i, stage in enumerate(stages or []):
            status_id, pipeline_id = self.resolve_stage(str(stage), pipeline)
            if pipeline_id is None:   # an id without its pipeline: the pipeline that has it
                pipeline_id = next((int(pid) for pid, p in self.pipelines().items()
                                    if str(status_id) in p["statuses"]), None)
            params[f"filter[statuses][{i}][pipeline_id]"] = pipeline_id
            params[f"filter[statuses][{i}][status_id]"] = status_id
        if updated_from is not None:
            params["filter[updated_at][from]"] = int(updated_from)
        if updated_to is not None:
            params["filter[updated_at][to]"] = int(updated_to)
        want_tags = {str(t).casefold() for t in tags or []}
        leads: list[dict[str, Any]] = []
        for item in self.pages("/api/v4/leads", "leads", params):
            lead = self.normalize(item)
            if not want_tags - {str(t).casefold() for t in lead.get("tags") or []}:
                leads.append(lead)
        wanted = {}
        for lead in leads:
            main = (lead.get("main_contact") or {}).get("id") or next(iter(lead.get("contacts") or []), None)
            if main:
                wanted.setdefault(str(main), []).append(lead)
        contacts: dict[str, dict[str, Any]] = {}
        ids = sorted(wanted, key=int)
        for i in range(0, len(ids), PAGE_LIMIT):
            chunk = [int(c) for c in ids[i:i + PAGE_LIMIT]]
            for item in self.pages("/api/v4/contacts", "contacts", {"filter[id][]": chunk}):
                contacts[str(item["id"])] = self.normalize(item)
        rows = []
        for cid in ids:
            contact = contacts.get(cid)
            if contact is None:
                continue
            for lead in wanted[cid]:
                if not fields_match({**(lead.get("fields") or {}), **(contact.get("fields") or {})}, fields):
                    continue   # a field is the deal's or the contact's: matched on both
                rows.append(recipient_row(contact, lead))
        return rows

    # --- tasks -------------------------------------------------------------------------------

    def list_tasks(self, entity: Entity, open_only: bool = True) -> list[dict[str, Any]]:
        """The entity's tasks (tasks-api filters entity_type/entity_id/is_completed), all pages."""
        params: dict[str, Any] = {"filter[entity_type]": API_ENTITY[entity.type],
                                  "filter[entity_id]": int(entity.id)}
        if open_only:
            params["filter[is_completed]"] = 0  # "1 – завершенные, 0 – к выполнению"
        return [normalize_task(t) for t in self.pages("/api/v4/tasks", "tasks", params)]

    def all_tasks_closed(self, entity: Entity) -> bool:
        """True when the entity has no open task (also in record-only mode, where nothing is read)."""
        return not self.list_tasks(entity, open_only=True)

    def overdue_tasks(self, before: str) -> list[dict[str, Any]]:
        """Open tasks due before `before` (ISO 8601), oldest first, with the responsible user's name.

        tasks-api filters by is_completed, responsible, type, entity and updated_at only; it has no
        complete_till bound, so the list is ordered by complete_till (order[complete_till]=asc)
        and read until the first task not yet due."""
        limit = datetime.fromisoformat(before).timestamp()
        params = {"filter[is_completed]": 0, "order[complete_till]": "asc"}
        names, found = self.users(), []
        for task in self.pages("/api/v4/tasks", "tasks", params):
            if not task.get("complete_till") or task["complete_till"] >= limit:
                break
            item = normalize_task(task)
            item["responsible"]["name"] = names.get(item["responsible"]["id"])
            found.append(item)
        return found

    def deals_without_task(self) -> list[dict[str, Any]]:
        """Open deals (status neither 142 won nor 143 lost, leads-api: "142 – успешно реализовано,
        143 – закрыто и не реализовано") bound to no open task: every page (250 a page, `page`)
        of GET /api/v4/leads and of GET /api/v4/tasks?filter[is_completed]=0&filter[entity_type]=leads."""
        busy = {str(t.get("entity_id")) for t in self.pages("/api/v4/tasks", "tasks", {
            "filter[is_completed]": 0, "filter[entity_type]": "leads", "order[id]": "asc"})}
        names, found = self.users(), []
        for lead in self.pages("/api/v4/leads", "leads", {"order[id]": "asc"}):
            if lead.get("status_id") in (142, 143) or str(lead["id"]) in busy:
                continue
            who = str(lead.get("responsible_user_id") or "")
            found.append({"type": "lead", "id": str(lead["id"]), "name": lead.get("name"),
                          "responsible": {"id": who, "name": names.get(who)},
                          "modified": utc_iso(lead["updated_at"]) if lead.get("updated_at") else None})
        return found

    def get_task(self, task_id: str | int) -> dict[str, Any] | None:
        """One task in the common shape, or None."""
        resp = self.request("GET", f"/api/v4/tasks/{segment(task_id)}")
        if resp is None or resp.status_code == 204:
            return None
        return normalize_task(resp.json())

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

    # --- read-back: did an uncertain create happen? (the executor settles UncertainApiError) -------

    def find_task(self, entity: Entity, text: str, since: float | str) -> int | None:
        """The id of the entity's task with exactly this text created at or after `since` (unix
        time or ISO 8601), or None. GET /api/v4/tasks with filter[entity_type], filter[entity_id]
        and filter[updated_at][from] (a task made since then was updated since then), newest first
        (order[created_at]=desc); created_at compared here, READ_BACK_SLACK early for clocks."""
        start = _unix(since) - READ_BACK_SLACK
        params = {"filter[entity_type]": API_ENTITY[entity.type], "filter[entity_id]": int(entity.id),
                  "filter[updated_at][from]": int(start), "order[created_at]": "desc"}
        for task in self.pages("/api/v4/tasks", "tasks", params):
            if task.get("text") == text and (task.get("created_at") or 0) >= int(start):
                return task["id"]
        return None

    def find_note(self, entity: Entity, text: str, since: float | str) -> int | None:
        """The id of the entity's common note with exactly this text created at or after `since`, or
        None. GET /api/v4/<entity>/{id}/notes with filter[note_type]=common and
        filter[updated_at][from], newest first (order[id]=desc; events-and-notes "Список примечаний
        по конкретной сущности")."""
        start = _unix(since) - READ_BACK_SLACK
        params = {"filter[note_type]": "common", "filter[updated_at][from]": int(start), "order[id]": "desc"}
        for note in self.pages(f"/api/v4/{API_ENTITY[entity.type]}/{entity.id}/notes", "notes", params):
            if (note.get("params") or {}).get("text") == text and (note.get("created_at") or 0) >= int(start):
                return note["id"]
        return None

    def complete_task(self, task_id: str | int, result_text: str) -> None:
        """PATCH /api/v4/tasks/{id} with is_completed and result.text (tasks-api, "Выполнение задачи")."""
        self.request("PATCH", f"/api/v4/tasks/{segment(task_id)}",
                     json_body={"is_completed": True, "result": {"text": result_text}})

    def complete_tasks_matching(self, entity: Entity, pattern: str, result_text: str) -> list[str]:
        """Close the entity's open tasks whose text matches `pattern` (a regex, any case)."""
        closed = []
        for task in self.list_tasks(entity, open_only=True):
            if re.search(pattern, task["text"], re.IGNORECASE):
                self.complete_task(task["id"], result_text)
                closed.append(task["id"])
        return closed

    # --- what conditions read: tasks, activity, files, a task's parent ------------------------

    # events-and-notes, "Типы событий": what counts as working on a deal. amoCRM's event list has
    # no e-mail type; mail that lands in the deal's feed comes as a note or a chat message.
    ACTIVITY_EVENTS = ("lead_status_changed", "incoming_call", "outgoing_call", "incoming_chat_message",
                       "outgoing_chat_message", "incoming_sms", "outgoing_sms", "common_note_added",
                       "attachment_note_added")
    EVENTS_PAGE_LIMIT = 100  # events-and-notes: "Максимум – 100"

    def list_events(self, entity: Entity, types: tuple[str, ...]) -> list[dict[str, Any]]:
        """GET /api/v4/events?filter[entity]=lead&filter[entity_id][]=…&filter[type][]=…, all pages."""
        params: dict[str, Any] = {"filter[entity]": entity.type, "filter[entity_id][]": int(entity.id),
                                  "filter[type][]": list(types)}
        return list(self.pages("/api/v4/events", "events", params, limit=self.EVENTS_PAGE_LIMIT))

    def activity(self, entity: Entity) -> dict[str, Any]:
        """When the entity entered its current stage (`stage_since`: its last lead_status_changed
        event, else its creation) and its last call, message, note or stage move (`last_activity`)."""
        events = self.list_events(entity, self.ACTIVITY_EVENTS)
        moves = [e["created_at"] for e in events if e.get("type") == "lead_status_changed"]
        since = max(moves) if moves else (self.get_raw(entity) or {}).get("created_at")
        last = max((e["created_at"] for e in events), default=None)
        return {"stage_since": utc_iso(since) if since else None, "last_activity": utc_iso(last) if last else None}

    def rule_context(self, entity: Entity, needs: set[str] | frozenset[str]) -> dict[str, Any]:
        """What the rules' conditions need besides the record: its open tasks, activity, files."""
        if self.record_only or entity.type not in API_ENTITY:
            return {}
        found: dict[str, Any] = {}
        if "tasks" in needs:
            found["tasks"] = self.list_tasks(entity, open_only=True)
        if "activity" in needs:
            found.update(self.activity(entity))
        if "files" in needs:
            found["files"] = self.list_files(entity)
        if "contacts" in needs and entity.type == "lead":
            raw = self.get_raw(entity) or {}
            linked = (raw.get("_embedded") or {}).get("contacts") or []
            ids = [str(c["id"]) for c in linked]
            cards = [c for c in (self.get_contact(i) for i in ids) if c is not None]
            found["contact_cards"] = cards
            # the deal's main contact (is_main, else the first linked): its phone and email are
            # where amoCRM keeps the client's (`entity.main_contact.phone`, `.email`); empty
            # strings when the deal has no contact, so a guard can test them
            main = next((str(c["id"]) for c in linked if c.get("is_main")), ids[0] if ids else None)
            card = next((c for c in cards if c["id"] == main), None)
            found["main_contact"] = {**EMPTY_CHANNELS, **(card or {}), "id": main}
        if "deals" in needs and entity.type == "lead":
            found["client_deals"] = self.client_deals(entity)
        return found

    OPEN_DEALS = 50     # the newest of a contact's leads read for attach_to_deal (one GET each)

    def contact_leads(self, contact_id: str) -> list[int]:
        """The ids of a contact's leads, newest (highest) first: GET /api/v4/contacts/{id}?with=leads."""
        card = self.get_raw(Entity("contact", str(contact_id))) or {}
        ids = {int(x["id"]) for x in (card.get("_embedded") or {}).get("leads") or [] if str(x.get("id")).isdigit()}
        return sorted(ids, reverse=True)

    def open_deals(self, contact_id: str) -> list[dict[str, Any]]:
        """The contact's open leads (attach_to_deal, E1/D8): its leads (contact_leads), the OPEN_DEALS
        newest each read with GET /api/v4/leads/{id}; open = not in status 142/143 (won, lost: the same
        ids in every pipeline) and not deleted. Each {"id", "name", "modified": updated_at}."""
        found = []
        for lead_id in self.contact_leads(contact_id)[:self.OPEN_DEALS]:
            lead = self.get_raw(Entity("lead", str(lead_id)))
            if lead is None or lead.get("is_deleted") or lead.get("status_id") in self.CLOSED_STATUSES:
                continue
            found.append({"type": "lead", "id": str(lead_id), "name": lead.get("name"),
                          "modified": utc_iso(lead["updated_at"]) if lead.get("updated_at") else None})
        return found

    def add_deal(self, title: str, contact_id: str, fields: dict[str, Any] | None = None) -> int | None:
        """POST /api/v4/leads [{"name", "custom_fields_values"}]: a lead in the main pipeline's first
        stage, with `fields` by name; its id. The contact is linked by the caller (link_contact):
        `add_deal_links_contact` is False, so a retried step does not create the lead again to link it."""
        body: dict[str, Any] = {"name": title}
        if fields:
            body["custom_fields_values"] = self._field_values("lead", fields)
        resp = self.request("POST", "/api/v4/leads", json_body=[body])
        return None if resp is None else resp.json()["_embedded"]["leads"][0]["id"]

    CLIENT_DEALS = 20   # the newest of a client's other leads read for new_deals (one GET each)
    CLOSED_STATUSES = (142, 143)   # "Успешно реализовано" and "Закрыто и не реализовано" in every pipeline

    def client_deals(self, lead: Entity) -> list[dict[str, Any]]:
        """The other leads of the lead's contacts (E3's `new_deals`): GET /api/v4/leads/{id}?with=contacts
        → its contacts, GET /api/v4/contacts/{id}?with=leads → each one's leads (contacts-api, `with`
        "leads"), then each of the CLIENT_DEALS newest (highest ids) read with GET /api/v4/leads/{id}
        for `created_at` and `status_id`: [{"id", "name", "created", "open"}], newest first. A lead's
        list filter by id (filters-api) is not used: its page says the filters are in alpha."""
        raw = self.get_raw(lead) or {}
        contacts = [str(c["id"]) for c in (raw.get("_embedded") or {}).get("contacts") or []]
        ids = {lead_id for cid in contacts for lead_id in self.contact_leads(cid)}
        ids.discard(int(lead.id)) if lead.id.isdigit() else None
        found = []
        for lead_id in sorted(ids, reverse=True)[:self.CLIENT_DEALS]:
            other = self.get_raw(Entity("lead", str(lead_id)))
            if other is None or other.get("is_deleted"):
                continue
            found.append({"id": str(lead_id), "name": other.get("name"),
                          "created": utc_iso(other["created_at"]) if other.get("created_at") else None,
                          "open": other.get("status_id") not in self.CLOSED_STATUSES and not other.get("closed_at")})
        return found

    # --- notes and files ---------------------------------------------------------------------

    def add_note(self, entity: Entity, text: str) -> int | None:
        """A common note on the entity (POST /api/v4/<entity>/notes)."""
        body = [{"entity_id": int(entity.id), "note_type": "common", "params": {"text": text}}]
        resp = self.request("POST", f"/api/v4/{API_ENTITY[entity.type]}/notes", json_body=body)
        if resp is None:
            return None
        return resp.json()["_embedded"]["notes"][0]["id"]

    def list_notes(self, entity: Entity) -> list[dict[str, Any]]:
        """The entity's notes, oldest page first (GET /api/v4/<entity>/{id}/notes)."""
        path = f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}/notes"
        return [normalize_note(n) for n in self.pages(path, "notes")]

    def get_note(self, entity: Entity, note_id: str | int) -> dict[str, Any] | None:
        """One note (GET /api/v4/<entity>/{id}/notes/{note_id}), e.g. to name a webhook's attachment."""
        resp = self.request("GET", f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}/notes/{segment(note_id)}")
        if resp is None or resp.status_code == 204:
            return None
        return normalize_note(resp.json())

    def list_files(self, entity: Entity) -> list[dict[str, Any]]:
        """The entity's files with names: uuids from the CRM, the rest from the Drive API.

        GET /api/v4/<entity>/{id}/files gives only `file_uuid`; names, sizes and links come from
        GET {drive_url}/v1.0/files/{uuid} (files-api). Drive names carry no extension; it is in
        `metadata.extension`. The token needs the "files" scope there.
        """
        uuids = list(self._file_uuids(entity))
        if not uuids:
            return []
        drive = self.drive_url()
        return [f for f in (self._drive_file(drive, u) for u in uuids) if f is not None]

    def _file_uuids(self, entity: Entity) -> Iterator[str]:
        path = f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}/files"
        params: dict[str, Any] = {"limit": FILES_PAGE_LIMIT}
        for _ in range(MAX_PAGES):
            resp = self.request("GET", path, params=params)
            if resp is None or resp.status_code == 204:  # "У сущности нет связанных файлов"
                return
            links = (resp.json().get("_embedded") or {}).get("files") or []
            yield from (link["file_uuid"] for link in links)
            if len(links) < FILES_PAGE_LIMIT:
                return
            params = {"limit": FILES_PAGE_LIMIT, "before_id": min(link["id"] for link in links)}

    def _drive_file(self, drive: str, uuid: str) -> dict[str, Any] | None:
        try:
            resp = self.request("GET", f"/v1.0/files/{segment(uuid)}", url=f"{drive}/v1.0/files/{segment(uuid)}")
        except PermanentApiError as exc:
            if exc.status != 404:  # "Файл не найден": linked, then deleted from the drive
                raise
            log.info("%s: drive file %s is gone", self.connection.name, uuid)
            return None
        f = resp.json()
        meta = f.get("metadata") or {}
        return {"uuid": f["uuid"], "name": f.get("name"), "size": f.get("size"),
                "mime_type": meta.get("mime_type"), "extension": meta.get("extension"),
                "url": ((f.get("_links") or {}).get("download") or {}).get("href")}

    # --- acting on leads and contacts --------------------------------------------------------

    def move_to_stage(self, entity: Entity, stage: str, pipeline: str | None = None,
                      current_pipeline: str | None = None) -> dict[str, Any]:
        """Move a lead to a stage (PATCH /api/v4/leads/{id} with status_id and pipeline_id).
        `current_pipeline` (the lead's, when the caller has read it) changes nothing here: the
        same PATCH moves a lead within its pipeline or into another."""
        if self.record_only:
            body: dict[str, Any] = {"status_id": stage, **({"pipeline_id": pipeline} if pipeline else {})}
        else:
            status_id, pipeline_id = self.resolve_stage(stage, pipeline)
            body = {"status_id": status_id, **({"pipeline_id": pipeline_id} if pipeline_id else {})}
        self.request("PATCH", f"/api/v4/leads/{segment(entity.id)}", json_body=body)
        return {"moved": True}

    # --- stages, for pipeline/steps/move_forward.py ----------------------------------------------

    def read_stage(self, entity: Entity) -> dict[str, Any] | None:
        """The lead's status and pipeline ids (GET /api/v4/leads/{id}); None in record-only mode."""
        raw = self.get_raw(entity)
        if raw is None:
            return None
        return {"stage": str(raw.get("status_id")), "pipeline": str(raw.get("pipeline_id"))}

    def find_stage(self, entity: Entity, stage: str, pipeline: str | None = None) -> dict[str, Any]:
        """A status name or id (and pipeline name or id) → {"stage", "pipeline"} ids, from cached pipelines."""
        status_id, pipeline_id = self.resolve_stage(stage, pipeline)
        return {"stage": str(status_id), "pipeline": None if pipeline_id is None else str(pipeline_id)}

    def stage_order(self, entity: Entity, pipeline: str | None, fresh: bool = False) -> dict[str, int]:
        """{status id: its place} in a pipeline, by the statuses' `sort` (leads_pipelines), cached;
        `fresh`: the pipelines are read again first."""
        if fresh:
            self.forget("pipelines")
        statuses = (self.pipelines().get(str(pipeline)) or {}).get("statuses") or {}
        return {sid: place for place, sid in enumerate(statuses)}   # kept in `sort` order

    def set_fields(self, entity: Entity, fields: dict[str, Any]) -> None:
        """Write custom fields by name or id; a list writes several values (multiselect)."""
        self.request("PATCH", f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}",
                     json_body={"custom_fields_values": self._field_values(entity.type, fields)})

    def update_contact(self, contact: Entity | str | int, fields: dict[str, Any] | None = None,
                       **attrs: Any) -> None:
        """PATCH a contact: custom fields by name, plus name/first_name/last_name (contacts-api)."""
        entity = contact if isinstance(contact, Entity) else Entity("contact", str(contact))
        body = {k: v for k, v in attrs.items() if k in ("name", "first_name", "last_name") and v is not None}
        if fields:
            body["custom_fields_values"] = self._field_values(entity.type, fields)
        self.request("PATCH", f"/api/v4/contacts/{segment(entity.id)}", json_body=body)

    # find_or_create (pipeline/steps/find_or_create.py): contacts-api "Список контактов",
    # GET /api/v4/contacts?query=… ("Осуществляет поиск по заполненным полям сущности": fuzzy, so every
    # candidate is checked by the step), POST /api/v4/contacts (an array), and entity-links-api
    # POST /api/v4/leads/{id}/link [{"to_entity_id", "to_entity_type": "contacts"}].
    FIND_BY = ("phone", "email", "inbox_sender")

    def search_contacts(self, by: str, value: str, field: str | None = None) -> list[dict[str, Any]]:
        """Contacts amoCRM's search finds for the value as given, then for its digits (phone)."""
        queries = list(dict.fromkeys([value, phone_digits(value)] if by == "phone" else [value]))
        found: list[dict[str, Any]] = []
        for query in queries:
            found = [{"id": str(c["id"]), "created": c.get("created_at"),
                      "phones": [p["value"] for p in contact_channels(c.get("custom_fields_values")).get("phones", [])],
                      "emails": [e["value"] for e in contact_channels(c.get("custom_fields_values")).get("emails", [])],
                      "fields": api_fields(c.get("custom_fields_values"))[0]}
                     for c in self.pages("/api/v4/contacts", "contacts", {"query": query}) if not c.get("is_deleted")]
            if any(contact_matches(by, value, c, field) for c in found):
                break
        return found

    def add_contact(self, name: str, by: str, value: str, fields: dict[str, Any]) -> int | None:
        """POST /api/v4/contacts: the name, custom fields by name, and the phone or email in the
        multitext field with field_code PHONE / EMAIL (value + enum_code WORK, API-REFERENCE §1.2)."""
        values = self._field_values("contact", fields) if fields else []
        if by in ("phone", "email"):
            values.append({"field_code": by.upper(), "values": [{"value": value, "enum_code": "WORK"}]})
        body: dict[str, Any] = {"name": name}
        if values:
            body["custom_fields_values"] = values
        resp = self.request("POST", "/api/v4/contacts", json_body=[body])
        return None if resp is None else resp.json()["_embedded"]["contacts"][0]["id"]

    def link_contact(self, entity: Entity, contact_id: str) -> str | None:
        """A lead gets the contact (entity-links-api); an amoCRM task belongs to one record only."""
        if entity.type != "lead":
            return f"amoCRM links contacts to leads, not to a {entity.type}"
        self.request("POST", f"/api/v4/leads/{segment(entity.id)}/link",
                     json_body=[{"to_entity_id": int(contact_id), "to_entity_type": "contacts"}])
        return None

    def change_tags(self, entity: Entity, add: list[str] | tuple[str, ...] = (),
                    remove: list[str] | tuple[str, ...] = ()) -> None:
        """Add and remove tags by name in one PATCH (leads-api: tags_to_add / tags_to_delete)."""
        body: dict[str, Any] = {}
        if add:
            body["tags_to_add"] = [{"name": t} for t in add]
        if remove:
            body["tags_to_delete"] = [{"name": t} for t in remove]
        if body:
            self.request("PATCH", f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}", json_body=body)

    def set_responsible(self, entity: Entity, user: str | int) -> None:
        """Make a user (name or id) responsible for the entity: PATCH /api/v4/{leads|contacts|companies}/{id}
        {"responsible_user_id"} (leads-api, contacts-api, companies-api "Редактирование")."""
        if entity.type not in API_ENTITY:
            raise PermanentApiError(f"amoCRM: set_responsible works on leads, contacts and companies, not a {entity.type}")
        uid = user if self.record_only else self.resolve_user(user)
        self.request("PATCH", f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}",
                     json_body={"responsible_user_id": int(uid) if str(uid).isdigit() else uid})

    def create_copy(self, source: dict[str, Any] | None, pipeline: str, stage: str,
                    responsible: str | int | None = None, fields: dict[str, Any] | None = None,
                    tags: list[str] | None = None, copy_fields: bool | list[str] = True,
                    name: str | None = None) -> int | None:
        """Create a lead in another pipeline/stage from `source` (a lead as get_raw returns it):
        its name (or `name`), price, custom fields (all, none, or those named in `copy_fields`) and
        tags (or `tags`), `fields` overriding by name. One POST /api/v4/leads (an array, leads-api);
        the new lead's id (None in record-only mode, where names stay unresolved)."""
        if self.record_only or source is None:
            self.request("POST", "/api/v4/leads", json_body=[{"status_id": stage, "pipeline_id": pipeline}])
            return None
        if copy_fields is not True:
            keep = set(copy_fields or [])
            source = {**source, "custom_fields_values": [cf for cf in source.get("custom_fields_values") or []
                                                         if cf.get("field_name") in keep]}
        if name:
            source = {**source, "name": name}
        resp = self.request("POST", "/api/v4/leads", json_body=[self._copy_body(
            source, pipeline, stage, responsible, fields, tags)])
        return resp.json()["_embedded"]["leads"][0]["id"]

    def link_copy(self, lead_id: int | str, source: dict[str, Any]) -> int:
        """Link a lead to the contacts and company of `source`: one POST /api/v4/leads/{id}/link
        with to_entity_type contacts|companies (entity-links-api); how many links (0: no call)."""
        links = _links_of(source)
        if links:
            self.request("POST", f"/api/v4/leads/{segment(lead_id)}/link", json_body=links)
        return len(links)

    def _copy_body(self, source: dict[str, Any], pipeline: str, stage: str, responsible: str | int | None,
                   fields: dict[str, Any] | None, tags: list[str] | None) -> dict[str, Any]:
        status_id, pipeline_id = self.resolve_stage(stage, pipeline)
        body: dict[str, Any] = {"status_id": status_id, "pipeline_id": pipeline_id}
        for key in ("name", "price"):
            if source.get(key) is not None:
                body[key] = source[key]
        owner = self.resolve_user(responsible) or source.get("responsible_user_id")
        if owner:
            body["responsible_user_id"] = owner
        overrides = self._field_values("lead", fields or {})
        replaced = {v["field_id"] for v in overrides}
        copied = [_writable(cf) for cf in source.get("custom_fields_values") or []
                  if cf.get("field_id") not in replaced]
        if copied or overrides:
            body["custom_fields_values"] = [c for c in copied if c["values"]] + overrides
        names = tags if tags is not None else [t["name"] for t in (source.get("_embedded") or {}).get("tags") or []]
        if names:
            body["tags_to_add"] = [{"name": n} for n in names]
        return body

    def _field_values(self, entity_type: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        values = []
        for name, value in fields.items():
            fid = name if self.record_only else self.resolve_field(entity_type, name)
            items = value if isinstance(value, list) else [value]
            values.append({"field_id": fid, "values": [{"value": v} for v in items]})
        return values

    # --- validate --online: the account's names, read only (config/online.py) ------------------

    def metadata(self) -> dict[str, Any]:
        """What rules may name, read fresh and read only: pipelines and their stages
        (GET /api/v4/leads/pipelines, leads-pipelines "Список воронок сделок"), the custom fields of
        leads, contacts and companies with their types and enum values (GET /api/v4/{leads,contacts,
        companies}/custom_fields, custom-fields "Список полей сущности"), users (GET /api/v4/users,
        users-api). Shape: {"pipelines": {id: {"name", "stages": {id: name}}}, "fields": {type:
        {name: {"id", "type", "enums": [value]}}}, "users": {id: name}}."""
        for name in ("pipelines", "users", *(f"custom_fields:{t}" for t in ("lead", "contact", "company"))):
            self.forget(name)
        fields = {t: {name: {"id": str(f["id"]), "type": f.get("type"), "enums": list(f.get("enums") or {})}
                      for name, f in self.custom_fields(t).items()} for t in ("lead", "contact", "company")}
        pipelines = {pid: {"name": p["name"], "stages": p["statuses"]} for pid, p in self.pipelines().items()}
        return {"pipelines": pipelines, "fields": fields, "users": self.users()}

    # --- the catch-up's history, and reading back the other creates ------------------------------

    def stage_history(self, since: float | str) -> list[Moved]:
        """Every lead stage move at or after `since`, oldest first: GET /api/v4/events with
        filter[type][]=lead_status_changed and filter[created_at][from] (events-and-notes: the
        event list, "Фильтрация"; limit at most 100, `page` while `_links.next`). Each event's
        value_before / value_after is [{"lead_status": {"id", "pipeline_id"}}]. The list comes
        newest first: moves of one second keep the vendor's order when turned round."""
        params = {"filter[type][]": ["lead_status_changed"], "filter[created_at][from]": int(_unix(since))}
        rows = list(self.pages("/api/v4/events", "events", params, limit=self.EVENTS_PAGE_LIMIT))
        rows.reverse()
        rows.sort(key=lambda e: int(e.get("created_at") or 0))
        moves = []
        for event in rows:
            after, before = _lead_status(event.get("value_after")), _lead_status(event.get("value_before"))
            if event.get("entity_type") != "lead" or after is None or not event.get("entity_id"):
                continue
            moves.append(Moved("lead", str(event["entity_id"]), str(after["id"]), _text(after.get("pipeline_id")),
                               _text((before or {}).get("id")), _text((before or {}).get("pipeline_id")),
                               utc_iso(event["created_at"]), str(event["id"])))
        return moves

    def find_lead(self, pipeline: str, stage: str, name: str | None, since: float | str) -> int | None:
        """The id of the newest lead made at or after `since` in that pipeline (by name or id) with
        that name (None: any), or None: GET /api/v4/leads with filter[pipeline_id] and
        filter[created_at][from] (filters-api), newest first (order[created_at]=desc; leads-api).
        It reads back create_copy; READ_BACK_SLACK early for the clocks."""
        _, pipeline_id = self.resolve_stage(stage, pipeline)
        start = int(_unix(since) - READ_BACK_SLACK)
        params: dict[str, Any] = {"filter[created_at][from]": start, "order[created_at]": "desc"}
        if pipeline_id:
            params["filter[pipeline_id]"] = int(pipeline_id)
        for lead in self.pages("/api/v4/leads", "leads", params):
            if (name is None or lead.get("name") == name) and int(lead.get("created_at") or 0) >= start \
                    and (not pipeline_id or str(lead.get("pipeline_id")) == str(pipeline_id)):
                return lead["id"]
        return None

    def find_contact(self, name: str, by: str, value: str, since: float | str, field: str | None = None) -> int | None:
        """The id of the newest contact named `name` that carries `value` (phone, email, or the sender in
        `field`) and was
        made at or after `since`, or None: GET /api/v4/contacts with filter[created_at][from],
        newest first (contacts-api "Список контактов", filters-api); the value is compared here
        (contact_matches), since `query` is a search index that may lag behind a create."""
        start = int(_unix(since) - READ_BACK_SLACK)
        params = {"filter[created_at][from]": start, "order[created_at]": "desc"}
        for contact in self.pages("/api/v4/contacts", "contacts", params):
            channels = contact_channels(contact.get("custom_fields_values"))
            card = {"phones": [p["value"] for p in channels.get("phones", [])],
                    "emails": [e["value"] for e in channels.get("emails", [])],
                    "fields": api_fields(contact.get("custom_fields_values"))[0]}
            if contact.get("name") == name and int(contact.get("created_at") or 0) >= start \
                    and contact_matches(by, value, card, field):
                return contact["id"]
        return None

    # --- files made by crmbridge (make_document): drive upload, link, attachment note ---------

    def upload_file(self, content: bytes, name: str, mime_type: str | None = None) -> dict[str, Any] | None:
        """The file on the account's drive: POST {drive_url}/v1.0/sessions {file_name, file_size,
        content_type} → {upload_url, max_part_size}; then each part of at most max_part_size bytes
        POSTed raw to upload_url, each answer naming the next part's `next_url` until the last
        answers with the file ({uuid, version_uuid, …}) (amocrm-api-php Files::uploadOne). An upload
        done twice leaves a drive file nothing names: retried like a read. → {uuid, version_uuid, name}."""
        mime = mime_type or "application/octet-stream"
        if self.record_only:
            self.request("POST", "/v1.0/sessions", json_body={"file_name": name, "file_size": len(content),
                                                              "content_type": mime})
            return None
        drive = self.drive_url()
        session = self.request("POST", "/v1.0/sessions", url=f"{drive}/v1.0/sessions", idempotent=True,
                               json_body={"file_name": name, "file_size": len(content), "content_type": mime}).json()
        url, size = session.get("upload_url"), int(session.get("max_part_size") or 0)
        if not url or size <= 0:
            raise PermanentApiError(f"amoCRM drive: the upload session names no upload_url or max_part_size: {session}")
        answer: dict[str, Any] = {}
        for start in range(0, max(len(content), 1), size):
            answer = self._upload_part(drive, url, content[start:start + size], mime)
            url = answer.get("next_url")
            if not url:
                break
        if not answer.get("uuid"):
            raise PermanentApiError(f"amoCRM drive: the upload of {name!r} ended without a file: {answer}")
        return {"uuid": answer["uuid"], "version_uuid": answer.get("version_uuid"), "name": answer.get("name") or name}

    def _upload_part(self, drive: str, url: str, part: bytes, mime: str) -> dict[str, Any]:
        """One part, raw bytes, to a URL the drive gave: only on the drive's own host (the token goes with it)."""
        if urlsplit(url).netloc != urlsplit(drive).netloc or urlsplit(url).scheme != urlsplit(drive).scheme:
            raise PermanentApiError(f"amoCRM drive: refused to send a part to {urlsplit(url).netloc!r}, "
                                    f"not the drive's host {urlsplit(drive).netloc!r}")
        release = self.limiter(hold=self.hold_seconds) if self.limiter else None
        try:
            if self.sending:
                self.sending()
            try:
                resp = self.session.post(url, data=part, timeout=self.timeout,
                                         headers={**self.auth_headers(), "Content-Type": mime})
            except (requests.Timeout, requests.ConnectionError) as exc:
                # a part sent twice is a part of a file nothing names yet: the step may try again
                raise RetryableApiError(f"POST drive upload part: {type(exc).__name__}") from None
        finally:
            if release:
                release()
        self.check(resp, "POST drive upload part", idempotent=True)
        return resp.json()

    def attach_file(self, entity: Entity, name: str, text: str, file: Any = None,
                    content: bytes | None = None) -> int | None:
        """A drive file on the record as its users see it: linked to the record's Files (PUT
        /api/v4/<entity>/{id}/files [{file_uuid}], EntityFiles::add; linking twice leaves one link)
        and shown in its feed as an `attachment` note {file_uuid, version_uuid, file_name} (notes
        types). That note carries no text: `text` is left out. `content` without `file` is uploaded
        first. → the note's id."""
        if file is None and content is not None:
            file = self.upload_file(content, name)
        if file is None:   # record-only: nothing was uploaded
            self.request("POST", f"/api/v4/{API_ENTITY[entity.type]}/notes",
                         json_body=[{"entity_id": entity.id, "note_type": "attachment", "params": {"file_name": name}}])
            return None
        path = f"/api/v4/{API_ENTITY[entity.type]}/{segment(entity.id)}"
        self.request("PUT", f"{path}/files", json_body=[{"file_uuid": file["uuid"]}])
        params = {"file_uuid": file["uuid"], "file_name": name}
        if file.get("version_uuid"):
            params["version_uuid"] = file["version_uuid"]
        resp = self.request("POST", f"/api/v4/{API_ENTITY[entity.type]}/notes",
                            json_body=[{"entity_id": int(entity.id), "note_type": "attachment", "params": params}])
        return None if resp is None else resp.json()["_embedded"]["notes"][0]["id"]


def _unix(moment: float | str) -> float:
    """Unix time from unix time or ISO 8601 (naive: UTC)."""
    if isinstance(moment, str):
        parsed = datetime.fromisoformat(moment)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return float(moment)


def normalize_task(task: dict[str, Any]) -> dict[str, Any]:
    """An API v4 task in the common shape (`parent` as in task webhooks); `result` is {"text"} or []
    when empty (tasks-api samples)."""
    result = task.get("result") if isinstance(task.get("result"), dict) else {}
    return {"id": str(task["id"]), "text": task.get("text", ""), "completed": bool(task.get("is_completed")),
            "due": utc_iso(task["complete_till"]) if task.get("complete_till") else None,
            "responsible": {"id": str(task.get("responsible_user_id"))},
            "parent": {"type": SINGULAR.get(task.get("entity_type"), task.get("entity_type")),
                       "id": str(task.get("entity_id"))},
            "task_type": task.get("task_type_id"), "result": result.get("text"),
            "created_at": utc_iso(task["created_at"]) if task.get("created_at") else None}


def normalize_note(note: dict[str, Any]) -> dict[str, Any]:
    """An API v4 note: type is a string (common, attachment…); attachments name their file."""
    params = note.get("params") or {}
    found = {"id": str(note["id"]), "type": note.get("note_type"), "text": params.get("text", ""),
             "params": params, "created_at": utc_iso(note["created_at"]) if note.get("created_at") else None,
             "created_by": str(note.get("created_by"))}
    if note.get("note_type") == "attachment":
        found["file"] = {"name": params.get("original_name") or params.get("file_name"),
                         "uuid": params.get("file_uuid")}
    return found


def api_fields(values: list[dict[str, Any]] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """custom_fields_values → values by field name, and enum ids (as strings) by field name."""
    fields: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    for cf in values or []:
        items = cf.get("values") or []
        vals = [v.get("value") for v in items]
        fields[cf.get("field_name")] = vals[0] if len(vals) == 1 else vals
        ids = [str(v["enum_id"]) for v in items if v.get("enum_id") is not None]
        if ids:
            enums[cf.get("field_name")] = ids[0] if len(ids) == 1 else ids
    return fields, enums


EMPTY_CHANNELS: dict[str, Any] = {"phone": "", "phones": [], "email": "", "emails": []}


def contact_channels(values: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A contact's (or company's) phones and emails: amoCRM keeps them in the multitext fields
    with `field_code` PHONE and EMAIL, each value with its kind (`enum_code` WORK, MOB, WORKDD,
    HOME, FAX, OTHER; PRIV for email; the API's own example names it `enum`). `phone` / `email`
    are the first, as amoCRM lists them; `phones` / `emails` all, with `kind`."""
    found: dict[str, Any] = {}
    for code, key in (("PHONE", "phone"), ("EMAIL", "email")):
        items = [{"value": str(v.get("value") or "").strip(), "kind": v.get("enum_code") or v.get("enum")}
                 for cf in values or [] if cf.get("field_code") == code for v in cf.get("values") or []]
        items = [i for i in items if i["value"]]
        if items:
            found.update({key: items[0]["value"], f"{key}s": items})
    return found


def _embedded(embedded: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"tags": [t.get("name") for t in embedded.get("tags") or []],
                             "contacts": [str(c["id"]) for c in embedded.get("contacts") or []]}
    main = [str(c["id"]) for c in embedded.get("contacts") or [] if c.get("is_main")]
    if main:
        found["main_contact"] = {"id": main[0]}
    if embedded.get("companies"):
        found["company"] = {"id": str(embedded["companies"][0]["id"])}  # "always 1 element" (leads-api)
    if "leads" in embedded:
        found["leads"] = [str(lead["id"]) for lead in embedded["leads"]]
    return found


def _writable(cf: dict[str, Any]) -> dict[str, Any]:
    """A read custom_fields_values item as a write item: enum fields by enum_id, the rest by value."""
    kind = cf.get("field_type")
    values = []
    for v in cf.get("values") or []:
        if kind in ENUM_TYPES and v.get("enum_id") is not None:
            values.append({"enum_id": v["enum_id"]})
        elif kind in PAIRED_TYPES and v.get("enum_id") is not None:
            values.append({"value": v.get("value"), "enum_id": v["enum_id"]})
        elif v.get("value") is not None:
            values.append({"value": v["value"]})
    return {"field_id": cf["field_id"], "values": values}


def _links_of(lead: dict[str, Any]) -> list[dict[str, Any]]:
    embedded = lead.get("_embedded") or {}
    links = [{"to_entity_id": c["id"], "to_entity_type": "contacts",
              "metadata": {"is_main": bool(c.get("is_main"))}} for c in embedded.get("contacts") or []]
    links += [{"to_entity_id": c["id"], "to_entity_type": "companies"} for c in embedded.get("companies") or []]
    return links


def _stage_position(pipelines: dict[str, Any], stage_id: str, pipeline_id: str | None) -> int | None:
    """The stage's place in its pipeline (0 first), by the statuses' `sort` (leads_pipelines)."""
    for pid, p in pipelines.items():
        if pipeline_id in (None, pid) and stage_id in p["statuses"]:
            return list(p["statuses"]).index(stage_id)
    return None


def _stage_name(pipelines: dict[str, Any], stage_id: str, pipeline_id: str | None) -> str | None:
    if pipeline_id and pipeline_id in pipelines:
        return pipelines[pipeline_id]["statuses"].get(stage_id)
    for p in pipelines.values():
        if stage_id in p["statuses"]:
            return p["statuses"][stage_id]
    return None


def _lead_status(value: Any) -> dict[str, Any] | None:
    """The {"id", "pipeline_id"} of an event's value_before/value_after ([{"lead_status": …}])."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict) and isinstance(item.get("lead_status"), dict) and item["lead_status"].get("id"):
            return item["lead_status"]
    return None


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
