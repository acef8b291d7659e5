"""Playbook D9 on Bitrix24 end to end: plan and fact. A deal entering «Оплачено» records an event
planned (and its amount) for its manager, one entering «Мероприятие проведено» an event held; the
shipped reports.yaml answers plan and fact per month and manager over GET /reports, as CSV or JSON,
once per move however often Bitrix24 repeats its event."""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.playbooks.bitrix24_robots import (  # noqa: F401 - fixtures
    ANNA, IVAN, STAGE, at, config_dir, deal, msk, portal, post, updated,
)
from tests.playbooks.bitrix24_robots import env as playbook_env

TOKEN = "d9-reports-token"
DECEMBER = {"from": "2026-12-01", "to": "2026-12-31"}


@pytest.fixture
def env(playbook_env):   # noqa: F811
    return {**playbook_env, "CRMBRIDGE_REPORTS_TOKEN": TOKEN}


@pytest.fixture
def settings(settings, tmp_path):
    return replace(settings, history_path=tmp_path / "history.sqlite3")


def report(client, name: str, **params: str):
    return client.get(f"/reports/{name}", query_string={**DECEMBER, **params},
                      headers={"Authorization": f"Bearer {TOKEN}"})


def test_d9_plan_and_fact_per_month_and_manager_for_a_bi_tool(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11))
    for number, manager, price in ((420, IVAN, "120000.00"), (421, IVAN, "80000.00"), (422, ANNA, "50000.00")):
        deal(portal, number, f"Событие {number}", "КП отправлено", responsible=manager, OPPORTUNITY=price)
        post(client, runtime, "ONCRMDEALUPDATE", number)
        updated(client, runtime, portal, number, STAGE_ID=STAGE["Оплачено"])
    at(msk(2026, 12, 20, 18))
    updated(client, runtime, portal, 420, STAGE_ID=STAGE["Мероприятие проведено"])
    post(client, runtime, "ONCRMDEALUPDATE", 420)          # Bitrix24 repeats its event: recorded once
    updated(client, runtime, portal, 422, STAGE_ID=STAGE["Мероприятие проведено"])

    answer = report(client, "events")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    rows = answer.get_json()["rows"]
    assert rows == [
        {"month": "2026-12", "manager": "Анна Сидорова", "events_held": 1, "plan": 1, "percent": 100.0},
        {"month": "2026-12", "manager": "Иван Петренко", "events_held": 1, "plan": 2, "percent": 50.0}]
    csv = report(client, "revenue", format="csv").get_data(as_text=True)
    assert csv.splitlines() == ["month,manager,revenue_held,plan,percent",
                                "2026-12,Анна Сидорова,50000,50000,100.0",
                                "2026-12,Иван Петренко,120000,200000,60.0"]
    # a BI tool without the token gets nothing; November has no figures
    assert client.get("/reports/events", query_string=DECEMBER).status_code == 401
    assert report(client, "events", **{"from": "2026-11-01", "to": "2026-11-30"}).get_json()["rows"] == []
