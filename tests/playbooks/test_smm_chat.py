"""Playbook A5 (two-way chat sync) and `/link`, end to end: Telegram updates and Planfix comment
scenario requests into the app, a real RQ worker on Redis, fake Planfix and Telegram servers."""
from __future__ import annotations

import json

from tests.playbooks.smm_links_harness import (
    CLIENT,
    CLIENT_CHAT,
    OLENA_PM,
    STAFF_CHAT,
    add_task,
    load,
    smm_fixture,  # noqa: F401  (the `smm` fixture)
)

PHOTO = bytes(range(256)) * 8                     # binary content, carried byte for byte
DOCX = b"PK\x03\x04" + "Бриф: Кав'ярня «Зерно»".encode() + b"\x00\xff" * 64


def linked_task(smm, number: int = 1042) -> None:
    add_task(smm.planfix, number, "Контент-план на грудень", "В роботі",
             **{"Тип задачі": "Контент-план", "Telegram чат": CLIENT_CHAT})
    smm.link(CLIENT_CHAT, number)


def test_link_command_writes_the_chat_to_the_task_and_links_the_group(smm):
    add_task(smm.planfix, 1042, "Контент-план на грудень", "В роботі", **{"Тип задачі": "Контент-план"})
    smm.message("/link 1042", OLENA_PM)
    smm.work()
    [update] = [c.body for c in smm.planfix.received("POST", "/rest/task/1042")]
    assert update == {"customFieldData": [{"field": {"id": 106}, "value": CLIENT_CHAT}]}
    assert smm.sent(CLIENT_CHAT)[-1]["text"] == "✅ Чат прив'язано до задачі №1042 «Контент-план на грудень»."
    [linked] = smm.audit("chat.linked")
    assert linked["task"] == "1042"
    # from now on the group's messages land on the task
    smm.message("Доброго дня! Коли буде контент-план?", CLIENT)
    smm.work()
    [comment] = smm.comments(1042)
    assert comment.startswith("💬 Telegram · Марія Зерно · ") and comment.endswith("<br>Доброго дня! Коли буде контент-план?")


def test_link_is_refused_to_non_staff_and_for_a_task_that_does_not_exist(smm):
    smm.message("/link 1042", CLIENT)
    smm.message("/link@smm_agency_bot 4040", OLENA_PM)
    smm.message("/link", OLENA_PM)
    smm.work()
    assert [m["text"] for m in smm.sent(CLIENT_CHAT)] == [
        "🔒 Прив'язати чат може лише співробітник агенції.",
        "Задачу №4040 не знайдено: GET /task/4040: HTTP 400: Planfix code 1000: task 4040 not found",
        "Напишіть: /link <номер задачі>"]
    assert not smm.planfix.received("POST", "/rest/task/.*")
    assert smm.rt.store.get(smm.rt.keys.prefix + f"link:agency-bot:{CLIENT_CHAT}") is None


def test_client_photo_and_document_become_a_task_comment_with_the_files(smm):
    linked_task(smm)
    photo_update = load("telegram/message_group_photo.json")["message"]["photo"][-1]
    smm.tg.add_file(photo_update["file_id"], "photos/file_12.jpg", PHOTO)
    smm.message("Ось фото для першого допису", CLIENT, keep_media=True)
    doc_id = load("telegram/message_document.json")["message"]["document"]["file_id"]
    smm.tg.add_file(doc_id, "documents/file_7.docx", DOCX)
    smm.message(None, CLIENT, base="telegram/message_document.json", keep_media=True)
    smm.work()

    first, second = smm.planfix.comments[("task", 1042)]
    assert first["description"].startswith("💬 Telegram · Марія Зерно · 06.11.2025 10:18")   # the message's time, Kyiv
    assert first["description"].endswith("<br>Ось фото для першого допису")
    assert second["description"].startswith("💬 Telegram · Марія Зерно · 30.03.2023 10:01")
    uploads = {f["name"]: f["content"] for f in smm.planfix.files.values()}
    assert uploads == {"photo_AQADHgxrG21rYFR-.jpg": PHOTO, "Ссылка6.docx": DOCX}
    by_name = {f["name"]: f["id"] for f in smm.planfix.files.values()}
    assert first["files"] == [{"id": by_name["photo_AQADHgxrG21rYFR-.jpg"]}]
    assert second["files"] == [{"id": by_name["Ссылка6.docx"]}]
    assert smm.sent() == []                       # nothing goes back to the chat


