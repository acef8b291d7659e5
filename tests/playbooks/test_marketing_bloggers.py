"""Playbook C8, the «Услуги» section: the blogger's full name looked up in the bloggers' base (the
amoCRM list «Блогеры») by the first letters of the surname typed into «ФИО блогера N».

amoCRM's real «Сделка изменена» webhook (lead_updated_custom_fields.form) goes through the Flask
app into a real RQ worker on real Redis; the shipped rule (sales.yaml) reads the list through
GET /api/v4/catalogs and GET /api/v4/catalogs/{id}/elements?query= (api_catalogs_list.json,
api_catalog_elements_list.json) on the fake amoCRM v4. Harness: tests/playbooks/marketing_amo.py."""
from __future__ import annotations

import pytest

from pipeline.steps.lookup_field import catalog_matches
from tests.playbooks import marketing_amo
from tests.playbooks.marketing_amo import FIELD_IDS, SALES, audit, lead, msk, updated

amo, at, config_dir, env = marketing_amo.amo, marketing_amo.at, marketing_amo.config_dir, marketing_amo.env

DEAL = 31926520
BLOGGERS = 4589
BASE = ["Иванова Мария Сергеевна", "Иваненко Пётр Олегович", "Смирнов Алексей Игоревич",
        "Ёлкина Дарья Павловна", "Петров Иван Ильич"]


@pytest.fixture
def agency(amo, at):
    """The agency's lists (the bloggers' base among them) and an approved deal amoCRM already
    announced once (crmbridge keeps its state, so later webhooks give `field.changed`)."""
    amo.catalogs = [{"id": 4521, "name": "Товары", "type": "products", "sort": 20},
                    {"id": BLOGGERS, "name": "Блогеры", "type": "regular", "sort": 10}]
    for name in BASE:
        amo.add_catalog_element(BLOGGERS, name)
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Утвержденный проект",
         {"Реквизиты клиента": "ООО Весна", "Реквизиты подрядчика": "ИП Смирнова"})
    return amo


def typed(client, runtime, amo, at, minute: int, fields: dict) -> None:
    at(msk(2026, 11, 24, 11, minute))
    updated(client, runtime, amo, DEAL, fields)


def field_writes(amo) -> list[list[dict]]:
    return [c.body["custom_fields_values"] for c in amo.received("PATCH", f"/api/v4/leads/{DEAL}")
            if "custom_fields_values" in c.body]


def notes(amo) -> list[str]:
    return [n["params"]["text"] for c in amo.received("POST", "/api/v4/leads/notes") for n in c.body]


def searches(amo) -> list[str]:
    return [c.query["query"][0] for c in amo.received("GET", rf"/api/v4/catalogs/{BLOGGERS}/elements")]


def test_three_letters_of_a_surname_become_the_full_name_once(client, runtime, agency, at):
    typed(client, runtime, agency, at, 1, {})                       # the deal as it was
    typed(client, runtime, agency, at, 2, {"ФИО блогера 1": "смир"})
    assert searches(agency) == ["смир"]
    assert field_writes(agency) == [[{"field_id": FIELD_IDS["ФИО блогера 1"],
                                      "values": [{"value": "Смирнов Алексей Игоревич"}]}]]
    assert len(agency.received("GET", "/api/v4/catalogs")) == 1  # the list found by its name

    # amoCRM keeps the write and announces it: a full name of the base is left alone, no loop
    typed(client, runtime, agency, at, 3, {"ФИО блогера 1": "Смирнов Алексей Игоревич"})
    assert searches(agency) == ["смир", "Смирнов Алексей Игоревич"]
    assert len(field_writes(agency)) == 1 and notes(agency) == []
    assert [a["result"] for a in audit(runtime, "action.done") if "lookup_field" in a["action"]] == [
        {"set": "Смирнов Алексей Игоревич"}, {"kept": "Смирнов Алексей Игоревич"}]
    assert len(agency.received("GET", "/api/v4/catalogs")) == 1  # names cached

    # any case, Cyrillic ё: the second blogger; the first field did not change and is not looked up
    typed(client, runtime, agency, at, 4, {"ФИО блогера 2": "ЁЛК"})
    assert searches(agency)[2:] == ["ЁЛК"]
    assert field_writes(agency)[1] == [{"field_id": FIELD_IDS["ФИО блогера 2"],
                                        "values": [{"value": "Ёлкина Дарья Павловна"}]}]


def test_several_surnames_give_a_note_listing_them_and_the_field_stays(client, runtime, agency, at):
    typed(client, runtime, agency, at, 1, {})
    typed(client, runtime, agency, at, 2, {"ФИО блогера 2": "Ива"})
    assert field_writes(agency) == []
    assert notes(agency) == [("«ФИО блогера 2»: в базе блогеров несколько фамилий на «Ива»: Иванова Мария "
                              "Сергеевна, Иваненко Пётр Олегович. Введите фамилию точнее.")]
    # more letters settle it
    typed(client, runtime, agency, at, 3, {"ФИО блогера 2": "Иванов"})
    assert field_writes(agency) == [[{"field_id": FIELD_IDS["ФИО блогера 2"],
                                      "values": [{"value": "Иванова Мария Сергеевна"}]}]]


def test_no_such_surname_gives_a_note_and_too_few_letters_nothing(client, runtime, agency, at):
    typed(client, runtime, agency, at, 1, {})
    typed(client, runtime, agency, at, 2, {"ФИО блогера 3": "Си"})   # two letters: not searched yet
    assert searches(agency) == [] and notes(agency) == []
    typed(client, runtime, agency, at, 3, {"ФИО блогера 3": "Сидор"})
    assert searches(agency) == ["Сидор"]
    assert field_writes(agency) == []
    assert notes(agency) == [("«ФИО блогера 3»: в базе блогеров нет фамилии на «Сидор». Проверьте написание "
                              "или добавьте блогера в список «Блогеры».")]
    # amoCRM's search finds «Дарья» in «Ёлкина Дарья Павловна», but only the surname counts
    typed(client, runtime, agency, at, 4, {"ФИО блогера 3": "Дарья"})
    assert searches(agency)[1:] == ["Дарья"]
    assert field_writes(agency) == [] and notes(agency)[1].startswith("«ФИО блогера 3»: в базе блогеров нет фамилии на «Дарья»")


def test_matching_by_the_start_of_the_name_or_of_any_word():
    names = ["Мария Иванова", "Иваненко Пётр", "Пётр Ёлкин"]
    assert catalog_matches(names, "ива") == ["Иваненко Пётр"]
    assert catalog_matches(names, "ива", "word_starts_with") == ["Мария Иванова", "Иваненко Пётр"]
    assert catalog_matches(names, "петр елк", "word_starts_with") == ["Пётр Ёлкин"]
    assert catalog_matches(names, "  ") == []
