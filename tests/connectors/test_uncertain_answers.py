"""A 5xx answer, or a connection dropped after the request went out, is *uncertain* for a call that
creates (a task, a note, a comment, a contact, a message): the vendor may have done it and failed
only in answering. The clients say so (UncertainApiError), and keep RetryableApiError for a 429 and
for the 5xx of reads and of writes that set a state. Against the fakes, with the fault "applied,
then 500" (tests/fakes.py FakeServer.fail(applied=True)): the vendor holds the object once."""
from __future__ import annotations

import json

import pytest

from pipeline import execute
from connectors import amocrm, bitrix24, planfix, telegram
from connectors.base import Connection, Entity, Event, RetryableApiError, UncertainApiError
from rules.engine import Plan, PlannedAction
from tests.conftest import PAYLOADS, TG_TOKEN
from tests.fakes_planfix import FakePlanfix

LEAD = Entity("lead", "31926520")
DUE = "2026-11-25T10:00:00+00:00"
AMO_500 = {"title": "Internal Server Error", "status": 500}
TG_500 = {"ok": False, "error_code": 500, "description": "Internal Server Error"}


def raised(call) -> Exception:
    with pytest.raises(RetryableApiError) as exc:
        call()
    return exc.value


@pytest.fixture
def amo(fake_amo, redis_db) -> amocrm.Client:
    fake_amo.add_lead({"id": 31926520, "name": "Brief", "status_id": 10216995, "pipeline_id": 2116})
    conn = Connection(name="amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "t"})
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


@pytest.fixture
def bot(fake_tg) -> telegram.Client:
    conn = Connection(name="bot", type="telegram", base_url=fake_tg.url, credentials={"token": TG_TOKEN})
    return telegram.Client(conn)


# --- amoCRM ----------------------------------------------------------------------------------------

def test_amocrm_a_create_answered_500_after_it_was_done_is_uncertain(amo, fake_amo):
    fake_amo.fail(r"^/api/v4/tasks$", 500, AMO_500, applied=True)
    exc = raised(lambda: amo.create_task(LEAD, "Call back", DUE))
    assert isinstance(exc, UncertainApiError) and exc.status == 500
    assert "may have been done" in str(exc)
    assert len(fake_amo.tasks) == 1 and fake_amo.applied_faults == [("POST", "/api/v4/tasks", 200)]
    fake_amo.fail(r"^/api/v4/leads/notes$", 502, AMO_500, applied=True)
    assert isinstance(raised(lambda: amo.add_note(LEAD, "x")), UncertainApiError)


def test_amocrm_a_create_whose_connection_drops_after_it_was_done_is_uncertain(amo, fake_amo):
    fake_amo.fail(r"^/api/v4/tasks$", 500, None, reset=True)
    assert isinstance(raised(lambda: amo.create_task(LEAD, "Call back", DUE)), UncertainApiError)
    assert len(fake_amo.tasks) == 1


def test_amocrm_429_to_a_create_and_500_to_reads_and_sets_are_retryable(amo, fake_amo):
    fake_amo.fail(r"^/api/v4/tasks$", 429, {"title": "Too Many Requests", "status": 429}, headers={"Retry-After": "1"})
    exc = raised(lambda: amo.create_task(LEAD, "Call back", DUE))
    assert not isinstance(exc, UncertainApiError) and exc.retry_after == 1.0
    assert fake_amo.tasks == {}                       # a 429 refuses: nothing was done
    fake_amo.fail(r"^/api/v4/leads/31926520$", 500, AMO_500)
    assert not isinstance(raised(lambda: amo.get_raw(LEAD)), UncertainApiError)        # GET
    fake_amo.fail(r"^/api/v4/leads/31926520$", 500, AMO_500, applied=True)
    assert not isinstance(raised(lambda: amo.move_to_stage(LEAD, "10216994")), UncertainApiError)   # PATCH
    fake_amo.fail(r"^/api/v4/leads/31926520/link$", 503, AMO_500)
    assert not isinstance(raised(lambda: amo.link_contact(LEAD, "77")), UncertainApiError)  # a link: a set


# --- Telegram --------------------------------------------------------------------------------------

def test_telegram_a_message_answered_500_after_it_was_sent_is_uncertain(bot, fake_tg):
    fake_tg.fail("sendMessage", 500, TG_500, applied=True)
    exc = raised(lambda: bot.send_message("42", "Hello"))
    assert isinstance(exc, UncertainApiError)
    assert [c.status for c in fake_tg.calls] == [500] and len(fake_tg.applied_faults) == 1
    fake_tg.fail("sendMessage", 500, None, reset=True)
    assert isinstance(raised(lambda: bot.send_message("42", "Hello")), UncertainApiError)


def test_telegram_an_edit_or_an_answer_answered_500_is_retryable(bot, fake_tg):
    fake_tg.fail("editMessageText", 500, TG_500, applied=True)
    assert not isinstance(raised(lambda: bot.edit_text("42", 7, "x")), UncertainApiError)
    fake_tg.fail("answerCallbackQuery", 502, TG_500)
    assert not isinstance(raised(lambda: bot.answer_button("cb-1", "ok")), UncertainApiError)
    fake_tg.fail("sendMessage", 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
                                      "parameters": {"retry_after": 3}})
    exc = raised(lambda: bot.send_message("42", "Hello"))
    assert not isinstance(exc, UncertainApiError) and exc.retry_after == 3


