"""Playbook B (the confectionery) test bed: the shipped example (config/examples/confectionery/), a
fake Planfix account laid out as docs/playbooks/confectionery.md describes, the fake umnico API
(tests/fakes_inbox.py) and the fake Telegram, and helpers that post what umnico's webhook and
Planfix's scenarios send.

umnico's webhook is the captured shape of tests/payloads/inbox/umnico_message_incoming_uk.json and
umnico_message_outgoing.json (sources in their .source.md), with this test's ids, texts and times;
Planfix's scenario bodies are the ones docs/connectors/planfix.md defines (task_status_changed.json,
task_comment_added.json). Time is `pipeline.clock.now`; timers fire with a real RQ worker."""
from __future__ import annotations

import copy
import itertools
import json
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from pipeline import clock
from tests.conftest import PAYLOADS, ROOT, TG_TOKEN, run_worker
from tests.fakes_inbox import TOKEN as UMNICO_TOKEN
from tests.fakes_inbox import FakeInbox
from tests.fakes_planfix import FakePlanfix

EXAMPLE = ROOT / "config" / "examples" / "confectionery"
KYIV = ZoneInfo("Europe/Kyiv")
INBOX_SECRET = "inbox-secret"
PF_SECRET = "pf-secret"
SALES, CONFECTIONERS = 21, 22
SALES_STATUSES = {"Нове звернення": 31, "Привітання": 32, "Скрипти: Ціна": 33, "Скрипти Укр": 34,
                  "Скрипти розмови": 35, "Фото замовлення": 36, "У виробництво": 37, "Оплачено": 38,
                  "Виконано": 39, "Неуспішно": 40, "Спам": 41, "Чернетка": 0}
CONFECTIONER_STATUSES = {"Нова": 51, "В роботі": 52, "Готово": 53}
TASK_FIELDS = [
    {"id": 301, "name": "Розмова", "type": 0}, {"id": 302, "name": "Акаунт", "type": 0},
    {"id": 303, "name": "Канал", "type": 0}, {"id": 304, "name": "Останнє повідомлення", "type": 2},
    {"id": 305, "name": "Дата останнього повідомлення", "type": 5}, {"id": 306, "name": "Хто писав останній", "type": 0},
    {"id": 307, "name": "Без відповіді", "type": 1}, {"id": 308, "name": "Причина", "type": 0},
    {"id": 309, "name": "Кондитер", "type": 0}, {"id": 310, "name": "Опис виробу", "type": 2},
    {"id": 311, "name": "Дата видачі", "type": 3}, {"id": 312, "name": "Попередній статус", "type": 0}]
CONTACT_FIELDS = [
    {"id": 401, "name": "Instagram", "type": 0}, {"id": 402, "name": "Аватар", "type": 0},
    {"id": 403, "name": "Акаунт", "type": 0}, {"id": 404, "name": "Дата звернення", "type": 3}]
FIELD = {f["name"]: f["id"] for f in TASK_FIELDS}
CONTACT_FIELD = {f["name"]: f["id"] for f in CONTACT_FIELDS}
USERS = [{"id": 1, "name": "Ірина", "lastname": "Мельник"}, {"id": 2, "name": "Олена", "lastname": "Коваленко"},
         {"id": 3, "name": "Іван", "lastname": "Петренко"}, {"id": 4, "name": "Марія", "lastname": "Шевчук"},
         {"id": 5, "name": "Тарас", "lastname": "Бондар"}]
HEAD_CHAT, OLENA_CHAT, IVAN_CHAT = -100100, -100200, -100300
_ids = itertools.count(20001)


