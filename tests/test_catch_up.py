"""Catch-up: records changed since the last look go through the webhooks' own path, so a lost
webhook's stage move is still seen, and a change already handled does nothing twice."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

import worker
from config.settings import Settings
from tests.conftest import TEST_REDIS_URL, run_worker
from tests.fakes_bitrix24 import FakeBitrix24

CONNECTIONS = """
connections:
  shop-b24:
    type: bitrix24
    base_url: ${B24_URL}
    webhook_secret: ${B24_APP_TOKEN}
    credentials:
      webhook: ${B24_CODE}
    options:
      catch_up: {every: 5 minutes}
"""
RULES = """
rules:
  - name: Deal in work → comment
    on: {event: stage.changed, connection: shop-b24, stage: "В работе"}
    do:
      - add_note: "Угода в роботі (з {{ entity.previous_stage.name }})"
"""


@pytest.fixture
def fake_b24():
    server = FakeBitrix24().start()
    server.add("deal", {"ID": "410", "TITLE": "Торт на весілля", "STAGE_ID": "PREPARATION", "CATEGORY_ID": "0",
                        "ASSIGNED_BY_ID": "1", "DATE_MODIFY": "2026-11-24T10:00:00+03:00"})
    yield server
    server.stop()


@pytest.fixture
def b24_runtime(tmp_path, fake_b24, redis_db, monkeypatch):
    from webhooks import create_app
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (tmp_path / "rules" / "b24.yaml").write_text(RULES, encoding="utf-8")
    env = {"B24_URL": fake_b24.base_url, "B24_APP_TOKEN": "app-token", "B24_CODE": fake_b24.code}
    app = create_app(settings=Settings(config_dir=tmp_path, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                       queue_name="crmbridge-test", environ=env, testing=True))
    monkeypatch.setattr(worker, "clock", lambda: datetime(2026, 11, 24, 7, 5, tzinfo=timezone.utc))
    return app.extensions["crmbridge"]


def test_a_lost_stage_move_is_caught_up_once(b24_runtime, fake_b24, monkeypatch):
    rt = b24_runtime
    assert worker.catch_up("shop-b24") == {"accepted": 1, "seen": 0}   # first look: remember the deal
    run_worker(rt)
    assert fake_b24.method_calls("crm.timeline.comment.add") == []
    # the deal moves; Bitrix24's event is lost (it never retries)
    fake_b24.records["deal"][410].update(STAGE_ID="EXECUTING", DATE_MODIFY="2026-11-24T10:07:00+03:00")
    monkeypatch.setattr(worker, "clock", lambda: datetime(2026, 11, 24, 7, 10, tzinfo=timezone.utc))
    assert worker.catch_up("shop-b24") == {"accepted": 1, "seen": 0}
    run_worker(rt)
    [comment] = fake_b24.method_calls("crm.timeline.comment.add")
    assert comment.body["fields"]["COMMENT"] == "Угода в роботі (з Подготовка документов)"
    # the next look overlaps the last by a minute: the same change is a duplicate, nothing repeats
    monkeypatch.setattr(worker, "clock", lambda: datetime(2026, 11, 24, 7, 15, tzinfo=timezone.utc))
    fake_b24.records["deal"][410]["DATE_MODIFY"] = "2026-11-24T10:09:30+03:00"
    worker.catch_up("shop-b24")
    run_worker(rt)
    assert len(fake_b24.method_calls("crm.timeline.comment.add")) == 1


def test_catch_ups_are_planned_once_per_slot(b24_runtime):
    rt = b24_runtime
    assert worker.ensure_catch_ups(rt) == ["shop-b24"]
    worker.ensure_catch_ups(rt)   # a second worker starting
    ids = rt.backend.queue.scheduled_job_registry.get_job_ids()
    assert len(ids) == 1
    [when] = [rt.backend.queue.scheduled_job_registry.get_scheduled_time(i) for i in ids]
    assert when == datetime(2026, 11, 24, 7, 10, tzinfo=timezone.utc)
