"""Read-back for the creates inside steps: copy_entity's lead (amoCRM find_lead) and find_or_create's
contact (amoCRM and Bitrix24 find_contact). A create that got a 5xx after the vendor made it, no
answer, or whose worker died mid-step, is looked for and recorded done; one the vendor does not
have is made once more. Through the executor: one lead / one contact, the step done, nothing parked."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from connectors.base import Entity, Event, UncertainApiError
from pipeline import execute
from rules.engine import Plan, PlannedAction
from tests.conftest import PAYLOADS

AMO_500 = {"title": "Internal Server Error", "status": 500}
EVENT = Event(id="quickstart-amo:read-back-steps", connection="quickstart-amo", source="amocrm",
              kind="stage.changed", entity=Entity("lead", "3912171"), data={}, raw={},
              occurred_at="2026-11-24T10:00:00+00:00")


def step(method: str, **args) -> PlannedAction:
    return PlannedAction(rule="Test rule", rule_id="test", step=0, connection="quickstart-amo", method=method,
                         args=args, key=f"{EVENT.id}|test|{method}")


def copy_step() -> PlannedAction:
    return step("copy_entity", entity={"type": "lead", "id": "3912171"}, pipeline="Sales", stage="Brief received")


def contact_step() -> PlannedAction:
    return step("find_or_create", by="phone", value="+380 67 123 45 67", name="Олена Коваленко",
                entity={"type": "lead", "id": "3912171"})


def audit_whats(runtime) -> list[str]:
    return [json.loads(e[b"entry"])["what"] for _, e in runtime.store.xrange(runtime.keys("audit"))]


def copies(fake_amo) -> list[int]:
    return [lead_id for lead_id in fake_amo.leads if lead_id != 3912171]


def assert_done_not_parked(runtime, action, value) -> None:
    assert json.loads(runtime.store.get(runtime.keys("done", action.key))) == value
    assert runtime.store.get(runtime.keys("attempted", action.key)) is None
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.uncertain" not in audit_whats(runtime)


@pytest.fixture
def source_lead(fake_amo):
    lead = json.loads((PAYLOADS / "amocrm/api_lead_get_with_contacts.json").read_text())
    lead["custom_fields_values"] = []
    fake_amo.add_lead(lead)
    return lead


# --- copy_entity: POST /api/v4/leads made, then 500 --------------------------------------------------

def test_a_copy_made_then_answered_500_is_read_back_once_and_linked(runtime, fake_amo, source_lead):
    fake_amo.fail(r"^/api/v4/leads$", 500, AMO_500, applied=True, method="POST")
    action = copy_step()
    assert execute.execute(runtime, EVENT, action) is True
    [copy] = copies(fake_amo)                                             # exactly one lead made
    assert len(fake_amo.received("POST", "/api/v4/leads", failed=True)) == 1
    assert_done_not_parked(runtime, action, copy)
    [link] = fake_amo.received("POST", rf"/api/v4/leads/{copy}/link")   # the link went on after the read-back
    assert {item["to_entity_id"] for item in link.body} == {10971465, 10971463}
    [found] = [c for c in fake_amo.received("GET", "/api/v4/leads") if "filter[created_at][from]" in c.query]
    assert found.query["filter[pipeline_id]"] == ["2116"] and found.query["order[created_at]"] == ["desc"]
    assert execute.execute(runtime, EVENT, action) is False              # a replay does nothing


def test_a_copy_refused_with_500_is_not_found_and_made_once_more(runtime, fake_amo, source_lead):
    fake_amo.fail(r"^/api/v4/leads$", 500, AMO_500, method="POST")                       # not applied
    action = copy_step()
    assert execute.execute(runtime, EVENT, action) is True
    [copy] = copies(fake_amo)
    assert len(fake_amo.received("POST", "/api/v4/leads", failed=True)) == 2
    assert_done_not_parked(runtime, action, copy)


def test_a_copy_left_sent_by_a_dead_worker_is_read_back_on_the_rerun(runtime, fake_amo, source_lead, monkeypatch):
    """The worker died after the create left: the step's own mark says what left, the executor's
    mark still says "calling" (settling), so the re-run runs the step, which looks for the lead
    once the vendor cannot be making it any more, and links it. One lead, nothing parked."""
    action = copy_step()
    client = runtime.client("quickstart-amo")
    made = client.create_copy(client.get_raw(Entity("lead", "3912171")), "Sales", "Brief received")   # what it made
    sent_at = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat()
    runtime.store.set(runtime.keys("attempted", f"{action.key}|create"), json.dumps({"at": sent_at, "phase": "sent"}))
    runtime.store.set(runtime.keys("attempted", action.key), json.dumps({"at": sent_at, "pid": 1, "phase": "calling"}))
    assert execute.execute(runtime, EVENT, action) is True
    assert copies(fake_amo) == [made] and len(fake_amo.received("POST", "/api/v4/leads")) == 1
    assert_done_not_parked(runtime, action, made)
    assert fake_amo.received("POST", rf"/api/v4/leads/{made}/link")


def test_a_copy_without_an_answer_is_looked_for_once_the_vendor_is_done(runtime, fake_amo, source_lead, monkeypatch):
    """The connection dropped after the create left: the step waits out the client's timeout (+2 s)
    before it looks (the vendor may still be making it), then finds the lead. One lead."""
    client = runtime.client("quickstart-amo")
    monkeypatch.setattr(client, "timeout", 0.5)
    fake_amo.fail(r"^/api/v4/leads$", 500, None, reset=True, method="POST")
    action = copy_step()
    started = time.monotonic()
    assert execute.execute(runtime, EVENT, action) is True
    assert time.monotonic() - started >= 2.0                              # looked for after timeout + 2 s
    [copy] = copies(fake_amo)
    assert len(fake_amo.received("POST", "/api/v4/leads", failed=True)) == 1
    assert_done_not_parked(runtime, action, copy)


def test_find_lead_matches_pipeline_name_and_window(runtime, fake_amo, source_lead):
    client = runtime.client("quickstart-amo")
    since = time.time()
    assert client.find_lead("Sales", "Brief received", "Example", since) is None
    made = client.create_copy(source_lead, "Sales", "Brief received")
    assert client.find_lead("Sales", "Brief received", "Example", since) == made
    assert client.find_lead("2116", "10216994", "Example", since) == made        # by ids as well
    assert client.find_lead("Sales", "Brief received", "Another name", since) is None
    assert client.find_lead("Sales", "Brief received", "Example", since + 3600) is None


# --- find_or_create: POST /api/v4/contacts made, then 500 ---------------------------------------------

def test_a_contact_made_then_answered_500_is_read_back_once(runtime, fake_amo, source_lead):
    fake_amo.fail(r"^/api/v4/contacts$", 500, AMO_500, applied=True, method="POST")
    action = contact_step()
    assert execute.execute(runtime, EVENT, action) is True
    [contact] = fake_amo.contacts                                         # exactly one contact
    assert fake_amo.contacts[contact]["name"] == "Олена Коваленко"
    assert len(fake_amo.received("POST", "/api/v4/contacts", failed=True)) == 1
    done = json.loads(runtime.store.get(runtime.keys("done", action.key)))
    assert done["contact"] == str(contact) and done["created"] is True and done["linked"] == "lead:3912171"
    assert runtime.store.get(runtime.keys("attempted", action.key)) is None
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.uncertain" not in audit_whats(runtime)


def test_a_contact_refused_with_500_is_made_once_more(runtime, fake_amo, source_lead):
    fake_amo.fail(r"^/api/v4/contacts$", 500, AMO_500, method="POST")
    assert execute.execute(runtime, EVENT, contact_step()) is True
    assert len(fake_amo.contacts) == 1 and len(fake_amo.received("POST", "/api/v4/contacts", failed=True)) == 2


def test_a_create_that_keeps_failing_is_parked_after_three_looks(runtime, fake_amo, source_lead):
    """Three sends each answered 500 and not found: the step is parked with the evidence (not sent a fourth time)."""
    fake_amo.fail(r"^/api/v4/contacts$", 500, AMO_500, times=3, method="POST")
    action = contact_step()
    assert execute.run_plan(runtime, EVENT, Plan(actions=[action]))["failed"] == 1
    assert fake_amo.contacts == {} and len(fake_amo.received("POST", "/api/v4/contacts", failed=True)) == 3
    assert runtime.store.hexists(runtime.keys("dead"), action.key)


# --- Bitrix24: find_contact (crm.contact.list NAME, >=DATE_CREATE); the portal's offset -----------

def test_bitrix24_find_contact_settles_a_create_applied_then_answered_500(b24_with_a_deal):
    client, fake = b24_with_a_deal
    fake.zone = timezone(timedelta(hours=3))
    since = time.time()
    assert client.find_contact("Олена", "phone", "+380671234567", since) is None
    fake.fail(r"/crm\.contact\.add(\.json)?$", 500,
              {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}, applied=True)
    with pytest.raises(UncertainApiError):
        client.add_contact("Олена", "phone", "+380 67 123 45 67", {})
    made = max(fake.records["contact"])
    assert client.find_contact("Олена", "phone", "+380671234567", since) == made
    assert client.find_contact("Олена", "phone", "+380670000000", since) is None      # another phone
    assert client.find_contact("Ольга", "phone", "+380671234567", since) is None      # another name
    [listed] = fake.method_calls("crm.contact.list")[-1:]
    assert listed.body["filter"][">=DATE_CREATE"].endswith("+03:00")               # in the portal's offset


def test_bitrix24_date_filters_are_sent_in_the_portals_offset(b24_with_a_deal):
    """A portal west of UTC that reads a filter's wall-clock time in its own zone would miss a deal
    changed after `since` if `since` were sent in UTC; sent with the portal's offset, it is found."""
    client, fake = b24_with_a_deal
    fake.zone = timezone(timedelta(hours=-5))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fake.records["deal"][410]["DATE_MODIFY"] = (now - timedelta(minutes=1)).astimezone(fake.zone).isoformat()
    [changed] = client.changed_since((now - timedelta(minutes=5)).isoformat())
    assert changed.id == "410"
    [listed] = fake.method_calls("crm.deal.list")
    assert listed.body["filter"][">DATE_MODIFY"].endswith("-05:00")
    assert len(fake.method_calls("server.time")) == 1
    client.changed_since(now.isoformat())
    assert len(fake.method_calls("server.time")) == 1                               # asked once


