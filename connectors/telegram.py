"""Telegram Bot API: updates in (messages, button presses), messages and keyboards out.

Telegram posts one `Update` JSON per request and, when the webhook was set with a
`secret_token`, sends it back in the `X-Telegram-Bot-Api-Secret-Token` header (setWebhook,
core.telegram.org/bots/api). python-telegram-bot gives the types and the calls; its
`Bot` is asyncio, so the client runs it on an event loop of its own.
Samples: tests/payloads/telegram/.
"""
from __future__ import annotations

import asyncio
import hmac
import warnings
from datetime import timedelta
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update, error as tg_error
from telegram.request import HTTPXRequest

from connectors.base import (
    BadPayload, BaseClient, Connection, Entity, Event, PermanentApiError, RawWebhook,
    RetryableApiError, Unauthorized, parse_json, utc_iso,
)

SOURCE = "telegram"
CONTENT_TYPES = ("application/json",)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def verify(raw: RawWebhook, connection: Connection) -> None:
    """Compare Telegram's secret header with the secret given to setWebhook."""
    given = raw.headers.get(SECRET_HEADER, "")
    if not connection.webhook_secret or not hmac.compare_digest(
            given.encode(), connection.webhook_secret.encode()):
        raise Unauthorized(f"missing or wrong {SECRET_HEADER} header")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One Update → one Event; kinds of update no rule can use are acknowledged and dropped."""
    payload = parse_json(raw.body)
    if not isinstance(payload, dict) or not isinstance(payload.get("update_id"), int):
        raise BadPayload("not a Telegram Update (expected an object with an integer update_id)")
    _fill_is_bot(payload)
    try:
        update = Update.de_json(payload, bot=None)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadPayload(f"malformed Telegram Update: {type(exc).__name__}: {exc}") from None
    if update.callback_query is not None:
        return [_button_event(update, connection, payload)]
    for attr, kind in (("message", "message.received"), ("edited_message", "message.edited")):
        message = getattr(update, attr)
        if message is not None:
            return [_message_event(update, message, kind, connection, payload)]
    return []


def _fill_is_bot(payload: dict[str, Any]) -> None:
    """Telegram's own sample updates (core.telegram.org/bots/webhooks) predate `is_bot`, which
    python-telegram-bot requires; a sender without it is a person."""
    for key in ("message", "edited_message", "callback_query"):
        part = payload.get(key)
        if isinstance(part, dict):
            for holder in (part, part.get("message") if isinstance(part.get("message"), dict) else {}):
                user = holder.get("from")
                if isinstance(user, dict):
                    user.setdefault("is_bot", False)


def _person(user: Any) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": str(user.id), "name": user.full_name, "username": user.username,
            "is_bot": user.is_bot}


def _chat(chat: Any) -> dict[str, Any]:
    return {"id": str(chat.id), "type": chat.type, "title": chat.title or chat.full_name}


def _files(message: Any) -> list[dict[str, Any]]:
    files = []
    if message.photo:
        biggest = message.photo[-1]  # PhotoSize list runs from small to large
        files.append({"kind": "photo", "file_id": biggest.file_id, "size": biggest.file_size,
                      "name": f"photo_{biggest.file_unique_id}.jpg"})
    if message.document:
        doc = message.document
        files.append({"kind": "document", "file_id": doc.file_id, "size": doc.file_size,
                      "name": doc.file_name, "mime_type": doc.mime_type})
    return files


def _message_event(update: Update, message: Any, kind: str, connection: Connection,
                   payload: dict[str, Any]) -> Event:
    data = {"chat": _chat(message.chat), "from": _person(message.from_user),
            "text": message.text or message.caption or "", "message_id": message.message_id,
            "files": _files(message)}
    suffix = f":edit:{int(message.edit_date.timestamp())}" if message.edit_date else ""
    return Event(
        id=f"{connection.name}:update:{update.update_id}{suffix}", connection=connection.name,
        source=SOURCE, kind=kind, entity=Entity("chat", str(message.chat.id)), data=data,
        raw=payload, occurred_at=message.date.isoformat() if message.date else utc_iso())


def _button_event(update: Update, connection: Connection, payload: dict[str, Any]) -> Event:
    query = update.callback_query
    message = query.message
    data: dict[str, Any] = {"button": query.data or "", "callback_id": query.id,
                            "from": _person(query.from_user)}
    if message is not None:
        data.update(chat=_chat(message.chat), message_id=message.message_id)
    chat_id = str(message.chat.id) if message is not None else f"inline:{query.inline_message_id}"
    return Event(
        # one press is one callback id, however often Telegram delivers it
        id=f"{connection.name}:callback:{query.id}", connection=connection.name, source=SOURCE,
        kind="button.pressed", entity=Entity("chat", chat_id), data=data, raw=payload,
        occurred_at=utc_iso())


def keyboard(buttons: list[list[dict[str, str]]] | None) -> InlineKeyboardMarkup | None:
    """Rows of {"text", "data"} (or {"text", "url"}) → an inline keyboard."""
    if not buttons:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(b["text"], callback_data=b.get("data"),
                                                       url=b.get("url")) for b in row]
                                 for row in buttons])


class Client(BaseClient):
    """Calls on one bot. Every method is one Bot API call."""

    rate_per_second = 30  # "not more than 30 messages per second" (core.telegram.org/bots/faq)
    docs_url = "https://core.telegram.org/bots/api"

    def __init__(self, connection: Connection, **kwargs: Any):
        super().__init__(connection, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bot: Bot | None = None

    @property
    def bot(self) -> Bot:
        if self._bot is None:
            base = (self.connection.base_url or "https://api.telegram.org").rstrip("/")
            self._bot = Bot(self.connection.credentials["token"], base_url=f"{base}/bot",
                            base_file_url=f"{base}/file/bot",
                            request=HTTPXRequest(connect_timeout=5, read_timeout=self.timeout))
            self._loop = asyncio.new_event_loop()
        return self._bot

    def call(self, method: str, **params: Any) -> Any:
        """Run one Bot method; Telegram's errors become Retryable/PermanentApiError."""
        if self.record_only:
            wire = "".join(w.capitalize() if i else w for i, w in enumerate(method.split("_")))
            self.request("POST", f"/bot<token>/{wire}", json_body=_plain(params))
            return None
        bot = self.bot
        if self.limiter:
            self.limiter()
        try:
            return self._loop.run_until_complete(getattr(bot, method)(**params))
        except tg_error.RetryAfter as exc:
            with warnings.catch_warnings():  # PTB 22 warns that the type will become timedelta
                warnings.simplefilter("ignore")
                wait = exc.retry_after
            seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
            raise RetryableApiError(f"{method}: {exc.message}", status=429, retry_after=seconds) from None
        except (tg_error.TimedOut, tg_error.NetworkError) as exc:
            if isinstance(exc, tg_error.BadRequest):
                raise PermanentApiError(f"{method}: {exc.message}", status=400) from None
            raise RetryableApiError(f"{method}: {exc.message}") from None
        except tg_error.TelegramError as exc:
            raise PermanentApiError(f"{method}: {exc.message}") from None

    def chat_id(self, chat: str | int) -> str:
        """A chat id, or a chat's name from the connection's `options: {chats: {team: …}}`."""
        named = (self.connection.options.get("chats") or {}).get(str(chat))
        return str(named if named not in (None, "") else chat)

    def send_message(self, chat: str | int, text: str, buttons: list | None = None,
                     parse_mode: str | None = None) -> int | None:
        """sendMessage, optionally with an inline keyboard; returns the message id."""
        sent = self.call("send_message", chat_id=self.chat_id(chat), text=text, reply_markup=keyboard(buttons),
                         parse_mode=parse_mode)
        return sent.message_id if sent is not None else None

    def answer_button(self, callback_id: str, text: str | None = None) -> None:
        """answerCallbackQuery, so the client stops showing a spinner."""
        self.call("answer_callback_query", callback_query_id=callback_id, text=text)

    def edit_buttons(self, chat: str | int, message_id: int, buttons: list | None = None) -> None:
        """editMessageReplyMarkup: replace (or, with no buttons, remove) the keyboard."""
        self.call("edit_message_reply_markup", chat_id=chat, message_id=message_id,
                  reply_markup=keyboard(buttons))


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in params.items() if v is not None}
