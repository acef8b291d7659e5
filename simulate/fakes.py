"""Fake vendors for a simulation: one in-memory client per connection, no network, no secrets.

A `FakeClient` offers exactly the verbs its connection's real client names in `capabilities`
(so start-up checks, `client.can` and the steps decide as they would in production), records
every call with the simulated time it was made at, and, for a CRM, keeps the records the
scenario describes in the common shape the real clients return (connectors/base.py's
CrmClient): stage, pipeline and responsible as `{"id", "name"}`, `fields` by name, `tasks`,
`notes`, `files`, `contact_cards`, `main_contact`, `contacts` (ids: records sharing one are one
client's, for `new_deals`). Writes change those records (a moved stage is
what the next read and the next timer's guard see); messages, e-mails, calls and posts are
only recorded.

A webhook is the vendor telling that its record changed: `World.apply` writes what an event
says of its record (stage, pipeline, responsible, name, fields) into the fake CRM before the
worker reads it, as the real CRM would hold it by then.
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.base import Connection, Entity, Event

# Verbs that only read. Everything else a client offers writes (or sends) something.
READ_VERBS = frozenset({
    "get_entity", "name_refs", "rule_context", "changed_since", "list_tasks", "overdue_tasks", "get_raw",
    "find_task", "find_note", "search_contacts", "find_catalog_elements", "read_stage", "find_stage",
    "stage_order", "read_task", "project_tasks", "download", "extension",
})


@dataclass
class Call:
    """One verb a fake client was asked to do, at the simulated moment it was asked."""
    at: datetime
    connection: str
    verb: str
    args: dict[str, Any]
    result: Any = None

    def text(self) -> str:
        """The call as one searchable text (for `expect: containing`)."""
        return " ".join(str(v) for v in _flat(self.args))


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    return [value]


@dataclass
class Metadata:
    """A CRM's names: pipelines with their stages (in order) and users, each name ↔ id."""
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)   # id → {"name", "stages": {id: name}}
    users: dict[str, str] = field(default_factory=dict)                  # id → name

    @classmethod
    def from_scenario(cls, spec: dict[str, Any]) -> "Metadata":
        pipelines = {}
        for n, p in enumerate(spec.get("pipelines") or []):
            pid = str(p.get("id", f"p{n + 1}"))
            stages = p.get("stages") or {}
            if isinstance(stages, list):   # names only: ids made up in order
                stages = {f"{pid}-{i + 1}": name for i, name in enumerate(stages)}
            pipelines[pid] = {"name": str(p["name"]), "stages": {str(k): str(v) for k, v in stages.items()}}
        users = {str(k): str(v) for k, v in (spec.get("users") or {}).items()}
        return cls(pipelines, users)

    def stage_ref(self, stage: Any, pipeline: Any = None) -> dict[str, str]:
        """A stage given by name or id (in a pipeline given by name or id) → {"id", "name"}."""
        wanted = str(stage)
        pid = self.pipeline_ref(pipeline).get("id") if pipeline else None
        for p_id, p in self.pipelines.items():
            if pid and p_id != pid:
                continue
            for s_id, name in p["stages"].items():
                if wanted in (s_id, name):
                    return {"id": s_id, "name": name}
        return {"name": wanted}

    def pipeline_of(self, stage_id: str) -> dict[str, str] | None:
        for p_id, p in self.pipelines.items():
            if stage_id in p["stages"]:
                return {"id": p_id, "name": p["name"]}
        return None

    def pipeline_ref(self, pipeline: Any) -> dict[str, str]:
        wanted = str(pipeline)
        for p_id, p in self.pipelines.items():
            if wanted in (p_id, p["name"]):
                return {"id": p_id, "name": p["name"]}
        return {"name": wanted}

    def user_ref(self, user: Any) -> dict[str, str]:
        if isinstance(user, dict):
            return {k: str(v) for k, v in user.items() if k in ("id", "name")}
        wanted = str(user)
        for u_id, name in self.users.items():
            if wanted in (u_id, name):
                return {"id": u_id, "name": name}
        return {"name": wanted}

    def named(self, ref: Any, kind: str, pipeline: Any = None) -> Any:
        """Fill the name (or id) a ref lacks."""
        if not isinstance(ref, dict):
            return ref
        key = ref.get("id") or ref.get("name")
        if key is None:
            return ref
        found = {"stage": lambda: self.stage_ref(key, pipeline), "pipeline": lambda: self.pipeline_ref(key),
                 "user": lambda: self.user_ref(key)}[kind]()
        return {**found, **{k: v for k, v in ref.items() if v is not None}}


