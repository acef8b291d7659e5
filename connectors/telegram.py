"""Telegram Bot API: updates in (messages, button presses), messages and keyboards out.

Telegram posts one `Update` JSON per request and, when the webhook was set with a
`secret_token`, sends it back in the `X-Telegram-Bot-Api-Secret-Token` header (setWebhook,
core.telegram.org/bots/api). python-telegram-bot gives the types and the calls; its
`Bot` is asyncio, so the client runs it on an event loop of its own.
Samples: tests/payloads/telegram/.
"""
from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections.abc import Coroutine
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests
from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
    constants,
)
from telegram import error as tg_error
from telegram.request import HTTPXRequest

from connectors.buttons import APPROVAL_TTL, Signer, approval_key, bind, link_options  # noqa: F401 - pipeline/links.py reads them here
from connectors.base import (
    BadPayload,
    BaseClient,
    Connection,
    Entity,
    Event,
    PermanentApiError,
    RawWebhook,
    RetryableApiError,
    UncertainApiError,
    check_secret,
    parse_json,
    transport_error,
    utc_iso,
)

SOURCE = "telegram"
CONTENT_TYPES = ("application/json",)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
PER_CHAT = (1.0, 1.0)           # (rate per second, burst)
PER_GROUP = (20 / 60, 20.0)
# The updates parse() turns into events; setWebhook's allowed_updates asks for only these.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")
# setWebhook secret_token: 1-256 characters, "Only characters A-Z, a-z, 0-9, _ and - are allowed"
# (PTB Bot.set_webhook docstring, mirroring the Bot API; constants.WebhookLimit)
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# "Bots can download files of up to 20MB in size" (PTB constants.FileSizeLimit.FILESIZE_DOWNLOAD =
# 20e6 bytes); past it getFile answers 400 "Bad Request: file is too big" (tests/payloads/telegram)
DOWNLOAD_LIMIT = constants.FileSizeLimit.FILESIZE_DOWNLOAD
# Message fields that make it a service message (core.telegram.org/bots/api#message): members
# joining or leaving, title/photo changes, migration, pins… acknowledged without an event.
SERVICE_FIELDS = frozenset({
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo", "delete_chat_photo",
    "group_chat_created", "supergroup_chat_created", "channel_chat_created", "migrate_to_chat_id",
    "migrate_from_chat_id", "pinned_message", "message_auto_delete_timer_changed",
})


