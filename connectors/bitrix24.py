"""Bitrix24 REST: event handlers in, deals/leads/contacts/tasks out through an inbound webhook.

Events (an outgoing webhook, or `event.bind` from an app) are POSTed form-encoded with PHP
bracket keys, `event=ONCRMDEALUPDATE&data[FIELDS][ID]=759&ts=…&auth[application_token]=…`,
and carry only the record's ID ("An event reports only the fact of a change",
api-reference/events/index.md): the worker reads the record and compares it with the last
snapshot it kept. Bitrix24 signs nothing and does not retry a failed delivery.

What the integrator writes in connections.yaml:

    type: bitrix24
    base_url: https://portal.bitrix24.ru/rest/1          # the portal and the webhook's user id
    credentials: {webhook: ${B24_WEBHOOK_CODE}}          # the inbound webhook's secret code
    webhook_secret: ${B24_APPLICATION_TOKEN}             # the outgoing webhook's application token
    options: {domain: portal.bitrix24.ru, member_id: …}  # optional: checked against auth[…] too

No credentials: record-only (calls are logged, not made). A base_url that already ends in the
code works as well. Doc paths below are in github.com/bitrix24/b24restdocs.
Samples: tests/payloads/bitrix24/.

Id grammar: `data[FIELDS][ID]` (and a task's `data[FIELDS_AFTER][ID]`) is a positive decimal integer:
records are numbered (the event pages' samples, api-reference/crm/deals/events/*.md; crm.deal.get takes
`{"ID": 410}`, shared/API-REFERENCE.md §2.2; task ids such as "3711", tasks/fields.md), and every capture
in tests/payloads/bitrix24/ has digits only. Anything else is refused with 400.
"""
from __future__ import annotations

import base64
import hmac
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlencode

from connectors.base import (
    ApiError, BadPayload, BaseClient, Changed, Connection, Entity, Event, Moved, PermanentApiError, RawWebhook,
    RetryableApiError, Unauthorized, UncertainApiError, contact_matches, event_id, fields_match, parse_nested_form,
    phone_digits, positive_id, recipient_row, utc_iso,
)

SOURCE = "bitrix24"
CONTENT_TYPES = ("application/x-www-form-urlencoded",)
BASE_URL_REQUIRED = True  # every portal has its own address and webhook path

# upper-cased event name -> (entity type, event kind); the activity page spells it onCrmActivityAdd
EVENTS = {
    "ONCRMDEALADD": ("deal", "entity.created"), "ONCRMDEALUPDATE": ("deal", "entity.updated"),
    "ONCRMDEALDELETE": ("deal", "entity.deleted"), "ONCRMLEADADD": ("lead", "entity.created"),
    "ONCRMLEADUPDATE": ("lead", "entity.updated"), "ONCRMCONTACTADD": ("contact", "entity.created"),
    "ONCRMCONTACTUPDATE": ("contact", "entity.updated"), "ONTASKADD": ("task", "task.created"),
    "ONTASKUPDATE": ("task", "task.updated"), "ONCRMACTIVITYADD": ("activity", "entity.created"),
}
UPDATES = {"entity.updated", "task.updated"}
AUTH_KEPT = ("domain", "member_id")  # the rest of auth[] is secrets: never stored with the event
CRM_TYPES = {"deal", "lead", "contact", "company"}
# CRM object type ids (crm.activity.list OWNER_TYPE_ID, crm.item.* entityTypeId): crm/data-types.md
OWNER_TYPE = {"lead": 1, "deal": 2, "contact": 3, "company": 4}
# UF_CRM_TASK binding prefixes (api-reference/tasks/fields.md)
TASK_BINDING = {"lead": "L", "deal": "D", "contact": "C", "company": "CO"}
TASK_SELECT = ["ID", "TITLE", "STATUS", "RESPONSIBLE_ID", "DEADLINE", "UF_CRM_TASK"]
# tasks/fields.md STATUS, as the task card names them (a rule may write either: `stage: "Завершена"` or "5")
TASK_STATUSES = {"1": "Новая", "2": "Ждёт выполнения", "3": "Выполняется", "4": "Ждёт контроля", "5": "Завершена",
                 "6": "Отложена", "7": "Отклонена"}
