"""A document's values, the DOCX filled with them (docxtpl), and its PDF (LibreOffice headless).

What a template may use (KNOWN, checked at start-up by `check_template`):

    number, date, date_words, date_long     «№ {{ number }} від {{ date_words }}»
    entity                                  the record as rules see it (entity.name, entity.fields['…'])
    client, company                         the buyer's and the seller's requisites (name, code, iban…)
    items                                   rows: n, name, quantity, unit, price, sum (price and sum
                                            written "12 345,67"; *_value: the Decimal)
    items_total                             the rows' sum ("Итого" under the table: the total when
                                            the prices hold the VAT, the sum before it when it is added)
    subtotal, vat, total                    written "12 345,67"; vat_rate: 20 or None; vat_line:
                                            "У тому числі ПДВ 20 %: 2 000,00 грн" or "Без ПДВ"
    total_words, vat_words                  "Дванадцять тисяч … гривень 67 копійок" (vat_words
                                            in lower case: it follows "у тому числі ПДВ")
    count, currency, currency_short, language, values (the rule's own `values:`)

and the filters `money`, `in_words` (an amount in the document's language and currency) and
`date_words`. Values are XML-escaped (autoescape), so "ТОВ «Ромашка» & Co" prints as written.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from docx.opc.exceptions import PackageNotFoundError
from docxtpl import DocxTemplate
from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from documents.words import CURRENCIES, amount, amount_in_words, as_date, date_in_words, money

TEMPLATE_DIR = Path("templates") / "documents"
KNOWN = frozenset({
    "number", "date", "date_words", "date_long", "entity", "client", "company", "items", "items_total", "subtotal",
    "vat", "vat_rate", "vat_included", "vat_line", "total", "total_words", "vat_words", "count", "currency",
    "currency_short", "language", "values",
})
SHORT = {"UAH": {"uk": "грн", "ru": "грн"}, "RUB": {"uk": "руб.", "ru": "руб."},
         "USD": {"uk": "дол. США", "ru": "долл. США"}, "EUR": {"uk": "євро", "ru": "евро"}}
VAT = {"uk": ("ПДВ", "У тому числі", "Без ПДВ"), "ru": ("НДС", "В том числе", "Без НДС")}
CONVERT_TIMEOUT = 60.0   # seconds a PDF conversion may take (a cold LibreOffice start is 2-5 s)
W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


class DocumentError(ValueError):
    """The document cannot be made from what it was given (a template, a value): fixing that helps."""


class ConversionUnavailable(DocumentError):
    """No LibreOffice (soffice) on this machine: no PDF can be made here."""


class ConversionFailed(RuntimeError):
    """LibreOffice ran and made no PDF (it crashed, or did not finish in time): it may work next time."""


def compute(items: list[dict[str, Any]], vat_rate: Any = None, vat_included: bool = True,
            language: str = "uk", currency: str = "UAH") -> dict[str, Any]:
    """Rows, subtotal, VAT and total, in figures and words. A row: name, quantity (default 1),
    unit, price; its sum is quantity × price to the kopeck. With `vat_included` the prices hold the
    VAT (the total is the rows' sum, the VAT its rate/(100+rate) share); without, it is added."""
    rows, sums = [], Decimal(0)
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not str(item.get("name") or "").strip():
            raise DocumentError(f"items[{n - 1}]: expected a row with a name, found {item!r}")
        try:
            quantity = amount(item.get("quantity", 1))
            price = amount(item.get("price"))
        except ValueError as exc:
            raise DocumentError(f"items[{n - 1}] ({item.get('name')}): {exc}") from None
        line = amount(quantity * price)
        sums += line
        rows.append({"n": n, "name": str(item["name"]).strip(), "unit": str(item.get("unit") or ""),
                     "quantity": _figure(quantity), "quantity_value": quantity, "price": money(price),
                     "price_value": price, "sum": money(line), "sum_value": line})
    rate = None if vat_rate in (None, "", 0, "0", False) else amount(vat_rate)
    if rate is None:
        subtotal, vat, total = sums, Decimal("0.00"), sums
    elif vat_included:
        total = sums
        vat = amount(total * rate / (100 + rate))
        subtotal = total - vat
    else:
        subtotal = sums
        vat = amount(subtotal * rate / 100)
        total = subtotal + vat
    short = SHORT[currency][language]
    tax, among, without = VAT[language]
    if rate is None:
        vat_line = without
    else:
        vat_line = f"{among + ' ' if vat_included else ''}{tax} {_figure(rate)} %: {money(vat)} {short}"
        vat_line = vat_line[:1].upper() + vat_line[1:]
    return {"items": rows, "count": len(rows), "items_total": money(sums), "subtotal": money(subtotal),
            "vat": money(vat), "total": money(total), "vat_rate": None if rate is None else _figure(rate),
            "vat_included": rate is not None and vat_included, "vat_line": vat_line,
            "total_words": amount_in_words(total, language, currency),
            "vat_words": amount_in_words(vat, language, currency, capital=False),   # mid-sentence
            "currency": currency, "currency_short": short, "language": language}


def context(*, number: str, date: Any, language: str, currency: str, items: list[dict[str, Any]],
            vat_rate: Any = None, vat_included: bool = True, entity: dict[str, Any] | None = None,
            client: dict[str, Any] | None = None, company: dict[str, Any] | None = None,
            values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a template may use (KNOWN)."""
    if currency not in CURRENCIES:
        raise DocumentError(f"currency {currency!r}: expected one of {', '.join(CURRENCIES)}")
    if language not in VAT:
        raise DocumentError(f"language {language!r}: expected uk or ru")
    try:
        day = as_date(date)
    except ValueError as exc:
        raise DocumentError(f"date: {exc}") from None
    found = compute(items, vat_rate, vat_included, language, currency)
    found.update(number=number, date=day.strftime("%d.%m.%Y"), date_words=date_in_words(day, language),
                 date_long=date_in_words(day, language, quoted=False), entity=entity or {},
                 client=client or {}, company=company or {}, values=values or {})
    return found


def environment(language: str = "uk", currency: str = "UAH") -> SandboxedEnvironment:
    env = SandboxedEnvironment()
    env.filters.update(money=money, date_words=lambda v: date_in_words(v, language),
                       in_words=lambda v: amount_in_words(v, language, currency))
    return env


def render_docx(template: Path, values: dict[str, Any]) -> bytes:
    """The template filled with `values` (context()), as DOCX bytes."""
    try:
        doc = DocxTemplate(str(template))
        doc.render(values, environment(values.get("language", "uk"), values.get("currency", "UAH")), autoescape=True)
    except TemplateError as exc:
        raise DocumentError(f"{template.name}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, PackageNotFoundError) as exc:
        raise DocumentError(f"{template.name}: not a DOCX file ({exc})") from None
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def docx_text(content: bytes) -> str:
    """The text of a DOCX's body, a paragraph a line (what tests and previews read)."""
    return "\n".join(_paragraphs(content))


def check_template(path: Path) -> list[tuple[int, str]]:
    """Problems of a template as (paragraph, message): a Jinja error, or a value it uses that
    documents do not make (KNOWN). Paragraphs count from 1 in the body's order, tables included."""
    try:
        doc = DocxTemplate(str(path))
        used = doc.get_undeclared_template_variables(environment())
    except (zipfile.BadZipFile, KeyError, PackageNotFoundError) as exc:
        return [(1, f"not a DOCX file ({exc})")]
    except TemplateError as exc:
        where = getattr(exc, "message", None) or str(exc)
        return [(1, f"template error: {where}")]
    from config.loader import did_you_mean   # the one message style for names
    paragraphs = _paragraphs(path.read_bytes())
    problems = []
    for name in sorted(used - KNOWN):
        at = next((i for i, text in enumerate(paragraphs, 1) if re.search(rf"\b{re.escape(name)}\b", text)), 1)
        problems.append((at, f"paragraph {at}: {{{{ {name} }}}} is not a value documents make"
                             f"{did_you_mean(name, KNOWN)} (known: {', '.join(sorted(KNOWN))})"))
    return problems


FIELD_READ = re.compile(r"""entity\.fields\s*\[\s*(["'])(.+?)\1\s*\]|entity\.fields\.(\w+)""")
TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


def fields_read(path: Path) -> list[tuple[int, str]]:
    """The record's fields a template reads (`entity.fields['X']`, `entity.fields.X` inside its
    tags) as (paragraph, name), paragraphs counted as check_template counts them: what
    `validate --online` looks up in the CRM (config/online.py). [] for a file that is no DOCX."""
    try:
        paragraphs = _paragraphs(path.read_bytes())
    except (OSError, zipfile.BadZipFile, KeyError, ElementTree.ParseError):
        return []
    found = []
    for at, text in enumerate(paragraphs, 1):
        for tag in TAG.findall(text):
            found.extend((at, m.group(2) or m.group(3)) for m in FIELD_READ.finditer(tag))
    return found


def soffice() -> str | None:
    """The LibreOffice binary (soffice, or libreoffice), or None."""
    return shutil.which("soffice") or shutil.which("libreoffice")


def to_pdf(content: bytes, name: str = "document.docx", timeout: float = CONVERT_TIMEOUT) -> bytes:
    """DOCX bytes → PDF bytes with `soffice --headless --convert-to pdf`, in a directory of its own
    with a LibreOffice profile of its own (-env:UserInstallation), so that conversions running at
    once in several workers do not share (and lock) one profile. Past `timeout` the whole process
    group is killed and ConversionFailed raised."""
    binary = soffice()
    if binary is None:
        raise ConversionUnavailable("PDF conversion is unavailable: LibreOffice is not installed (no soffice "
                                    "on PATH); install Debian's libreoffice-writer-nogui, or set pdf: false")
    with tempfile.TemporaryDirectory(prefix="crmbridge-pdf-") as work:
        source = Path(work) / (Path(name).stem + ".docx")
        source.write_bytes(content)
        command = [binary, f"-env:UserInstallation={Path(work, 'profile').as_uri()}", "--headless", "--norestore",
                   "--convert-to", "pdf", "--outdir", work, str(source)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HOME": work})
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ConversionFailed(f"PDF conversion did not finish in {timeout:.0f} s") from None
        made = source.with_suffix(".pdf")
        if proc.returncode != 0 or not made.is_file():
            said = output.decode(errors="replace").strip()[-300:]
            raise ConversionFailed(f"PDF conversion failed (soffice exit {proc.returncode}): {said}")
        return made.read_bytes()


def _paragraphs(content: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as docx:
        root = ElementTree.fromstring(docx.read("word/document.xml"))
    return ["".join(t.text or "" for t in p.iter(f"{W}t")) for p in root.iter(f"{W}p")]


def _figure(value: Decimal) -> str:
    """2 → "2", 1.5 → "1,5": a quantity or a rate without trailing zeros, a decimal comma."""
    text = format(value.normalize(), "f")
    return text.replace(".", ",")
