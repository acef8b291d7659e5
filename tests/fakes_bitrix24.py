"""A local Bitrix24 portal: the inbound-webhook REST API in its documented response shapes.

POST (or GET) /rest/<user>/<code>/<method>[.json] answers {"result": …, "time": {…}}; list
methods add "total" and "next" (50 a page, `start`); `batch` answers result/result_error/
result_total/result_next/result_time; errors are {"error", "error_description"} with the
documented HTTP status. Shapes follow github.com/bitrix24/b24restdocs (see
tests/payloads/bitrix24/api_*.json). Metadata and people are Cyrillic, as on a real portal.
"""
from __future__ import annotations

import base64

import itertools
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from connectors.base import parse_nested_form
from tests.fakes import Call, FakeServer

PAGE = 50
OWNER_TYPES = {1: "lead", 2: "deal", 3: "contact", 4: "company"}
# tasks.task.list filter keys → the camelCase keys tasks are answered with (tasks-task-list.md)
TASK_KEYS = {"ID": "id", "TITLE": "title", "REAL_STATUS": "status", "STATUS": "status",
             "RESPONSIBLE_ID": "responsibleId", "UF_CRM_TASK": "ufCrmTask", "DEADLINE": "deadline",
             "CREATED_DATE": "createdDate"}


class BitrixError(Exception):
    """An answer {"error", "error_description"} with its HTTP status."""

    def __init__(self, status: int, code: str, description: str):
        super().__init__(description)
        self.status, self.code, self.description = status, code, description


@dataclass
class Page:
    """A list answer: the items of one page, the total, and the next `start` (if any)."""

    items: Any
    total: int
    next: int | None = None


def field(ftype: str, title: str, label: str | None = None, items: list[dict] | None = None,
          multiple: bool = False) -> dict[str, Any]:
    """One crm.<type>.fields entry; user fields carry listLabel/formLabel (crm-deal-fields.md)."""
    entry: dict[str, Any] = {"type": ftype, "isRequired": False, "isReadOnly": False, "isImmutable": False,
                             "isMultiple": multiple, "isDynamic": label is not None, "title": title}
    if label is not None:
        entry.update(listLabel=label, formLabel=label, filterLabel=label)
    if items is not None:
        entry["items"] = items
    return entry


def status(entity_id: str, status_id: str, name: str, sort: int, category: str | None = None) -> dict[str, Any]:
    """One crm.status.list row (crm-status-list.md)."""
    return {"ID": str(1000 + sort), "ENTITY_ID": entity_id, "STATUS_ID": status_id, "NAME": name,
            "NAME_INIT": "", "SORT": str(sort), "SYSTEM": "N", "CATEGORY_ID": category, "COLOR": "#39A8EF",
            "SEMANTICS": None, "EXTRA": {"SEMANTICS": "process", "COLOR": "#39A8EF"}}


def category(cid: int, name: str) -> dict[str, Any]:
    """One crm.category.list funnel (crm-category-list.md)."""
    return {"id": cid, "name": name, "sort": 100 + cid, "entityTypeId": 2, "isDefault": "Y" if cid == 0 else "N",
            "originId": "", "originatorId": ""}


def default_statuses() -> dict[str, list[dict[str, Any]]]:
    """Stages of the default funnel, of funnel 3 ("Новая" in both), and lead statuses, by ENTITY_ID."""
    return {
        "DEAL_STAGE": [status("DEAL_STAGE", "NEW", "Новая", 10),
                       status("DEAL_STAGE", "PREPARATION", "Подготовка документов", 20),
                       status("DEAL_STAGE", "EXECUTING", "В работе", 40),
                       status("DEAL_STAGE", "WON", "Сделка успешна", 60)],
        "DEAL_STAGE_3": [status("DEAL_STAGE_3", "C3:NEW", "Новая", 10, "3"),
                         status("DEAL_STAGE_3", "C3:PREPARATION", "Подготовка контента", 20, "3"),
                         status("DEAL_STAGE_3", "C3:WON", "Проект сдан", 60, "3")],
        "STATUS": [status("STATUS", "NEW", "Не обработан", 10), status("STATUS", "IN_PROCESS", "В работе", 20)],
    }


