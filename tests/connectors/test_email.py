"""The email connector against a real SMTP server (aiosmtpd) on 127.0.0.1."""
from __future__ import annotations

from email.header import decode_header, make_header

import pytest

from connectors import email as mail
from connectors.base import (
    Connection,
    PermanentApiError,
    RawWebhook,
    RetryableApiError,
    Unauthorized,
)
from tests.fakes_telephony import FakeSmtp


@pytest.fixture
def smtp():
    server = FakeSmtp().start()
    yield server
    server.stop()


def connection(smtp: FakeSmtp, password: str | None = None, **options) -> Connection:
    return Connection(name="agency-mail", type="email",
                      credentials={"user": smtp.user, "password": password or smtp.password},
                      options={"host": "127.0.0.1", "port": smtp.port, "security": "none",
                               "from": "Агентство «Север» <hello@agency.example>", **options})


def test_a_russian_message_arrives_encoded_and_readable(smtp):
    client = mail.Client(connection(smtp))
    result = client.send_email("client@example.com", "Ждём ваш бриф — «Весна 2027»",
                               "Здравствуйте!\nНапоминаем про бриф. Дякуємо!", html="<p>Здравствуйте!</p>")
    [got] = smtp.wait_for(1)
    msg = got["message"]
    assert got["login"] == smtp.user and got["to"] == ["client@example.com"]
    assert str(make_header(decode_header(msg["Subject"]))) == "Ждём ваш бриф — «Весна 2027»"
    raw_subject = got["raw"].split(b"Subject:")[1].split(b"\n")[0]
    assert raw_subject.decode("ascii").strip().lower().startswith("=?utf-8?")  # RFC 2047, not raw bytes
    assert msg["From"].addresses[0].display_name == "Агентство «Север»"
    assert FakeSmtp.text_of(msg).splitlines() == ["Здравствуйте!", "Напоминаем про бриф. Дякуємо!"]
    assert msg.get_body(preferencelist=("html",)).get_content().strip() == "<p>Здравствуйте!</p>"
    assert result["message_id"] == msg["Message-ID"] and msg["Message-ID"].endswith("@agency.example>")


def test_a_4xx_refusal_is_retryable_and_a_wrong_password_is_not(smtp):
    smtp.refuse_next(1)
    with pytest.raises(RetryableApiError, match="451 4.7.1 Greylisted"):
        mail.Client(connection(smtp)).send_email("client@example.com", "Тема", "Текст")
    mail.Client(connection(smtp)).send_email("client@example.com", "Тема", "Текст")
    assert len(smtp.wait_for(1)) == 1 and smtp.refused == 1
    with pytest.raises(PermanentApiError, match="SMTP login refused: 535"):
        mail.Client(connection(smtp, password="wrong")).send_email("client@example.com", "Тема", "Текст")


def test_no_server_is_retryable_and_a_bad_address_is_permanent(smtp):
    conn = connection(smtp)
    closed = Connection(**{**conn.__dict__, "options": {**conn.options, "port": 1}})
    with pytest.raises(RetryableApiError, match="127.0.0.1:1"):
        mail.Client(closed).send_email("client@example.com", "Тема", "Текст")
    with pytest.raises(PermanentApiError, match="not an email address"):
        mail.Client(conn).send_email("not an address", "Тема", "Текст")
    with pytest.raises(PermanentApiError, match="no recipient"):
        mail.Client(conn).send_email("", "Тема", "Текст")


def test_record_only_sends_nothing(smtp):
    calls = []
    conn = Connection(name="agency-mail", type="email", options={"host": "127.0.0.1", "port": smtp.port,
                                                                   "from": "hello@agency.example"})
    result = mail.Client(conn, recorder=lambda *a: calls.append(a)).send_email("a@example.com", "Тема", "Текст")
    assert result["recorded"] and calls[0][2]["subject"] == "Тема" and smtp.messages == []


