"""An event deferred on a rate limit resumes where it stopped, with the plan it made.

The team group's window is full (20 messages logged in the shared limiter), so the second step of
a change derived from the record's snapshot cannot get a slot: the event is queued again instead of
the worker sleeping, the step done is not done again, the derived change (which a fresh read could
no longer see: the snapshot was kept) is acted on from the plan the job carries, and the record's
later event waits for it past the order gap timeout.
"""
from __future__ import annotations

import json
import time

import pytest

import worker
from pipeline import resume
from tests.conftest import payload
from tests.test_order import deferred_copy, queued_payloads

FORM = "application/x-www-form-urlencoded"
LEAD = "32966269"          # the recorded lead_updated_custom_fields webhook's lead
TEAM = "-1001234567890"

RULE = """\
rules:
  - name: Поле1 changed → task and team notice
    on:
      event: field.changed
      connection: quickstart-amo
    do:
      - create_task:
          text: "Поле1 змінено: {{ entity.name }}"
          due: 1 working day
      - send_message:
          connection: quickstart-bot
          chat: team
          text: "Поле1 змінено: {{ entity.name }} ({{ event.data.changed['Поле1']['from'] }} → {{ event.data.changed['Поле1']['to'] }})"
"""


@pytest.fixture
def config_dir(config_dir):
    (config_dir / "rules" / "derived.yaml").write_text(RULE, encoding="utf-8")
    return config_dir


def fill_group_window(runtime) -> str:
    """Log 20 answered messages to the team group now: its next slot is a minute away."""
    key = f"{runtime.keys.prefix}rate:quickstart-bot:group:{TEAM}"
    seconds, micros = runtime.store.time()
    now_ms = seconds * 1000 + micros // 1000
    runtime.store.zadd(key, {f"earlier-{i}": now_ms for i in range(20)})
    runtime.store.expire(key, 120)
    return key


def updated(client, runtime, fake_amo, value: str, stamp: int = 1748268900) -> dict:
    """The lead's update webhook, with the lead's Поле1 at the vendor now `value` (it was "1")."""
    fake_amo.add_lead({"id": int(LEAD), "name": "Test", "status_id": 76789230, "pipeline_id": 9621010,
                       "custom_fields_values": [{"field_id": 752009, "field_name": "Поле1", "values": [{"value": value}]}]})
    body = payload("amocrm/lead_updated_custom_fields.form").replace(b"1748268812", str(stamp).encode())
    assert client.post("/hooks/quickstart-amo?token=amo-secret", data=body, content_type=FORM).status_code == 200
    return queued_payloads(runtime)[-1]


def messages(fake_tg) -> list[str]:
    return [c.body["text"] for c in fake_tg.received("POST", r".*/sendMessage")]


def audit_whats(runtime) -> list[str]:
    return [json.loads(e[b"entry"])["what"] for _, e in runtime.store.xrange(runtime.keys("audit"))]


def test_a_rate_limited_step_defers_its_event_which_resumes_with_its_derived_change(client, runtime, fake_amo, fake_tg):
    runtime.store.set(runtime.keys("snapshot", "quickstart-amo", f"lead:{LEAD}"),
                      json.dumps({"type": "lead", "id": LEAD, "name": "Test", "fields": {"Поле1": "1"}}))
    first = updated(client, runtime, fake_amo, "2")
    window = fill_group_window(runtime)

    started = time.monotonic()
    outcome = worker.handle_event(dict(first))
    assert outcome["deferred"] and outcome["rate_limited"] and outcome["seconds"] > 50
    assert time.monotonic() - started < 5                   # the worker did not wait for the group's slot
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1   # the step before it was done
    assert messages(fake_tg) == []
    again = deferred_copy(runtime)
    assert [c["event"]["kind"] for c in again["resume"]["changes"]] == ["entity.updated", "field.changed"]
    assert [a["method"] for a in again["resume"]["plan"]] == ["create_task", "send_message"]

    assert worker.handle_event(dict(first)) == {"superseded": True}   # the job that deferred, run again
    runtime.store.delete(window)                                       # the group's window has room
    worker.handle_event(again)
    assert messages(fake_tg) == ["Поле1 змінено: Test (1 → 2)"]     # the derived change, from the plan kept
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1        # not made again
    whats = audit_whats(runtime)
    assert whats.count("rule.matched") == 1 and whats.count("event.deferred") == 1
    assert whats.count("action.skipped") == 1                         # the task, done before the deferral