def default_fields() -> dict[str, dict[str, Any]]:
    """crm.<type>.fields per entity type: a few standard fields and labelled UF_CRM_ ones."""
    common = {"ID": field("integer", "ID"), "TITLE": field("string", "Название"),
              "ASSIGNED_BY_ID": field("user", "Ответственный"), "DATE_MODIFY": field("datetime", "Дата изменения")}
    channel = [{"ID": "45", "VALUE": "Instagram"}, {"ID": "46", "VALUE": "Сайт"}]
    kind = [{"ID": "61", "VALUE": "Клиент"}, {"ID": "62", "VALUE": "Подрядчик"}]
    return {
        "deal": {**common, "STAGE_ID": field("crm_status", "Стадия сделки"),
                 "CATEGORY_ID": field("crm_category", "Воронка"), "OPPORTUNITY": field("double", "Сумма"),
                 "UF_CRM_1721244482250": field("string", "UF_CRM_1721244482250", "Комментарий клиента"),
                 "UF_CRM_1725365197310": field("date", "UF_CRM_1725365197310", "Дата оплаты"),
                 "UF_CRM_1725365201104": field("enumeration", "UF_CRM_1725365201104", "Канал", items=channel)},
        "lead": {**common, "STATUS_ID": field("crm_status", "Статус")},
        "contact": {**common, "NAME": field("string", "Имя"), "LAST_NAME": field("string", "Фамилия"),
                    "UF_CRM_1725370000001": field("enumeration", "UF_CRM_1725370000001", "Классификация", items=kind)},
        "company": dict(common),
    }


