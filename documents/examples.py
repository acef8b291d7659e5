"""The shipped example templates, built with python-docx: this file is their source.

    python -m documents.examples config/examples/marketing-agency/templates/documents

writes invoice-uk.docx (рахунок на оплату, Ukrainian) and act-ru.docx (акт выполненных работ,
Russian). The .docx files are committed next to the example configuration; run this again after
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
WIDTHS = (Cm(0.9), Cm(7.0), Cm(2.1), Cm(1.6), Cm(2.6), Cm(2.8))   # 17 cm: A4 less 2 cm margins
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
    doc.add_paragraph("Исполнитель: {{ company.name }}, код {{ company.code }}, {{ company.address }}.")
    doc.add_paragraph("Заказчик: {{ client.name }}, код {{ client.code }}, {{ client.address }}.")
    doc.add_paragraph("Исполнитель выполнил, а Заказчик принял следующие работы (услуги) по сделке "
                      "«{{ entity.name }}»:")
    _rows(doc, HEAD_RU)
    doc.add_paragraph("Итого: {{ total }} {{ currency_short }}").paragraph_format.space_before = Pt(8)
    doc.add_paragraph("{{ vat_line }}")
    doc.add_paragraph("Всего оказано услуг на сумму: {{ total_words }}{% if vat_rate %}, в том числе НДС: "
                      "{{ vat_words }}{% endif %}.")
    doc.add_paragraph("Вышеперечисленные работы (услуги) выполнены полностью и в срок. Заказчик претензий по "
                      "объёму, качеству и срокам оказания услуг не имеет.")
    doc.add_paragraph("Исполнитель: ____________ {{ company.signer }}        Заказчик: ____________ {{ client.signer }}")
    return doc


TEMPLATES = {"invoice-uk.docx": invoice_uk, "act-ru.docx": act_ru}


def build(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for name, make in TEMPLATES.items():
        make().save(str(directory / name))
        made.append(directory / name)
    return made


if __name__ == "__main__":
    for path in build(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
