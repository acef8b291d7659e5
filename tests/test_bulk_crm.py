"""Bulk sends to a list filtered from the CRM (amoCRM: GET /api/v4/leads with filter[statuses],
filter[updated_at] and with=contacts, then the contacts by filter[id][]; Bitrix24: crm.deal.list with
a filter, then crm.contact.get in a batch), each person in the first channel of the configured order
they have an address for, opt-outs across all their channels, and quiet hours in the person's zone
(deferred to the window's end, on the pipeline's clock, and counted)."""
from __future__ import annotations

import json
import textwrap
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

import cli
from connectors import bitrix24
from connectors.base import Connection, PermanentApiError
from pipeline import campaigns, clock
from pipeline.steps import send_bulk
from tests.conftest import run_worker
from tests.fakes_bitrix24 import FakeBitrix24
from tests.test_bulk import config_dir, env, fake_smsc, fake_turbo, fake_viber  # noqa: F401  (fixtures)

CHANNELS = [{"connection": "quickstart-bot", "field": "telegram chat"},
            {"connection": "shop-viber", "field": "viber id"},
            {"connection": "sms-ua", "field": "phone"}]


def amo_contact(cid: int, name: str, phone: str | None = None, **fields: str) -> dict:
    """A contact as GET /api/v4/contacts answers it (contacts-api): PHONE a multitext with enum_code."""
    values = [{"field_id": 100 + i, "field_name": k, "field_code": None, "field_type": "text",
               "values": [{"value": v}]} for i, (k, v) in enumerate(fields.items())]
    if phone:
        values.append({"field_id": 5001, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
                       "values": [{"value": phone, "enum_id": 7001, "enum_code": "MOB"}]})
    return {"id": cid, "name": name, "responsible_user_id": 938348, "updated_at": int(time.time()),
            "custom_fields_values": values or None, "_embedded": {"tags": [], "companies": []}}


def amo_lead(lid: int, contact: int | None, status: int = 10216994, tags: tuple[str, ...] = ("vip",),
             updated: float | None = None) -> dict:
    """A lead as GET /api/v4/leads?with=contacts answers it (leads-api): _embedded tags and contacts."""
    return {"id": lid, "name": f"Угода {lid}", "price": 0, "status_id": status, "pipeline_id": 2116,
            "responsible_user_id": 938348, "created_at": int(time.time()) - 86400,
            "updated_at": int(updated if updated is not None else time.time()), "custom_fields_values": None,
            "_embedded": {"tags": [{"id": 900 + i, "name": t} for i, t in enumerate(tags)],
                          "contacts": [] if contact is None else [{"id": contact, "is_main": True}],
                          "companies": []}}


@pytest.fixture
def amo_list(fake_amo):
    people = [amo_contact(1, "Олена", "067 123 45 67", **{"Telegram chat": "100001"}),
              amo_contact(2, "Ігор", "050 111 22 33", **{"Viber ID": "igor0001AAAA="}),
              amo_contact(3, "Марія", "0501112234"),
              amo_contact(4, "Без адреси"),
              amo_contact(5, "Петро", "0672223344"),
              amo_contact(7, "Степан", "0673334455", **{"Viber ID": "stepan01AAAA="}),
              amo_contact(9, "Давня", "0674445566")]
    fake_amo.contacts.update({c["id"]: c for c in people})
    for lead in (amo_lead(11, 1), amo_lead(12, 2), amo_lead(13, 3), amo_lead(14, 4),
                 amo_lead(15, 5, status=10216996),          # another stage
                 amo_lead(16, 5, tags=()),                   # no vip tag
                 amo_lead(17, 7),
                 amo_lead(18, 1),                            # Олена's second deal: one message
                 amo_lead(19, 9, updated=time.time() - 90 * 86400),   # no activity for 90 days
                 amo_lead(20, None)):                        # no contact
        fake_amo.add_lead(lead)
    return fake_amo