class FakeBitrix24(FakeServer):
    """A portal with deals, leads, contacts, companies, tasks, activities, users and funnels."""

    def __init__(self, user_id: str = "1", code: str = "x7k2webhookcode") -> None:
        super().__init__()
        self.user_id, self.code = user_id, code
        self.ids = itertools.count(9001)
        self.records: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in ("deal", "lead", "contact", "company")}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.activities: list[dict[str, Any]] = []
        self.comments: list[dict[str, Any]] = []
        self.product_rows: dict[int, list[dict[str, Any]]] = {}   # deal id → rows as crm.deal.productrows.get gives them
        self.notifications: list[dict[str, Any]] = []
        self.task_comments: list[dict[str, Any]] = []
        self.users = [{"ID": "1", "ACTIVE": True, "NAME": "Ольга", "LAST_NAME": "Коваленко"},
                      {"ID": "7", "ACTIVE": True, "NAME": "Иван", "LAST_NAME": "Петренко"}]
        self.categories = [category(0, "Общая"), category(3, "Реализация")]
        self.statuses = default_statuses()
        self.fields = default_fields()
        self.methods = self._methods()
        self.methods.update(self._contact_match_methods())
        self.methods.update(self._delete_methods())
        self.methods.update(self._deal_contact_items_methods())
        self.methods.update(self._digest_routing_methods())
        self.methods.update(self._task_write_methods())
        self.methods.update(self._history_methods())
        pattern = rf"/rest/{re.escape(user_id)}/{re.escape(code)}/([\w.]+?)(?:\.json)?"
        self.route("POST", pattern, self._serve)
        self.route("GET", pattern, self._serve)

    @property
    def base_url(self) -> str:
        """What connections.yaml names as base_url (the code goes in credentials.webhook)."""
        return f"{self.url}/rest/{self.user_id}"

    def add(self, entity_type: str, record: dict[str, Any]) -> dict[str, Any]:
        self.records[entity_type][int(record["ID"])] = record
        return record

    # --- stage history (rest_help/crm/stagehistory.php) and the portal's clock (server.time) ---------

    def _history_methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        self.zone = timezone.utc          # the portal's time zone: the offset it writes times with
        self.history: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 5: []}   # by entityTypeId
        self.history_ids = itertools.count(1)
        return {"crm.stagehistory.list": self._stage_history, "server.time": lambda p: self.now()}

    def now(self, at: float | None = None) -> str:
        """A moment as the portal writes it: ISO 8601 with its own offset (data-types.md, datetime)."""
        return datetime.fromtimestamp(time.time() if at is None else at, self.zone).isoformat(timespec="seconds")

    def move_deal(self, deal_id: int, stage: str, at: float | None = None) -> dict[str, Any]:
        """A user moves the deal: STAGE_ID and DATE_MODIFY change, and a stage history row is kept
        (TYPE_ID 2, or 3 for a final stage; CATEGORY_ID, STAGE_SEMANTIC_ID, STAGE_ID for deals)."""
        deal = self.records["deal"][int(deal_id)]
        deal.update(STAGE_ID=stage, DATE_MODIFY=self.now(at))
        final = stage.split(":")[-1] in ("WON", "LOSE")
        row = {"ID": str(next(self.history_ids)), "TYPE_ID": "3" if final else "2", "OWNER_ID": str(deal_id),
               "CREATED_TIME": deal["DATE_MODIFY"], "CATEGORY_ID": str(deal.get("CATEGORY_ID") or "0"),
               "STAGE_SEMANTIC_ID": ("S" if stage.endswith("WON") else "F") if final else "P", "STAGE_ID": stage}
        self.history[2].append(row)
        return row

    def _stage_history(self, params: dict[str, Any]) -> Page:
        """{"items": [...]} with total/next, 50 a page (`start`); filter with =, !=, <, >, <=, >=;
        `order` by a field; entityTypeId 1 (lead), 2 (deal) or 5 (invoice), else an error."""
        kind = int(params.get("entityTypeId") or 0)
        if kind not in self.history:
            raise BitrixError(400, "NOT_FOUND", "Smart process not found")
        page = self._list(self.history[kind], params)
        return Page({"items": page.items}, page.total, page.next)

    def add_task(self, **task: Any) -> dict[str, Any]:
        task = {"id": str(task.pop("id", next(self.ids))), "status": "2", "ufCrmTask": [], **task}
        self.tasks[int(task["id"])] = task
        return task

    def method_calls(self, name: str) -> list[Call]:
        """Calls of one REST method that were answered without an HTTP error."""
        return self.received(None, rf"/rest/{re.escape(self.user_id)}/{re.escape(self.code)}/"
                                   rf"{re.escape(name)}(\.json)?")

    def answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The HTTP status and body Bitrix24 gives for one method call."""
        handler = self.methods.get(method)
        if handler is None:  # _includes/system-errors.md
            return 404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}
        try:
            result = handler(params)
        except BitrixError as exc:
            return exc.status, {"error": exc.code, "error_description": exc.description}
        if not isinstance(result, Page):
            return 200, {"result": result, "time": _time()}
        body: dict[str, Any] = {"result": result.items}
        if result.next is not None:
            body["next"] = result.next
        return 200, {**body, "total": result.total, "time": _time()}

    def _serve(self, call: Call, m: re.Match):
        params = call.body if isinstance(call.body, dict) else {}
        if call.method == "GET":
            params = parse_nested_form("&".join(f"{k}={v}" for k, vs in call.query.items() for v in vs).encode())
        status_code, body = self.answer(m.group(1), params)
        return status_code, body, {}

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        methods: dict[str, Callable[[dict[str, Any]], Any]] = {}
        for etype in self.records:
            methods[f"crm.{etype}.get"] = lambda p, t=etype: self._get(t, p)
            methods[f"crm.{etype}.update"] = lambda p, t=etype: self._update(t, p)
            methods[f"crm.{etype}.list"] = lambda p, t=etype: self._list(list(self.records[t].values()), p)
            methods[f"crm.{etype}.fields"] = lambda p, t=etype: self.fields[t]
        methods.update({
            "crm.item.update": self._item_update, "crm.category.list": self._categories,
            "crm.status.list": self._status_list, "user.get": lambda p: self._list(self.users, p),
            "tasks.task.add": self._task_add, "tasks.task.get": self._task_get, "tasks.task.list": self._task_list,
            "crm.timeline.comment.add": self._comment_add, "crm.timeline.comment.list": self._comment_list,
            "crm.activity.list": self._activity_list,
            "crm.deal.productrows.get": self._product_rows,
            "im.notify.system.add": self._notify, "batch": self._batch,
        })
        return methods

    # --- CRM records ---------------------------------------------------------------------------

    def _record(self, entity_type: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = params.get("id", params.get("ID"))
        if not str(rid or "").isdigit() or int(rid) <= 0:  # crm-deal-update.md error table
            raise BitrixError(400, "", "ID is not defined or invalid.")
        record = self.records[entity_type].get(int(rid))
        if record is None:
            raise BitrixError(400, "", "Not found")
        return record

    def _get(self, entity_type: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._record(entity_type, params)

    def _update(self, entity_type: str, params: dict[str, Any]) -> bool:
        record = self._record(entity_type, params)
        fields = params.get("fields", params.get("FIELDS"))
        if not isinstance(fields, dict):
            raise BitrixError(400, "", "Parameter 'fields' must be array.")
        # "An incorrect field in `fields` will be ignored" (crm-deal-update.md)
        stage = record.get("STAGE_ID")
        record.update({k: v for k, v in fields.items() if k in self.fields[entity_type]})
        record["DATE_MODIFY"] = self.now()
        if entity_type == "deal" and record.get("STAGE_ID") != stage:
            self.move_deal(int(record["ID"]), record["STAGE_ID"])
        return True

    def _item_update(self, params: dict[str, Any]) -> dict[str, Any]:
        etype = OWNER_TYPES.get(int(params.get("entityTypeId") or 0))
        if etype is None:
            raise BitrixError(400, "NOT_FOUND", "Smart process not found")
        record = self._record(etype, params)
        fields = params.get("fields") or {}
        if "categoryId" in fields:
            record["CATEGORY_ID"] = str(fields["categoryId"])
        if "stageId" in fields and fields["stageId"] != record.get("STAGE_ID"):
            if etype == "deal":
                self.move_deal(int(record["ID"]), fields["stageId"])
            record["STAGE_ID"] = fields["stageId"]
        return {"item": {"id": int(record["ID"]), "categoryId": int(record.get("CATEGORY_ID") or 0),
                         "stageId": record.get("STAGE_ID")}}

    def _categories(self, params: dict[str, Any]) -> Page:
        if str(params.get("entityTypeId")) != "2":
            raise BitrixError(400, "NOT_FOUND", "Smart process not found")
        return Page({"categories": self.categories}, len(self.categories))

    def _status_list(self, params: dict[str, Any]) -> Page:
        entity_id = (params.get("filter") or {}).get("ENTITY_ID")
        rows = self.statuses.get(entity_id, []) if entity_id else sum(self.statuses.values(), [])
        return Page(rows, len(rows))

    def _activity_list(self, params: dict[str, Any]) -> Page:
        return self._list(self.activities, params)

    def add_product_row(self, deal_id: int, name: str, price: float, quantity: float = 1, tax_rate: float | None = None,
                        tax_included: bool = True, measure: str = "шт", discount_rate: float = 0) -> dict[str, Any]:
        """A deal's product row as crm.deal.productrows.get returns it (crm-deal-productrows-get.md,
        tests/payloads/bitrix24/api_crm_deal_productrows_get.json): PRICE the unit's final price
        (discount and tax in), PRICE_EXCLUSIVE with the discount, without the tax, PRICE_NETTO without
        either, PRICE_BRUTTO with the tax, without the discount. `price` is what the manager typed:
        with the tax when `tax_included`, without it otherwise."""
        rate = (tax_rate or 0) / 100
        netto = price / (1 + rate) if tax_included else price
        exclusive = round(netto * (1 - discount_rate / 100), 2)
        row = {"ID": str(next(self.ids)), "OWNER_ID": str(deal_id), "OWNER_TYPE": "D", "PRODUCT_ID": 0,
               "PRODUCT_NAME": name, "ORIGINAL_PRODUCT_NAME": name, "PRODUCT_DESCRIPTION": None,
               "PRICE": round(exclusive * (1 + rate), 2), "PRICE_EXCLUSIVE": exclusive, "PRICE_NETTO": round(netto, 2),
               "PRICE_BRUTTO": round(netto * (1 + rate), 2), "PRICE_ACCOUNT": f"{exclusive * (1 + rate):.2f}",
               "QUANTITY": quantity, "DISCOUNT_TYPE_ID": 2, "DISCOUNT_RATE": discount_rate,
               "DISCOUNT_SUM": round(netto - exclusive, 2), "TAX_RATE": tax_rate,
               "TAX_INCLUDED": "Y" if tax_included else "N", "CUSTOMIZED": "Y", "MEASURE_CODE": 796,
               "MEASURE_NAME": measure, "SORT": 10 * (len(self.product_rows.get(deal_id, [])) + 1), "XML_ID": None,
               "TYPE": 7}
        self.product_rows.setdefault(int(deal_id), []).append(row)
        return row

    def _product_rows(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        record = self._record("deal", params)   # "The parameter id is invalid…" / "Not found"
        return list(self.product_rows.get(int(record["ID"]), []))

    def _comment_add(self, params: dict[str, Any]) -> int:
        fields = params.get("fields") or {}
        if not fields.get("COMMENT"):
            raise BitrixError(400, "", "Required fields are missing: COMMENT")  # wording not documented
        comment = {"ID": next(self.ids), **fields, "CREATED": _now_iso(), "AUTHOR_ID": self.user_id, "FILES": {}}
        for name, encoded in fields.get("FILES") or []:   # [[name, base64]] (crm-timeline-comment-add.md)
            file_id = next(self.ids)   # kept by id on the portal's disk, as the comment's files list them
            comment["FILES"][str(file_id)] = {"id": file_id, "name": name, "content": base64.b64decode(encoded)}
        self.comments.append(comment)
        return comment["ID"]

    def _comment_list(self, params: dict[str, Any]) -> Page:
        """crm.timeline.comment.list: the filter must name ENTITY_ID and ENTITY_TYPE; order by ID,
        CREATED or AUTHOR_ID; rows as "Response Handling" shows them (IDs as strings; b24restdocs
        api-reference/crm/timeline/comments/crm-timeline-comment-list.md)."""
        flt = params.get("filter") or {}
        if not flt.get("ENTITY_ID") or not flt.get("ENTITY_TYPE"):   # the two mandatory fields
            raise BitrixError(400, "", "ENTITY_ID and ENTITY_TYPE are required")   # wording not documented
        rows = [{**c, "ID": str(c["ID"]), "ENTITY_ID": str(c.get("ENTITY_ID"))} for c in self.comments
                if str(c.get("ENTITY_ID")) == str(flt["ENTITY_ID"]) and str(c.get("ENTITY_TYPE")) == str(flt["ENTITY_TYPE"])]
        return self._list(rows, {**params, "filter": {}})

    def _notify(self, params: dict[str, Any]) -> int:
        note = {"id": next(self.ids), **params}
        self.notifications.append(note)
        return note["id"]

    # --- find_or_create: duplicates by phone/email, contacts added and linked to deals ---------------

    def _contact_match_methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"crm.duplicate.findbycomm": self._find_by_comm, "crm.contact.add": self._contact_add,
                "crm.deal.contact.add": self._deal_contact_add}

    def _find_by_comm(self, params: dict[str, Any]) -> Any:
        """{"CONTACT": [ids]} of contacts holding one of `values` (crm-duplicate-find-by-comm.md); phones
        compared on their digits (the portal normalizes them; how exactly is not documented), emails in
        any case. Nothing found: [] (PHP's empty map)."""
        kind, values = str(params.get("type") or ""), _listed(params.get("values"))
        if kind not in ("PHONE", "EMAIL"):
            raise BitrixError(400, "Communication type is not defined", "Parameter 'type' is required.")
        norm = (lambda v: re.sub(r"\D", "", str(v))) if kind == "PHONE" else (lambda v: str(v).strip().casefold())
        wanted = {norm(v) for v in values if norm(v)}
        ids = [int(rid) for rid, rec in sorted(self.records["contact"].items())
               if any(norm(item.get("VALUE")) in wanted for item in rec.get(kind) or [])]
        return {"CONTACT": ids} if ids else []

    def _contact_add(self, params: dict[str, Any]) -> int:
        fields = params.get("fields") or params.get("FIELDS") or {}
        rid = next(self.ids)
        self.add("contact", {**fields, "ID": str(rid),
                             "DATE_CREATE": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        return rid

    def _deal_contact_add(self, params: dict[str, Any]) -> bool:
        deal = self._record("deal", params)
        contact = int((params.get("fields") or {}).get("CONTACT_ID") or 0)
        if contact <= 0:
            raise BitrixError(400, "", "The parameter 'fields' is not valid.")
        linked = deal.setdefault("CONTACT_IDS", [])
        if contact in linked:   # "false — link not added, contact already linked to the deal"
            return False
        linked.append(contact)
        deal.setdefault("CONTACT_ID", str(contact))
        return True

    # --- create_task bind: crm.deal.contact.items.get {"id"} (crm/deals/contacts/crm-deal-contact-items-get.md) --

    def _deal_contact_items_methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"crm.deal.contact.items.get": self._deal_contact_items}

    def _deal_contact_items(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """[{"CONTACT_ID", "SORT", "ROLE_ID", "IS_PRIMARY"}] of the deal's CONTACT_IDS (crm.deal.contact.add),
        else of its CONTACT_ID; the first is primary. A missing deal: HTTP 400 "Not found" (via _record)."""
        deal = self._record("deal", params)
        ids = list(deal.get("CONTACT_IDS") or ([deal["CONTACT_ID"]] if deal.get("CONTACT_ID") else []))
        return [{"CONTACT_ID": int(cid), "SORT": 10 * (n + 1), "ROLE_ID": 0, "IS_PRIMARY": "Y" if n == 0 else "N"}
                for n, cid in enumerate(ids)]

    # --- delete_entity: crm.<type>.delete {"id"} (crm-deal-delete.md, crm-lead-delete.md, crm-contact-delete.md) --

    def _delete_methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {f"crm.{etype}.delete": (lambda p, t=etype: self._delete(t, p)) for etype in self.records}

    def _delete(self, entity_type: str, params: dict[str, Any]) -> bool:
        """`true`; a missing record is the documented HTTP 400 "Not found" (via _record)."""
        record = self._record(entity_type, params)
        del self.records[entity_type][int(record["ID"])]
        return True

    # --- digests and routing (D7, D8): crm.deal.list by contact, crm.deal.add, crm.activity.get --------

    def _digest_routing_methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"crm.deal.list": self._deal_list, "crm.deal.add": self._deal_add,
                "crm.activity.get": self._activity_get}

    def _deal_list(self, params: dict[str, Any]) -> Page:
        """crm.deal.list; a CONTACT_ID filter matches the deal's CONTACT_ID and every contact linked
        with crm.deal.contact.add (CONTACT_IDS)."""
        flt = dict(params.get("filter") or {})
        contact = flt.pop("CONTACT_ID", None)
        rows = list(self.records["deal"].values())
        if contact is not None:
            rows = [r for r in rows if str(contact) in {str(r.get("CONTACT_ID")), *map(str, r.get("CONTACT_IDS") or [])}]
        return self._list(rows, {**params, "filter": flt})

    def _deal_add(self, params: dict[str, Any]) -> int:
        """crm.deal.add {"fields"}: the new deal in the default funnel's first stage (crm-deal-add.md)."""
        fields = params.get("fields") or {}
        rid = next(self.ids)
        contacts = [int(c) for c in _listed(fields.get("CONTACT_IDS"))]
        self.add("deal", {"STAGE_ID": "NEW", "CATEGORY_ID": "0", "CLOSED": "N", "ASSIGNED_BY_ID": self.user_id,
                          **{k: v for k, v in fields.items() if k in self.fields["deal"]}, "ID": str(rid),
                          "CONTACT_ID": str(contacts[0]) if contacts else None, "CONTACT_IDS": contacts,
                          "DATE_CREATE": _now_iso(), "DATE_MODIFY": _now_iso()})
        return rid

    def _activity_get(self, params: dict[str, Any]) -> dict[str, Any]:
        """crm.activity.get {"id"}: one of `self.activities` (IDs as strings); a missing one 400 "Not found"."""
        rid = str(params.get("id") or params.get("ID") or "")
        for activity in self.activities:
            if str(activity.get("ID")) == rid:
                return activity
        raise BitrixError(400, "", "Not found")

    # --- a task's fields and comments: tasks.task.update (tasks-task-update.md), task.commentitem.add /
    # getlist (tasks/comment-item/task-comment-item-add.md, task-comment-item-get-list.md) -------------

    def _task_write_methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"tasks.task.update": self._task_update, "task.commentitem.add": self._task_comment_add,
                "task.commentitem.getlist": self._task_comment_list}

    def _task_of(self, task_id: Any) -> dict[str, Any]:
        task = self.tasks.get(int(task_id or 0)) if str(task_id or "").isdigit() else None
        if task is None:   # the answer for a task that is not there or not visible (wording not documented)
            raise BitrixError(400, "ERROR_CORE", "Task not found or not accessible")
        return task

    def _task_update(self, params: dict[str, Any]) -> dict[str, Any]:
        task = self._task_of(params.get("taskId"))
        for key, value in (params.get("fields") or {}).items():
            task[TASK_KEYS.get(key, key)] = value   # UF_ fields kept under their codes
        return {"task": task}

    def _task_comment_add(self, params: dict[str, Any]) -> int:
        self._task_of(params.get("TASKID"))
        text = (params.get("FIELDS") or {}).get("POST_MESSAGE")
        if not text:
            raise BitrixError(400, "ERROR_CORE", "Comment text is empty")   # wording not documented
        comment = {"ID": str(next(self.ids)), "TASK_ID": str(params["TASKID"]), "POST_MESSAGE": text,
                   "POST_DATE": _now_iso(), "AUTHOR_ID": self.user_id}
        self.task_comments.append(comment)
        return int(comment["ID"])

    def _task_comment_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        self._task_of(params.get("TASKID"))
        rows = [c for c in self.task_comments if c["TASK_ID"] == str(params["TASKID"])]
        return sorted(rows, key=lambda c: int(c["ID"]), reverse=True)

    # --- tasks -----------------------------------------------------------------------------------

    def _task_add(self, params: dict[str, Any]) -> dict[str, Any]:
        fields = params.get("fields") or {}
        if not fields.get("TITLE"):  # the documented ERROR_CORE answer (tasks-task-add.md)
            raise BitrixError(400, "ERROR_CORE", "Task title is not specified<br>")
        task = self.add_task(title=fields["TITLE"], description=fields.get("DESCRIPTION", ""), createdDate=_now_iso(),
                             responsibleId=str(fields.get("RESPONSIBLE_ID", "")), deadline=fields.get("DEADLINE"),
                             createdBy=self.user_id, ufCrmTask=list(fields.get("UF_CRM_TASK") or []))
        return {"task": task}

    def _task_get(self, params: dict[str, Any]) -> Any:
        task = self.tasks.get(int(params.get("taskId") or 0))
        return {"task": task} if task else []  # "Returns an empty array" when missing (tasks-task-get.md)

    def _task_list(self, params: dict[str, Any]) -> Page:
        page = self._list(list(self.tasks.values()), params, keys=TASK_KEYS, select=False)
        return Page({"tasks": page.items}, page.total, page.next)

    # --- lists and batch ---------------------------------------------------------------------------

    def _list(self, rows: list[dict[str, Any]], params: dict[str, Any], keys: dict[str, str] | None = None,
              select: bool = True) -> Page:
        flt = params.get("filter") or params.get("FILTER") or {}
        rows = [r for r in rows if all(_match(r, k, v, keys or {}, getattr(self, "zone", None)) for k, v in flt.items())]
        for key, direction in reversed(list((params.get("order") or {}).items())):
            rows.sort(key=lambda r: _sort_key(r.get((keys or {}).get(key, key))),
                      reverse=str(direction).lower() == "desc")
        start = int(params.get("start") or 0)
        chosen = _listed(params.get("select")) if select else []
        page = [({k: r.get(k) for k in chosen} if chosen and "*" not in chosen else dict(r))
                for r in rows[start:start + PAGE]]
        return Page(page, len(rows), start + PAGE if start + PAGE < len(rows) else None)

    def _batch(self, params: dict[str, Any]) -> dict[str, Any]:
        cmd = params.get("cmd") or {}
        if len(cmd) > 50:  # _includes/system-errors.md names the code; the wording is not documented
            raise BitrixError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        out: dict[str, dict[str, Any]] = {"result": {}, "result_error": {}, "result_total": {},
                                          "result_next": {}, "result_time": {}}
        for key, text in cmd.items():
            method, _, query = str(text).partition("?")
            if method == "batch":
                raise BitrixError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
            status_code, body = self.answer(method, parse_nested_form(query.encode()))
            if status_code >= 400:
                out["result_error"][key] = body
                if str(params.get("halt")) in ("1", "true", "True"):
                    break
                continue
            out["result"][key] = body["result"]
            out["result_time"][key] = body["time"]
            if "total" in body:
                out["result_total"][key] = body["total"]
            if "next" in body:
                out["result_next"][key] = body["next"]
        return {k: v or [] for k, v in out.items()}  # PHP answers an empty map as []


def _listed(value: Any) -> list[Any]:
    """A list sent as JSON, or as form keys select[0]=…, select[1]=…"""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else 0)]
    return list(value or [])


