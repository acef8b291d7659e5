"""`restart: false`: a later matching event leaves a pending timer where it is (playbook B4: three
minutes from the FIRST unanswered message). Loading, planning, and timers.apply on the embedded
backend (fakeredis), without a CRM."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import fakeredis
import pytest

from config.loader import ConfigErrors
from connectors.base import Connection, Entity, Event
from pipeline import timers
from queueing import InProcessBackend
from rules import MODULES
from rules.engine import plan
from rules.files import load_rules

CONNECTIONS = {"inbox": Connection("inbox", "inbox"), "bot": Connection("bot", "telegram")}
RULE = """
rules:
  - name: three minutes
    on: {event: message.received, connection: inbox}
    if: [{expr: "data.direction == 'incoming'"}]
    after: 3 minutes
    restart: %s
    while: [{expr: "data.direction == 'incoming'"}]
    do: [{send_message: {connection: bot, chat: "1", text: "чекає"}}]
"""


def load(tmp_path: Path, text: str):
    (tmp_path / "rules.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path)


def message(n: int, minute: int, direction: str = "incoming") -> Event:
    return Event(id=f"inbox:m{n}", connection="inbox", source="inbox", kind="message.received",
                 entity=Entity("conversation", "64950001"), data={"direction": direction, "text": f"#{n}"},
                 raw={}, occurred_at=datetime(2026, 12, 8, 9, minute, tzinfo=timezone.utc).isoformat())


class Runtime(SimpleNamespace):
    pass


def fire_times(rt, rules, events) -> list[str]:
    for event in events:
        timers.apply(rt, event, plan(event, {}, rules, datetime.fromisoformat(event.occurred_at), MODULES))
    return [t["fire_at"] for t in rt.backend.timers.pending()]


@pytest.fixture
def rt(monkeypatch):
    store = fakeredis.FakeRedis()
    from queueing import Keys
    keys = Keys("t:")
    backend = InProcessBackend(store, keys, handle_event=lambda p: None, fire_timer=lambda p: None,
                               on_failure=lambda *a: None)
    monkeypatch.setattr(timers, "audit", lambda *a, **k: None)
    yield Runtime(store=store, keys=keys, backend=backend)
    backend.close()


def test_restart_false_keeps_the_first_timer_and_an_answer_still_cancels_it(tmp_path, rt):
    rules = load(tmp_path, RULE % "false")
    assert rules.rules[0].restart is False
    assert fire_times(rt, rules, [message(1, 0), message(2, 2)]) == ["2026-12-08T09:03:00+00:00"]
    assert fire_times(rt, rules, [message(3, 4, "outgoing")]) == []              # the guard fails: cancelled
    assert fire_times(rt, rules, [message(4, 5)]) == ["2026-12-08T09:08:00+00:00"]   # a new count


def test_by_default_a_later_event_moves_the_timer(tmp_path, rt):
    rules = load(tmp_path, RULE % "true")
    assert fire_times(rt, rules, [message(1, 0), message(2, 2)]) == ["2026-12-08T09:05:00+00:00"]


def test_restart_false_needs_a_timer_that_is_set_once(tmp_path):
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, RULE.replace("    after: 3 minutes\n", "") % "false")
    assert "restart: false keeps a pending timer where it is: only a rule with after/at/before has one " \
           "(found no delay)" in str(exc.value)
    assert str(exc.value).startswith("rules.yaml:6: ")   # the line of `restart:`
