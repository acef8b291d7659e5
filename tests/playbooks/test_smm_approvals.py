"""Playbook A3 (approval buttons) and A4 (the gated "Ads launched" button, the report), end to end:
Planfix scenario requests and Telegram updates into the app, a real RQ worker on Redis, fake
Planfix and Telegram servers that record the calls they receive."""
from __future__ import annotations

import json
import time

from connectors import telegram
from connectors.base import RawWebhook
from tests.playbooks.smm_links_harness import (
    CLIENT,
    CLIENT_2,
    CLIENT_CHAT,
    OLENA_PM,
    STAFF_CHAT,
    add_task,
    smm_fixture,  # noqa: F401  (the `smm` fixture)
)


def ask(smm, task: int = 1042, kind: str = "Контент-план") -> dict:
    """The content-plan task goes "Завершена": the client's group gets the approval message."""
    add_task(smm.planfix, task, "Контент-план на грудень", "Завершена", **{"Тип задачі": kind,
                                                                          "Telegram чат": CLIENT_CHAT})
    smm.planfix_status(task, "Завершена")
    smm.work()
    return smm.sent(CLIENT_CHAT)[-1]


def test_a3_result_is_sent_with_two_signed_buttons(smm):
    sent = ask(smm)
    assert sent["text"].startswith("✅ Роботу «Контент-план на грудень» виконано і вона готова до перегляду.")
    approve, revise = smm.buttons(sent)
    assert (approve["text"], revise["text"]) == ("✅ Затвердити роботу", "✏️ Надіслати на доопрацювання")
    for button in (approve, revise):
        assert len(button["callback_data"].encode()) <= 64
    assert approve["callback_data"].startswith("a1.approve.t1042.")
    assert revise["callback_data"].startswith("a1.revise.t1042.")


def test_a3_approve_comments_once_and_replaces_the_keyboard(smm):
    sent = ask(smm)
    approve, revise = smm.buttons(sent)
    smm.press(approve["callback_data"], CLIENT, callback_id="cb-1")
    smm.work()
    assert smm.comments(1042) == ["Роботу затверджено клієнтом: Марія Зерно (Telegram)"]
    assert smm.answers() == ["Дякуємо! Роботу затверджено."]
    [edit] = smm.tg.method_calls("editMessageReplyMarkup")
    assert str(edit.body["chat_id"]) == CLIENT_CHAT and int(edit.body["message_id"]) == 100
    assert edit.body["reply_markup"]["inline_keyboard"] == [
        [{"text": "✅ Затвердити роботу · Марія Зерно", "callback_data": approve["callback_data"]}]]

    # Telegram redelivers the same press, a second person presses approve, a third presses revise
    assert smm.press(approve["callback_data"], CLIENT, callback_id="cb-1") == {"accepted": 0, "duplicates": 1}
    smm.press(approve["callback_data"], CLIENT_2, callback_id="cb-2")
    smm.press(revise["callback_data"], CLIENT_2, callback_id="cb-3")
    smm.work()
    assert smm.comments(1042) == ["Роботу затверджено клієнтом: Марія Зерно (Telegram)"]
    assert smm.answers()[1:] == ["Вже обрано: ✅ Затвердити роботу (Марія Зерно)."] * 2
    assert not [c for c in smm.planfix.received("POST", "/rest/task/1042") if "status" in (c.body or {})]
    assert len(smm.tg.method_calls("editMessageReplyMarkup")) == 1


def test_a3_revise_moves_the_task_back_and_a_second_revision_works_on_the_next_result(smm):
    sent = ask(smm)
    revise = smm.buttons(sent)[1]["callback_data"]
    smm.press(revise, CLIENT_2)
    smm.press(revise, CLIENT_2)  # a double press: two callback queries, one choice
    smm.work()
    moves = [c.body for c in smm.planfix.received("POST", "/rest/task/1042") if "status" in (c.body or {})]
    assert moves == [{"status": {"id": 4}}]            # "Доопрацювання"
    assert smm.comments(1042) == ["Клієнт Андрій надіслав роботу на доопрацювання (Telegram)"]
    assert smm.answers() == ["Дякуємо! Передали команді на доопрацювання.", "Вже обрано: ✏️ Надіслати на доопрацювання (Андрій)."]
    assert smm.sent(CLIENT_CHAT)[-1]["text"] == "✏️ Опишіть, будь ласка, що саме змінити — ми все врахуємо."

    # the team fixes it and completes the task again: a new message, new buttons, a new choice
    smm.planfix.tasks[1042]["status"] = {"id": 3, "name": "Завершена"}
    smm.planfix_status(1042, "Завершена")
    smm.work()
    again = smm.sent(CLIENT_CHAT)[-1]
    second = smm.buttons(again)[1]["callback_data"]
    assert second != revise
    smm.press(second, CLIENT, message_id=smm.last_message_id())
    smm.work()
    moves = [c.body for c in smm.planfix.received("POST", "/rest/task/1042") if "status" in (c.body or {})]
    assert moves == [{"status": {"id": 4}}, {"status": {"id": 4}}]
    assert smm.comments(1042)[-1] == "Клієнт Марія Зерно надіслав роботу на доопрацювання (Telegram)"


