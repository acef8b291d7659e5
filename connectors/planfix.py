"""Planfix: scenario webhooks in (tasks, comments, files, contacts), REST API v2 out.

Planfix has no fixed webhook format: a scenario's "HTTP request" action sends whatever body the
integrator composes from variables such as {{Задача.Номер}}. crmbridge defines that body
(docs/connectors/planfix.md) and parses exactly it, as JSON or form-encoded with bracket keys
(`task[id]=1042`). Planfix signs nothing, so the caller proves itself with the connection's
secret: `secret` in the body, `token` in the URL, or an X-Crmbridge-Token header.
Planfix sends an account's requests one at a time; after an answer other than 200 it retries at
+15 min, +30 min, +1 h, +1 h and sends nothing from the account for 3 minutes
(planfix-docs Интеграции/HTTP-запросы.md), so the receiver answers at once and never waits.
Samples: tests/payloads/planfix/.

Id grammar (what may reach a URL of the REST API): a task's `id` is its number, a positive decimal
integer (REST v2 `GET /task/{id}`: "id int — Number of task"); a contact's is its number too, which the
API also takes in the generic form (`GET /contact/{id}`: "contact:12 OR 12"), read here as the number
(saranchyev/planfix-rest-api-generated docs/Api/TaskApi.md, ContactApi.md, generated from
help.planfix.com/restapidocs). A comment's and a file's ids are positive integers as well. A reference inside the body (status,
responsible, author, project, contact) may carry REST v2's generic person id, `user:5`, `contact:6`,
`group:3` (API-REFERENCE §3.1), or a plain number (status ids start at 0, "Черновик"). Anything else: 400.
"""
from __future__ import annotations

import difflib
import hashlib
import html
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import requests

from connectors.base import (
    check_secret, BadPayload, BaseClient, Changed, Connection, Entity, Event, PermanentApiError, RawWebhook,
    RetryableApiError, answered_error, contact_matches, retry_after_header, event_id, indexed, parse_json,
    parse_nested_form, phone_digits, positive_id, segment, unique_keys, utc_iso, written_key,
)

SOURCE = "planfix"
CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded")
BASE_URL_REQUIRED = True  # https://<account>.planfix.com/rest (REST_API_Введение.md)
TOKEN_HEADER = "X-Crmbridge-Token"

ENTITIES = ("task", "contact")
ACTIONS = {"created": "entity.created", "updated": "entity.updated", "deleted": "entity.deleted",
           "status_changed": "stage.changed", "comment_added": "note.added", "file_added": "file.added"}
# Without `at` in the body two identical changes can only be told apart in time: dedupe them
# over Planfix's retry ladder (15 + 30 + 60 + 60 min) instead of days.
RETRY_LADDER = 3 * 3600
TRUE_WORDS = {"1", "true", "yes", "y", "on", "+", "да", "так"}
LOCAL_TIME = re.compile(r"(\d{1,2})[.-](\d{1,2})[.-](\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")
TAG = re.compile(r"<[^>]+>")
BREAK = re.compile(r"<br\s*/?>|</p>|</div>|</li>", re.IGNORECASE)
ENTITY_REF = re.compile(r"&(#\d+|#x[0-9a-f]+|[a-z]+);", re.IGNORECASE)
LINK = re.compile(r"<a\s[^>]*href=\"([^\"]+)\"[^>]*>(.*?)</a>", re.IGNORECASE | re.DOTALL)
REF_ID = re.compile(r"(?:(?:user|contact|group):)?[0-9]{1,19}")   # see "Id grammar" above


# --- webhooks in ------------------------------------------------------------------------------

def verify(raw: RawWebhook, connection: Connection) -> None:
    """Compare the header, URL or body secret with the connection's, in constant time."""
    given = raw.headers.get(TOKEN_HEADER) or raw.query.get("token") or _body(raw).get("secret")
    check_secret(given, connection, f"missing or wrong secret (body 'secret', URL 'token' or {TOKEN_HEADER} header)")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One scenario request → one Event, plus one file.added per file a comment carries."""
    body = _body(raw)
    name = _text(body.get("event")) or ""
    entity_type, _, action = name.partition(".")
    kind = ACTIONS.get(action)
    if entity_type not in ENTITIES or kind is None:
        raise BadPayload(f"event {name!r} is not one crmbridge knows; expected task.<action> or "
                         f"contact.<action>, <action> one of: {', '.join(ACTIONS)}")
    holder = body.get(entity_type) if isinstance(body.get(entity_type), dict) else {}
    if not _text(holder.get("id")):
        raise BadPayload(f"{entity_type}.id is missing (expected the {entity_type} number)")
    given = _text(holder.get("id")) or ""
    if entity_type == "contact" and given.startswith("contact:"):
        given = given[len("contact:"):]   # the generic form of a contact number
    record_id = positive_id(given, f"{entity_type}.id")
    data = _data(body, entity_type, holder, connection)
    _require(name, kind, entity_type, data)
    plain = {k: v for k, v in body.items() if k != "secret"}
    comment_id = (data.get("comment") or {}).get("id")
    base_id = (f"{connection.name}:comment:{comment_id}" if comment_id else
               event_id(connection.name, entity_type, holder["id"], action, plain))

    def event(key: str, event_kind: str, event_data: dict[str, Any]) -> Event:
        return Event(id=key, connection=connection.name, source=SOURCE, kind=event_kind,
                     entity=Entity(entity_type, record_id), data=event_data, raw=plain,
                     occurred_at=_when(body.get("at"), connection),
                     dedupe_window=None if comment_id or body.get("at") else RETRY_LADDER)

    events = [] if kind == "file.added" else [event(base_id, kind, data)]
    for n, file in enumerate(data.get("files", []) if kind in ("note.added", "file.added") else []):
        events.append(event(f"{base_id}:file:{file.get('id') or n}", "file.added", {**data, "file": file}))
    return events


def _require(name: str, kind: str, entity_type: str, data: dict[str, Any]) -> None:
    if kind == "stage.changed" and "stage" not in data:
        raise BadPayload(f"{entity_type}.status is missing for {name}")
    if kind == "note.added" and "comment" not in data:
        raise BadPayload(f"comment is missing for {name}")
    if kind == "file.added" and not data.get("files"):
        raise BadPayload(f"files is empty for {name}")


def _body(raw: RawWebhook) -> dict[str, Any]:
    """The request body as a dict, whichever of the two content types it came in."""
    if raw.content_type == "application/x-www-form-urlencoded":
        return parse_nested_form(raw.body)
    try:
        body = parse_json(raw.body)
    except BadPayload as exc:
        # A multi-line variable pasted into a JSON string may arrive with raw newlines (Planfix
        # does not document escaping); json's non-strict mode accepts them inside strings.
        body = _json_or(raw.body.decode("utf-8"), exc) if str(exc).startswith("body is not JSON") else exc
        if body is exc:
            raise
    if not isinstance(body, dict):
        raise BadPayload(f"expected a JSON object, found {type(body).__name__}")
    return body


def _data(body: dict[str, Any], entity_type: str, holder: dict[str, Any],
          connection: Connection) -> dict[str, Any]:
    """The recommended body in the common words rules read."""
    data: dict[str, Any] = {}
    for key in ("name", "email", "phone"):
        _put(data, key, _text(holder.get(key)))
    for key, wire in (("stage", "status"), ("previous_stage", "previous_status"),
                      ("responsible", "responsible"), ("project", "project")):
        _put(data, key, _ref(holder.get(wire)))
    if entity_type == "task":
        _put(data, "contact", _ref(body.get("contact")))
    fields = _listish(holder.get("fields"))
    fields = {str(k): v for k, v in fields.items()} if isinstance(fields, dict) else {}
    _put(data, "fields", fields)
    _put(data, "changed", _changed(body.get("changed"), fields))
    _put(data, "author", _ref(body.get("author")))
    wire_comment = body.get("comment") if isinstance(body.get("comment"), dict) else None
    if wire_comment is not None:
        data["comment"] = _comment(wire_comment, connection)
        data["text"] = data["comment"]["text"]
    _put(data, "files", _files(body.get("files")) or _files((wire_comment or {}).get("files")))
    return data


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", {}, []):
        data[key] = value


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value).strip() or None


def _ref(value: Any) -> dict[str, str] | None:
    """{"id", "name"} from an object, a name (a string) or an id (a JSON number)."""
    if isinstance(value, dict):
        found = {k: _text(value.get(k)) for k in ("id", "name") if _text(value.get(k))} or None
        if found and "id" in found and not REF_ID.fullmatch(found["id"]):
            raise BadPayload(f"reference id {found['id'][:40]!r} is neither a number nor user:/contact:/group:<number>")
        return found
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise BadPayload(f"reference id {value} is negative")
        return {"id": str(value)}
    text = _text(value)
    return {"name": text} if text else None


def _listish(value: Any) -> Any:
    """JSON text decoded, and a form list ({"0": …, "1": …}) made a list; anything else as is."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        value = _json_or(value.strip(), value)
    if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
        return indexed(value)
    return value