def test_the_record_s_later_event_waits_for_a_rate_limited_one_past_the_gap_timeout(client, runtime, fake_amo, fake_tg):
    runtime.store.set(runtime.keys("snapshot", "quickstart-amo", f"lead:{LEAD}"),
                      json.dumps({"type": "lead", "id": LEAD, "name": "Test", "fields": {"Поле1": "1"}}))
    first = updated(client, runtime, fake_amo, "2")
    window = fill_group_window(runtime)
    assert worker.handle_event(dict(first))["rate_limited"]
    held = deferred_copy(runtime)

    second = updated(client, runtime, fake_amo, "3", stamp=1748268960)
    second["waiting_since"] = time.time() - runtime.settings.order_gap_timeout - 1   # waited past the timeout
    assert worker.handle_event(second) == {"deferred": True}            # held: not skipped as missing
    assert "order.gap_skipped" not in audit_whats(runtime)

    runtime.store.delete(window)
    worker.handle_event(held)
    later = [p for p in runtime.backend.queue.scheduled_job_registry.get_job_ids()]
    assert len(later) == 2                                               # both copies' jobs are scheduled
    from rq.job import Job
    from rq.serializers import JSONSerializer
    copies = [Job.fetch(j, connection=runtime.store, serializer=JSONSerializer).args[0] for j in later]
    [second_again] = [c for c in copies if c["seq"] == 2 and c.get("gen") == 1]
    assert "deferred" not in worker.handle_event(second_again)          # its turn now
    assert messages(fake_tg) == ["Поле1 змінено: Test (1 → 2)", "Поле1 змінено: Test (2 → 3)"]


def test_only_a_durable_queue_defers(runtime, monkeypatch):
    """The embedded default handles events on one thread from an in-process queue: a deferral there
    would spin, so its jobs wait for their slot as before."""
    from ratelimit import _PATIENCE
    with resume.patience(runtime, {}):
        assert _PATIENCE.get() == resume.DEFER_AFTER
    monkeypatch.setattr(runtime.backend, "durable", False)
    with resume.patience(runtime, {}):
        assert _PATIENCE.get() is None
    with resume.patience(runtime, {"deferred_since": time.time() - resume.DEFERRED_FOR_AT_MOST - 1}):
        assert _PATIENCE.get() is None     # deferred long enough: it waits (and fails, retried by RQ)


class Killed(BaseException):
    """The worker dies here (what SIGKILL does to a job, as far as Redis can tell)."""


def test_a_worker_killed_mid_event_leaves_the_re_run_its_derived_change(client, runtime, fake_amo, fake_tg, monkeypatch):
    """The snapshot is kept before the steps: a re-run that read the record again would see no
    difference. The event's changes are kept first, and the re-run acts on the derived one."""
    from pipeline import execute
    runtime.store.set(runtime.keys("snapshot", "quickstart-amo", f"lead:{LEAD}"),
                      json.dumps({"type": "lead", "id": LEAD, "name": "Test", "fields": {"Поле1": "1"}}))
    first = updated(client, runtime, fake_amo, "2")
    real_run_plan = execute.run_plan

    def die_at_the_derived_change(rt, event, result):
        if event.kind == "field.changed":
            raise Killed()
        return real_run_plan(rt, event, result)
    monkeypatch.setattr(execute, "run_plan", die_at_the_derived_change)
    with pytest.raises(Killed):
        worker.handle_event(dict(first))
    assert runtime.store.ttl(runtime.keys("progress", first["id"])) > 0
    monkeypatch.setattr(execute, "run_plan", real_run_plan)
    worker.handle_event(dict(first))                      # the job given back after the worker died
    assert messages(fake_tg) == ["Поле1 змінено: Test (1 → 2)"]
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert not runtime.store.exists(runtime.keys("progress", first["id"]))   # done: dropped
