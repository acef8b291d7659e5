"""E1 end to end: the shipped config/examples/lead-intake/ in the real app and a real RQ worker on
real Redis, against the fake Bitrix24 portal (tests/fakes_bitrix24.py) and a real IMAP server
(dovecot, tests/dovecot_server.py). The same person from the Tilda form and then from the Jivo chat
(the phone typed otherwise) is one contact with one deal in the first stage, both requests in its
timeline; a webhook delivered again does nothing twice; an e-mail from someone else with only an
attachment makes that person's contact and deal."""
from __future__ import annotations

import json
import shutil
from email.message import EmailMessage
from urllib.parse import urlencode

import pytest

from config.settings import Settings
from pipeline import mailbox
from tests.conftest import ROOT, TEST_REDIS_URL, TG_TOKEN, payload, run_worker
from tests.dovecot_server import PASSWORD, USER, remove, start_dovecot
from tests.fakes_bitrix24 import FakeBitrix24, field

EXAMPLE = ROOT / "config" / "examples" / "lead-intake"
FORM = "application/x-www-form-urlencoded"


TG_ID = "UF_CRM_1733000000010"     # the contact field "Telegram ID" the set-up adds
# the deal fields the set-up adds (docs/connectors/lead-intake.md): E3's channel and cycle
DEAL_TG, DEAL_EMAIL, CYCLE = "UF_CRM_1733000000021", "UF_CRM_1733000000022", "UF_CRM_1733000000023"
# a deal's own source fields (crm.deal.fields; bitrix-tools/b24-rest-docs crm/deals/crm-deal-add.md)
SOURCE_FIELDS = {"SOURCE_DESCRIPTION": "Дополнительно об источнике", "UTM_SOURCE": "Рекламная система",
                 "UTM_MEDIUM": "Тип трафика", "UTM_CAMPAIGN": "Обозначение рекламной кампании",
                 "UTM_CONTENT": "Содержание кампании", "UTM_TERM": "Условие поиска кампании"}


def set_up(fake: FakeBitrix24) -> FakeBitrix24:
    fake.fields["contact"][TG_ID] = field("string", TG_ID, "Telegram ID")
    fake.fields["deal"].update({code: field("string", title) for code, title in SOURCE_FIELDS.items()})
    fake.fields["deal"].update({DEAL_TG: field("string", DEAL_TG, "Telegram клієнта"),
                                DEAL_EMAIL: field("string", DEAL_EMAIL, "E-mail клієнта"),
                                CYCLE: field("double", CYCLE, "Цикл покупки, днів"),
                                "CLOSED": field("char", "Закрыта"), "DATE_CREATE": field("datetime", "Дата создания")})
    return fake


@pytest.fixture
def portal():
    fake = set_up(FakeBitrix24().start())
    yield fake
    fake.stop()


@pytest.fixture
def dovecot():
    server = start_dovecot()
    yield server
    remove(server)


def open_door(tmp_path, portal, imap_port: int, telegram_url: str = "http://127.0.0.1:1", **more: str):
    from webhooks import create_app
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE, config, dirs_exist_ok=True)
    env = {"B24_BASE_URL": portal.base_url, "B24_WEBHOOK_CODE": portal.code, "B24_APPLICATION_TOKEN": "app-token",
           "B24_RATE_PER_SECOND": "1000", "TILDA_WEBHOOK_SECRET": "tilda-secret", "SITE_FORM_SECRET": "form-secret",
           "JIVO_WEBHOOK_SECRET": "jivo-secret", "IMAP_USER": USER, "IMAP_PASSWORD": PASSWORD,
           "IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(imap_port), "IMAP_SECURITY": "none",
           "TELEGRAM_API_URL": telegram_url, "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
           "SMTP_HOST": "127.0.0.1", "SMTP_PORT": "1", "SMTP_SECURITY": "none", "SMTP_USER": "sales",
           "SMTP_PASSWORD": "x", "MAIL_FROM": "sales@cake.example.ua",
           # the tests that do not try the doors' rate take every lead at once
           "TILDA_LEADS_PER_MINUTE": "60000", "TILDA_LEADS_BURST": "1000", **more}
    return create_app(settings=Settings(config_dir=config, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                        queue_name="crmbridge-test", environ=env, testing=True))