def _changed(value: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """{field name: new value}, from an object or from a list (or comma list) of names."""
    value = _listish(value)
    if isinstance(value, str):
        value = re.split(r"[,;\n]", value)
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    names = [str(n).strip() for n in value if str(n).strip()] if isinstance(value, list) else []
    return {n: fields.get(n) for n in names}


def _comment(value: dict[str, Any], connection: Connection) -> dict[str, Any]:
    """{id, text, author, for_client}; a text starting with options.client_marker is for the client."""
    original = _text(value.get("text")) or ""
    text = plain_text(original)
    for_client = _truthy(value.get("for_client"))
    marker = str((connection.options or {}).get("client_marker") or "").strip()
    if marker and text.lower().startswith(marker.lower()):
        for_client, text = True, text[len(marker):].lstrip(" :—-\n")
    ident = _text(value.get("id"))
    comment = {"id": ident and positive_id(ident, "comment.id"), "text": text, "author": _ref(value.get("author")),
               "for_client": for_client}
    if TAG.search(original):
        comment["html"] = original
    return comment


def plain_text(text: str) -> str:
    """Planfix comment HTML (<p>, <br>, entities) as plain text; plain text stays as it is."""
    if not TAG.search(text) and not ENTITY_REF.search(text):
        return text.strip()
    text = html.unescape(TAG.sub("", BREAK.sub("\n", text)))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.splitlines())).strip()


def _files(value: Any) -> list[dict[str, str]]:
    """[{"id", "name", "url"}] from a list, a form list, JSON text, HTML links or one name a line."""
    value = _listish(value)
    if isinstance(value, str):
        links = LINK.findall(value)
        value = ([{"url": url, "name": plain_text(name)} for url, name in links] if links
                 else re.split(r"\n|<br\s*/?>", value))
    files = []
    for item in value if isinstance(value, list) else [value] if isinstance(value, dict) else []:
        item = item if isinstance(item, dict) else {"name": item}
        file = {k: _text(item.get(k)) for k in ("id", "name", "url") if _text(item.get(k))}
        if "id" in file:
            positive_id(file["id"], "file id")
        if file:
            files.append(file)
    return files


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value or "").strip().lower() in TRUE_WORDS


def _json_or(text: str, default: Any) -> Any:
    try:
        return json.loads(text, strict=False, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError):
        return default


def _when(value: Any, connection: Connection) -> str:
    """The body's `at` (ISO, unix, or 24-11-2025 14:05 from %%%СЕЙЧАС()%%%) as ISO UTC; else now."""
    text = _text(value) or ""
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return utc_iso(text)
    local = LOCAL_TIME.fullmatch(text)
    try:
        moment = (datetime(*(int(part or 0) for part in (local[3], local[2], local[1], *local.groups()[3:])))
                  if local else datetime.fromisoformat(text))
    except ValueError:
        return utc_iso()
    if moment.tzinfo is None:  # read in the account's zone, if the connection names one
        moment = moment.replace(tzinfo=account_zone(connection))
    return moment.astimezone(timezone.utc).isoformat()


def option_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """`options.deals` (leads as tasks, Client.open_deals), checked at start-up (config/connections.py,
    with file:line): a mapping of process, status and contact_field, each a name or an id."""
    deals = options.get("deals")
    if deals is None:
        return []
    if not isinstance(deals, dict):
        return [("deals", f"expected a mapping such as {{process: Продажі, status: Нова}}, found {deals!r}")]
    found = [("deals", f"unknown key {key!r}; expected one of: {', '.join(DEAL_OPTIONS)}"
                       + "".join(f'; did you mean "{n}"?' for n in difflib.get_close_matches(str(key), DEAL_OPTIONS, 1)))
             for key in deals if key not in DEAL_OPTIONS]
    found += [("deals", f"{key}: expected a name or an id, found {value!r}") for key, value in deals.items()
              if key in DEAL_OPTIONS and (isinstance(value, bool) or not isinstance(value, (str, int))
                                          or not str(value).strip())]
    if deals.get("status") not in (None, "") and not str(deals["status"]).isdigit() and not deals.get("process"):
        found.append(("deals", f"status {deals['status']!r} is named: name the process too (a status belongs to one)"))
    return found


# --- REST API v2 out --------------------------------------------------------------------------

FAILED = {"fail", "failure", "error"}
WRITTEN_TTL = 30 * 24 * 3600  # how long the bridge remembers the comments it wrote (echo suppression)
DAILY_LIMIT = 22  # "daily request limit exhausted" (REST API error codes; API-REFERENCE §3.1)
# final statuses of Planfix's default task process (ru, uk): overdue_tasks skips tasks in them
CLOSED_STATUSES = ("Завершенная", "Завершена", "Выполненная", "Виконана", "Отмененная", "Скасована",
                   "Отклоненная", "Відхилена")
MAX_LIST_PAGES = 200   # 20,000 tasks: a guard against a server that always answers a full page
FIELDS = {"task": "id,name,description,status,processId,assigner,assignees,parent,template,project,"
                  "counterparty,endDateTime",
          "contact": "id,name,midname,lastname,email,phones,telegram,position,isCompany,description"}
# Complex task filter types (planfix-docs REST_API__Сложные_фильтры_задач.md): 38 "Дата последнего
# изменения"; 79 "Дата последнего изменения или комментария" would also list tasks that only got a
# comment, which a catch-up cannot use (it compares status, responsible and fields).
CHANGED_FILTER = 38
PROJECT_FILTER, PARENT_FILTER = 5, 73   # the same page: "project" and "parent task", operator equal
READ_BACK_SLACK = 120   # seconds find_task/find_note look before `since`: times to the minute, two clocks
CONTACT_FILTERS = {"phone": 4003, "email": 4005, "inbox_sender": 4101}  # find_or_create, see Client
# A lead is a task (attach_to_deal, new_deals; see Client.open_deals): task filter types 7
# "Контрагент" (value "contact:N"), 108 "Пользовательское поле типа Контакт" (`field`, value
# "contact:N") and 24 "Процесс" (the process id), operator equal (REST_API__Сложные_фильтры_задач.md).
COUNTERPARTY_FILTER, CONTACT_FIELD_FILTER, PROCESS_FILTER = 7, 108, 24
CONTACT_FIELD_TYPE = 10   # "Контакт" (REST_API_Типы_пользовательских_полей.md; API-REFERENCE §3.1)
DEAL_OPTIONS = ("process", "status", "contact_field")
MAX_PAGES = 1000  # 100 000 tasks a look: a guard, not a limit one should meet