def kyiv(*args: int) -> datetime:
    return datetime(*args, tzinfo=KYIV)


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix()
    server.custom_fields["task"] = copy.deepcopy(TASK_FIELDS)
    server.custom_fields["contact"] = copy.deepcopy(CONTACT_FIELDS)
    server.processes = [{"id": SALES, "name": "Продажі"}, {"id": CONFECTIONERS, "name": "Кондитери"}]
    server.statuses = {SALES: [{"id": i, "name": n} for n, i in SALES_STATUSES.items()],
                       CONFECTIONERS: [{"id": i, "name": n} for n, i in CONFECTIONER_STATUSES.items()]}
    server.users = copy.deepcopy(USERS)
    server.name_created_fields = True   # a GET names every field, as Planfix's does
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_inbox() -> Iterator[FakeInbox]:
    server = FakeInbox().start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_planfix, fake_inbox, fake_tg) -> dict[str, str]:
    """What a deployment of the example sets (docs/playbooks/confectionery.md §6), pointed at the fakes."""
    return {"PLANFIX_BASE_URL": f"{fake_planfix.url}/rest", "PLANFIX_TOKEN": "PF-TOKEN",
            "PLANFIX_WEBHOOK_SECRET": PF_SECRET, "PLANFIX_RATE_PER_SECOND": "1000",
            "UMNICO_API_URL": fake_inbox.url, "UMNICO_TOKEN": UMNICO_TOKEN, "UMNICO_USER_ID": "15",
            "INBOX_WEBHOOK_SECRET": INBOX_SECRET,
            "TELEGRAM_API_URL": fake_tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
            "HEAD_CHAT_ID": str(HEAD_CHAT), "OLENA_CHAT_ID": str(OLENA_CHAT), "IVAN_CHAT_ID": str(IVAN_CHAT),
            "MARIA_CHAT_ID": "-100400"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The whole shipped example, as a deployment points CRMBRIDGE_CONFIG at it."""
    target = tmp_path / "config"
    shutil.copytree(EXAMPLE, target)
    return target


@pytest.fixture
def at(monkeypatch):
    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
    return set_clock


# --- umnico's webhook -----------------------------------------------------------------------------

def umnico_incoming(lead: int, text: str, when: datetime, *, login: str = "olena.solodka",
                    account: str = "solodka.mriya.kyiv", message_id: int | None = None, new: bool = False,
                    attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """message.incoming as umnico posts it (umnico_message_incoming_uk.json), this client's values."""
    body = json.loads((PAYLOADS / "inbox" / "umnico_message_incoming_uk.json").read_text(encoding="utf-8"))
    body.update(leadId=lead, isNewLead=new, isNewCustomer=new)
    message = body["message"]
    message.update(messageId=message_id or next(_ids), datetime=_utc(when))
    message["sa"]["login"] = account
    message["message"] = {"text": text, "attachments": attachments or []}
    message["sender"].update(login=login, profileUrl=f"https://instagram.com/{login}",
                             customerId=69525000 + sum(map(ord, login)))
    return body


def umnico_outgoing(lead: int, text: str, when: datetime, *, account: str = "solodka.mriya.kyiv",
                    message_id: int | None = None, by_bridge: bool = False) -> dict[str, Any]:
    """message.outgoing: a manager's answer in umnico (or crmbridge's own reply coming back)."""
    body = json.loads((PAYLOADS / "inbox" / "umnico_message_outgoing.json").read_text(encoding="utf-8"))
    body.update(leadId=lead)
    message = body["message"]
    message.update(messageId=message_id or next(_ids), datetime=_utc(when))
    message["sa"]["login"] = account
    message["message"] = {"text": text, "attachments": []}
    if not by_bridge:
        message.pop("customId", None)
    return body


def _utc(when: datetime) -> str:
    return when.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def post_inbox(client, runtime, body: dict[str, Any], *, run: bool = True) -> dict[str, Any]:
    """umnico posts to the URL registered for it (the secret rides in ?token=, docs §1)."""
    resp = client.post(f"/hooks/shop-inbox?token={INBOX_SECRET}", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    if run:
        run_worker(runtime)
    return resp.get_json()


def post_planfix(client, runtime, body: dict[str, Any]) -> None:
    """A Planfix scenario's HTTP request (docs/connectors/planfix.md's body)."""
    resp = client.post("/hooks/shop-planfix", json={"secret": PF_SECRET, **body})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    run_worker(runtime)


def status(client, runtime, fake_planfix, task: int, name: str, previous: str) -> None:
    """A manager changes the order's status in Planfix; the "status changed" scenario posts it."""
    fake_planfix.tasks[task]["status"] = {"id": SALES_STATUSES[name]}
    post_planfix(client, runtime, {"event": "task.status_changed",
                                   "task": {"id": str(task), "status": name, "previous_status": previous}})


def tick(runtime, at, moment: datetime) -> None:
    """The clock reaches `moment`: due timers become RQ jobs, a real RQ worker runs them."""
    at(moment)
    runtime.backend.fire_due_timers(now=moment.timestamp())
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


# --- what came out --------------------------------------------------------------------------------

def bodies(fake, method: str, path: str) -> list[dict[str, Any]]:
    return [c.body for c in fake.received(method, path)]


def custom(body: dict[str, Any]) -> dict[str, Any]:
    """A request's customFieldData as {field name: value}."""
    names = {f["id"]: f["name"] for f in TASK_FIELDS + CONTACT_FIELDS}
    return {names.get(d["field"]["id"], d["field"]["id"]): d["value"] for d in body.get("customFieldData") or []}


def task_creates(fake) -> list[dict[str, Any]]:
    return bodies(fake, "POST", r"/rest/task/")


def card_writes(fake, task: int) -> list[dict[str, Any]]:
    return [custom(b) for b in bodies(fake, "POST", rf"/rest/task/{task}") if "customFieldData" in b]


def telegram_texts(fake_tg, chat: int) -> list[str]:
    return [c.body["text"] for c in fake_tg.method_calls("sendMessage") if str(c.body.get("chat_id")) == str(chat)]


def timers(runtime, rule_prefix: str) -> list[dict]:
    return [t for t in runtime.backend.timers.pending() if t["rule"].startswith(rule_prefix)]