@pytest.fixture
def door(tmp_path, portal, dovecot, redis_db):
    app = open_door(tmp_path, portal, dovecot.port)
    yield app.test_client(), app.extensions["crmbridge"]
    app.extensions["crmbridge"].backend.close()


@pytest.fixture
def web_door(tmp_path, portal, fake_tg, redis_db):
    """The webhooks only (the mailbox is not read in these tests)."""
    app = open_door(tmp_path, portal, 1, fake_tg.url)
    yield app.test_client(), app.extensions["crmbridge"]
    app.extensions["crmbridge"].backend.close()


def calls(portal, method: str) -> list[dict]:
    return [c.body for c in portal.method_calls(method)]


def comments(portal) -> list[tuple[str, int, str]]:
    return [(c["fields"]["ENTITY_TYPE"], int(c["fields"]["ENTITY_ID"]), c["fields"]["COMMENT"])
            for c in calls(portal, "crm.timeline.comment.add")]


def post(client, path: str, body: bytes, ctype: str) -> dict:
    resp = client.post(path, data=body, content_type=ctype)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def test_one_person_from_the_form_then_the_chat_is_one_contact_one_deal(door, portal):
    client, rt = door
    # Tilda checks the URL first: answered, nothing made
    assert post(client, "/hooks/site-tilda?token=tilda-secret", payload("tilda/test_request.form"), FORM) == {
        "accepted": 0, "duplicates": 0}
    tilda = payload("tilda/submission_uk.form")          # Олена, +380 (67) 123-45-67
    assert post(client, "/hooks/site-tilda?token=tilda-secret", tilda, FORM) == {"accepted": 1, "duplicates": 0}
    run_worker(rt)
    [made] = calls(portal, "crm.contact.add")
    assert made["fields"]["NAME"] == "Олена Коваль"
    assert made["fields"]["PHONE"] == [{"VALUE": "+380671234567", "VALUE_TYPE": "WORK"}]
    [deal] = calls(portal, "crm.deal.add")
    contact_id = max(portal.records["contact"])
    assert deal == {"fields": {"TITLE": "Заявка з сайту (Tilda): Олена Коваль", "CONTACT_IDS": [contact_id],
                               # the door and the UTM tags in the deal's own fields (no utm_content/term sent)
                               "SOURCE_DESCRIPTION": "Форма Tilda form123456789", "UTM_SOURCE": "instagram",
                               "UTM_MEDIUM": "cpc", "UTM_CAMPAIGN": "wedding_2026", DEAL_EMAIL: "olena.koval@example.com"}}
    deal_id = max(portal.records["deal"])
    assert "STAGE_ID" not in deal["fields"]      # Bitrix24 puts it in the default funnel's first stage
    [(kind, where, note)] = comments(portal)
    assert (kind, where) == ("deal", deal_id)
    assert note.splitlines() == [
        "Форма на сайті (Tilda), form123456789", "Олена Коваль, +380671234567, olena.koval@example.com",
        "Цікавить весільний торт на 40 гостей", "UTM: source=instagram, medium=cpc, campaign=wedding_2026"]

    # Tilda did not get its answer in 5 seconds and sends the same submission again: nothing twice
    assert post(client, "/hooks/site-tilda?token=tilda-secret", tilda, FORM) == {"accepted": 0, "duplicates": 1}
    run_worker(rt)
    assert len(calls(portal, "crm.contact.add")) == 1 and len(comments(portal)) == 1

    # the same person writes in the chat the next day, the phone typed nationally: 067 123 45 67
    jivo = payload("jivo/offline_message_uk.json")
    assert post(client, "/hooks/site-chat?token=jivo-secret", jivo, "application/json")["accepted"] == 1
    run_worker(rt)
    assert len(calls(portal, "crm.contact.add")) == 1 and len(calls(portal, "crm.deal.add")) == 1
    [_, (kind, where, note)] = comments(portal)
    assert (kind, where) == ("deal", deal_id)    # her open deal, not a new one
    assert note.startswith("Онлайн-чат Jivo, 3948, https://cake.example.ua/wedding\n")
    assert "Потрібен торт на весілля" in note and "UTM: source=google, medium=cpc" in note
    assert post(client, "/hooks/site-chat?token=jivo-secret", jivo, "application/json") == {
        "accepted": 0, "duplicates": 1}

    # a wrong secret is refused before anything is read
    resp = client.post("/hooks/site-chat?token=nope", data=jivo, content_type="application/json")
    assert resp.status_code == 401


