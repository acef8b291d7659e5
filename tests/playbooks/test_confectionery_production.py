"""Playbook B5 end to end: an order moved to «У виробництво» becomes the confectioners' task in
their own process «Кондитери» (a subtask of the order, with its data, for the confectioner named on
the order, due on the day of issue); an order missing that data is put back with a comment. Planfix's
"status changed" scenario goes through the Flask app into a real RQ worker."""
from __future__ import annotations

import pytest

from tests.playbooks.confectionery import (  # noqa: F401 - fixtures
    CONFECTIONER_STATUSES, CONFECTIONERS, SALES_STATUSES, at, bodies, config_dir, custom, env, fake_inbox,
    fake_planfix, kyiv, post_inbox, status, task_creates, umnico_incoming,
)


@pytest.fixture
def order(client, runtime, fake_planfix, at) -> int:
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(64950001, "Бенто-торт на п'ятницю", kyiv(2026, 12, 8, 11, 0), new=True))
    return max(fake_planfix.tasks)


def fill(fake_planfix, task: int, **values) -> None:
    ids = {"Кондитер": 309, "Опис виробу": 310, "Дата видачі": 311}
    fake_planfix.tasks[task]["customFieldData"] += [{"field": {"id": ids[k.replace("_", " ")], "name": k.replace("_", " ")},
                                                     "value": v} for k, v in values.items()]


def test_b5_an_order_sent_to_production_makes_the_confectioners_task(client, runtime, fake_planfix, order):
    fill(fake_planfix, order, Кондитер="Тарас Бондар", Опис_виробу="Бенто-торт «Вишня», напис «З днем народження!»",
         Дата_видачі={"date": "11-12-2026"})
    status(client, runtime, fake_planfix, order, "У виробництво", "Нове звернення")
    made = task_creates(fake_planfix)[1]
    assert made["processId"] == CONFECTIONERS and made["status"] == {"id": CONFECTIONER_STATUSES["Нова"]}
    assert made["parent"] == {"id": order}
    assert made["assignees"] == {"users": [{"id": "user:5"}]}                  # Тарас Бондар
    assert made["name"] == "Виготовити: Бенто-торт «Вишня», напис «З днем народження!»"
    assert "Замовлення: olena.solodka · solodka.mriya.kyiv" in made["description"]
    assert "Менеджер: Олена Коваленко" in made["description"]
    assert made["endDateTime"] == {"datetime": "2026-12-11T07:00Z"}             # 09:00 Kyiv on the day of issue
    assert custom(made) == {"Опис виробу": "Бенто-торт «Вишня», напис «З днем народження!»",
                            "Дата видачі": {"date": "11-12-2026"}, "Акаунт": "solodka.mriya.kyiv"}
    # Planfix sends the status again (its retry): the task is not made twice
    status(client, runtime, fake_planfix, order, "У виробництво", "Нове звернення")
    assert len(task_creates(fake_planfix)) == 2


def test_b5_without_the_production_data_the_order_is_put_back(client, runtime, fake_planfix, order):
    fill(fake_planfix, order, Кондитер="Тарас Бондар")
    status(client, runtime, fake_planfix, order, "У виробництво", "Нове звернення")
    assert len(task_creates(fake_planfix)) == 1
    assert {"status": {"id": SALES_STATUSES["Нове звернення"]}} in bodies(fake_planfix, "POST", rf"/rest/task/{order}")
    [note] = bodies(fake_planfix, "POST", rf"/rest/task/{order}/comments/")
    assert note["description"].startswith("Не передано у виробництво: не заповнено: Опис виробу, Дата видачі")
