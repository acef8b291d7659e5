"""The marketing agency's amoCRM for playbook C end-to-end tests (sales, realization, lost).

The whole shipped example (config/examples/marketing-agency/: connections and every rule file)
runs in the real app and a real RQ worker on real Redis against the fake amoCRM v4 (tests/fakes.py)
with the agency's pipelines, users and fields. Webhooks are amoCRM's real form-encoded shapes
(tests/payloads/amocrm/: lead_status_changed_full.form, lead_added.form,
lead_updated_custom_fields.form, task_updated_doc.form, note_attachment_code_evidence.form).
Time is `pipeline.clock.now`, and the fake's own clock (created_at of tasks and events) follows it.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from tests.conftest import ROOT, TG_TOKEN, run_worker
from pipeline import clock

EXAMPLE = ROOT / "config" / "examples" / "marketing-agency"
MSK = ZoneInfo("Europe/Moscow")
FORM = "application/x-www-form-urlencoded"
SALES, REALIZATION, LOST = 2116, 3300, 3400
STAGES = {SALES: {"Новый клиент": 10216993, "Получение брифа": 10216995, "Отложенные": 10216997,
                  "Встреча назначена": 10216998, "Бриф получен": 10216994, "Согласование КП": 10216996,
                  "Утвержденный проект": 10216999, "Успешно реализовано": 142, "Закрыто и не реализовано": 143},
          REALIZATION: {"Тайминг": 20001, "Подготовка контента": 20002, "Согласование контента": 20003,
                        "Исполнение": 20004, "Успешно реализовано": 142, "Не реализовано": 143},
          LOST: {"Вернуть клиента": 30001, "Успешно реализовано": 142, "Закрыто и не реализовано": 143}}
PIPELINES = {SALES: "Воронка продаж", REALIZATION: "Реализация", LOST: "Работа с потерянными"}
USERS = {"Ольга Смирнова": 938348, "Иван Петров": 102525, "Анна Кузнецова": 555001, "Мария Соколова": 555002,
         "Елена Новикова": 555003}
FIELDS = ["Дата получения брифа", "Дата первой встречи", "Причина отказа", "Реквизиты клиента",
          "Реквизиты подрядчика", "Дата дедлайна КП", "PR-менеджер", "Тип оплаты", "Дата оплаты 1",
          "Дата оплаты 2", "Дата оплаты 3", "Дата оплаты 4", "Бриф", "Ссылка на КП", "Ссылка на договор",
          "Дедлайн проекта", "Закрывающие документы получены", "Менеджер по продажам", "Email", "Телефон",
          *[f"ФИО блогера {i}" for i in (1, 2, 3)],
          *[f"{kind} {i}.{j}" for i in (1, 2, 3) for j in range(1, 7) for kind in ("Услуга", "Площадка")]]
FIELD_IDS = {name: 700001 + n for n, name in enumerate(FIELDS)}
HEAD = USERS["Мария Соколова"]


def msk(*args: int) -> datetime:
    return datetime(*args, tzinfo=MSK)


def stage(pipeline: int, name: str) -> int:
    return STAGES[pipeline][name]


@pytest.fixture
def env(fake_amo, fake_tg) -> dict[str, str]:
    """What the agency's deployment sets; the mail, telephony and ads connections of the other
    rule files are given addresses that nothing in these tests reaches. The fake answers at once:
    AMO_RATE_PER_SECOND lifts amoCRM's 7 requests/second, which would only slow the tests down."""
    return {"AMO_RATE_PER_SECOND": "1000", "AMO_BASE_URL": fake_amo.url, "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": "amo-secret",
            "TELEGRAM_API_URL": fake_tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
            "SMTP_HOST": "127.0.0.1", "SMTP_PORT": "9", "SMTP_SECURITY": "none", "SMTP_USER": "u", "SMTP_PASSWORD": "p",
            "ZADARMA_API_URL": "http://127.0.0.1:9", "ZADARMA_KEY": "k", "ZADARMA_SECRET": "s",
            "ADS_HOOK_URL": "http://127.0.0.1:9/audiences", "ADS_HOOK_SECRET": "h",
            # the chats, extensions and sender have no default (tests/test_guides.py)
            "HEAD_CHAT_ID": "-1001000000002", "STAFF_CHAT_ID": "-1001000000001", "OLGA_EXTENSION": "100",
            "IVAN_EXTENSION": "101", "MAIL_FROM": "Агентство <hello@agency.example>"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The whole shipped example, as a deployment would point CRMBRIDGE_CONFIG at it."""
    target = tmp_path / "config"
    shutil.copytree(EXAMPLE, target)
    return target


@pytest.fixture
def amo(fake_amo):
    """The agency's account: three pipelines (statuses with `sort`), five users, the deal fields."""
    fake_amo.pipelines = [{"id": pid, "name": PIPELINES[pid], "statuses": [
        {"id": sid, "name": name, "sort": 10000 if sid == 142 else 11000 if sid == 143 else 10 * (n + 1),
         "pipeline_id": pid} for n, (name, sid) in enumerate(STAGES[pid].items())]} for pid in STAGES]
    fake_amo.users = [{"id": uid, "name": name} for name, uid in USERS.items()]
    fake_amo.fields = [{"id": fid, "name": name, "type": "date" if "Дата" in name or "Дедлайн" in name else "text"}
                       for name, fid in FIELD_IDS.items()]
    fake_amo.entity_fields["contacts"] = [{"id": 800001, "name": "Классификация", "type": "select"}]
    return fake_amo


@pytest.fixture
def at(monkeypatch, fake_amo):
    """Set the worker's clock, and amoCRM's with it."""
    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
        fake_amo.clock = moment.timestamp
    return set_clock


def lead(amo, lead_id: int, name: str, pipeline: int, stage_name: str, fields: dict[str, Any] | None = None,
         responsible: str = "Ольга Смирнова", contacts: list[int] = (), created_at: float | None = None) -> dict:
    """A deal as GET /api/v4/leads/{id}?with=contacts returns it (api_lead_get_with_contacts.json)."""
    found = {"id": lead_id, "name": name, "price": 450000, "responsible_user_id": USERS[responsible],
             "group_id": 0, "status_id": stage(pipeline, stage_name), "pipeline_id": pipeline,
             "created_at": int(created_at or amo.clock()), "updated_at": int(amo.clock()),
             "custom_fields_values": [], "_embedded": {"tags": [], "companies": [], "contacts": [
                 {"id": c, "is_main": n == 0} for n, c in enumerate(contacts)]}}
    amo.add_lead(found)
    set_fields(amo, lead_id, fields or {})
    return found


def set_fields(amo, lead_id: int, fields: dict[str, Any]) -> None:
    values = {cf["field_name"]: cf for cf in amo.leads[lead_id]["custom_fields_values"]}
    for name, value in fields.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = {"field_id": FIELD_IDS[name], "field_name": name, "field_code": None,
                            "field_type": "date" if isinstance(value, int) and "Дат" in name or "Дедлайн" in name else "text",
                            "values": [{"value": value}]}
    amo.leads[lead_id]["custom_fields_values"] = list(values.values())


def _lead_keys(prefix: str, found: dict[str, Any]) -> dict[str, str]:
    keys = {f"{prefix}[id]": str(found["id"]), f"{prefix}[name]": found["name"],
            f"{prefix}[status_id]": str(found["status_id"]), f"{prefix}[price]": str(found["price"]),
            f"{prefix}[responsible_user_id]": str(found["responsible_user_id"]),
            f"{prefix}[last_modified]": str(int(found["updated_at"])), f"{prefix}[modified_user_id]": "938348",
            f"{prefix}[created_user_id]": "938348", f"{prefix}[date_create]": str(found["created_at"]),
            f"{prefix}[pipeline_id]": str(found["pipeline_id"]), f"{prefix}[account_id]": "32427762"}
    for n, cf in enumerate(found["custom_fields_values"]):
        keys.update({f"{prefix}[custom_fields][{n}][id]": str(cf["field_id"]),
                     f"{prefix}[custom_fields][{n}][name]": cf["field_name"],
                     f"{prefix}[custom_fields][{n}][values][0][value]": str(cf["values"][0]["value"])})
    return keys


def post(client, form: dict[str, str]) -> None:
    resp = client.post("/hooks/agency-amo?token=amo-secret", data=urlencode(form), content_type=FORM)
    assert resp.status_code == 200, resp.get_data(as_text=True)


def moved(client, runtime, amo, lead_id: int, to: str, pipeline: int | None = None) -> None:
    """A manager drags the deal to a stage: amoCRM changes it, keeps the event, sends «Смена статуса
    сделки» (lead_status_changed_full.form: the whole lead plus old_status_id); the worker runs."""
    found = amo.leads[lead_id]
    old = found["status_id"]
    amo.move_lead(lead_id, stage(pipeline or found["pipeline_id"], to), pipeline)
    found["updated_at"] = int(amo.clock())
    post(client, {**_lead_keys("leads[status][0]", found), "leads[status][0][old_status_id]": str(old),
                  "account[subdomain]": "agency"})
    run_worker(runtime)


def created(client, runtime, amo, lead_id: int) -> None:
    """«Сделка добавлена» (lead_added.form) for a deal amoCRM now has."""
    post(client, {"account[subdomain]": "agency", "account[id]": "32427762",
                  **_lead_keys("leads[add][0]", amo.leads[lead_id])})
    run_worker(runtime)


def updated(client, runtime, amo, lead_id: int, fields: dict[str, Any]) -> None:
    """A manager fills fields: «Сделка изменена» (lead_updated_custom_fields.form)."""
    set_fields(amo, lead_id, fields)
    amo.leads[lead_id]["updated_at"] = int(amo.clock()) + 1
    post(client, {"account[subdomain]": "agency", **_lead_keys("leads[update][0]", amo.leads[lead_id])})
    run_worker(runtime)


def closed(client, runtime, amo, task_id: int, result: str = "") -> None:
    """A user closes a task (with a result): «Задача изменена» (task_updated_doc.form)."""
    task = amo.close_task(task_id, result)
    form = {"task[update][0][id]": str(task_id), "task[update][0][element_id]": str(task["entity_id"]),
            "task[update][0][element_type]": "2", "task[update][0][task_type]": str(task["task_type_id"]),
            "task[update][0][date_create]": "2026-11-20 15:00:00", "task[update][0][text]": task["text"],
            "task[update][0][status]": "1", "task[update][0][account_id]": "32427762",
            "task[update][0][created_user_id]": "938348", "task[update][0][last_modified]": "2026-11-27 12:00:00",
            "task[update][0][responsible_user_id]": str(task["responsible_user_id"]),
            "task[update][0][complete_till]": "2026-11-30 23:59:00", "task[update][0][action_close]": "1",
            "account[subdomain]": "agency"}
    if result:
        form.update({"task[update][0][result][id]": str(task_id + 1), "task[update][0][result][text]": result})
    post(client, form)
    run_worker(runtime)


def uploaded(client, runtime, amo, lead_id: int, name: str) -> None:
    """A file added to the deal: the attachment note webhook (note_attachment_code_evidence.form),
    and the file in the deal's files (files-api) with its drive name."""
    note_id = next(amo.ids)
    uuid = f"6f1d0b6c-0000-4000-8000-{note_id:012d}"
    amo.file_links.setdefault(("leads", lead_id), []).append({"id": note_id, "file_uuid": uuid})
    amo.drive_files[uuid] = {"uuid": uuid, "name": name, "size": 1024, "metadata": {"extension": "pdf"},
                             "_links": {"download": {"href": f"{amo.url}/drive/download/{uuid}"}}}
    post(client, {"leads[note][0][note][id]": str(note_id), "leads[note][0][note][element_id]": str(lead_id),
                  "leads[note][0][note][element_type]": "2", "leads[note][0][note][note_type]": "5",
                  "leads[note][0][note][text]": name, "leads[note][0][note][created_by]": "555001",
                  "account[subdomain]": "agency"})
    run_worker(runtime)


def tick(runtime, at, moment: datetime) -> None:
    """The clock reaches `moment`: due timers become RQ jobs, a real RQ worker runs them."""
    at(moment)
    runtime.backend.fire_due_timers(now=moment.timestamp())
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def tasks_made(amo, since: int = 0) -> list[dict[str, Any]]:
    """Tasks created through POST /api/v4/tasks (the bodies amoCRM received), in order."""
    return [t for call in amo.received("POST", "/api/v4/tasks")[since:] for t in call.body]


def open_tasks(amo, lead_id: int) -> list[dict[str, Any]]:
    return sorted((t for t in amo.tasks.values() if t["entity_id"] == lead_id and t["entity_type"] == "leads"
                   and not t["is_completed"]), key=lambda t: t["id"])


def stage_moves(amo, lead_id: int) -> list[dict[str, Any]]:
    return [c.body for c in amo.received("PATCH", f"/api/v4/leads/{lead_id}") if "status_id" in c.body]


def audit(runtime, what: str) -> list[dict]:
    entries = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    return [e for e in entries if e["what"] == what]


def timers(runtime, rule: str) -> list[dict]:
    return [t for t in runtime.backend.timers.pending() if t["rule"] == rule]


def announced(client, runtime, amo, lead_id: int, old_status: int) -> None:
    """amoCRM announces a stage change crmbridge made (PATCH): «Смена статуса сделки» as above."""
    found = amo.leads[lead_id]
    found["updated_at"] = int(amo.clock())
    post(client, {**_lead_keys("leads[status][0]", found), "leads[status][0][old_status_id]": str(old_status),
                  "account[subdomain]": "agency"})
    run_worker(runtime)


def contact(amo, contact_id: int, name: str, classification: str) -> None:
    """A contact as GET /api/v4/contacts/{id} returns it (api_contact_get.json), with «Классификация»."""
    amo.contacts[contact_id] = {"id": contact_id, "name": name, "responsible_user_id": USERS["Ольга Смирнова"],
                                "custom_fields_values": [{"field_id": 800001, "field_name": "Классификация",
                                                          "field_code": None, "field_type": "select",
                                                          "values": [{"value": classification, "enum_id": 900001}]}],
                                "_embedded": {"tags": [], "companies": [], "leads": []}}