class World:
    """Every fake client of a simulation, their records and the calls made to them."""

    def __init__(self, now: Callable[[], datetime]):
        self.now = now
        self.calls: list[Call] = []
        self.listeners: list[Callable[[Call], None]] = []
        self.ids = itertools.count(9000001)
        self.crms: dict[str, FakeClient] = {}

    def record(self, connection: str, verb: str, args: dict[str, Any], result: Any) -> None:
        call = Call(self.now(), connection, verb, args, result)
        self.calls.append(call)
        for listener in self.listeners:
            listener(call)

    def apply(self, event: Event) -> None:
        """What a webhook says of its record, written into the fake CRM (created if new)."""
        crm = self.crms.get(event.connection)
        if crm is None or event.entity.type in ("chat", "form", "call"):
            return
        if event.kind == "entity.deleted":
            crm.records.pop(str(event.entity), None)
            return
        record = crm._record(event.entity)
        data = event.data or {}
        for key in ("name", "contact", "project", "parent"):
            if data.get(key) not in (None, "", {}):
                record[key] = copy.deepcopy(data[key])
        if isinstance(data.get("pipeline"), dict):
            record["pipeline"] = crm.meta.named(data["pipeline"], "pipeline")
        if isinstance(data.get("stage"), dict):
            before = (record.get("stage") or {})
            record["stage"] = crm.meta.named(data["stage"], "stage", (record.get("pipeline") or {}).get("id"))
            if before.get("id", before.get("name")) != record["stage"].get("id", record["stage"].get("name")):
                record["stage_since"] = self.now().isoformat()
        if isinstance(data.get("responsible"), dict):
            record["responsible"] = crm.meta.named(data["responsible"], "user")
        if isinstance(data.get("fields"), dict):
            record.setdefault("fields", {}).update(copy.deepcopy(data["fields"]))
        record["last_activity"] = self.now().isoformat()