def test_bitrix24_stage_history_pages_and_chains_the_stages_left(b24_with_a_deal):
    client, fake = b24_with_a_deal
    start = time.time() - 100
    for n in range(60):                                                   # 60 rows: two pages of 50
        fake.move_deal(410, ["PREPARATION", "EXECUTING", "NEW"][n % 3], at=start + n)
    moves = client.stage_history(datetime.fromtimestamp(start - 1, timezone.utc).isoformat())
    assert len(moves) == 60 and len(fake.method_calls("crm.stagehistory.list")) == 2
    assert moves[0].previous_stage is None and moves[1].previous_stage == "PREPARATION" == moves[0].stage
    assert [m.ref for m in moves] == [str(i) for i in range(1, 61)]
    assert moves[5].at == datetime.fromtimestamp(int(start + 5), timezone.utc).isoformat()
    later = client.stage_history(datetime.fromtimestamp(start + 50, timezone.utc).isoformat())
    assert [m.ref for m in later] == [str(i) for i in range(51, 61)]
    # the first move in this look left the stage of the row just before the window (one batch call a
    # look: the first look asked too, and found no row before deal 410's first)
    assert later[0].previous_stage == moves[49].stage == "EXECUTING" and later[0].previous_pipeline == "0"
    assert later[1].previous_stage == later[0].stage
    assert len(fake.method_calls("batch")) == 2