def test_forged_or_replayed_callback_data_does_nothing_but_answer(smm):
    sent = ask(smm)
    token = smm.buttons(sent)[0]["callback_data"]
    prefix, choice, record, nonce, mac = token.split(".")
    forged = [
        f"{prefix}.{choice}.t1043.{nonce}.{mac}",       # the same signature on another task
        f"{prefix}.revise.{record}.{nonce}.{mac}",      # …or for another choice
        f"{prefix}.{choice}.{record}.{nonce}.{'A' * 12}",  # a made-up signature
        "a1.approve.t1042",                                   # damaged
    ]
    for data in forged:
        smm.press(data, CLIENT)
    smm.press(token, CLIENT, chat="-1009988776655")           # a genuine button carried to another chat
    smm.work()
    assert smm.answers() == ["⛔ Ця кнопка недійсна."] * 5
    assert smm.comments(1042) == [] and smm.comments(1043) == []
    assert not [c for c in smm.planfix.received("POST") if "status" in (c.body or {})]
    assert len(smm.audit("button.refused")) == 5
    # the genuine press still works afterwards
    smm.press(token, CLIENT)
    smm.work()
    assert smm.comments(1042) == ["Роботу затверджено клієнтом: Марія Зерно (Telegram)"]


def test_a4_launch_button_is_for_staff_and_gated_on_the_result_fields(smm):
    add_task(smm.planfix, 2077, "Реклама публікацій, грудень", "В роботі",
             **{"Тип задачі": "Реклама", "Telegram чат": CLIENT_CHAT})
    smm.planfix_status(2077, "В роботі")
    smm.work()
    [sent] = smm.sent(STAFF_CHAT)
    assert sent["text"] == "📣 Реклама для «Реклама публікацій, грудень» (задача №2077). Натисніть, коли кампанію запущено."
    [button] = smm.buttons(sent)
    assert button["text"] == "🚀 Реклама запущена"

    smm.press(button["callback_data"], CLIENT, chat=STAFF_CHAT)     # not staff
    smm.work()
    smm.press(button["callback_data"], OLENA_PM, chat=STAFF_CHAT)   # staff, but the fields are empty
    smm.work()
    assert smm.answers() == ["🔒 Цю кнопку може натиснути лише відповідальна особа.",
                             "Спершу заповніть поля: Очікуваний результат, Графік кампанії"]
    assert smm.sent(CLIENT_CHAT) == [] and smm.tg.method_calls("editMessageReplyMarkup") == []

    smm.planfix.tasks[2077]["customFieldData"] += [
        {"field": {"id": 107, "name": "Очікуваний результат"}, "value": "300 нових підписників, CPC до 5 грн"},
        {"field": {"id": 108, "name": "Графік кампанії"}, "value": "1–14 грудня, щодня 9:00–22:00"}]
    smm.press(button["callback_data"], OLENA_PM, chat=STAFF_CHAT)   # refused before: may be pressed again
    smm.work()
    [launch] = smm.sent(CLIENT_CHAT)
    assert launch["text"] == ("🚀 Рекламну кампанію запущено!\nГрафік кампанії: 1–14 грудня, щодня 9:00–22:00\n"
                              "Очікуваний результат: 300 нових підписників, CPC до 5 грн\n"
                              "Звіт надішлемо, щойно кампанія завершиться.")
    assert smm.answers()[-1] == "Клієнту надіслано повідомлення про запуск."
    assert smm.comments(2077) == ["Клієнту надіслано повідомлення про запуск реклами (Олена Коваленко)"]
    [edit] = smm.tg.method_calls("editMessageReplyMarkup")
    assert edit.body["reply_markup"]["inline_keyboard"][0][0]["text"] == "🚀 Реклама запущена · Олена Коваленко"


