"""Playbook C's alternative C8 (config/examples/marketing-agency/rules/documents.yaml) switched on:
a deal entering «Утвержденный проект» gets its contract and invoice as PDFs on amoCRM's drive,
linked to the deal with an attachment note each, through the Flask app, a real RQ worker and real
Redis on the fake amoCRM; the same webhook again makes nothing more. Harness:
tests/playbooks/marketing_amo.py."""
from __future__ import annotations

import io
import shutil

import pytest
from pypdf import PdfReader

from tests.playbooks import marketing_amo
from tests.playbooks.marketing_amo import SALES, lead, moved, msk, post, _lead_keys, run_worker
from tests.test_documents import NEEDS_SOFFICE

amo, at, env = marketing_amo.amo, marketing_amo.at, marketing_amo.env
DEAL = 31926520


@pytest.fixture
def config_dir(tmp_path):
    target = tmp_path / "config"
    shutil.copytree(marketing_amo.EXAMPLE, target)
    rules = target / "rules" / "documents.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("enabled: false", "enabled: true"), encoding="utf-8")
    return target


def text_of(pdf: bytes) -> str:
    return " ".join("\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())


@NEEDS_SOFFICE
def test_entering_approved_project_makes_the_contract_and_the_invoice(client, runtime, amo, at):
    at(msk(2027, 3, 4, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Согласование КП",
         {"Реквизиты клиента": "ООО «Весна»\nИНН 7701234567\n123000, г. Москва, ул. Цветочная, 5",
          "Реквизиты подрядчика": "ИП Кузнецова", "Тип оплаты": "Предоплата"})
    moved(client, runtime, amo, DEAL, "Утвержденный проект")
    files = {amo.drive_files[uuid]["name"]: content for uuid, content in amo.drive_contents.items()}
    assert sorted(files) == ["Договор 2027-001", "Счет 2027-001"]   # the drive keeps names without extensions
    contract, invoice = text_of(files["Договор 2027-001"]), text_of(files["Счет 2027-001"])
    assert "Договор № 2027/001 на оказание услуг" in contract and "«04» марта 2027 г." in contract
    assert "ООО «Весна»" in contract and "ИНН 7701234567" in contract and "Порядок оплаты: Предоплата." in contract
    assert "450 000,00 руб. (четыреста пятьдесят тысяч рублей 00 копеек). Без НДС." in contract.replace("\u00a0", " ")
    assert "Счёт на оплату № 2027/001 от «04» марта 2027 г." in invoice
    assert "Сумма прописью: Четыреста пятьдесят тысяч рублей 00 копеек." in invoice
    notes = amo.notes[("leads", DEAL)]
    assert sorted(n["params"]["file_name"] for n in notes if n["note_type"] == "attachment") == \
        ["Договор 2027-001.pdf", "Счет 2027-001.pdf"]
    assert len(amo.file_links[("leads", DEAL)]) == 2
    # amoCRM sends the stage change again (a retry of its webhook): nothing more is made
    post(client, {**_lead_keys("leads[status][0]", amo.leads[DEAL]),
                  "leads[status][0][old_status_id]": str(amo.leads[DEAL]["status_id"]), "account[subdomain]": "agency"})
    run_worker(runtime)
    assert len(amo.received("POST", "/drive/v1.0/sessions")) == 2 and len(amo.notes[("leads", DEAL)]) == len(notes)
