"""Bitrix24 tasks as records: fields written (tasks.task.update), comments added and read back
(task.commentitem.add / getlist), and ONTASKUPDATE deriving stage and responsible changes from the
task's snapshot, end to end through the app and a real RQ worker."""
from __future__ import annotations

from urllib.parse import urlencode

import pytest

from connectors import bitrix24
from connectors.base import Connection, Entity
from tests.b24_app import b24_app
from tests.conftest import run_worker
from tests.fakes_bitrix24 import FakeBitrix24


@pytest.fixture
def fake_b24():
    fake = FakeBitrix24().start()
    fake.add_task(id="12", title="Подготовить смету", responsibleId="7", status="3", ufCrmTask=["D_410"],
                  deadline="2026-12-08T18:00:00+03:00")
    yield fake
    fake.stop()


@pytest.fixture
def b24(fake_b24, redis_db) -> bitrix24.Client:
    conn = Connection(name="shop-b24", type="bitrix24", base_url=fake_b24.base_url,
                      credentials={"webhook": fake_b24.code}, webhook_secret="app-token")
    return bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_set_fields_on_a_task_writes_them_by_code(b24, fake_b24):
    assert b24.set_fields(Entity("task", "12"), {"UF_AUTO_280393520001": 3.5, "TITLE": "Смета v2"}) is True
    [call] = fake_b24.method_calls("tasks.task.update")
    assert call.body == {"taskId": 12, "fields": {"UF_AUTO_280393520001": 3.5, "TITLE": "Смета v2"}}
    assert fake_b24.tasks[12]["UF_AUTO_280393520001"] == 3.5 and fake_b24.tasks[12]["title"] == "Смета v2"


def test_add_note_on_a_task_is_a_task_comment_and_is_read_back(b24, fake_b24):
    note = b24.add_note(Entity("task", "12"), "Клиент прислал правки")
    [call] = fake_b24.method_calls("task.commentitem.add")
    assert call.body == {"TASKID": 12, "FIELDS": {"POST_MESSAGE": "Клиент прислал правки"}}
    assert b24.find_note(Entity("task", "12"), "Клиент прислал правки", "2020-01-01T00:00:00+00:00") == note
    assert b24.find_note(Entity("task", "12"), "Другой текст", "2020-01-01T00:00:00+00:00") is None
    assert b24.find_note(Entity("task", "12"), "Клиент прислал правки", "2099-01-01T00:00:00+00:00") is None
    assert fake_b24.method_calls("crm.timeline.comment.add") == []


RULES = """
defaults: {connection: shop-b24}
rules:
  - name: task completed
    on: {event: stage.changed, entity: task, stage: "Завершена"}
    do:
      - add_note: "Закрыта: {{ entity.name }} (было: {{ entity.previous_stage.name }})"
  - name: task handed over
    on: {event: responsible.changed, entity: task}
    do:
      - notify: {user: "{{ entity.responsible.id }}", text: "Вам передана задача «{{ entity.name }}»"}
"""


def task_event(name: str, ts: int) -> bytes:
    """ONTASKADD / ONTASKUPDATE as Bitrix24 posts them (tests/payloads/bitrix24/task_update.form)."""
    return urlencode([("event", name), ("data[FIELDS_BEFORE][ID]", "12"), ("data[FIELDS_AFTER][ID]", "12"),
                      ("ts", str(ts)), ("auth[domain]", "shop.bitrix24.ru"),
                      ("auth[application_token]", "app-token")]).encode()


def test_ontaskupdate_derives_stage_and_responsible_changes(tmp_path, fake_b24, redis_db):
    app = b24_app(tmp_path, fake_b24, RULES)
    runtime, client = app.extensions["crmbridge"], app.test_client()
    try:
        def post(name: str, ts: int) -> None:
            resp = client.post("/hooks/shop-b24", data=task_event(name, ts),
                               content_type="application/x-www-form-urlencoded")
            assert resp.status_code == 200, resp.get_data(as_text=True)
            run_worker(runtime)
        post("ONTASKADD", 1765000000)                     # the first look: kept
        fake_b24.tasks[12].update(status="5")
        post("ONTASKUPDATE", 1765000100)
        [comment] = fake_b24.method_calls("task.commentitem.add")
        assert comment.body == {"TASKID": 12, "FIELDS": {"POST_MESSAGE": "Закрыта: Подготовить смету (было: Выполняется)"}}
        fake_b24.tasks[12].update(responsibleId="1")
        post("ONTASKUPDATE", 1765000200)
        assert [c.body for c in fake_b24.method_calls("im.notify.system.add")] == [
            {"USER_ID": 1, "MESSAGE": "Вам передана задача «Подготовить смету»"}]
        assert len(fake_b24.method_calls("task.commentitem.add")) == 1    # still closed: nothing more
    finally:
        runtime.backend.close()