def test_a4_completed_ads_task_sends_the_report_and_no_approval_buttons(smm):
    add_task(smm.planfix, 2077, "Реклама публікацій, грудень", "Завершена",
             **{"Тип задачі": "Реклама", "Telegram чат": CLIENT_CHAT,
                "Звіт": "Охоплення 48 000, 412 нових підписників, CPC 3,8 грн"})
    smm.planfix_status(2077, "Завершена")
    smm.work()
    [report] = smm.sent(CLIENT_CHAT)
    assert report["text"] == ("🏁 Рекламну кампанію «Реклама публікацій, грудень» завершено.\n"
                              "Звіт: Охоплення 48 000, 412 нових підписників, CPC 3,8 грн\n"
                              "Дякуємо за довіру! Якщо є запитання — пишіть тут, у чаті.")
    assert "reply_markup" not in report


def test_a_plain_button_in_a_group_not_linked_to_a_task_is_answered_and_audited(smm):
    smm.press("send_brief", CLIENT, chat="-1005550001111")
    smm.work()
    assert smm.answers() == ["Цей чат не прив'язаний до жодної задачі."]
    [refused] = smm.audit("button.refused")
    assert refused["reason"] == "chat not linked to any record" and refused["chat"] == "-1005550001111"


def test_telegram_429_is_retried_after_retry_after(smm):
    sent = ask(smm)
    smm.tg.fail("answerCallbackQuery", 429, {"ok": False, "error_code": 429,
                                             "description": "Too Many Requests: retry after 1",
                                             "parameters": {"retry_after": 1}})
    smm.press(smm.buttons(sent)[0]["callback_data"], CLIENT)
    started = time.monotonic()
    smm.work()
    calls = smm.tg.received("POST", r"/bot.*/answerCallbackQuery", failed=True)
    assert [c.status for c in calls] == [429, 200]
    assert time.monotonic() - started >= 1.0
    assert smm.comments(1042) == ["Роботу затверджено клієнтом: Марія Зерно (Telegram)"]   # once


def test_the_longest_token_fits_telegrams_64_bytes_and_reads_back():
    from connectors.base import Connection
    from connectors.telegram import read_choice, sign_choice
    bot = Connection("agency-bot", "telegram", webhook_secret="tg-secret",
                     options={"link": {"crm": "agency-planfix"}})
    record = {"connection": "agency-planfix", "type": "task", "id": "999999999999"}
    data = sign_choice(bot, "a" * 16, record, "abc123", "-1002233445566")
    assert len(data.encode()) <= 64
    assert read_choice(data, bot, "-1002233445566") == {"choice": "a" * 16, "nonce": "abc123", "record": record}
    assert "error" in read_choice(data, bot, "-1002233445567")
    other_secret = Connection("agency-bot", "telegram", webhook_secret="another",
                              options={"link": {"crm": "agency-planfix"}})
    assert "error" in read_choice(data, other_secret, "-1002233445566")
    assert read_choice("send_brief", bot, "-1002233445566") is None       # a plain button


def test_a_press_no_rule_answers_stops_the_spinner_once_without_text(smm):
    """No rule of approvals.yaml handles a plain "send_brief" button in a linked group: crmbridge
    answers it once, silently. A rule that answers itself ("revise") gets no second answer."""
    add_task(smm.planfix, 1042, "Контент-план на грудень", "В роботі", **{"Тип задачі": "Контент-план",
                                                                          "Telegram чат": CLIENT_CHAT})
    smm.link(CLIENT_CHAT, 1042)
    assert smm.press("send_brief", CLIENT, callback_id="cb-plain") == {"accepted": 1, "duplicates": 0}
    smm.work()
    [answer] = smm.tg.method_calls("answerCallbackQuery")
    assert answer.body["callback_query_id"] == "cb-plain" and "text" not in answer.body
    assert smm.comments(1042) == [] and smm.sent() == []
    # the same job runs again (a worker died before finishing it): the answer is not repeated
    [event] = telegram.parse(RawWebhook(headers={}, content_type="application/json",
                                        body=json.dumps(smm.tg_updates[-1]).encode()),
                             smm.rt.connections.connections["agency-bot"])
    smm.rt.backend.enqueue_event(event.to_dict())
    smm.work()
    assert len(smm.tg.method_calls("answerCallbackQuery")) == 1

    sent = ask(smm)
    smm.press(smm.buttons(sent)[1]["callback_data"], CLIENT, callback_id="cb-revise")
    smm.work()
    assert [c.body.get("text") for c in smm.tg.method_calls("answerCallbackQuery")] == [
        None, "Дякуємо! Передали команді на доопрацювання."]
