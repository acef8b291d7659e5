"""The sales mailbox over IMAP: each new message → one `message.received` event with the lead in it.

    sales-mail:
      type: imap
      credentials: {user: "${IMAP_USER}", password: "${IMAP_PASSWORD}"}
      options:
        host: imap.example.com
        port: 993                 # default: 993 with ssl, 143 otherwise
        security: ssl             # ssl (default), starttls or none (none: only on 127.0.0.1)
        folder: INBOX
        every: 1 minute           # how often the worker reads it (pipeline/mailbox.py)
        start: new                # new (default): mail arriving after the first read; all: what is there too
        batch: 50                 # messages read per poll at most; the rest at the next one
        attachment_max_bytes: 262144   # an attachment up to this is carried in the event (base64)

Nothing calls in: the worker polls (pipeline/mailbox.py keeps where it stopped). A message is found
by its UID in the folder, which RFC 3501 §2.3.1.1 keeps unique and ascending as long as the
folder's UIDVALIDITY stays the same; the folder is opened read-only (EXAMINE) and read with
BODY.PEEK[], so no message is marked \\Seen by the bridge. The event's id is the message's
Message-ID (the same letter seen twice, e.g. after the folder's UIDVALIDITY changed, is one event);
without one, the UIDVALIDITY and UID.

The event's data: the lead shape (name and e-mail from `From`, a phone found in the text, the
text), plus subject, message_id, date, to, and attachments [{name, content_type, size, sha256,
content_base64 (when at most attachment_max_bytes), too_large}].
"""
from __future__ import annotations

import base64
import hashlib
import imaplib
import logging
import re
import socket
import ssl
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

from connectors.base import (
    BaseClient, Connection, Entity, Event, PermanentApiError, RawWebhook, RetryableApiError, Unauthorized,
    event_id, utc_iso,
)
from connectors.intake import leads

log = logging.getLogger("crmbridge.connectors.imap")

SOURCE = "imap"
CONTENT_TYPES: tuple[str, ...] = ()
OUTBOUND_ONLY = True          # no webhook calls in, so no webhook secret (the worker reads the mailbox)
RECORD_ONLY_WITHOUT_CREDENTIALS = False
SECURITY = ("ssl", "starttls", "none")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# how often to poll: whole minutes, hours or days (what rules/calendar.py's parse_duration reads of them)
EVERY = re.compile(r"\s*[1-9]\d{0,3}\s*(min|mins|minute|minutes|h|hr|hrs|hour|hours|day|days)\s*", re.IGNORECASE)
PHONE_IN_TEXT = re.compile(r"(?<![\w+])(\+?\d[\d\s()\-]{8,18}\d)(?!\w)")