def test_comment_for_the_client_goes_to_the_group_with_its_files_and_own_comments_never_echo(smm):
    linked_task(smm)
    smm.planfix.add_file(88120, "Контент-план грудень.pdf", b"%PDF-1.7\n" + bytes(300))
    body = load("planfix/task_comment_added.json")
    body["comment"].update(for_client="0", text="<p>#клієнту Добрий день! Контент-план готовий, перегляньте, будь ласка.</p>")
    body["files"] = body["files"][:1]
    smm.post_planfix(body)
    smm.work()
    [message] = smm.sent(CLIENT_CHAT)
    assert message["text"] == "Добрий день! Контент-план готовий, перегляньте, будь ласка."
    [doc] = smm.tg.uploads
    assert (doc["method"], doc["filename"], doc["content"]) == ("sendDocument", "Контент-план грудень.pdf",
                                                                  b"%PDF-1.7\n" + bytes(300))

    # an internal comment stays in Planfix
    internal = load("planfix/task_comment_added.json")
    internal["comment"].update(id="55732", for_client="0", text="Внутрішнє: перевірити бюджет")
    internal.pop("files")
    smm.post_planfix(internal)
    # a client message becomes a comment; Planfix's comment scenario then reports that comment
    smm.message("Дякую, дивлюся! #клієнту", CLIENT)
    smm.work()
    [own] = smm.planfix.comments[("task", 1042)]
    assert own["description"].endswith("<br>Дякую, дивлюся! #клієнту")
    echo = load("planfix/task_comment_added.json")
    # known by its id alone: even a text without the bridge's "💬 Telegram" heading is not sent back
    echo["comment"].update(id=str(own["id"]), for_client="0", text="#клієнту Дякую, дивлюся!")
    echo.pop("files")
    smm.post_planfix(echo)
    smm.work()
    assert len(smm.sent(CLIENT_CHAT)) == 1 and len(smm.tg.uploads) == 1


def test_the_marker_alone_stops_an_echo_whose_id_is_not_known_yet(smm):
    """The comment scenario may call before the bridge has recorded the comment's id."""
    linked_task(smm)
    echo = load("planfix/task_comment_added.json")
    echo["comment"].update(id="99999", for_client="1", text="💬 Telegram · Марія Зерно · 24.11.2025 14:20<br>#клієнту")
    echo.pop("files")
    smm.post_planfix(echo)
    smm.work()
    assert smm.sent() == []


def test_messages_from_unlinked_groups_are_kept_and_reported_and_bots_are_ignored(smm):
    smm.message("Добрий день, ми нові клієнти!", CLIENT, chat="-1007770001111")
    bot = {"id": 6097692400, "is_bot": True, "first_name": "OtherBot", "username": "other_bot"}
    linked_task(smm)
    smm.message("Автоматичне повідомлення", bot)
    smm.work()
    [notice] = smm.sent(STAFF_CHAT)
    assert notice["text"] == ("📭 Повідомлення з неприв'язаного чату «SMM · Кав'ярня «Зерно»» від Марія Зерно:\n"
                              "Добрий день, ми нові клієнти!")
    [kept] = smm.audit("chat.unlinked")
    assert kept["text"] == "Добрий день, ми нові клієнти!" and kept["chat"] == "-1007770001111"
    assert smm.audit("message.ignored") and smm.comments(1042) == []


def test_link_survives_as_the_task_field(smm):
    """The field /link writes is what the Planfix → chat direction reads (no Redis needed there)."""
    add_task(smm.planfix, 1042, "Контент-план на грудень", "В роботі", **{"Тип задачі": "Контент-план"})
    smm.message("/link 1042", OLENA_PM)
    smm.work()
    stored = json.loads(smm.rt.store.get(smm.rt.keys.prefix + f"link:agency-bot:{CLIENT_CHAT}"))
    assert stored == {"connection": "agency-planfix", "type": "task", "id": "1042"}
    assert [d["value"] for d in smm.planfix.tasks[1042]["customFieldData"] if d["field"]["id"] == 106] == [CLIENT_CHAT]


def _link_update(smm, text: str, who: dict) -> dict:
    """The Telegram update /link arrives in (shape: message_group_photo.json, a real group capture)."""
    update = load("telegram/message_group_photo.json")
    update["update_id"] = next(smm.updates)
    msg = update["message"]
    for key in ("photo", "caption"):
        msg.pop(key, None)
    msg.update({"text": text, "from": who, "message_id": 7000 + update["update_id"],
                "chat": {"id": int(CLIENT_CHAT), "title": "SMM · Кав'ярня «Зерно»", "type": "supergroup"}})
    return update


