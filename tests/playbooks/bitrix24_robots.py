"""The Bitrix24 portal of playbook D for end-to-end tests (config/examples/bitrix24-robots/).

The whole shipped example (connections and every rule file) runs in the real app and a real RQ
worker on real Redis against the fake Bitrix24 portal (tests/fakes_bitrix24.py) and the fake
Telegram. Events are what Bitrix24's outgoing webhook POSTs: `application/x-www-form-urlencoded`,
`event=ONCRMDEALUPDATE&event_handler_id=…&data[FIELDS][ID]=…&ts=…&auth[…]=…`
(tests/payloads/bitrix24/deal_update.form, activity_add.form). Time is `pipeline.clock.now`.
"""
from __future__ import annotations

import itertools
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from pipeline import clock
from tests.conftest import ROOT, TG_TOKEN, run_worker
from tests.fakes_bitrix24 import FakeBitrix24, field, status

EXAMPLE = ROOT / "config" / "examples" / "bitrix24-robots"
MSK = ZoneInfo("Europe/Moscow")
FORM = "application/x-www-form-urlencoded"
APP_TOKEN = "d1robots-app-token"
DOMAIN = "robots.bitrix24.ru"
MEMBER = "a223c6b3710f85df22e9377d6c4f7553"
# the funnel as the set-up guide makes it: STATUS_ID, name, SORT, SEMANTICS (S won, F lost)
STAGES = [("NEW", "Новая", 10, None), ("UC_CONTACT", "Контакт установлен", 20, None),
          ("UC_BRIEF", "Бриф получен", 30, None), ("UC_MEETING", "Встреча", 40, None),
          ("UC_PROPOSAL", "КП отправлено", 50, None), ("UC_PAID", "Оплачено", 60, None),
          ("UC_HELD", "Мероприятие проведено", 65, None),
          ("WON", "Сделка успешна", 70, "S"), ("LOSE", "Сделка провалена", 80, "F")]
STAGE = {name: sid for sid, name, _, _ in STAGES}
HEAD, IVAN, ANNA = "1", "7", "9"   # Ольга Коваленко (the head; the inbound webhook's user), managers
MEETING, TG_CHAT, NPS, PAID = "UF_CRM_1733000000001", "UF_CRM_1733000000002", "UF_CRM_1733000000003", \
    "UF_CRM_1725365197310"
TG_ID = "UF_CRM_1733000000010"     # the contact's "Telegram ID"
_ts = itertools.count(1)


def msk(*args: int) -> datetime:
    return datetime(*args, tzinfo=MSK)


@pytest.fixture
def portal() -> Any:
    """The portal after the set-up guide: the funnel, the deal and contact fields, three users."""
    fake = FakeBitrix24(user_id=HEAD, code="d1robotswebhookcode").start()
    rows = []
    for sid, name, sort, semantics in STAGES:
        row = status("DEAL_STAGE", sid, name, sort)
        row["SEMANTICS"] = semantics
        rows.append(row)
    fake.statuses["DEAL_STAGE"] = rows
    fake.categories = fake.categories[:1]
    fake.fields["deal"].update({
        MEETING: field("datetime", MEETING, "Время встречи"), TG_CHAT: field("string", TG_CHAT, "Telegram-чат клиента"),
        NPS: field("integer", NPS, "NPS"), "CONTACT_ID": field("crm_contact", "Контакт"),
        "COMPANY_ID": field("crm_company", "Компания"), "CLOSED": field("char", "Закрыта")})
    fake.fields["contact"][TG_ID] = field("string", TG_ID, "Telegram ID")
    fake.users = [{"ID": HEAD, "ACTIVE": True, "NAME": "Ольга", "LAST_NAME": "Коваленко"},
                  {"ID": IVAN, "ACTIVE": True, "NAME": "Иван", "LAST_NAME": "Петренко"},
                  {"ID": ANNA, "ACTIVE": True, "NAME": "Анна", "LAST_NAME": "Сидорова"}]
    yield fake
    fake.stop()