def test_an_email_with_only_an_attachment_from_someone_new(door, portal, dovecot):
    client, rt = door
    assert mailbox.poll(rt, "sales-mail")["accepted"] == 0        # start: new — the mark is set
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Ivan Petrov <Ivan@Example.RU>", "sales@cake.example.ua", "Кошторис"
    msg["Message-ID"] = "<scan-1@example.ru>"
    msg.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf", filename="smeta.pdf")
    dovecot.deliver(bytes(msg))
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 1, "seen": 0, "last_uid": 1}
    run_worker(rt)
    [found] = calls(portal, "crm.duplicate.findbycomm")[:1]
    assert found == {"entity_type": "CONTACT", "type": "EMAIL", "values": ["ivan@example.ru"]}
    [made] = calls(portal, "crm.contact.add")
    assert made["fields"]["EMAIL"] == [{"VALUE": "ivan@example.ru", "VALUE_TYPE": "WORK"}]
    [deal] = calls(portal, "crm.deal.add")
    assert deal["fields"]["TITLE"] == "Лист на пошту: Ivan Petrov"
    [(_, _, note)] = comments(portal)
    assert note.splitlines() == ["Лист на пошту, INBOX", "Ivan Petrov, ivan@example.ru", "Тема: Кошторис",
                                 "Вкладення: smeta.pdf"]
    assert mailbox.poll(rt, "sales-mail")["accepted"] == 0       # read once


def test_a_contact_form_and_a_chat_without_contacts(web_door, portal):
    client, rt = web_door
    body = urlencode([("your-name", "Марія"), ("your-email", "Maria@Example.UA"), ("tel-412", "(050) 555-12-34"),
                      ("your-message", "Передзвоніть")]).encode()
    assert post(client, "/hooks/site-form?token=form-secret", body, FORM)["accepted"] == 1
    chat = json.loads(payload("jivo/chat_finished.json"))
    chat["visitor"] = {"name": "Гість", "description": "", "number": "1", "chats_count": 1}
    assert post(client, "/hooks/site-chat?token=jivo-secret", json.dumps(chat).encode(), "application/json")[
        "accepted"] == 1
    run_worker(rt)
    [made] = calls(portal, "crm.contact.add")
    assert made["fields"]["PHONE"] == [{"VALUE": "+380505551234", "VALUE_TYPE": "WORK"}]
    [deal] = calls(portal, "crm.deal.add")       # the chat left no contacts: no deal for it
    assert deal["fields"]["TITLE"] == "Заявка з сайту: Марія"


def test_the_shipped_example_validates_offline():
    import re

    from click.testing import CliRunner

    import cli
    text = (EXAMPLE / "connections.yaml").read_text(encoding="utf-8")
    env = {name: ("https://x.example" if "URL" in name else "v") for name in re.findall(r"\$\{([A-Z_0-9]+)\}", text)}
    result = CliRunner().invoke(cli.cli, ["--config", str(EXAMPLE), "validate"], env={**env, "REDIS_URL": ""})
    assert result.exit_code == 0, result.output
    assert "7 connection(s), 6 rule(s)" in result.output


JIVO_OK = payload("jivo/offline_message_uk.json")
TILDA_OK = payload("tilda/submission_uk.form")