def test_an_email_connection_takes_no_webhooks(smtp):
    with pytest.raises(Unauthorized, match="outbound email connection"):
        mail.verify(RawWebhook(headers={}, content_type="application/json", body=b"{}"), connection(smtp))


def test_outbound_connections_need_no_webhook_secret_inbound_ones_do(tmp_path):
    from config.connections import load_connections
    from config.loader import ConfigErrors
    path = tmp_path / "connections.yaml"
    path.write_text("connections:\n"
                    "  mail: {type: email, credentials: {user: '${SMTP_USER}', password: '${SMTP_PASSWORD}'},\n"
                    "         options: {host: smtp.example.com}}\n"
                    "  ads: {type: webhook, base_url: 'https://hooks.example.com/a'}\n"
                    "  pbx: {type: zadarma, credentials: {key: '${ZK}', secret: '${ZS}'}}\n", encoding="utf-8")
    env = {"SMTP_USER": "u", "SMTP_PASSWORD": "p", "ZK": "k", "ZS": "s"}
    with pytest.raises(ConfigErrors) as exc:
        load_connections(path, env, shown_as="connections.yaml")
    assert [str(e) for e in exc.value.errors] == [
        ('connections.yaml:5: connection "pbx" → webhook_secret: required; expected an environment reference '
         "such as ${MY_SECRET}")]
    path.write_text(path.read_text().replace("secret: '${ZS}'}}", "secret: '${ZS}'}, webhook_secret: '${ZS}'}"))
    loaded = load_connections(path, env)
    assert sorted(loaded.connections) == ["ads", "mail", "pbx"] and loaded.warnings == []


def test_a_document_arrives_attached_with_its_cyrillic_name(smtp):
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40   # binary: base64, byte for byte
    result = mail.Client(connection(smtp)).send_email(
        "client@example.com", "Рахунок № 2027/015", "Добрий день! Рахунок у вкладенні.",
        attachments=[("Рахунок 2027-015.pdf", pdf, "application/pdf")])
    [got] = smtp.wait_for(1)
    msg = got["message"]
    assert msg.get_content_type() == "multipart/mixed" and result["to"] == ["client@example.com"]
    assert FakeSmtp.text_of(msg).strip() == "Добрий день! Рахунок у вкладенні."
    [part] = list(msg.iter_attachments())
    assert part.get_content_type() == "application/pdf" and part["Content-Transfer-Encoding"] == "base64"
    assert part.get_filename() == "Рахунок 2027-015.pdf" and part.get_param("name") == "Рахунок 2027-015.pdf"
    assert part.get_content() == pdf
    head = got["raw"].split(b"Content-Disposition:")[1].split(b"\r\n\r\n")[0].split(b"\n\n")[0]
    assert b"filename*=utf-8''%D0%A0%D0%B0%D1%85" in head and head.isascii()   # RFC 2231, not raw UTF-8


def test_attachments_past_the_limit_are_refused_before_connecting(smtp, monkeypatch):
    monkeypatch.setattr(mail, "MAX_ATTACHMENTS", 1000)
    with pytest.raises(PermanentApiError, match="attachments of 1001 bytes"):
        mail.Client(connection(smtp)).send_email("client@example.com", "Тема", "Текст",
                                                 attachments=[("a.pdf", b"x" * 1001, "application/pdf")])
    assert smtp.messages == []


def test_record_only_records_the_attachments_names_not_their_bytes(smtp):
    calls = []
    conn = Connection(name="agency-mail", type="email", options={"host": "127.0.0.1", "port": smtp.port,
                                                                   "from": "hello@agency.example"})
    mail.Client(conn, recorder=lambda *a: calls.append(a)).send_email(
        "a@example.com", "Тема", "Текст", attachments=[("Акт 2027-001.pdf", b"%PDF", "application/pdf")])
    assert calls[0][2]["attachments"] == [{"name": "Акт 2027-001.pdf", "size": 4, "type": "application/pdf"}]
