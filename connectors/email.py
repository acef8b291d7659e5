"""Email out over SMTP: warming series, brief reminders, digests. Outbound only.

    connections:
      agency-mail:
        type: email
        options: {host: smtp.example.com, port: 587, security: starttls, from: "Agency <hello@example.com>"}
        credentials: {user: "${SMTP_USER}", password: "${SMTP_PASSWORD}"}

Messages are built with `email.message.EmailMessage`, so
Cyrillic subjects become RFC 2047 encoded-words and bodies UTF-8 with a transfer encoding
the server accepts. Attachments (a document make_document made: `send_email(…, attachments=
[(name, bytes, "application/pdf")])`) go base64 in a multipart/mixed message; a Cyrillic file
name is written as RFC 2231 parameters (`filename*=utf-8''%D0%A0…`) in Content-Disposition and,
for readers that look there (older Outlook), in Content-Type's `name` too (not for the long DOCX
type: Python's folding of it with a parameter breaks the type). (An RFC 2047
encoded-word in a parameter is not standard, and Python's email package re-folds it to RFC 2231.) SMTP reply codes split like HTTP statuses (RFC 5321 §4.2.1): 4yz is
"transient negative completion" (try again: greylisting, mailbox busy, 421 service not
available), 5yz is permanent.
"""
from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from typing import Any

from connectors.base import (
    BaseClient,
    Connection,
    Event,
    PermanentApiError,
    RawWebhook,
    RetryableApiError,
    Unauthorized,
    UncertainApiError,
)

log = logging.getLogger("crmbridge.connectors.email")

SOURCE = "email"
CONTENT_TYPES: tuple[str, ...] = ()
OUTBOUND_ONLY = True          # nothing calls us: no webhook secret needed
SECURITY = ("starttls", "ssl", "none")


def verify(raw: RawWebhook, connection: Connection) -> None:
    """An email connection receives nothing over HTTP."""
    raise Unauthorized(f"connection {connection.name!r} is an outbound email connection; it takes no webhooks")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    return []


MAX_ATTACHMENTS = 20 * 1024 * 1024   # bytes of files in one message (base64 makes it 4/3 larger: ~27 MB,
                                     # under Gmail's 25 MB + headroom servers allow; more is refused here)
Attachment = tuple[str, bytes, str]  # (file name, content, MIME type)


