"""pipeline.execute's `attempted:` mark, decided without killing anything: what a re-run does with a
step that an earlier run left attempted and not recorded done. The marks are written the way a
worker killed at each moment leaves them; the calls go to the fake vendors (tests/conftest.py)."""
from __future__ import annotations

import json

import pytest

from connectors.base import Entity, Event
from rules.engine import Plan, PlannedAction
from pipeline import dead_letters, execute

EVENT = Event(id="quickstart-amo:attempted-test", connection="quickstart-amo", source="amocrm",
              kind="stage.changed", entity=Entity("lead", "31926520"), data={}, raw={},
              occurred_at="2026-11-24T10:00:00+00:00")


def step(method: str, connection: str, **args) -> PlannedAction:
    return PlannedAction(rule="Test rule", rule_id="test", step=0, connection=connection, method=method,
                         args=args, key=f"{EVENT.id}|test|{method}")


def create_task() -> PlannedAction:
    return step("create_task", "quickstart-amo", entity={"type": "lead", "id": "31926520"}, text="Call back",
                due="2026-11-25T10:00:00+00:00")


def leave_mark(runtime, action: PlannedAction, phase: str | None) -> None:
    mark = {"at": "2026-11-24T10:00:00+00:00", "pid": 1}
    if phase:
        mark["phase"] = phase
    runtime.store.set(runtime.keys("attempted", action.key), json.dumps(mark))


def audit(runtime) -> list[dict]:
    return [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]


@pytest.mark.parametrize("phase", ["sent", None])   # None: a mark written before marks had phases
def test_a_message_that_may_have_been_sent_is_parked_not_repeated(runtime, fake_tg, phase):
    """A message cannot be read back from Telegram: a person decides (the dead letter's replay)."""
    action = step("send_message", "quickstart-bot", chat="42", text="Hello")
    leave_mark(runtime, action, phase)
    with pytest.raises(execute.StepMaybeDone, match="may have been sent"):
        execute.execute(runtime, EVENT, action)
    assert [c for c in fake_tg.calls if c.path.endswith("/sendMessage")] == []
    assert runtime.store.exists(runtime.keys("attempted", action.key))     # kept for the person who decides
    assert [a["what"] for a in audit(runtime)] == ["action.uncertain"]
    # the run_plan path: the step becomes a dead letter, and a replay is that person's decision
    result = execute.run_plan(runtime, EVENT, Plan(actions=[action]))
    assert result["failed"] == 1
    dead = json.loads(runtime.store.hget(runtime.keys("dead"), action.key))
    assert "may have been sent" in dead["error"]
    assert dead_letters.replay(runtime, action.key)
    assert not runtime.store.exists(runtime.keys("attempted", action.key))


@pytest.mark.parametrize("phase", ["sent", None])
def test_a_create_that_may_have_been_sent_is_read_back_before_it_is_sent(runtime, fake_amo, phase):
    """A CRM create is looked for at the vendor instead of parked: amoCRM does not have the task,
    so it is sent, once (and a second run finds it done)."""
    action = create_task()
    leave_mark(runtime, action, phase)
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert len(fake_amo.received("GET", "/api/v4/tasks")) == 1              # the read-back
    assert [a["what"] for a in audit(runtime)] == ["action.repeated", "action.done"]
    assert execute.execute(runtime, EVENT, action) is False


def test_a_create_whose_worker_died_before_the_request_left_is_done(runtime, fake_amo):
    action = create_task()
    leave_mark(runtime, action, "calling")     # killed in the rate limiter, say: nothing left
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert runtime.store.exists(runtime.keys("done", action.key))
    assert not runtime.store.exists(runtime.keys("attempted", action.key))
    assert [a["what"] for a in audit(runtime)] == ["action.repeated", "action.done"]


def test_an_idempotent_step_that_may_have_been_sent_is_done_again(runtime, fake_amo):
    action = step("move_to_stage", "quickstart-amo", entity={"type": "lead", "id": "31926520"},
                  stage="10216994", pipeline=None)
    leave_mark(runtime, action, "sent")
    assert execute.execute(runtime, EVENT, action) is True
    assert len(fake_amo.received("PATCH", "/api/v4/leads/31926520")) == 1
    assert [a["what"] for a in audit(runtime)] == ["action.repeated", "action.done"]


def test_a_step_sent_now_is_marked_sent_before_the_vendor_answers(runtime, fake_amo):
    """The mark says "sent" from the moment the request leaves (what a kill then leaves behind)."""
    action = create_task()
    seen: list[dict] = []
    fake_amo_answer = fake_amo._answer

    def look_at_the_mark(call):
        raw = runtime.store.get(runtime.keys("attempted", action.key))
        if call.path == "/api/v4/tasks":
            seen.append(json.loads(raw) if raw else {})
        return fake_amo_answer(call)

    fake_amo._answer = look_at_the_mark
    assert execute.execute(runtime, EVENT, action) is True
    assert [m.get("phase") for m in seen] == ["sent"]
    assert not runtime.store.exists(runtime.keys("attempted", action.key))


def test_a_step_found_done_leaves_no_attempted_mark(runtime, fake_amo):
    """The done check and the claim share a round trip: a step found done gives its claim back,
    so no stale `attempted:` mark is left behind (it would outlive the step by done_ttl)."""
    action = create_task()
    assert execute.execute(runtime, EVENT, action) is True
    assert execute.execute(runtime, EVENT, action) is False            # the re-run finds it done
    assert runtime.store.get(runtime.keys("attempted", action.key)) is None
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
