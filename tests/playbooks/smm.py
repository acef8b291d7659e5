"""Playbook A (SMM agency) test bed: the shipped example configuration, a fake Planfix account
laid out as the set-up guide describes (docs/playbooks/smm-agency.md), the fake Telegram, and
helpers that post the webhooks Planfix scenarios and the form's Apps Script send.

Test modules take the fixtures by name (`at, config_dir, env, fake_planfix = smm.at, …`); they
override the quickstart's `env` and `config_dir` of tests/conftest.py for that module only."""
from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline import clock
from tests.conftest import ROOT, TG_TOKEN, payload
from tests.fakes_planfix import FakePlanfix

EXAMPLE = ROOT / "config" / "examples" / "smm-agency"
# The behaviours tested here live in these files; approvals.yaml and chat.yaml (A3–A5) have tests
# of their own, and test_the_whole_example_folder_loads loads everything together.
RULE_FILES = ("tasks.yaml", "brief.yaml", "handover.yaml", "time.yaml", "payments.yaml")
CLIENT_CHAT = -1001987654321
STAFF_CHAT = -1001000000042
PROJECT = 77

TASK_FIELDS = [
    {"id": 110, "name": "Порядок", "type": 1}, {"id": 111, "name": "Тип задачі", "type": 0},
    {"id": 112, "name": "Telegram чат", "type": 0}, {"id": 113, "name": "Витрачено, год", "type": 1},
    {"id": 114, "name": "Оплачено до", "type": 3}, {"id": 115, "name": "Надіслати бриф", "type": 7},
    {"id": 116, "name": "Бриф надіслано", "type": 3}, {"id": 117, "name": "Бриф отримано", "type": 3},
    {"id": 118, "name": "Проєкт", "type": 0}, {"id": 119, "name": "Вид робіт", "type": 0},
    {"id": 120, "name": "Сума", "type": 1}, {"id": 121, "name": "Дата оплати", "type": 3},
    {"id": 122, "name": "Viber", "type": 0}]
CONTACT_FIELDS = [
    {"id": 210, "name": "Компанія", "type": 0}, {"id": 211, "name": "Соцмережі", "type": 0},
    {"id": 212, "name": "Рекламний бюджет", "type": 0}, {"id": 213, "name": "Цільова аудиторія", "type": 0}]
SMM_STATUSES = {"Нова": 1, "В роботі": 2, "Завершена": 3, "Доопрацювання": 4, "Виконана": 5}
SALES_STATUSES = {"Новий лід": 11, "Угода": 12, "Передано у виробництво": 13}


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix()
    server.custom_fields["task"] += copy.deepcopy(TASK_FIELDS)
    server.custom_fields["contact"] += copy.deepcopy(CONTACT_FIELDS)
    server.statuses[7].append({"id": 5, "name": "Виконана"})
    server.processes.append({"id": 8, "name": "Продажі"})
    server.statuses[8] = [{"id": i, "name": n} for n, i in SALES_STATUSES.items()]
    server.add("contact", {"id": 318, "name": "Кав'ярня «Зерно»", "customFieldData": []})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_planfix, fake_tg) -> dict[str, str]:
    """What a deployment of the example sets (connections.yaml), pointed at the fakes."""
    return {"PLANFIX_BASE_URL": f"{fake_planfix.url}/rest", "PLANFIX_TOKEN": "PF-TOKEN",
            "PLANFIX_WEBHOOK_SECRET": "pf-secret", "TELEGRAM_API_URL": fake_tg.url,
            "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
            "STAFF_CHAT_ID": str(STAFF_CHAT), "FORMS_WEBHOOK_SECRET": "forms-secret",
            "VIBER_WEBHOOK_SECRET": "viber-secret"}   # no VIBER_TOKEN: the Viber bot is record-only here


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The shipped example: its connections.yaml and the rule files of these behaviours."""
    target = tmp_path / "config"
    (target / "rules").mkdir(parents=True)
    shutil.copy(EXAMPLE / "connections.yaml", target / "connections.yaml")
    for name in RULE_FILES:
        shutil.copy(EXAMPLE / "rules" / name, target / "rules" / name)
    return target


@pytest.fixture
def at(monkeypatch):
    """Set the worker's clock."""
    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
    return set_clock


def task(number: int, name: str, status: str, kind: str | None = None, *, order: int | None = None,
         project: int | None = PROJECT, chat: int | None = CLIENT_CHAT, process: int = 7,
         assignee: str = "user:5", **fields: Any) -> dict[str, Any]:
    """A task as GET /task/{id} returns it (TaskResponse; custom fields as CustomFieldValueResponse)."""
    statuses = SMM_STATUSES if process == 7 else SALES_STATUSES
    values = {"Порядок": order, "Тип задачі": kind, "Telegram чат": str(chat) if chat else None, **fields}
    meta = {f["name"]: f for f in TASK_FIELDS}
    item: dict[str, Any] = {
        "id": number, "name": name, "status": {"id": statuses[status], "name": status}, "processId": process,
        "assignees": {"users": [{"id": assignee, "name": "Олена Коваленко"}], "groups": []},
        "customFieldData": [{"field": dict(meta[k]), "value": v} for k, v in values.items() if v is not None]}
    if project:
        item["project"] = {"id": project, "name": "SMM · Кав'ярня «Зерно»"}
    return item


def planfix_body(recorded: str, **changes: Any) -> dict[str, Any]:
    """A recorded scenario body with task keys changed: task_id, status, previous_status, at, contact…"""
    body = json.loads(payload(f"planfix/{recorded}"))
    for key, value in changes.items():
        if key == "at":
            body["at"] = value
        elif key == "task_id":
            body["task"]["id"] = str(value)
        elif key == "contact":  # no counterparty: Planfix renders the variables empty
            body["contact"] = value or {"id": "", "name": ""}
        elif value is None:
            body["task"].pop(key, None)
        else:
            body["task"][key] = value
    return body


def post_planfix(live_server: str, body: dict[str, Any]) -> dict[str, Any]:
    """A Planfix scenario's "send HTTP request" (application/json)."""
    resp = requests.post(f"{live_server}/hooks/agency-planfix", data=json.dumps(body, ensure_ascii=False).encode(),
                         headers={"Content-Type": "application/json"}, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def post_form(live_server: str, body: dict[str, Any]) -> dict[str, Any]:
    """The form-bound Apps Script's UrlFetchApp.fetch: JSON, the secret in X-Crmbridge-Token."""
    body = {k: v for k, v in body.items() if k != "secret"}
    resp = requests.post(f"{live_server}/hooks/brief-form", data=json.dumps(body, ensure_ascii=False).encode(),
                         headers={"Content-Type": "application/json", "X-Crmbridge-Token": "forms-secret"}, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def field_writes(fake: FakePlanfix, kind: str, number: int, field_id: int) -> list[Any]:
    """The values crmbridge wrote to one custom field of one record, in order."""
    return [d["value"] for c in fake.received("POST", rf"/rest/{kind}/{number}")
            for d in (c.body or {}).get("customFieldData", []) if d["field"]["id"] == field_id]


def sent(fake_tg, chat: int) -> list[str]:
    """Texts sent to one chat, in order."""
    return [c.body["text"] for c in fake_tg.method_calls("sendMessage") if int(c.body["chat_id"]) == chat]
