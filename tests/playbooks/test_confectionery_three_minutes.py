"""Playbook B4 end to end: a client's message unanswered for 3 working minutes alerts the manager of
that Instagram account, still unanswered at 10 the head; counted from the FIRST unanswered message
(the rules' `restart: false`), in the shop's working hours only (10:00-19:00 Kyiv, Monday to
Saturday); any answer — in umnico, or a Planfix comment sent through umnico — cancels both.

umnico's webhooks go through the Flask app into a real RQ worker; timers fire with the clock set
(tests/playbooks/confectionery.py tick); alerts are checked on the fake Telegram's sendMessage."""
from __future__ import annotations

import json

from tests.conftest import PAYLOADS
from tests.playbooks.confectionery import (  # noqa: F401 - fixtures
    HEAD_CHAT, IVAN_CHAT, OLENA_CHAT, at, bodies, config_dir, env, fake_inbox, fake_planfix, kyiv, post_inbox,
    post_planfix, telegram_texts, tick, timers, umnico_incoming, umnico_outgoing,
)

LEAD = 64950001
MANAGER, HEAD = "B4 3 хвилини без відповіді → менеджер", "B4 10 хвилин без відповіді → керівник"


def test_b4_counted_from_the_first_unanswered_message_manager_then_head(client, runtime, fake_tg, at):
    at(kyiv(2026, 12, 8, 11, 0, 5))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день! Торт на суботу можна?", kyiv(2026, 12, 8, 11, 0, 5),
                                                new=True))
    [pending] = timers(runtime, MANAGER)
    at(kyiv(2026, 12, 8, 11, 2))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Алло?", kyiv(2026, 12, 8, 11, 2)))
    assert timers(runtime, MANAGER) == [pending]                     # the second message did not move it
    tick(runtime, at, kyiv(2026, 12, 8, 11, 3, 4))
    assert telegram_texts(fake_tg, OLENA_CHAT) == []
    tick(runtime, at, kyiv(2026, 12, 8, 11, 3, 5))                   # 3 minutes after the FIRST message
    assert telegram_texts(fake_tg, OLENA_CHAT) == [
        "⏰ Клієнт чекає на відповідь 3 хвилини: olena.solodka в @solodka.mriya.kyiv: «Добрий день! Торт на суботу можна?»"]
    assert telegram_texts(fake_tg, HEAD_CHAT) == []
    tick(runtime, at, kyiv(2026, 12, 8, 11, 10, 5))
    assert telegram_texts(fake_tg, HEAD_CHAT) == [
        "🔥 Без відповіді 10 хвилин: olena.solodka в @solodka.mriya.kyiv: «Добрий день! Торт на суботу можна?»"]
    assert len(telegram_texts(fake_tg, OLENA_CHAT)) == 1


def test_b4_an_answer_in_umnico_cancels_both_and_the_next_message_counts_anew(client, runtime, fake_tg, at):
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Скільки коштує?", kyiv(2026, 12, 8, 11, 0), new=True))
    at(kyiv(2026, 12, 8, 11, 2))
    post_inbox(client, runtime, umnico_outgoing(LEAD, "1400 грн 🎂", kyiv(2026, 12, 8, 11, 2)))
    assert timers(runtime, "B4") == []
    tick(runtime, at, kyiv(2026, 12, 8, 11, 30))
    assert fake_tg.method_calls("sendMessage") == []
    at(kyiv(2026, 12, 8, 11, 31))
    post_inbox(client, runtime, umnico_incoming(LEAD, "А доставка?", kyiv(2026, 12, 8, 11, 31)))
    tick(runtime, at, kyiv(2026, 12, 8, 11, 34))
    assert telegram_texts(fake_tg, OLENA_CHAT) == [
        "⏰ Клієнт чекає на відповідь 3 хвилини: olena.solodka в @solodka.mriya.kyiv: «А доставка?»"]


def test_b4_working_hours_only_1859_fires_at_1002_next_working_day(client, runtime, fake_tg, at):
    at(kyiv(2026, 12, 8, 18, 59))                                    # Tuesday, hours to 19:00
    post_inbox(client, runtime, umnico_incoming(LEAD, "Ще працюєте?", kyiv(2026, 12, 8, 18, 59),
                                                account="solodka.mriya.lviv", new=True))
    fires = {t["rule"]: t["fire_at"] for t in timers(runtime, "B4")}
    assert fires == {MANAGER: kyiv(2026, 12, 9, 10, 2).isoformat(), HEAD: kyiv(2026, 12, 9, 10, 9).isoformat()}
    tick(runtime, at, kyiv(2026, 12, 9, 10, 1))
    assert fake_tg.method_calls("sendMessage") == []
    tick(runtime, at, kyiv(2026, 12, 9, 10, 2))
    assert telegram_texts(fake_tg, IVAN_CHAT) == [                   # solodka.mriya.lviv is Іван's
        "⏰ Клієнт чекає на відповідь 3 хвилини: olena.solodka в @solodka.mriya.lviv: «Ще працюєте?»"]


def test_b4_an_answer_from_planfix_goes_through_umnico_and_cancels(client, runtime, fake_tg, fake_inbox, fake_planfix, at):
    fake_inbox.add_lead({**json.loads((PAYLOADS / "inbox" / "api_lead.json").read_text(encoding="utf-8")), "id": LEAD},
                        json.loads((PAYLOADS / "inbox" / "api_sources.json").read_text(encoding="utf-8")))
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Можна фото торта?", kyiv(2026, 12, 8, 11, 0), new=True))
    order = max(fake_planfix.tasks)
    at(kyiv(2026, 12, 8, 11, 1))
    post_planfix(client, runtime, {"event": "task.comment_added", "at": "2026-12-08T11:01:00+02:00",
                                   "task": {"id": str(order)},
                                   "comment": {"id": "55801", "author": "Олена Коваленко",
                                               "text": "<p>#клієнту Звісно! Надсилаю каталог.</p>"}})
    [sent] = fake_inbox.sent(LEAD)
    assert sent.body["message"] == {"text": "Звісно! Надсилаю каталог."} and sent.body["userId"] == 15
    assert sent.body["customId"].startswith("crmbridge:")
    # umnico reports the message crmbridge sent as an outgoing one (its customId comes back)
    echo = umnico_outgoing(LEAD, "Звісно! Надсилаю каталог.", kyiv(2026, 12, 8, 11, 1, 2), by_bridge=True)
    echo["message"]["customId"] = sent.body["customId"]
    post_inbox(client, runtime, echo)
    assert timers(runtime, "B4") == []
    tick(runtime, at, kyiv(2026, 12, 8, 11, 30))
    assert fake_tg.method_calls("sendMessage") == []