def _match(row: dict[str, Any], key: str, want: Any, keys: dict[str, str], zone: Any = None) -> bool:
    """One filter condition: `KEY`, `=KEY`, `!KEY`, `>KEY`, `<=KEY`…; a list value means "any of"."""
    op = re.match(r"(>=|<=|!=|!|>|<|=)?", key).group(1) or ""
    name = key[len(op):]
    have = row.get(keys.get(name, name))
    wants = [str(w) for w in _listed(want)] if isinstance(want, (list, dict)) else [str(want)]
    haves = [str(h) for h in have] if isinstance(have, list) else [str(have)]
    if op in ("", "=", "!", "!="):
        hit = any(h in wants for h in haves)
        return hit if op in ("", "=") else not hit
    a, b = _when(have, zone), _when(want, zone, wall_clock=True)
    if a is None or b is None:
        a, b = _sort_key(have), _sort_key(want)
    return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def _when(value: Any, zone: Any, wall_clock: bool = False) -> datetime | None:
    """A datetime value as the portal compares it (None: not one). Whether a portal honours the
    offset of a date in a filter is not documented (data-types.md gives the format it writes);
    this fake takes a filter value's wall-clock time in its own zone, the stricter reading, so a
    client that writes the portal's own offset is right whichever reading a portal has."""
    if zone is None or not isinstance(value, str) or not re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", value):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if wall_clock or moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment


def _sort_key(value: Any) -> tuple[int, Any]:
    text = str(value if value is not None else "")
    return (0, float(text)) if re.fullmatch(r"-?\d+(\.\d+)?", text) else (1, text)


def _now_iso() -> str:
    """Now as Bitrix24 writes times: ISO 8601 with the portal's offset (here UTC)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _time() -> dict[str, Any]:
    """The "time" block every answer carries (api-reference/data-types.md#time)."""
    now = time.time()
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
    return {"start": now, "finish": now + 0.01, "duration": 0.01, "processing": 0.005, "date_start": stamp,
            "date_finish": stamp, "operating_reset_at": int(now) + 600, "operating": 0}
