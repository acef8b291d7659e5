"""The sales mailbox over IMAP against a real server (dovecot on 127.0.0.1, tests/dovecot_server.py):
each new message once, by UID under the folder's UIDVALIDITY, the mark kept in Redis so a restarted
poller neither repeats nor skips; sender, subject, text and attachments in the event."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from email.message import EmailMessage

import pytest

from config.settings import Settings
from connectors.base import Connection, PermanentApiError, RawWebhook, RetryableApiError, Unauthorized
from connectors.intake import imap
from pipeline import clock, mailbox
from tests.conftest import TEST_REDIS_URL
from tests.dovecot_server import PASSWORD, USER, free_port, remove, start_dovecot

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def dovecot():
    server = start_dovecot()
    yield server
    remove(server)


def conn(server, **options) -> Connection:
    return Connection(name="sales-mail", type="imap", credentials={"user": USER, "password": PASSWORD},
                      options={"host": "127.0.0.1", "port": server.port, "security": "none", **options})


def letter(subject: str, text: str | None, sender: str = "Олена Коваль <Olena.Koval@Example.com>",
           attachment: bytes | None = None, html: str | None = None, msgid: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "sales@cake.example.ua", subject
    msg["Date"] = "Mon, 07 Dec 2026 10:15:00 +0200"
    msg["Message-ID"] = msgid or f"<{abs(hash((subject, text)))}@mail.example.com>"
    if text is not None:
        msg.set_content(text, charset="utf-8")
    if html is not None:
        if text is None:
            msg.set_content(html, subtype="html", charset="utf-8")
        else:
            msg.add_alternative(html, subtype="html", charset="utf-8")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="ТЗ торт.pdf")
    return bytes(msg)


def test_each_message_is_read_once_with_sender_subject_text(dovecot):
    client = imap.Client(conn(dovecot, start="all"))
    dovecot.deliver(letter("Замовлення торта", "Добрий день! Торт на 40 гостей.\nМій телефон: 067 123 45 67"))
    validity, upto, found = client.read_new(None, 0)
    [(uid, event)] = found
    assert (upto, uid, event.kind, event.source, event.connection) == (1, 1, "message.received", "imap", "sales-mail")
    d = event.data
    assert (d["name"], d["email"], d["phone"], d["subject"]) == (
        "Олена Коваль", "olena.koval@example.com", "+380671234567", "Замовлення торта")
    assert d["text"].startswith("Добрий день! Торт на 40 гостей.") and d["attachments"] == []
    assert d["source"] == {"door": "imap", "connection": "sales-mail", "form": "INBOX", "page": None}
    assert (d["uid"], d["uidvalidity"], d["to"]) == (1, validity, ["sales@cake.example.ua"])
    assert event.occurred_at == "2026-12-07T10:15:00+02:00"
    assert client.read_new(validity, upto) == (validity, 1, [])      # nothing after UID 1
    dovecot.deliver(letter("Ще питання", "Чи є доставка?"))
    _, upto, [(uid, second)] = client.read_new(validity, upto)
    assert (upto, uid, second.data["subject"]) == (2, 2, "Ще питання")
    assert second.id != event.id


def test_a_letter_with_only_an_attachment_and_an_html_only_letter(dovecot):
    client = imap.Client(conn(dovecot, start="all", attachment_max_bytes=40))
    dovecot.deliver(letter("Скан", None, attachment=PDF))
    dovecot.deliver(letter("HTML", None, html="<p>Передзвоніть <b>сьогодні</b></p>"))
    _, _, [(_, scan), (_, page)] = client.read_new(None, 0)
    [att] = scan.data["attachments"]
    assert (att["name"], att["content_type"], att["size"], att["too_large"]) == ("ТЗ торт.pdf", "application/pdf",
                                                                                len(PDF), True)
    assert "content_base64" not in att and scan.data["text"] is None   # over the limit: described, not carried
    assert page.data["text"] == "Передзвоніть сьогодні"
    small = imap.Client(conn(dovecot, start="all"))
    _, _, [(_, scan), _] = small.read_new(None, 0)
    assert base64.b64decode(scan.data["attachments"][0]["content_base64"]) == PDF
    json.dumps(scan.to_dict(), ensure_ascii=False)   # it can be queued


def test_start_new_reads_only_what_arrives_after_the_first_poll(dovecot):
    dovecot.deliver(letter("Старий лист", "архів"))
    client = imap.Client(conn(dovecot))          # start: new (the default)
    validity, upto, found = client.read_new(None, 0)
    assert (upto, found) == (1, [])
    dovecot.deliver(letter("Новий лист", "заявка"))
    _, upto, [(_, event)] = client.read_new(validity, upto)
    assert (upto, event.data["subject"]) == (2, "Новий лист")


def test_the_mailbox_is_opened_read_only_nothing_is_marked_seen(dovecot):
    dovecot.deliver(letter("Не прочитаний", "текст"))
    imap.Client(conn(dovecot, start="all")).read_new(None, 0)
    session = dovecot.session()
    try:
        session.select("INBOX", readonly=True)
        assert session.uid("SEARCH", "UNSEEN")[1][0] == b"1"
    finally:
        session.logout()


def test_a_wrong_password_is_permanent_and_a_server_down_is_retried(dovecot):
    bad = Connection(name="m", type="imap", credentials={"user": USER, "password": "wrong"},
                     options={"host": "127.0.0.1", "port": dovecot.port, "security": "none"})
    with pytest.raises(PermanentApiError, match="login"):
        imap.Client(bad).read_new(None, 0)
    down = Connection(name="m", type="imap", credentials={"user": USER, "password": PASSWORD},
                      options={"host": "127.0.0.1", "port": free_port(), "security": "none"})
    with pytest.raises(RetryableApiError, match="unreachable"):
        imap.Client(down).read_new(None, 0)
    with pytest.raises(PermanentApiError, match="options.host"):
        imap.Client(Connection(name="m", type="imap")).read_new(None, 0)
    remote = Connection(name="m", type="imap", credentials={"user": USER, "password": PASSWORD},
                        options={"host": "imap.example.com", "security": "none"})
    with pytest.raises(PermanentApiError, match="clear text"):      # refused before any connection
        imap.Client(remote).read_new(None, 0)


def test_a_mailbox_takes_no_webhooks():
    with pytest.raises(Unauthorized, match="IMAP"):
        imap.verify(RawWebhook({}, "application/json", b"{}"), Connection(name="m", type="imap"))


# --- the worker's poll, its mark in Redis, restarts ---------------------------------------------------------

CONNECTIONS = """
connections:
  sales-mail:
    type: imap
    credentials: {{user: "${{IMAP_USER}}", password: "${{IMAP_PASSWORD}}"}}
    options: {{host: 127.0.0.1, port: {port}, security: none, every: 2 minutes, start: all, batch: 2}}
