"""E1 end to end on Planfix: the shipped config/examples/lead-intake-planfix/ in the real app and a real
RQ worker on real Redis, against the fake Planfix REST API v2 (tests/fakes_planfix.py). A Tilda form
from a person Planfix already knows (the phone kept as "067 123-45-67", the form's "+380 (67) 123-45-67")
lands in her open task of the process «Продажі» as a comment; a second person gets a new task, with
her as its client and the source in its fields; a Tilda retry of the same submission does nothing twice."""
from __future__ import annotations

import html
import json
import shutil
from urllib.parse import urlencode

import pytest

from config.settings import Settings
from tests.conftest import ROOT, TEST_REDIS_URL, payload, run_worker
from tests.fakes_planfix import FakePlanfix

EXAMPLE = ROOT / "config" / "examples" / "lead-intake-planfix"
FORM = "application/x-www-form-urlencoded"
SALES = 21


@pytest.fixture
def account():
    fake = FakePlanfix()
    fake.processes.append({"id": SALES, "name": "Продажі"})
    fake.statuses[SALES] = [{"id": 31, "name": "Новий лід"}, {"id": 32, "name": "Переговори"},
                            {"id": 38, "name": "Продаж", "isActive": False}]
    fake.custom_fields["task"] += [{"id": 311, "name": "Джерело", "type": 0}, {"id": 312, "name": "UTM", "type": 0}]
    fake.add("contact", {"id": 7, "name": "Олена", "lastname": "Коваль",
                         "phones": [{"number": "067 123-45-67", "type": 1}]})
    for number, status, changed in ((501, 32, "2026-12-05T10:00Z"), (502, 38, "2026-12-07T10:00Z")):
        fake.add("task", {"id": number, "name": f"Торт {number}", "processId": SALES, "status": {"id": status},
                          "counterparty": {"id": "contact:7"}, "dateTime": {"datetime": "2026-11-20T09:00Z"},
                          "dateOfLastUpdate": {"datetime": changed}})
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def door(tmp_path, account, redis_db):
    from webhooks import create_app
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE, config)
    env = {"PLANFIX_BASE_URL": f"{account.url}/rest", "PLANFIX_TOKEN": "pf-token", "PLANFIX_WEBHOOK_SECRET": "pf",
           "PLANFIX_RATE_PER_SECOND": "1000", "TILDA_WEBHOOK_SECRET": "tilda-secret", "SITE_FORM_SECRET": "form-secret",
           "JIVO_WEBHOOK_SECRET": "jivo-secret", "TILDA_LEADS_PER_MINUTE": "60000", "TILDA_LEADS_BURST": "1000"}
    app = create_app(settings=Settings(config_dir=config, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                       queue_name="crmbridge-test", environ=env, testing=True))
    yield app.test_client(), app.extensions["crmbridge"]
    app.extensions["crmbridge"].backend.close()


def post(client, path: str, body: bytes, ctype: str) -> dict:
    resp = client.post(path, data=body, content_type=ctype)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def text(comment: dict) -> list[str]:
    return html.unescape(comment["description"]).split("<br>")


def test_a_known_person_lands_in_her_open_task_and_a_new_one_gets_a_task(door, account):
    client, rt = door
    tilda = payload("tilda/submission_uk.form")          # Олена, +380 (67) 123-45-67
    assert post(client, "/hooks/site-tilda?token=tilda-secret", tilda, FORM) == {"accepted": 1, "duplicates": 0}
    run_worker(rt)
    assert account.received("POST", r"/rest/contact/$") == []             # found by phone, not made again
    assert account.received("POST", r"/rest/task/$") == []                 # her open task, not a new one
    [comment] = account.comments[("task", 501)]                             # 502 is won: not open
    assert text(comment) == [
        "Форма на сайті (Tilda), form123456789", "Олена Коваль, +380671234567, olena.koval@example.com",
        "Цікавить весільний торт на 40 гостей", "UTM: source=instagram, medium=cpc, campaign=wedding_2026"]
    lists = [c.body["filters"] for c in account.received("POST", r"/rest/task/list")]
    assert [{"type": 7, "operator": "equal", "value": "contact:7"},
            {"type": 24, "operator": "equal", "value": SALES}] in lists

    # Tilda sends the same submission again (no answer in 5 s): nothing twice
    assert post(client, "/hooks/site-tilda?token=tilda-secret", tilda, FORM) == {"accepted": 0, "duplicates": 1}
    run_worker(rt)
    assert len(account.comments[("task", 501)]) == 1

    # a second person, from the other form: a new contact and a new task in «Продажі», «Новий лід»
    body = urlencode([("your-name", "Марія"), ("your-email", "Maria@Example.UA"), ("tel-412", "(050) 555-12-34"),
                      ("your-message", "Передзвоніть")]).encode()
    assert post(client, "/hooks/site-form?token=form-secret", body, FORM)["accepted"] == 1
    run_worker(rt)
    [made] = [c.body for c in account.received("POST", r"/rest/contact/$")]
    assert made["name"] == "Марія" and made["phones"] == [{"number": "+380505551234", "type": 1}]
    contact = max(account.contacts)
    [task] = [c.body for c in account.received("POST", r"/rest/task/$")]
    assert task == {"name": "Заявка з сайту: Марія", "processId": SALES, "status": {"id": 31},
                    "counterparty": {"id": f"contact:{contact}"},
                    "customFieldData": [{"field": {"id": 311}, "value": "Форма на сайті contacts"}]}
    number = max(account.tasks)
    [comment] = account.comments[("task", number)]
    assert text(comment)[:3] == ["Форма на сайті, contacts", "Марія, +380505551234, maria@example.ua", "Передзвоніть"]

    # she writes in the chat later: her task (now open) gets it, no second task
    jivo = json.loads(payload("jivo/offline_message_uk.json"))
    jivo["visitor"]["phone"] = "050 555 12 34"
    assert post(client, "/hooks/site-chat?token=jivo-secret", json.dumps(jivo).encode(), "application/json")[
        "accepted"] == 1
    run_worker(rt)
    assert len(account.received("POST", r"/rest/task/$")) == 1
    assert text(account.comments[("task", number)][1])[0].startswith("Онлайн-чат Jivo")


def test_the_shipped_example_validates_offline():
    import re

    from click.testing import CliRunner

    import cli
    conn = (EXAMPLE / "connections.yaml").read_text(encoding="utf-8")
    env = {name: ("https://x.example" if "URL" in name else "v")
           for name in re.findall(r"\$\{([A-Z_0-9]+)\}", conn)}
    result = CliRunner().invoke(cli.cli, ["--config", str(EXAMPLE), "validate"], env={**env, "REDIS_URL": ""})
    assert result.exit_code == 0, result.output
