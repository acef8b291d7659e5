"""`record` and reports end to end, on SQLite and on the real PostgreSQL: amoCRM webhooks into the
real app, a real RQ worker storing facts, then GET /reports/<name> (JSON, CSV, plan vs fact, the
token) and `cli.py report` as an operator types it. A repeated webhook and a re-run job record once."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest
import requests
from click.testing import CliRunner

import cli
from pipeline import clock
from pipeline.steps.record import store
from tests.conftest import payload, run_worker
from tests.history_db import history_settings  # noqa: F401  (a fixture)

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)
TOKEN = "reports-token-7Qx"
LEAD = {"id": 31926520, "name": "Кондитерська «Ромашка»", "price": 1000, "status_id": 10216994,
        "pipeline_id": 2116, "responsible_user_id": 938348}
RULES = """
rules:
  - name: Brief → revenue
    on: {event: stage.changed, connection: quickstart-amo}
    do:
      - record:
          metric: revenue
          value: "{{ entity.price }}"
          dimensions: {manager: "{{ entity.responsible.name }}", source: "Інстаграм"}
      - record: {metric: revenue_plan, value: "2 500,00", dimensions: {manager: "{{ entity.responsible.name }}"}}
      - record: inquiries
"""
REPORTS = """
reports:
  revenue_by_manager:
    title: "Виручка по менеджерах"
    metric: revenue
    by: [month, manager]
    plan: {metric: revenue_plan, aggregate: max}
  inquiries:
    metric: inquiries
    aggregate: count
    by: day
