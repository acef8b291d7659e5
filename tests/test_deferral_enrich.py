"""What the rules read besides the record (enrich: open tasks, activity, files, contacts) meets a
rate limit: the event is deferred with its changes instead of the worker waiting for the slot
(issue 14, item 5). The record's snapshot is kept before that read, so the deferred event must
carry the change derived from it: a fresh read on the re-run would find no difference."""
from __future__ import annotations

import json
import time

import pytest

import worker
from tests.test_deferral_resume import LEAD, messages, updated
from tests.test_order import deferred_copy

TASKS_RULE = """\
rules:
  - name: Поле1 changed → team notice with the open tasks
    on:
      event: field.changed
      connection: quickstart-amo
    do:
      - send_message:
          connection: quickstart-bot
          chat: team
          text: "Поле1 змінено: {{ entity.name }}, відкритих задач: {{ entity.tasks | length }}"
"""


def hold_amo_window(runtime) -> str:
    """Log amoCRM's 7 calls as still in flight for a minute: the connection's next slot is far away."""
    key = f"{runtime.keys.prefix}rate:quickstart-amo"
    seconds, micros = runtime.store.time()
    ahead_ms = seconds * 1000 + micros // 1000 + 60_000
    runtime.store.zadd(key, {f"in-flight-{i}": ahead_ms for i in range(7)})
    runtime.store.expire(key, 120)
    return key


@pytest.fixture
def config_dir(config_dir):
    (config_dir / "rules" / "derived.yaml").write_text(TASKS_RULE, encoding="utf-8")
    return config_dir


def test_a_rate_limit_met_reading_what_the_rules_need_defers_the_event_with_its_changes(
        client, runtime, fake_amo, fake_tg, monkeypatch):
    """The record is read and its snapshot kept; then reading its open tasks (the rule's
    `entity.tasks`) finds amoCRM's window full: the worker does not wait for the slot, the event is
    deferred carrying its changes (the derived field change, which a fresh read could no longer
    see), and its re-run reads the tasks and acts on it. Before, the event was deferred without
    them (or the worker waited up to 2 minutes) and the field change was lost."""
    runtime.store.set(runtime.keys("snapshot", "quickstart-amo", f"lead:{LEAD}"),
                      json.dumps({"type": "lead", "id": LEAD, "name": "Test", "fields": {"Поле1": "1"}}))
    first = updated(client, runtime, fake_amo, "2")
    amo = runtime.client("quickstart-amo")
    real_rule_context = amo.rule_context
    held: list[str] = []

    def window_full_first(entity, needs):
        if not held:
            held.append(hold_amo_window(runtime))   # after the record's read, before the tasks' read
        return real_rule_context(entity, needs)
    monkeypatch.setattr(amo, "rule_context", window_full_first)

    started = time.monotonic()
    outcome = worker.handle_event(dict(first))
    assert outcome["deferred"] and outcome["rate_limited"]
    assert time.monotonic() - started < 10                  # not the limiter's 120 s wait
    assert messages(fake_tg) == []
    again = deferred_copy(runtime)
    assert [c["event"]["kind"] for c in again["resume"]["changes"]] == ["entity.updated", "field.changed"]
    assert again["resume"]["enrich"]["needs"] == ["tasks"]

    runtime.store.delete(held[0])                           # the window has room
    worker.handle_event(again)
    assert messages(fake_tg) == ["Поле1 змінено: Test, відкритих задач: 0"]
    assert fake_amo.received("GET", r"/api/v4/tasks")