def test_bitrix24_stage_history_first_moves_of_several_deals_left_their_stages_before(b24_with_a_deal):
    """Each deal's first move in a look gets the stage it left from its own previous row (another
    deal's rows in between do not count); a deal with no row before keeps None."""
    client, fake = b24_with_a_deal
    fake.add("deal", {"ID": "411", "TITLE": "Other", "STAGE_ID": "C3:NEW", "CATEGORY_ID": "3", "ASSIGNED_BY_ID": "1"})
    fake.add("deal", {"ID": "412", "TITLE": "New", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "ASSIGNED_BY_ID": "1"})
    start = time.time() - 100
    fake.move_deal(410, "PREPARATION", at=start)
    fake.move_deal(411, "C3:PREPARE", at=start + 1)
    fake.move_deal(410, "EXECUTING", at=start + 2)
    fake.move_deal(411, "C3:EXECUTING", at=start + 20)
    fake.move_deal(410, "WON", at=start + 21)
    fake.move_deal(412, "PREPARATION", at=start + 22)
    moves = client.stage_history(datetime.fromtimestamp(start + 10, timezone.utc).isoformat())
    assert [(m.id, m.stage, m.previous_stage, m.previous_pipeline) for m in moves] == [
        ("411", "C3:EXECUTING", "C3:PREPARE", "3"), ("410", "WON", "EXECUTING", "0"), ("412", "PREPARATION", None, None)]


