"""Playbook D8 on Bitrix24 end to end: a client's Telegram message lands in the timeline of their
most recently active open deal (latest DATE_MODIFY, ties broken by the highest id, closed deals
left out, deals the contact is linked to as a second contact included); with no open deal a
comment on the contact, or (configured) a new deal; an unknown sender is left alone.

A Bot API update goes through the Flask app into a real RQ worker; the shipped rule
(config/examples/bitrix24-robots/rules/routing.yaml) acts on the fake portal.
"""
from __future__ import annotations

import json

import pytest

from pipeline.steps.attach_to_deal import latest_open_deal
from tests.conftest import payload, run_worker
from tests.playbooks.bitrix24_robots import (  # noqa: F401 - fixtures
    at, calls, config_dir, contact, deal, env, msk, portal,
)

SENDER = "1111111"     # tests/payloads/telegram/message_private_text.json's from.id
TEXT = "Когда будет готова смета?"


def message(client, runtime, update_id: int = 10000, sender: str = SENDER) -> None:
    """Telegram posts the update (message_private_text.json, with the client's text)."""
    update = json.loads(payload("telegram/message_private_text.json"))
    update["update_id"] = update_id
    update["message"]["text"] = TEXT
    update["message"]["from"]["id"] = update["message"]["chat"]["id"] = int(sender)
    resp = client.post("/hooks/office-bot", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    run_worker(runtime)


def comments(portal) -> list[tuple[str, int, str]]:
    return [(c["fields"]["ENTITY_TYPE"], int(c["fields"]["ENTITY_ID"]), c["fields"]["COMMENT"])
            for c in calls(portal, "crm.timeline.comment.add")]


NOTE = f"Telegram, Test Firstname Test Lastname: {TEXT}"


def test_d8_the_message_goes_to_the_most_recently_active_open_deal_ties_to_the_highest_id(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук", telegram=SENDER)
    deal(portal, 450, "Свадьба: площадка", "Встреча", contact=84, DATE_MODIFY="2026-12-05T10:00:00+03:00")
    deal(portal, 451, "Свадьба: кейтеринг", "Бриф получен", contact=84, DATE_MODIFY="2026-12-06T18:30:00+03:00")
    # the same moment written in UTC, and the contact linked as the deal's second contact
    deal(portal, 452, "Свадьба: фото", "Новая", contact=90, DATE_MODIFY="2026-12-06T15:30:00+00:00")
    portal.records["deal"][452]["CONTACT_IDS"] = [90, 84]
    deal(portal, 453, "Прошлогодний юбилей", "Сделка успешна", contact=84, DATE_MODIFY="2026-12-07T09:00:00+03:00")
    message(client, runtime)
    assert comments(portal) == [("deal", 452, NOTE)]
    [listed] = calls(portal, "crm.deal.list")
    assert listed["filter"] == {"CONTACT_ID": 84, "CLOSED": "N"}
    assert listed["order"] == {"DATE_MODIFY": "DESC", "ID": "DESC"}
    [found] = calls(portal, "crm.contact.list")
    assert found["filter"] == {"=UF_CRM_1733000000010": SENDER}
    # the same update delivered again is a duplicate: nothing more
    message(client, runtime)
    assert len(comments(portal)) == 1


def test_d8_no_open_deal_leaves_a_comment_on_the_contact(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук", telegram=SENDER)
    deal(portal, 453, "Прошлогодний юбилей", "Сделка успешна", contact=84)
    message(client, runtime)
    assert comments(portal) == [("contact", 84, NOTE)]
    assert calls(portal, "crm.deal.add") == []


def test_d8_configured_so_no_open_deal_makes_a_new_deal_with_the_message(config_dir, client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук", telegram=SENDER)
    # (the fixture's app already read the rules: a second app reads the edited file)
    rules = config_dir / "rules" / "routing.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace(
        "none_open: contact_note", 'none_open: new_deal\n          deal_title: "Обращение в Telegram: {{ data.from.name }}"'),
        encoding="utf-8")
    from webhooks import create_app
    app = create_app(settings=runtime.settings)
    rt = app.extensions["crmbridge"]
    try:
        message(app.test_client(), rt)
    finally:
        rt.backend.close()
    [made] = calls(portal, "crm.deal.add")
    assert made == {"fields": {"TITLE": "Обращение в Telegram: Test Firstname Test Lastname", "CONTACT_IDS": [84]}}
    [new_id] = [rid for rid, d in portal.records["deal"].items() if d["TITLE"].startswith("Обращение")]
    assert comments(portal) == [("deal", new_id, NOTE)]


def test_d8_an_unknown_sender_is_left_alone(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук", telegram=SENDER)
    deal(portal, 450, "Свадьба", "Встреча", contact=84)
    message(client, runtime, sender="2222222")
    assert comments(portal) == [] and calls(portal, "crm.deal.list") == []


@pytest.mark.parametrize("deals, chosen", [
    ([{"id": "7", "modified": "2026-12-06T10:00:00+03:00"}, {"id": "9", "modified": "2026-12-06T10:00:00+03:00"},
      {"id": "8", "modified": "2026-12-06T10:00:00+03:00"}], "9"),                       # a three-way tie
    ([{"id": "10", "modified": "2026-12-06T07:00:00+00:00"}, {"id": "3", "modified": "2026-12-06T10:00:01+03:00"}],
     "3"),                                                                              # a second later wins over an id
    ([{"id": "4", "modified": None}, {"id": "2", "modified": "2020-01-01T00:00:00+03:00"}], "2"),  # no time: the oldest
    ([{"id": "4", "modified": None}, {"id": "5", "modified": ""}], "5"),                  # none has one: the highest id
    ([], None),
])
def test_d8_most_recently_active_is_the_latest_modification_then_the_highest_id(deals, chosen):
    found = latest_open_deal(deals)
    assert (found or {}).get("id") == chosen


@pytest.mark.parametrize("applied", [True, False], ids=["done-then-500", "refused-with-500"])
def test_d8_a_note_answered_with_a_500_is_looked_for_before_it_is_sent_again(client, runtime, portal, at, applied):
    from tests.fakes_bitrix24 import BitrixError
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук", telegram=SENDER)
    deal(portal, 450, "Свадьба", "Встреча", contact=84)
    original, tries = portal.methods["crm.timeline.comment.add"], []

    def flaky(params):
        tries.append(params)
        if len(tries) == 1:
            if applied:
                original(params)
            raise BitrixError(500, "INTERNAL_SERVER_ERROR", "Internal server error")
        return original(params)
    portal.methods["crm.timeline.comment.add"] = flaky
    message(client, runtime)
    assert [(c["ENTITY_TYPE"], c["ENTITY_ID"], c["COMMENT"]) for c in portal.comments] == [("deal", 450, NOTE)]
    assert len(tries) == (1 if applied else 2)
    assert len(calls(portal, "crm.timeline.comment.list")) == 1     # looked for once
