"""Documents without a vendor: amounts and dates in words, rows and VAT, the shipped templates
filled and converted to PDF (its text read back), the start-up check of templates, numbering."""
from __future__ import annotations

import io
import os
import stat
import threading
import time
from decimal import Decimal

import pytest
from docx import Document
from pypdf import PdfReader

from documents import numbering, render
from documents.words import amount_in_words, cardinal, date_in_words, money
from queueing import Keys
from tests.conftest import ROOT

TEMPLATES = ROOT / "config" / "examples" / "marketing-agency" / "templates" / "documents"
NEEDS_SOFFICE = pytest.mark.skipif(render.soffice() is None, reason="LibreOffice (soffice) is not installed; "
                                   ".ci/run installs libreoffice-writer-nogui")
COMPANY = {"name": "ТОВ «Агенція Приклад»", "code": "12345678", "iban": "UA213223130000026007233566001",
           "bank": "АТ «Приклад Банк»", "address": "м. Київ, вул. Хрещатик, 1", "tax_status": "Платник ПДВ",
           "signer": "О. Коваленко", "city": "Киев"}
CLIENT = {"name": "ФОП Петренко І. І. & Партнери <Львів>", "code": "3012345678", "address": "м. Львів",
          "signer": "И. Петренко"}


# --- words -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, uk, ru", [
    ("1", "Одна гривня 00 копійок", "Одна гривна 00 копеек"),
    ("2.05", "Дві гривні 05 копійок", "Две гривны 05 копеек"),
    ("5.01", "П'ять гривень 01 копійка", "Пять гривен 01 копейка"),
    ("11.12", "Одинадцять гривень 12 копійок", "Одиннадцать гривен 12 копеек"),
    ("21.22", "Двадцять одна гривня 22 копійки", "Двадцать одна гривна 22 копейки"),
    ("1000000.01", "Один мільйон гривень 01 копійка", "Один миллион гривен 01 копейка"),
    ("2001002.5", "Два мільйони одна тисяча дві гривні 50 копійок", "Два миллиона одна тысяча две гривны 50 копеек"),
    ("12 345,67", "Дванадцять тисяч триста сорок п'ять гривень 67 копійок",
     "Двенадцать тысяч триста сорок пять гривен 67 копеек"),
])
def test_hryvnias_in_words_agree_in_gender_and_number(value, uk, ru):
    assert amount_in_words(value, "uk", "UAH") == uk
    assert amount_in_words(value, "ru", "UAH") == ru


def test_rubles_are_masculine_and_kopecks_feminine():
    assert amount_in_words("1.01", "ru", "RUB") == "Один рубль 01 копейка"
    assert amount_in_words("22.02", "ru", "RUB") == "Двадцать два рубля 02 копейки"
    assert amount_in_words("1000000", "ru", "RUB") == "Один миллион рублей 00 копеек"
    assert amount_in_words("3", "uk", "RUB") == "Три рублі 00 копійок"


def test_an_integer_is_whole_hryvnias_not_kopecks():
    # num2words' own to='currency' reads 1 as one kopeck; documents never do
    assert amount_in_words(1, "uk") == "Одна гривня 00 копійок"
    assert amount_in_words(Decimal("0.5"), "uk", capital=False) == "нуль гривень 50 копійок"


def test_millions_stay_masculine_when_the_currency_is_feminine():
    assert cardinal(1_001_001, "ru", "f") == "один миллион одна тысяча одна"
    assert cardinal(2_000_000, "uk", "f") == "два мільйони"


def test_figures_and_dates():
    assert money("1234567.891") == "1\u00a0234\u00a0567,89"
    assert money(0) == "0,00"
    assert date_in_words("2027-03-05", "uk") == "«05» березня 2027 р."
    assert date_in_words("05.12.2027", "ru", quoted=False) == "5 декабря 2027 года"
    with pytest.raises(ValueError, match="currency 'GBP'"):
        amount_in_words(1, "uk", "GBP")


# --- rows and VAT ----------------------------------------------------------------------------

ROWS = [{"name": "Ведення соцмереж", "quantity": 1, "unit": "послуга", "price": "24000"},
        {"name": "Налаштування реклами", "quantity": "2", "unit": "год", "price": "750,50"}]


def test_vat_included_in_the_prices():
    found = render.compute(ROWS, 20, True, "uk", "UAH")
    assert [r["sum"] for r in found["items"]] == ["24\u00a0000,00", "1\u00a0501,00"]
    assert found["total"] == "25\u00a0501,00" and found["vat"] == "4\u00a0250,17" and found["subtotal"] == "21\u00a0250,83"
    assert found["vat_line"] == "У тому числі ПДВ 20 %: 4\u00a0250,17 грн"
    assert found["total_words"] == "Двадцять п'ять тисяч п'ятсот одна гривня 00 копійок"
    assert found["vat_words"] == "чотири тисячі двісті п'ятдесят гривень 17 копійок"


