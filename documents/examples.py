"""The shipped example templates, built with python-docx: this file is their source.

    python -m documents.examples config/examples/marketing-agency/templates/documents
    python -m documents.examples --samples docs/documents     # each filled with SAMPLES, as PDF and PNG

writes invoice-uk.docx (рахунок на оплату, Ukrainian), act-ru.docx (акт выполненных работ),
invoice-ru.docx (счёт на оплату) and contract-ru.docx (договор на оказание услуг), Russian: the
last two are playbook C's (config/examples/marketing-agency/rules/documents.yaml). The .docx files are committed next to the example configuration; run this again after
changing it. A template is any DOCX with docxtpl tags: `{{ name }}` in text, `{%tr for … %}`
in a table row of its own for the rows (docs/documents.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

from docx import Document
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.shared import Cm, Pt

HEAD = ("№", "Найменування", "Од.", "К-сть", "Ціна", "Сума")
HEAD_RU = ("№", "Наименование", "Ед.", "Кол-во", "Цена", "Сумма")
WIDTHS = (Cm(0.9), Cm(6.7), Cm(2.1), Cm(1.9), Cm(2.6), Cm(2.8))   # 17 cm: A4 less 2 cm margins
ROW = ("{{ it.n }}", "{{ it.name }}", "{{ it.unit }}", "{{ it.quantity }}", "{{ it.price }}", "{{ it.sum }}")


def _document() -> Document:
    doc = Document()
    style = doc.styles["Normal"]
    style.font.name = "DejaVu Sans"   # Cyrillic in every LibreOffice (fonts-dejavu-core) and Word
    style.font.size = Pt(10)
    section = doc.sections[0]
    section.page_width, section.page_height = Cm(21.0), Cm(29.7)   # A4, not python-docx's US Letter
    section.left_margin = section.right_margin = Cm(2.0)
    section.top_margin = section.bottom_margin = Cm(2.0)
    return doc


def _rows(doc: Document, head: tuple[str, ...]) -> None:
    table = doc.add_table(rows=4, cols=len(head))
    table.style = "Table Grid"
    for cell, text in zip(table.rows[0].cells, head):
        cell.text = text
    table.rows[1].cells[0].text = "{%tr for it in items %}"
    for cell, text in zip(table.rows[2].cells, ROW):
        cell.text = text
    table.rows[3].cells[0].text = "{%tr endfor %}"
    table.autofit = False
    for column, width in zip(table.columns, WIDTHS):   # the grid LibreOffice reads…
        column.width = width
    for row in table.rows:                              # …and each cell's, which Word reads
        for i, (cell, width) in enumerate(zip(row.cells, WIDTHS)):
            cell.width = width
            if i >= 3:   # quantity, price, sum: figures to the right
                cell.paragraphs[0].alignment = WD_ALIGN_PARAGRAPH.RIGHT


def invoice_uk() -> Document:
    doc = _document()
    title = doc.add_paragraph("Рахунок на оплату № {{ number }} від {{ date_words }}")
    title.alignment = WD_ALIGN_PARAGRAPH.CENTER
    title.runs[0].bold = True
    doc.add_paragraph("Постачальник: {{ company.name }}, код ЄДРПОУ {{ company.code }}, "
                      "IBAN {{ company.iban }} в {{ company.bank }}, {{ company.address }}. {{ company.tax_status }}")
    doc.add_paragraph("Покупець: {{ client.name }}, код ЄДРПОУ {{ client.code }}, {{ client.address }}")
    doc.add_paragraph("Підстава: {{ values.basis }}")
    _rows(doc, HEAD)
    subtotal = doc.add_paragraph("{% if vat_rate %}Разом без ПДВ: {{ subtotal }} {{ currency_short }}{% endif %}")
    subtotal.paragraph_format.space_before = Pt(8)
    doc.add_paragraph("{{ vat_line }}")
    doc.add_paragraph("Всього до сплати: {{ total }} {{ currency_short }}").runs[0].bold = True
    doc.add_paragraph("Всього найменувань {{ count }}, на суму {{ total }} {{ currency_short }}.")
    doc.add_paragraph("Сума прописом: {{ total_words }}{% if vat_rate %}, у тому числі ПДВ: {{ vat_words }}"
                      "{% endif %}.")
    doc.add_paragraph("Рахунок дійсний до сплати протягом 5 банківських днів.")
    doc.add_paragraph("Виписав(ла): ____________ {{ company.signer }}")
    return doc


def act_ru() -> Document:
    doc = _document()
    title = doc.add_paragraph("Акт № {{ number }} сдачи-приёмки выполненных работ (оказанных услуг)")
    title.alignment = WD_ALIGN_PARAGRAPH.CENTER
    title.runs[0].bold = True
    doc.add_paragraph("г. {{ company.city }}, {{ date_words }}")
    doc.add_paragraph("Исполнитель: {{ company.name }}, ИНН {{ company.code }}, {{ company.address }}.")
    doc.add_paragraph("Заказчик: {{ client.name }}, ИНН {{ client.code }}, {{ client.address }}.")
    doc.add_paragraph("Исполнитель выполнил, а Заказчик принял следующие работы (услуги) по сделке "
                      "«{{ entity.name }}»:")
    _rows(doc, HEAD_RU)
    doc.add_paragraph("Итого: {{ items_total }} {{ currency_short }}").paragraph_format.space_before = Pt(8)
    doc.add_paragraph("{{ vat_line }}")
    doc.add_paragraph("Всего оказано услуг {{ count }}, на сумму {{ total }} {{ currency_short }}"
                      "{% if vat_rate and not vat_included %} с НДС{% endif %}")
    doc.add_paragraph("{{ total_words }}{% if vat_rate %}, в том числе НДС: {{ vat_words }}{% endif %}.")
    doc.add_paragraph("Вышеперечисленные работы (услуги) выполнены полностью и в срок. Заказчик претензий по "
                      "объёму, качеству и срокам оказания услуг не имеет.")
    doc.add_paragraph("Исполнитель: ____________ {{ company.signer }}        Заказчик: ____________ {{ client.signer }}")
    return doc


def invoice_ru() -> Document:
    doc = _document()
    title = doc.add_paragraph("Счёт на оплату № {{ number }} от {{ date_words }}")
    title.alignment = WD_ALIGN_PARAGRAPH.CENTER
    title.runs[0].bold = True
    doc.add_paragraph("Поставщик: {{ company.name }}\n{{ company.requisites }}")
    doc.add_paragraph("Покупатель: {{ client.name }}\n{{ client.requisites }}")
    doc.add_paragraph("Основание: {{ values.basis }}")
    _rows(doc, HEAD_RU)
    total = doc.add_paragraph("Итого: {{ items_total }} {{ currency_short }}")
    total.paragraph_format.space_before = Pt(8)
    doc.add_paragraph("{{ vat_line }}")
    doc.add_paragraph("Всего к оплате: {{ total }} {{ currency_short }}").runs[0].bold = True
    doc.add_paragraph("Всего наименований {{ count }}, на сумму {{ total }} {{ currency_short }}")
    doc.add_paragraph("Сумма прописью: {{ total_words }}{% if vat_rate %}, в том числе НДС: {{ vat_words }}{% endif %}.")
    doc.add_paragraph("Руководитель ____________ {{ company.signer }}")
    return doc


def contract_ru() -> Document:
    doc = _document()
    title = doc.add_paragraph("Договор № {{ number }} на оказание услуг")
    title.alignment = WD_ALIGN_PARAGRAPH.CENTER
    title.runs[0].bold = True
    doc.add_paragraph("г. {{ company.city }}\t\t\t\t\t\t\t{{ date_words }}")
    doc.add_paragraph("{{ company.name }}, в лице {{ company.represented_by }}, действующего на основании "
                      "{{ company.authority }}, именуемое в дальнейшем «Исполнитель», с одной стороны, и "
                      "{{ client.name }}{% if client.represented_by %}, в лице {{ client.represented_by }}, "
                      "действующего на основании {{ client.authority or 'Устава' }}{% endif %}, именуемое в дальнейшем "
                      "«Заказчик», с другой стороны, заключили настоящий договор о нижеследующем.")
    doc.add_paragraph("1. Предмет договора").runs[0].bold = True
    doc.add_paragraph("1.1. Исполнитель обязуется оказать Заказчику услуги по проекту «{{ entity.name }}», а Заказчик "
                      "обязуется принять и оплатить их:")
    _rows(doc, HEAD_RU)
    heading = doc.add_paragraph("2. Стоимость и порядок оплаты")
    heading.runs[0].bold = True
    heading.paragraph_format.space_before = Pt(8)
    doc.add_paragraph("2.1. Стоимость услуг составляет {{ total }} {{ currency_short }} ({{ total | in_words | lower }}). "
                      "{{ vat_line }}.")
    doc.add_paragraph("2.2. Порядок оплаты: {{ values.payment }}.")
    doc.add_paragraph("2.3. Оплата производится по счёту Исполнителя на его расчётный счёт.")
    doc.add_paragraph("3. Сдача и приёмка услуг").runs[0].bold = True
    doc.add_paragraph("3.1. Оказание услуг подтверждается актом сдачи-приёмки, подписанным сторонами.")
    doc.add_paragraph("4. Срок действия договора").runs[0].bold = True
    doc.add_paragraph("4.1. Договор вступает в силу с даты его подписания сторонами и действует до полного исполнения "
                      "ими своих обязательств.")
    doc.add_paragraph("5. Реквизиты и подписи сторон").runs[0].bold = True
    doc.add_paragraph("Исполнитель: {{ company.name }}\n{{ company.requisites }}\n\n____________ {{ company.signer }}")
    doc.add_paragraph("Заказчик: {{ client.name }}\n{{ client.requisites }}\n\n____________ {{ client.signer }}")
    return doc


TEMPLATES = {"invoice-uk.docx": invoice_uk, "act-ru.docx": act_ru, "invoice-ru.docx": invoice_ru,
             "contract-ru.docx": contract_ru}


def build(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for name, make in TEMPLATES.items():
        make().save(str(directory / name))
        made.append(directory / name)
    return made


UA_SELLER = {"name": "ТОВ «Агенція Приклад»", "code": "43210987", "iban": "UA213223130000026007233566001",
             "bank": "АТ «Приклад Банк», МФО 322313", "address": "м. Київ, вул. Хрещатик, 1, оф. 12",
             "tax_status": "Платник ПДВ, ІПН 432109826548.", "signer": "О. Коваленко", "city": "Київ"}
UA_BUYER = {"name": "ТОВ «Ромашка»", "code": "38765432", "address": "м. Львів, вул. Городоцька, 25"}
RU_SELLER = {"name": "ООО «Агентство»", "code": "7700000000", "city": "Москва", "signer": "Соколова М. А.",
             "represented_by": "генерального директора Соколовой Марии Александровны", "authority": "Устава", "address": "г. Москва, ул. Тверская, д. 7, оф. 3",
             "requisites": "ИНН 7700000000, КПП 770001001, г. Москва, ул. Тверская, д. 7, оф. 3\n"
                           "р/с 40702810000000000000 в АО «Банк», к/с 30101810400000000225, БИК 044525000"}
RU_BUYER = {"name": "ООО «Север»", "code": "7800000000", "signer": "Иванов П. С.",
            "represented_by": "директора Иванова Петра Сергеевича",
            "address": "г. Санкт-Петербург, Невский пр., д. 10",
            "requisites": "ИНН 7800000000, КПП 780001001, г. Санкт-Петербург, Невский пр., д. 10\n"
                          "р/с 40702810900000000001 в ПАО «Банк СПб», БИК 044030000"}
RU_ROWS = [{"name": "Ведение социальных сетей, март 2027", "quantity": 1, "unit": "усл.", "price": "85000"},
           {"name": "Настройка таргетированной рекламы", "quantity": 12, "unit": "ч", "price": "2500"},
           {"name": "Дизайн баннеров", "quantity": 6, "unit": "шт.", "price": "1833.33"}]
# (template, make_document options as render.context takes them): the pictures in docs/documents/
SAMPLES = {
    "invoice-uk.docx": dict(number="2027/015", date="2027-03-05", language="uk", currency="UAH", vat_rate=20,
                            company=UA_SELLER, client=UA_BUYER, values={"basis": "Договір № 2027/007 від 01.03.2027"},
                            entity={"name": "SMM березень"},
                            items=[{"name": "Ведення соцмереж (Instagram, Facebook), березень 2027", "quantity": 1,
                                    "unit": "послуга", "price": "24000"},
                                   {"name": "Налаштування таргетованої реклами", "quantity": "2,5", "unit": "год",
                                    "price": "750,50"},
                                   {"name": "Зйомка контенту", "quantity": 1, "unit": "послуга", "price": "6500"}]),
    "act-ru.docx": dict(number="2027/004", date="2027-03-31", language="ru", currency="RUB", vat_rate=None,
                        company=RU_SELLER, client=RU_BUYER, entity={"name": "SMM март"}, items=RU_ROWS),
    "invoice-ru.docx": dict(number="2027/021", date="2027-03-02", language="ru", currency="RUB", vat_rate=20,
                            vat_included=False, company=RU_SELLER, client=RU_BUYER, items=RU_ROWS,
                            values={"basis": "Договор № 2027/007 от 01.03.2027"}, entity={"name": "SMM март"}),
    "contract-ru.docx": dict(number="2027/007", date="2027-03-01", language="ru", currency="RUB", vat_rate=None,
                             company=RU_SELLER, client=RU_BUYER, entity={"name": "SMM март"}, items=RU_ROWS,
                             values={"payment": "50 % предоплата, 50 % после подписания акта"}),
}


def samples(directory: Path, templates: Path, dpi: int = 60) -> list[Path]:
    """Each template of SAMPLES filled and converted to PDF (LibreOffice), and each page of the PDF
    as a PNG (poppler-utils' pdftoppm, `dpi` dots an inch: 60 keeps a page under 150 KB):
    <name>-1.png, <name>-2.png…"""
    import shutil
    import subprocess

    from documents import render
    if shutil.which("pdftoppm") is None:
        raise SystemExit("samples: pdftoppm is not installed (Debian: apt-get install poppler-utils)")
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for name, options in SAMPLES.items():
        content = render.render_docx(templates / name, render.context(**options))
        pdf = directory / name.replace(".docx", ".pdf")
        pdf.write_bytes(render.to_pdf(content, name))
        for old in directory.glob(f"{pdf.stem}-*.png"):
            old.unlink()
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), str(pdf), str(directory / pdf.stem)], check=True,
                       timeout=120)
        made += [pdf, *sorted(directory.glob(f"{pdf.stem}-*.png"))]
    return made


if __name__ == "__main__":
    if sys.argv[1:2] == ["--samples"]:
        here = Path(__file__).resolve().parent.parent
        for path in samples(Path(sys.argv[2] if len(sys.argv) > 2 else "docs/documents"),
                            here / "config" / "examples" / "marketing-agency" / "templates" / "documents"):
            print(path, path.stat().st_size)
    else:
        for path in build(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
            print(path)
