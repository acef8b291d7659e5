"""Playbook B1/B2 end to end: umnico's webhook → the client's contact and order in Planfix, later
messages on the same order while it is open, a new order after it is closed, and the order card
(last message, its time, who wrote last, unanswered client messages) written on every client's and
manager's message, once however often umnico delivers one.

umnico message.incoming / message.outgoing bodies go through the Flask app into a real RQ worker;
the shipped rules (config/examples/confectionery/) act on the fake Planfix REST API."""
from __future__ import annotations

import pytest

from tests.playbooks.confectionery import (  # noqa: F401 - fixtures
    CONTACT_FIELD, FIELD, SALES, SALES_STATUSES, at, bodies, card_writes, config_dir, custom, env, fake_inbox,
    fake_planfix, kyiv, post_inbox, task_creates, umnico_incoming, umnico_outgoing,
)

LEAD = 64950001


def test_b1_first_message_makes_the_contact_and_the_order_with_its_card(client, runtime, fake_planfix, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день! Скільки коштує «Наполеон» на 2 кг? 🎂",
                                                kyiv(2026, 12, 8, 11, 0, 5), new=True, message_id=11201))
    # the client was looked for by the line field «Instagram» (filter 4101), then made
    [search] = bodies(fake_planfix, "POST", r"/rest/contact/list")
    assert search["filters"] == [{"type": 4101, "operator": "equal", "field": CONTACT_FIELD["Instagram"],
                                  "value": "https://instagram.com/olena.solodka"}]
    [contact] = bodies(fake_planfix, "POST", r"/rest/contact/")
    assert contact["name"] == "olena.solodka"
    assert custom(contact) == {"Instagram": "https://instagram.com/olena.solodka", "Акаунт": "solodka.mriya.kyiv",
                               "Дата звернення": {"date": "08-12-2026"}}
    contact_id = max(fake_planfix.contacts)
    # the order: read back by the conversation (filter 101 on «Розмова») before it was made
    [lookup] = [b for b in bodies(fake_planfix, "POST", r"/rest/task/list")]
    assert lookup["filters"] == [{"type": 101, "field": FIELD["Розмова"], "operator": "equal", "value": str(LEAD)}]
    [order] = task_creates(fake_planfix)
    assert order["name"] == "olena.solodka · solodka.mriya.kyiv"
    assert order["processId"] == SALES and order["status"] == {"id": SALES_STATUSES["Нове звернення"]}
    assert order["counterparty"] == {"id": f"contact:{contact_id}"}
    assert order["assignees"] == {"users": [{"id": "user:2"}]}      # Олена Коваленко answers solodka.mriya.kyiv
    assert custom(order) == {
        "Розмова": str(LEAD), "Акаунт": "solodka.mriya.kyiv", "Канал": "Директ",
        "Останнє повідомлення": "Добрий день! Скільки коштує «Наполеон» на 2 кг? 🎂",
        "Дата останнього повідомлення": {"datetime": "2026-12-08T09:00Z"},
        "Хто писав останній": "Клієнт", "Без відповіді": 1}