def test_vat_added_on_top_and_no_vat():
    added = render.compute(ROWS, "20", False, "ru", "UAH")
    assert added["subtotal"] == "25\u00a0501,00" and added["vat"] == "5\u00a0100,20" and added["total"] == "30\u00a0601,20"
    assert added["vat_line"] == "НДС 20 %: 5\u00a0100,20 грн"
    none = render.compute(ROWS, None, True, "uk", "UAH")
    assert none["vat_line"] == "Без ПДВ" and none["total"] == none["subtotal"] and none["vat_rate"] is None


def test_a_row_without_a_price_is_refused_with_its_place():
    with pytest.raises(render.DocumentError, match=r"items\[1\] \(Аудит\): expected an amount"):
        render.compute([ROWS[0], {"name": "Аудит", "price": ""}])


# --- the shipped templates -------------------------------------------------------------------

def invoice_values(**over):
    return render.context(**{"number": "2027/015", "date": "2027-03-05", "language": "uk", "currency": "UAH",
                             "items": ROWS, "vat_rate": 20, "company": COMPANY, "client": CLIENT,
                             "values": {"basis": "Договір № 7 від 01.03.2027"}, "entity": {"name": "SMM березень"},
                             **over})


def test_the_shipped_templates_use_only_known_values():
    assert sorted(p.name for p in TEMPLATES.glob("*.docx")) == ["act-ru.docx", "contract-ru.docx", "invoice-ru.docx",
                                                                "invoice-uk.docx"]
    for path in TEMPLATES.glob("*.docx"):
        assert render.check_template(path) == [], path


def test_the_invoice_is_filled_with_words_figures_and_escaped_names():
    text = render.docx_text(render.render_docx(TEMPLATES / "invoice-uk.docx", invoice_values()))
    assert "Рахунок на оплату № 2027/015 від «05» березня 2027 р." in text
    assert "Сума прописом: Двадцять п'ять тисяч п'ятсот одна гривня 00 копійок, у тому числі ПДВ: " \
           "чотири тисячі двісті п'ятдесят гривень 17 копійок." in text
    assert "Покупець: ФОП Петренко І. І. & Партнери <Львів>, код ЄДРПОУ 3012345678" in text   # escaped, shown as written
    assert "Разом без ПДВ: 21\u00a0250,83 грн" in text and "У тому числі ПДВ 20 %: 4\u00a0250,17 грн" in text
    assert "Налаштування реклами\nгод\n2\n750,50\n1\u00a0501,00" in text   # a table row per item
    assert "{{" not in text and "{%" not in text


def test_without_vat_the_invoice_says_so():
    text = render.docx_text(render.render_docx(TEMPLATES / "invoice-uk.docx", invoice_values(vat_rate=None)))
    assert "Без ПДВ" in text and "Разом без ПДВ" not in text and "у тому числі ПДВ" not in text


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


@NEEDS_SOFFICE
def test_the_invoice_as_pdf_reads_back_its_number_fields_and_words(tmp_path):
    pdf = render.to_pdf(render.render_docx(TEMPLATES / "invoice-uk.docx", invoice_values()), "Рахунок 2027-015.docx")
    assert pdf.startswith(b"%PDF")
    text = " ".join(pdf_text(pdf).split())
    assert "Рахунок на оплату № 2027/015 від «05» березня 2027 р." in text
    assert "Двадцять п'ять тисяч п'ятсот одна гривня 00 копійок" in text
    assert "ТОВ «Агенція Приклад»" in text and "UA213223130000026007233566001" in text
    assert "25 501,00" in text.replace("\u00a0", " ")


@NEEDS_SOFFICE
def test_the_russian_act_as_pdf():
    values = render.context(number="2027/003", date="2027-12-31", language="ru", currency="RUB",
                            items=[{"name": "Разработка лендинга", "quantity": 1, "unit": "усл.", "price": "121000"}],
                            company=COMPANY, client=CLIENT, entity={"name": "Лендинг для «Ромашки»"})
    text = " ".join(pdf_text(render.to_pdf(render.render_docx(TEMPLATES / "act-ru.docx", values))).split())
    assert "Акт № 2027/003" in text and "«31» декабря 2027 г." in text
    assert "Сто двадцать одна тысяча рублей 00 копеек" in text and "Без НДС" in text
    assert "по сделке «Лендинг для «Ромашки»»" in text