"""


def runtime_for(tmp_path, server):
    """A fresh process's runtime on the same Redis: what a restarted worker has."""
    from webhooks import create_app
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "connections.yaml").write_text(CONNECTIONS.format(port=server.port), encoding="utf-8")
    (tmp_path / "rules" / "none.yaml").write_text("rules: []\n", encoding="utf-8")
    app = create_app(settings=Settings(config_dir=tmp_path, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                       queue_name="crmbridge-test", environ={"IMAP_USER": USER, "IMAP_PASSWORD": PASSWORD}, testing=True))
    return app.extensions["crmbridge"]


def queued(rt) -> list[str]:
    return [job.args[0]["data"]["subject"] for job in rt.backend.queue.get_jobs()]


def test_the_poller_reads_each_message_once_across_restarts_of_itself_and_the_server(tmp_path, dovecot, redis_db):
    for n in range(3):
        dovecot.deliver(letter(f"Заявка {n}", f"текст {n}"))
    rt = runtime_for(tmp_path, dovecot)
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 2, "seen": 0, "last_uid": 2}   # batch: 2
    rt.backend.close()
    # the worker restarts (a deploy, a crash): a new process, the same Redis
    rt = runtime_for(tmp_path, dovecot)
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 1, "seen": 0, "last_uid": 3}
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 0, "seen": 0, "last_uid": 3}
    # the IMAP server restarts too; a new letter arrives meanwhile
    dovecot.stop()
    dovecot.start()
    dovecot.deliver(letter("Заявка 3", "текст 3"))
    rt.backend.close()
    rt = runtime_for(tmp_path, dovecot)
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 1, "seen": 0, "last_uid": 4}
    assert queued(rt) == ["Заявка 0", "Заявка 1", "Заявка 2", "Заявка 3"]
    rt.backend.close()


def test_a_poll_killed_after_queueing_before_its_mark_repeats_nothing(tmp_path, dovecot, redis_db):
    dovecot.deliver(letter("Заявка", "текст"))
    rt = runtime_for(tmp_path, dovecot)
    assert mailbox.poll(rt, "sales-mail")["accepted"] == 1
    mark = rt.keys("mailbox", "sales-mail")
    rt.store.hset(mark, "last_uid", 0)        # as if the worker died between the queue and the mark
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 0, "seen": 1, "last_uid": 1}
    assert len(rt.backend.queue.get_jobs()) == 1
    rt.backend.close()