# --- Bitrix24 --------------------------------------------------------------------------------------

B24_500 = {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}


def test_bitrix24_an_add_answered_500_after_it_was_done_is_uncertain(b24_with_a_deal):
    client, fake = b24_with_a_deal
    fake.fail(r"/tasks\.task\.add(\.json)?$", 500, B24_500, applied=True)
    exc = raised(lambda: client.create_task(Entity("deal", "410"), "Call back", DUE))
    assert isinstance(exc, UncertainApiError)
    assert len(fake.tasks) == 1
    fake.fail(r"/crm\.timeline\.comment\.add(\.json)?$", 500, B24_500, applied=True)
    assert isinstance(raised(lambda: client.add_note(Entity("deal", "410"), "x")), UncertainApiError)
    assert len(fake.comments) == 1


def test_bitrix24_limits_refuse_and_updates_and_reads_retry(b24_with_a_deal):
    client, fake = b24_with_a_deal
    fake.fail(r"/tasks\.task\.add(\.json)?$", 503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
    exc = raised(lambda: client.create_task(Entity("deal", "410"), "Call back", DUE))
    assert not isinstance(exc, UncertainApiError) and exc.retry_after == 1.0 and fake.tasks == {}
    fake.fail(r"/crm\.deal\.update(\.json)?$", 500, B24_500, applied=True)
    assert not isinstance(raised(lambda: client.set_fields(Entity("deal", "410"), {"TITLE": "New"})), UncertainApiError)
    fake.fail(r"/crm\.deal\.get(\.json)?$", 500, B24_500)
    assert not isinstance(raised(lambda: client.get_entity(Entity("deal", "410"))), UncertainApiError)
    assert bitrix24.creates("batch", {"cmd": {"a": "crm.deal.get?id=1", "b": "tasks.task.add?fields[TITLE]=x"}})
    assert not bitrix24.creates("batch", {"cmd": {"a": "crm.deal.get?id=1"}})
    assert not bitrix24.creates("crm.deal.contact.add")      # binds two records: a set


# --- Planfix ---------------------------------------------------------------------------------------

@pytest.fixture
def pf(redis_db):
    fake = FakePlanfix().start()
    fake.add("task", json.loads((PAYLOADS / "planfix/api_task_get.json").read_text())["task"])
    conn = Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest", credentials={"token": "PF-TOKEN"})
    yield planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:"), fake
    fake.stop()


PF_500 = {"result": "fail", "code": 0, "error": "Internal error"}


def test_planfix_creates_answered_500_are_uncertain_and_updates_and_lists_retry(pf):
    client, fake = pf
    task = Entity("task", "1042")
    fake.fail(r"^/rest/task/1042/comments/$", 500, PF_500, applied=True)
    assert isinstance(raised(lambda: client.add_note(task, "x")), UncertainApiError)
    fake.fail(r"^/rest/task/$", 500, PF_500, applied=True)
    assert isinstance(raised(lambda: client.create_task(task, "Sub", DUE)), UncertainApiError)
    fake.fail(r"^/rest/contact/$", 504, PF_500, applied=True)
    assert isinstance(raised(lambda: client.create_contact("Ann")), UncertainApiError)
    assert [(m, p) for m, p, _ in fake.applied_faults] == [
        ("POST", "/rest/task/1042/comments/"), ("POST", "/rest/task/"), ("POST", "/rest/contact/")]
    assert len(fake.comments[("task", 1042)]) == 1 and len(fake.contacts) == 1
    fake.fail(r"^/rest/task/1042$", 500, PF_500, applied=True)            # an update, by POST
    assert not isinstance(raised(lambda: client.move_to_stage(task, "2")), UncertainApiError)
    fake.fail(r"^/rest/task/1042/comments/list$", 500, PF_500)            # a list, by POST
    assert not isinstance(raised(lambda: client.list_comments(task)), UncertainApiError)


# --- through the executor: the step is parked once, never sent twice --------------------------------

EVENT = Event(id="quickstart-amo:uncertain-test", connection="quickstart-amo", source="amocrm",
              kind="stage.changed", entity=LEAD, data={}, raw={}, occurred_at="2026-11-24T10:00:00+00:00")


def step(method: str, connection: str, **args) -> PlannedAction:
    return PlannedAction(rule="Test rule", rule_id="test", step=0, connection=connection, method=method,
                         args=args, key=f"{EVENT.id}|test|{method}")


def test_a_message_applied_then_500_is_sent_once_and_parked(runtime, fake_tg):
    """A message cannot be read back from Telegram: it is parked with the evidence, never resent."""
    fake_tg.fail("sendMessage", 500, TG_500, applied=True)
    action = step("send_message", "quickstart-bot", chat="42", text="Hello")
    result = execute.run_plan(runtime, EVENT, Plan(actions=[action]))
    assert result["failed"] == 1
    assert len([c for c in fake_tg.calls if c.path.endswith("/sendMessage")]) == 1 and len(fake_tg.applied_faults) == 1
    dead = json.loads(runtime.store.hget(runtime.keys("dead"), action.key))
    assert "may have been sent" in dead["error"] and "Internal Server Error" in dead["error"]


def task_step() -> PlannedAction:
    return step("create_task", "quickstart-amo", entity={"type": "lead", "id": "31926520"}, text="Call back", due=DUE)


def audit_whats(runtime) -> list[str]:
    return [json.loads(e[b"entry"])["what"] for _, e in runtime.store.xrange(runtime.keys("audit"))]


def test_a_create_applied_then_500_is_read_back_and_recorded_not_parked(runtime, fake_amo):
    """A CRM create that got a 5xx is looked for at the vendor before anything else: amoCRM has the
    task, so the step is done with its id; nothing is sent again, nothing is parked."""
    fake_amo.fail(r"^/api/v4/tasks$", 500, AMO_500, applied=True)
    action = task_step()
    result = execute.run_plan(runtime, EVENT, Plan(actions=[action]))
    assert result == {"actions": 1, "done": 1, "failed": 0, "errors": 0}
    assert len(fake_amo.tasks) == 1 and len(fake_amo.received("POST", "/api/v4/tasks", failed=True)) == 1
    [task_id] = fake_amo.tasks
    assert json.loads(runtime.store.get(runtime.keys("done", action.key))) == task_id
    assert runtime.store.get(runtime.keys("attempted", action.key)) is None
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.reconciled" in audit_whats(runtime)


def test_a_create_refused_with_500_is_read_back_not_found_and_sent_once_more(runtime, fake_amo):
    fake_amo.fail(r"^/api/v4/tasks$", 500, AMO_500)                          # not applied
    action = task_step()
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.tasks) == 1 and len(fake_amo.received("POST", "/api/v4/tasks", failed=True)) == 2
    assert audit_whats(runtime).count("action.repeated") == 1