def test_no_libreoffice_is_said_plainly(monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(render.ConversionUnavailable, match="PDF conversion is unavailable: LibreOffice is not installed"):
        render.to_pdf(b"PK")


def test_a_conversion_that_hangs_is_killed_at_its_timeout(tmp_path, monkeypatch):
    fake = tmp_path / "soffice"
    fake.write_text("#!/bin/sh\nsleep 30 & wait\n")   # a child too: the whole group goes
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    with pytest.raises(render.ConversionFailed, match="did not finish in 1 s"):
        render.to_pdf(b"PK", timeout=1)
    assert time.monotonic() - started < 5


def test_a_template_naming_an_unknown_value_is_reported_at_its_paragraph(tmp_path):
    doc = Document()
    doc.add_paragraph("Рахунок № {{ number }}")
    doc.add_paragraph("Клієнт: {{ client.name }}")
    doc.add_paragraph("Разом: {{ totl }} грн")
    doc.save(str(tmp_path / "bad.docx"))
    [(paragraph, message)] = render.check_template(tmp_path / "bad.docx")
    assert paragraph == 3 and message.startswith('paragraph 3: {{ totl }} is not a value documents make; did you mean "total"?')
    (tmp_path / "broken.docx").write_bytes(b"not a zip")
    assert render.check_template(tmp_path / "broken.docx")[0][1].startswith("not a DOCX file")


# --- numbering -------------------------------------------------------------------------------

def test_a_number_is_taken_once_per_document(redis_db):
    keys = Keys("crmbridge-test:")
    assert numbering.allocate(redis_db, keys, "invoice", 2027, "ev1|r|0") == 1
    assert numbering.allocate(redis_db, keys, "invoice", 2027, "ev2|r|0") == 2
    assert numbering.allocate(redis_db, keys, "invoice", 2027, "ev1|r|0") == 1      # a retry: the same
    assert numbering.allocate(redis_db, keys, "act", 2027, "ev1|r|1") == 1          # another series
    assert numbering.allocate(redis_db, keys, "invoice", 2028, "ev3|r|0") == 1      # a new year
    assert numbering.allocate(redis_db, keys, "invoice", 2027, "ev4|r|0", start=15) == 15   # carried on
    assert numbering.allocate(redis_db, keys, "invoice", 2027, "ev5|r|0", start=15) == 16
    assert numbering.peek(redis_db, keys, "invoice", 2027) == 16
    assert redis_db.ttl(keys("docnum", "invoice", "2027")) == -1                      # kept: no TTL
    assert numbering.formatted(15, 2027) == "2027/015" and numbering.formatted(7, 2027, "{yy}-{seq}") == "27-7"


def test_workers_at_once_take_distinct_numbers(redis_db):
    keys, got = Keys("crmbridge-test:"), []

    def take(i):
        for attempt in range(2):   # each document asks twice, as a retried job would
            got.append((i, numbering.allocate(redis_db, keys, "invoice", 2027, f"ev{i}|r|0")))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    per_doc = {}
    for i, n in got:
        per_doc.setdefault(i, set()).add(n)
    assert all(len(v) == 1 for v in per_doc.values())
    assert sorted(v.pop() for v in per_doc.values()) == list(range(1, 21))


def test_vat_on_top_puts_the_rows_sum_under_the_table_then_the_vat_then_the_total():
    from documents.examples import SAMPLES
    text = render.docx_text(render.render_docx(TEMPLATES / "invoice-ru.docx",
                                               render.context(**SAMPLES["invoice-ru.docx"]))).replace("\u00a0", " ")
    lines = [line for line in text.splitlines() if line.startswith(("Итого", "НДС", "Всего к оплате"))]
    assert lines == ["Итого: 125 999,98 руб.", "НДС 20 %: 25 200,00 руб.", "Всего к оплате: 151 199,98 руб."]
    assert ("Сто пятьдесят одна тысяча сто девяносто девять рублей 98 копеек, в том числе НДС: двадцать пять тысяч "
            "двести рублей 00 копеек.") in text
    assert "Руководитель ____________ Соколова М. А." in text   # the signer as signed, not «в лице» form


def test_the_contract_names_both_sides_representatives_and_signers():
    from documents.examples import SAMPLES
    text = render.docx_text(render.render_docx(TEMPLATES / "contract-ru.docx",
                                               render.context(**SAMPLES["contract-ru.docx"]))).replace("\u00a0", " ")
    assert "в лице генерального директора Соколовой Марии Александровны, действующего на основании Устава" in text
    assert "ООО «Север», в лице директора Иванова Петра Сергеевича, действующего на основании Устава" in text
    assert "125 999,98 руб. (сто двадцать пять тысяч девятьсот девяносто девять рублей 98 копеек). Без НДС." in text
    assert text.rstrip().endswith("____________ Иванов П. С.")
