"""A local fake of the Planfix REST API v2 under /rest, in the shapes of the OpenAPI spec.

Shapes: {"result": "success", "task": {…}} for reads, {"result": "success", "id": N} for creates
(GetTaskById200Response, PostContact201Response in saranchyev/planfix-rest-api-generated), and
errors as {"result": "fail", "code": N, "error": "…"} (REST API error codes). It keeps what it
received: tasks and contacts as updated, and the comments added to each.
"""
from __future__ import annotations

import copy
import itertools
import operator
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from tests.fakes import Call, FakeServer, VendorLimit, Violation, multipart_parts

OK = {"result": "success"}


def _now_point() -> dict[str, str]:
    """Now as a Planfix TimePoint `datetime` (to the minute, UTC): {"datetime": "2026-11-25T10:00Z"}."""
    return {"datetime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")}
DATE_OPERATORS = {"gt": operator.gt, "lt": operator.lt, "gtAndEqual": operator.ge, "ltAndEqual": operator.le,
                  "equal": operator.eq, "notequal": operator.ne}


class FakePlanfix(FakeServer):
    """Tasks, contacts, comments, custom fields, processes with statuses, users."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(9000)
        self.tasks: dict[int, dict[str, Any]] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.comments: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.locked: set[int] = set()  # tasks being changed elsewhere: updates answer 202
        self.zone = "UTC"  # the token user's time zone: date filters are read in it
        self.name_created_fields = False  # True: a created record's fields come back with their names (as a GET does)
        self.custom_fields = {
            "task": [{"id": 101, "name": "Бюджет", "type": 1}, {"id": 102, "name": "Дата оплаты", "type": 3},
                     {"id": 103, "name": "Результат", "type": 2}, {"id": 104, "name": "Реклама запущена", "type": 7}],
            "contact": [{"id": 201, "name": "Ніша", "type": 0}, {"id": 202, "name": "Instagram акаунт", "type": 0}]}
        self.processes = [{"id": 7, "name": "SMM"}]
        # a status's type, active or not (isActive: Задачи/Тип_статуса_задачи.md; TaskStatus in the spec)
        self.statuses = {7: [{"id": 1, "name": "Нова"}, {"id": 2, "name": "В роботі"},
                             {"id": 3, "name": "Завершена", "isActive": False}, {"id": 4, "name": "Доопрацювання"}]}
        self.users = [{"id": 5, "name": "Олена", "lastname": "Коваленко"},
                      {"id": 6, "name": "Иван", "lastname": "Петренко"}]
        self.route("GET", r"/rest/(task|contact)/(\d+)", self._get)
        self.route("POST", r"/rest/(task|contact)/(\d+)", self._update)
        self.route("POST", r"/rest/(task|contact)/", self._create)
        self.route("POST", r"/rest/(task|contact)/(\d+)/comments/", self._add_comment)
        self.route("POST", r"/rest/(task|contact)/(\d+)/comments/list", self._list_comments)
        self.route("GET", r"/rest/customfield/(task|contact)",
                   lambda c, m: (200, {**OK, "customfields": self.custom_fields[m.group(1)]}, {}))
        self.route("GET", r"/rest/process/task", lambda c, m: (200, {**OK, "processes": self.processes}, {}))
        self.route("GET", r"/rest/process/task/(\d+)/statuses", self._statuses)
        self.route("POST", r"/rest/user/list", self._users)
        self._file_routes()
        self.route("POST", r"/rest/task/list", self._list_tasks)
        self.route("POST", r"/rest/contact/list", self._list_contacts)

    def enforce_limits(self, per_second: int = 1) -> "FakePlanfix":
        """Planfix's "1 запрос в секунду" (REST_API_Введение.md; API-REFERENCE.md §3, Limits) over every
        /rest/ request in any sliding second. The answer over it is not documented: a 429 is assumed."""
        return self.limited([VendorLimit("account", per_second, 1.0,
                                         lambda call: "account" if call.path.startswith("/rest/") else None)])

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        return 429, {"result": "fail", "code": 0, "error": "Too many requests"}, {}

    def store(self, kind: str) -> dict[int, dict[str, Any]]:
        return self.tasks if kind == "task" else self.contacts

    def add(self, kind: str, item: dict[str, Any]) -> None:
        self.store(kind)[int(item["id"])] = copy.deepcopy(item)

    def _get(self, call: Call, m: re.Match):
        kind, item = m.group(1), self.store(m.group(1)).get(int(m.group(2)))
        if item is None:  # error codes 1000 / 2000: the task / contact does not exist
            return 400, {"result": "fail", "code": 1000 if kind == "task" else 2000,
                         "error": f"{kind} {m.group(2)} not found"}, {}
        if kind == "task" and (item.get("assignees") or {}).get("users"):   # people come with their names
            names = {f"user:{u['id']}": " ".join(p for p in (u.get("name"), u.get("lastname")) if p) for u in self.users}
            item = {**item, "assignees": {**item["assignees"], "users": [
                {**u, "name": u.get("name") or names.get(str(u.get("id")))} for u in item["assignees"]["users"]]}}
        return 200, {**OK, kind: item}, {}

    def _update(self, call: Call, m: re.Match):
        kind, number = m.group(1), int(m.group(2))
        item = self.store(kind).setdefault(number, {"id": number})
        for key, value in (call.body or {}).items():
            if key == "customFieldData":
                kept = {d["field"]["id"]: d for d in item.get("customFieldData", [])}
                kept.update({d["field"]["id"]: self.named(kind, d) for d in value})
                item["customFieldData"] = list(kept.values())
            else:
                item[key] = value
        if kind == "task" and number in self.locked:  # "the change is queued": 202, no body
            return 202, b"", {}
        return 200, b"", {}

    def named(self, kind: str, value: dict[str, Any]) -> dict[str, Any]:
        """A written field value as a later GET shows it: the field with its name and type."""
        meta = next((f for f in self.custom_fields[kind] if f["id"] == value["field"]["id"]), None)
        return {**value, "field": {**value["field"], **meta}} if meta else value

    def _create(self, call: Call, m: re.Match):
        """A new task or contact; a task keeps its creation time as TaskResponse.dateTime (a TimePoint)."""
        number = next(self.ids)
        made = {"dateTime": _now_point()} if m.group(1) == "task" else {}
        body = dict(call.body or {})
        if self.name_created_fields and body.get("customFieldData"):   # as a later GET shows them: named
            body["customFieldData"] = [self.named(m.group(1), d) for d in body["customFieldData"]]
        self.add(m.group(1), {**body, "id": number, **made})
        return 200, {**OK, "id": number}, {}

    def _add_comment(self, call: Call, m: re.Match):
        key = (m.group(1), int(m.group(2)))
        if int(m.group(2)) not in self.store(m.group(1)):
            return 400, {"result": "fail", "code": 5001, "error": "comment add error"}, {}
        number = next(self.ids)
        self.comments.setdefault(key, []).append({"dateTime": _now_point(), **(call.body or {}), "id": number})
        return 200, {**OK, "id": number}, {}

    def _list_comments(self, call: Call, m: re.Match):
        """offset, pageSize (at most 100) and resultOrder Asc|Desc (CommentsListRequest in
        saranchyev/planfix-rest-api-generated); dateTime a TimePoint, as the comment was made."""
        body = call.body or {}
        found = list(self.comments.get((m.group(1), int(m.group(2))), []))   # in the order they were made
        if body.get("resultOrder") == "Desc":
            found.reverse()
        start, size = int(body.get("offset", 0)), int(body.get("pageSize", 100))
        rows = [{"id": c["id"], "description": c.get("description"), "owner": {"id": "user:5", "name": "Олена Коваленко"},
                 "dateTime": c.get("dateTime") or {"datetime": "2025-11-24T12:15Z"},
                 "files": [{"id": f["id"], "name": f"file-{f['id']}"} for f in c.get("files", [])]}
                for c in found[start:start + size]]
        return 200, {**OK, "comments": rows}, {}

    def _list_contacts(self, call: Call, m: re.Match):
        """POST /contact/list with complex contact filters (REST_API__Сложные_фильтры_контактов.md):
        4003 phone, 4005 email (the value contains the text), 4101 a line custom field (`field`),
        equal; others refused here as unknown to this fake."""
        body = call.body or {}
        found = sorted(self.contacts.values(), key=lambda c: int(c["id"]))
        for flt in body.get("filters") or []:
            want = str(flt.get("value") or "")
            if flt.get("type") == 4003:
                found = [c for c in found if any(want in re.sub(r"\D", "", str(p.get("number")))
                                                 or want in str(p.get("number")) for p in c.get("phones") or [])]
            elif flt.get("type") == 4005:
                found = [c for c in found if want.casefold() in str(c.get("email") or "").casefold()]
            elif flt.get("type") == 4101:
                found = [c for c in found if any(str(d["field"]["id"]) == str(flt.get("field")) and str(d.get("value")) == want
                                                 for d in c.get("customFieldData") or [])]
            else:
                return 400, {"result": "fail", "code": 41, "error": f"filter type {flt.get('type')} unknown"}, {}
        return 200, {**OK, "contacts": found[int(body.get("offset") or 0):][:int(body.get("pageSize") or 100)]}, {}

    def _statuses(self, call: Call, m: re.Match):
        found = self.statuses.get(int(m.group(1)))
        if found is None:
            return 400, {"result": "fail", "code": 41, "error": "Invalid parameter value"}, {}
        return 200, {**OK, "statuses": [{"color": "#1e88e5", "isActive": True, **s} for s in found]}, {}

    def _users(self, call: Call, m: re.Match):
        start, size = int(call.body.get("offset", 0)), int(call.body.get("pageSize", 100))
        return 200, {**OK, "users": self.users[start:start + size]}, {}

    def _list_tasks(self, call: Call, m: re.Match):
        """POST /task/list with complex filters (REST_API__Сложные_фильтры_задач.md in planfix-docs):
        5 (project) and 73 (parent task) with "equal"; 101 (a line custom field, `field` its id) equal;
        7 (counterparty), 108 (a Contact custom field) and 24 (process) equal; 38 (date of last change) and 79 (… or comment)
        with gt / lt / gtAndEqual / ltAndEqual and {"dateType": "otherDate_withTime", "dateFrom":
        "dd-mm-yyyy hh:mm"}, read in `self.zone` (the token user's zone) and compared to the minute."""
        body = call.body or {}
        found = sorted(self.tasks.values(), key=lambda t: t["id"])
        for flt in body.get("filters") or []:
            kind = int(flt["type"])
            if kind in (38, 79):
                moment = self._filter_moment(flt)
                if moment is None or flt.get("operator") not in DATE_OPERATORS:
                    return 400, {"result": "fail", "code": 41, "error": "Invalid parameter value"}, {}
                found = [t for t in found if DATE_OPERATORS[flt["operator"]](self._changed_minute(t), moment)]
                continue
            if kind == 101:   # a line custom field (`field`: its id) equal to the value (find_tasks)
                found = [t for t in found if any(str(d["field"]["id"]) == str(flt.get("field"))
                                                 and str(d.get("value")) == str(flt.get("value"))
                                                 for d in t.get("customFieldData") or [])]
                continue
            if kind in (7, 108, 24) and flt.get("operator") == "equal":
                found = [t for t in found if self._task_matches(t, kind, flt)]
                continue
            key = {5: "project", 73: "parent"}.get(kind)
            if key is None or flt.get("operator") != "equal":
                return 400, {"result": "fail", "code": 41, "error": "Invalid parameter value"}, {}
            found = [t for t in found if str((t.get(key) or {}).get("id")) == str(flt["value"])]
        start, size = int(body.get("offset", 0)), int(body.get("pageSize", 100))
        if size > 100:  # "list methods return at most 100 items" (REST_API_Введение.md)
            return 400, {"result": "fail", "code": 41, "error": "Invalid parameter value"}, {}
        return 200, {**OK, "tasks": [copy.deepcopy(t) for t in found[start:start + size]]}, {}

    @staticmethod
    def _task_matches(task: dict[str, Any], kind: int, flt: dict[str, Any]) -> bool:
        """7 "Контрагент" (a number, or "contact:N"), 108 "Пользовательское поле типа Контакт" (`field`,
        "contact:N"; the value kept as written, {"id": N}) and 24 "Процесс" (the process id)."""
        def person(value: Any) -> str:
            value = value.get("id") if isinstance(value, dict) else value
            text = str(value or "")
            return text if text.startswith(("contact:", "user:", "group:")) else f"contact:{text}"
        if kind == 24:
            return str(task.get("processId")) == str(flt.get("value"))
        if kind == 7:
            return bool(task.get("counterparty")) and person(task["counterparty"]) == person(flt.get("value"))
        return any(str(d["field"]["id"]) == str(flt.get("field")) and person(d.get("value")) == person(flt.get("value"))
                   for d in task.get("customFieldData") or [])

    def _filter_moment(self, flt: dict[str, Any]) -> datetime | None:
        value = flt.get("value") if isinstance(flt.get("value"), dict) else {}
        if value.get("dateType") != "otherDate_withTime":
            return None
        try:
            local = datetime.strptime(str(value.get("dateFrom")), "%d-%m-%Y %H:%M")
        except ValueError:
            return None
        return local.replace(tzinfo=ZoneInfo(self.zone)).astimezone(UTC)

    @staticmethod
    def _changed_minute(task: dict[str, Any]) -> datetime:
        when = (task.get("dateOfLastUpdate") or {}).get("datetime") or "1970-01-01T00:00Z"
        return datetime.fromisoformat(when).replace(second=0, microsecond=0)

    def touch(self, number: int, at: datetime, **changes: Any) -> None:
        """Change a task in Planfix at `at` (UTC): its dateOfLastUpdate becomes that minute, as a
        TimePoint with the date and time in the account's zone and the datetime in UTC."""
        local = at.astimezone(ZoneInfo(self.zone))
        self.tasks[number].update(copy.deepcopy(changes), dateOfLastUpdate={
            "date": local.strftime("%d-%m-%Y"), "time": local.strftime("%H:%M"),
            "datetime": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")})


    # --- files: FileApi postFileUpload (POST /file/, multipart "file"), getFileId, download ----------

    def _file_routes(self) -> None:
        self.files: dict[int, dict[str, Any]] = {}
        self.route("POST", r"/rest/file/", self._upload)
        self.route("GET", r"/rest/file/(\d+)", self._file)
        self.route("GET", r"/rest/file/(\d+)/download", self._download)

    def add_file(self, number: int, name: str, content: bytes) -> None:
        self.files[number] = {"id": number, "name": name, "content": content}

    def _upload(self, call: Call, m: re.Match):
        parts = multipart_parts(call)
        if "file" not in parts:
            return 400, {"result": "fail", "code": 40, "error": "file is required"}, {}
        number = next(self.ids)
        self.add_file(number, parts["file"]["filename"], parts["file"]["content"])
        return 200, {**OK, "id": number}, {}

    def _file(self, call: Call, m: re.Match):
        found = self.files.get(int(m.group(1)))
        if found is None:  # 7000-7003: file errors
            return 400, {"result": "fail", "code": 7000, "error": "file not found"}, {}
        return 200, {**OK, "file": {"id": found["id"], "name": found["name"], "size": len(found["content"])}}, {}

    def _download(self, call: Call, m: re.Match):
        found = self.files.get(int(m.group(1)))
        if found is None:
            return 400, {"result": "fail", "code": 7000, "error": "file not found"}, {}
        return 200, found["content"], {"Content-Type": "application/octet-stream"}
