"""Playbook B6 end to end: inquiries, orders and paid orders per Instagram account and manager
(Planfix's "task created" and "status changed" scenarios → `record`), the managers' answer times
(umnico's outgoing messages → the order rule's `response:` facts), and the reports that add them
up (config/examples/confectionery/reports.yaml) over GET /reports/<name>, on SQLite."""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.playbooks.confectionery import (  # noqa: F401 - fixtures
    at, config_dir, fake_inbox, fake_planfix, kyiv, post_inbox, post_planfix, status, umnico_incoming,
    umnico_outgoing,
)
from tests.playbooks.confectionery import env as playbook_env

TOKEN = "reports-token-B6"
WIDE = {"from": "2026-12-01", "to": "2026-12-31"}


@pytest.fixture
def env(playbook_env):   # noqa: F811
    return {**playbook_env, "CRMBRIDGE_REPORTS_TOKEN": TOKEN}


@pytest.fixture
def settings(settings, tmp_path):
    return replace(settings, history_path=tmp_path / "history.sqlite3")


def report(client, name: str, **params: str) -> list[dict]:
    resp = client.get(f"/reports/{name}", query_string={**WIDE, **params}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["rows"]


def created(client, runtime, task: int) -> None:
    """Planfix's "task created" scenario (docs/playbooks/confectionery.md §4)."""
    post_planfix(client, runtime, {"event": "task.created", "task": {"id": str(task)}})


def test_b6_funnel_per_account_and_manager_and_answer_times(client, runtime, fake_planfix, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(64950001, "Торт на суботу?", kyiv(2026, 12, 8, 11, 0), new=True))
    kyiv_order = max(fake_planfix.tasks)
    created(client, runtime, kyiv_order)
    post_inbox(client, runtime, umnico_incoming(64950002, "Макаруни є?", kyiv(2026, 12, 8, 11, 1), login="taras.k",
                                                account="solodka.mriya.lviv", new=True))
    lviv_order = max(fake_planfix.tasks)
    created(client, runtime, lviv_order)
    created(client, runtime, lviv_order)                                  # Planfix retries: recorded once
    # answers: 150 s after the first waiting message, then 60 s
    at(kyiv(2026, 12, 8, 11, 2, 30))
    post_inbox(client, runtime, umnico_outgoing(64950001, "Так, можна!", kyiv(2026, 12, 8, 11, 2, 30)))
    at(kyiv(2026, 12, 8, 11, 5))
    post_inbox(client, runtime, umnico_incoming(64950001, "Скільки коштує?", kyiv(2026, 12, 8, 11, 5)))
    post_inbox(client, runtime, umnico_incoming(64950001, "І доставка?", kyiv(2026, 12, 8, 11, 5, 30)))
    at(kyiv(2026, 12, 8, 11, 6))
    post_inbox(client, runtime, umnico_outgoing(64950001, "1400 грн, доставка 100 грн", kyiv(2026, 12, 8, 11, 6)))
    at(kyiv(2026, 12, 8, 11, 11))
    post_inbox(client, runtime, umnico_outgoing(64950002, "Є, 12 смаків", kyiv(2026, 12, 8, 11, 11),
                                                account="solodka.mriya.lviv"))
    # working time only: asked at 18:59 with hours to 19:00, answered at 10:02 next morning → 180 s
    at(kyiv(2026, 12, 8, 18, 59))
    post_inbox(client, runtime, umnico_incoming(64950003, "Ви ще працюєте?", kyiv(2026, 12, 8, 18, 59),
                                                login="oksana.v", account="solodka.mriya.odesa", new=True))
    at(kyiv(2026, 12, 9, 10, 2))
    post_inbox(client, runtime, umnico_outgoing(64950003, "Доброго ранку! Так", kyiv(2026, 12, 9, 10, 2),
                                                account="solodka.mriya.odesa"))
    status(client, runtime, fake_planfix, kyiv_order, "У виробництво", "Нове звернення")
    status(client, runtime, fake_planfix, kyiv_order, "Оплачено", "У виробництво")

    created(client, runtime, max(fake_planfix.tasks))
    assert report(client, "funnel") == [
        {"month": "2026-12", "account": "solodka.mriya.kyiv", "inquiries": 1, "orders": 1, "paid": 1},
        {"month": "2026-12", "account": "solodka.mriya.lviv", "inquiries": 1, "orders": 0, "paid": 0},
        {"month": "2026-12", "account": "solodka.mriya.odesa", "inquiries": 1, "orders": 0, "paid": 0}]
    assert report(client, "by_manager") == [
        {"month": "2026-12", "manager": "Іван Петренко", "inquiries": 2, "orders": 0, "paid": 0},
        {"month": "2026-12", "manager": "Олена Коваленко", "inquiries": 1, "orders": 1, "paid": 1}]
    assert report(client, "response_avg", by="account,reply") == [
        {"account": "solodka.mriya.kyiv", "reply": "first", "response_seconds": 150},
        {"account": "solodka.mriya.kyiv", "reply": "next", "response_seconds": 60},
        {"account": "solodka.mriya.lviv", "reply": "first", "response_seconds": 600},
        {"account": "solodka.mriya.odesa", "reply": "first", "response_seconds": 180}]   # not 15 h 3 min
    # first answers 150 (kyiv), 600 (lviv), 180 (odesa) s: p50 180; p90 at 1.8 of the three → 180 + 0.8 × 420 = 516
    assert report(client, "first_reply_p50", by="") == [{"response_seconds": 180}]
    assert report(client, "first_reply_p90", by="month") == [{"month": "2026-12", "response_seconds": 516}]
    assert report(client, "first_reply_p90") == [
        {"month": "2026-12", "account": "solodka.mriya.kyiv", "response_seconds": 150},
        {"month": "2026-12", "account": "solodka.mriya.lviv", "response_seconds": 600},
        {"month": "2026-12", "account": "solodka.mriya.odesa", "response_seconds": 180}]
    # Іван's first answers 180 and 600 s: p90 → 180 + 0.9 × 420 = 558; the next answer (60 s) is left out
    assert report(client, "first_reply_by_manager") == [
        {"month": "2026-12", "manager": "Іван Петренко", "response_seconds": 558},
        {"month": "2026-12", "manager": "Олена Коваленко", "response_seconds": 150}]
    assert report(client, "first_reply_p50", by="day") == [{"day": "2026-12-08", "response_seconds": 375},
                                                           {"day": "2026-12-09", "response_seconds": 180}]
    assert report(client, "messages", by="account") == [
        {"account": "solodka.mriya.kyiv", "client_messages": 3}, {"account": "solodka.mriya.lviv", "client_messages": 1},
        {"account": "solodka.mriya.odesa", "client_messages": 1}]
