"""Buttons bound to a CRM record, signed: what a messenger's button carries back when pressed.

A user can send any data for any message of a bot (a modified client), so a button that acts on a
record carries the record and a MAC over it, the chat (or user) it was sent to and a per-message
nonce:

    <version>.<choice>.<letter><record number>.<nonce>.<mac>    e.g. a1.approve.t1042.Xk3_q9.Qm9vYmFyYmF6cQ

Telegram's callback data (connectors/telegram.py, `a1`, at most 64 bytes) and Viber's ActionBody
(connectors/viber.py, `v1`) are signed this way; each messenger chooses its version, its MAC's
length and where its secret comes from.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from connectors.base import Connection, PermanentApiError

RECORD_LETTERS = {"task": "t", "contact": "c", "lead": "l", "deal": "d", "company": "o", "project": "p"}


def link_options(connection: Connection) -> dict[str, Any]:
    """`options.link`: the CRM connection whose records this bot's groups and buttons are bound to."""
    link = (connection.options or {}).get("link")
    return dict(link) if isinstance(link, dict) else {}


@dataclass(frozen=True)
class Signer:
    """One messenger's signed buttons: `version` starts every token, `mac_chars` of its URL-safe
    base64 MAC are kept, `max_bytes` bounds a token (Telegram's 64), `words` names the token in
    errors, and `token_secret` lets the bot's token sign when no other secret is configured."""

    version: str
    mac_chars: int
    words: str = "button token"
    max_bytes: int | None = None
    token_secret: bool = False

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(rf"{self.version}\.([a-z0-9_]{{1,16}})\.([a-z])([0-9]{{1,12}})\.([A-Za-z0-9_-]{{6}})"
                          rf"\.([A-Za-z0-9_-]{{{self.mac_chars}}})")

    def mac(self, connection: Connection, choice: str, letter: str, ident: str, nonce: str, receiver: str) -> str:
        link = link_options(connection)
        token = (connection.credentials or {}).get("token") if self.token_secret else None
        secret = str(link.get("secret") or connection.webhook_secret or token or "")
        if not secret:
            raise PermanentApiError(f"connection {connection.name!r} has no secret to sign buttons with")
        message = "|".join((self.version, choice, letter, ident, nonce, str(receiver), str(link.get("crm") or "")))
        digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:self.mac_chars]

    def sign(self, connection: Connection, choice: str, record: dict[str, str], nonce: str, receiver: str) -> str:
        """The token of one choice of a message bound to `record`, sent to `receiver`."""
        letter = RECORD_LETTERS.get(record.get("type", ""))
        ident = str(record.get("id", ""))
        if letter is None or not ident.isdigit():
            raise PermanentApiError(f"buttons can be bound to a numbered {', '.join(RECORD_LETTERS)}, "
                                    f"not to {record.get('type')}:{ident}")
        data = f"{self.version}.{choice}.{letter}{ident}.{nonce}.{self.mac(connection, choice, letter, ident, nonce, receiver)}"
        if not self.pattern.fullmatch(data) or (self.max_bytes and len(data.encode()) > self.max_bytes):
            limit = f"≤{self.max_bytes}-byte " if self.max_bytes else ""
            raise PermanentApiError(f"{self.words} {data!r} is not a valid {limit}token (choice: a-z, 0-9, _; "
                                    "at most 16 characters)")
        return data

    def read(self, data: str, connection: Connection, receiver: str) -> dict[str, Any]:
        """{"error"} for a forged, damaged or foreign token; else the binding {"choice", "nonce", "record"}."""
        found = self.pattern.fullmatch(data)
        crm = link_options(connection).get("crm")
        if found is None or not crm:
            return {"error": f"damaged {self.words}" if crm else "this bot binds no buttons (no options.link.crm)"}
        choice, letter, ident, nonce, mac = found.groups()
        kind = next((k for k, v in RECORD_LETTERS.items() if v == letter), None)
        try:
            expected = self.mac(connection, choice, letter, ident, nonce, receiver)
        except PermanentApiError:
            return {"error": f"this bot has no secret to check {self.words}s with"}
        if kind is None or not hmac.compare_digest(mac, expected):
            return {"error": f"{self.words} signature does not match (forged, or pressed by someone else)"}
        return {"choice": choice, "nonce": nonce, "record": {"connection": str(crm), "type": kind, "id": ident}}


def bind(signer: Signer, connection: Connection, store: Any, key_prefix: str, choices: list[dict[str, str]],
         record: dict[str, str], nonce: str, receiver: str, approvers: Any) -> list[list[dict[str, str]]]:
    """The keyboard rows of an approval message bound to `record` (one signed button per choice),
    its policy (approvers, labels) kept under the approval's key first, so that a press coming right
    after the message always finds it."""
    crm = link_options(connection).get("crm")
    if record.get("connection") != crm:
        raise PermanentApiError(f"bot {connection.name!r} binds buttons to records of "
                                f"options.link.crm ({crm!r}), not of {record.get('connection')!r}")
    rows = [[{"text": c["text"], "data": signer.sign(connection, c["choice"], record, nonce, receiver)}]
            for c in choices]
    if store is not None:
        policy = {"record": record, "chat": receiver, "approvers": approvers,
                  "labels": {c["choice"]: c["text"] for c in choices}}
        store.set(approval_key(key_prefix, connection.name, record, nonce), json.dumps(policy, ensure_ascii=False),
                  ex=APPROVAL_TTL)
    return rows


APPROVAL_TTL = 180 * 24 * 3600  # a client may answer an approval request months later


def approval_key(prefix: str, connection: str, record: dict[str, str], nonce: str) -> str:
    """Where an approval message's policy (approvers, labels) and later its choice are kept (one key
    shape for every messenger, so pipeline/links.py's claim serves them all)."""
    return f"{prefix}approval:{connection}:{record['type']}:{record['id']}:{nonce}"