def test_a_crm_list_reaches_each_person_once_in_their_preferred_channel(runtime, amo_list, fake_tg, fake_viber,
                                                                        fake_turbo):
    send_bulk.opt_out(runtime, "sms-ua", "+380673334455")   # Степан stopped the SMS: no Viber either
    started = send_bulk.start(runtime, "quickstart-amo", "vip-2027", "{name}, з 1 січня ціни змінюються.",
                              crm={"stage": "Brief received", "tags": ["VIP"], "active_within_days": 30},
                              channels=CHANNELS)
    assert started == {"campaign": "vip-2027", "total": 4, "queued": 4, "invalid": 1}
    [listed] = [c for c in amo_list.received("GET", "/api/v4/leads")]
    assert listed.query["filter[statuses][0][pipeline_id]"] == ["2116"]
    assert listed.query["filter[statuses][0][status_id]"] == ["10216994"]
    assert listed.query["with"] == ["contacts"] and "filter[updated_at][from]" in listed.query
    [contacts] = amo_list.received("GET", "/api/v4/contacts")
    assert sorted(contacts.query["filter[id][]"]) == ["1", "2", "3", "4", "7"]
    run_worker(runtime)

    assert [(str(c.body["chat_id"]), c.body["text"]) for c in fake_tg.method_calls("sendMessage")] == [
        ("100001", "Олена, з 1 січня ціни змінюються.")]
    assert [(m["receiver"], m["text"]) for m in fake_viber.sent()] == [
        ("igor0001AAAA=", "Ігор, з 1 січня ціни змінюються.")]
    assert [(m["phone"], m["text"]) for m in fake_turbo.messages.values()] == [
        ("380501112234", "Марія, з 1 січня ціни змінюються.")]
    status = send_bulk.status(runtime, "vip-2027")
    assert {k: status[k] for k in ("total", "sent", "opted_out", "failed", "pending", "deferred")} == {
        "total": 4, "sent": 3, "opted_out": 1, "failed": 0, "pending": 0, "deferred": 0}
    assert status["by_channel"] == {"quickstart-bot": {"sent": 1}, "shop-viber": {"sent": 1, "opted_out": 1},
                                    "sms-ua": {"sent": 1}}
    assert status["invalid"] == [{"address": "Без адреси", "reason": "no address in any channel's field"}]


def test_every_page_of_the_crm_list_is_read(runtime, fake_amo):
    fake_amo.contacts.update({c: amo_contact(c, f"Клієнт {c}", f"+38067{c:07d}") for c in range(1000, 1260)})
    for i in range(260):
        fake_amo.add_lead(amo_lead(5000 + i, 1000 + i))
    rows = send_bulk.crm_rows(runtime, "quickstart-amo", {"stage": ["10216994"]})
    assert len(rows) == 260 and rows[0]["phone"] == "+380670001000" and rows[0]["name"] == "Клієнт 1000"
    assert [c.query["page"] for c in fake_amo.received("GET", "/api/v4/leads")] == [["1"], ["2"]]
    assert len(fake_amo.received("GET", "/api/v4/contacts")) == 2       # 250 ids a request
    with pytest.raises(PermanentApiError, match="unknown option"):
        send_bulk.crm_rows(runtime, "quickstart-amo", {"stages": ["x"]})


def test_a_list_without_channels_or_a_bad_quiet_window_is_refused(runtime, amo_list):
    with pytest.raises(PermanentApiError, match="needs channels"):
        send_bulk.start(runtime, "quickstart-amo", "x1", "Привіт", crm={"stage": "Brief received"})
    with pytest.raises(PermanentApiError, match="no zone"):
        send_bulk.start(runtime, "quickstart-amo", "x2", "Привіт", crm={"stage": "Brief received"},
                        channels=CHANNELS, quiet_hours={"from": "21:00", "to": "09:00"})
    with pytest.raises(PermanentApiError, match="two different times"):
        send_bulk.start(runtime, "quickstart-amo", "x3", "Привіт", crm={"stage": "Brief received"},
                        channels=CHANNELS, quiet_hours={"from": "25:00", "to": "09:00", "zone": "Europe/Kyiv"})


