"""make_document end to end on the vendors' fakes: the rule plans it, the step numbers, fills,
converts and attaches the document (amoCRM drive upload + link + attachment note, Bitrix24
timeline comment with the file, Planfix file + comment) and sends it by Telegram; a repeated or
retried step makes one document with one number; start-up checks and the preview command."""
from __future__ import annotations

import io
import json
import shutil
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from pypdf import PdfReader

from config.connections import Connections
from config.loader import ConfigErrors
from config.settings import Settings
from connectors import amocrm, bitrix24, planfix, telegram
from connectors.base import Connection, Entity, Event, PermanentApiError, RetryableApiError
from documents import render
from pipeline import execute
from pipeline.steps import STEPS, StepContext
from queueing import Keys
from rules import MODULES
from rules.engine import plan
from runtime import Runtime, load_configuration
from tests.conftest import PAYLOADS, ROOT, TG_TOKEN
from tests.fakes import FakeTelegram
from tests.fakes_bitrix24 import FakeBitrix24
from tests.fakes_planfix import FakePlanfix
from tests.test_documents import CLIENT, COMPANY, NEEDS_SOFFICE, ROWS, TEMPLATES

EXAMPLE = ROOT / "config" / "examples" / "marketing-agency"
ARGS = {"template": "invoice-uk.docx", "series": "invoice", "number_format": "{year}/{seq:03d}", "language": "uk",
        "currency": "UAH", "items": ROWS, "date": "2027-03-05", "vat": 20, "company": COMPANY, "client": CLIENT,
        "values": {"basis": "Договір № 7 від 01.03.2027"}, "record": {"name": "SMM березень"},
        "file_name": "Рахунок {number}", "pdf": False, "comment": "Рахунок № {number}"}
WORDS = "Двадцять п'ять тисяч п'ятсот одна гривня 00 копійок"


def context_for(client, *others, key="ev-1|rule-1|0") -> StepContext:
    clients = {c.connection.name: c for c in (client, *others)}
    rt = Runtime(settings=Settings(config_dir=EXAMPLE), ruleset=None, backend=None, clients=clients,
                 connections=Connections(connections={n: c.connection for n, c in clients.items()}),
                 store=client.store, keys=Keys(client.key_prefix))
    return StepContext(rt, client, key, client.connection.name)


def run(ctx: StepContext, entity: Entity, **over):
    return STEPS["make_document"].run(ctx, entity=entity, **{**ARGS, **over})


@pytest.fixture
def amo(fake_amo, redis_db):
    fake_amo.clock = lambda: datetime.now(timezone.utc).timestamp()
    conn = Connection(name="agency-amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "T"},
                      webhook_secret="s")
    fake_amo.add_lead(json.loads((PAYLOADS / "amocrm/api_lead_get.json").read_text()))
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


LEAD = Entity("lead", "31926520")


# --- amoCRM: drive upload session, file link, attachment note ---------------------------------