class Client(BaseClient):
    """Actions on one Planfix account through REST API v2; names are resolved from cached metadata."""

    rate_per_second = 1  # "1 запрос в секунду" (planfix-docs Интеграции/REST_API_Введение.md)
    docs_url = "https://help.planfix.com/restapidocs/"
    capabilities = frozenset({
        "get_entity", "changed_since", "set_fields", "move_to_stage", "create_task", "add_note",
        "add_chat_comment", "download", "set_responsible", "delete_entity", "search_contacts", "add_contact",
        "link_contact", "read_task", "project_tasks", "set_status", "find_task", "find_note", "overdue_tasks",
        "find_contact", "open_deals", "add_deal", "rule_context",
        "upload_file", "attach_file",
        "find_tasks", "process_id",
    })

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.credentials.get('token', '')}"}

    def idempotent(self, method: str, path: str) -> bool:
        """Planfix reads lists and updates records by POST too (/task/list, /task/{id}); a POST creates
        only where the path ends in a slash: /task/, /contact/, /{task|contact}/{id}/comments/. (An
        upload, POST /file/, made twice leaves a file nothing names: upload_file retries it.)"""
        return not (method.upper() == "POST" and path.endswith("/"))

    def check(self, resp, what: str, *, idempotent: bool = True) -> None:
        """Errors come as {result, code, error} (docs) or {result: fail|failure, message} (seen in the wild).
        A 5xx to a create is uncertain (UncertainApiError): Planfix may have made it."""
        body = _json_body(resp)
        if resp.status_code < 400 and str(body.get("result", "")).lower() not in FAILED:
            return
        message = f"{what}: HTTP {resp.status_code}: {self.error_message(resp)}"
        if str(body.get("code")) == str(DAILY_LIMIT):  # the quota comes back only the next day
            raise RetryableApiError(message, status=resp.status_code, retry_after=_until_tomorrow())
        if resp.status_code == 429 or resp.status_code >= 500:
            raise answered_error(message, resp.status_code, retry_after_header(resp), idempotent=idempotent)
        raise PermanentApiError(message, status=resp.status_code)

    def error_message(self, resp) -> str:
        body = _json_body(resp)
        text = body.get("error") or body.get("message")
        if not text:
            return resp.text[:300]
        return f"Planfix code {body['code']}: {text}" if body.get("code") is not None else str(text)

    # --- reading -------------------------------------------------------------------------

    def get_entity(self, entity: Entity) -> dict[str, Any] | None:
        """GET /task/{id} or /contact/{id} with every custom field, in the common shape."""
        if self.record_only:
            return None
        kind = _kind(entity)
        ids = [item["id"] for item in self.catalog(f"customfield/{kind}", "customfields")]
        resp = self.request("GET", f"/{kind}/{segment(entity.id)}", params={"fields": ",".join([FIELDS[kind], *ids])})
        item = _json_body(resp).get(kind) or {}
        return self.normalize_task(item) if kind == "task" else normalize_contact(item)

    def normalize_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """A REST task in the common shape; a status without its name gets it from the process."""
        snap: dict[str, Any] = {"id": str(task.get("id")), "name": task.get("name"),
                                "description": plain_text(task.get("description") or "")}
        status, process = task.get("status") or {}, task.get("processId")
        if status:
            sid = None if status.get("id") is None else str(status["id"])
            name = status.get("name") or next((s["name"] for s in self.catalog(
                f"process/task/{process}/statuses", "statuses") if s["id"] == sid), None) if process else None
            snap["stage"] = {k: v for k, v in (("id", sid), ("name", name)) if v}
        if process:
            snap["pipeline"] = {"id": str(process)}
        users = (task.get("assignees") or {}).get("users") or []
        snap["assignees"] = [_person(u) for u in users]
        if users:
            snap["responsible"] = _person(users[0])
        for key in ("assigner", "counterparty", "project", "parent", "template"):
            if task.get(key):
                snap[key] = _person(task[key])
        if task.get("counterparty"):  # the client, as the contact number webhooks and rules use
            snap["contact"] = {**snap["counterparty"], "id": snap["counterparty"]["id"].removeprefix("contact:")}
        snap["deadline"] = (task.get("endDateTime") or {}).get("datetime")
        snap["fields"] = _custom_values(task.get("customFieldData"))
        return snap

    def list_comments(self, entity: Entity) -> list[dict[str, Any]]:
        """The first 100 comments, oldest first (POST /{task|contact}/{id}/comments/list)."""
        body = {"offset": 0, "pageSize": 100, "fields": "id,description,owner,dateTime,files,isHidden",
                "typeList": "Comments", "resultOrder": "Asc"}
        resp = self.request("POST", f"/{_kind(entity)}/{segment(entity.id)}/comments/list", json_body=body)
        return [{"id": str(c.get("id")), "text": plain_text(c.get("description") or ""),
                 "author": _person(c.get("owner") or {}), "at": (c.get("dateTime") or {}).get("datetime"),
                 "files": [{"id": str(f.get("id")), "name": f.get("name")} for f in c.get("files") or []]}
                for c in _json_body(resp).get("comments") or []]

    # --- catch-up (worker.catch_up) -------------------------------------------------------------

    def changed_since(self, since: str) -> list[Changed] | None:
        """Tasks changed after `since` (ISO 8601), every page.

        POST /task/list with the complex task filter type 38, "Дата последнего изменения", operator
        "gt", value {"dateType": "otherDate_withTime", "dateFrom": "dd-mm-yyyy hh:mm"}; Planfix reads
        that time in the zone of the token's user (planfix-docs REST_API__Сложные_фильтры_задач.md,
        github.com/electronic777/planfix-docs). It is given in options.timezone, to the minute, one
        minute early: a change is listed twice rather than missed, and the worker dedupes it.
        `modified` is the task's dateOfLastUpdate (TimePoint; TaskResponse in
        saranchyev/planfix-rest-api-generated docs/Model/TaskResponse.md) plus a digest of its
        status, assignees and custom fields, since Planfix's times are to the minute.
        """
        zone = account_zone(self.connection)
        moment = datetime.fromisoformat(since)
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo("UTC"))).astimezone(zone)
        start = moment.replace(second=0, microsecond=0) - timedelta(minutes=1)
        flt = {"type": CHANGED_FILTER, "operator": "gt",
               "value": {"dateType": "otherDate_withTime", "dateFrom": start.strftime("%d-%m-%Y %H:%M")}}
        found: dict[str, Changed] = {}
        for page in range(MAX_PAGES):
            resp = self.request("POST", "/task/list", json_body={
                "offset": page * 100, "pageSize": 100, "filters": [flt],
                "fields": "id,dateOfLastUpdate,status,assignees,customFieldData"})
            if resp is None:  # record-only
                return None
            items = [t for t in _json_body(resp).get("tasks") or [] if isinstance(t, dict) and t.get("id") is not None]
            fresh = [t for t in items if str(t["id"]) not in found]
            for task in fresh:
                found[str(task["id"])] = Changed("task", str(task["id"]), _modified(task), task)
            if len(items) < 100 or not fresh:  # the last page (or a server that ignores offset)
                break
        return list(found.values())

    # --- metadata, cached in Redis -------------------------------------------------------------

    def catalog(self, path: str, key: str, paged: bool = False) -> list[dict[str, Any]]:
        """[{"id", "name", "type"}] of custom fields, statuses, processes or users, cached."""
        def fetch() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            for page in range(10 if paged else 1):  # list methods give at most 100 items a call
                resp = (self.request("POST", f"/{path}", json_body={
                    "offset": page * 100, "pageSize": 100, "fields": "id,name,lastname"})
                        if paged else self.request("GET", f"/{path}"))
                items = [i for i in _json_body(resp).get(key) or [] if isinstance(i, dict) and "id" in i]
                found += [{"id": str(i["id"]), "type": i.get("type"),
                           "name": " ".join(str(p) for p in (i.get("name"), i.get("lastname")) if p)}
                          for i in items]
                if len(items) < 100:
                    break
            return found
        return self.cached(path, fetch)

    def lookup(self, path: str, key: str, wanted: Any, missing: str, paged: bool = False) -> dict[str, Any]:
        """The catalog item whose id or name is `wanted`; the cache is refreshed once on a miss."""
        for attempt in range(2):
            for item in self.catalog(path, key, paged):
                if str(wanted) in (item["id"], item["name"]):
                    return item
            self.forget(path)
        raise PermanentApiError(missing)

    def resolve_user(self, user: Any) -> str | None:
        """A user name, id or "user:N" → "user:N" (people ids are prefixed strings in Planfix)."""
        text = str(user if user is not None else "").strip()
        if not text or re.fullmatch(r"(user|contact):\d+", text):
            return text or None
        if text.isdigit():
            return f"user:{text}"
        return "user:" + self.lookup("user/list", "users", text, f"Planfix has no user {text!r}", paged=True)["id"]

    def resolve_field(self, kind: str, field: Any) -> dict[str, Any]:
        if str(field).isdigit():
            return {"id": int(field), "type": None}
        item = self.lookup(f"customfield/{kind}", "customfields", field, f"Planfix has no {kind} field {field!r}")
        return {"id": int(item["id"]), "type": item["type"]}

    def resolve_status(self, entity: Entity, stage: Any, pipeline: Any = None) -> int:
        """A status name in the task's process (or the pipeline named) → its id."""
        if str(stage).isdigit():
            return int(stage)
        process = pipeline
        if pipeline not in (None, "") and not str(pipeline).isdigit():
            process = self.lookup("process/task", "processes", pipeline,
                                  f"Planfix has no task process {pipeline!r}")["id"]
        if process in (None, "") and entity.type != "task":   # a new task in a project: no task to ask
            raise PermanentApiError(f"Planfix status {stage!r} is named: name the task process (pipeline) too")
        if process in (None, ""):
            task = _json_body(self.request("GET", f"/task/{segment(entity.id)}", params={"fields": "id,processId"}))
            process = (task.get("task") or {}).get("processId")
            if not process:
                raise PermanentApiError(f"Planfix task {entity.id} has no process; name the pipeline")
        return int(self.lookup(f"process/task/{process}/statuses", "statuses", stage,
                               f"Planfix process {process} has no status {stage!r}")["id"])

    # --- acting ---------------------------------------------------------------------------------

    def move_to_stage(self, entity: Entity, stage: str, pipeline: str | None = None,
                      current_pipeline: str | None = None) -> str | None:
        """POST /task/{id} {"status": {"id"}}: "done", or "queued" when Planfix answers 202. A status
        is set the same way in any process, so `current_pipeline` changes nothing."""
        if entity.type != "task":
            raise PermanentApiError(f"Planfix statuses belong to tasks, not to a {entity.type}")
        status = stage if self.record_only else self.resolve_status(entity, stage, pipeline)
        return _outcome(self.request("POST", f"/task/{segment(entity.id)}", json_body={"status": {"id": status}}))

    def set_fields(self, entity: Entity, fields: dict[str, Any]) -> str | None:
        """Custom fields by name or id (customFieldData); "queued" when Planfix answers 202."""
        kind = _kind(entity)
        return _outcome(self.request("POST", f"/{kind}/{segment(entity.id)}", json_body=self.custom_data(kind, fields)))

    def custom_data(self, kind: str, fields: dict[str, Any] | None) -> dict[str, Any]:
        if not fields:
            return {}
        return {"customFieldData": [{"field": {"id": n}, "value": v} if self.record_only else
                                    _field_value(self.resolve_field(kind, n), v) for n, v in fields.items()]}

    def add_note(self, entity: Entity, text: str, files: list[Any] | None = None,
                 for_client: bool = False) -> int | None:
        """A comment (POST /{task|contact}/{id}/comments/ — the trailing slash is part of the path)."""
        body: dict[str, Any] = {"description": _html(text)}
        if files:
            body["files"] = [{"id": _int_or(f.get("id") if isinstance(f, dict) else f)} for f in files]
        if for_client:  # addressed to the client: the task's counterparty, or the contact itself
            body["recipients"] = {"users": [{"id": self.client_of(entity)}]}
        return _created_id(self.request("POST", f"/{_kind(entity)}/{segment(entity.id)}/comments/", json_body=body))

    def add_chat_comment(self, entity: Entity, text: str, uploads: list[dict[str, Any]] | None = None) -> int | None:
        """A comment carrying a chat message and its files: each file is uploaded (POST /file/),
        then the comment names them. Its id is remembered, so that the comment scenario's webhook
        for it is known as the bridge's own and not sent back to the chat."""
        body: dict[str, Any] = {"description": _html(text)}
        ids = [self.upload_file(u["content"], u["name"]) for u in uploads or []]
        if any(ids):
            body["files"] = [{"id": i} for i in ids if i]
        comment = _created_id(self.request("POST", f"/{_kind(entity)}/{segment(entity.id)}/comments/", json_body=body))
        if comment and self.store is not None:
            self.store.set(written_key(self.key_prefix, self.connection.name, "comment", comment), 1, ex=WRITTEN_TTL)
        return comment

    def upload_file(self, content: bytes, name: str, mime_type: str | None = None) -> int | None:
        """POST /file/ (multipart, field "file") → the new file's id (FileApi postFileUpload)."""
        if self.record_only:
            self.request("POST", "/file/", json_body={"file": f"<{len(content)} bytes: {name}>"})
            return None
        release = self.limiter(hold=self.hold_seconds) if self.limiter else None
        target = f"{(self.connection.base_url or '').rstrip('/')}/file/"
        try:
            part = (name, content, mime_type) if mime_type else (name, content)
            resp = self.session.post(target, files={"file": part}, headers=self.auth_headers(),
                                     timeout=self.timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            # an upload done twice leaves an extra file that nothing names: safe to try again
            raise RetryableApiError(f"POST /file/: {type(exc).__name__}") from None
        finally:
            if release:
                release()
        self.check(resp, "POST /file/")
        return _created_id(resp)

    def download(self, file_id: str, size: int | None = None) -> tuple[bytes, str] | None:
        """(content, name) of a Planfix file: GET /file/{id} for the name, GET /file/{id}/download."""
        if self.record_only:
            return None
        meta = _json_body(self.request("GET", f"/file/{segment(file_id)}", params={"fields": "id,name,size"})).get("file") or {}
        resp = self.request("GET", f"/file/{segment(file_id)}/download")
        return resp.content, str(meta.get("name") or f"file-{file_id}")

    def client_of(self, entity: Entity) -> str:
        """"contact:N" of the contact itself or of the task's counterparty."""
        if entity.type == "contact":
            return f"contact:{entity.id}"
        if self.record_only:
            return f"<counterparty of task {entity.id}>"
        task = _json_body(self.request("GET", f"/task/{segment(entity.id)}", params={"fields": "id,counterparty"}))
        who = str(((task.get("task") or {}).get("counterparty") or {}).get("id") or "")
        if not who:
            raise PermanentApiError(f"Planfix task {entity.id} has no counterparty to address the comment to")
        return who if ":" in who else f"contact:{who}"

    # --- read-back: did an uncertain create happen? (the executor settles UncertainApiError) -------

    def find_task(self, entity: Entity, text: str, since: float | str) -> int | None:
        """The id of a subtask of the task (or a task of the project) that create_task would name
        after `text`, made at or after `since` (its dateTime, a TimePoint to the minute), or None.
        POST /task/list with the complex filter 73 "parent task" (or 5 "project"), operator equal
        (planfix-docs REST_API__Сложные_фильтры_задач.md); a contact's tasks (create_task makes it
        their counterparty) by the filter 7 "Контрагент", value "contact:N". Anything else raises,
        so an uncertain task there is left to a person, not made twice."""
        kind = {"task": PARENT_FILTER, "project": PROJECT_FILTER, "contact": COUNTERPARTY_FILTER}.get(entity.type)
        if kind is None:
            raise PermanentApiError(f"Planfix: cannot read back the tasks of a {entity.type}")
        name, start = _task_name(text), self._read_back_start(since)
        value = f"contact:{entity.id}" if entity.type == "contact" else _int_or(entity.id)
        flt = {"type": kind, "operator": "equal", "value": value}
        for page in range(MAX_PAGES):
            resp = self.request("POST", "/task/list", json_body={
                "offset": page * 100, "pageSize": 100, "filters": [flt], "fields": "id,name,dateTime"})
            items = [t for t in _json_body(resp).get("tasks") or [] if isinstance(t, dict)]
            for task in items:
                made = self._moment(task.get("dateTime"))
                if task.get("name") == name and made is not None and made >= start:
                    return int(task["id"])
            if len(items) < 100:
                return None
        return None

    def find_note(self, entity: Entity, text: str, since: float | str) -> int | None:
        """The id of the task's (or contact's) comment with this text made at or after `since`, or
        None: POST /{task|contact}/{id}/comments/list, newest first (resultOrder Desc), until the
        comments are older than `since`."""
        want, start = plain_text(_html(text)), self._read_back_start(since)
        for page in range(MAX_PAGES):
            resp = self.request("POST", f"/{_kind(entity)}/{entity.id}/comments/list", json_body={
                "offset": page * 100, "pageSize": 100, "fields": "id,description,dateTime",
                "typeList": "Comments", "resultOrder": "Desc"})
            items = [c for c in _json_body(resp).get("comments") or [] if isinstance(c, dict)]
            moments = [self._moment(c.get("dateTime")) for c in items]
            for comment, made in zip(items, moments):
                if plain_text(comment.get("description") or "") == want and made is not None and made >= start:
                    return int(comment["id"])
            if len(items) < 100 or all(m is not None and m < start for m in moments):
                return None
        return None

    def _read_back_start(self, since: float | str) -> datetime:
        """`since` (unix time or ISO 8601) to the minute (Planfix's times are), READ_BACK_SLACK early."""
        if isinstance(since, str):
            moment = datetime.fromisoformat(since)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        else:
            moment = datetime.fromtimestamp(float(since), timezone.utc)
        return moment.replace(second=0, microsecond=0) - timedelta(seconds=READ_BACK_SLACK)

    def _moment(self, point: Any) -> datetime | None:
        """A TimePoint's moment: `datetime` (ISO; without an offset in the account's zone), or
        `date` + `time` ("dd-mm-yyyy", "hh:mm") in the account's zone; None when it has neither."""
        if not isinstance(point, dict):
            return None
        try:
            if point.get("datetime"):
                moment = datetime.fromisoformat(str(point["datetime"]).replace("Z", "+00:00"))
            elif point.get("date") and point.get("time"):
                moment = datetime.strptime(f"{point['date']} {point['time']}", "%d-%m-%Y %H:%M")
            else:
                return None
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=account_zone(self.connection))

    def create_task(self, entity: Entity, text: str, due: str | None = None, responsible: Any = None,
                    task_type: int | None = None, template: int | None = None, status: Any = None,
                    pipeline: Any = None, fields: dict[str, Any] | None = None) -> int | None:
        """POST /task/: a subtask of a task, or a task on a contact or project; a type is a template.
        `status` (a name in the process `pipeline`, or an id), `pipeline` (processId) and custom
        `fields` by name are set on the new task in the same request."""
        name = _task_name(text)
        task: dict[str, Any] = {"name": name}
        if due:
            task["endDateTime"] = _timepoint(due)
        if text.strip() != name:
            task["description"] = _html(text)
        if template or task_type:
            task["template"] = {"id": _int_or(template or task_type)}
        if status not in (None, ""):
            task["status"] = {"id": status if self.record_only else self.resolve_status(entity, status, pipeline)}
        if pipeline not in (None, ""):
            task["processId"] = _int_or(pipeline)
        user = responsible if self.record_only else self.resolve_user(responsible)
        if user:
            task["assignees"] = {"users": [{"id": user}]}
        link = {"task": ("parent", {"id": _int_or(entity.id)}), "project": ("project", {"id": _int_or(entity.id)}),
                "contact": ("counterparty", {"id": f"contact:{entity.id}"})}.get(entity.type)
        if link:
            task[link[0]] = link[1]
        task.update(self.custom_data("task", fields))
        return _created_id(self.request("POST", "/task/", json_body=task))

    def create_contact(self, name: str, fields: dict[str, Any] | None = None, **details: Any) -> int | None:
        """POST /contact/ with system fields (lastname, email, telegram…) and custom fields by name."""
        body = {"name": name, **details, **self.custom_data("contact", fields)}
        return _created_id(self.request("POST", "/contact/", json_body=body))

    # find_or_create (pipeline/steps/find_or_create.py): POST /contact/list with complex
    # contact filters (planfix-docs REST_API__Сложные_фильтры_контактов.md, github.com/electronic777/
    # planfix-docs): 4003 "Телефон" and 4005 "Email (частичное вхождение)", operator equal, a string
    # that the contact's value contains; 4101 "Пользовательское поле типа Строка" with `field` = the
    # field's id, equal. Planfix lists no creation time with a contact here: the oldest is the lowest id.
    # Phones are written as PhoneRequest {number, type: 1 mobile} (saranchyev/planfix-rest-api-generated
    # docs/Model/PhoneRequest.md); the task's client is TaskUpdateRequest.counterparty (API-REFERENCE §3.1).
    FIND_BY = ("phone", "email", "inbox_sender")

    def search_contacts(self, by: str, value: str, field: str | None = None) -> list[dict[str, Any]] | None:
        flt: dict[str, Any] = {"type": CONTACT_FILTERS[by], "operator": "equal"}
        wanted = "id,name,lastname,email,phones"
        if by == "inbox_sender":
            meta = self.resolve_field("contact", field) if not self.record_only else {"id": field, "type": 0}
            if meta.get("type") not in (None, 0):
                raise PermanentApiError(f"Planfix contact field {field!r} is not a line (Строка) field: "
                                        "the sender can only be matched in one")
            flt.update(field=meta["id"], value=value)
            wanted += f",{meta['id']}"
        else:   # "contains": the digits as Planfix may keep them, or the address as typed
            flt["value"] = phone_digits(value) if by == "phone" else value
        resp = self.request("POST", "/contact/list", json_body={"offset": 0, "pageSize": 100, "filters": [flt],
                                                                 "fields": wanted})
        if resp is None:
            return None
        found = []
        for c in _json_body(resp).get("contacts") or []:
            card = normalize_contact(c)
            if by == "inbox_sender":   # by the field's id: a list may name its fields or not
                card["fields"][field] = [d.get("value") for d in c.get("customFieldData") or []
                                         if str((d.get("field") or {}).get("id")) == str(flt["field"])]
            found.append({"id": card["id"], "name": card["name"], "created": None, "phones": card["phones"],
                          "emails": [card["email"]] if card.get("email") else [], "fields": card["fields"]})
        return found

    def add_contact(self, name: str, by: str, value: str, fields: dict[str, Any]) -> int | None:
        details = {"phone": {"phones": [{"number": value, "type": 1}]}, "email": {"email": value}}.get(by, {})
        return self.create_contact(name, fields, **details)

    def link_contact(self, entity: Entity, contact_id: str) -> str | None:
        if entity.type != "task":
            return f"Planfix: a contact is the client (counterparty) of a task, not of a {entity.type}"
        self.request("POST", f"/task/{segment(entity.id)}", json_body={"counterparty": {"id": f"contact:{contact_id}"}})
        return None

    # find_or_create kind: order (pipeline/steps/find_order.py): the tasks whose line (Строка) custom
    # field holds a value, POST /task/list with the complex task filter 101 "custom field of type
    # line", `field` = the field's id, operator equal (the task codes beside the contact ones, 4101:
    # popstas/planfix-mcp-server src/lib/extendFiltersWithCustomFields.ts typeCodeMap, task string 101).
    def find_tasks(self, field: str, value: str) -> list[dict[str, Any]] | None:
        """Every task whose custom field `field` (a line field, by name or id) equals `value`, in the
        common shape (status with its name, counterparty, dateTime as `created`), lowest id first."""
        meta = self.resolve_field("task", field) if not self.record_only else {"id": field, "type": 0}
        if meta.get("type") not in (None, 0):
            raise PermanentApiError(f"Planfix task field {field!r} is not a line (Строка) field: "
                                    "an order is found by the conversation kept in one")
        found: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            resp = self.request("POST", "/task/list", json_body={
                "offset": page * 100, "pageSize": 100,
                "filters": [{"type": 101, "field": meta["id"], "operator": "equal", "value": value}],
                "fields": "id,name,status,processId,assignees,counterparty,dateTime"})
            if resp is None:
                return None
            items = [t for t in _json_body(resp).get("tasks") or [] if isinstance(t, dict) and t.get("id") is not None]
            for task in items:
                snap = self.normalize_task(task)
                snap["created"] = (task.get("dateTime") or {}).get("datetime")
                found.append(snap)
            if len(items) < 100:
                break
        return sorted(found, key=lambda t: int(t["id"]) if str(t["id"]).isdigit() else 0)

    def process_id(self, process: Any) -> Any:
        """A task process by name (GET /process/task, cached) or id → its id, as POST /task/ takes it."""
        if process in (None, "") or str(process).isdigit() or self.record_only:
            return process
        return int(self.lookup("process/task", "processes", process, f"Planfix has no task process {process!r}")["id"])

    # --- leads as tasks (attach_to_deal, E1/D8; new_deals, E3) ---------------------------------
    # Planfix has no deals: a lead is a task of the contact, in the connection's sales process
    # (options.deals.process, e.g. "Продажі"), the contact being its counterparty (TaskUpdateRequest
    # .counterparty) or a task field of type Contact (options.deals.contact_field). Open is a status
    # of the type "Активный" (Задачи/Тип_статуса_задачи.md: a status is active or inactive, "для
    # отбора задач … в фильтрах"), given as `isActive` by GET /process/task/{id}/statuses (TaskStatus
    # in saranchyev/planfix-rest-api-generated docs/Model/TaskStatus.md; taskStatus.getListOfSet
    # "isActive — статус активен (1) или неактивен (0)" in planfix-docs).

    def deal_options(self) -> dict[str, Any]:
        deals = (self.connection.options or {}).get("deals")
        return deals if isinstance(deals, dict) else {}

    def contact_tasks(self, contact_id: str) -> list[dict[str, Any]]:
        """Every task of the contact (in the sales process, when one is named): POST /task/list with
        the filter 7 "Контрагент" (or 108 on options.deals.contact_field) and 24 "Процесс", every
        page of 100, with status, process, dateTime (made) and dateOfLastUpdate (changed)."""
        who = f"contact:{int(contact_id)}" if str(contact_id).isdigit() else str(contact_id)
        options = self.deal_options()
        if options.get("contact_field"):
            meta = self.resolve_field("task", options["contact_field"]) if not self.record_only else {
                "id": options["contact_field"], "type": CONTACT_FIELD_TYPE}
            if meta.get("type") not in (None, CONTACT_FIELD_TYPE):
                raise PermanentApiError(f"Planfix task field {options['contact_field']!r} is not a Contact field "
                                        f"(type {meta.get('type')}; expected {CONTACT_FIELD_TYPE})")
            filters = [{"type": CONTACT_FIELD_FILTER, "field": meta["id"], "operator": "equal", "value": who}]
        else:
            filters = [{"type": COUNTERPARTY_FILTER, "operator": "equal", "value": who}]
        if options.get("process") not in (None, ""):
            filters.append({"type": PROCESS_FILTER, "operator": "equal", "value": self.process_id(options["process"])})
        found: dict[str, dict[str, Any]] = {}
        for page in range(MAX_PAGES):
            resp = self.request("POST", "/task/list", json_body={
                "offset": page * 100, "pageSize": 100, "filters": filters,
                "fields": "id,name,status,processId,dateTime,dateOfLastUpdate"})
            if resp is None:
                return []
            items = [t for t in _json_body(resp).get("tasks") or [] if isinstance(t, dict) and t.get("id") is not None]
            fresh = [t for t in items if str(t["id"]) not in found]
            found.update({str(t["id"]): t for t in fresh})
            if len(items) < 100 or not fresh:
                break
        return list(found.values())

    def task_open(self, task: dict[str, Any]) -> bool:
        """Is the task's status an active one? The status's own `isActive` when the task gives it,
        else its process's statuses (cached); a status not found there is judged by its name
        (options.closed_statuses, default CLOSED_STATUSES)."""
        status = task.get("status") if isinstance(task.get("status"), dict) else {}
        if isinstance(status.get("isActive"), bool):
            return status["isActive"]
        process, sid = task.get("processId"), None if status.get("id") is None else str(status["id"])
        if process not in (None, "") and sid is not None:
            active = self.cached(f"process/task/{process}/active", lambda: {
                str(s["id"]): bool(s.get("isActive", True)) for s in _json_body(self.request(
                    "GET", f"/process/task/{segment(process)}/statuses")).get("statuses") or []
                if isinstance(s, dict) and "id" in s})
            if sid in active:
                return active[sid]
        name = status.get("name") or (self.normalize_task(task).get("stage") or {}).get("name")
        closed = {str(n).casefold() for n in (self.connection.options or {}).get("closed_statuses") or CLOSED_STATUSES}
        return str(name or "").casefold() not in closed

    def open_deals(self, contact_id: str) -> list[dict[str, Any]]:
        """The contact's open leads (contact_tasks whose status is active), most recently changed
        first: [{"type": "task", "id", "name", "modified": dateOfLastUpdate as ISO}]. A comment does
        not change dateOfLastUpdate (filter 79 "… или комментария" is another date), so an order
        commented on yesterday is not "more recent" than one moved today."""
        found = []
        for task in self.contact_tasks(contact_id):
            if not self.task_open(task):
                continue
            changed = self._moment(task.get("dateOfLastUpdate")) or self._moment(task.get("dateTime"))
            found.append({"type": "task", "id": str(task["id"]), "name": task.get("name"),
                          "modified": changed.isoformat() if changed else None})
        return sorted(found, key=lambda d: (d["modified"] or "", int(d["id"]) if d["id"].isdigit() else 0),
                      reverse=True)

    deal_type = "task"

    def add_deal(self, title: str, contact_id: str, fields: dict[str, Any] | None = None) -> int | None:
        """POST /task/ {"name", "processId", "status"?, "counterparty": {"id": "contact:N"} | the
        Contact field, "customFieldData"}: a lead in the sales process (options.deals.process), in
        options.deals.status (else the process's own first status), with `fields` by name; its id.
        A Contact field is written as {"id": N} (the shape API-REFERENCE §3.1 records from client code)."""
        options = self.deal_options()
        task: dict[str, Any] = {"name": _task_name(title)}
        if options.get("process") not in (None, ""):
            task["processId"] = self.process_id(options["process"])
        if options.get("status") not in (None, ""):
            task["status"] = {"id": options["status"] if self.record_only else self.resolve_status(
                Entity("contact", str(contact_id)), options["status"], task.get("processId"))}
        data = self.custom_data("task", fields).get("customFieldData", [])
        if options.get("contact_field"):
            meta = self.resolve_field("task", options["contact_field"]) if not self.record_only else {
                "id": options["contact_field"]}
            data.append({"field": {"id": meta["id"]}, "value": {"id": _int_or(contact_id)}})
        else:
            task["counterparty"] = {"id": f"contact:{contact_id}"}
        if data:
            task["customFieldData"] = data
        return _created_id(self.request("POST", "/task/", json_body=task))

    def rule_context(self, entity: Entity, needs: set[str] | frozenset[str]) -> dict[str, Any]:
        """What rule conditions read besides the record: a task's client's other leads (`deals`:
        new_deals, entity.client_deals). The rest is not read on Planfix here."""
        if "deals" in needs and entity.type == "task" and not self.record_only:
            return {"client_deals": self.client_deals(entity)}
        return {}

    def client_deals(self, task: Entity) -> list[dict[str, Any]]:
        """The other leads of the task's client (E3's `new_deals`): GET /task/{id} for its counterparty
        (or Contact field), then contact_tasks: [{"id", "name", "created": dateTime, "open"}], newest
        first. A task without a client has none."""
        field = self.deal_options().get("contact_field")
        ids = self._field_ids([field]) if field else {}
        resp = self.request("GET", f"/task/{segment(task.id)}", params={"fields": ",".join(["id,counterparty", *ids])})
        raw = _json_body(resp).get("task") or {}
        if field:
            value = next((d.get("value") for d in raw.get("customFieldData") or []
                          if str((d.get("field") or {}).get("id")) in ids), None)
            value = value[0] if isinstance(value, list) and value else value
            who = str((value or {}).get("id") or "") if isinstance(value, dict) else str(value or "")
        else:
            who = str((raw.get("counterparty") or {}).get("id") or "")
        who = who.removeprefix("contact:")
        if not who.isdigit():
            return []
        found = []
        for other in self.contact_tasks(who):
            if str(other["id"]) == str(task.id):
                continue
            made = self._moment(other.get("dateTime"))
            found.append({"id": str(other["id"]), "name": other.get("name"),
                          "created": made.isoformat() if made else None, "open": self.task_open(other)})
        return sorted(found, key=lambda d: int(d["id"]) if d["id"].isdigit() else 0, reverse=True)

    def delete_entity(self, entity: Entity) -> str | None:
        """Mark a task or contact deleted: the REST API has no DELETE method (TaskApi, ContactApi in
        saranchyev/planfix-rest-api-generated); POST /{task|contact}/{id} {"isDeleted": true}
        (TaskUpdateRequest / ContactRequest `isDeleted`). "done", "queued" (202), or "gone" when the
        record does not exist: HTTP 404, or error code 1000 ("task not exist") / 2000 (the first of
        the contact codes 2000-2006; API-REFERENCE §3.1), so a repeated step is done."""
        kind = _kind(entity)
        try:
            return _outcome(self.request("POST", f"/{kind}/{segment(entity.id)}", json_body={"isDeleted": True}))
        except PermanentApiError as exc:
            if exc.status == 404 or re.search(r": Planfix code (1000|2000): ", str(exc)):
                return "gone"
            raise

    def set_responsible(self, entity: Entity, user: Any) -> str | None:
        """One user becomes responsible: a task's assignees, POST /task/{id} {"assignees": {"users":
        [{"id": "user:N"}]}} (TaskUpdateRequest.assignees, PeopleRequest; API-REFERENCE §3.1), or a
        contact's supervisors (curators), POST /contact/{id} {"supervisors": {…}} (ContactRequest
        .supervisors, saranchyev/planfix-rest-api-generated). The user by name, id or "user:N"."""
        key = {"task": "assignees", "contact": "supervisors"}[_kind(entity)]
        uid = user if self.record_only else self.resolve_user(user)
        if not uid:
            raise PermanentApiError("set_responsible: no user given")
        return _outcome(self.request("POST", f"/{segment(entity.type)}/{segment(entity.id)}", json_body={key: {"users": [{"id": uid}]}}))

    # --- projects, for pipeline/steps/start_next_task.py ------------------------------------------

    def read_task(self, entity: Entity, fields: list[str] | tuple[str, ...] = ()) -> dict[str, Any] | None:
        """GET /task/{id} with its name, project and process, and the custom `fields` named:
        the common shape, those fields by the names asked (None in record-only mode)."""
        ids = self._field_ids(fields)
        resp = self.request("GET", f"/task/{entity.id}", params={"fields": ",".join(
            ["id,name,project,processId", *ids])})
        if resp is None:
            return None
        return self._with_fields(_json_body(resp).get("task") or {}, ids)

    def project_tasks(self, project: Any, fields: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every task of a project (POST /task/list, complex task filter type 5 "Проект"), 100 a
        page, as read_task gives one."""
        ids = self._field_ids(fields)
        tasks: list[dict[str, Any]] = []
        for page in range(20):
            resp = self.request("POST", "/task/list", json_body={
                "offset": page * 100, "pageSize": 100,
                "filters": [{"type": 5, "operator": "equal", "value": _int_or(project)}],
                "fields": ",".join(["id,name,status,processId,assignees,endDateTime", *ids])})
            items = [t for t in _json_body(resp).get("tasks") or [] if isinstance(t, dict)]
            tasks += [self._with_fields(t, ids) for t in items]
            if len(items) < 100:
                break
        return tasks

    def overdue_tasks(self, before: str) -> list[dict[str, Any]]:
        """Tasks whose endDateTime is before `before` and whose status is not a closed one, oldest
        first: every page of POST /task/list {"offset", "pageSize": 100} ("list methods return at
        most 100 items", REST_API_Введение.md). Closed statuses are named by the connection's
        `options.closed_statuses` (default CLOSED_STATUSES: Planfix's own final statuses, in Russian
        and Ukrainian), compared without regard to case. A deadline without a time is overdue once
        its day is over (in the account's zone). Planfix has no deals: `deals_without_task` is not
        offered (start-up refuses a digest asking it)."""
        limit = datetime.fromisoformat(before)
        zone = account_zone(self.connection)
        closed = {str(n).casefold() for n in (self.connection.options or {}).get("closed_statuses") or CLOSED_STATUSES}
        found: list[dict[str, Any]] = []
        for page in range(MAX_LIST_PAGES):
            resp = self.request("POST", "/task/list", json_body={
                "offset": page * 100, "pageSize": 100,
                "fields": "id,name,status,processId,assignees,endDateTime,project"})
            items = [t for t in _json_body(resp).get("tasks") or [] if isinstance(t, dict)]
            for task in items:
                snap = self.normalize_task(task)
                due = _deadline(task.get("endDateTime") or {}, zone)
                if due is None or due >= limit or str((snap.get("stage") or {}).get("name") or "").casefold() in closed:
                    continue
                project = snap.get("project")
                found.append({"id": snap["id"], "text": snap.get("name") or "", "due": due.isoformat(),
                              "responsible": snap.get("responsible") or {"id": None, "name": None},
                              "parent": {"type": "project", "id": project["id"]} if project else None})
            if len(items) < 100:
                break
        return sorted(found, key=lambda t: t["due"])

    def set_status(self, entity: Entity, status: Any, pipeline: Any = None, due: str | None = None,
                   responsible: Any = None, fields: dict[str, Any] | None = None) -> str | None:
        """POST /task/{id} {"status", "endDateTime"?, "assignees"?, "customFieldData"?}: a status by
        name in the process `pipeline` (or by id), a deadline, an executor and custom fields in one
        write (the status change's own webhook then reads the fields filled); "queued" when Planfix
        answers 202."""
        if entity.type != "task":
            raise PermanentApiError(f"Planfix statuses belong to tasks, not to a {entity.type}")
        body: dict[str, Any] = {"status": {"id": status if self.record_only else
                                           self.resolve_status(entity, status, pipeline)}}
        if due:
            body["endDateTime"] = _timepoint(due)
        user = (responsible if self.record_only else self.resolve_user(responsible)) if responsible else None
        if user:
            body["assignees"] = {"users": [{"id": user}]}
        body.update(self.custom_data("task", fields))
        return _outcome(self.request("POST", f"/task/{entity.id}", json_body=body))

    def _field_ids(self, names: list[str] | tuple[str, ...]) -> dict[str, str]:
        """{field id: the name asked} of task custom fields (names or ids)."""
        if self.record_only:
            return {}
        return {str(self.resolve_field("task", n)["id"]): str(n) for n in dict.fromkeys(names or ())}

    def _with_fields(self, task: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
        """A task in the common shape, its custom fields keyed by the names they were asked by."""
        snap = self.normalize_task(task)
        snap["fields"] = {}
        for item in task.get("customFieldData") or []:
            field = str(((item if isinstance(item, dict) else {}).get("field") or {}).get("id"))
            if field in ids:
                snap["fields"][ids[field]] = next(iter(_custom_values([item]).values()))
        return snap

    # --- validate --online: the account's names, read only (config/online.py) ------------------

    def metadata(self) -> dict[str, Any]:
        """What rules may name, read fresh and read only: task processes (GET /process/task) and each
        one's statuses (GET /process/task/{id}/statuses) — saranchyev/planfix-rest-api-generated
        docs/Api/ProcessApi.md —, the custom fields of tasks and contacts with their type ids
        (GET /customfield/task, /customfield/contact: docs/Api/CustomFieldsApi.md; type ids in
        REST_API_Типы_пользовательских_полей), users (POST /user/list, a list call that reads).
        API-REFERENCE.md §3.1. The list fields' `enumValues` are not read: the spec names the key
        but not its shape. Shape as amoCRM's metadata()."""
        paths = ["process/task", "customfield/task", "customfield/contact", "user/list"]
        for path in paths:
            self.forget(path)
        pipelines = {}
        for process in self.catalog("process/task", "processes"):
            self.forget(f"process/task/{process['id']}/statuses")
            statuses = self.catalog(f"process/task/{process['id']}/statuses", "statuses")
            pipelines[process["id"]] = {"name": process["name"], "stages": {s["id"]: s["name"] for s in statuses}}
        fields = {kind: {f["name"]: {"id": f["id"], "type": f.get("type"), "enums": []}
                         for f in self.catalog(f"customfield/{kind}", "customfields")} for kind in ("task", "contact")}
        users = {u["id"]: u["name"] for u in self.catalog("user/list", "users", paged=True)}
        return {"pipelines": pipelines, "fields": fields, "users": users}

    # --- reading back a contact (find_or_create's create) ----------------------------------------

    def find_contact(self, name: str, by: str, value: str, since: float | str, field: str | None = None) -> int | None:
        """The id of the newest contact named `name` that carries `value`, or None: the same POST
        /contact/list filter search_contacts uses (a filter on the stored value, not a search index
        that lags behind a create). Planfix lists no creation time with a contact (see above), so
        `since` cannot narrow it: the step searched before it created and found none, so a contact
        matching now was made since (the newest, the highest id)."""
        found = [c for c in self.search_contacts(by, value, field) or []
                 if contact_matches(by, value, c, field) and c.get("id")]
        return max((int(c["id"]) for c in found if c.get("name") == name), default=None)


    # --- files made by crmbridge (make_document) ---------------------------------------------

    def attach_file(self, entity: Entity, name: str, text: str, file: Any = None,
                    content: bytes | None = None) -> int | None:
        """A comment naming a file uploaded before (upload_file's id): POST /{task|contact}/{id}/comments/
        {"description", "files": [{"id"}]} (CommentCreateRequest) → the comment's id. `content`
        without `file` is uploaded first."""
        if file is None and content is not None:
            file = self.upload_file(content, name)
        return self.add_note(entity, text or name, files=[file] if file is not None else None)

def normalize_contact(c: dict[str, Any]) -> dict[str, Any]:
    """A REST contact in the common shape."""
    return {"id": str(c.get("id")), "name": " ".join(p for p in (c.get("name"), c.get("lastname")) if p) or None,
            "email": c.get("email"), "telegram": c.get("telegram"), "is_company": bool(c.get("isCompany")),
            "phones": [p.get("number") for p in c.get("phones") or [] if isinstance(p, dict)],
            "fields": _custom_values(c.get("customFieldData"))}


def _kind(entity: Entity) -> str:
    if entity.type not in ENTITIES:
        raise PermanentApiError(f"Planfix connector acts on tasks and contacts, not on a {entity.type}")
    return entity.type


def _json_body(resp) -> dict[str, Any]:
    try:
        body = resp.json() if resp is not None else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _outcome(resp) -> str | None:
    # "if the task is being changed in parallel… the change is queued… the answer is 202"
    # (planfix-docs Интеграции/REST_API.md)
    return None if resp is None else ("queued" if resp.status_code == 202 else "done")


def _created_id(resp) -> int | None:
    return None if resp is None else _json_body(resp).get("id")


def account_zone(connection: Connection) -> ZoneInfo:
    """The zone Planfix reads and gives local times in (the token user's): `options.timezone`
    (checked at start-up by config/connections.py), else UTC."""
    return ZoneInfo(str((connection.options or {}).get("timezone") or "UTC"))


def _modified(task: dict[str, Any]) -> str:
    """The task's dateOfLastUpdate (a TimePoint, to the minute) and a digest of its status,
    assignees and custom fields: a change within the same minute still gives a new value."""
    point = task.get("dateOfLastUpdate") or {}
    when = (point.get("datetime") or " ".join(str(point[k]) for k in ("date", "time") if point.get(k))
            if isinstance(point, dict) else str(point))
    state = json.dumps([task.get("status"), task.get("assignees"), task.get("customFieldData")], sort_keys=True,
                       default=str)
    return f"{when or '-'}|{hashlib.sha1(state.encode()).hexdigest()[:8]}"


def _deadline(point: dict[str, Any], zone: ZoneInfo) -> datetime | None:
    """A task's endDateTime TimePoint as the moment it is past: its datetime, or the end of its day."""
    if not isinstance(point, dict):
        return None
    if point.get("time") and point.get("datetime"):
        moment = datetime.fromisoformat(str(point["datetime"]).replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=zone)
    day = _iso_timepoint(point)
    if not day or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        return None
    return datetime.fromisoformat(day).replace(tzinfo=zone) + timedelta(days=1)


def _person(p: dict[str, Any]) -> dict[str, Any]:
    """Planfix people ids are prefixed strings ("user:5", "contact:6"); kept as they come."""
    return {"id": str(p.get("id")), "name": p.get("name")}


def _custom_values(items: Any) -> dict[str, Any]:
    """customFieldData → {name: value}; list and directory values come as {id, value|name}, dates
    as TimePoints ({date: "15-12-2026", time?, datetime?}), given as ISO so rules can count from them."""
    def one(value: Any, item: dict[str, Any]) -> Any:
        if isinstance(value, list):
            return [one(v, {}) for v in value]
        if isinstance(value, dict) and ("date" in value or "datetime" in value):
            return _iso_timepoint(value)
        if isinstance(value, dict):
            return value.get("value", value.get("name", item.get("stringValue")))
        return value
    return {str((i.get("field") or {}).get("name") or (i.get("field") or {}).get("id")): one(i.get("value"), i)
            for i in items or [] if isinstance(i, dict)}


def _iso_timepoint(point: dict[str, Any]) -> str | None:
    """A TimePoint as ISO: "2026-12-15" for a date, "2026-12-15T08:00:00+00:00" with a time."""
    if point.get("time") and point.get("datetime"):
        return datetime.fromisoformat(str(point["datetime"])).isoformat()
    text = str(point.get("date") or point.get("datetime") or "")
    found = re.match(r"(\d{2})-(\d{2})-(\d{4})", text)
    return f"{found[3]}-{found[2]}-{found[1]}" if found else (text[:10] or None)


def _field_value(meta: dict[str, Any], value: Any) -> dict[str, Any]:
    """{field, value}; checkboxes as "true"/"false", ISO dates as TimePoints (field types 7, 3, 5)."""
    if meta.get("type") == 7 and isinstance(value, bool):
        value = "true" if value else "false"
    elif meta.get("type") in (3, 5) and isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}", value):
        value = _timepoint(value)
    return {"field": {"id": meta["id"]}, "value": value}


def _timepoint(moment: str) -> dict[str, str]:
    """An ISO date → {"date": "25-11-2026"}; an ISO datetime → {"datetime": "2026-11-25T10:00Z"}."""
    if len(moment) == 10:
        return {"date": datetime.fromisoformat(moment).strftime("%d-%m-%Y")}
    when = datetime.fromisoformat(moment)
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return {"datetime": when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}


def _task_name(text: str) -> str:
    """A task's name from its text: the first line, at most 250 characters (create_task)."""
    return (text.strip().splitlines() or [""])[0][:250]


def _html(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", "<br>")


def _int_or(value: Any) -> Any:
    return int(value) if str(value).isdigit() else value


def _until_tomorrow() -> float:
    """Seconds to 00:05 UTC tomorrow: the day boundary of Planfix's daily quota is not documented."""
    now = datetime.now(timezone.utc)
    return ((now + timedelta(days=1)).replace(hour=0, minute=5, second=0, microsecond=0) - now).total_seconds()