class FakeClient:
    """A connection's client in a simulation: the real client's verbs, in memory."""

    reports_sends = False
    timeout = 1.0
    record_only = False

    def __init__(self, connection: Connection, real: type, world: World, spec: dict[str, Any] | None = None):
        self.connection = connection
        self.capabilities = frozenset(getattr(real, "capabilities", frozenset()))
        self.FIND_BY = getattr(real, "FIND_BY", ())
        self.world = world
        self.sending: Callable[[], None] | None = None
        self.limiter = None
        spec = spec or {}
        self.meta = Metadata.from_scenario(spec)
        self.records: dict[str, dict[str, Any]] = {}
        for key, record in (spec.get("records") or {}).items():
            self.add_record(str(key), record)
        self.catalogs = {str(k): [str(x) for x in v] for k, v in (spec.get("catalogs") or {}).items()}

    # --- the records ----------------------------------------------------------------------------

    def add_record(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record as a scenario writes it (`lead:1: {stage: "Новый клиент", fields: {…}}`), in
        the common shape: names and ids of stage, pipeline and responsible filled from the metadata."""
        kind, _, ident = key.partition(":")
        found = copy.deepcopy(record)
        found.update({"type": kind, "id": ident})
        found.setdefault("created_at", self.world.now().isoformat())
        if found.get("pipeline") is not None:
            found["pipeline"] = self.meta.named(_ref(found["pipeline"]), "pipeline")
        if found.get("stage") is not None:
            found["stage"] = self.meta.named(_ref(found["stage"]), "stage", (found.get("pipeline") or {}).get("id"))
            if "pipeline" not in found and found["stage"].get("id"):
                found["pipeline"] = self.meta.pipeline_of(found["stage"]["id"]) or {}
            found.setdefault("stage_since", found["created_at"])
        if found.get("responsible") is not None:
            found["responsible"] = self.meta.named(_ref(found["responsible"]), "user")
        found.setdefault("fields", {})
        found["tasks"] = [self._task(t, key) for t in found.get("tasks") or []]
        found.setdefault("notes", [])
        found["files"] = [f if isinstance(f, dict) else {"name": str(f)} for f in found.get("files") or []]
        self.records[key] = found
        return found

    def _task(self, task: Any, parent: str) -> dict[str, Any]:
        task = {"text": task} if isinstance(task, str) else dict(task)
        kind, _, ident = parent.partition(":")
        task.setdefault("id", str(next(self.world.ids)))
        task.setdefault("completed", False)
        task.setdefault("created_at", self.world.now().isoformat())
        task.setdefault("parent", {"type": kind, "id": ident})
        if task.get("responsible") is not None:
            task["responsible"] = self.meta.named(_ref(task["responsible"]), "user")
        return task

    def _record(self, entity: Entity) -> dict[str, Any]:
        return self.records.setdefault(str(entity), {"type": entity.type, "id": entity.id, "fields": {}, "tasks": [],
                                                     "notes": [], "files": [], "created_at": self.world.now().isoformat()})

    def _write(self, verb: str, args: dict[str, Any], result: Any = True) -> Any:
        self.world.record(self.connection.name, verb, args, result)
        return result

    def can(self, verb: str) -> bool:
        return verb in self.capabilities

    def __getattr__(self, name: str) -> Any:
        """A verb the real client has and this fake does not know yet (a connector's new verb):
        recorded as asked, answering None (a read finds nothing); any other name is an error."""
        if name.startswith("_") or name not in self.__dict__.get("capabilities", ()):
            raise AttributeError(name)

        def verb(*args: Any, **kwargs: Any) -> Any:
            self.world.record(self.connection.name, name, {**{f"arg{n}": str(a) for n, a in enumerate(args)},
                                                           **kwargs}, None)
            return None
        return verb

    # --- reading --------------------------------------------------------------------------------

    def get_entity(self, entity: Entity) -> dict[str, Any] | None:
        found = self.records.get(str(entity))
        if found is None:
            return None
        view = {k: copy.deepcopy(v) for k, v in found.items() if k not in ("tasks", "notes", "files", "stage_since",
                                                                           "last_activity", "contact_cards")}
        return view

    def get_raw(self, entity: Entity) -> dict[str, Any] | None:
        return self.get_entity(entity)

    def name_refs(self, data: dict[str, Any]) -> dict[str, Any]:
        pipeline = (data.get("pipeline") or {}).get("id") if isinstance(data.get("pipeline"), dict) else None
        for key, kind in (("pipeline", "pipeline"), ("previous_pipeline", "pipeline"), ("stage", "stage"),
                          ("previous_stage", "stage"), ("responsible", "user"), ("previous_responsible", "user")):
            if isinstance(data.get(key), dict):
                data[key] = self.meta.named(data[key], kind, pipeline if kind == "stage" else None)
        return data

    def rule_context(self, entity: Entity, needs: Any) -> dict[str, Any]:
        record = self.records.get(str(entity))
        if record is None:
            return {}
        found: dict[str, Any] = {}
        if "tasks" in needs:
            found["tasks"] = [copy.deepcopy(t) for t in record["tasks"] if not t.get("completed")]
        if "activity" in needs:
            found["stage_since"] = record.get("stage_since") or record.get("created_at")
            found["last_activity"] = record.get("last_activity")
        if "files" in needs:
            found["files"] = copy.deepcopy(record["files"])
        if "contacts" in needs:
            found["contact_cards"] = copy.deepcopy(record.get("contact_cards") or [])
            main = record.get("main_contact") or {}
            found["main_contact"] = {"phone": "", "phones": [], "email": "", "emails": [], **copy.deepcopy(main)}
        if "deals" in needs:   # new_deals: the other records of its kind sharing one of its `contacts`
            mine = {str(c) for c in record.get("contacts") or []}
            found["client_deals"] = [
                {"id": other["id"], "name": other.get("name"), "created": other.get("created_at"),
                 "open": not other.get("closed")}
                for other in self.records.values()
                if other["type"] == record["type"] and other["id"] != record["id"]
                and mine & {str(c) for c in other.get("contacts") or []}]
        return found

    def changed_since(self, since: str) -> list[Any]:
        return []

    def list_tasks(self, entity: Entity, open_only: bool = True) -> list[dict[str, Any]]:
        tasks = self._record(entity)["tasks"]
        return [copy.deepcopy(t) for t in tasks if not (open_only and t.get("completed"))]

    def overdue_tasks(self, before: str) -> list[dict[str, Any]]:
        limit = datetime.fromisoformat(before)
        found = []
        for record in self.records.values():
            for task in record["tasks"]:
                due = task.get("due")
                if not task.get("completed") and due and datetime.fromisoformat(str(due)) < limit:
                    found.append({**copy.deepcopy(task), "entity": {"type": record["type"], "id": record["id"],
                                                                    "name": record.get("name")}})
        return found

    def find_task(self, entity: Entity, text: str, since: Any) -> Any:
        return next((t["id"] for t in self._record(entity)["tasks"] if t.get("text") == text), None)

    def find_note(self, entity: Entity, text: str, since: Any) -> Any:
        return next((n["id"] for n in self._record(entity)["notes"] if n.get("text") == text), None)

    def search_contacts(self, by: str, value: str, field: str | None = None) -> list[dict[str, Any]]:
        return []

    def find_catalog_elements(self, catalog: Any, query: str) -> list[dict[str, Any]]:
        names = self.catalogs.get(str(catalog), [])
        return [{"id": str(n + 1), "name": name} for n, name in enumerate(names)
                if name.casefold().startswith(query.casefold())]

    def read_stage(self, entity: Entity) -> dict[str, Any] | None:
        record = self._record(entity)
        return {"stage": (record.get("stage") or {}).get("id"), "pipeline": (record.get("pipeline") or {}).get("id")}

    def find_stage(self, entity: Entity, stage: str, pipeline: str | None = None) -> dict[str, Any]:
        ref = self.meta.stage_ref(stage, pipeline)
        return {"stage": ref.get("id", ref.get("name")),
                "pipeline": (self.meta.pipeline_of(ref["id"]) or {}).get("id") if ref.get("id") else pipeline}

    def stage_order(self, entity: Entity, pipeline: str | None, fresh: bool = False) -> dict[str, Any]:
        p = self.meta.pipelines.get(str(pipeline)) or next(iter(self.meta.pipelines.values()), {"stages": {}})
        return {sid: n for n, sid in enumerate(p["stages"])}

    def read_task(self, entity: Entity, fields: Any = ()) -> dict[str, Any] | None:
        return self.get_entity(entity)

    def project_tasks(self, project: Any, fields: Any = ()) -> list[dict[str, Any]]:
        return [self.get_entity(Entity("task", r["id"])) for r in self.records.values()
                if r["type"] == "task" and str((r.get("project") or {}).get("id") or (r.get("project") or {}).get("name"))
                == str(project)]

    def download(self, file_id: str, size: int | None = None) -> tuple[bytes, str] | None:
        return b"", f"file-{file_id}"

    def extension(self, manager: str) -> str:
        extensions = self.connection.options.get("extensions") or {}
        return str(extensions.get(manager, manager))

    # --- writing records ------------------------------------------------------------------------

    def set_fields(self, entity: Entity, fields: dict[str, Any]) -> Any:
        self._record(entity).setdefault("fields", {}).update(copy.deepcopy(fields))
        return self._write("set_fields", {"entity": str(entity), "fields": fields})

    def move_to_stage(self, entity: Entity, stage: str, pipeline: str | None = None,
                      current_pipeline: str | None = None) -> Any:
        record = self._record(entity)
        ref = self.meta.stage_ref(stage, pipeline or current_pipeline or (record.get("pipeline") or {}).get("id"))
        record["stage"] = ref
        if pipeline or ref.get("id"):
            record["pipeline"] = (self.meta.pipeline_of(ref["id"]) if ref.get("id") else None) or \
                self.meta.pipeline_ref(pipeline)
        record["stage_since"] = record["last_activity"] = self.world.now().isoformat()
        return self._write("move_to_stage", {"entity": str(entity), "stage": stage,
                                             **({"pipeline": pipeline} if pipeline else {})})

    def set_status(self, entity: Entity, status: Any, pipeline: Any = None, due: str | None = None,
                   responsible: Any = None, fields: dict[str, Any] | None = None) -> Any:
        record = self._record(entity)
        record["stage"] = self.meta.stage_ref(status, pipeline)
        record["stage_since"] = self.world.now().isoformat()
        if fields:
            record.setdefault("fields", {}).update(fields)
        return self._write("set_status", {"entity": str(entity), "status": status, "due": due,
                                          "responsible": responsible, **({"fields": fields} if fields else {})})

    def create_task(self, entity: Entity, text: str, due: Any = None, responsible: Any = None, **more: Any) -> Any:
        task = self._task({"text": text, "due": due, "responsible": responsible, **more}, str(entity))
        self._record(entity)["tasks"].append(task)
        return self._write("create_task", {"entity": str(entity), "text": text, "due": due,
                                           "responsible": responsible, **more}, task["id"])

    def add_note(self, entity: Entity, text: str) -> Any:
        note = {"id": str(next(self.world.ids)), "text": text, "created_at": self.world.now().isoformat()}
        record = self._record(entity)
        record["notes"].append(note)
        record["last_activity"] = note["created_at"]
        return self._write("add_note", {"entity": str(entity), "text": text}, note["id"])

    def add_chat_comment(self, entity: Entity, text: str, uploads: Any = None) -> Any:
        return self.add_note(entity, text)

    def set_responsible(self, entity: Entity, user: Any) -> Any:
        self._record(entity)["responsible"] = self.meta.user_ref(user)
        return self._write("set_responsible", {"entity": str(entity), "user": user})

    def delete_entity(self, entity: Entity) -> Any:
        self.records.pop(str(entity), None)
        return self._write("delete_entity", {"entity": str(entity)})

    def complete_task(self, task_id: Any, result_text: str) -> Any:
        for record in self.records.values():
            for task in record["tasks"]:
                if str(task["id"]) == str(task_id):
                    task.update(completed=True, result=result_text)
        return self._write("complete_task", {"task_id": task_id, "result": result_text})

    def complete_tasks_matching(self, entity: Entity, pattern: str, result_text: str) -> Any:
        done = []
        for task in self._record(entity)["tasks"]:
            if not task.get("completed") and re.search(pattern, str(task.get("text") or "")):
                task.update(completed=True, result=result_text)
                done.append(task["id"])
        return self._write("complete_tasks_matching", {"entity": str(entity), "pattern": pattern,
                                                       "result": result_text}, done)

    def change_tags(self, entity: Entity, add: Any = (), remove: Any = ()) -> Any:
        record = self._record(entity)
        tags = [t for t in record.get("tags") or [] if t not in set(remove or ())]
        record["tags"] = tags + [t for t in add or () if t not in tags]
        return self._write("change_tags", {"entity": str(entity), "add": list(add or ()), "remove": list(remove or ())})

    def create_copy(self, source: dict[str, Any] | None, pipeline: str, stage: str, **options: Any) -> Any:
        ident = str(next(self.world.ids))
        kind = (source or {}).get("type", "lead")
        fields = {**((source or {}).get("fields") or {}), **(options.get("fields") or {})}
        self.add_record(f"{kind}:{ident}", {"name": (source or {}).get("name"), "pipeline": pipeline, "stage": stage,
                                            "fields": fields, "tags": list(options.get("tags") or [])})
        return self._write("create_copy", {"source": (source or {}).get("id"), "pipeline": pipeline, "stage": stage,
                                           **options}, ident)

    def link_copy(self, record_id: Any, source: dict[str, Any]) -> Any:
        return self._write("link_copy", {"record": record_id, "source": (source or {}).get("id")})

    def add_contact(self, name: str, by: str, value: str, fields: dict[str, Any]) -> Any:
        ident = str(next(self.world.ids))
        self.add_record(f"contact:{ident}", {"name": name, "fields": {**fields, by: value}})
        return self._write("add_contact", {"name": name, by: value, "fields": fields}, ident)

    def link_contact(self, entity: Entity, contact_id: str) -> str | None:
        self._write("link_contact", {"entity": str(entity), "contact": contact_id})
        return None

    def notify(self, user: Any, text: str) -> Any:
        return self._write("notify", {"user": user, "text": text})

    # --- channels: recorded only ----------------------------------------------------------------

    def send_message(self, chat: Any, text: str, buttons: list | None = None, **more: Any) -> Any:
        return self._write("send_message", {"chat": chat, "text": text, **({"buttons": buttons} if buttons else {}),
                                            **more}, next(self.world.ids))

    def send_approval(self, chat: Any, text: str, choices: list, record: dict[str, str], **more: Any) -> Any:
        return self._write("send_approval", {"chat": chat, "text": text, "choices": [c.get("label", c) if
                                             isinstance(c, dict) else c for c in choices], "record": record},
                           next(self.world.ids))

    def answer_button(self, callback_id: str, text: str | None = None) -> Any:
        return self._write("answer_button", {"callback_id": callback_id, "text": text})

    def edit_buttons(self, chat: Any, message_id: int, buttons: list | None = None) -> Any:
        return self._write("edit_buttons", {"chat": chat, "message_id": message_id, "buttons": buttons})

    def edit_text(self, chat: Any, message_id: int, text: str, buttons: list | None = None) -> Any:
        return self._write("edit_text", {"chat": chat, "message_id": message_id, "text": text})

    def send_photo(self, chat: Any, photo: Any, caption: str | None = None, **more: Any) -> Any:
        return self._write("send_photo", {"chat": chat, "caption": caption}, next(self.world.ids))

    def send_document(self, chat: Any, content: bytes, filename: str, **more: Any) -> Any:
        return self._write("send_document", {"chat": chat, "filename": filename}, next(self.world.ids))

    def reply(self, conversation: Any, text: str, attachments: list | None = None) -> Any:
        return self._write("reply", {"conversation": conversation, "text": text}, next(self.world.ids))

    def send_email(self, to: Any, subject: str, text: str, html: str | None = None, **more: Any) -> Any:
        return self._write("send_email", {"to": to, "subject": subject, "text": text}, next(self.world.ids))

    def post_webhook(self, body: Any, path: str | None = None) -> Any:
        return self._write("post_webhook", {"path": path, "body": body}, 200)

    def request_callback(self, manager: str, client: str) -> Any:
        return self._write("request_callback", {"manager": manager, "client": client},
                           {"requested": True, "time": self.world.now().isoformat()})


def _ref(value: Any) -> dict[str, Any]:
    """A scenario's `stage: "Новый клиент"` or `stage: {id: 142}` as a ref."""
    if isinstance(value, dict):
        return {k: str(v) for k, v in value.items()}
    text = str(value)
    return {"id": text} if text.isdigit() else {"name": text}


def matches(pattern: str, text: str) -> bool:
    """A text or rule name in an expectation: a plain substring, or a glob when it has `*`."""
    if "*" in pattern:
        return fnmatch.fnmatchcase(text, pattern)
    return pattern in text