@NEEDS_SOFFICE
def test_amocrm_gets_the_pdf_on_its_drive_linked_and_in_a_note(amo, fake_amo):
    result = run(context_for(amo), LEAD, pdf=True)
    assert result["number"] == "2027/001" and result["file"] == "Рахунок 2027-001.pdf"
    [session] = fake_amo.received("POST", "/drive/v1.0/sessions")
    assert session.body == {"file_name": "Рахунок 2027-001.pdf", "file_size": result["size"],
                            "content_type": "application/pdf"}
    parts = fake_amo.received("POST", r"/drive/upload/[0-9a-f]+/\d+")
    assert len(parts) == -(-result["size"] // fake_amo.part_size) > 1     # in parts of max_part_size
    assert all(p.headers["Authorization"] == "Bearer T" and p.headers["Content-Type"] == "application/pdf" for p in parts)
    [(uuid, pdf)] = fake_amo.drive_contents.items()
    text = " ".join("\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "Рахунок на оплату № 2027/001 від «05» березня 2027 р." in text and WORDS in text
    assert [link["file_uuid"] for link in fake_amo.file_links[("leads", 31926520)]] == [uuid]
    [note] = fake_amo.notes[("leads", 31926520)]
    assert note["note_type"] == "attachment" and note["id"] == result["attached"]
    assert note["params"] == {"file_uuid": uuid, "file_name": "Рахунок 2027-001.pdf",
                              "version_uuid": fake_amo.drive_files[uuid]["version_uuid"]}
    assert amo.list_files(LEAD)[0]["name"] == "Рахунок 2027-001"   # as the lead's Files tab lists it


def test_a_retried_step_keeps_its_number_and_does_not_upload_twice(amo, fake_amo):
    fake_amo.fail(r"/api/v4/leads/notes", 429, {"title": "Too Many Requests", "status": 429}, times=10)
    ctx = context_for(amo)
    with pytest.raises(RetryableApiError):
        run(ctx, LEAD)
    fake_amo.faults.clear()
    another = run(context_for(amo, key="ev-2|rule-1|0"), Entity("lead", "31926521"))   # meanwhile: the next number
    result = run(ctx, LEAD)   # the job's next try: same key
    assert result["number"] == "2027/001" and another["number"] == "2027/002"
    assert len(fake_amo.received("POST", "/drive/v1.0/sessions")) == 2      # one per document
    assert len(fake_amo.notes[("leads", 31926520)]) == 1
    again = run(ctx, LEAD)   # and once more (a re-run after a crash): nothing new
    assert again == result and len(fake_amo.received("POST", "/drive/v1.0/sessions")) == 2


def test_an_upload_url_off_the_drive_is_refused(amo, fake_amo):
    fake_amo.routes.insert(0, ("POST", __import__("re").compile(r"/drive/v1.0/sessions"), lambda c, m: (
        200, {"upload_url": "http://evil.example/steal", "max_part_size": 10}, {})))
    with pytest.raises(Exception, match="refused to send a part to 'evil.example'"):
        amo.upload_file(b"x" * 20, "a.pdf", "application/pdf")


# --- Bitrix24: a timeline comment carrying the file --------------------------------------------

def test_bitrix24_gets_a_timeline_comment_with_the_file(redis_db):
    fake = FakeBitrix24().start()
    try:
        fake.add("deal", {"ID": "410", "TITLE": "SMM", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "ASSIGNED_BY_ID": "1"})
        conn = Connection(name="b24", type="bitrix24", base_url=fake.base_url, credentials={"webhook": fake.code})
        client = bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
        result = run(context_for(client), Entity("deal", "410"))
        [comment] = fake.comments
        assert comment["ENTITY_ID"] == 410 and comment["ENTITY_TYPE"] == "deal"
        assert comment["COMMENT"] == "Рахунок № 2027/001" and result["attached"] == comment["ID"]
        [(file_id, file)] = comment["FILES"].items()
        assert file["name"] == "Рахунок 2027-001.docx"
        assert WORDS in render.docx_text(file["content"])
        with pytest.raises(Exception, match="not to tasks"):
            client.attach_file(Entity("task", "5"), "a.pdf", "x", content=b"%PDF")
    finally:
        fake.stop()


# --- product rows read from the CRM (items: crm) ------------------------------------------------

def test_amocrm_rows_are_the_products_linked_to_the_lead(amo, fake_amo):
    smm = fake_amo.add_catalog_element(4521, "Ведення соцмереж (місяць)", price=18000)
    ads = fake_amo.add_catalog_element(4521, "Налаштування реклами, год", price="750.50")
    fake_amo.add_catalog_element(4521, "Логотип", price=9000)                   # in the list, not on the lead
    fake_amo.link_product(31926520, smm, quantity=1)
    fake_amo.link_product(31926520, ads, quantity=2.5)
    result = run(context_for(amo), LEAD, items=[], items_from_crm=True, vat=20, attach=False)
    links = fake_amo.received("GET", r"/api/v4/leads/31926520/links")
    assert links[0].query["filter[to_entity_type]"] == ["catalog_elements"]
    [elements] = fake_amo.received("GET", r"/api/v4/catalogs/4521/elements")
    assert sorted(elements.query["filter[id][]"]) == sorted([str(smm["id"]), str(ads["id"])])
    assert result["total"] == "19\u00a0876,25"      # 18 000 + 2,5 × 750,50
    assert result["number"] == "2027/001"


def test_amocrm_rows_fill_the_invoice_with_vat_and_words(amo, fake_amo):
    smm = fake_amo.add_catalog_element(4521, "Ведення соцмереж (місяць)", price=18000)
    fake_amo.link_product(31926520, smm, quantity=2)
    ctx = context_for(amo)
    result = run(ctx, LEAD, items=[], items_from_crm=True, vat=20, attach=True)
    [(uuid, content)] = fake_amo.drive_contents.items()
    text = render.docx_text(content)
    assert "Ведення соцмереж (місяць)" in text and "18\u00a0000,00" in text and "36\u00a0000,00" in text
    assert "Разом без ПДВ: 30\u00a0000,00 грн" in text and "У тому числі ПДВ 20 %: 6\u00a0000,00 грн" in text
    assert "Тридцять шість тисяч гривень 00 копійок, у тому числі ПДВ: шість тисяч гривень 00 копійок" in text
    assert result["total"] == "36\u00a0000,00"


def test_bitrix24_rows_carry_their_vat_and_the_document_follows_them(redis_db):
    fake = FakeBitrix24().start()
    try:
        fake.add("deal", {"ID": "410", "TITLE": "SMM", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "ASSIGNED_BY_ID": "1"})
        fake.add_product_row(410, "Ведення соцмереж", 20000, tax_rate=20, tax_included=False, measure="послуга")
        fake.add_product_row(410, "Таргетована реклама", 500, quantity=3, tax_rate=20, tax_included=False,
                             measure="год", discount_rate=10)
        conn = Connection(name="b24", type="bitrix24", base_url=fake.base_url, credentials={"webhook": fake.code})
        client = bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
        result = run(context_for(client), Entity("deal", "410"), items=[], items_from_crm=True, vat=None,
                     pdf=render.soffice() is not None)
        [call] = fake.method_calls("crm.deal.productrows.get")
        assert call.body == {"id": 410}
        [file] = fake.comments[0]["FILES"].values()
        if file["name"].endswith(".pdf"):   # the PDF's own text, as pypdf reads it
            text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(file["content"])).pages)
        else:
            text = render.docx_text(file["content"])
        # on top: rows at PRICE_EXCLUSIVE (the discount in), VAT added: 20 000 + 3 × 450 = 21 350; VAT 4 270
        assert "Таргетована реклама" in text and "450,00" in text and "1\u00a0350,00" in text and "год" in text
        assert "Разом без ПДВ: 21\u00a0350,00 грн" in text and "ПДВ 20 %: 4\u00a0270,00 грн" in text
        assert result["total"] == "25\u00a0620,00"
        assert "Двадцять п'ять тисяч шістсот двадцять гривень 00 копійок" in text
    finally:
        fake.stop()