def test_link_run_again_after_a_crash_writes_and_confirms_once(smm):
    """/link's field write and reply are planned steps with idempotency keys: a job that failed
    after the write (Telegram refused the reply: a 429 asking for longer than a job waits) and runs
    again only sends the reply, once. (A 5xx to a message would be uncertain: parked, not resent.)"""
    from connectors import telegram
    from connectors.base import RawWebhook
    add_task(smm.planfix, 1042, "Контент-план на грудень", "В роботі", **{"Тип задачі": "Контент-план"})
    smm.tg.fail("sendMessage", 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 120",
                                     "parameters": {"retry_after": 120}})
    update = _link_update(smm, "/link 1042", OLENA_PM)
    smm.post_tg(update)
    smm.work()
    assert len(smm.planfix.received("POST", "/rest/task/1042")) == 1 and smm.sent(CLIENT_CHAT) == []
    [event] = telegram.parse(RawWebhook(headers={}, content_type="application/json",
                                        body=json.dumps(update).encode()), smm.rt.connections.connections["agency-bot"])
    for _ in range(2):  # the job runs again (RQ requeues it, or the dead letter is replayed), twice
        smm.rt.backend.enqueue_event(event.to_dict())
        smm.work()
    assert len(smm.planfix.received("POST", "/rest/task/1042")) == 1
    assert [m["text"] for m in smm.sent(CLIENT_CHAT)] == ["✅ Чат прив'язано до задачі №1042 «Контент-план на грудень»."]
    assert [a["reason"] for a in smm.audit("action.skipped")].count("already done") >= 3


def test_relinking_clears_the_old_tasks_field_and_a_taken_task_leaves_its_old_group(smm):
    add_task(smm.planfix, 1042, "Контент-план на грудень", "В роботі", **{"Тип задачі": "Контент-план"})
    add_task(smm.planfix, 1050, "Комунікація", "В роботі", **{"Тип задачі": "Комунікація"})
    smm.message("/link 1042", OLENA_PM)
    smm.work()
    smm.message("/link 1050", OLENA_PM)               # the PM picked the wrong task first
    smm.work()
    assert [(c.path, c.body) for c in smm.planfix.received("POST", r"/rest/task/10(42|50)")] == [
        ("/rest/task/1042", {"customFieldData": [{"field": {"id": 106}, "value": CLIENT_CHAT}]}),
        ("/rest/task/1042", {"customFieldData": [{"field": {"id": 106}, "value": ""}]}),
        ("/rest/task/1050", {"customFieldData": [{"field": {"id": 106}, "value": CLIENT_CHAT}]})]
    assert json.loads(smm.rt.store.get(smm.rt.keys.prefix + f"link:agency-bot:{CLIENT_CHAT}"))["id"] == "1050"

    # another group is linked to task 1050: this group is unlinked (its messages would land on a
    # task whose field names the other group), and 1050's field now names the other group
    other = "-1003334445556"
    smm.message("/link 1050", OLENA_PM, chat=other)
    smm.work()
    assert smm.rt.store.get(smm.rt.keys.prefix + f"link:agency-bot:{CLIENT_CHAT}") is None
    assert smm.planfix.received("POST", "/rest/task/1050")[-1].body == {
        "customFieldData": [{"field": {"id": 106}, "value": other}]}
    [gone] = [a for a in smm.audit("chat.unlinked") if a.get("reason")]
    assert gone["chat"] == CLIENT_CHAT and gone["reason"] == f"task 1050 linked to chat {other}"


def test_chat_sync_reads_no_task_per_message_unless_a_rule_needs_it(smm):
    """Planfix allows one request a second. Chat sync writes a message to the task from the event
    and the linked task's number: no GET /task per message. A rule that does read the task (its
    name, its fields) brings the read back, once per message."""
    linked_task(smm)
    for text in ("Доброго дня!", "Коли буде контент-план?", "Дякую!"):
        smm.message(text, CLIENT)
    smm.work()
    assert [c.split("<br>")[-1] for c in smm.comments(1042)] == ["Доброго дня!", "Коли буде контент-план?", "Дякую!"]
    assert smm.planfix.received("GET", r"/rest/task/1042") == []
    assert [c.method for c in smm.planfix.received(path=r"/rest/task/1042/comments/")] == ["POST"] * 3

    from rules import MODULES
    from rules.files import load_rules
    extra = smm.rt.settings.config_dir / "rules" / "urgent.yaml"
    extra.write_text("""
defaults: {connection: agency-planfix}
rules:
  - name: client messages on ads tasks go to the staff chat too
    on: {event: message.received, connection: agency-bot, entity: task}
    if:
      - field: "Тип задачі"
        equals: "Реклама"
    do:
      - send_message: {connection: agency-bot, chat: staff, text: "{{ entity.name }}: {{ data.text }}"}
""", encoding="utf-8")
    smm.rt.ruleset = load_rules(extra.parent, MODULES, calendars=smm.rt.connections.calendars,
                                connections=smm.rt.connections.connections, base=extra.parent.parent)
    smm.message("А реклама вже йде?", CLIENT)
    smm.work()
    assert len(smm.planfix.received("GET", r"/rest/task/1042")) == 1
    assert smm.comments(1042)[-1].endswith("<br>А реклама вже йде?") and smm.sent(STAFF_CHAT) == []
