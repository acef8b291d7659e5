"""End to end: real HTTP into the real app, a real RQ worker on the real Redis, and local fake
amoCRM and Telegram servers that record the calls they receive."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import requests

from tests.conftest import payload, run_worker
from pipeline import clock, dead_letters

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TG = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": "tg-secret"}
FRIDAY_5PM_KYIV = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: FRIDAY_5PM_KYIV)


def post_amo(live_server: str, name: str) -> requests.Response:
    return requests.post(f"{live_server}/hooks/quickstart-amo?token=amo-secret", data=payload(name),
                         headers=FORM, timeout=5)


def test_quickstart_lead_moved_to_stage_makes_a_task_and_a_telegram_message(live_server, runtime, fake_amo, fake_tg):
    fake_amo.add_lead({"id": 31926520, "name": "Кондитерська «Ромашка»", "price": 1000, "status_id": 10216994,
                       "pipeline_id": 2116, "responsible_user_id": 938348,
                       "custom_fields_values": [{"field_id": 1, "field_name": "Бюджет", "values": [{"value": "5000"}]}]})
    resp = post_amo(live_server, "amocrm/lead_status_changed_full.form")
    assert resp.json() == {"accepted": 1, "duplicates": 0}

    run_worker(runtime)

    [task] = fake_amo.received("POST", "/api/v4/tasks")
    assert task.body == [{"text": "Check the brief for «Кондитерська «Ромашка»» and prepare the proposal",
                          "complete_till": int(datetime(2026, 11, 30, 15, tzinfo=timezone.utc).timestamp()),
                          "entity_id": 31926520, "entity_type": "leads", "responsible_user_id": 938348}]
    [message] = fake_tg.method_calls("sendMessage")
    assert str(message.body["chat_id"]) == "-1001234567890"
    assert message.body["text"] == ("📥 Бриф отримано / Brief received: Кондитерська «Ромашка»\n"
                                    "Бюджет / Budget: 1000\nБюджет: 5000\n")
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert [a["what"] for a in audit] == ["rule.matched", "action.done", "action.done"]


def test_a_retried_webhook_and_a_rerun_job_act_once(live_server, runtime, fake_amo, fake_tg):
    for _ in range(3):
        post_amo(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    assert runtime.backend.queue.count == 0
    # the same event handled again (a crash after the calls, before the job was marked done)
    from connectors import amocrm
    from tests.conftest import raw
    [again] = amocrm.parse(raw("amocrm/lead_status_changed_full.form"), runtime.connections.connections["quickstart-amo"])
    runtime.backend.enqueue_event(again.to_dict())
    run_worker(runtime)
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert len(fake_tg.method_calls("sendMessage")) == 1


def test_stage_names_are_resolved_from_the_crm(live_server, runtime, fake_amo, fake_tg, config_dir):
    # the compact webhook carries ids only; the rule names the stage as amoCRM shows it
    fake_amo.pipelines.append({"id": 9621010, "name": "Продажі", "statuses": [{"id": 76789234, "name": "Brief received"},
                                                                              {"id": 76789230, "name": "Нова"}]})
    fake_amo.add_lead({"id": 32966269, "name": "Test", "price": 999, "status_id": 76789234,
                       "pipeline_id": 9621010, "responsible_user_id": 10000698})
    post_amo(live_server, "amocrm/lead_status_changed_compact.form")
    run_worker(runtime)
    [task] = fake_amo.received("POST", "/api/v4/tasks")
    assert task.body[0]["entity_id"] == 32966269
    assert len(fake_tg.method_calls("sendMessage")) == 1


def test_a_rule_that_does_not_match_calls_nothing(live_server, runtime, fake_amo, fake_tg):
    post_amo(live_server, "amocrm/lead_added.form")
    run_worker(runtime)
    assert fake_amo.received("POST") == [] and fake_tg.method_calls("sendMessage") == []


def test_rate_limited_telegram_is_retried_and_delivers_once(live_server, runtime, fake_amo, fake_tg):
    fake_tg.fail("sendMessage", 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                                      "parameters": {"retry_after": 1}})
    post_amo(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    calls = fake_tg.received("POST", r"/bot.*/sendMessage", failed=True)
    assert [c.status for c in calls] == [429, 200]
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1


def test_a_permanent_error_goes_to_dead_letters_and_replays(live_server, runtime, fake_amo, fake_tg):
    fake_amo.fail("/api/v4/tasks", 400, json.loads(payload("amocrm/api_error_400.json")))
    post_amo(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    assert len(fake_tg.method_calls("sendMessage")) == 1       # the other step still ran
    dead = runtime.store.hgetall(runtime.keys("dead"))
    [(key, entry)] = dead.items()
    assert "HTTP 400: Request validation failed" in json.loads(entry)["error"]
    assert dead_letters.replay(runtime, key.decode())
    run_worker(runtime)
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1  # done now
    assert len(fake_tg.method_calls("sendMessage")) == 1        # not sent twice
    assert runtime.store.hlen(runtime.keys("dead")) == 0


def test_button_press_acts_once_however_often_delivered(live_server, runtime, fake_tg, config_dir):
    (config_dir / "rules" / "buttons.yaml").write_text("""
rules:
  - name: Approve
    on: {event: button.pressed, connection: quickstart-bot, button: button2_bijoy}
    do:
      - answer_button: "Дякуємо! / Thank you!"
      - edit_buttons: [[{text: "✅ {{ actor.name }}", data: "noop"}]]
""", encoding="utf-8")
    from webhooks import create_app
    app = create_app(settings=runtime.settings)
    client = app.test_client()
    rt = app.extensions["crmbridge"]
    for _ in range(2):
        client.post("/hooks/quickstart-bot", data=payload("telegram/callback_query.json"), headers=TG)
    run_worker(rt)
    [answer] = fake_tg.method_calls("answerCallbackQuery")
    assert answer.body["text"] == "Дякуємо! / Thank you!"
    [edit] = fake_tg.method_calls("editMessageReplyMarkup")
    assert edit.body["reply_markup"] == {"inline_keyboard": [[{"text": "✅ Bijoy", "callback_data": "noop"}]]}


def test_the_worker_process_handles_what_the_web_process_queued(live_server, runtime, fake_amo, fake_tg, settings):
    """`python worker.py` as operators run it: a separate process on the same Redis."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, TEST_REDIS_URL
    post_amo(live_server, "amocrm/lead_status_changed_full.form")
    env = {**os.environ, **settings.environ, "REDIS_URL": TEST_REDIS_URL, "CRMBRIDGE_CONFIG": str(settings.config_dir),
           "CRMBRIDGE_REDIS_PREFIX": settings.redis_prefix, "CRMBRIDGE_QUEUE": settings.queue_name}
    done = subprocess.run([sys.executable, "worker.py", "--burst"], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert len(fake_tg.method_calls("sendMessage")) == 1