def test_bitrix24_rows_in_the_documented_shape_and_mixed_vat_refused(redis_db):
    fake = FakeBitrix24().start()
    try:
        fake.add("deal", {"ID": "5", "TITLE": "Товари", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "ASSIGNED_BY_ID": "1"})
        fake.product_rows[5] = json.loads((PAYLOADS / "bitrix24/api_deal_productrows_get.json").read_text())["result"]
        conn = Connection(name="b24", type="bitrix24", base_url=fake.base_url, credentials={"webhook": fake.code})
        client = bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
        assert client.product_rows(Entity("deal", "5")) == [
            {"name": "Товар #2", "quantity": 1, "unit": "шт", "price": 899.1, "vat_rate": None, "vat_included": True},
            {"name": "Товар #1", "quantity": 1, "unit": "шт", "price": 100, "vat_rate": None, "vat_included": True}]
        fake.add("deal", {"ID": "6", "TITLE": "Змішано", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "ASSIGNED_BY_ID": "1"})
        fake.add_product_row(6, "Книга", 300, tax_rate=7)
        fake.add_product_row(6, "Послуга", 1200, tax_rate=20)
        with pytest.raises(PermanentApiError, match=r"different VAT \(20.00 %, 7.00 %\).*one VAT rate"):
            run(context_for(client, key="ev-2|rule-1|0"), Entity("deal", "6"), items=[], items_from_crm=True)
        assert not fake.comments
    finally:
        fake.stop()


