"""What Redis keeps per timer and per record: a pending timer without the vendor's raw payload, a
record's timers listed from its own set (kept in step on set, move, cancel and fire), and a
snapshot of only what derive() compares."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from pipeline import snapshot
from queueing import Keys, TimerIndex
from tests.conftest import run_worker
from tests.test_timers import LEAD, RULES, post, scheduler_pass

ENTITY = "lead:31926520"


@pytest.fixture
def config_dir(config_dir):
    (config_dir / "rules" / "quickstart.yaml").unlink()
    (config_dir / "rules" / "timers.yaml").write_text(RULES, encoding="utf-8")
    return config_dir


@pytest.fixture
def at(monkeypatch):
    from pipeline import clock

    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
    return set_clock


def members(runtime, entity: str = ENTITY) -> set[str]:
    return {m.decode() for m in runtime.store.smembers(runtime.keys("timers-of", entity))}


def test_record_index_in_step_on_set_move_cancel_and_fire(live_server, runtime, fake_amo, at):
    fake_amo.add_lead(dict(LEAD))
    at(datetime.now(timezone.utc) - timedelta(hours=2, seconds=1))   # "after 2 hours" is due now
    post(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    [timer] = runtime.backend.timers.pending(ENTITY)
    assert timer["rule"] == "Brief reminder" and members(runtime) == {timer["timer_id"]}
    assert runtime.backend.timers.pending("lead:1") == []
    # kept without the vendor's raw payload: what firing reads is there
    stored = runtime.store.hget(runtime.keys("timer-data"), timer["timer_id"])
    assert timer["event"]["raw"] is None and len(stored) < 400
    assert timer["event"]["entity"] == timer["entity"] == {"type": "lead", "id": "31926520"}
    assert timer["event"]["data"] and timer["event"]["kind"] == "stage.changed"

    later = (datetime.fromisoformat(timer["fire_at"]) + timedelta(days=1)).isoformat()
    runtime.backend.schedule({**timer, "fire_at": later})              # moved: still one, at its new time
    assert [t["fire_at"] for t in runtime.backend.timers.pending(ENTITY)] == [later]
    assert members(runtime) == {timer["timer_id"]}

    assert runtime.backend.cancel(timer["timer_id"])                   # cancelled: its record's set is gone
    assert runtime.backend.timers.pending(ENTITY) == []
    assert not runtime.store.exists(runtime.keys("timers-of", ENTITY))

    runtime.backend.schedule(timer)                                    # set again, due now, and fired
    at(datetime.now(timezone.utc))
    scheduler_pass(runtime)
    scheduler_pass(runtime)
    [task] = fake_amo.wait_for("POST", "/api/v4/tasks")               # the slim timer fired, guard checked
    assert task.body[0]["text"] == "Remind the client about the brief"
    assert runtime.backend.timers.pending() == [] and members(runtime) == set()


def planned(n: int, when: float) -> dict:
    fire_at = datetime.fromtimestamp(when, timezone.utc).isoformat()
    return {"rule": "R", "rule_id": "r", "timer_id": f"timer:r:amo:lead:{n}", "fire_at": fire_at,
            "entity": {"type": "lead", "id": str(n)}, "occurrence": 0,
            "event": {"id": f"amo:{n}", "connection": "amo", "source": "amocrm", "kind": "stage.changed",
                      "entity": {"type": "lead", "id": str(n)}, "data": {"stage": {"id": "1"}},
                      "raw": {"leads[status][0][id]": str(n), "padding": "x" * 500},
                      "occurred_at": fire_at, "dedupe_window": None}}


def test_a_records_timers_listed_in_milliseconds_among_100000(redis_db):
    index = TimerIndex(redis_db, Keys("crmbridge-test:"))
    assert index.pending("lead:0") == []          # the first listing enters the timers kept so far: none yet
    base = time.time() + 86400
    for first in range(0, 100_000, 2000):
        with redis_db.pipeline(transaction=False) as pipe:
            for n in range(first, first + 2000):
                index.add(planned(n, base + n), pipe)
            pipe.execute()
    index.add(planned(77_777, base - 10))        # a second timer of one record: listed earliest first
    index.add({**planned(77_777, base + 5), "timer_id": "timer:other:amo:lead:77777"})
    took = []
    for n in (0, 50_000, 77_777, 99_999):
        t0 = time.perf_counter()
        found = index.pending(f"lead:{n}")
        took.append(time.perf_counter() - t0)
        assert {t["entity"]["id"] for t in found} == {str(n)}
    assert [t["timer_id"] for t in index.pending("lead:77777")] == ["timer:r:amo:lead:77777",
                                                                    "timer:other:amo:lead:77777"]
    assert max(took) < 0.05, took                  # milliseconds; reading every timer took seconds
    kept = index.get("timer:r:amo:lead:5")
    assert kept == {**planned(5, base + 5), "event": {**planned(5, base + 5)["event"], "raw": None}}
    assert len(redis_db.hget("crmbridge-test:timer-data", "timer:r:amo:lead:5")) < 250   # packed


def test_timers_kept_before_the_record_sets_are_indexed_once(redis_db):
    keys = Keys("crmbridge-test:")
    index = TimerIndex(redis_db, keys)
    for n in range(3):   # as an older release kept them: schedule and data, no per-record set
        timer = planned(n, time.time() + 60 + n)
        redis_db.zadd(keys("timers"), {timer["timer_id"]: time.time() + 60 + n})
        redis_db.hset(keys("timer-data"), timer["timer_id"], json.dumps(timer))
    assert [t["entity"]["id"] for t in index.pending("lead:1")] == ["1"]
    assert redis_db.exists(keys(TimerIndex.INDEXED))
    index.remove("timer:r:amo:lead:1")
    assert index.pending("lead:1") == [] and not redis_db.exists(keys("timers-of", "lead:1"))


def test_snapshot_keeps_what_derive_compares(runtime):
    from connectors.base import Entity, Event
    event = Event(id="e1", connection="quickstart-amo", source="amocrm", kind="entity.updated",
                  entity=Entity("lead", "5"), data={"needs_snapshot_diff": True}, raw={"big": "x" * 1000},
                  occurred_at="2026-12-01T10:00:00+00:00")
    first = {"type": "lead", "id": "5", "name": "A lead", "price": 10, "stage": {"id": "1", "name": "New"},
             "responsible": {"id": "7"}, "fields": {"Budget": "10"}, "modified": "2026-12-01T10:00:00+00:00",
             "contacts": [{"id": "9", "name": "x" * 300}]}
    assert snapshot.keep(runtime, event, first) is None
    kept = json.loads(runtime.store.get(runtime.keys("snapshot", "quickstart-amo", "lead:5")))
    assert set(kept) == {"stage", "responsible", "fields", "modified"}
    assert 0 < runtime.store.ttl(runtime.keys("snapshot", "quickstart-amo", "lead:5")) <= runtime.settings.snapshot_ttl
    second = {**first, "stage": {"id": "2", "name": "Won"}, "fields": {"Budget": "20"}}
    derived = snapshot.derive(event, snapshot.keep(runtime, event, second), second)
    assert [(d.kind, d.data.get("previous_stage"), d.data.get("changed")) for d in derived] == [
        ("stage.changed", {"id": "1", "name": "New"}, None),
        ("field.changed", None, {"Budget": {"from": "10", "to": "20"}})]


def test_snapshot_retention_from_the_environment(runtime, monkeypatch):
    from config.settings import Settings
    from connectors.base import Entity, Event
    assert Settings.from_env({}).snapshot_ttl == 90 * 24 * 3600
    assert Settings.from_env({"CRMBRIDGE_SNAPSHOT_TTL": "604800"}).snapshot_ttl == 604800
    monkeypatch.setattr(runtime, "settings", Settings.from_env({"CRMBRIDGE_SNAPSHOT_TTL": "604800"}))
    event = Event(id="e2", connection="quickstart-amo", source="amocrm", kind="entity.updated",
                  entity=Entity("lead", "6"), data={}, raw=None, occurred_at="2026-12-01T10:00:00+00:00")
    snapshot.keep(runtime, event, {"type": "lead", "id": "6", "stage": {"id": "1"}})
    assert 604000 < runtime.store.ttl(runtime.keys("snapshot", "quickstart-amo", "lead:6")) <= 604800


def test_a_records_move_log_keeps_its_last_20_moves_as_long_as_done_marks(runtime, monkeypatch):
    from config.settings import Settings
    from connectors.base import Entity, Event
    from pipeline import stages
    monkeypatch.setattr(runtime, "settings", Settings.from_env({"CRMBRIDGE_DONE_TTL": "3600"}))
    for n in range(25):
        event = Event(id=f"move-{n}", connection="quickstart-amo", source="amocrm", kind="stage.changed",
                      entity=Entity("lead", "7"), data={"stage": {"id": str(100 + n)}}, raw=None,
                      occurred_at=f"2026-12-01T10:{n:02d}:00+00:00")
        assert stages.moved_already(runtime, event) is False
    key = runtime.keys("stage-moves", "quickstart-amo", "lead:7")
    kept = [json.loads(raw)["event"] for raw in runtime.store.lrange(key, 0, -1)]
    assert kept == [f"move-{n}" for n in range(24, 4, -1)]
    assert 3500 < runtime.store.ttl(key) <= 3600


def test_the_default_retentions_are_two_days():
    from config.settings import Settings
    settings = Settings.from_env({})
    assert (settings.dedupe_ttl, settings.done_ttl) == (2 * 86400, 2 * 86400)
    assert Settings.from_env({"CRMBRIDGE_DONE_TTL": "86400"}).done_ttl == 86400