def verify(raw: RawWebhook, connection: Connection) -> None:
    """Compare Telegram's secret header with the secret given to setWebhook."""
    given = raw.headers.get(SECRET_HEADER, "")
    check_secret(given, connection, f"missing or wrong {SECRET_HEADER} header")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One Update → one Event; kinds of update no rule can use are acknowledged and dropped."""
    payload = parse_json(raw.body)
    if not isinstance(payload, dict) or not _is_int(payload.get("update_id")):
        raise BadPayload("not a Telegram Update (expected an object with an integer update_id)")
    if not 0 <= payload["update_id"] < INT64:
        raise BadPayload("malformed Telegram Update: update.update_id is not a non-negative 64-bit integer")
    _fill_is_bot(payload)
    _check_types(payload)
    _fill_documented_gaps(payload)
    try:
        update = Update.de_json(payload, bot=None)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadPayload(f"malformed Telegram Update: {type(exc).__name__}: {exc}") from None
    if update.callback_query is not None:
        return [_button_event(update, connection, payload)]
    for attr, kind in (("message", "message.received"), ("edited_message", "message.edited")):
        message = getattr(update, attr)
        if message is not None:
            if SERVICE_FIELDS & set(payload[attr]):
                return []
            return [_message_event(update, message, kind, connection, payload)]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)   # JSON true is not an id


# The fields parse() reads, with their Bot API types and bounds (core.telegram.org/bots/api: Update,
# Message, Chat, User, CallbackQuery, PhotoSize, Document, InlineKeyboardButton). python-telegram-bot's
# de_json copies values as they come, so a wrongly typed field would reach the queue; each is checked
# here instead, and what Telegram itself never sends is refused (400):
# - Chat.id "may have more than 32 significant bits … a signed 64-bit integer … is safe": negative for
#   groups (-100… for supergroups), never 0; User.id the same, and a user's is positive;
# - message_id positive ("Unique message identifier inside this chat"), update_id from a positive start;
# - callback_data "1-64 bytes" (InlineKeyboardButton; PTB InlineKeyboardButton.MAX_CALLBACK_DATA);
# - a message text is at most 4096 characters, a caption 1024 (sendMessage "1-4096 characters after
#   entities parsing", sendPhoto caption "0-1024"; PTB MessageLimit.MAX_TEXT_LENGTH, CAPTION_LENGTH):
#   counted here in code points, never more than Telegram's UTF-16 count, so no real message is refused.
INT64 = 2 ** 63
MAX_TEXT, MAX_CAPTION, MAX_CALLBACK_DATA = (constants.MessageLimit.MAX_TEXT_LENGTH,
                                            constants.MessageLimit.CAPTION_LENGTH,
                                            constants.InlineKeyboardButtonLimit.MAX_CALLBACK_DATA)
_INT, _STR, _BOOL = (_is_int, "an integer"), (lambda v: isinstance(v, str), "a string"), \
    (lambda v: isinstance(v, bool), "a boolean")
# (check, what it is[, the type check first: "is not an integer" before "is not in range"])
_POSITIVE = (lambda v: _is_int(v) and 0 < v < INT64, "a positive 64-bit integer", _INT)
_CHAT_ID = (lambda v: _is_int(v) and v != 0 and -INT64 <= v < INT64, "a non-zero signed 64-bit integer", _INT)
_TEXT = (lambda v: isinstance(v, str) and len(v) <= MAX_TEXT, f"a string of at most {MAX_TEXT} characters")
_CAPTION = (lambda v: isinstance(v, str) and len(v) <= MAX_CAPTION, f"a string of at most {MAX_CAPTION} characters")
_DATA = (lambda v: isinstance(v, str) and 1 <= len(v.encode("utf-8")) <= MAX_CALLBACK_DATA,
         f"a string of 1-{MAX_CALLBACK_DATA} bytes")
USER = {"id": (_POSITIVE, True), "is_bot": (_BOOL, False), "first_name": (_STR, True), "last_name": (_STR, False),
        "username": (_STR, False)}
CHAT = {"id": (_CHAT_ID, True), "type": (_STR, False), "title": (_STR, False), "username": (_STR, False),
        "first_name": (_STR, False), "last_name": (_STR, False)}
FILE = {"file_id": (_STR, True), "file_unique_id": (_STR, False), "file_size": (_INT, False)}
DOCUMENT = {**FILE, "file_name": (_STR, False), "mime_type": (_STR, False)}
MESSAGE: dict[str, Any] = {"message_id": (_POSITIVE, True), "date": (_INT, True), "edit_date": (_INT, False),
                           "chat": (CHAT, True), "from": (USER, False), "text": (_TEXT, False),
                           "caption": (_CAPTION, False), "photo": ([FILE], False), "document": (DOCUMENT, False)}
MESSAGE["reply_to_message"] = (MESSAGE, False)
CALLBACK = {"id": (_STR, True), "from": (USER, True), "message": (MESSAGE, False), "data": (_DATA, False),
            "chat_instance": (_STR, False), "inline_message_id": (_STR, False)}
UPDATE = {"message": (MESSAGE, False), "edited_message": (MESSAGE, False), "callback_query": (CALLBACK, False)}


def _check_types(payload: dict[str, Any]) -> None:
    """Refuse an update whose fields (those parse() reads) have the wrong JSON types: 400, one line."""
    _check_object(payload, UPDATE, "update", depth=0)


def _check_object(value: Any, shape: dict[str, Any], where: str, depth: int) -> None:
    if not isinstance(value, dict):
        raise BadPayload(f"malformed Telegram Update: {where} is not an object")
    for name, (kind, required) in shape.items():
        if name not in value or value[name] is None:
            if required:
                raise BadPayload(f"malformed Telegram Update: {where}.{name} is missing")
            continue
        _check_value(value[name], kind, f"{where}.{name}", depth)


def _check_value(value: Any, kind: Any, where: str, depth: int) -> None:
    if depth > 4:   # reply_to_message nests one level in practice; deeper nesting is not read
        return
    if isinstance(kind, dict):
        _check_object(value, kind, where, depth + 1)
    elif isinstance(kind, list):
        if not isinstance(value, list):
            raise BadPayload(f"malformed Telegram Update: {where} is not a list")
        for i, item in enumerate(value):
            _check_value(item, kind[0], f"{where}[{i}]", depth + 1)
    elif len(kind) > 2 and not kind[2][0](value):
        raise BadPayload(f"malformed Telegram Update: {where} is not {kind[2][1]}")
    elif not kind[0](value):
        raise BadPayload(f"malformed Telegram Update: {where} is not {kind[1]}")


def _fill_is_bot(payload: dict[str, Any]) -> None:
    """Telegram's own sample updates (core.telegram.org/bots/webhooks) predate `is_bot`, which
    python-telegram-bot requires; a sender without it is a person."""
    for key in ("message", "edited_message", "callback_query"):
        part = payload.get(key)
        if isinstance(part, dict):
            nested = [part.get(k) for k in ("message", "reply_to_message")]
            for holder in (part, *(n for n in nested if isinstance(n, dict))):
                user = holder.get("from")
                if isinstance(user, dict):
                    user.setdefault("is_bot", False)


def _fill_documented_gaps(payload: dict[str, Any]) -> None:
    """What the Bot API documentation's own sample updates (core.telegram.org/bots/webhooks, "Testing your
    bot with updates"; tests/payloads/telegram/official_*.json) leave out but python-telegram-bot
    requires: the callback query sample has no `chat_instance`, the document sample no `file_unique_id`
    (both predate the fields), the first text sample's chat no `type`. Filled with what they must be:
    an empty chat_instance and file_unique_id (nothing reads them), and `private` for a chat whose id is
    positive (group and channel ids are negative: Chat.id)."""
    for key in ("message", "edited_message", "callback_query"):
        part = payload.get(key)
        if not isinstance(part, dict):
            continue
        if key == "callback_query":
            part.setdefault("chat_instance", "")
            part = part.get("message") if isinstance(part.get("message"), dict) else {}
        for message in (part, part.get("reply_to_message")):
            if not isinstance(message, dict):
                continue
            chat = message.get("chat")
            if isinstance(chat, dict) and chat.get("type") is None:
                if chat["id"] < 0:
                    raise BadPayload("malformed Telegram Update: a group chat without its type")
                chat["type"] = "private"
            files = [message.get("document"), *(message.get("photo") or [])]
            for file in files:
                if isinstance(file, dict):
                    file.setdefault("file_unique_id", "")


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
                      "name": f"photo_{biggest.file_unique_id or biggest.file_id[-12:]}.jpg"})
    if message.document:
        doc = message.document
        files.append({"kind": "document", "file_id": doc.file_id, "size": doc.file_size,
                      "name": doc.file_name, "mime_type": doc.mime_type})
    return files


def _reply(message: Any) -> dict[str, Any] | None:
    """The message this one answers (`reply_to_message`), by id, with its text."""
    original = message.reply_to_message
    if original is None:
        return None
    return {"message_id": original.message_id, "text": original.text or original.caption or "",
            "from": _person(original.from_user)}


def _message_event(update: Update, message: Any, kind: str, connection: Connection,
                   payload: dict[str, Any]) -> Event:
    data = {"chat": _chat(message.chat), "from": _person(message.from_user),
            "text": message.text or message.caption or "", "caption": message.caption,
            "message_id": message.message_id, "files": _files(message), "reply_to": _reply(message)}
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
    entity = Entity("chat", chat_id)
    bound = read_choice(query.data or "", connection, chat_id)
    if bound is not None and "error" in bound:
        data["token_error"] = bound["error"]
    elif bound is not None:  # a signed button: the press is about the record it was sent for
        record = bound["record"]
        data.update(button=bound["choice"], record=record, approval=bound["nonce"], callback_data=query.data)
        entity = Entity(record["type"], record["id"])
    return Event(
        # one press is one callback id, however often Telegram delivers it
        id=f"{connection.name}:callback:{query.id}", connection=connection.name, source=SOURCE,
        kind="button.pressed", entity=entity, data=data, raw=payload,
        occurred_at=utc_iso())


# --- buttons bound to a CRM record ------------------------------------------------------------
# callback_data is 1-64 bytes (Bot API InlineKeyboardButton; PTB MAX_CALLBACK_DATA), signed as
# connectors/buttons.py says:  a1.<choice>.<t><task number>.<nonce>.<mac>  (a 72-bit MAC)
BUTTONS = Signer("a1", mac_chars=12, words="callback data", max_bytes=64)
TOKEN = BUTTONS.pattern


def sign_choice(connection: Connection, choice: str, record: dict[str, str], nonce: str, chat: str) -> str:
    """The callback data of one choice of a message bound to `record`, sent to `chat`."""
    return BUTTONS.sign(connection, choice, record, nonce, chat)


def read_choice(data: str, connection: Connection, chat: str) -> dict[str, Any] | None:
    """None for a plain button; {"error"} for a forged, damaged or foreign token; else the binding."""
    return BUTTONS.read(data, connection, chat) if data.startswith("a1.") else None


def link_key(prefix: str, connection: str, chat: str) -> str:
    """chat id → the record the group is linked to (`/link`)."""
    return f"{prefix}link:{connection}:{chat}"


def keyboard(buttons: list[list[dict[str, str]]] | None) -> InlineKeyboardMarkup | None:
    """Rows of {"text", "data"} (or {"text", "url"}) → an inline keyboard."""
    if not buttons:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(b["text"], callback_data=b.get("data"),
                                                       url=b.get("url")) for b in row]
                                 for row in buttons])


# Bot API methods whose parameters are all JSON (no uploads) and whose answer is a Message or True:
# sent by Client._post as one POST of a JSON body (the Bot API takes application/json) on a
# keep-alive requests session, without PTB's Bot (asyncio + httpx + its request objects, ~3 ms a
# call in bench/profiling.py). Uploads, getFile, downloads and setWebhook still go through PTB.
JSON_METHODS = {"send_message": "sendMessage", "answer_callback_query": "answerCallbackQuery",
                "edit_message_reply_markup": "editMessageReplyMarkup", "edit_message_text": "editMessageText"}


def bot_api_result(code: int, payload: bytes) -> Any:
    """A Bot API answer's `result`, or the TelegramError python-telegram-bot raises for it (the
    rules of PTB 22's BaseRequest._request_wrapper and post: description, ResponseParameters'
    migrate_to_chat_id and retry_after, then the error class by HTTP status)."""
    try:
        data = json.loads(payload.decode("utf-8", "replace"))
    except ValueError:
        data = None
    if 200 <= code <= 299:
        if not isinstance(data, dict) or "result" not in data:
            raise tg_error.TelegramError("Invalid server response")
        return data["result"]
    try:
        message = f"{HTTPStatus(code).phrase} ({code})"
    except ValueError:
        message = f"Unknown HTTPError ({code})"
    if not isinstance(data, dict):
        message += f". Parsing the server response {payload!r} failed"
    else:
        message = data.get("description") or message
        parameters = data.get("parameters")
        if parameters:
            if parameters.get("migrate_to_chat_id"):
                raise tg_error.ChatMigrated(parameters["migrate_to_chat_id"])
            if parameters.get("retry_after"):
                raise tg_error.RetryAfter(parameters["retry_after"])
            message += f". The server response contained unknown parameters: {parameters}"
    if code == HTTPStatus.FORBIDDEN:
        raise tg_error.Forbidden(message)
    if code in (HTTPStatus.NOT_FOUND, HTTPStatus.UNAUTHORIZED):
        raise tg_error.InvalidToken(message)
    if code == HTTPStatus.BAD_REQUEST:
        raise tg_error.BadRequest(message)
    if code == HTTPStatus.CONFLICT:
        raise tg_error.Conflict(message)
    raise tg_error.NetworkError(message)   # 5xx and the rest: an answer, without a cause (api_error)


def api_error(what: str, exc: tg_error.TelegramError, *, idempotent: bool = True,
              status: int | None = None) -> Exception:
    """A TelegramError as crmbridge's Retryable/Uncertain/PermanentApiError. A 5xx answer (PTB's
    NetworkError without a cause; `status` when the answer was read here) to a call that creates
    (a message) is uncertain: Telegram may have sent it and failed only in answering."""
    if isinstance(exc, tg_error.ChatMigrated):
        # 400 with parameters.migrate_to_chat_id (Bot API ResponseParameters; PTB raises
        # ChatMigrated for it): the group became a supergroup and the old id is dead
        return PermanentApiError(f"{what}: the group was upgraded to a supergroup; its new chat id is "
                                 f"{exc.new_chat_id}", status=400)
    if isinstance(exc, tg_error.RetryAfter):
        with warnings.catch_warnings():  # PTB 22 warns that the type will become timedelta
            warnings.simplefilter("ignore")
            wait = exc.retry_after
        seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
        return RetryableApiError(f"{what}: {exc.message}", status=429, retry_after=seconds)
    if isinstance(exc, (tg_error.TimedOut, tg_error.NetworkError)):
        if isinstance(exc, tg_error.BadRequest):
            return PermanentApiError(f"{what}: {exc.message}", status=400)
        # PTB chains httpx's exception when Telegram did not answer: a read timeout or a dropped
        # connection may follow a message that was sent; a connection never made (or no free
        # pooled connection) cannot. An answer (5xx: NetworkError without a cause) is definite for
        # an edit or a read, and uncertain for a message (sent, then the answer failed).
        cause = exc.__cause__
        if isinstance(cause, httpx.HTTPError) and not isinstance(
                cause, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return UncertainApiError(f"{what}: {exc.message} (the call may have been done)")
        answered = not isinstance(cause, httpx.HTTPError) and not isinstance(exc, tg_error.TimedOut) \
            and (status is None or status >= 500)
        if answered and not idempotent:
            return UncertainApiError(f"{what}: {exc.message} (the call may have been done)")
        return RetryableApiError(f"{what}: {exc.message}")
    return PermanentApiError(f"{what}: {exc.message}")


class Client(BaseClient):
    """Calls on one bot. Every method is one Bot API call."""

    rate_per_second = 30  # "not more than 30 messages per second" (core.telegram.org/bots/faq)
    docs_url = "https://core.telegram.org/bots/api"
    reports_sends = True  # every Bot API call goes through call()
    capabilities = frozenset({"send_message", "send_approval", "answer_button", "edit_buttons", "edit_text",
                              "send_photo", "send_document", "download"})

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
        """Run one Bot method; Telegram's errors become Retryable/Uncertain/PermanentApiError."""
        if self.record_only:
            wire = "".join(w.capitalize() if i else w for i, w in enumerate(method.split("_")))
            self.request("POST", f"/bot<token>/{wire}", json_body=_plain(params))
            return None
        bot = self.bot
        # the bot's limit and the chat's (and group's), one round trip for all; the slot is held
        # until the answer (ratelimit.py), so the limit holds when Telegram counts
        release = self.limiter(also=self._chat_limits(method, params.get("chat_id")),
                               hold=self.hold_seconds) if self.limiter else None
        try:
            if self.sending:
                self.sending()
            if method in JSON_METHODS:
                return self._post(method, params)
            return self._run(method, getattr(bot, method)(**params))
        finally:
            if release:
                release()

    @staticmethod
    def creates(method: str) -> bool:
        """A method whose repeat makes a second message (sendMessage, copyMessage, forwardMessage…);
        edits, answers and reads leave the same result however often they are done."""
        return method.startswith(("send_", "copy_", "forward_"))

    def _chat_limits(self, method: str, chat: Any) -> tuple[tuple[str, tuple[float, float]], ...]:
        """"No more than one message per second" to a chat, "20 messages per minute" to a group
        (core.telegram.org/bots/faq): shared by every worker through the runtime's buckets."""
        if chat is None or not method.startswith(("send_", "edit_", "copy_", "forward_")):
            return ()
        if str(chat).startswith("-"):
            return (f"chat:{chat}", PER_CHAT), (f"group:{chat}", PER_GROUP)
        return ((f"chat:{chat}", PER_CHAT),)

    def _post(self, method: str, params: dict[str, Any]) -> Any:
        """One of JSON_METHODS as one POST of a JSON body on the client's keep-alive requests session;
        the answer (or error) read as PTB's request layer reads it, and mapped by the same rules."""
        body = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in params.items() if v is not None}
        try:
            resp = self.session.post(f"{self.bot.base_url}/{JSON_METHODS[method]}", json=body,
                                     timeout=(5, self.timeout))
        except (requests.Timeout, requests.ConnectionError) as exc:
            # never connected: nothing was sent; no answer after sending: it may have been done
            raise transport_error(method, exc) from None
        try:
            result = bot_api_result(resp.status_code, resp.content)
        except tg_error.TelegramError as exc:
            raise api_error(method, exc, idempotent=not self.creates(method), status=resp.status_code) from None
        return Message.de_json(result, self.bot) if isinstance(result, dict) else result

    def _run(self, what: str, work: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self._loop.run_until_complete(work)
        except tg_error.TelegramError as exc:
            raise api_error(what, exc, idempotent=not self.creates(what)) from None

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

    def send_approval(self, chat: str | int, text: str, choices: list[dict[str, str]], record: dict[str, str],
                      nonce: str, approvers: Any = "chat_members", parse_mode: str | None = None) -> int | None:
        """sendMessage with one signed button per choice, bound to a CRM record (see TOKEN).

        The approvers and button labels are kept in Redis under the message's nonce first, so
        that a press arriving right after the message always finds them.
        """
        chat_id = self.chat_id(chat)
        rows = bind(BUTTONS, self.connection, self.store, self.key_prefix, choices, record, nonce, chat_id, approvers)
        return self.send_message(chat_id, text, buttons=rows, parse_mode=parse_mode)

    def answer_button(self, callback_id: str, text: str | None = None) -> None:
        """answerCallbackQuery, so the client stops showing a spinner."""
        self.call("answer_callback_query", callback_query_id=callback_id, text=text)

    def edit_buttons(self, chat: str | int, message_id: int, buttons: list | None = None) -> None:
        """editMessageReplyMarkup: replace (or, with no buttons, remove) the keyboard."""
        self.call("edit_message_reply_markup", chat_id=self.chat_id(chat), message_id=message_id,
                  reply_markup=keyboard(buttons))

    def edit_text(self, chat: str | int, message_id: int, text: str, buttons: list | None = None) -> None:
        """editMessageText: new text (and keyboard; none removes it) for a message the bot sent."""
        self.call("edit_message_text", chat_id=self.chat_id(chat), message_id=message_id, text=text,
                  reply_markup=keyboard(buttons))

    def send_photo(self, chat: str | int, photo: bytes | str, caption: str | None = None,
                   buttons: list | None = None) -> int | None:
        """sendPhoto: upload bytes, or resend a file_id (or URL) Telegram already knows."""
        _no_local_path(photo)
        sent = self.call("send_photo", chat_id=self.chat_id(chat), photo=photo, caption=caption,
                         reply_markup=keyboard(buttons))
        return sent.message_id if sent is not None else None

    def send_document(self, chat: str | int, content: bytes, filename: str,
                      caption: str | None = None) -> int | None:
        """sendDocument: upload bytes as a file named `filename` (multipart, up to 50 MB)."""
        if not isinstance(content, (bytes, bytearray)):
            raise PermanentApiError(f"send_document: expected the file's bytes, got {type(content).__name__}")
        sent = self.call("send_document", chat_id=self.chat_id(chat), document=content, filename=filename,
                         caption=caption)
        return sent.message_id if sent is not None else None

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """getFile: {"file_id", "file_unique_id", "file_size", "file_path"} (path relative to the file URL)."""
        found = self.call("get_file", file_id=file_id)
        if found is None:
            return None
        return {"file_id": found.file_id, "file_unique_id": found.file_unique_id,
                "file_size": found.file_size, "file_path": self._relative(found.file_path)}

    def download(self, file_id: str, size: int | None = None) -> tuple[bytes, str] | None:
        """(content, file name): getFile, then GET {base}/file/bot<token>/<file_path>.

        Bots may download up to 20 MB; larger files are refused before any call when `size`
        (e.g. the event's file size) says so, and getFile itself answers "file is too big".
        The name is the one in Telegram's file_path; a document's own name is in the event.
        """
        if size is not None and size > DOWNLOAD_LIMIT:
            raise PermanentApiError(_too_big(file_id, size))
        try:
            found = self.call("get_file", file_id=file_id)
        except PermanentApiError as exc:
            if "file is too big" in str(exc).lower():
                raise PermanentApiError(_too_big(file_id, size), status=400) from None
            raise
        if found is None:
            return None
        if found.file_size and found.file_size > DOWNLOAD_LIMIT:
            raise PermanentApiError(_too_big(file_id, found.file_size))
        content = self._run("download", found.download_as_bytearray())
        return bytes(content), PurePosixPath(urlsplit(found.file_path).path).name

    def set_webhook(self, url: str, secret_token: str,
                    allowed_updates: list[str] | tuple[str, ...] | None = ALLOWED_UPDATES) -> bool | None:
        """setWebhook: Telegram posts updates to `url` with `secret_token` in X-Telegram-Bot-Api-Secret-Token."""
        if not SECRET_TOKEN.fullmatch(secret_token or ""):
            raise PermanentApiError("setWebhook: the secret_token must be 1-256 characters of A-Z, a-z, 0-9, "
                                    "_ and - (set such a webhook_secret on the connection)")
        return self.call("set_webhook", url=url, secret_token=secret_token,
                         allowed_updates=list(allowed_updates) if allowed_updates is not None else None)

    def _relative(self, file_path: str | None) -> str | None:
        """PTB prefixes getFile's file_path with the file URL (token included); keep Telegram's own path."""
        prefix = f"{self.bot.base_file_url}/"
        return file_path[len(prefix):] if file_path and file_path.startswith(prefix) else file_path

    # --- validate --online: the chats the connection names, read only (config/online.py) -------

    def metadata(self) -> dict[str, Any]:
        """getChat for each chat the connection names (`options: {chats: {alias: id}}`): the bot can
        reach it, or Telegram's reason why not ("Bad Request: chat not found"; core.telegram.org/bots/api#getchat).
        Shape: {"chats": {alias: {"id", "type", "title"} or {"id", "error"}}}."""
        found: dict[str, Any] = {}
        for alias, chat in ((self.connection.options or {}).get("chats") or {}).items():
            try:
                info = self.call("get_chat", chat_id=str(chat))
                found[str(alias)] = {"id": str(chat), "type": getattr(info, "type", None),
                                     "title": getattr(info, "title", None) or getattr(info, "username", None)}
            except PermanentApiError as exc:
                found[str(alias)] = {"id": str(chat), "error": str(exc)}
        return {"chats": found}


def _no_local_path(photo: bytes | str) -> None:
    """PTB uploads any string that names a local file; a rule must not be able to send server files."""
    if isinstance(photo, str) and Path(photo).is_file():
        raise PermanentApiError("send_photo: expected bytes, a file_id or an URL, not a path on this server")


def _too_big(file_id: str, size: int | None) -> str:
    what = f"is {size} bytes" if size is not None else "is too big"
    return (f"Telegram file {file_id} {what}; bots can download at most {DOWNLOAD_LIMIT} bytes (20 MB) "
            "through the Bot API")


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Params as the record-only log shows them: markup as JSON, uploads as their size."""
    def show(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return f"<{len(v)} bytes>"
        return v.to_dict() if hasattr(v, "to_dict") else v
    return {k: show(v) for k, v in params.items() if v is not None}