def build_message(sender: str, to: list[str], subject: str, text: str, html: str | None = None,
                  domain: str | None = None, attachments: list[Attachment] | None = None) -> EmailMessage:
    """A MIME message: text/plain, or multipart/alternative with an HTML part, and with
    attachments multipart/mixed around it; UTF-8 throughout."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=domain)
    msg.set_content(text, charset="utf-8")
    if html:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    for name, content, mime in attachments or ():
        maintype, _, subtype = (mime or "application/octet-stream").partition("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype or "octet-stream", filename=name)
        if len(mime) <= 40:   # Python folds a longer type with parameters into encoded-words that break it
            msg.get_payload()[-1].set_param("name", name, header="Content-Type")   # (the DOCX type): left out
    return msg


def recipients(to: str | list[str]) -> list[str]:
    """'a@x, b@y' or a list → addresses; refuses what is not an address."""
    items = to if isinstance(to, list) else str(to).replace(";", ",").split(",")
    found = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        name, addr = parseaddr(item)
        if "@" not in addr or " " in addr:
            raise PermanentApiError(f"send_email: {item!r} is not an email address")
        found.append(formataddr((name, addr)) if name else addr)
    if not found:
        raise PermanentApiError("send_email: no recipient (the 'to' address is empty)")
    return found


class Client(BaseClient):
    """One SMTP account. `send_email` opens a connection, sends one message, and closes it."""

    capabilities = frozenset({"send_email"})
    rate_per_second = 2.0
    timeout = 20.0
    docs_url = "https://www.rfc-editor.org/rfc/rfc5321"

    @property
    def sender(self) -> str:
        sender = str(self.connection.options.get("from") or self.connection.credentials.get("user") or "")
        if "@" not in sender:
            raise PermanentApiError(f"connection {self.connection.name!r}: options → from: expected a sender "
                                    f"address such as 'Agency <hello@example.com>', found {sender!r}")
        return sender

    def send_email(self, to: str | list[str], subject: str, text: str, html: str | None = None,
                   attachments: list[Attachment] | None = None) -> dict[str, Any]:
        """Send one message; returns {"message_id", "to"}. 4xx → retryable, 5xx → permanent.
        `attachments`: (file name, bytes, MIME type), up to MAX_ATTACHMENTS bytes together."""
        addresses = recipients(to)
        size = sum(len(content) for _, content, _ in attachments or ())
        if size > MAX_ATTACHMENTS:
            raise PermanentApiError(f"send_email: attachments of {size} bytes, expected at most {MAX_ATTACHMENTS} "
                                    f"(mail servers refuse larger messages)")
        domain = parseaddr(self.sender)[1].rpartition("@")[2] or None
        msg = build_message(self.sender, addresses, subject, text, html, domain=domain, attachments=attachments)
        if self.record_only:
            files = [{"name": name, "size": len(content), "type": mime} for name, content, mime in attachments or ()]
            self.request("SMTP", f"smtp://{self._host()}:{self._port()}",
                         json_body={"to": addresses, "subject": subject, "text": text, "html": html,
                                    **({"attachments": files} if files else {})},
                         url=f"smtp://{self._host()}:{self._port()}")
            return {"message_id": msg["Message-ID"], "to": addresses, "recorded": True}
        if self.limiter:
            self.limiter()
        try:
            smtp = self._smtp()
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentApiError(f"SMTP login refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                                    status=exc.smtp_code) from None
        except smtplib.SMTPResponseException as exc:
            raise _reply_error("SMTP", exc.smtp_code, exc.smtp_error) from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:   # nothing was sent yet
            raise RetryableApiError(f"SMTP {self._host()}:{self._port()}: {type(exc).__name__}: {exc}") from None
        try:
            with smtp:
                if self.sending:   # the worker's mark: the message is about to leave
                    self.sending()
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _recipients_error(exc.recipients) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentApiError(f"SMTP login refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                                    status=exc.smtp_code) from None
        except smtplib.SMTPResponseException as exc:
            raise _reply_error("SMTP", exc.smtp_code, exc.smtp_error) from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            # the connection broke in the middle of the transaction: the server may have taken it
            raise UncertainApiError(f"SMTP {self._host()}:{self._port()}: {type(exc).__name__} while sending: "
                                    f"{exc}") from None
        if refused:  # some recipients refused, the rest accepted: the message went out
            log.warning("%s: refused recipients %s", self.connection.name, refused)
        return {"message_id": msg["Message-ID"], "to": addresses,
                "refused": sorted(refused) if refused else []}

    def _host(self) -> str:
        return str(self.connection.options.get("host") or "localhost")

    def _port(self) -> int:
        security = self._security()
        default = {"ssl": 465, "starttls": 587, "none": 25}[security]
        return int(self.connection.options.get("port") or default)

    def _security(self) -> str:
        value = str(self.connection.options.get("security") or "starttls").lower()
        if value not in SECURITY:
            raise PermanentApiError(f"connection {self.connection.name!r}: options → security: expected one of "
                                    f"{', '.join(SECURITY)}, found {value!r}")
        return value

    def _smtp(self) -> smtplib.SMTP:
        """A connected, logged-in session (STARTTLS or implicit TLS unless security: none)."""
        security = self._security()
        context = ssl.create_default_context()
        if security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self._host(), self._port(), timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self._host(), self._port(), timeout=self.timeout)
        try:
            if security == "starttls":
                smtp.starttls(context=context)
            user, password = self.connection.credentials.get("user"), self.connection.credentials.get("password")
            if user and password:
                smtp.login(user, password)
        except BaseException:
            smtp.close()
            raise
        return smtp


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reply_error(what: str, code: int, message: Any) -> Exception:
    text = f"{what}: {code} {_text(message)}"
    if 400 <= code < 500:
        return RetryableApiError(text, status=code)
    return PermanentApiError(text, status=code)


def _recipients_error(refused: dict[str, tuple[int, bytes]]) -> Exception:
    """Every recipient refused: transient if any refusal was a 4xx (greylisting, mailbox busy)."""
    shown = "; ".join(f"{addr}: {code} {_text(msg)}" for addr, (code, msg) in refused.items())
    if any(400 <= code < 500 for code, _ in refused.values()):
        return RetryableApiError(f"SMTP recipients refused for now: {shown}", status=450)
    return PermanentApiError(f"SMTP recipients refused: {shown}", status=550)