@pytest.mark.parametrize("path, body, ctype, status, says", [
    ("/hooks/site-tilda", TILDA_OK, FORM, 401, "secret"),
    ("/hooks/site-tilda?token=tilda-secre", TILDA_OK, FORM, 401, "secret"),
    ("/hooks/site-tilda?token=tilda-secret", TILDA_OK, "text/plain", 415, "content type"),
    ("/hooks/site-tilda?token=tilda-secret", b"Name=x&tranid=1%3A2&formid=..%2Fx", FORM, 400, "formid"),
    ("/hooks/site-tilda?token=tilda-secret", b"Name=%ff&tranid=1%3A2&formid=f1", FORM, 400, "UTF-8"),
    ("/hooks/site-chat?token=jivo-secret", JIVO_OK, FORM, 415, "content type"),
    ("/hooks/site-chat?token=jivo-secret", JIVO_OK.replace(b'"chat_id": 4410', b'"chat_id": "1/../../x"'),
     "application/json", 400, "chat_id"),
    ("/hooks/site-chat?token=jivo-secret", b'{"event_name": "offline_message", "event_name": "chat_finished"}',
     "application/json", 400, "twice"),
    ("/hooks/site-chat?token=jivo-secret", b"[" * 40 + b"]" * 40, "application/json", 400, "nested deeper"),
    ("/hooks/site-form?token=form-secret", b"", FORM, 400, "no form fields"),
    ("/hooks/site-form?token=form-secret", b'{"a": {"b": [{"c": 1}]}}', "application/json", 400, "list of"),
    ("/hooks/sales-mail", b"{}", "application/json", 401, "IMAP"),
])
def test_what_a_door_never_gets_from_its_vendor_is_refused_and_leaves_nothing(web_door, path, body, ctype, status,
                                                                              says):
    client, rt = web_door
    resp = client.post(path, data=body, content_type=ctype)
    assert resp.status_code == status and says in resp.get_json()["error"], resp.get_data(as_text=True)
    assert rt.backend.queue.count == 0


def test_a_burst_of_submissions_each_lands_once_nothing_lost(web_door, portal):
    """Thirty people fill the form within a second, and Tilda repeats a third of them: thirty
    contacts, thirty deals, each made once."""
    client, rt = web_door
    bodies = [urlencode([("Name", f"Клієнт {n}"), ("Phone", f"+38067{n:07d}"), ("tranid", f"7000:{n}"),
                         ("formid", "form1")]).encode() for n in range(30)]
    answers = [post(client, "/hooks/site-tilda?token=tilda-secret", body, FORM) for body in bodies + bodies[:10]]
    assert sum(a["accepted"] for a in answers) == 30 and sum(a["duplicates"] for a in answers) == 10
    run_worker(rt)
    phones = sorted(c["fields"]["PHONE"][0]["VALUE"] for c in calls(portal, "crm.contact.add"))
    assert phones == sorted(f"+38067{n:07d}" for n in range(30))
    assert len(calls(portal, "crm.deal.add")) == 30 and len(comments(portal)) == 30