def test_planfix_has_no_product_rows_and_says_so(redis_db):
    fake = FakePlanfix().start()
    try:
        conn = Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest", credentials={"token": "PF"})
        client = planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
        with pytest.raises(PermanentApiError, match="Planfix's REST API has no product rows.*list the rows in items:"):
            run(context_for(client), Entity("task", "77"), items=[], items_from_crm=True)
    finally:
        fake.stop()


# --- Planfix: the file uploaded, then a comment naming it ----------------------------------------

def test_planfix_gets_the_file_and_a_comment_naming_it(redis_db):
    fake = FakePlanfix().start()
    try:
        fake.add("task", json.loads((PAYLOADS / "planfix/api_task_get.json").read_text())["task"])
        conn = Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest", credentials={"token": "PF"},
                          webhook_secret="s")
        client = planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
        task = next(iter(fake.tasks))
        result = run(context_for(client), Entity("task", str(task)))
        [(file_id, file)] = fake.files.items()
        assert file["name"] == "Рахунок 2027-001.docx" and WORDS in render.docx_text(file["content"])
        [comment] = fake.comments[("task", task)]
        assert comment["files"] == [{"id": file_id}] and "Рахунок № 2027/001" in comment["description"]
        assert result["attached"] == comment["id"]
    finally:
        fake.stop()


# --- Telegram: sent to the client on request -----------------------------------------------------

def test_the_document_is_sent_by_telegram_with_the_steps_sending_mark(amo, fake_amo):
    fake_tg = FakeTelegram(TG_TOKEN).start()
    try:
        bot = telegram.Client(Connection(name="bot", type="telegram", base_url=fake_tg.url,
                                         credentials={"token": TG_TOKEN}, webhook_secret="s"))
        marks = []
        amo.sending = lambda: marks.append("sent")
        result = run(context_for(amo, bot), LEAD, attach=False,
                     send={"connection": "bot", "chat": "777", "caption": "Ваш рахунок № {number}"})
        [upload] = fake_tg.uploads
        assert upload["method"] == "sendDocument" and upload["filename"] == "Рахунок 2027-001.docx"
        assert WORDS in render.docx_text(upload["content"])
        [fields] = fake_tg.multipart_fields
        assert fields["caption"] == "Ваш рахунок № 2027/001" and str(fields["chat_id"]) == "777"
        assert result["sent"] and marks == ["sent"] and bot.sending is None
        assert not fake_amo.received("POST", "/drive/v1.0/sessions")   # attach: false
    finally:
        fake_tg.stop()


def test_the_document_is_sent_by_email_attached_once(amo, fake_amo):
    from connectors import email as mail
    from tests.fakes_telephony import FakeSmtp
    smtp = FakeSmtp().start()
    try:
        mailer = mail.Client(Connection(name="agency-mail", type="email", credentials={"user": smtp.user,
                             "password": smtp.password}, options={"host": "127.0.0.1", "port": smtp.port,
                             "security": "none", "from": "Агенція «Приклад» <hello@agency.example>"}))
        marks = []
        amo.sending = lambda: marks.append("sent")
        send = {"connection": "agency-mail", "to": "Ромашка <buh@romashka.example>",
                "subject": "Рахунок № {number}", "text": "Добрий день! Рахунок № {number} у вкладенні."}
        ctx = context_for(amo, mailer)
        result = run(ctx, LEAD, attach=False, send=send)
        again = run(context_for(amo, mailer), LEAD, attach=False, send=send)   # the step retried: not sent twice
        [got] = smtp.wait_for(1)
        msg = got["message"]
        assert got["to"] == ["buh@romashka.example"] and str(msg["Subject"]) == "Рахунок № 2027/001"
        assert FakeSmtp.text_of(msg).strip() == "Добрий день! Рахунок № 2027/001 у вкладенні."
        [part] = list(msg.iter_attachments())
        assert part.get_filename() == "Рахунок 2027-001.docx"
        assert part.get_content_type() == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        assert WORDS in render.docx_text(part.get_content())
        assert msg["To"].addresses[0].display_name == "Ромашка" and result["sent"]["message_id"] == msg["Message-ID"]
        assert again["number"] == "2027/001" and again["sent"] == result["sent"]
        assert marks == ["sent"] and mailer.sending is None and len(smtp.messages) == 1
    finally:
        smtp.stop()


# --- the rule plans it; the executor runs it once --------------------------------------------------