def test_quiet_hours_defer_to_the_window_s_end_in_the_recipient_s_zone(runtime, fake_viber, monkeypatch):
    night = datetime(2026, 12, 7, 20, 30, tzinfo=timezone.utc)          # 22:30 in Kyiv, 15:30 in New York
    monkeypatch.setattr(clock, "now", lambda: night)
    rows = [{"viber": "kyiv0001AAAA=", "name": "Оксана", "tz": "Europe/Kyiv"},
            {"viber": "nyc00001AAAA=", "name": "Ann", "tz": "America/New_York"},
            {"viber": "nozone01AAAA=", "name": "Богдан", "tz": ""}]          # the campaign's zone: Kyiv
    send_bulk.start(runtime, "shop-viber", "night", "{name}, новий прайс.", rows=rows,
                    quiet_hours={"from": "21:00", "to": "09:00", "zone": "Europe/Kyiv", "zone_field": "tz"})
    run_worker(runtime)
    assert [m["receiver"] for m in fake_viber.sent()] == ["nyc00001AAAA="]
    status = send_bulk.status(runtime, "night")
    assert (status["sent"], status["deferred"], status["deferred_waiting"], status["pending"]) == (1, 2, 2, 2)
    assert status["deferred_until"] == "2026-12-08T09:00:00+02:00"
    registry = ScheduledJobRegistry(queue=runtime.backend.queue)
    jobs = registry.get_job_ids()
    assert len(jobs) == 2
    assert {registry.get_scheduled_time(j) for j in jobs} == {datetime(2026, 12, 8, 7, 0, tzinfo=timezone.utc)}

    out = CliRunner().invoke(cli.cli, ["--config", str(runtime.settings.config_dir), "bulk", "status", "night"],
                             env={**runtime.settings.environ, "REDIS_URL": runtime.settings.redis_url,
                                  "CRMBRIDGE_REDIS_PREFIX": runtime.settings.redis_prefix})
    assert "deferred for quiet hours 2 (2 waiting until 2026-12-08T09:00:00+02:00)" in out.output, out.output
    assert "[##########                    ] 1/3" in out.output

    # a job run early (the campaign started again before 09:00) defers again, sends nothing
    send_bulk.start(runtime, "shop-viber", "night", "{name}, новий прайс.", rows=rows,
                    quiet_hours={"from": "21:00", "to": "09:00", "zone": "Europe/Kyiv", "zone_field": "tz"})
    run_worker(runtime)
    assert len(fake_viber.sent()) == 1
    # the window's end: the scheduler's jobs run, each once
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 12, 8, 7, 0, 5, tzinfo=timezone.utc))
    ids = registry.get_job_ids()
    jobs = Job.fetch_many(ids, connection=runtime.store, serializer=JSONSerializer)
    assert None not in jobs
    for job in jobs:                                       # what RQ's scheduler does with a due job
        registry.remove(job.id)
        runtime.backend.queue._enqueue_job(job)
    run_worker(runtime)
    assert sorted(m["receiver"] for m in fake_viber.sent()) == ["kyiv0001AAAA=", "nozone01AAAA=", "nyc00001AAAA="]
    status = send_bulk.status(runtime, "night")
    assert (status["sent"], status["deferred"], status["deferred_waiting"], status["pending"]) == (3, 2, 0, 0)


def test_quiet_hours_take_the_channel_connection_s_zone(runtime):
    conn = runtime.connections.connections["shop-viber"]
    monkeypatch_options = dict(conn.options)
    try:
        conn.options["timezone"] = "Asia/Almaty"
        kept = send_bulk.quiet_window(runtime, {"from": "22:00", "to": "08:00"}, ["shop-viber"])
        assert kept == {"from": "22:00", "to": "08:00", "zone": "Asia/Almaty", "zone_field": None}
    finally:
        conn.options.clear()
        conn.options.update(monkeypatch_options)
    quiet = {"from": "09:00", "to": "18:00", "zone": "Europe/Kyiv", "zone_field": None}   # a daytime window
    assert send_bulk.quiet_until(quiet, {}, datetime(2026, 12, 7, 6, 59, tzinfo=timezone.utc)) is None
    assert send_bulk.quiet_until(quiet, {}, datetime(2026, 12, 7, 7, 0, tzinfo=timezone.utc)).isoformat() == \
        "2026-12-07T18:00:00+02:00"


def test_an_email_channel_takes_addresses_only():
    assert send_bulk.address_of("email", " Olena@Example.COM ", None) == "olena@example.com"
    with pytest.raises(Exception, match="not an e-mail address"):
        send_bulk.address_of("email", "olena at example", None)


# --- Bitrix24: crm.deal.list with the filter, the contacts in one batch of crm.contact.get ---------------

@pytest.fixture
def b24(redis_db):
    fake = FakeBitrix24().start()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    old = datetime(2025, 1, 1, tzinfo=timezone.utc).isoformat(timespec="seconds")
    for cid, name, phone in ((84, "Анна", "+380671234567"), (85, "Борис", "+380501112233"), (86, "Віра", None)):
        fake.add("contact", {"ID": str(cid), "NAME": name, "LAST_NAME": "", "ASSIGNED_BY_ID": "1",
                             "PHONE": [{"ID": "1", "VALUE_TYPE": "MOBILE", "VALUE": phone, "TYPE_ID": "PHONE"}]
                             if phone else [], "UF_CRM_1725370000001": "61" if cid != 85 else "62"})
    for did, stage, contact, modified, channel in (("410", "WON", "84", now, "45"), ("411", "WON", "85", now, "45"),
                                                   ("412", "NEW", "84", now, "45"), ("413", "WON", "86", old, "45"),
                                                   ("414", "WON", "86", now, "46")):
        fake.add("deal", {"ID": did, "TITLE": f"Угода {did}", "STAGE_ID": stage, "CATEGORY_ID": "0",
                          "CONTACT_ID": contact, "ASSIGNED_BY_ID": "1", "DATE_MODIFY": modified,
                          "UF_CRM_1725365201104": channel})
    conn = Connection(name="b24", type="bitrix24", base_url=fake.base_url, credentials={"webhook": fake.code})
    yield bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:"), fake
    fake.stop()