def option_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a connection's options, as (key, problem): checked at start-up
    (config/connections.py reports each with its file:line), so a poll never finds out first."""
    found = []
    if not str(options.get("host") or "").strip():
        found.append(("host", "expected the IMAP server's host name (imap.example.com), found nothing"))
    security = str(options.get("security") or "ssl")
    if security not in SECURITY:
        found.append(("security", f"expected one of {', '.join(SECURITY)}, found {security!r}"))
    elif security == "none" and str(options.get("host") or "") not in LOOPBACK:
        found.append(("security", "none sends the password in clear text: only for a server on this machine "
                                  f"({', '.join(LOOPBACK)}); use ssl or starttls"))
    for key, low, high in (("port", 1, 65535), ("batch", 1, 1000), ("attachment_max_bytes", 0, 10 * 2 ** 20)):
        value = options.get(key)
        if value is not None and not (str(value).isdigit() and low <= int(value) <= high):
            found.append((key, f"expected a whole number from {low} to {high}, found {value!r}"))
    if str(options.get("start") or "new") not in ("new", "all"):
        found.append(("start", f"expected new or all, found {options.get('start')!r}"))
    every = options.get("every")
    if every is not None and not EVERY.fullmatch(str(every)):
        found.append(("every", f"expected a duration such as 1 minute, 15 minutes or 1 hour, found {every!r}"))
    return found


def verify(raw: RawWebhook, connection: Connection) -> None:
    """A mailbox is read by the worker; nothing posts to it."""
    raise Unauthorized(f"connection {connection.name!r} is a mailbox read over IMAP; it takes no webhooks")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    return []


class Client(BaseClient):
    """One IMAP session per poll: log in, EXAMINE the folder, read the UIDs after the last one."""

    timeout = 30.0

    def read_new(self, uidvalidity: int | None, last_uid: int, *, since: datetime | None = None
                 ) -> tuple[int, int, list[tuple[int, Event]]]:
        """(the folder's UIDVALIDITY, the highest UID looked at, [(uid, event)] oldest first, at
        most `batch`) for the messages after `last_uid`.

        No state yet (`uidvalidity` None): with `start: new` nothing is read, and the highest UID
        is the mark to go on from; with `start: all` every message is. A UIDVALIDITY that changed
        (the folder was rebuilt: its UIDs mean other messages now): the messages dated `since` or
        later are read again (at most `batch`), their Message-IDs keep each one event, and the
        reading goes on after the folder's last message."""
        options = self.connection.options or {}
        batch = int(options.get("batch") or 50)
        imap = self._open()
        try:
            folder = str(options.get("folder") or "INBOX")
            typ, data = imap.select(_quote(folder), readonly=True)
            if typ != "OK":
                raise PermanentApiError(f"IMAP EXAMINE {folder}: {_said(data)}")
            _, said = imap.response("UIDVALIDITY")
            validity = int(said[-1]) if said and said[-1] else 0
            if uidvalidity is None and str(options.get("start") or "new") == "new":
                return validity, max(self._search(imap, "ALL"), default=0), []
            rebuilt = uidvalidity is not None and uidvalidity != validity
            if rebuilt:
                # SINCE compares the server's own date of arrival: a day earlier covers its time zone
                day = (since - timedelta(days=1)).strftime("%d-%b-%Y") if since else None
                uids = self._search(imap, f"SINCE {day}" if day else "ALL")
            else:
                uids = [u for u in self._search(imap, f"UID {last_uid + 1}:*") if u > last_uid]
            out = []
            for uid in sorted(uids)[:batch]:
                raw = self._fetch(imap, uid)
                if raw is not None:
                    out.append((uid, self.event(raw, validity, uid)))
            if rebuilt:   # go on after the folder's last message (the recent ones were read above)
                return validity, max(self._search(imap, "ALL"), default=0), out
            return validity, max((u for u, _ in out), default=last_uid), out
        finally:
            try:
                imap.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    def event(self, raw: bytes, validity: int, uid: int) -> Event:
        """One message as an event (the lead shape plus the letter's own fields). A letter the
        e-mail parser cannot read (anyone can send anything to a sales address) is still one
        event, with its size and `unreadable` saying why: one broken letter never stops the mailbox."""
        try:
            return self._event(raw, validity, uid)
        except Exception as exc:  # noqa: BLE001 - untrusted mail: whatever the parser raises
            log.warning("mailbox %s: UID %s unreadable: %s", self.connection.name, uid, type(exc).__name__)
            name = self.connection.name
            data = leads.lead(door=SOURCE, connection=name, form=str((self.connection.options or {}).get("folder")
                                                                        or "INBOX"),
                              uid=uid, uidvalidity=validity, unreadable=f"{type(exc).__name__}: {str(exc)[:200]}")
            return Event(id=f"{name}:uid:{validity}:{uid}", connection=name, source=SOURCE, kind="message.received",
                         entity=Entity("email", f"{validity}.{uid}"), data=data,
                         raw={"uid": uid, "uidvalidity": validity, "size": len(raw)}, occurred_at=utc_iso())

    def _event(self, raw: bytes, validity: int, uid: int) -> Event:
        msg = message_from_bytes(raw, policy=policy.default)
        name = self.connection.name
        options = self.connection.options or {}
        sender_name, sender = parseaddr(str(msg.get("From") or ""))
        text = _text_of(msg)
        phone = PHONE_IN_TEXT.search(text or "")
        attachments = [_attachment(part, int(options.get("attachment_max_bytes") or 262144))
                       for part in msg.iter_attachments()] if msg.is_multipart() else []
        message_id = str(msg.get("Message-ID") or "").strip() or None
        date = _date(msg.get("Date"))
        data = leads.lead(door=SOURCE, connection=name, form=str(options.get("folder") or "INBOX"),
                          name=sender_name or None, phone=phone.group(1) if phone else None, email=sender,
                          text=text, region=leads.region_of(options),
                          subject=str(msg.get("Subject") or "") or None, message_id=message_id, date=date,
                          to=[a for _, a in getaddresses([str(v) for v in msg.get_all("To", [])]) if a],
                          uid=uid, uidvalidity=validity, attachments=attachments)
        key = event_id(name, "message-id", message_id) if message_id else f"{name}:uid:{validity}:{uid}"
        return Event(id=key, connection=name, source=SOURCE, kind="message.received",
                     entity=Entity("email", f"{validity}.{uid}"), data=data,
                     raw={"uid": uid, "uidvalidity": validity, "size": len(raw)}, occurred_at=date or utc_iso())

    # --- the IMAP session ---------------------------------------------------------------------

    def _open(self) -> imaplib.IMAP4:
        options = self.connection.options or {}
        security = str(options.get("security") or "ssl")
        if security not in SECURITY:
            raise PermanentApiError(f"options.security: expected {', '.join(SECURITY)}, found {security!r}")
        host = str(options.get("host") or "")
        port = int(options.get("port") or (993 if security == "ssl" else 143))
        user, password = self.connection.credentials.get("user"), self.connection.credentials.get("password")
        if security == "none" and host not in LOOPBACK:
            raise PermanentApiError(f"options.security: none sends the password in clear text; only for a server "
                                    f"on this machine ({', '.join(LOOPBACK)}), found {host!r}: use ssl or starttls")
        if not host or not user or not password:
            raise PermanentApiError(f"connection {self.connection.name!r}: IMAP needs options.host and "
                                    "credentials user and password")
        try:
            if security == "ssl":
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=ssl.create_default_context(),
                                                        timeout=self.timeout)
            else:
                imap = imaplib.IMAP4(host, port, timeout=self.timeout)
                if security == "starttls":
                    imap.starttls(ssl.create_default_context())
            imap.login(user, password)
        except imaplib.IMAP4.error as exc:   # a refused login: the password, not the moment
            raise PermanentApiError(f"IMAP login to {host}:{port} refused: {exc}") from None
        except (OSError, socket.timeout, imaplib.IMAP4.abort) as exc:
            raise RetryableApiError(f"IMAP {host}:{port} unreachable: {exc}") from None
        return imap

    def _search(self, imap: imaplib.IMAP4, criteria: str) -> list[int]:
        try:
            typ, data = imap.uid("SEARCH", criteria)
        except (imaplib.IMAP4.abort, OSError) as exc:
            raise RetryableApiError(f"IMAP UID SEARCH: {exc}") from None
        if typ != "OK":
            raise RetryableApiError(f"IMAP UID SEARCH {criteria}: {_said(data)}")
        return [int(x) for x in b" ".join(d for d in data if d).split()]

    def _fetch(self, imap: imaplib.IMAP4, uid: int) -> bytes | None:
        try:
            typ, data = imap.uid("FETCH", str(uid), "(UID BODY.PEEK[])")
        except (imaplib.IMAP4.abort, OSError) as exc:
            raise RetryableApiError(f"IMAP UID FETCH {uid}: {exc}") from None
        if typ != "OK":
            raise RetryableApiError(f"IMAP UID FETCH {uid}: {_said(data)}")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return item[1]
        return None     # expunged between SEARCH and FETCH


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _said(data: Any) -> str:
    return " ".join(d.decode(errors="replace") if isinstance(d, bytes) else str(d) for d in data or [])[:200]


def _date(value: Any) -> str | None:
    try:
        moment = parsedate_to_datetime(str(value)) if value else None
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return moment.isoformat()


def _text_of(msg: EmailMessage) -> str | None:
    """The text/plain body; an HTML-only letter's text without its tags."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, UnicodeDecodeError, AssertionError):
        content = (part.get_payload(decode=True) or b"").decode("utf-8", errors="replace")
    if part.get_content_subtype() == "html":
        content = _strip_html(content)
    return content.strip() or None


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _strip_html(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return re.sub(r"[ \t]+", " ", "".join(parser.parts))


def _attachment(part: EmailMessage, limit: int) -> dict[str, Any]:
    content = part.get_payload(decode=True) or b""
    found = {"name": part.get_filename(), "content_type": part.get_content_type(), "size": len(content),
             "sha256": hashlib.sha256(content).hexdigest(), "too_large": len(content) > limit}
    if len(content) <= limit:
        found["content_base64"] = base64.b64encode(content).decode("ascii")
    return found
