"""The console's fixtures: the app with CRMBRIDGE_CONSOLE_TOKEN set, a decision history written by
a real RQ worker (a SQLite file), a dead letter left by a vendor's refusal and a pending timer."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from pipeline import clock
from tests.conftest import payload, run_worker

TOKEN = "console-token-7f3a9c1e5b2d4680"
RECORD = "lead:31926520"
FRIDAY_5PM_KYIV = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)
LEAD = {"id": 31926520, "name": "Кондитерська «Ромашка»", "price": 1000, "status_id": 10216994,
        "pipeline_id": 2116, "responsible_user_id": 938348,
        "custom_fields_values": [{"field_id": 1, "field_name": "Бюджет", "values": [{"value": "5000"}]}]}
RULES = """
defaults:
  connection: quickstart-amo

rules:
  - name: Big brief → note
    on: {event: stage.changed, connection: quickstart-amo}
    if:
      - {field: Бюджет, gt: 10000}
    do:
      - add_note: "A big brief: {{ entity.fields['Бюджет'] }}"
  - name: Бриф отримано → нотатка
    on: {event: stage.changed, stage: ["Brief received", "10216994"]}
    do:
      - add_note: "Бриф отримано: {{ entity.name }}"
  - name: Brief received → call in 2 days
    on: {event: stage.changed, stage: ["Brief received", "10216994"]}
    after: 2 days
    do:
      - create_task: {text: "Позвонить клиенту «{{ entity.name }}»", due: 1 working day}
"""


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: FRIDAY_5PM_KYIV)


@pytest.fixture
def settings(settings, tmp_path, config_dir):
    """The suite's settings with the console on, a SQLite history and the rules above."""
    (config_dir / "rules" / "console.yaml").write_text(RULES, encoding="utf-8")
    return replace(settings, history_path=tmp_path / "history.sqlite3",
                   environ={**settings.environ, "CRMBRIDGE_CONSOLE_TOKEN": TOKEN})


@pytest.fixture
def seeded(client, runtime, fake_amo) -> dict[str, Any]:
    """One amoCRM stage change through the door and a real worker: its decisions kept (a skipped
    rule among them), a note the vendor refused (a dead letter) and a timer pending."""
    fake_amo.add_lead(LEAD)
    fake_amo.fail(r"/api/v4/leads/notes", 400, {"title": "Bad Request", "status": 400,
                                                 "detail": "Ошибка валидации: text"})
    resp = client.post("/hooks/quickstart-amo?token=amo-secret", data=payload("amocrm/lead_status_changed_full.form"),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.get_json() == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert runtime.history.flush()
    [dead_key] = json_keys(runtime.store.hgetall(runtime.keys("dead")))
    [timer] = runtime.backend.timers.pending(RECORD)
    return {"dead": dead_key, "timer": timer["timer_id"]}


def json_keys(mapping: dict) -> list[str]:
    return [k.decode() for k in mapping]


def audit_lines(rt: Any) -> list[dict[str, Any]]:
    """The Redis audit stream's entries, oldest first."""
    return [json.loads(e[b"entry"]) for _, e in rt.store.xrange(rt.keys("audit"))]