def test_a_private_message_to_the_bot_makes_the_contact_and_deal_then_joins_it(web_door, portal):
    client, rt = web_door
    update = json.loads(payload("telegram/message_private_text.json"))   # from Test Firstname Test Lastname

    def message(update_id: int, text: str) -> None:
        update["update_id"], update["message"]["text"] = update_id, text
        resp = client.post("/hooks/site-bot", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        run_worker(rt)

    sender = str(update["message"]["from"]["id"])
    message(20001, "Скільки коштує торт на 3 кг?")
    [made] = calls(portal, "crm.contact.add")
    assert made["fields"][TG_ID] == sender and made["fields"]["NAME"] == "Test Firstname Test Lastname"
    [deal] = calls(portal, "crm.deal.add")
    assert deal["fields"]["TITLE"] == "Telegram: Test Firstname Test Lastname"
    assert deal["fields"]["SOURCE_DESCRIPTION"] == "Telegram-бот" and deal["fields"][DEAL_TG] == sender
    message(20002, "І ще: чи є доставка?")
    assert len(calls(portal, "crm.contact.add")) == 1 and len(calls(portal, "crm.deal.add")) == 1
    deal_id = max(portal.records["deal"])
    assert [(k, d) for k, d, _ in comments(portal)] == [("deal", deal_id), ("deal", deal_id)]
    assert comments(portal)[1][2].endswith(": І ще: чи є доставка?")
    message(20002, "І ще: чи є доставка?")      # Telegram delivers the update again: nothing twice
    assert len(comments(portal)) == 2


def won_webhook(deal_id: int, ts: int) -> bytes:
    """ONCRMDEALUPDATE as the portal posts it (tests/payloads/bitrix24/deal_update.form): the id only."""
    return urlencode([("event", "ONCRMDEALUPDATE"), ("event_handler_id", "31"), ("data[FIELDS][ID]", str(deal_id)),
                      ("ts", str(ts)), ("auth[domain]", "cake.bitrix24.ua"), ("auth[application_token]", "app-token")
                      ]).encode()


def test_e3_a_won_deal_offers_the_next_purchase_unless_the_client_came_back(web_door, portal, fake_tg, monkeypatch):
    """Two clients came by Telegram and their deals are won; «Цикл покупки, днів» 3. The first gets,
    three days later at 10:00 Kyiv (or the next working day), a task for the manager and the offer in
    Telegram; the second wrote again meanwhile (a new deal, since the won one is closed): nothing."""
    import time
    from datetime import datetime, timedelta

    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from pipeline import clock
    client, rt = web_door
    update = json.loads(payload("telegram/message_private_text.json"))
    deals = {}
    for n, (user_id, name) in enumerate([(5012345678, "Олена"), (5087654321, "Марко")]):
        update["update_id"], update["message"]["text"] = 30001 + n, "Хочу торт"
        update["message"]["from"].update(id=user_id, first_name=name, last_name="", username=None)
        update["message"]["chat"].update(id=user_id, first_name=name, last_name="")
        resp = client.post("/hooks/site-bot", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        run_worker(rt)
        deals[name] = max(portal.records["deal"])
    for name, deal_id in deals.items():     # the manager wins both; the product's cycle is 3 days
        portal.records["deal"][deal_id].update(STAGE_ID="WON", CLOSED="Y", STAGE_SEMANTIC_ID="S", **{CYCLE: "3"})
        resp = client.post("/hooks/portal-b24", data=won_webhook(deal_id, int(time.time()) - 2), content_type=FORM)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        run_worker(rt)
    pending = [t for t in rt.backend.timers.pending() if t["rule"].startswith("E3")]
    assert sorted((t["rule"], t["entity"]["id"]) for t in pending) == sorted(
        (rule, str(deal_id)) for deal_id in deals.values()
        for rule in ("E3 повторний продаж → завдання менеджеру", "E3 повторний продаж → клієнту в Telegram"))
    fire = datetime.fromisoformat(pending[0]["fire_at"])
    assert fire.utcoffset() == timedelta(hours=2) and (fire.hour, fire.minute) == (10, 0) and fire.weekday() < 5
    assert timedelta(days=3) <= fire - datetime.now(fire.tzinfo) < timedelta(days=6)

    # Марко writes again the next day: his won deal is closed, so the message opens a new one
    update["update_id"], update["message"]["text"] = 30010, "Ще один торт, будь ласка"
    resp = client.post("/hooks/site-bot", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})
    assert resp.status_code == 200
    run_worker(rt)
    assert len(calls(portal, "crm.deal.add")) == 3
    sent_before = len(fake_tg.method_calls("sendMessage"))

    monkeypatch.setattr(clock, "now", lambda: fire)
    rt.backend.fire_due_timers(now=fire.timestamp())
    SimpleWorker([rt.backend.queue], connection=rt.store, serializer=JSONSerializer).work(burst=True,
                                                                                          with_scheduler=True)
    tasks = calls(portal, "tasks.task.add")
    assert [t["fields"]["TITLE"] for t in tasks] == ["Запропонувати повторну покупку: Telegram: Олена"]
    assert tasks[0]["fields"]["UF_CRM_TASK"] == [f"D_{deals['Олена']}"]
    offers = [c.body for c in fake_tg.method_calls("sendMessage")[sent_before:]]
    assert [(str(m["chat_id"]), "повторюють замовлення" in m["text"]) for m in offers] == [("5012345678", True)]
    # Марко's client deals were read from the portal: his contact's deals, the new one among them
    assert {c.body["filter"]["CONTACT_ID"] for c in portal.method_calls("crm.deal.list")} >= {
        portal.records["deal"][deals["Марко"]]["CONTACT_IDS"][0]}
    assert rt.backend.timers.pending() == []


def test_a_spam_like_burst_is_taken_on_at_the_doors_rate_nothing_lost(tmp_path, portal, fake_tg, redis_db):
    """site-tilda's `leads_limit` at 240 a minute, 4 at a time (the shipped example says 30 a minute, 10 at
    a time; scaled so the test takes seconds): 16 submissions in one go are all accepted at once, then made
    into 16 contacts and deals, never more than 4 in any second, the rest deferred in the queue."""
    import time

    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    text = (EXAMPLE / "connections.yaml").read_text(encoding="utf-8")
    assert "per_minute: ${TILDA_LEADS_PER_MINUTE:-30}" in text and "burst: ${TILDA_LEADS_BURST:-10}" in text
    app = open_door(tmp_path, portal, 1, fake_tg.url, TILDA_LEADS_PER_MINUTE="240", TILDA_LEADS_BURST="4")
    client, rt = app.test_client(), app.extensions["crmbridge"]
    made: list[float] = []
    original = portal.methods["crm.deal.add"]
    portal.methods["crm.deal.add"] = lambda params: (made.append(time.monotonic()), original(params))[1]
    try:
        bodies = [urlencode([("Name", f"Бот {n}"), ("Phone", f"+38050{n:07d}"), ("tranid", f"9000:{n}"),
                             ("formid", "form1")]).encode() for n in range(16)]
        assert sum(post(client, "/hooks/site-tilda?token=tilda-secret", b, FORM)["accepted"] for b in bodies) == 16
        deadline = time.monotonic() + 60
        while len(made) < 16 and time.monotonic() < deadline:
            SimpleWorker([rt.backend.queue], connection=rt.store, serializer=JSONSerializer).work(
                burst=True, with_scheduler=True)
            time.sleep(0.2)
        phones = sorted(c["fields"]["PHONE"][0]["VALUE"] for c in calls(portal, "crm.contact.add"))
        assert phones == sorted(f"+38050{n:07d}" for n in range(16))       # every one, once
        assert len(made) == 16 and len(comments(portal)) == 16
        busiest = max(sum(1 for t in made if start <= t < start + 1.0) for start in made)
        print(f"16 leads in {made[-1] - made[0]:.1f} s, at most {busiest} deals made in any second")
        assert busiest <= 4 and made[-1] - made[0] >= 2.5                  # 16 at 4 a second: three windows later
    finally:
        rt.backend.close()


def test_e3_a_client_who_came_by_the_form_gets_the_offer_by_e_mail(tmp_path, portal, redis_db, monkeypatch):
    """The Tilda client (phone and e-mail, no Telegram): her won deal's offer goes by e-mail, in
    Ukrainian, to the address the form gave, and the manager gets the task; once."""
    import time
    from datetime import datetime
    from email.header import decode_header, make_header

    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from pipeline import clock
    from tests.fakes_telephony import FakeSmtp
    smtp = FakeSmtp().start()
    app = open_door(tmp_path, portal, 1, SMTP_PORT=str(smtp.port), SMTP_USER=smtp.user, SMTP_PASSWORD=smtp.password)
    client, rt = app.test_client(), app.extensions["crmbridge"]
    try:
        assert post(client, "/hooks/site-tilda?token=tilda-secret", payload("tilda/submission_uk.form"), FORM)[
            "accepted"] == 1
        run_worker(rt)
        deal_id = max(portal.records["deal"])
        portal.records["deal"][deal_id].update(STAGE_ID="WON", CLOSED="Y", STAGE_SEMANTIC_ID="S")   # no cycle: 30 days
        resp = client.post("/hooks/portal-b24", data=won_webhook(deal_id, int(time.time()) - 2), content_type=FORM)
        assert resp.status_code == 200
        run_worker(rt)
        [task_timer, mail_timer] = sorted((t for t in rt.backend.timers.pending()), key=lambda t: t["rule"])
        assert (task_timer["rule"], mail_timer["rule"]) == ("E3 повторний продаж → завдання менеджеру",
                                                            "E3 повторний продаж → клієнту листом")
        fire = datetime.fromisoformat(mail_timer["fire_at"])
        assert (fire.hour, fire.minute) == (10, 0) and 30 <= (fire - datetime.now(fire.tzinfo)).days <= 33
        monkeypatch.setattr(clock, "now", lambda: fire)
        rt.backend.fire_due_timers(now=fire.timestamp())
        SimpleWorker([rt.backend.queue], connection=rt.store, serializer=JSONSerializer).work(burst=True,
                                                                                              with_scheduler=True)
        [got] = smtp.wait_for(1)
        assert got["to"] == ["olena.koval@example.com"]
        assert str(make_header(decode_header(got["message"]["Subject"]))) == "Час повторити замовлення?"
        assert "Відповідайте на цей лист" in FakeSmtp.text_of(got["message"])
        [task] = calls(portal, "tasks.task.add")
        assert task["fields"]["TITLE"] == "Запропонувати повторну покупку: Заявка з сайту (Tilda): Олена Коваль"
    finally:
        rt.backend.close()
        smtp.stop()