def test_a_rebuilt_folder_new_uidvalidity_reads_recent_letters_again_once(tmp_path, dovecot, redis_db, monkeypatch):
    dovecot.deliver(letter("Заявка", "текст", msgid="<same@mail.example.com>"))
    rt = runtime_for(tmp_path, dovecot)
    mailbox.poll(rt, "sales-mail")
    mark = rt.keys("mailbox", "sales-mail")
    rt.store.hset(mark, "uidvalidity", 1)     # the folder's UIDVALIDITY is no longer the one we kept
    dovecot.deliver(letter("Нова заявка", "текст 2"))
    assert mailbox.poll(rt, "sales-mail") == {"accepted": 1, "seen": 1, "last_uid": 2}   # by Message-ID
    assert queued(rt) == ["Заявка", "Нова заявка"]
    rt.backend.close()


def test_polls_are_planned_once_per_slot(tmp_path, dovecot, redis_db, monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 12, 7, 10, 1, tzinfo=timezone.utc))
    rt = runtime_for(tmp_path, dovecot)
    assert mailbox.ensure(rt) == ["sales-mail"]
    mailbox.ensure(rt)                        # a second worker starting
    [job_id] = rt.backend.queue.scheduled_job_registry.get_job_ids()
    job = rt.backend.queue.fetch_job(job_id)
    assert (job.func_name, job.args) == (mailbox.JOB, ["sales-mail"])
    assert rt.backend.queue.scheduled_job_registry.get_scheduled_time(job_id) == datetime(2026, 12, 7, 10, 2,
                                                                                         tzinfo=timezone.utc)
    # the job RQ runs by name polls with the runtime the worker gave ensure(), and plans the next
    dovecot.deliver(letter("Заявка", "текст"))
    assert mailbox.poll_job("sales-mail") == {"accepted": 1, "seen": 0, "last_uid": 1}
    assert len(rt.backend.queue.scheduled_job_registry.get_job_ids()) == 1
    rt.backend.close()


def test_a_letter_the_parser_cannot_read_is_still_one_event_and_the_mailbox_goes_on(dovecot, monkeypatch):
    dovecot.deliver(letter("Зламаний", "текст"))
    dovecot.deliver(letter("Нормальний", "текст"))
    real = imap._text_of

    def breaks_on_the_first(msg):
        if "Зламаний" in str(msg["Subject"]):
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
        return real(msg)
    monkeypatch.setattr(imap, "_text_of", breaks_on_the_first)
    client = imap.Client(conn(dovecot, start="all"))
    validity, upto, [(_, broken), (_, fine)] = client.read_new(None, 0)
    assert broken.id == f"sales-mail:uid:{validity}:1" and broken.data["unreadable"].startswith("UnicodeEncodeError")
    assert (broken.data["email"], broken.data["text"]) == (None, None)
    assert fine.data["subject"] == "Нормальний" and upto == 2


def test_wrong_options_are_reported_at_start_up_with_their_line(tmp_path):
    from config.connections import load_connections
    from config.loader import ConfigErrors
    path = tmp_path / "connections.yaml"
    path.write_text("""connections:
  sales-mail:
    type: imap
    credentials: {user: "${IMAP_USER}", password: "${IMAP_PASSWORD}"}
    options:
      host: imap.example.com
      security: none
      port: 99999
      every: 2 working hours
      start: everything
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_connections(path, {"IMAP_USER": "u", "IMAP_PASSWORD": "p"}, shown_as="connections.yaml")
    said = [str(e) for e in caught.value.errors]
    assert said == [
        'connections.yaml:7: connection "sales-mail" → options → security: none sends the password in clear text: '
        "only for a server on this machine (127.0.0.1, ::1, localhost); use ssl or starttls",
        'connections.yaml:8: connection "sales-mail" → options → port: expected a whole number from 1 to 65535, '
        "found 99999",
        'connections.yaml:9: connection "sales-mail" → options → every: expected a duration such as 1 minute, '
        "15 minutes or 1 hour, found '2 working hours'",
        'connections.yaml:10: connection "sales-mail" → options → start: expected new or all, found \'everything\'']
    assert imap.option_problems({"host": "imap.example.com", "every": "15 minutes", "port": "993"}) == []
    assert imap.option_problems({})[0][0] == "host"