RULE = """
rules:
  - name: Invoice on approval
    on: {event: stage.changed, stage: "Proposal approval"}
    do:
      - make_document:
          template: invoice-uk
          vat: 20
          items:
            - {name: "Послуги SMM: {{ entity.name }}", unit: послуга, price: "{{ entity.price }}"}
          client: {name: "{{ entity.fields['Юр. назва'] }}", code: "{{ entity.fields['ЄДРПОУ'] }}", address: "м. Львів"}
          company: {name: "ТОВ «Агенція Приклад»", code: "12345678", iban: "UA213223130000026007233566001",
                    bank: "АТ «Приклад Банк»", address: "м. Київ", tax_status: "Платник ПДВ", signer: "О. Коваленко"}
          values: {basis: "Договір № 7"}
          file_name: "Рахунок {number}"
          pdf: false
"""
CONNECTIONS = """
calendars:
  office: {timezone: Europe/Kyiv, country: UA, hours: {mon-fri: "10:00-19:00"}}
connections:
  agency-amo:
    type: amocrm
    webhook_secret: ${DOCS_TEST_SECRET}
    calendar: office
"""
ENV = {"DOCS_TEST_SECRET": "s3cret"}
ENTITY = {"id": "31926520", "type": "lead", "name": "SMM березень", "price": 25501,
          "fields": {"Юр. назва": "ТОВ «Ромашка»", "ЄДРПОУ": "87654321"}, "stage": {"id": "10216996", "name": "Proposal approval"}}


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (tmp_path / "rules" / "documents.yaml").write_text(RULE, encoding="utf-8")
    shutil.copytree(TEMPLATES, tmp_path / "templates" / "documents")
    return tmp_path


def planned(config_dir):
    _, ruleset = load_configuration(Settings(config_dir=config_dir, environ=ENV))
    event = Event(id="agency-amo:ev-1", connection="agency-amo", source="amocrm", kind="stage.changed",
                  entity=Entity("lead", "31926520"), data={"stage": ENTITY["stage"]}, raw={},
                  occurred_at="2027-03-04T22:30:00+00:00")   # already 5 March in Kyiv
    result = plan(event, ENTITY, ruleset, datetime(2027, 3, 5, 9, tzinfo=timezone.utc), MODULES)
    assert not result.errors, result.errors
    [action] = result.actions
    return event, action


def test_the_rule_plans_the_document_with_its_values_rendered(config_dir):
    _, action = planned(config_dir)
    assert action.method == "make_document" and action.connection == "agency-amo"
    args = action.args
    assert args["date"] == "2027-03-05" and args["series"] == "invoice-uk" and args["template"] == "invoice-uk.docx"
    assert args["items"] == [{"name": "Послуги SMM: SMM березень", "quantity": 1, "unit": "послуга", "price": "25501"}]
    assert args["client"]["name"] == "ТОВ «Ромашка»" and args["record"]["fields"]["ЄДРПОУ"] == "87654321"
    json.dumps(args)   # kept in Redis and the dead letters as JSON


ROWS_IN_RULE = """          items:
            - {name: "Послуги SMM: {{ entity.name }}", unit: послуга, price: "{{ entity.price }}"}"""