def test_b1_later_messages_join_the_open_order_and_b2_the_card_follows_both_sides(client, runtime, fake_planfix, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день!", kyiv(2026, 12, 8, 11, 0, 5), new=True))
    order = max(fake_planfix.tasks)
    post_inbox(client, runtime, umnico_incoming(LEAD, "Можна на суботу?", kyiv(2026, 12, 8, 11, 1)))
    post_inbox(client, runtime, umnico_outgoing(LEAD, "Вітаємо! Так, на суботу можна 🙂", kyiv(2026, 12, 8, 11, 2)))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Дякую! А ціна?", kyiv(2026, 12, 8, 11, 3)))
    assert len(task_creates(fake_planfix)) == 1                       # one order for the conversation
    assert len(bodies(fake_planfix, "POST", r"/rest/contact/")) == 1  # one contact
    assert card_writes(fake_planfix, order) == [
        {"Останнє повідомлення": "Можна на суботу?", "Дата останнього повідомлення": {"datetime": "2026-12-08T09:01Z"},
         "Хто писав останній": "Клієнт", "Без відповіді": 2},
        {"Останнє повідомлення": "Вітаємо! Так, на суботу можна 🙂",
         "Дата останнього повідомлення": {"datetime": "2026-12-08T09:02Z"}, "Хто писав останній": "Менеджер",
         "Без відповіді": 0},
        {"Останнє повідомлення": "Дякую! А ціна?", "Дата останнього повідомлення": {"datetime": "2026-12-08T09:03Z"},
         "Хто писав останній": "Клієнт", "Без відповіді": 1}]


def test_b2_a_redelivered_or_late_message_changes_nothing(client, runtime, fake_planfix, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день!", kyiv(2026, 12, 8, 11, 0), new=True))
    order = max(fake_planfix.tasks)
    second = umnico_incoming(LEAD, "Можна на суботу?", kyiv(2026, 12, 8, 11, 1), message_id=777)
    post_inbox(client, runtime, second)
    writes = len(card_writes(fake_planfix, order))
    assert post_inbox(client, runtime, second) == {"accepted": 0, "duplicates": 1}
    assert len(card_writes(fake_planfix, order)) == writes            # the same message twice: nothing
    # the manager answered at 11:02; umnico delivers the client's 11:01 message late under a new id:
    # it was answered already and is older than the card's last message
    post_inbox(client, runtime, umnico_outgoing(LEAD, "Так, можна", kyiv(2026, 12, 8, 11, 2)))
    post_inbox(client, runtime, umnico_incoming(LEAD, "(ще раз) Можна на суботу?", kyiv(2026, 12, 8, 11, 1, 30)))
    assert card_writes(fake_planfix, order)[-1] == {
        "Останнє повідомлення": "Так, можна", "Дата останнього повідомлення": {"datetime": "2026-12-08T09:02Z"},
        "Хто писав останній": "Менеджер", "Без відповіді": 0}


def test_b1_a_closed_order_is_followed_by_a_new_one(client, runtime, fake_planfix, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день!", kyiv(2026, 12, 8, 11, 0), new=True))
    first = max(fake_planfix.tasks)
    fake_planfix.tasks[first]["status"] = {"id": SALES_STATUSES["Оплачено"]}   # paid and closed in Planfix
    post_inbox(client, runtime, umnico_incoming(LEAD, "Хочу ще один торт на свято", kyiv(2026, 12, 20, 12, 0)))
    creates = task_creates(fake_planfix)
    assert len(creates) == 2
    second = max(fake_planfix.tasks)
    assert second != first and custom(creates[1])["Без відповіді"] == 1
    assert creates[1]["counterparty"] == creates[0]["counterparty"]   # the same client, found, not made again
    assert len(bodies(fake_planfix, "POST", r"/rest/contact/")) == 1
    assert card_writes(fake_planfix, first) == []                     # the closed order is left as it is


def test_b1_after_a_crash_the_order_is_read_back_not_made_twice(client, runtime, fake_planfix, at):
    """The order was made, then the worker lost what it knew (its conversation → order key): the next
    message finds the order in Planfix by «Розмова» instead of making another."""
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день!", kyiv(2026, 12, 8, 11, 0), new=True))
    order = max(fake_planfix.tasks)
    for key in runtime.store.scan_iter(match="*order-of*"):
        runtime.store.delete(key)
    post_inbox(client, runtime, umnico_incoming(LEAD, "Ви тут?", kyiv(2026, 12, 8, 11, 1)))
    assert len(task_creates(fake_planfix)) == 1
    assert card_writes(fake_planfix, order)[-1]["Без відповіді"] == 2


def test_b2_a_managers_message_without_an_order_makes_nothing(client, runtime, fake_planfix, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_outgoing(LEAD, "Вітаємо! Чим допомогти?", kyiv(2026, 12, 8, 11, 0)))
    assert task_creates(fake_planfix) == [] and bodies(fake_planfix, "POST", r"/rest/contact/") == []


@pytest.mark.parametrize("account,user", [("solodka.mriya.lviv", "user:3"), ("solodka.mriya.vegan", "user:4")])
def test_b1_each_account_has_its_manager(client, runtime, fake_planfix, at, account, user):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Привіт", kyiv(2026, 12, 8, 11, 0), account=account, new=True))
    [order] = task_creates(fake_planfix)
    assert order["assignees"] == {"users": [{"id": user}]} and custom(order)["Акаунт"] == account
