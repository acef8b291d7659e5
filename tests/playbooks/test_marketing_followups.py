"""Playbook C follow-ups end to end: C1 warming emails, C2 waiting for the brief (retargeting,
reminder email, task, automatic calls with busy retries and the pause after a talk), C7 after
the decision date, C16 the overdue-tasks digest.

Real-format amoCRM webhooks go through the Flask app into a real RQ worker on real Redis; the
shipped rules (config/examples/marketing-agency/rules/followups.yaml, discipline.yaml) act on
fake amoCRM and Telegram servers, a real SMTP server (aiosmtpd), a fake Zadarma API and a fake
ad-platform hook. Time is `pipeline.clock.now`; due timers become RQ jobs the way every worker makes
them (`fire_due_timers`), run by a real RQ worker with its scheduler.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from rules.calendar import WorkingCalendar
from tests.conftest import ROOT, TG_TOKEN, payload, run_worker
from tests.fakes_telephony import ZD_KEY, ZD_SECRET, FakeHook, FakeSmtp, FakeZadarma
from pipeline import clock, timers

EXAMPLE = ROOT / "config" / "examples" / "marketing-agency"
MSK = ZoneInfo("Europe/Moscow")
FORM = "application/x-www-form-urlencoded"
LEAD_ID = 31926520
STAGES = {"Новый клиент": 10216993, "Получение брифа": 10216995, "Бриф получен": 10216994,
          "Согласование КП": 10216996, "Успешно реализовано": 142, "Закрыто и не реализовано": 143}
CALLS = "C2 автозвонки с 10-го дня"
OFFICE = WorkingCalendar.from_config({"timezone": "Europe/Moscow", "country": "RU", "hours": {"mon-fri": "10:00-19:00"}})


def msk(*args: int) -> datetime:
    return datetime(*args, tzinfo=MSK)


@pytest.fixture
def smtp():
    server = FakeSmtp().start()
    yield server
    server.stop()


@pytest.fixture
def fake_zd():
    server = FakeZadarma().start()
    yield server
    server.stop()


@pytest.fixture
def hook():
    server = FakeHook().start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_amo, fake_tg, smtp, fake_zd, hook) -> dict[str, str]:
    """What the agency's deployment sets, pointed at the local servers; the fake amoCRM answers at
    once, so AMO_RATE_PER_SECOND lifts amoCRM's 7 requests/second, which would only slow the tests."""
    return {"AMO_RATE_PER_SECOND": "1000", "AMO_BASE_URL": fake_amo.url, "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": "amo-secret",
            "TELEGRAM_API_URL": fake_tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
            "HEAD_CHAT_ID": "-1001000000002", "STAFF_CHAT_ID": "-1001000000001", "OLGA_EXTENSION": "100",
            "IVAN_EXTENSION": "101",   # the chats and extensions have no default (tests/test_guides.py)
            "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
            "SMTP_USER": smtp.user, "SMTP_PASSWORD": smtp.password, "MAIL_FROM": "Агентство <hello@agency.example>",
            "ZADARMA_API_URL": fake_zd.url, "ZADARMA_KEY": ZD_KEY, "ZADARMA_SECRET": ZD_SECRET,
            "ADS_HOOK_URL": f"{hook.url}/audiences", "ADS_HOOK_SECRET": "hook-secret"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The shipped example connections and this part's rule files, nothing else."""
    target = tmp_path / "config"
    (target / "rules").mkdir(parents=True)
    shutil.copy(EXAMPLE / "connections.yaml", target / "connections.yaml")
    for name in ("followups.yaml", "discipline.yaml"):
        shutil.copy(EXAMPLE / "rules" / name, target / "rules" / name)
    shutil.copytree(EXAMPLE / "templates", target / "templates")   # the warming series' email templates
    return target


def phone_and_email(phones: list[tuple[str, str]], emails: list[tuple[str, str]]) -> list[dict]:
    """A contact's PHONE and EMAIL multitext fields as GET /api/v4/contacts/{id} returns them
    (api_contact_get.json; API-REFERENCE.md: field_code PHONE/EMAIL, values with enum_code)."""
    return [{"field_id": 3, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
             "values": [{"value": v, "enum_id": 1 + n, "enum_code": code} for n, (v, code) in enumerate(phones)]},
            {"field_id": 4, "field_name": "Email", "field_code": "EMAIL", "field_type": "multitext",
             "values": [{"value": v, "enum_id": 7 + n, "enum_code": code} for n, (v, code) in enumerate(emails)]}]


@pytest.fixture
def amo(fake_amo):
    """The agency's amoCRM: Russian pipeline, users and fields; one deal whose main contact has the
    client's phones and email (where amoCRM keeps them: the contact's PHONE and EMAIL fields), and
    a blogger's contact linked first, not main, with its own."""
    fake_amo.pipelines = [{"id": 2116, "name": "Воронка продаж",
                           "statuses": [{"id": i, "name": n} for n, i in STAGES.items()]}]
    fake_amo.users = [{"id": 938348, "name": "Ольга Смирнова"}, {"id": 102525, "name": "Иван Петров"}]
    fake_amo.contacts[5002] = {"id": 5002, "name": "Бузова Ольга", "responsible_user_id": 938348,
                               "custom_fields_values": phone_and_email([("+7 999 000-00-00", "MOB")],
                                                                       [("blogger@example.com", "WORK")]),
                               "_embedded": {"tags": [], "companies": [], "leads": [{"id": LEAD_ID}]}}
    fake_amo.contacts[5001] = {"id": 5001, "name": "Анна Клиентова", "responsible_user_id": 938348,
                               "custom_fields_values": phone_and_email(
                                   [("+7 (916) 123-45-67", "WORK"), ("+7 903 111-22-33", "MOB")],
                                   [("client@example.com", "WORK"), ("anna@home.example", "PRIV")]),
                               "_embedded": {"tags": [], "companies": [], "leads": [{"id": LEAD_ID}]}}
    fake_amo.add_lead({"id": LEAD_ID, "name": "Весна 2027", "price": 450000, "status_id": STAGES["Новый клиент"],
                       "pipeline_id": 2116, "responsible_user_id": 938348, "custom_fields_values": [],
                       "_embedded": {"tags": [], "companies": [], "contacts": [{"id": 5002, "is_main": False},
                                                                              {"id": 5001, "is_main": True}]}})
    return fake_amo


@pytest.fixture
def at(monkeypatch):
    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
    return set_clock


def move(client, amo, stage: str, old: str, modified: int, fields: dict[str, str] | None = None) -> None:
    """amoCRM's status webhook for the deal (tests/payloads/amocrm/lead_status_changed_full.form)."""
    amo.leads[LEAD_ID]["status_id"] = STAGES[stage]
    form = dict(parse_qsl(payload("amocrm/lead_status_changed_full.form").decode()))
    form.update({"leads[status][0][status_id]": str(STAGES[stage]), "leads[status][0][old_status_id]": str(STAGES[old]),
                 "leads[status][0][last_modified]": str(modified)})
    for name, value in (fields or {}).items():
        form.update({"leads[status][0][custom_fields][1][id]": "3", "leads[status][0][custom_fields][1][name]": name,
                     "leads[status][0][custom_fields][1][values][0][value]": value})
    resp = client.post("/hooks/agency-amo?token=amo-secret", data=urlencode(form), content_type=FORM)
    assert resp.status_code == 200 and resp.get_json()["accepted"] == 1, resp.get_data(as_text=True)


def tick(runtime, at, moment: datetime) -> None:
    """The clock reaches `moment`: due timers become RQ jobs, a real RQ worker (with its scheduler) runs them."""
    at(moment)
    runtime.backend.fire_due_timers(now=moment.timestamp())
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def timer(runtime, rule: str) -> dict | None:
    found = [t for t in runtime.backend.timers.pending() if t["rule"] == rule]
    return found[0] if found else None


def fire_at(runtime, rule: str) -> datetime:
    return datetime.fromisoformat(timer(runtime, rule)["fire_at"])


def audit(runtime, what: str) -> list[dict]:
    entries = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    return [e for e in entries if e["what"] == what]


def call_end(client, fake_zd, disposition: str, call_id: str, start: str) -> None:
    """Zadarma's signed NOTIFY_OUT_END for the manager's extension and the client's number."""
    body, headers = fake_zd.notification("100", "79161234567", disposition, duration=95 if disposition == "answered" else 0,
                                         call_start=start, pbx_call_id=call_id)
    resp = client.post("/hooks/zadarma", data=body, headers={"Signature": headers["Signature"]}, content_type=FORM)
    assert resp.status_code == 200 and resp.get_json()["accepted"] == 1, resp.get_data(as_text=True)


# --- C1 ---------------------------------------------------------------------------------------------------

def test_c1_warming_emails_after_7_days_and_none_once_the_deal_moved_on(client, runtime, amo, smtp, at):
    at(msk(2026, 12, 7, 11))
    move(client, amo, "Новый клиент", "Получение брифа", 1796623200)
    run_worker(runtime)
    assert fire_at(runtime, "C1 утепляющее письмо 1 (7 дней в «Новый клиент»)") == msk(2026, 12, 14, 11)
    tick(runtime, at, msk(2026, 12, 14, 10, 59))
    assert smtp.messages == []
    tick(runtime, at, msk(2026, 12, 14, 11, 0, 1))
    [sent] = smtp.wait_for(1)
    assert sent["to"] == ["client@example.com"] and sent["login"] == smtp.user
    # the named template templates/email/warming-1.{subject,txt,html}, rendered for this deal
    assert sent["message"]["Subject"] == "Как блогеры помогают брендам расти"
    assert "менеджер Ольга Смирнова свяжется с вами" in FakeSmtp.text_of(sent["message"])
    html = sent["message"].get_body(preferencelist=("html",)).get_content()
    assert "<p>Ответьте на это письмо — менеджер Ольга Смирнова свяжется с вами.</p>" in html
    # the client answered and the deal moved on: the second email of the series is not sent
    move(client, amo, "Получение брифа", "Новый клиент", 1796623300)
    run_worker(runtime)
    tick(runtime, at, msk(2026, 12, 21, 11, 0, 1))   # `keep_timer`: the guard is checked when it fires
    subjects = [m["message"]["Subject"] for m in smtp.messages]
    assert subjects == ["Как блогеры помогают брендам расти", "Ждём ваш бриф"]  # the second: C2's reminder
    assert timer(runtime, "C1 утепляющее письмо 2 (14 дней в «Новый клиент»)") is None
    [skipped] = [a for a in audit(runtime, "timer.skipped") if a["rule"].startswith("C1 утепляющее письмо 2")]
    assert "guard no longer holds" in skipped["reason"]


def test_c1_a_deal_created_in_new_client_gets_the_series_too(client, runtime, amo, smtp, at):
    """Deals from the site, Jivosite or mail are created in the first stage: amoCRM sends leads[add]."""
    form = dict(parse_qsl(payload("amocrm/lead_added.form").decode()))
    form.update({"leads[add][0][id]": str(LEAD_ID), "leads[add][0][status_id]": str(STAGES["Новый клиент"]),
                 "leads[add][0][pipeline_id]": "2116", "leads[add][0][responsible_user_id]": "938348"})
    at(msk(2026, 12, 7, 11))
    resp = client.post("/hooks/agency-amo?token=amo-secret", data=urlencode(form), content_type=FORM)
    assert resp.status_code == 200 and resp.get_json()["accepted"] == 1
    run_worker(runtime)
    tick(runtime, at, msk(2026, 12, 14, 11, 0, 1))
    [sent] = smtp.wait_for(1)
    assert sent["message"]["Subject"] == "Как блогеры помогают брендам расти"


# --- C2 ---------------------------------------------------------------------------------------------------

def test_c2_retargeting_reminder_task_then_calls_with_busy_retry_and_the_pause_after_a_talk(
        client, runtime, amo, smtp, fake_zd, hook, at):
    at(msk(2026, 12, 4, 11))  # Friday
    move(client, amo, "Получение брифа", "Новый клиент", 1796374800)
    run_worker(runtime)
    # day 3: the client joins the retargeting audience
    tick(runtime, at, msk(2026, 12, 7, 11, 0, 1))
    [added] = hook.received("POST", "/audiences/retargeting")
    assert added.body == {"audience": "brief-pending", "deal": str(LEAD_ID), "phone": "+7 (916) 123-45-67",
                          "email": "client@example.com"}
    assert added.headers["X-Webhook-Secret"] == "hook-secret"
    # day 5: the reminder email; the server greylists the first attempt (451) and takes the retry
    smtp.refuse_next(1)
    tick(runtime, at, msk(2026, 12, 9, 11, 0, 1))
    [reminder] = smtp.wait_for(1)
    assert reminder["message"]["Subject"] == "Ждём ваш бриф" and smtp.refused == 1
    # day 6: the manager's task
    tick(runtime, at, msk(2026, 12, 10, 11, 0, 1))
    [task] = amo.received("POST", "/api/v4/tasks")
    assert task.body[0]["text"] == "Позвонить, напомнить про бриф / договориться о встрече"
    assert task.body[0]["responsible_user_id"] == 938348
    # day 10: the PBX calls the manager's extension, then the client
    assert fire_at(runtime, CALLS) == msk(2026, 12, 14, 11)
    tick(runtime, at, msk(2026, 12, 14, 11, 0, 1))
    assert fake_zd.callbacks() == [("100", "79161234567")]
    # the manager was busy: the next call comes 30-60 working minutes later
    call_end(client, fake_zd, "busy", "out_1", "2026-12-14 11:00:05")
    run_worker(runtime)
    retry = fire_at(runtime, CALLS)
    assert timedelta(minutes=30) <= retry - msk(2026, 12, 14, 11, 0, 1) <= timedelta(minutes=60)
    tick(runtime, at, retry + timedelta(seconds=1))
    assert len(fake_zd.callbacks()) == 2
    # they talked: no calls for the rest of Monday and all of Tuesday
    call_end(client, fake_zd, "answered", "out_2", retry.strftime("%Y-%m-%d %H:%M:%S"))
    run_worker(runtime)
    [observed] = audit(runtime, "connector.observed")
    assert observed["paused_until"] == "2026-12-16T10:00:00+03:00"
    firings = 0
    while (nxt := fire_at(runtime, CALLS)) < msk(2026, 12, 16, 10):
        assert OFFICE.is_working_time(nxt), nxt   # calls only in working hours
        tick(runtime, at, nxt + timedelta(seconds=1))
        firings += 1
    assert firings >= 9 and len(fake_zd.callbacks()) == 2
    # Wednesday: the deal is still waiting for the brief, so the calls go on
    tick(runtime, at, fire_at(runtime, CALLS) + timedelta(seconds=1))
    assert len(fake_zd.callbacks()) == 3
    # the brief came: the deal moves on, and the next firing finds it gone and stops the calls
    # (`keep_timer`: the guard is checked when the timer fires)
    move(client, amo, "Бриф получен", "Получение брифа", 1797000000)
    run_worker(runtime)
    tick(runtime, at, fire_at(runtime, CALLS) + timedelta(seconds=1))
    assert len(fake_zd.callbacks()) == 3 and timer(runtime, CALLS) is None


def test_c2_calls_due_outside_working_hours_wait_for_the_next_working_moment(client, runtime, amo, fake_zd, at):
    at(msk(2026, 12, 3, 20))  # Thursday evening: day 10 is Sunday evening
    move(client, amo, "Получение брифа", "Новый клиент", 1796374700)
    run_worker(runtime)
    assert fire_at(runtime, CALLS) == msk(2026, 12, 14, 10)
    tick(runtime, at, msk(2026, 12, 13, 20, 0, 1))
    assert fake_zd.callbacks() == []
    tick(runtime, at, msk(2026, 12, 14, 10, 0, 1))
    assert fake_zd.callbacks() == [("100", "79161234567")]


def test_c2_a_telephony_error_is_dead_lettered_and_the_calls_go_on(client, runtime, amo, fake_zd, at):
    at(msk(2026, 12, 4, 11))
    move(client, amo, "Получение брифа", "Новый клиент", 1796374800)
    run_worker(runtime)
    fake_zd.fail("/v1/request/callback/", 200, {"status": "error", "message": "Not enough money"})
    tick(runtime, at, msk(2026, 12, 14, 11, 0, 1))
    assert len(fake_zd.callbacks()) == 1  # asked, and refused in Zadarma's way: HTTP 200, status "error"
    [failed] = audit(runtime, "action.failed")
    assert "Not enough money" in failed["error"]
    dead = [json.loads(v) for v in runtime.store.hvals(runtime.keys("dead"))]
    assert any("Not enough money" in d["error"] for d in dead)
    nxt = fire_at(runtime, CALLS)
    assert nxt > msk(2026, 12, 14, 11, 0, 1)
    tick(runtime, at, nxt + timedelta(seconds=1))
    assert len(fake_zd.callbacks()) == 2
    assert len([d for d in audit(runtime, "action.done") if d["action"].startswith("zadarma.call_back")]) == 1


@pytest.fixture
def with_gate(config_dir):
    """lost.yaml too: «Закрыто и не реализовано» without «Причина отказа» is put back (C4)."""
    shutil.copy(EXAMPLE / "rules" / "lost.yaml", config_dir / "rules" / "lost.yaml")


C2_TIMERS = ["C2 ретаргетинг через 3 дня без брифа", "C2 письмо-напоминание о брифе через 5 дней",
             "C2 задача позвонить через 6 дней", CALLS]


def test_c2_a_deal_the_gate_puts_back_into_getting_the_brief_keeps_its_follow_ups(
        with_gate, client, runtime, amo, smtp, hook, at):
    at(msk(2026, 12, 4, 11))  # Friday: the deal starts waiting for the brief
    move(client, amo, "Получение брифа", "Новый клиент", 1796374800)
    run_worker(runtime)
    planned = {name: fire_at(runtime, name) for name in C2_TIMERS}
    assert planned["C2 ретаргетинг через 3 дня без брифа"] == msk(2026, 12, 7, 11)
    # Saturday: the manager closes the deal as lost without a reason; the gate moves it back
    at(msk(2026, 12, 5, 12))
    move(client, amo, "Закрыто и не реализовано", "Получение брифа", 1796461200)
    run_worker(runtime)
    assert [c.body for c in amo.received("PATCH", f"/api/v4/leads/{LEAD_ID}")] == [
        {"status_id": STAGES["Получение брифа"]}]
    # amoCRM announces the move back: crmbridge's own undo, so the series neither restarts
    # (`undo: false`) nor was cancelled by the refused move (`keep_timer: true`)
    move(client, amo, "Получение брифа", "Закрыто и не реализовано", 1796461205)
    run_worker(runtime)
    matched = [e["rule"] for e in audit(runtime, "rule.matched")]
    assert [matched.count(name) for name in C2_TIMERS] == [1, 1, 1, 1]   # the first entry only
    assert {name: fire_at(runtime, name) for name in C2_TIMERS} == planned
    # Monday, 3 days after the deal first came: the client joins the audience, once
    tick(runtime, at, msk(2026, 12, 7, 11, 0, 1))
    [added] = hook.received("POST", "/audiences/retargeting")
    assert added.body["audience"] == "brief-pending" and added.body["phone"] == "+7 (916) 123-45-67"
    assert timer(runtime, "C2 ретаргетинг через 3 дня без брифа") is None


# --- C7 ---------------------------------------------------------------------------------------------------

def decision_date(client, runtime, amo, at) -> None:
    """The deal enters "Согласование КП" on Friday 4 December with the decision date Monday 7 December."""
    decision = int(msk(2026, 12, 7).timestamp())  # amoCRM keeps a date field as midnight, unix time
    amo.leads[LEAD_ID]["custom_fields_values"].append(
        {"field_id": 3, "field_name": "Дата принятия решения", "values": [{"value": decision}]})
    at(msk(2026, 12, 4, 12))
    amo.add_event(LEAD_ID, "lead_status_changed", at=msk(2026, 12, 4, 12).timestamp(),
                  lead_status={"id": STAGES["Согласование КП"], "pipeline_id": 2116})
    move(client, amo, "Согласование КП", "Бриф получен", 1796378400, fields={"Дата принятия решения": str(decision)})
    run_worker(runtime)


def test_c7_no_calls_emails_or_moves_for_3_days_after_the_decision_date_starts_the_calls(
        client, runtime, amo, fake_zd, at):
    decision_date(client, runtime, amo, at)
    assert fire_at(runtime, "C7 тишина 3 дня после даты решения → автозвонки") == msk(2026, 12, 10, 10)
    tick(runtime, at, msk(2026, 12, 10, 10, 0, 1))
    [task] = amo.received("POST", "/api/v4/tasks")   # the decision date came: the manager's task
    assert task.body[0]["text"] == "Связаться с клиентом, уточнить результат согласования"
    assert fake_zd.callbacks() == [("100", "79161234567")]
    # the manager called the client (amoCRM logs the call): the silence is over, so are these calls
    amo.add_event(LEAD_ID, "outgoing_call", at=msk(2026, 12, 10, 10, 5).timestamp())
    tick(runtime, at, fire_at(runtime, "C7 тишина 3 дня после даты решения → автозвонки") + timedelta(seconds=1))
    assert len(fake_zd.callbacks()) == 1
    assert timer(runtime, "C7 тишина 3 дня после даты решения → автозвонки") is None


def test_c7_still_in_the_stage_7_days_after_the_decision_date_then_calls_5_working_days_later(
        client, runtime, amo, smtp, fake_zd, hook, at):
    amo.add_event(LEAD_ID, "outgoing_call", at=msk(2026, 12, 9, 15).timestamp())  # the manager works the deal
    decision_date(client, runtime, amo, at)
    tick(runtime, at, msk(2026, 12, 10, 10, 0, 1))   # activity on the 9th: no calls for silence
    assert fake_zd.callbacks() == [] and timer(runtime, "C7 тишина 3 дня после даты решения → автозвонки") is None
    assert fire_at(runtime, "C7 через 7 дней после даты решения → ретаргетинг") == msk(2026, 12, 14)
    assert fire_at(runtime, "C7 ещё 5 рабочих дней → автозвонки") == msk(2026, 12, 21, 10)
    tick(runtime, at, msk(2026, 12, 14, 0, 0, 1))
    [added] = hook.received("POST", "/audiences/retargeting")
    assert added.body["audience"] == "decision-pending" and added.body["deal"] == str(LEAD_ID)
    [warming] = smtp.wait_for(1)
    assert warming["message"]["Subject"] == "Остались вопросы по нашему предложению?"
    assert "«Весна 2027»" in FakeSmtp.text_of(warming["message"])
    assert fake_zd.callbacks() == []
    tick(runtime, at, msk(2026, 12, 21, 10, 0, 1))
    assert fake_zd.callbacks() == [("100", "79161234567")]


# --- C16 --------------------------------------------------------------------------------------------------

def test_c16_overdue_tasks_per_person_to_the_head_every_working_morning(settings, amo, fake_tg, at):
    from webhooks import create_app
    def due(*a: int) -> int:
        return int(msk(*a).timestamp())
    amo.tasks.update({
        1: {"id": 1, "text": "Связаться и взять в работу", "is_completed": False, "complete_till": due(2026, 12, 2, 18),
            "responsible_user_id": 938348, "entity_type": "leads", "entity_id": LEAD_ID},
        2: {"id": 2, "text": "Отправить КП клиенту", "is_completed": False, "complete_till": due(2026, 12, 4, 12),
            "responsible_user_id": 938348, "entity_type": "leads", "entity_id": 31926521},
        3: {"id": 3, "text": "Подготовить документы", "is_completed": False, "complete_till": due(2026, 12, 3, 15),
            "responsible_user_id": 102525, "entity_type": "leads", "entity_id": 31926522},
        4: {"id": 4, "text": "Уже сделано", "is_completed": True, "complete_till": due(2026, 12, 1, 12),
            "responsible_user_id": 102525, "entity_type": "leads", "entity_id": 31926522},
        5: {"id": 5, "text": "Ещё не срок", "is_completed": False, "complete_till": due(2026, 12, 7, 18),
            "responsible_user_id": 102525, "entity_type": "leads", "entity_id": 31926522}})
    at(msk(2026, 12, 4, 15))  # Friday afternoon: the next working morning is Monday
    app = create_app(settings=settings)
    rt = app.extensions["crmbridge"]
    try:
        timers.ensure_schedules(rt)
        [tick_] = [t for t in rt.backend.timers.pending() if t["entity"]["type"] == "schedule"]
        assert tick_["fire_at"] == "2026-12-07T09:00:00+03:00"
        tick(rt, at, msk(2026, 12, 7, 9, 0, 1))
        sent = fake_tg.method_calls("sendMessage")
        assert [(m.body["chat_id"], m.body["text"]) for m in sent] == [
            ("-1001000000002", ("Просроченные задачи на 2026-12-07\nОльга Смирнова: 2\n"
                                "• Связаться и взять в работу — до 02.12.2026 18:00 [lead 31926520]\n"
                                "• Отправить КП клиенту — до 04.12.2026 12:00 [lead 31926521]")),
            ("-1001000000002", ("Просроченные задачи на 2026-12-07\nИван Петров: 1\n"
                                "• Подготовить документы — до 03.12.2026 15:00 [lead 31926522]"))]
        [listed] = amo.received("GET", "/api/v4/tasks")
        assert listed.query["filter[is_completed]"] == ["0"] and listed.query["order[complete_till]"] == ["asc"]
        [nxt] = [t for t in rt.backend.timers.pending() if t["entity"]["type"] == "schedule"]
        assert nxt["fire_at"] == "2026-12-08T09:00:00+03:00"
    finally:
        rt.backend.close()


def test_zadarma_checks_the_notification_url_and_unsigned_notifications_are_refused(client, runtime, fake_zd):
    resp = client.get("/hooks/zadarma?zd_echo=Xy12ab")
    assert (resp.status_code, resp.get_data(as_text=True)) == (200, "Xy12ab")
    assert client.get("/hooks/agency-amo?zd_echo=Xy12ab").status_code == 405
    body, _ = fake_zd.notification("100", "79161234567", "answered")
    resp = client.post("/hooks/zadarma", data=body, headers={"Signature": "Zm9yZ2Vk"}, content_type=FORM)
    assert resp.status_code == 401 and runtime.backend.queue.count == 0


def test_c16_the_digest_by_email_sends_each_persons_list_once_even_when_retried(config_dir, settings, amo, smtp, at):
    from webhooks import create_app
    rules = config_dir / "rules" / "discipline.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace(
        "to: {connection: staff-bot, chat: head}", "to: {connection: agency-mail, email: head@agency.example}"),
        encoding="utf-8")
    for n, user in ((1, 938348), (2, 102525)):
        amo.tasks[n] = {"id": n, "text": f"Задача {n}", "is_completed": False, "responsible_user_id": user,
                        "complete_till": int(msk(2026, 12, 3, 12).timestamp()), "entity_type": "leads", "entity_id": LEAD_ID}
    at(msk(2026, 12, 4, 15))
    app = create_app(settings=settings)
    rt = app.extensions["crmbridge"]
    try:
        timers.ensure_schedules(rt)
        smtp.refuse_next(1, after=1)   # the second message is greylisted: the step is retried, nobody gets two
        tick(rt, at, msk(2026, 12, 7, 9, 0, 1))
        sent = smtp.wait_for(2)
        assert sorted(m["message"]["Subject"] for m in sent) == [
            "Просроченные задачи на 2026-12-07 — Иван Петров", "Просроченные задачи на 2026-12-07 — Ольга Смирнова"]
        assert all(m["to"] == ["head@agency.example"] for m in sent) and smtp.refused == 1
    finally:
        rt.backend.close()