# --- Planfix: find_contact through the contact list's value filter -------------------------------------

def test_planfix_find_contact_settles_a_create_applied_then_answered_500(redis_db):
    from connectors import planfix
    from connectors.base import Connection
    from tests.fakes_planfix import FakePlanfix
    fake = FakePlanfix().start()
    try:
        client = planfix.Client(Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest",
                                           credentials={"token": "PF-TOKEN"}), store=redis_db, key_prefix="crmbridge-test:")
        since = time.time()
        assert client.find_contact("Олена", "email", "olena@example.com", since) is None
        fake.fail(r"^/rest/contact/$", 500, {"result": "fail", "code": 0, "error": "Internal error"}, applied=True)
        with pytest.raises(UncertainApiError):
            client.add_contact("Олена", "email", "olena@example.com", {})
        [made] = fake.contacts
        assert client.find_contact("Олена", "email", "olena@example.com", since) == int(made)
        assert client.find_contact("Ольга", "email", "olena@example.com", since) is None   # another name
        assert client.find_contact("Олена", "email", "other@example.com", since) is None   # another value
    finally:
        fake.stop()


# --- find_or_create through the executor on Bitrix24 and Planfix (clients that do not report their
# sends): a worker killed between the create and the step's done mark, and a create applied then
# answered 500. The re-run reads the contact back (find_contact) and records it: one contact, the
# step done, nothing parked. Before the steps said they settle their own creates (`settles`), the
# re-run found the executor's "calling" mark from a client that does not report its sends and parked
# the step ("may have been sent").

class WorkerKilled(BaseException):
    """What a SIGKILL looks like to the code after it: nothing more runs (marks stay as they were)."""


def kill_after_the_vendor_made_it(monkeypatch, client, verb: str) -> None:
    """The next `verb` reaches the vendor, which makes the record; the worker dies before the answer is used."""
    made = getattr(client, verb)

    def dies(*args, **kwargs):
        monkeypatch.setattr(client, verb, made)   # only the first call dies
        made(*args, **kwargs)
        raise WorkerKilled()
    monkeypatch.setattr(client, verb, dies)


def crm_contact_step(connection: str, value: str, entity: dict) -> PlannedAction:
    return PlannedAction(rule="Test rule", rule_id="test", step=0, connection=connection, method="find_or_create",
                         args={"by": "phone" if value.startswith("+") else "email", "value": value,
                               "name": "Олена Коваленко", "entity": entity},
                         key=f"{EVENT.id}|test|{connection}|find_or_create")


@pytest.fixture
def b24_runtime(runtime, b24_with_a_deal):
    client, fake = b24_with_a_deal
    client.timeout = 0.5                  # a create's answer is given up on after 0.5 s: looked for 2.5 s after
    runtime.clients["b24"] = client
    return runtime, client, fake