def test_a_create_left_sent_by_a_dead_worker_is_read_back(runtime, fake_amo):
    """A worker died after its create left (the step's mark says "sent"): the re-run looks for
    the task instead of parking the step; found, it is recorded; not found, it is sent once."""
    action = task_step()
    sent_at = "2026-11-24T10:00:00+00:00"
    fake_amo.fail(r"^/api/v4/tasks$", 500, AMO_500, applied=True, times=1)
    with pytest.raises(Exception):   # what the dead worker made: the task, and no record of it
        amo_client_of(runtime).create_task(Entity("lead", "31926520"), "Call back", DUE)
    runtime.store.set(runtime.keys("attempted", action.key), json.dumps({"at": sent_at, "pid": 1, "phase": "sent"}))
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.tasks) == 1
    assert "action.reconciled" in audit_whats(runtime)
    other = PlannedAction(rule="Test rule", rule_id="test", step=1, connection="quickstart-amo", method="create_task",
                          args={"entity": {"type": "lead", "id": "31926520"}, "text": "Other", "due": DUE},
                          key=f"{EVENT.id}|test|other-task")
    runtime.store.set(runtime.keys("attempted", other.key), json.dumps({"at": sent_at, "pid": 1, "phase": "sent"}))
    assert execute.execute(runtime, EVENT, other) is True                    # the vendor never had it
    assert len(fake_amo.tasks) == 2