TASK_DONE = "5"  # tasks.task.list REAL_STATUS: 2 waiting, 3 in progress, 4 awaiting control, 5 completed, 6 deferred
# 503 QUERY_LIMIT_EXCEEDED, 429 OPERATION_TIME_LIMIT, 503 OVERLOAD_LIMIT (limits.md); 500 PORTAL_DELETED
# is final (_includes/system-errors.md). Some clients see QUERY_LIMIT_EXCEEDED with HTTP 200.
RETRYABLE_CODES = {"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "OVERLOAD_LIMIT", "INTERNAL_SERVER_ERROR"}
# The limits' answers (limits.md): the call was refused, nothing was done, whatever the HTTP status.
REFUSAL_CODES = {"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "OVERLOAD_LIMIT"}
# Methods named *.add that bind two existing records: doing one twice leaves the same binding.
BINDING_METHODS = {"crm.deal.contact.add", "crm.lead.contact.add", "crm.contact.company.add"}
PERMANENT_CODES = {"PORTAL_DELETED"}
READ_BACK_SLACK = 60  # seconds find_task/find_note look before `since`: our clock and the portal's may differ
# crm.activity TYPE_ID and DIRECTION (crm/timeline/activities/crm-activity-fields.md, crm.enum.activitytype,
# crm.enum.activitydirection)
ACTIVITY_TYPES = {"1": "meeting", "2": "call", "3": "task", "4": "email", "5": "action", "6": "custom"}
ACTIVITY_DIRECTIONS = {"1": "incoming", "2": "outgoing"}
BATCH_MAX = 50  # "The number of requests in a batch is limited to 50" (settings/how-to-call-rest-api/batch.md)


def verify(raw: RawWebhook, connection: Connection) -> None:
    """Compare auth[application_token] (and any configured domain/member_id) with the connection's."""
    try:
        auth = parse_nested_form(raw.body).get("auth")
    except BadPayload:
        auth = None
    auth = auth if isinstance(auth, dict) else {}
    if not connection.webhook_secret or not _same(auth.get("application_token"), connection.webhook_secret):
        raise Unauthorized("missing or wrong auth[application_token]")
    for key in AUTH_KEPT:
        expected = (connection.options or {}).get(key)
        if expected and not _same(auth.get(key), str(expected)):
            raise Unauthorized(f"auth[{key}] is not this connection's {key}")


def _same(given: Any, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One POST is one event about one record, named by its ID only."""
    form = parse_nested_form(raw.body)
    name = form.get("event")
    if not isinstance(name, str) or not name:
        raise BadPayload("no Bitrix24 event name (expected event=ONCRM…&data[FIELDS][ID]=…)")
    if name.upper() not in EVENTS:
        raise BadPayload(f"unsupported Bitrix24 event {name!r}")
    entity_type, kind = EVENTS[name.upper()]
    entity_id = _event_record_id(form.get("data"), entity_type)
    where = "data[FIELDS_AFTER][ID]" if entity_type == "task" else "data[FIELDS][ID]"
    if not entity_id:
        raise BadPayload(f"{name} has no {where}")
    entity_id = positive_id(entity_id, where)
    ts = form.get("ts")
    auth = form.get("auth") if isinstance(form.get("auth"), dict) else {}
    kept = {k: v for k, v in form.items() if k != "auth"}
    kept["auth"] = {k: auth[k] for k in AUTH_KEPT if k in auth}
    return [Event(
        id=event_id(connection.name, name.upper(), entity_id, ts),
        connection=connection.name, source=SOURCE, kind=kind, entity=Entity(entity_type, entity_id),
        data={"needs_snapshot_diff": True} if kind in UPDATES else {}, raw=kept,
        occurred_at=utc_iso(ts) if str(ts or "").isdigit() else utc_iso())]


def _event_record_id(data: Any, entity_type: str) -> str:
    """CRM events carry data[FIELDS][ID]; task events data[FIELDS_AFTER][ID] (FIELDS_BEFORE is "undefined" on add)."""
    if not isinstance(data, dict):
        return ""
    fields = data.get("FIELDS_AFTER" if entity_type == "task" else "FIELDS")
    value = fields.get("ID") if isinstance(fields, dict) else None
    return str(value).strip() if isinstance(value, str) and value.strip() else ""


def creates(method: str, params: dict[str, Any] | None = None) -> bool:
    """Does doing this REST call twice make two of something? Every method is a POST: a `*.add`
    creates (tasks.task.add, crm.timeline.comment.add, im.notify.system.add, crm.contact.add),
    except those that bind two records (BINDING_METHODS); reads, updates and deletes do not. A
    batch creates when one of its commands does."""
    if method == "batch":
        return any(creates(str(cmd).split("?", 1)[0]) for cmd in ((params or {}).get("cmd") or {}).values())
    return method.rsplit(".", 1)[-1] == "add" and method not in BINDING_METHODS


def command(method: str, params: dict[str, Any] | None = None) -> str:
    """A batch command string, `method?a[b]=c`, with the params URL-encoded PHP-style."""
    return f"{method}?{urlencode(_pairs(params or {}))}" if params else method


def _pairs(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    pairs: list[tuple[str, Any]] = []
    for key, item in items:
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(item, (dict, list, tuple)):
            pairs += _pairs(item, name)
        else:
            pairs.append((name, item))
    return pairs


class Client(BaseClient):
    """Actions on one Bitrix24 portal through its inbound webhook; each method is one to three calls."""

    rate_per_second = 2  # the leaky bucket drains 2 requests/s on non-Enterprise plans (limits.md)
    # …and refuses calls past a counter of 50 (limits.md): at most 50 calls in any 25 s keeps the
    # counter at or below 50 whatever the spacing (ratelimit.Limit), less the limiter's margin
    burst = 50
    capabilities = frozenset({
        "get_entity", "name_refs", "changed_since", "list_tasks", "set_fields", "move_to_stage",
        "create_task", "add_note", "notify", "set_responsible", "delete_entity", "search_contacts",
        "add_contact", "link_contact", "read_stage", "find_stage", "stage_order", "find_task", "find_note",
        "overdue_tasks", "deals_without_task", "open_deals", "add_deal",
        "stage_history", "find_contact",
        "attach_file", "product_rows", "rule_context", "bulk_recipients",
    })
    timeout = 30.0  # a REST request may run up to 60 s (limits.md); most answer in a second or two
    docs_url = "https://apidocs.bitrix24.com/"

    @property
    def endpoint(self) -> str:
        """base_url plus the webhook code from credentials, unless base_url already ends in it."""
        base = (self.connection.base_url or "").rstrip("/")
        code = (self.connection.credentials.get("webhook") or "").strip("/")
        return base if not code or base.endswith("/" + code) else f"{base}/{code}"

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """POST one REST method with a JSON body; the whole answer, or None in record-only mode."""
        path = f"/{method}.json"  # what error messages name: never the URL with its secret code
        safe = not creates(method, params)
        resp = self.request("POST", path, json_body=params or {}, url=f"{self.endpoint}{path}", idempotent=safe)
        if resp is None:
            return None
        body = _body(resp)
        if body.get("error") not in (None, ""):  # QUERY_LIMIT_EXCEEDED may come with HTTP 200
            raise self.api_error(f"POST {path}", resp.status_code, body, idempotent=safe)
        return body

    def check(self, resp, what: str, *, idempotent: bool = True) -> None:
        """HTTP 4xx/5xx → the error tree, classified by Bitrix24's own code first."""
        if resp.status_code >= 400:
            raise self.api_error(what, resp.status_code, _body(resp), resp.headers.get("Retry-After"),
                                 idempotent=idempotent)

    def api_error(self, what: str, status: int, body: dict[str, Any], retry_after: str | None = None,
                  *, idempotent: bool = True) -> ApiError:
        """{"error", "error_description"} → RetryableApiError (limits, 429, 5xx) or PermanentApiError;
        UncertainApiError for a 5xx to a create, unless Bitrix24's code says it refused the call (its
        limits: QUERY_LIMIT_EXCEEDED, OVERLOAD_LIMIT, OPERATION_TIME_LIMIT)."""
        code = str(body.get("error") or "")
        text = re.sub(r"<br\s*/?>", " ", str(body.get("error_description") or "")).strip()
        message = f"{what}: HTTP {status}: " + (f"{code}: {text}" if code and text else code or text)
        if code in PERMANENT_CODES or (code not in RETRYABLE_CODES and status < 500 and status != 429):
            return PermanentApiError(message, status=status)
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        if wait is None and code == "QUERY_LIMIT_EXCEEDED":
            wait = 1.0  # the bucket drains 2 requests/s: a second frees room for a retry
        if code in REFUSAL_CODES or (status == 429 and code != "INTERNAL_SERVER_ERROR"):
            return RetryableApiError(message, status=status, retry_after=wait)
        if not idempotent:   # a 5xx (or INTERNAL_SERVER_ERROR however it came): a create may have been done
            return UncertainApiError(f"{message} (the request may have been done)", status=status, retry_after=wait)
        return RetryableApiError(message, status=status, retry_after=wait)

    def list_all(self, method: str, params: dict[str, Any], key: str | None = None) -> list[Any] | None:
        """Every page of a list method: 50 records a page, repeated with start=<next>."""
        items: list[Any] = []
        start = 0
        while True:
            body = self.call(method, {**params, "start": start})
            if body is None:
                return None
            result = body.get("result") or []
            page = result.get(key, []) if key and isinstance(result, dict) else result
            items.extend(page if isinstance(page, list) else [])
            following = body.get("next")
            if following in (None, "") or int(following) <= start:
                return items
            start = int(following)

    def batch(self, commands: dict[str, str], halt: bool = False) -> dict[str, dict[str, Any]] | None:
        """Run {key: "method?query"} 50 at a time → {"result", "errors", "total", "next"}, each by key.

        `$result[key]` references work only within one group of 50 (Bitrix24 runs each batch alone).
        """
        merged: dict[str, dict[str, Any]] = {"result": {}, "errors": {}, "total": {}, "next": {}}
        items = list(commands.items())
        for i in range(0, len(items), BATCH_MAX):
            body = self.call("batch", {"halt": int(halt), "cmd": dict(items[i:i + BATCH_MAX])})
            if body is None:
                return None
            part = body.get("result") or {}
            for ours, wire in (("result", "result"), ("errors", "result_error"),
                               ("total", "result_total"), ("next", "result_next")):
                merged[ours].update(_as_dict(part.get(wire)))  # PHP sends an empty map as []
            if halt and merged["errors"]:
                break
        return merged

    # --- metadata, cached in Redis ---------------------------------------------------------

    def refreshed(self, name: str, find: Callable[[], Any]) -> Any:
        """find() on cached metadata; on a miss, once more on fresh metadata."""
        found = find()
        if not found:
            self.forget(name)
            found = find()
        return found

    def stages(self) -> dict[str, Any]:
        """{"deal": {category id: {"name", "stages": {STATUS_ID: name}}}, "lead": {STATUS_ID: name}}, cached."""
        def fetch() -> dict[str, Any]:
            categories = self.call("crm.category.list", {"entityTypeId": OWNER_TYPE["deal"]})["result"]
            categories = categories.get("categories", []) if isinstance(categories, dict) else []
            cmd = {f"c{c['id']}": command("crm.status.list", {"filter": {"ENTITY_ID": _stage_list(c["id"])}})
                   for c in categories}
            cmd["lead"] = command("crm.status.list", {"filter": {"ENTITY_ID": "STATUS"}})
            answer = self.batch(cmd)
            if answer["errors"]:
                key, error = next(iter(answer["errors"].items()))
                raise self.api_error(f"batch {key}", 200, error)
            lists = answer["result"]
            deal = {str(c["id"]): {"name": c["name"], "stages": _status_names(lists.get(f"c{c['id']}"))}
                    for c in categories}
            return {"deal": deal, "lead": _status_names(lists.get("lead"))}
        return self.cached("stages", fetch)

    def users(self) -> dict[str, str]:
        """{user id: "NAME LAST_NAME"} from user.get, cached."""
        def fetch() -> dict[str, str]:
            return {str(u["ID"]): " ".join(filter(None, (u.get("NAME"), u.get("LAST_NAME")))).strip()
                    for u in self.list_all("user.get", {}) or []}
        return self.cached("users", fetch)

    def fields(self, entity_type: str) -> dict[str, dict[str, Any]]:
        """{FIELD_CODE: {"label", "items"}} from crm.<type>.fields; UF_ labels are formLabel/listLabel."""
        def fetch() -> dict[str, dict[str, Any]]:
            result = self.call(f"{_crm(entity_type)}.fields")["result"]
            return {code: {"label": d.get("formLabel") or d.get("listLabel") or d.get("title") or code,
                           "items": {str(i["ID"]): i["VALUE"] for i in d.get("items") or []}}
                    for code, d in result.items()}
        return self.cached(f"fields:{entity_type}", fetch)

    def name_refs(self, data: dict[str, Any], entity_type: str | None = None) -> dict[str, Any]:
        """Add names to stage/pipeline/responsible refs, from cached metadata."""
        if self.record_only or not any(k in data for k in ("stage", "pipeline", "responsible")):
            return data
        if "pipeline" in data:
            category = self.stages()["deal"].get(data["pipeline"]["id"], {})
            data["pipeline"]["name"] = category.get("name")
            if "stage" in data:
                data["stage"]["name"] = category.get("stages", {}).get(data["stage"]["id"])
        elif "stage" in data and entity_type in (None, "lead"):
            data["stage"]["name"] = self.stages()["lead"].get(data["stage"]["id"])
        if "responsible" in data:
            data["responsible"]["name"] = self.users().get(data["responsible"]["id"])
        return data

    # --- reading ---------------------------------------------------------------------------

    def get_entity(self, entity: Entity) -> dict[str, Any] | None:
        """The record's state in the common shape; None in record-only mode or for a missing task."""
        if entity.type == "activity":
            return self.get_activity(entity)
        if entity.type == "task":
            body = self.call("tasks.task.get", {"taskId": _id(entity), "select": TASK_SELECT})
            task = (body or {}).get("result")  # [] when the task is gone or hidden (tasks-task-get.md)
            return self.normalize_task(task["task"]) if isinstance(task, dict) and task.get("task") else None
        body = self.call(f"{_crm(entity.type)}.get", {"id": _id(entity)})
        return None if body is None else self.normalize(entity.type, body["result"])

    def normalize(self, entity_type: str, rec: dict[str, Any]) -> dict[str, Any]:
        """A crm.<type>.get record in the common shape, UF_ fields by their labels."""
        snap: dict[str, Any] = {"id": str(rec["ID"]), "name": _record_name(rec), "fields": {},
                                "tags": [], "contacts": []}
        if entity_type == "deal":
            _ref(snap, "pipeline", rec.get("CATEGORY_ID") or "0")
            _ref(snap, "stage", rec.get("STAGE_ID"))
            snap["contacts"] = [str(rec["CONTACT_ID"])] if rec.get("CONTACT_ID") else []
            _ref(snap, "company", rec.get("COMPANY_ID"))
        elif entity_type == "lead":
            _ref(snap, "stage", rec.get("STATUS_ID"))
        if "OPPORTUNITY" in rec:
            snap["price"] = rec["OPPORTUNITY"]
        _ref(snap, "responsible", rec.get("ASSIGNED_BY_ID"))
        meta = self.fields(entity_type)
        for code, value in rec.items():
            if code.startswith("UF_"):
                info = meta.get(code, {"label": code, "items": {}})
                snap["fields"][info["label"]] = _enum_text(info, value)
        return self.name_refs(snap, entity_type)

    def normalize_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """A tasks.task.* task (camelCase keys) in the common shape."""
        status = str(task.get("status") or "")
        snap: dict[str, Any] = {"id": str(task["id"]), "name": task.get("title"), "status": status,
                                "completed": status == TASK_DONE, "deadline": task.get("deadline"),
                                "bindings": list(task.get("ufCrmTask") or []), "fields": {}, "tags": [],
                                "contacts": []}
        _ref(snap, "responsible", task.get("responsibleId"))
        if status:   # the status as a stage, so ONTASKUPDATE derives stage.changed (the task's own "funnel")
            snap["stage"] = {"id": status, "name": TASK_STATUSES.get(status, status)}
        return self.name_refs(snap, "task")

    def get_company(self, company: Entity | str | int) -> dict[str, Any] | None:
        """crm.company.get in the common shape."""
        return self.get_entity(_as_entity("company", company))

    def list_tasks(self, entity: Entity, open_only: bool = True) -> list[dict[str, Any]] | None:
        """The tasks bound to the entity (UF_CRM_TASK), every page; open ones only by default."""
        flt: dict[str, Any] = {"UF_CRM_TASK": _binding(entity)}
        if open_only:
            flt["!REAL_STATUS"] = int(TASK_DONE)
        tasks = self.list_all("tasks.task.list", {"filter": flt, "select": TASK_SELECT, "order": {"ID": "asc"}},
                              key="tasks")
        return None if tasks is None else [self.normalize_task(t) for t in tasks]

    # --- read-back: did an uncertain create happen? (the executor settles UncertainApiError) -------

    def find_task(self, entity: Entity, text: str, since: float | str) -> int | None:
        """The id of a task bound to the entity whose title is `text`, created at or after `since`
        (unix time or ISO 8601), or None: tasks.task.list with filter UF_CRM_TASK, TITLE (a pattern
        in Bitrix24, so compared exactly here) and >=CREATED_DATE, newest first (tasks-task-list.md).
        READ_BACK_SLACK early, for our clock and the portal's."""
        start = _moment(since) - timedelta(seconds=READ_BACK_SLACK)
        body = self.call("tasks.task.list", {
            "filter": {"UF_CRM_TASK": _binding(entity), "TITLE": text,
                       ">=CREATED_DATE": start.isoformat(timespec="seconds")},
            "select": ["ID", "TITLE", "CREATED_DATE"], "order": {"ID": "desc"}})
        tasks = ((body or {}).get("result") or {}).get("tasks") or []
        found = [t for t in tasks if t.get("title") == text and _moment(t.get("createdDate") or 0) >= start]
        return int(found[0]["id"]) if found else None

    def find_note(self, entity: Entity, text: str, since: float | str) -> int | None:
        """The id of the entity's timeline comment whose text is `text`, made at or after `since`, or
        None: crm.timeline.comment.list filters by ENTITY_ID and ENTITY_TYPE only (its doc), so the
        pages are read newest first (order ID desc) until they reach comments older than `since`. A
        task's comments: task.commentitem.getlist {"TASKID", "ORDER": {"ID": "desc"}} (every comment, one
        answer; task-comment-item-get-list.md), POST_MESSAGE and POST_DATE compared the same way."""
        if entity.type == "task":
            start = _moment(since) - timedelta(seconds=READ_BACK_SLACK)
            body = self.call("task.commentitem.getlist", {"TASKID": _id(entity), "ORDER": {"ID": "desc"}})
            rows = (body or {}).get("result") or []
            found = [r for r in rows if isinstance(r, dict) and r.get("POST_MESSAGE") == text
                     and _moment(r.get("POST_DATE") or 0) >= start]
            return int(found[0]["ID"]) if found else None
        _owner_type(entity.type)
        start = _moment(since) - timedelta(seconds=READ_BACK_SLACK)
        offset = 0
        while True:
            body = self.call("crm.timeline.comment.list", {
                "filter": {"ENTITY_ID": _id(entity), "ENTITY_TYPE": entity.type},
                "select": ["ID", "CREATED", "COMMENT"], "order": {"ID": "DESC"}, "start": offset})
            rows = (body or {}).get("result") or []
            for row in rows:
                if row.get("COMMENT") == text and _moment(row.get("CREATED") or 0) >= start:
                    return int(row["ID"])
            following = (body or {}).get("next")
            if not rows or following in (None, "") or int(following) <= offset or \
                    all(_moment(r.get("CREATED") or 0) < start for r in rows):
                return None
            offset = int(following)

    def list_activities(self, entity: Entity) -> list[dict[str, Any]] | None:
        """The entity's CRM activities (calls, meetings, e-mails), newest first, every page."""
        params = {"filter": {"OWNER_TYPE_ID": _owner_type(entity.type), "OWNER_ID": _id(entity)},
                  "order": {"ID": "DESC"},
                  "select": ["ID", "TYPE_ID", "SUBJECT", "COMPLETED", "DEADLINE", "RESPONSIBLE_ID"]}
        rows = self.list_all("crm.activity.list", params)
        return None if rows is None else [
            {"id": str(a["ID"]), "type": str(a.get("TYPE_ID")), "subject": a.get("SUBJECT"),
             "completed": a.get("COMPLETED") == "Y", "deadline": a.get("DEADLINE"),
             "responsible": {"id": str(a.get("RESPONSIBLE_ID"))}} for a in rows]

    def changed_since(self, since: str) -> list[Changed] | None:
        """Deals modified after `since` (ISO 8601; sent in the portal's offset, portal_time), oldest
        first, every page; `modified` is DATE_MODIFY."""
        rows = self.list_all("crm.deal.list", {"filter": {">DATE_MODIFY": self.portal_time(since)},
                                               "order": {"DATE_MODIFY": "ASC"},
                                               "select": ["ID", "DATE_MODIFY"]})
        return None if rows is None else [Changed("deal", str(d["ID"]), str(d.get("DATE_MODIFY") or ""), d)
                                          for d in rows]

    def bulk_recipients(self, stages: list[str] | None = None, pipeline: str | None = None,
                        tags: list[str] | None = None, fields: dict[str, Any] | None = None,
                        updated_from: float | None = None, updated_to: float | None = None) -> list[dict[str, Any]]:
        """A bulk send's list (pipeline/steps/send_bulk.py): crm.deal.list, every page (50 a page,
        start=<next>), filtered by the portal (crm/deals/crm-deal-list.md): STAGE_ID (a list means
        any of), >=DATE_MODIFY / <=DATE_MODIFY in the portal's offset (portal_time), and a deal
        field by its UF_ code (an enumeration by its item id); each deal's CONTACT_ID is then read
        with crm.contact.get, 50 in one `batch`. A field the deal lacks is matched on the contact's
        values. CRM deals have no tags in the REST API: asking for tags is refused."""
        if tags:
            raise PermanentApiError("Bitrix24 deals have no tags: filter the list by stage, a field or last activity")
        flt: dict[str, Any] = {}
        if stages:
            ids: list[str] = []
            for stage in stages:
                found = self.refreshed("stages", lambda: _stage_candidates(
                    self.stages(), "deal", str(stage), None if pipeline is None else str(pipeline)))
                if not found:
                    raise PermanentApiError(f"Bitrix24 has no deal stage {stage!r}"
                                            + (f" in funnel {pipeline!r}" if pipeline is not None else ""))
                ids += [sid for sid, _ in found]
            flt["STAGE_ID"] = ids
        if updated_from is not None:
            flt[">=DATE_MODIFY"] = self.portal_time(updated_from)
        if updated_to is not None:
            flt["<=DATE_MODIFY"] = self.portal_time(updated_to)
        meta = self.fields("deal")
        labels = {info["label"]: code for code, info in meta.items()}
        deal_fields = {name: v for name, v in (fields or {}).items() if name in meta or name in labels}
        if deal_fields:
            flt.update(self.resolve_fields("deal", deal_fields))
        contact_fields = {name: v for name, v in (fields or {}).items() if name not in deal_fields}
        deals = self.list_all("crm.deal.list", {"filter": flt, "order": {"ID": "ASC"},
                                                "select": ["ID", "TITLE", "STAGE_ID", "CATEGORY_ID", "CONTACT_ID",
                                                           "ASSIGNED_BY_ID", "OPPORTUNITY", "DATE_MODIFY", "*", "UF_*"]})
        wanted: dict[str, list[dict[str, Any]]] = {}
        for rec in deals or []:
            if rec.get("CONTACT_ID") not in (None, "", "0", 0):
                wanted.setdefault(str(rec["CONTACT_ID"]), []).append(self.normalize("deal", rec))
        ids_sorted = sorted(wanted, key=int)
        found = self.batch({f"c{cid}": f"crm.contact.get?{urlencode({'id': cid})}" for cid in ids_sorted}) \
            if ids_sorted else {"result": {}}
        rows = []
        for cid in ids_sorted:
            rec = (found or {}).get("result", {}).get(f"c{cid}")
            if not isinstance(rec, dict):
                continue   # gone since the deal named it, or hidden from the webhook's user
            contact = self.normalize("contact", rec)
            contact["phone"] = next((p.get("VALUE") for p in rec.get("PHONE") or [] if isinstance(p, dict)), "")
            contact["email"] = next((e.get("VALUE") for e in rec.get("EMAIL") or [] if isinstance(e, dict)), "")
            if not fields_match(contact.get("fields") or {}, contact_fields):
                continue
            rows += [recipient_row(contact, deal) for deal in wanted[cid]]
        return rows

    # --- names → ids ------------------------------------------------------------------------

    def resolve_stage(self, entity: Entity, stage: str, pipeline: str | None = None) -> tuple[str, str | None]:
        """A stage name or STATUS_ID (and funnel name or id) → (STATUS_ID, category id; None for leads)."""
        found = self.refreshed("stages", lambda: _stage_candidates(
            self.stages(), entity.type, str(stage), None if pipeline is None else str(pipeline)))
        where = f" in funnel {pipeline!r}" if pipeline is not None else ""
        if not found:
            raise PermanentApiError(f"Bitrix24 has no {entity.type} stage {stage!r}{where}")
        if len(found) > 1:  # the same name in several funnels: the one the deal is in
            current = self.deal_category(entity)
            found = [f for f in found if f[1] == current]
            if len(found) != 1:
                raise PermanentApiError(f"stage {stage!r} is in several funnels; name the pipeline")
        return found[0]

    def deal_category(self, entity: Entity) -> str:
        """The funnel (CATEGORY_ID) a deal is in now."""
        return str(self.call("crm.deal.get", {"id": _id(entity)})["result"].get("CATEGORY_ID") or "0")

    def resolve_user(self, user: str | int | None) -> int | None:
        """A user name as the portal shows it, or an id → the id."""
        if user in (None, ""):
            return None
        if str(user).isdigit():
            return int(user)
        found = self.refreshed("users", lambda: [uid for uid, name in self.users().items() if name == user])
        if not found:
            raise PermanentApiError(f"Bitrix24 has no user {user!r}")
        return int(found[0])

    def resolve_fields(self, entity_type: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Field codes or labels → codes; list (enumeration) values by their text → item ids."""
        def codes() -> dict[str, str | None]:
            meta = self.fields(entity_type)
            labels = {info["label"]: code for code, info in meta.items()}
            return {name: name if name in meta else labels.get(name) for name in fields}
        self.refreshed(f"fields:{entity_type}", lambda: all(codes().values()))
        meta, known = self.fields(entity_type), codes()
        missing = [name for name, code in known.items() if code is None]
        if missing:
            raise PermanentApiError(f"Bitrix24 has no {entity_type} field {missing[0]!r}")
        return {known[name]: _enum_id(meta[known[name]], value) for name, value in fields.items()}

    # --- acting -------------------------------------------------------------------------------

    def move_to_stage(self, entity: Entity, stage: str, pipeline: str | None = None,
                      current_pipeline: str | None = None) -> bool | None:
        """Move a deal (or lead) to a stage; into another funnel through crm.item.update.

        A stage name without `pipeline:` is taken as one of the deal's own funnel (crm.deal.update).
        With `pipeline`, the deal's funnel decides the method: `current_pipeline` when the caller
        has just read it (read_stage), else crm.deal.get tells it."""
        if entity.type == "lead":
            status = stage if self.record_only else self.resolve_stage(entity, stage)[0]
            return self.update(entity, {"STATUS_ID": status}, resolve=False)
        if entity.type != "deal":
            raise PermanentApiError(f"Bitrix24 stages belong to deals and leads, not {entity.type}s")
        if self.record_only:  # nothing to resolve names with: log the call as the rule wrote it
            status, category, current = stage, pipeline, None
        else:
            status, category = self.resolve_stage(entity, stage, pipeline)
            current = (current_pipeline if current_pipeline is not None else
                       self.deal_category(entity) if pipeline is not None else category)
        if category != current:
            # "If it is necessary to change the funnel of the deal, use crm.item.update" (crm-deal-update.md)
            fields = {"categoryId": _num(category), "stageId": status}
            body = self.call("crm.item.update", {"entityTypeId": OWNER_TYPE["deal"], "id": _id(entity),
                                                 "fields": fields})
            return None if body is None else bool(body.get("result"))
        return self.update(entity, {"STAGE_ID": status}, resolve=False)

    # --- stages, for pipeline/steps/move_forward.py ----------------------------------------------

    def read_stage(self, entity: Entity) -> dict[str, Any] | None:
        """A deal's STAGE_ID and CATEGORY_ID (crm.deal.get), a lead's STATUS_ID (crm.lead.get)."""
        if entity.type not in ("deal", "lead"):
            raise PermanentApiError(f"Bitrix24 stages belong to deals and leads, not {entity.type}s")
        body = self.call(f"{_crm(entity.type)}.get", {"id": _id(entity)})
        if body is None:
            return None
        rec = body.get("result") or {}
        if entity.type == "lead":
            return {"stage": str(rec.get("STATUS_ID") or ""), "pipeline": None}
        return {"stage": str(rec.get("STAGE_ID") or ""), "pipeline": str(rec.get("CATEGORY_ID") or "0")}

    def find_stage(self, entity: Entity, stage: str, pipeline: str | None = None) -> dict[str, Any]:
        """A stage name or STATUS_ID (and funnel) → {"stage": STATUS_ID, "pipeline": category; None for leads}."""
        status, category = self.resolve_stage(entity, stage, pipeline)
        return {"stage": status, "pipeline": category}

    def stage_order(self, entity: Entity, pipeline: str | None, fresh: bool = False) -> dict[str, list[int]]:
        """{STATUS_ID: [0 open or 1 final, SORT]} of the stage list of a deal's funnel (or of leads),
        cached: crm.status.list {"order": {"SORT": "ASC"}, "filter": {"ENTITY_ID": "DEAL_STAGE" |
        "DEAL_STAGE_<category>" | "STATUS"}}, rows {"STATUS_ID", "SORT", "SEMANTICS"}: "S" success,
        "F" failure, null in progress (crm/status/crm-status-list.md, crm/status/crm-status-add.md).
        Won and lost come after every open stage whatever their SORT; between two of them SORT
        decides (LOSE after WON). `fresh`: read again, not from the cache."""
        list_id = "STATUS" if entity.type == "lead" else _stage_list(pipeline or "0")
        if fresh:
            self.forget(f"stage-order:{list_id}")

        def fetch() -> dict[str, list[int]]:
            rows = self.list_all("crm.status.list", {"order": {"SORT": "ASC"}, "filter": {"ENTITY_ID": list_id}})
            return {str(r["STATUS_ID"]): [1 if r.get("SEMANTICS") in ("S", "F") else 0, int(r.get("SORT") or 0)]
                    for r in rows or [] if isinstance(r, dict) and r.get("STATUS_ID")}
        return self.cached(f"stage-order:{list_id}", fetch)

    def update(self, entity: Entity, fields: dict[str, Any], resolve: bool = True) -> bool | None:
        """crm.<type>.update with the fields (by label or code when `resolve`)."""
        values = self.resolve_fields(entity.type, fields) if resolve and not self.record_only else fields
        body = self.call(f"{_crm(entity.type)}.update", {"id": _id(entity), "fields": values})
        return None if body is None else bool(body.get("result"))

    def set_fields(self, entity: Entity, fields: dict[str, Any]) -> bool | None:
        """Write fields by code (UF_CRM_…, TITLE) or by the label the portal shows; a task's by code
        (TITLE, DEADLINE, UF_AUTO_…) through tasks.task.update {"taskId", "fields"} (tasks-task-update.md)."""
        if entity.type == "task":
            body = self.call("tasks.task.update", {"taskId": _id(entity), "fields": dict(fields)})
            return None if body is None else bool(body.get("result"))
        return self.update(entity, fields)

    def update_contact(self, contact: Entity | str | int, fields: dict[str, Any]) -> bool | None:
        """crm.contact.update, fields by code or label."""
        return self.update(_as_entity("contact", contact), fields)

    # find_or_create (pipeline/steps/find_or_create.py). Doc paths in bitrix24/b24restdocs:
    # crm/duplicates/crm-duplicate-find-by-comm.md ({"entity_type": "CONTACT", "type": "PHONE"|"EMAIL",
    # "values": [≤ 20]} → {"CONTACT": [ids]}), crm/contacts/crm-contact-get.md, crm-contact-list.md
    # (filter "=FIELD": exact), crm-contact-add.md (PHONE/EMAIL as crm_multifield [{VALUE, VALUE_TYPE}]),
    # crm/deals/contacts/crm-deal-contact-add.md ({"id", "fields": {"CONTACT_ID"}}; `false` when linked).
    FIND_BY = ("phone", "email", "inbox_sender")

    def search_contacts(self, by: str, value: str, field: str | None = None) -> list[dict[str, Any]] | None:
        if by == "inbox_sender":
            code = field if self.record_only else next(iter(self.resolve_fields("contact", {field: value})))
            rows = self.list_all("crm.contact.list", {"filter": {f"={code}": value},
                                                      "select": ["ID", "DATE_CREATE", code]}) or []
            return [{"id": str(r["ID"]), "created": _unix(r.get("DATE_CREATE")), "fields": {field: r.get(code)}}
                    for r in rows]
        variants = [value, phone_digits(value), "+" + re.sub(r"\D", "", value)] if by == "phone" else [value]
        body = self.call("crm.duplicate.findbycomm", {"entity_type": "CONTACT", "type": by.upper(),
                                                      "values": list(dict.fromkeys(variants))})
        ids = _as_dict((body or {}).get("result")).get("CONTACT") or []   # PHP answers "none" as []
        found = []
        for cid in ids[:20]:
            rec = (self.call("crm.contact.get", {"id": int(cid)}) or {}).get("result") or {}
            found.append({"id": str(cid), "created": _unix(rec.get("DATE_CREATE")),
                          "phones": [p.get("VALUE") for p in rec.get("PHONE") or [] if isinstance(p, dict)],
                          "emails": [e.get("VALUE") for e in rec.get("EMAIL") or [] if isinstance(e, dict)]})
        return found

    def add_contact(self, name: str, by: str, value: str, fields: dict[str, Any]) -> int | None:
        values = self.resolve_fields("contact", fields) if fields and not self.record_only else dict(fields or {})
        values["NAME"] = name
        if by in ("phone", "email"):
            values[by.upper()] = [{"VALUE": value, "VALUE_TYPE": "WORK"}]
        body = self.call("crm.contact.add", {"fields": values})
        return None if body is None else int(body["result"])

    def link_contact(self, entity: Entity, contact_id: str) -> str | None:
        if entity.type != "deal":
            return f"Bitrix24: contacts are linked to deals here, not to a {entity.type}"
        self.call("crm.deal.contact.add", {"id": _id(entity), "fields": {"CONTACT_ID": int(contact_id)}})
        return None

    def create_task(self, entity: Entity, text: str, due: str, responsible: str | int | None = None,
                    task_type: int | None = None, bind: list[Any] | None = None) -> int | None:
        """tasks.task.add bound to the entity and to `bind` (e.g. the deal's contact and company).

        `bind` items: a record (Entity, {"type", "id"}, or "C_7" as is), or {"contacts_of_deal": id}:
        every contact linked to that deal now (deal_contacts). Bitrix24 tasks have no type:
        `task_type` is accepted for the common signature and ignored. With no responsible, the task
        goes to the webhook's own user (RESPONSIBLE_ID is required).
        """
        user = responsible if self.record_only else self.resolve_user(responsible)
        targets: list[Any] = [entity]
        for item in bind or []:
            if isinstance(item, dict) and "contacts_of_deal" in item:
                targets += [Entity("contact", cid) for cid in self.deal_contacts(item["contacts_of_deal"])]
            else:
                targets.append(item)
        fields = {"TITLE": text, "DEADLINE": datetime.fromisoformat(due).isoformat(),
                  "RESPONSIBLE_ID": user if user not in (None, "") else self.webhook_user(),
                  "UF_CRM_TASK": list(dict.fromkeys(_binding(b) for b in targets))}
        body = self.call("tasks.task.add", {"fields": fields})
        return None if body is None else int(body["result"]["task"]["id"])

    def deal_contacts(self, deal: Entity | str | int) -> list[str]:
        """Every contact linked to a deal, in the deal's order: crm.deal.contact.items.get {"id"} →
        [{"CONTACT_ID", "SORT", "ROLE_ID", "IS_PRIMARY"}] (crm/deals/contacts/crm-deal-contact-items-get.md).
        crm.deal.get gives one CONTACT_ID only, "Deprecated… To get a list of all contacts associated
        with the deal, use the method crm.deal.contact.items.get" (crm/deals/crm-deal-get.md).
        Record-only: none (the call is only logged)."""
        body = self.call("crm.deal.contact.items.get", {"id": _id(_as_entity("deal", deal))})
        rows = (body or {}).get("result") or []
        rows = sorted((r for r in rows if isinstance(r, dict) and r.get("CONTACT_ID")),
                      key=lambda r: int(r.get("SORT") or 0))
        return [str(r["CONTACT_ID"]) for r in rows]

    def webhook_user(self) -> int | None:
        """The user the inbound webhook acts as: the number after /rest/ in its URL."""
        found = re.search(r"/rest/(\d+)(?:/|$)", self.connection.base_url or "")
        if not found and not self.record_only:
            raise PermanentApiError("no responsible user, and base_url has no /rest/<user id>/ to fall back on")
        return int(found.group(1)) if found else None

    def add_note(self, entity: Entity, text: str) -> int | None:
        """A comment in the entity's timeline (crm.timeline.comment.add); on a task, a task comment:
        task.commentitem.add {"TASKID", "FIELDS": {"POST_MESSAGE"}} → its id (tasks/comment-item/
        task-comment-item-add.md)."""
        if entity.type == "task":
            body = self.call("task.commentitem.add", {"TASKID": _id(entity), "FIELDS": {"POST_MESSAGE": text}})
            return None if body is None else int(body["result"])
        _owner_type(entity.type)
        body = self.call("crm.timeline.comment.add", {"fields": {
            "ENTITY_ID": _id(entity), "ENTITY_TYPE": entity.type, "COMMENT": text}})
        return None if body is None else int(body["result"])

    def notify(self, user: str | int, text: str) -> int | None:
        """A system notification to a portal user (im.notify.system.add)."""
        uid = user if self.record_only else self.resolve_user(user)
        body = self.call("im.notify.system.add", {"USER_ID": uid, "MESSAGE": text})
        return None if body is None else int(body["result"])

    def set_responsible(self, entity: Entity, user: str | int) -> bool | None:
        """crm.<type>.update {"id", "fields": {"ASSIGNED_BY_ID"}}: the responsible person of a deal,
        lead, contact or company (crm/deals/crm-deal-update.md and the lead, contact, company pages);
        the user by id or by "NAME LAST_NAME" as user.get shows it."""
        uid = user if self.record_only else self.resolve_user(user)
        if uid in (None, ""):
            raise PermanentApiError("set_responsible: no user given")
        return self.update(entity, {"ASSIGNED_BY_ID": uid}, resolve=False)

    def delete_entity(self, entity: Entity) -> str | None:
        """crm.<type>.delete {"id"} (crm/deals/crm-deal-delete.md, crm/leads/crm-lead-delete.md,
        crm/contacts/crm-contact-delete.md): "deleted", or "gone" when the record no longer exists —
        the documented "Not found" (HTTP 400, empty error code) — so a repeated step is done."""
        try:
            body = self.call(f"{_crm(entity.type)}.delete", {"id": _id(entity)})
        except PermanentApiError as exc:
            if exc.status == 400 and str(exc).endswith(": HTTP 400: Not found"):
                return "gone"
            raise
        return None if body is None else "deleted"

    # --- digests (D7), routing (D8), activities: pipeline/steps/send_digest.py, attach_to_deal.py --
    # crm/deals/crm-deal-list.md, crm/leads/crm-lead-list.md (filter, select, order, start: 50 a
    # page, "next"), tasks/tasks-task-list.md (filter REAL_STATUS, <DEADLINE; answer result.tasks
    # with camelCase keys), crm/timeline/activities/crm-activity-get.md, crm/deals/crm-deal-add.md.

    def overdue_tasks(self, before: str) -> list[dict[str, Any]]:
        """Open tasks whose DEADLINE is before `before`, oldest first, every page:
        tasks.task.list {"filter": {"<DEADLINE": before, "!REAL_STATUS": 5}, "order": {"DEADLINE": "asc"}}.
        Each as amoCRM's: {"id", "text", "due", "responsible": {"id", "name"}, "parent": the first
        deal/lead binding}."""
        limit = _moment(before)
        rows = self.list_all("tasks.task.list", {
            "filter": {"<DEADLINE": limit.isoformat(timespec="seconds"), "!REAL_STATUS": int(TASK_DONE)},
            "select": TASK_SELECT, "order": {"DEADLINE": "asc", "ID": "asc"}}, key="tasks") or []
        found = []
        for task in rows:
            if not task.get("deadline") or _moment(task["deadline"]) >= limit or str(task.get("status")) == TASK_DONE:
                continue   # the portal filtered already; checked again on the values it gave
            found.append({"id": str(task["id"]), "text": task.get("title") or "", "due": task["deadline"],
                          "responsible": self.person(task.get("responsibleId")),
                          "parent": _parent_binding(task.get("ufCrmTask"))})
        return found

    def deals_without_task(self) -> list[dict[str, Any]]:
        """Open deals (CLOSED "N") and leads in progress (STATUS_SEMANTIC_ID "P") bound to no open
        task (UF_CRM_TASK of every task not completed), every page of each list, by id."""
        tasks = self.list_all("tasks.task.list", {"filter": {"!REAL_STATUS": int(TASK_DONE)},
                                                  "select": ["ID", "UF_CRM_TASK"], "order": {"ID": "asc"}},
                              key="tasks") or []
        busy = {binding for task in tasks for binding in task.get("ufCrmTask") or []}
        found = []
        for etype, flt in (("deal", {"CLOSED": "N"}), ("lead", {"STATUS_SEMANTIC_ID": "P"})):
            rows = self.list_all(f"crm.{etype}.list", {"filter": flt, "order": {"ID": "ASC"},
                                                       "select": ["ID", "TITLE", "ASSIGNED_BY_ID", "DATE_MODIFY"]})
            for rec in rows or []:
                if f"{TASK_BINDING[etype]}_{rec['ID']}" in busy:
                    continue
                found.append({"type": etype, "id": str(rec["ID"]), "name": rec.get("TITLE"),
                              "responsible": self.person(rec.get("ASSIGNED_BY_ID")),
                              "modified": rec.get("DATE_MODIFY")})
        return found

    def person(self, user_id: Any) -> dict[str, Any]:
        """{"id", "name", "active"} of a user: user.get lists dismissed users too, with ACTIVE false
        (dev.1c-bitrix.ru/rest_help/users/user_get.php), and a digest cannot notify them."""
        who = str(user_id or "")
        active = self.cached("users-active", lambda: {str(u["ID"]): bool(u.get("ACTIVE"))
                                                      for u in self.list_all("user.get", {}) or []})
        return {"id": who, "name": self.users().get(who), "active": active.get(who, False)}

    def open_deals(self, contact_id: str) -> list[dict[str, Any]]:
        """The contact's open deals (crm.deal.list {"filter": {"CONTACT_ID", "CLOSED": "N"}}), every
        page, each {"id", "name", "modified": DATE_MODIFY}."""
        rows = self.list_all("crm.deal.list", {
            "filter": {"CONTACT_ID": _id(Entity("contact", str(contact_id))), "CLOSED": "N"},
            "order": {"DATE_MODIFY": "DESC", "ID": "DESC"}, "select": ["ID", "TITLE", "DATE_MODIFY"]})
        return [{"id": str(r["ID"]), "name": r.get("TITLE"), "modified": r.get("DATE_MODIFY")} for r in rows or []]

    def rule_context(self, entity: Entity, needs: set[str] | frozenset[str]) -> dict[str, Any]:
        """What rule conditions read besides the record: here the deal's client's other deals
        (`deals`: new_deals, entity.client_deals); the rest is not read on Bitrix24 yet (a condition
        that needs it says it was not read)."""
        if "deals" in needs and entity.type == "deal" and not self.record_only:
            return {"client_deals": self.client_deals(entity)}
        return {}

    def client_deals(self, deal: Entity) -> list[dict[str, Any]]:
        """The other deals of every contact linked to the deal (E3's `new_deals`): deal_contacts, then
        per contact crm.deal.list {"filter": {"CONTACT_ID"}, "select": ["ID", "TITLE", "DATE_CREATE",
        "CLOSED"]}, every page: [{"id", "name", "created": DATE_CREATE, "open": CLOSED "N"}], newest first."""
        seen: dict[str, dict[str, Any]] = {}
        for cid in self.deal_contacts(deal):
            rows = self.list_all("crm.deal.list", {
                "filter": {"CONTACT_ID": int(cid)}, "order": {"ID": "DESC"},
                "select": ["ID", "TITLE", "DATE_CREATE", "CLOSED"]}) or []
            for r in rows:
                if str(r["ID"]) != str(deal.id):
                    seen[str(r["ID"])] = {"id": str(r["ID"]), "name": r.get("TITLE"), "created": r.get("DATE_CREATE"),
                                          "open": r.get("CLOSED") != "Y"}
        return sorted(seen.values(), key=lambda d: int(d["id"]) if d["id"].isdigit() else 0, reverse=True)

    def add_deal(self, title: str, contact_id: str, fields: dict[str, Any] | None = None) -> int | None:
        """crm.deal.add {"fields": {"TITLE", "CONTACT_IDS": [id], …}}: a deal in the default funnel's
        first stage, linked to the contact, with `fields` by label or code (the lead's source and UTM
        tags: UTM_SOURCE…UTM_TERM and SOURCE_ID are the deal's own codes, crm/deals/crm-deal-add.md)."""
        values = {} if not fields else dict(fields) if self.record_only else self.resolve_fields("deal", fields)
        body = self.call("crm.deal.add", {"fields": {
            **values, "TITLE": title, "CONTACT_IDS": [_id(Entity("contact", str(contact_id)))]}})
        return None if body is None else int(body["result"])

    def get_activity(self, entity: Entity) -> dict[str, Any] | None:
        """crm.activity.get {"id"} (ONCRMACTIVITYADD carries the id only) in the common shape:
        {"id", "name": SUBJECT, "owner": {"type", "id"} (the deal, lead, contact it belongs to),
        "kind": meeting/call/task/email/… (TYPE_ID), "direction": incoming/outgoing (DIRECTION),
        "completed", "responsible", "fields": {}}."""
        body = self.call("crm.activity.get", {"id": _id(entity)})
        if body is None:
            return None
        rec = body.get("result") or {}
        owner = {v: k for k, v in OWNER_TYPE.items()}.get(int(rec.get("OWNER_TYPE_ID") or 0))
        snap: dict[str, Any] = {
            "id": str(rec.get("ID") or entity.id), "name": rec.get("SUBJECT"),
            "kind": ACTIVITY_TYPES.get(str(rec.get("TYPE_ID")), str(rec.get("TYPE_ID"))),
            "direction": ACTIVITY_DIRECTIONS.get(str(rec.get("DIRECTION")), ""),
            "completed": rec.get("COMPLETED") == "Y", "fields": {}, "tags": [], "contacts": []}
        if owner and rec.get("OWNER_ID"):
            snap["owner"] = {"type": owner, "id": str(rec["OWNER_ID"])}
        _ref(snap, "responsible", rec.get("RESPONSIBLE_ID"))
        return self.name_refs(snap, "activity")

    # --- validate --online: the portal's names, read only (config/online.py) -------------------

    def metadata(self) -> dict[str, Any]:
        """What rules may name, read fresh and read only: deal funnels and their stages
        (crm.category.list {entityTypeId: 2} and crm.status.list {filter: {ENTITY_ID: DEAL_STAGE |
        DEAL_STAGE_<id>}}, crm/universal/category/crm-category-list.md, crm/status/crm-status-list.md),
        lead statuses (ENTITY_ID STATUS) as the pipeline "lead", the fields of deals, leads, contacts
        and companies (user fields by their labels, standard ones by their codes) with type and list values (crm.<type>.fields: formLabel/listLabel,
        type, items[].VALUE, crm/deals/crm-deal-fields.md), users (user.get, user/user-get.md).
        Shape as amoCRM's metadata()."""
        self.forget("stages")
        self.forget("users")
        stages = self.stages()
        pipelines = {cid: {"name": c["name"], "stages": c["stages"]} for cid, c in stages["deal"].items()}
        pipelines["lead"] = {"name": "lead", "stages": stages["lead"]}
        fields: dict[str, dict[str, Any]] = {}
        for etype in ("deal", "lead", "contact", "company"):
            described = (self.call(f"{_crm(etype)}.fields") or {}).get("result") or {}
            # a user field by its label, as normalize() puts it in entity.fields; a standard one by its code
            fields[etype] = {((d.get("formLabel") or d.get("listLabel") or code) if code.startswith("UF_") else code):
                             {"id": code, "type": d.get("type"),
                              "enums": [str(i.get("VALUE")) for i in d.get("items") or []]}
                             for code, d in described.items() if isinstance(d, dict)}
        return {"pipelines": pipelines, "fields": fields, "users": self.users()}

    # --- the catch-up's history, the portal's clock, reading back a contact ----------------------

    def portal_time(self, moment: float | str) -> str:
        """`moment` written as the portal writes times, with its own offset (server.time answers
        "YYYY-MM-DDThh:mm:ss±hh:mm", rest_help/general/server_time.php; asked once per client).
        A date filter is then right whether the portal reads the offset or takes the wall-clock
        time in its own zone: a UTC value would be read hours off by a portal that does the latter."""
        zone = getattr(self, "_portal_zone", None)
        if zone is None:
            body = self.call("server.time")
            try:
                zone = datetime.fromisoformat(str((body or {}).get("result"))).tzinfo or timezone.utc
            except ValueError:
                zone = timezone.utc
            self._portal_zone = zone
        return _moment(moment).astimezone(zone).isoformat(timespec="seconds")

    def stage_history(self, since: float | str) -> list[Moved] | None:
        """Every deal stage move at or after `since`, oldest first: crm.stagehistory.list
        {"entityTypeId": 2, "filter": {">=CREATED_TIME": …}, "order": {"ID": "ASC"}, "start"} (50 a
        page; rest_help/crm/stagehistory.php: rows ID, TYPE_ID 1 created / 2 moved to an
        intermediate stage / 3 moved to a final one, OWNER_ID, CREATED_TIME, and for deals
        CATEGORY_ID, STAGE_SEMANTIC_ID, STAGE_ID). A row says only the stage entered: the stage
        left is the owner's row before it in the list (None for its first row here); a creation
        row is no move, as a deal created is no stage change on the webhook path either. A deal whose
        first row here is a move has the stage it left read from its row just before (one batch of
        crm.stagehistory.list {"filter": {"OWNER_ID", "<ID"}, "order": {"ID": "DESC"}} per 50 such
        deals; history_before)."""
        select = ["ID", "TYPE_ID", "OWNER_ID", "CREATED_TIME", "CATEGORY_ID", "STAGE_ID"]
        rows = self.list_all("crm.stagehistory.list", {
            "entityTypeId": OWNER_TYPE["deal"], "filter": {">=CREATED_TIME": self.portal_time(since)},
            "order": {"ID": "ASC"}, "select": select}, key="items")
        if rows is None:
            return None
        rows = sorted(rows, key=lambda r: int(r.get("ID") or 0))
        firsts: dict[str, int] = {}
        for row in rows:
            owner = str(row.get("OWNER_ID") or "")
            if owner.isdigit() and owner not in firsts and str(row.get("TYPE_ID")) != "1":
                firsts[owner] = int(row.get("ID") or 0)
        moves, before = [], self.history_before(firsts, select) if firsts else {}
        for row in rows:
            owner, stage = str(row.get("OWNER_ID") or ""), row.get("STAGE_ID")
            if not owner.isdigit() or not stage:
                continue
            category = str(row.get("CATEGORY_ID") or "0")
            left = before.get(owner, (None, None))
            before[owner] = (str(stage), category)
            if str(row.get("TYPE_ID")) == "1":
                continue
            at = _moment(row.get("CREATED_TIME") or 0).astimezone(timezone.utc).isoformat()
            moves.append(Moved("deal", owner, str(stage), category, left[0], left[1], at, str(row["ID"])))
        return moves

    def history_before(self, firsts: dict[str, int], select: list[str]) -> dict[str, tuple[str, str]]:
        """{deal id: (stage, category)} of each deal's stage history row just before the row id
        `firsts` gives it (the stage its first move in a look left); a deal with none is left out."""
        cmd = {f"d{owner}": command("crm.stagehistory.list", {
            "entityTypeId": OWNER_TYPE["deal"], "filter": {"OWNER_ID": owner, "<ID": first},
            "order": {"ID": "DESC"}, "select": select}) for owner, first in firsts.items()}
        answer = self.batch(cmd)
        if answer is None:
            return {}
        if answer["errors"]:
            key, error = next(iter(answer["errors"].items()))
            raise self.api_error(f"batch {key}", 200, error)
        found = {}
        for owner in firsts:
            items = _as_dict(answer["result"].get(f"d{owner}")).get("items") or []
            # checked here too: a portal that ignored a filter would list the rows of the look itself
            rows = [r for r in items if str(r.get("OWNER_ID")) == owner and int(r.get("ID") or 0) < firsts[owner]]
            row = max(rows, key=lambda r: int(r.get("ID") or 0), default=None)
            if row is not None and row.get("STAGE_ID"):
                found[owner] = (str(row["STAGE_ID"]), str(row.get("CATEGORY_ID") or "0"))
        return found

    def find_contact(self, name: str, by: str, value: str, since: float | str, field: str | None = None) -> int | None:
        """The id of the newest contact named `name` that carries `value` (phone, email, or the
        sender in `field`) and was made at or after `since`, or None: crm.contact.list with filter
        NAME and >=DATE_CREATE (in the portal's offset), newest first, PHONE/EMAIL selected
        (crm-contact-list.md); the value is compared here. It reads back add_contact."""
        code = None
        if by == "inbox_sender" and field:
            code = field if self.record_only else next(iter(self.resolve_fields("contact", {field: value})))
        start = _moment(since) - timedelta(seconds=READ_BACK_SLACK)
        body = self.call("crm.contact.list", {
            "filter": {"NAME": name, ">=DATE_CREATE": self.portal_time(start.timestamp())},
            "select": ["ID", "NAME", "DATE_CREATE", "PHONE", "EMAIL", *([code] if code else [])],
            "order": {"ID": "DESC"}})
        for row in (body or {}).get("result") or []:
            card = {"phones": [p.get("VALUE") for p in row.get("PHONE") or [] if isinstance(p, dict)],
                    "emails": [e.get("VALUE") for e in row.get("EMAIL") or [] if isinstance(e, dict)],
                    "fields": {field: row.get(code)} if code else {}}
            if row.get("NAME") == name and _moment(row.get("DATE_CREATE") or 0) >= start \
                    and contact_matches(by, value, card, field):
                return int(row["ID"])
        return None


    # --- files made by crmbridge (make_document) ---------------------------------------------

    def attach_file(self, entity: Entity, name: str, text: str, file: Any = None,
                    content: bytes | None = None) -> int | None:
        """A timeline comment carrying the file: crm.timeline.comment.add {"fields": {ENTITY_ID,
        ENTITY_TYPE, COMMENT, FILES: [[name, base64 content]]}} (crm/timeline/comments/
        crm-timeline-comment-add.md; files/how-to-upload-files.md) → the comment's id. The file
        shows in the comment and in the record's files; no disk upload is needed first."""
        if entity.type == "task":
            raise PermanentApiError("Bitrix24: make_document attaches files to CRM records (deal, lead, contact, "
                                    "company), not to tasks")
        if content is None:
            raise PermanentApiError("Bitrix24: attach_file needs the file's content (the comment carries it)")
        _owner_type(entity.type)
        body = self.call("crm.timeline.comment.add", {"fields": {
            "ENTITY_ID": _id(entity), "ENTITY_TYPE": entity.type, "COMMENT": text or name,
            "FILES": [[name, base64.b64encode(content).decode("ascii")]]}})
        return None if body is None else int(body["result"])

    def product_rows(self, entity: Entity) -> list[dict[str, Any]]:
        """A deal's product rows: crm.deal.productrows.get {id} (crm/deals/crm-deal-productrows-get.md)
        → [{PRODUCT_NAME, QUANTITY, MEASURE_NAME, PRICE, PRICE_EXCLUSIVE, TAX_RATE, TAX_INCLUDED…}].
        PRICE is the unit's final price (discount and tax in), PRICE_EXCLUSIVE the same without the
        tax: a row whose tax is included is written at PRICE, one whose tax is added on top at
        PRICE_EXCLUSIVE, so the document's totals are the deal's. Discounts are in both prices."""
        if entity.type != "deal":
            raise PermanentApiError(f"Bitrix24: product rows are read from deals, not from a {entity.type}")
        body = self.call("crm.deal.productrows.get", {"id": _id(entity)})
        rows = []
        for row in (body or {}).get("result") or []:
            rate = row.get("TAX_RATE")
            included = str(row.get("TAX_INCLUDED") or "Y").upper() == "Y"
            rows.append({"name": row.get("PRODUCT_NAME") or row.get("ORIGINAL_PRODUCT_NAME") or "",
                         "quantity": row.get("QUANTITY", 1), "unit": row.get("MEASURE_NAME") or "",
                         "price": row.get("PRICE") if included or rate in (None, "") else row.get("PRICE_EXCLUSIVE"),
                         "vat_rate": None if rate in (None, "") else rate, "vat_included": included})
        return rows


# --- helpers -------------------------------------------------------------------------------------

def _body(resp) -> dict[str, Any]:
    """The JSON answer, or the text as an error when a proxy or gateway answered instead."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"error": "", "error_description": resp.text[:300]}


def _parent_binding(bindings: Any) -> dict[str, str] | None:
    """A task's first deal, lead, contact or company binding ("D_410") as {"type", "id"}."""
    kinds = {prefix: etype for etype, prefix in TASK_BINDING.items()}
    for binding in bindings or []:
        prefix, _, rid = str(binding).partition("_")
        if prefix in kinds and rid.isdigit():
            return {"type": kinds[prefix], "id": rid}
    return None


def _crm(entity_type: str) -> str:
    if entity_type not in CRM_TYPES:
        raise PermanentApiError(f"Bitrix24 CRM has no {entity_type!r} records (expected one of "
                                f"{', '.join(sorted(CRM_TYPES))})")
    return f"crm.{entity_type}"


def _owner_type(entity_type: str) -> int:
    _crm(entity_type)
    return OWNER_TYPE[entity_type]


def _moment(value: float | str) -> datetime:
    """An aware datetime from unix time or ISO 8601 (Bitrix24 writes times with the portal's offset;
    a time without one is read as UTC)."""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(value), timezone.utc)


def _id(entity: Entity) -> int:
    if not str(entity.id).isdigit():
        raise PermanentApiError(f"Bitrix24 ids are numbers, not {entity.id!r} ({entity.type})")
    return int(entity.id)


def _num(value: Any) -> Any:
    return int(value) if str(value).isdigit() else value


def _as_entity(entity_type: str, value: Entity | str | int) -> Entity:
    return value if isinstance(value, Entity) else Entity(entity_type, str(value))


def _binding(target: Any) -> str:
    """An entity (Entity, {"type", "id"}, or "D_10" as is) → its UF_CRM_TASK value."""
    if isinstance(target, str) and re.fullmatch(r"[A-Z]+\d*_\d+", target):
        return target
    if isinstance(target, dict):
        target = Entity(str(target.get("type")), str(target.get("id")))
    if not isinstance(target, Entity) or target.type not in TASK_BINDING:
        raise PermanentApiError(f"cannot bind a task to {target!r} (deal, lead, contact or company)")
    return f"{TASK_BINDING[target.type]}_{_id(target)}"


def _stage_candidates(stages: dict[str, Any], entity_type: str, stage: str,
                      pipeline: str | None) -> list[tuple[str, str | None]]:
    """Every (STATUS_ID, category) the stage may mean; exact STATUS_ID matches win over names."""
    if entity_type == "lead":
        pool = [(sid, name, None) for sid, name in stages["lead"].items()]
    else:
        pool = [(sid, name, cid) for cid, cat in stages["deal"].items() if pipeline in (None, cid, cat["name"])
                for sid, name in cat["stages"].items()]
    by_id = [(sid, cid) for sid, name, cid in pool if sid == stage]
    return by_id or [(sid, cid) for sid, name, cid in pool if name == stage]


def _stage_list(category_id: Any) -> str:
    """crm.status.list ENTITY_ID of a funnel's stages: DEAL_STAGE (default) or DEAL_STAGE_{id} (crm-deal-update.md)."""
    return "DEAL_STAGE" if str(category_id) == "0" else f"DEAL_STAGE_{category_id}"


def _status_names(rows: Any) -> dict[str, str]:
    return {str(r["STATUS_ID"]): r["NAME"] for r in rows or [] if isinstance(r, dict)}


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _unix(value: Any) -> float | None:
    """DATE_CREATE ("2024-02-26T00:00:00+02:00") as unix seconds, to order contacts by age."""
    try:
        return datetime.fromisoformat(str(value)).timestamp() if value else None
    except ValueError:
        return None


def _ref(data: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, ""):
        data[key] = {"id": str(value)}


def _record_name(rec: dict[str, Any]) -> str | None:
    """TITLE for deals, leads and companies; NAME LAST_NAME for contacts."""
    if rec.get("TITLE"):
        return rec["TITLE"]
    return " ".join(filter(None, (rec.get("NAME"), rec.get("LAST_NAME")))) or None


def _enum_text(info: dict[str, Any], value: Any) -> Any:
    items = info.get("items") or {}
    if isinstance(value, list):
        return [items.get(str(v), v) for v in value]
    return items.get(str(value), value) if items else value


def _enum_id(info: dict[str, Any], value: Any) -> Any:
    ids = {text: item_id for item_id, text in (info.get("items") or {}).items()}
    if isinstance(value, list):
        return [ids.get(v, v) for v in value]
    return ids.get(value, value) if isinstance(value, str) else value