@pytest.fixture
def pf_runtime(runtime):
    from connectors import planfix
    from connectors.base import Connection
    from tests.fakes_planfix import FakePlanfix
    fake = FakePlanfix().start()
    fake.add("task", {"id": 1042, "name": "Замовлення"})
    client = planfix.Client(Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest",
                                       credentials={"token": "PF-TOKEN"}), store=runtime.store,
                            key_prefix=runtime.keys.prefix)
    client.timeout = 0.5
    runtime.clients["pf"] = client
    yield runtime, client, fake
    fake.stop()


def b24_contacts(fake) -> list[int]:
    return sorted(fake.records["contact"])


def test_bitrix24_contact_made_by_a_worker_killed_before_its_answer_is_read_back_on_the_rerun(
        b24_runtime, monkeypatch):
    runtime, client, fake = b24_runtime
    action = crm_contact_step("b24", "+380 67 123 45 67", {"type": "deal", "id": "410"})
    kill_after_the_vendor_made_it(monkeypatch, client, "add_contact")
    with pytest.raises(WorkerKilled):
        execute.execute(runtime, EVENT, action)
    [made] = b24_contacts(fake)
    assert json.loads(runtime.store.get(runtime.keys("attempted", f"{action.key}|create")))["phase"] == "sent"
    assert runtime.store.get(runtime.keys("attempted", action.key)) is not None      # the step's own mark stays
    assert execute.execute(runtime, EVENT, action) is True                           # the job run again
    assert b24_contacts(fake) == [made] and len(fake.method_calls("crm.contact.add")) == 1
    done = json.loads(runtime.store.get(runtime.keys("done", action.key)))
    assert done["contact"] == str(made) and done["created"] is True and done["linked"] == "deal:410"
    assert runtime.store.get(runtime.keys("attempted", action.key)) is None
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.uncertain" not in audit_whats(runtime) and "action.repeated" in audit_whats(runtime)
    assert fake.method_calls("crm.deal.contact.add")


def test_bitrix24_contact_killed_before_anything_left_is_made_once_on_the_rerun(b24_runtime, monkeypatch):
    runtime, client, fake = b24_runtime
    action = crm_contact_step("b24", "+380 67 123 45 67", {"type": "deal", "id": "410"})
    monkeypatch.setattr(client, "search_contacts", lambda *a, **k: (_ for _ in ()).throw(WorkerKilled()))
    with pytest.raises(WorkerKilled):
        execute.execute(runtime, EVENT, action)
    monkeypatch.undo()
    assert execute.execute(runtime, EVENT, action) is True
    assert len(b24_contacts(fake)) == 1 and not runtime.store.hexists(runtime.keys("dead"), action.key)


def test_bitrix24_contact_applied_then_answered_500_is_read_back_through_the_executor(b24_runtime):
    runtime, client, fake = b24_runtime
    fake.fail(r"/crm\.contact\.add(\.json)?$", 500,
              {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}, applied=True)
    action = crm_contact_step("b24", "+380 67 123 45 67", {"type": "deal", "id": "410"})
    assert execute.execute(runtime, EVENT, action) is True
    [made] = b24_contacts(fake)
    assert len(fake.received(None, r".*/crm\.contact\.add(\.json)?", failed=True)) == 1
    assert json.loads(runtime.store.get(runtime.keys("done", action.key)))["contact"] == str(made)
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.uncertain" not in audit_whats(runtime)


def test_planfix_contact_made_by_a_worker_killed_before_its_answer_is_read_back_on_the_rerun(
        pf_runtime, monkeypatch):
    runtime, client, fake = pf_runtime
    action = crm_contact_step("pf", "olena@example.com", {"type": "task", "id": "1042"})
    kill_after_the_vendor_made_it(monkeypatch, client, "add_contact")
    with pytest.raises(WorkerKilled):
        execute.execute(runtime, EVENT, action)
    [made] = fake.contacts
    assert execute.execute(runtime, EVENT, action) is True
    assert list(fake.contacts) == [made] and len(fake.received("POST", r"^/rest/contact/$")) == 1
    done = json.loads(runtime.store.get(runtime.keys("done", action.key)))
    assert done["contact"] == str(made) and done["linked"] == "task:1042"
    assert fake.tasks[1042]["counterparty"] == {"id": f"contact:{made}"}
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.uncertain" not in audit_whats(runtime)