"""
# the sample webhook's lead: last_modified 1456820780 = 2016-03-01 08:26:20 UTC, 10:26 in Kyiv
DAY, MONTH = "2016-03-01", "2016-03"
WIDE = {"from": "2016-01-01", "to": "2026-12-31"}


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)


@pytest.fixture
def env(env):
    return {**env, "CRMBRIDGE_REPORTS_TOKEN": TOKEN}


@pytest.fixture
def settings(settings, history_settings, config_dir):  # noqa: F811  (the suite's settings, one backend)
    (config_dir / "rules" / "facts.yaml").write_text(RULES, encoding="utf-8")
    (config_dir / "reports.yaml").write_text(REPORTS, encoding="utf-8")
    return replace(settings, **history_settings)


def post(live_server: str) -> dict:
    resp = requests.post(f"{live_server}/hooks/quickstart-amo?token=amo-secret",
                         data=payload("amocrm/lead_status_changed_full.form"),
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    return resp.json()


def facts(settings) -> list[tuple]:
    return store(settings).query("SELECT metric, value, day, zone, dimensions, fact_id FROM crmbridge_facts "
                                 "ORDER BY metric")


def ask(live_server: str, name: str, token: str | None = TOKEN, **params: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{live_server}/reports/{name}", params=params, headers=headers, timeout=5)


def test_a_fact_is_recorded_once_and_reported_as_json_and_csv(live_server, runtime, fake_amo, fake_tg, settings,
                                                              redis_db, env):
    fake_amo.add_lead(LEAD)
    assert post(live_server) == {"accepted": 1, "duplicates": 0}
    assert post(live_server) == {"accepted": 0, "duplicates": 1}   # the vendor sends it again
    run_worker(runtime)
    rows = facts(settings)
    assert [(m, v, d, z) for m, v, d, z, *_ in rows] == [
        ("inquiries", 1.0, DAY, "Europe/Kyiv"), ("revenue", 1000.0, DAY, "Europe/Kyiv"),
        ("revenue_plan", 2500.0, DAY, "Europe/Kyiv")]
    dims = {m: json.loads(d) if isinstance(d, str) else d for m, _, _, _, d, _ in rows}
    assert dims["revenue"] == {"manager": "Olena Kovalenko", "source": "Інстаграм"}
    assert [fid.rsplit("|", 1)[1] for *_, fid in rows] == ["2", "0", "1"]   # event | rule | action index

    # a re-run of the same event: its steps' done marks gone (expired, Redis lost), the job run again
    for key in redis_db.scan_iter("crmbridge-test:done:*"):
        redis_db.delete(key)
    for key in redis_db.scan_iter("crmbridge-test:seen:*"):
        redis_db.delete(key)
    assert post(live_server) == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert len(facts(settings)) == 3   # recorded once: the store's key is the step's

    # a worker killed after the insert and before the step was recorded done: its attempted mark
    # is there, its done mark is not; the step is repeated (it is keyed), never parked
    revenue_key = next(fid for m, *_, fid in facts(settings) if m == "revenue")
    for key in [*redis_db.scan_iter("crmbridge-test:done:*"), *redis_db.scan_iter("crmbridge-test:seen:*")]:
        redis_db.delete(key)
    redis_db.set(runtime.keys("attempted", revenue_key), json.dumps({"at": NOW.isoformat(), "pid": 1, "phase": "sent"}))
    assert post(live_server) == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert len(facts(settings)) == 3 and redis_db.exists(runtime.keys("done", revenue_key))
    assert not redis_db.hlen(runtime.keys("dead"))

    resp = ask(live_server, "revenue_by_manager", **WIDE)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
    body = resp.json()
    assert body["columns"] == ["month", "manager", "revenue", "plan", "percent"]
    assert body["rows"] == [{"month": MONTH, "manager": "Olena Kovalenko", "revenue": 1000, "plan": 2500,
                             "percent": 40.0}]
    assert body["title"] == "Виручка по менеджерах" and body["from"] == "2016-01-01"

    resp = ask(live_server, "revenue_by_manager", format="csv", by="manager", **WIDE)
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert list(csv.reader(io.StringIO(resp.text))) == [["manager", "revenue", "plan", "percent"],
                                                        ["Olena Kovalenko", "1000", "2500", "40.0"]]
    assert ask(live_server, "inquiries", **WIDE).json()["rows"] == [{"day": DAY, "inquiries": 1}]
    assert ask(live_server, "inquiries", by="", **WIDE).json()["rows"] == [{"inquiries": 1}]
    assert ask(live_server, "inquiries", **{"from": "2016-03-02", "to": "2016-03-31"}).json()["rows"] == []

    where = ({"DATABASE_URL": settings.database_url} if settings.database_url
             else {"CRMBRIDGE_HISTORY_PATH": str(settings.history_path)})
    result = CliRunner().invoke(cli.cli, ["--config", str(settings.config_dir), "report", "revenue_by_manager",
                                          "--from", "2016-01-01", "--to", "2026-12-31", "--by", "manager", "--format", "csv"],
                                env={**env, **where, "REDIS_URL": ""})
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.decode("utf-8") == resp.text   # the same text, CRLF lines as CSV has them
    result = CliRunner().invoke(cli.cli, ["--config", str(settings.config_dir), "report", "revenue_by_manager",
                                          "--from", "2016-13-01"], env={**env, **where, "REDIS_URL": ""})
    assert result.exit_code == 2 and "from: expected a date YYYY-MM-DD, found '2016-13-01'" in result.output


def test_the_token_and_bad_requests(live_server, settings):
    assert ask(live_server, "inquiries", token=None).status_code == 401
    wrong = ask(live_server, "inquiries", token="guess")
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{live_server}/reports/inquiries", params={"token": TOKEN}, timeout=5).status_code == 200
    assert ask(live_server, "nope").status_code == 404
    listed = requests.get(f"{live_server}/reports", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
    assert [(r["name"], r["plan"]) for r in listed["reports"]] == [("revenue_by_manager", "revenue_plan"),
                                                                   ("inquiries", None)]
    assert requests.get(f"{live_server}/reports", timeout=5).status_code == 401
    bad = ask(live_server, "inquiries", by="manger")
    assert bad.status_code == 400 and bad.json()["error"].startswith("by: unknown dimension 'manger'; expected some of day, month")
    assert ask(live_server, "revenue_by_manager", by="source").json()["error"] == \
        "by: the plan 'revenue_plan' has no dimension 'source'"
    assert ask(live_server, "inquiries", to="2026-02-30").json()["error"] == \
        "to: expected a date YYYY-MM-DD, found '2026-02-30'"
    assert ask(live_server, "inquiries", **{"from": "2026-03-02", "to": "2026-03-01"}).status_code == 400
    assert ask(live_server, "inquiries", format="xml").status_code == 400


def test_reports_are_off_without_a_token(settings, config_dir):
    from webhooks import create_app
    off = create_app(settings=replace(settings, environ={k: v for k, v in settings.environ.items()
                                                         if k != "CRMBRIDGE_REPORTS_TOKEN"}))
    resp = off.test_client().get("/reports/inquiries", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 404 and "off" in resp.get_json()["error"]