@pytest.fixture
def env(portal, fake_tg) -> dict[str, str]:
    """What the deployment sets (docs/playbooks/bitrix24-robots.md, section 6). The fake answers at
    once: B24_RATE_PER_SECOND lifts the 2 a second, which would only slow the tests down."""
    return {"B24_BASE_URL": portal.base_url, "B24_WEBHOOK_CODE": portal.code, "B24_APPLICATION_TOKEN": APP_TOKEN,
            "B24_RATE_PER_SECOND": "1000", "TELEGRAM_API_URL": fake_tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": "tg-secret", "FORMS_WEBHOOK_SECRET": "forms-secret"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The whole shipped example, as a deployment would point CRMBRIDGE_CONFIG at it."""
    target = tmp_path / "config"
    shutil.copytree(EXAMPLE, target)
    return target


@pytest.fixture
def at(monkeypatch):
    """Set the worker's clock."""
    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
    return set_clock


def deal(portal, deal_id: int, title: str, stage: str, responsible: str = IVAN, contact: int | None = None,
         company: int | None = None, **fields: Any) -> dict[str, Any]:
    """A deal as crm.deal.get gives it (tests/payloads/bitrix24/api_deal_get.json), UF fields by code."""
    sid = next(s for s, name, _, semantics in STAGES if name == stage)
    closed = "Y" if any(s == sid and sem for s, _, _, sem in STAGES) else "N"
    return portal.add("deal", {"ID": str(deal_id), "TITLE": title, "STAGE_ID": sid, "CATEGORY_ID": "0",
                               "ASSIGNED_BY_ID": responsible, "CONTACT_ID": str(contact) if contact else None,
                               "COMPANY_ID": str(company) if company else None, "CLOSED": closed,
                               "OPPORTUNITY": "120000.00", "DATE_MODIFY": "2026-12-01T10:00:00+03:00", **fields})


def contact(portal, contact_id: int, name: str, responsible: str = IVAN, telegram: str | None = None) -> dict:
    return portal.add("contact", {"ID": str(contact_id), "NAME": name, "LAST_NAME": "", "ASSIGNED_BY_ID": responsible,
                                  "DATE_CREATE": "2026-11-01T10:00:00+03:00", TG_ID: telegram})


def event(name: str, record_id: int, ts: int | None = None) -> str:
    """One outgoing-webhook POST body, keys and order as Bitrix24 sends them (deal_update.form)."""
    key = "FIELDS_AFTER" if name.startswith("ONTASK") else "FIELDS"
    return urlencode([("event", name), ("event_handler_id", "31"), (f"data[{key}][ID]", str(record_id)),
                      ("ts", str(ts if ts is not None else int(clock.now().timestamp()) + next(_ts))),
                      ("auth[domain]", DOMAIN), ("auth[client_endpoint]", f"https://{DOMAIN}/rest/"),
                      ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"), ("auth[member_id]", MEMBER),
                      ("auth[application_token]", APP_TOKEN)])


def post(client, runtime, name: str, record_id: int) -> None:
    """Bitrix24 calls the handler; the worker runs."""
    resp = client.post("/hooks/portal-b24", data=event(name, record_id), content_type=FORM)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    run_worker(runtime)


def updated(client, runtime, portal, deal_id: int, **changes: Any) -> None:
    """A manager (or a robot) changes the deal in the portal; ONCRMDEALUPDATE follows."""
    portal.records["deal"][deal_id].update(changes)
    post(client, runtime, "ONCRMDEALUPDATE", deal_id)


def tick(runtime, at, moment: datetime) -> None:
    """The clock reaches `moment`: due timers become RQ jobs, a real RQ worker runs them."""
    at(moment)
    runtime.backend.fire_due_timers(now=moment.timestamp())
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def calls(portal, method: str) -> list[dict[str, Any]]:
    """The bodies of one REST method's answered calls, in order."""
    return [c.body for c in portal.method_calls(method)]


def stage_writes(portal, deal_id: int) -> list[str]:
    return [b["fields"]["STAGE_ID"] for b in calls(portal, "crm.deal.update")
            if int(b["id"]) == deal_id and "STAGE_ID" in b["fields"]]


def timers(runtime, rule: str) -> list[dict]:
    return [t for t in runtime.backend.timers.pending() if t["rule"] == rule]