def test_bitrix24_lists_deals_by_stage_field_and_activity_with_their_contacts(b24):
    client, fake = b24
    rows = client.bulk_recipients(stages=["Сделка успешна"], fields={"Канал": "Instagram", "Классификация": "Клиент"},
                                  updated_from=time.time() - 30 * 86400)
    assert [(r["deal"], r["contact"], r["name"], r["phone"]) for r in rows] == [("410", "84", "Анна", "+380671234567")]
    [listed] = fake.method_calls("crm.deal.list")
    assert listed.body["filter"]["STAGE_ID"] == ["WON"] and listed.body["filter"]["UF_CRM_1725365201104"] == "45"
    assert ">=DATE_MODIFY" in listed.body["filter"]
    [batch] = [c for c in fake.method_calls("batch") if "crm.contact.get" in str(c.body["cmd"])]
    assert sorted(batch.body["cmd"].values()) == ["crm.contact.get?id=84", "crm.contact.get?id=85"]
    with pytest.raises(PermanentApiError, match="no tags"):
        client.bulk_recipients(stages=["WON"], tags=["vip"])
    with pytest.raises(PermanentApiError, match="no deal stage"):
        client.bulk_recipients(stages=["Немає такої"])


def test_an_smsc_channel_s_delivery_reports_are_kept_per_recipient(runtime, fake_smsc):
    send_bulk.start(runtime, "sms-ru", "ru-2", "Заказ готов", rows=[{"phone": "8 912 345-67-89", "name": "Ира"}],
                    channels=[{"connection": "sms-ru", "field": "phone"}], region="RU")
    run_worker(runtime)
    assert campaigns.delivery(runtime, "ru-2") == {"delivered": 1}
    assert runtime.store.hgetall(runtime.keys("campaign:ru-2:delivery")) == {b"sms-ru|+79123456789": b"delivered"}


def test_a_rule_sends_to_a_crm_list_in_each_person_s_channel(client, runtime, amo_list, fake_tg, fake_viber,
                                                           fake_turbo, monkeypatch):
    """The send_bulk action of a rule (rules/send_bulk.py): its crm:, channels: and quiet_hours: reach
    the step as the CLI's do; started by a stage change, sent by the same worker."""
    from tests.conftest import payload
    (runtime.settings.config_dir / "rules" / "bulk.yaml").write_text(textwrap.dedent("""
        rules:
          - name: Ціни 2027 — усім VIP
            on: {event: stage.changed, connection: quickstart-amo, stage: "10216994"}
            do:
              - send_bulk:
                  connection: quickstart-amo
                  campaign: vip-rule
                  crm: {stage: "Brief received", tags: [vip], fields: {"Viber ID": "igor0001AAAA="}}
                  channels:
                    - {connection: quickstart-bot, field: "telegram chat"}
                    - {connection: shop-viber, field: "viber id"}
                  quiet_hours: {from: "23:00", to: "06:00", zone: Europe/Kyiv}
                  text: "{name}, з 1 січня ціни змінюються."
        """), encoding="utf-8")
    from rules import MODULES
    from rules.files import load_rules
    runtime.ruleset = load_rules(runtime.settings.config_dir / "rules", MODULES,
                                 calendars=runtime.connections.calendars,
                                 connections=runtime.connections.connections)     # the file added: as at a restart
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc))   # noon in Kyiv
    amo_list.add_lead({"id": 31926520, "name": "x", "status_id": 10216994, "pipeline_id": 2116})
    resp = client.post("/hooks/quickstart-amo?token=amo-secret", data=payload("amocrm/lead_status_changed_full.form"),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200
    run_worker(runtime)
    # the list: Brief received, tag vip, Viber ID igor…: only Ігор; by Viber (he has no Telegram chat)
    assert [(m["receiver"], m["text"]) for m in fake_viber.sent()] == [
        ("igor0001AAAA=", "Ігор, з 1 січня ціни змінюються.")]
    status = send_bulk.status(runtime, "vip-rule")
    assert (status["total"], status["sent"], status["channels"]) == (1, 1, ["quickstart-bot", "shop-viber"])
    kept = json.loads(runtime.store.get(runtime.keys("campaign:vip-rule")))
    assert kept["quiet"] == {"from": "23:00", "to": "06:00", "zone": "Europe/Kyiv", "zone_field": None}