def test_planfix_contact_applied_then_answered_500_is_read_back_through_the_executor(pf_runtime):
    runtime, client, fake = pf_runtime
    fake.fail(r"^/rest/contact/$", 500, {"result": "fail", "code": 0, "error": "Internal error"}, applied=True)
    action = crm_contact_step("pf", "olena@example.com", {"type": "task", "id": "1042"})
    assert execute.execute(runtime, EVENT, action) is True
    [made] = fake.contacts
    assert len(fake.received("POST", r"^/rest/contact/$", failed=True)) == 1
    assert json.loads(runtime.store.get(runtime.keys("done", action.key)))["contact"] == str(made)
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)


def attach_step(none_open: str = "new_deal") -> PlannedAction:
    return PlannedAction(rule="Test rule", rule_id="test", step=0, connection="b24", method="attach_to_deal",
                         args={"text": "Заявка з сайту: торт на 3 кг", "none_open": none_open,
                               "deal_title": "Заявка з сайту", "contact": "84"},
                         key=f"{EVENT.id}|test|b24|attach_to_deal")


def b24_comments(fake) -> list[tuple[str, str]]:
    return [(c["ENTITY_TYPE"], str(c["ENTITY_ID"])) for c in fake.records.get("timeline_comment", {}).values()]


def test_bitrix24_a_new_deal_made_by_a_worker_killed_before_its_answer_is_read_back_on_the_rerun(
        b24_runtime, monkeypatch):
    """attach_to_deal with none_open: new_deal; the vendor makes the deal, the worker dies. The
    rerun finds the contact's open deal (the one it made), makes no second, and writes the note once."""
    runtime, client, fake = b24_runtime
    fake.add("contact", {"ID": "84", "NAME": "Марія", "LAST_NAME": "Ковальчук"})
    action = attach_step()
    kill_after_the_vendor_made_it(monkeypatch, client, "add_deal")
    with pytest.raises(WorkerKilled):
        execute.execute(runtime, EVENT, action)
    assert len(fake.method_calls("crm.deal.add")) == 1
    assert execute.execute(runtime, EVENT, action) is True                          # the job run again
    [made] = [rid for rid, d in fake.records["deal"].items() if d.get("TITLE") == "Заявка з сайту"]
    assert len(fake.method_calls("crm.deal.add")) == 1
    done = json.loads(runtime.store.get(runtime.keys("done", action.key)))
    assert done["attached"] == f"deal:{made}" and done["created"] is True
    assert len(fake.method_calls("crm.timeline.comment.add")) == 1
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
    assert "action.uncertain" not in audit_whats(runtime)


def test_bitrix24_a_note_made_by_a_worker_killed_before_its_answer_is_written_once(b24_runtime, monkeypatch):
    runtime, client, fake = b24_runtime
    fake.add("contact", {"ID": "84", "NAME": "Марія", "LAST_NAME": "Ковальчук"})
    fake.add("deal", {"ID": "452", "TITLE": "Торт", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "CONTACT_ID": "84",
                      "CLOSED": "N", "DATE_MODIFY": "2026-12-07T10:00:00+03:00"})
    action = attach_step()
    kill_after_the_vendor_made_it(monkeypatch, client, "add_note")
    with pytest.raises(WorkerKilled):
        execute.execute(runtime, EVENT, action)
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake.method_calls("crm.timeline.comment.add")) == 1
    assert fake.method_calls("crm.deal.add") == []
    done = json.loads(runtime.store.get(runtime.keys("done", action.key)))
    assert done["attached"] == "deal:452"
    assert not runtime.store.hexists(runtime.keys("dead"), action.key)