def test_items_crm_is_planned_as_rows_read_by_the_step_and_a_wrong_word_refused(config_dir):
    rules = config_dir / "rules" / "documents.yaml"
    rules.write_text(RULE.replace(ROWS_IN_RULE, "          items: crm"), encoding="utf-8")
    _, action = planned(config_dir)
    assert action.args["items"] == [] and action.args["items_from_crm"] is True
    rules.write_text(RULE.replace(ROWS_IN_RULE, "          items: cmr"), encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    [error] = caught.value.errors
    assert error.line == 9 and error.message.endswith('a list of rows {name, quantity, unit, price}, or "crm", found \'cmr\'')


def test_the_executor_makes_one_document_for_a_repeated_event(config_dir, amo, fake_amo, redis_db):
    event, action = planned(config_dir)
    settings = Settings(config_dir=config_dir, environ=ENV)
    rt = Runtime(settings=settings, connections=Connections(connections={"agency-amo": amo.connection}),
                 ruleset=None, store=redis_db, keys=Keys("crmbridge-test:"), backend=None, clients={"agency-amo": amo})
    assert execute.execute(rt, event, action) is True
    assert execute.execute(rt, event, action) is False     # the same event again: skipped, already done
    [note] = fake_amo.notes[("leads", 31926520)]
    [(uuid, content)] = fake_amo.drive_contents.items()
    text = render.docx_text(content)
    assert "Рахунок на оплату № 2027/001 від «05» березня 2027 р." in text and "ТОВ «Ромашка»" in text
    assert "Двадцять п'ять тисяч п'ятсот одна гривня 00 копійок" in text
    done = json.loads(redis_db.get(rt.keys("done", action.key)))
    assert done["number"] == "2027/001" and done["attached"] == note["id"]


BUTTON_RULE = """
rules:
  - name: Invoice by e-mail on the manager's button
    on: {event: button.pressed, connection: agency-bot, button: send_invoice}
    do:
      - make_document:
          connection: agency-amo
          template: invoice-uk
          items: crm
          vat: 20
          pdf: false
          send:
            connection: agency-mail
            to: "{{ entity.fields['E-mail'] }}"
            subject: "Рахунок № {number}"
            text: "Добрий день! Рахунок у вкладенні."
"""


def test_a_button_press_plans_the_document_sent_by_email_to_the_records_address(config_dir):
    (config_dir / "connections.yaml").write_text(CONNECTIONS + """  agency-bot:
    type: telegram
    webhook_secret: ${DOCS_TEST_SECRET}
  agency-mail:
    type: email
    options: {host: 127.0.0.1, from: "Агенція <hello@agency.example>"}
""", encoding="utf-8")
    (config_dir / "rules" / "documents.yaml").write_text(BUTTON_RULE, encoding="utf-8")
    _, ruleset = load_configuration(Settings(config_dir=config_dir, environ=ENV))
    event = Event(id="agency-bot:cb-1", connection="agency-bot", source="telegram", kind="button.pressed",
                  entity=Entity("lead", "31926520"), data={"button": "send_invoice"}, raw={},
                  occurred_at="2027-03-05T09:00:00+00:00")
    entity = {**ENTITY, "fields": {**ENTITY["fields"], "E-mail": " buh@romashka.example "}}
    result = plan(event, entity, ruleset, datetime(2027, 3, 5, 9, tzinfo=timezone.utc), MODULES)
    assert not result.errors, result.errors
    [action] = result.actions
    assert action.method == "make_document" and action.connection == "agency-amo"
    assert action.args["items_from_crm"] is True and action.args["send"] == {
        "connection": "agency-mail", "to": "buh@romashka.example", "subject": "Рахунок № {number}",
        "text": "Добрий день! Рахунок у вкладенні."}


# --- start-up checks and the preview command -------------------------------------------------------

def test_start_up_reports_a_missing_template_and_an_unknown_value(config_dir):
    rules = config_dir / "rules" / "documents.yaml"
    rules.write_text(RULE.replace("template: invoice-uk", "template: invoce-uk"), encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    [error] = caught.value.errors
    assert error.line == 6 and "make_document → template: expected a file templates/documents/invoce-uk.docx" in error.message
    assert 'did you mean "invoice-uk"?' in error.message
    from docx import Document
    doc = Document(str(config_dir / "templates" / "documents" / "invoice-uk.docx"))
    doc.add_paragraph("Підпис: {{ signer }}")
    doc.save(str(config_dir / "templates" / "documents" / "invoice-uk.docx"))
    rules.write_text(RULE, encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    [error] = caught.value.errors
    assert error.path.endswith("templates/documents/invoice-uk.docx") and error.line > 10
    assert f"paragraph {error.line}: {{{{ signer }}}} is not a value documents make" in error.message


def test_start_up_says_plainly_when_pdf_is_unavailable(config_dir, monkeypatch, caplog):
    (config_dir / "rules" / "documents.yaml").write_text(RULE.replace("pdf: false", "pdf: true"), encoding="utf-8")
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    assert "make_document: PDF conversion is unavailable: LibreOffice is not installed" in caplog.text


def test_render_document_previews_without_a_crm(config_dir, tmp_path, monkeypatch):
    from cli import cli
    monkeypatch.setenv("DOCS_TEST_SECRET", "s3cret")
    record = tmp_path / "deal.json"
    record.write_text(json.dumps(ENTITY, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "preview.docx"
    result = CliRunner().invoke(cli, ["--config", str(config_dir), "render-document", "invoice-uk", "--record",
                                      str(record), "--out", str(out), "--number", "ЗРАЗОК"])
    assert result.exit_code == 0, result.output
    assert "Рахунок на оплату № ЗРАЗОК від" in result.output and "ТОВ «Ромашка»" in result.output
    assert "Двадцять п'ять тисяч п'ятсот одна гривня 00 копійок" in result.output
    assert WORDS in render.docx_text(out.read_bytes())
    missing = CliRunner().invoke(cli, ["--config", str(config_dir), "render-document", "act-uk", "--record", str(record)])
    assert missing.exit_code != 0 and "no template templates/documents/act-uk.docx" in missing.output


def test_start_up_refuses_sending_through_a_connection_that_cannot(config_dir):
    rules = config_dir / "rules" / "documents.yaml"
    rules.write_text(RULE.replace("pdf: false", "pdf: false\n          send: {connection: agency-amo, chat: '1'}"),
                     encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    [error] = caught.value.errors
    assert error.line == 17 and error.message.endswith(
        "make_document → send → connection: expected a connection that sends documents (telegram or email), "
        "found 'agency-amo' (amocrm)")


def test_start_up_wants_an_address_for_an_email_connection(config_dir):
    (config_dir / "connections.yaml").write_text(CONNECTIONS + """  agency-mail:
    type: email
    options: {host: 127.0.0.1, from: "Агенція <hello@agency.example>"}
""", encoding="utf-8")
    rules = config_dir / "rules" / "documents.yaml"
    rules.write_text(RULE.replace("pdf: false", "pdf: false\n          send: {connection: agency-mail, chat: '1'}"),
                     encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    [error] = caught.value.errors
    assert error.line == 17 and error.message.endswith(
        "make_document → send: expected `to:` for 'agency-mail' (email), found chat")


def test_start_up_refuses_items_crm_for_planfix(config_dir):
    (config_dir / "connections.yaml").write_text(CONNECTIONS + """  agency-pf:
    type: planfix
    webhook_secret: ${DOCS_TEST_SECRET}
""", encoding="utf-8")
    rules = config_dir / "rules" / "documents.yaml"
    rules.write_text(RULE.replace(ROWS_IN_RULE, "          items: crm\n          connection: agency-pf"),
                     encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(Settings(config_dir=config_dir, environ=ENV))
    [error] = caught.value.errors
    assert error.line == 9 and "make_document → items: expected a list of rows for planfix (connection " \
        "'agency-pf'), found crm: Planfix's REST API has no product rows" in error.message


def test_record_only_reads_no_rows_and_still_makes_the_document(redis_db):
    calls = []
    conn = Connection(name="agency-amo", type="amocrm", base_url="https://agency.amocrm.ru", webhook_secret="s")
    client = amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:", recorder=lambda *a: calls.append(a))
    result = run(context_for(client), LEAD, items=[], items_from_crm=True, attach=False)
    assert result["number"] == "2027/001" and result["total"] == "0,00"
    assert calls[0][:2] == ("GET", "https://agency.amocrm.ru/api/v4/leads/31926520/links")


def test_amocrm_rows_from_the_documented_answers(amo, fake_amo):
    """entity-links-api's sample links (a list element, two contacts, a company) and catalogs-api's
    sample element (its "Цена", field_code PRICE, is "12"): the docs' two samples name different
    elements, so the element takes the linked id."""
    links = json.loads((PAYLOADS / "amocrm/api_lead_links_list.json").read_text())["_embedded"]["links"]
    [element] = [e for e in json.loads((PAYLOADS / "amocrm/api_catalog_elements_list.json").read_text())
                 ["_embedded"]["elements"] if e["id"] == 525439]
    fake_amo.product_links[7593303] = [link for link in links if link["to_entity_type"] == "catalog_elements"]
    fake_amo.catalog_elements[4521] = [{**element, "id": 597393}]
    assert amo.product_rows(Entity("lead", "7593303")) == [{"name": "Элемент", "quantity": 1, "unit": "", "price": "12"}]