def amo_client_of(runtime):
    return runtime.client("quickstart-amo")


def test_429_then_success_on_a_create_is_done_once(runtime, fake_amo):
    fake_amo.fail(r"^/api/v4/tasks$", 429, {"title": "Too Many Requests", "status": 429}, headers={"Retry-After": "0"})
    action = step("create_task", "quickstart-amo", entity={"type": "lead", "id": "31926520"}, text="Call back", due=DUE)
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.tasks) == 1 and len(fake_amo.received("POST", "/api/v4/tasks", failed=True)) == 2


def test_a_create_without_any_answer_is_looked_for_on_the_next_try_not_now(runtime, fake_amo, monkeypatch):
    """A dropped connection after the create left: the vendor may still be making it, so the job
    fails (RQ tries it again later) with the step's mark kept; that next try, once the request
    cannot be running any more, finds the task and records it. One task, nothing parked."""
    from datetime import datetime, timedelta, timezone
    from pipeline import clock
    now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    monkeypatch.setattr(clock, "now", lambda: now)
    fake_amo.fail(r"^/api/v4/tasks$", 500, AMO_500, reset=True)            # done, then the connection drops
    action = task_step()
    with pytest.raises(execute.SettleLater):
        execute.execute(runtime, EVENT, action)
    assert runtime.store.exists(runtime.keys("attempted", action.key)) and len(fake_amo.tasks) == 1
    assert fake_amo.received("GET", "/api/v4/tasks") == []                 # not looked for yet
    with pytest.raises(execute.SettleLater):                               # 5 s later: still too early
        monkeypatch.setattr(clock, "now", lambda: now + timedelta(seconds=5))
        execute.execute(runtime, EVENT, action)
    monkeypatch.setattr(clock, "now", lambda: now + timedelta(seconds=40))
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.tasks) == 1 and len(fake_amo.received("POST", "/api/v4/tasks", failed=True)) == 1
    assert not runtime.store.exists(runtime.keys("attempted", action.key))
    assert {"action.unsettled", "action.reconciled"} <= set(audit_whats(runtime))


def test_a_message_with_on_uncertain_resend_is_sent_again_not_parked(runtime, fake_tg):
    """`on_uncertain: resend` (send_message, reply): the rule would rather send a second copy than
    none; the step is tried again instead of parked, and the audit says why."""
    fake_tg.fail("sendMessage", 500, TG_500)                                 # not applied: resend is right
    action = step("send_message", "quickstart-bot", chat="42", text="Hello", on_uncertain="resend")
    assert execute.run_plan(runtime, EVENT, Plan(actions=[action]))["done"] == 1
    assert len(fake_tg.received("POST", r".*/sendMessage")) == 1
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    # a mark left "sent" by a dead worker: repeated, not parked
    again = PlannedAction(rule="Test rule", rule_id="test", step=1, connection="quickstart-bot", method="send_message",
                          args={"chat": "42", "text": "Again", "on_uncertain": "resend"}, key=f"{EVENT.id}|test|again")
    runtime.store.set(runtime.keys("attempted", again.key), json.dumps({"at": "2026-11-24T10:00:00+00:00", "phase": "sent"}))
    assert execute.execute(runtime, EVENT, again) is True
    assert "on_uncertain: resend" in json.dumps([json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))])


def test_on_uncertain_is_planned_only_when_it_says_resend():
    from rules import send_message
    from marshmallow import ValidationError
    assert send_message.Options().load({"connection": "bot", "chat": "1", "text": "x"})["on_uncertain"] == "park"
    with pytest.raises(ValidationError):
        send_message.Options().load({"connection": "bot", "chat": "1", "text": "x", "on_uncertain": "twice"})
