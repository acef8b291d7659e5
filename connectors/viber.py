"""Viber REST bot API: callbacks in (messages, subscriptions, delivery receipts), messages out.

Sources (tests/payloads/viber/README.md cites them per fixture):
- requests go to https://chatapi.viber.com/pa/<method> (Viber/viber-bot-python viber/api/consts.py
  VIBER_BOT_API_URL) with the bot's token in the `X-Viber-Auth-Token` header (Viber/creators-hub
  docs/api/getting-started/authentication.md);
- every callback is signed: `X-Viber-Content-Signature` is the hex HMAC-SHA256 of the raw body keyed
  with the auth token (viber-bot-python Api.verify_signature; its sample bots answer 403 when it fails);
- Viber answers HTTP 200 to application errors too: the JSON `status` carries the result (0 = ok)
  and `status_message` its name (developers.viber.com/docs/api/rest-bot-api/#error-codes: 5
  receiverNotRegistered, 6 receiverNotSubscribed, 12 tooManyRequests …);
- callbacks (viber-bot-python tests/api/viber_requests/*): `message` (sender, message{type, text,
  media, tracking_data}), `subscribed` (user), `unsubscribed` (user_id), `conversation_started`
  (user, type, context, subscribed), `delivered` / `seen` / `failed` (user_id, message_token, desc),
  and `webhook` (Viber's check when the webhook is set), each with `timestamp` (ms) and `message_token`;
- limits: "You are limited to 500 requests per 10 seconds" (creators-hub docs/api/resources/messaging/
  brodcast-message.md, for broadcast_message); Viber documents no other rate for send_message, so the
  client keeps every call of the bot under that one (`rate_limit` in connections.yaml can lower it).

Keyboard buttons (ActionType `reply`) come back as an ordinary text message whose text is the
button's ActionBody, and anyone can type any text: a button that acts on a CRM record carries a
signed token (`v1.<choice>.<letter><id>.<nonce>.<mac>`, like Telegram's callback data), bound to
the record, the receiver and a per-message nonce, so it can be neither forged nor carried to
another record or person. Such a message is a `button.pressed` about the record.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from connectors.buttons import Signer, bind
from connectors.base import (
    BadPayload,
    BaseClient,
    Connection,
    Entity,
    Event,
    PermanentApiError,
    RawWebhook,
    RecipientUnreachable,
    RetryableApiError,
    Unauthorized,
    UncertainApiError,
    parse_json,
    utc_iso,
)

SOURCE = "viber"
CONTENT_TYPES = ("application/json",)
SIGNATURE_HEADER = "X-Viber-Content-Signature"
AUTH_HEADER = "X-Viber-Auth-Token"
API_URL = "https://chatapi.viber.com/pa"
# error codes (developers.viber.com/docs/api/rest-bot-api/#error-codes)
STATUS_NAMES = {
    0: "ok", 1: "invalidUrl", 2: "invalidAuthToken", 3: "badData", 4: "missingData",
    5: "receiverNotRegistered", 6: "receiverNotSubscribed", 7: "publicAccountBlocked",
    8: "publicAccountNotFound", 9: "publicAccountSuspended", 10: "webhookNotSet",
    11: "receiverNoSuitableDevice", 12: "tooManyRequests", 13: "apiVersionNotSupported",
    14: "incompatibleWithVersion", 15: "publicAccountNotAuthorized",
}
UNREACHABLE = {5, 6, 11}      # the person cannot get messages from this bot: not retried, an opt-out for bulk sends
TOO_MANY = 12
MAX_TEXT = 7000               # send_message text: "Max length 7,000 characters"
MAX_SENDER_NAME = 28          # sender.name: "Max 28 characters"
MAX_PICTURE_TEXT = 768        # picture message description
MAX_ACTION_BODY = 250         # keyboard button ActionBody
# a Viber user id: base64-like ("01234567890A=", "pttm25kSGUo1919sBORWyA=="); sent in bodies only
USER_ID = re.compile(r"[A-Za-z0-9+/=_-]{1,64}")
EVENTS = ("message", "subscribed", "unsubscribed", "conversation_started", "delivered", "seen", "failed",
          "webhook", "client_status")
STOP_WORDS = frozenset({"stop", "стоп", "stop!", "відписатися", "отписаться", "unsubscribe"})


# --- the webhook ------------------------------------------------------------------------------

def verify(raw: RawWebhook, connection: Connection) -> None:
    """The body's HMAC-SHA256 keyed with the bot's auth token, hex, in X-Viber-Content-Signature."""
    token = str((connection.credentials or {}).get("token") or "")
    if not token:
        raise Unauthorized("this Viber connection has no auth token to check X-Viber-Content-Signature with")
    given = str(raw.headers.get(SIGNATURE_HEADER) or raw.query.get("sig") or "").strip().lower()
    expected = signature(token, raw.body)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(f"missing or wrong {SIGNATURE_HEADER} header")


def signature(token: str, body: bytes) -> str:
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One callback → one Event (none for Viber's own webhook check and unknown kinds)."""
    payload = parse_json(raw.body)
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
        raise BadPayload("not a Viber callback (expected an object with an `event`)")
    kind = payload["event"]
    if kind not in EVENTS:
        raise BadPayload(f"unknown Viber callback event {kind[:40]!r}")
    stamp = payload.get("timestamp")
    if not _is_int(stamp) or not 0 <= stamp < 2 ** 63:
        raise BadPayload("malformed Viber callback: `timestamp` is not a non-negative integer (milliseconds)")
    token = payload.get("message_token")
    if token is not None and (not _is_int(token) or not 0 <= token < 2 ** 64):
        raise BadPayload("malformed Viber callback: `message_token` is not a non-negative integer")
    if kind in ("webhook", "client_status"):
        return []
    at = utc_iso(stamp / 1000)
    if kind == "message":
        return [_message(payload, connection, at)]
    if kind in ("subscribed", "conversation_started"):
        user = _user(payload.get("user"), "user")
        chat = {"id": user["id"], "type": "private", "title": user["name"]}
        if kind == "subscribed":
            data = {"subscribed": True, "chat": chat, "from": user}
            return [_event(connection, f"subscribed:{user['id']}:{stamp}", "subscription.changed", user["id"], data,
                           payload, at)]
        context = payload.get("context")
        data = {"chat": chat, "from": user, "context": context if isinstance(context, str) else None,
                "type": payload.get("type") if isinstance(payload.get("type"), str) else None,
                "subscribed": payload.get("subscribed") is True}
        return [_event(connection, f"conversation:{user['id']}:{stamp}", "conversation.started", user["id"], data,
                       payload, at)]
    user_id = _user_id(payload.get("user_id"), "user_id")
    if kind == "unsubscribed":
        data = {"subscribed": False, "chat": {"id": user_id, "type": "private"}}
        return [_event(connection, f"unsubscribed:{user_id}:{stamp}", "subscription.changed", user_id, data,
                       payload, at)]
    # delivered / seen / failed: receipts of a message the bot sent
    if token is None:
        raise BadPayload(f"malformed Viber callback: a `{kind}` receipt without its message_token")
    desc = payload.get("desc")
    data = {"status": kind, "message_id": str(token), "chat": {"id": user_id, "type": "private"},
            "error": desc if isinstance(desc, str) else None}
    return [_event(connection, f"{kind}:{token}:{user_id}", "message.status", user_id, data, payload, at)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _user_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not USER_ID.fullmatch(value):
        raise BadPayload(f"malformed Viber callback: `{where}` is not a Viber user id")
    return value


def _user(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadPayload(f"malformed Viber callback: `{where}` is not an object")
    name = value.get("name")
    return {"id": _user_id(value.get("id"), f"{where}.id"), "name": name if isinstance(name, str) else "",
            "username": None, "is_bot": False,
            "language": value.get("language") if isinstance(value.get("language"), str) else None}


def _event(connection: Connection, ident: str, kind: str, chat: str, data: dict[str, Any], payload: Any,
           at: str, entity: Entity | None = None) -> Event:
    return Event(id=f"{connection.name}:{ident}", connection=connection.name, source=SOURCE, kind=kind,
                 entity=entity or Entity("chat", chat), data=data, raw=payload, occurred_at=at)


def _message(payload: dict[str, Any], connection: Connection, at: str) -> Event:
    sender = _user(payload.get("sender"), "sender")
    message = payload.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadPayload("malformed Viber callback: `message` is not an object with a `type`")
    token = payload.get("message_token")
    if token is None:
        raise BadPayload("malformed Viber callback: a message without its message_token")
    text = message.get("text")
    if text is not None and not isinstance(text, str):
        raise BadPayload("malformed Viber callback: `message.text` is not a string")
    text = text or ""
    chat = {"id": sender["id"], "type": "private", "title": sender["name"]}
    files = []
    media = message.get("media")
    if isinstance(media, str) and message["type"] in ("picture", "video", "file"):
        name = message.get("file_name") if isinstance(message.get("file_name"), str) else None
        files.append({"kind": "photo" if message["type"] == "picture" else "document", "url": media,
                      "name": name or media.rsplit("/", 1)[-1][:120], "size": message.get("size")
                      if _is_int(message.get("size")) else None})
    tracking = message.get("tracking_data")
    data: dict[str, Any] = {"chat": chat, "from": sender, "text": text, "message_id": str(token),
                            "files": files, "tracking_data": tracking if isinstance(tracking, str) else None,
                            "stop": text.strip().casefold() in STOP_WORDS}
    ident = f"message:{token}"
    if message["type"] == "text" and text.startswith("v1."):
        bound = read_choice(text, connection, sender["id"])
        data.update(button=text, callback_id=None)
        if "error" in bound:
            data["token_error"] = bound["error"]
            return _event(connection, ident, "button.pressed", sender["id"], data, payload, at)
        record = bound["record"]
        data.update(button=bound["choice"], record=record, approval=bound["nonce"], callback_data=text)
        return _event(connection, ident, "button.pressed", sender["id"], data, payload, at,
                      entity=Entity(record["type"], record["id"]))
    return _event(connection, ident, "message.received", sender["id"], data, payload, at)


# --- buttons bound to a CRM record ------------------------------------------------------------------
#   v1.<choice>.<letter><record id>.<nonce>.<mac>    e.g. v1.approve.t1042.Xk3_q9.Qm9vYmFyYmF6cQ12
# signed as connectors/buttons.py says, with a 96-bit MAC; the bot's token signs when no secret is set
BUTTONS = Signer("v1", mac_chars=16, token_secret=True)
TOKEN = BUTTONS.pattern


def sign_choice(connection: Connection, choice: str, record: dict[str, str], nonce: str, receiver: str) -> str:
    """The ActionBody of one choice of a message bound to `record`, sent to `receiver`."""
    return BUTTONS.sign(connection, choice, record, nonce, receiver)


def read_choice(data: str, connection: Connection, receiver: str) -> dict[str, Any]:
    """{"error"} for a forged, damaged or foreign token; else the binding {"choice", "nonce", "record"}."""
    return BUTTONS.read(data, connection, receiver)


def keyboard(buttons: list[list[dict[str, str]]] | None) -> dict[str, Any] | None:
    """Rows of {"text", "data"} (a reply button) or {"text", "url"} (open-url) → a Viber keyboard.
    A row's buttons share its 6 columns (Columns 1-6; the last one takes what is left). A reply
    button is `Silent` (developers.viber.com/docs/tools/keyboards: the press is not shown in the
    chat as the user's message, so the signed token stays out of sight; no minimum API version)."""
    if not buttons:
        return None
    out = []
    for row in buttons:
        if not row or len(row) > 6:
            raise PermanentApiError("a Viber keyboard row holds 1-6 buttons")
        width = 6 // len(row)
        for i, b in enumerate(row):
            columns = width if i < len(row) - 1 else 6 - width * (len(row) - 1)
            if b.get("url"):
                action = {"ActionType": "open-url", "ActionBody": str(b["url"])}
            else:
                action = {"ActionType": "reply", "ActionBody": str(b.get("data") or b.get("text") or ""),
                          "Silent": True}
            if not 1 <= len(action["ActionBody"]) <= MAX_ACTION_BODY:
                raise PermanentApiError(f"a Viber button's ActionBody is 1-{MAX_ACTION_BODY} characters")
            out.append({"Columns": columns, "Rows": 1, "Text": str(b.get("text") or ""), **action})
    return {"Type": "keyboard", "DefaultHeight": False, "Buttons": out}


# --- the client -------------------------------------------------------------------------------------

class Client(BaseClient):
    """Calls on one Viber bot: each verb is one POST of a JSON body."""

    rate_per_second = 50.0    # 500 requests in any 10 s (see the module's docstring)
    burst = 500.0
    docs_url = "https://developers.viber.com/docs/api/rest-bot-api/"
    reports_sends = True      # every call goes through request()
    capabilities = frozenset({"send_message", "send_approval", "send_photo"})

    def auth_headers(self) -> dict[str, str]:
        return {AUTH_HEADER: str(self.connection.credentials.get("token") or "")}

    def _url(self, method: str) -> str:
        return f"{(self.connection.base_url or API_URL).rstrip('/')}/{method}"

    def _sender(self) -> dict[str, str]:
        name = str((self.connection.options or {}).get("sender_name") or self.connection.name)
        return {"name": name[:MAX_SENDER_NAME]}

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST /pa/<method>; Viber's `status` ≠ 0 becomes RetryableApiError (12 tooManyRequests:
        refused, nothing sent), RecipientUnreachable (5, 6, 11) or PermanentApiError (the rest).
        A 5xx or a timeout after the request left is uncertain (BaseClient.request: a POST)."""
        resp = self.request("POST", f"/{method}", json_body=body, url=self._url(method))
        if resp is None:   # record-only
            return None
        try:
            answer = resp.json()
        except ValueError:
            # HTTP 200 but no JSON: Viber may have sent it and failed in answering
            raise UncertainApiError(f"POST /{method}: answer is not JSON (the message may have been sent)",
                                    status=resp.status_code) from None
        status = answer.get("status") if isinstance(answer, dict) else None
        if status == 0:
            return answer
        name = STATUS_NAMES.get(status, "generalError") if _is_int(status) else "no status"
        what = f"POST /{method}: Viber status {status} {name}: {str((answer or {}).get('status_message') or '')[:200]}"
        if status == TOO_MANY:
            raise RetryableApiError(what, status=429)
        if status in UNREACHABLE:
            raise RecipientUnreachable(what, status=400)
        raise PermanentApiError(what, status=400)

    def _receiver(self, chat: Any) -> str:
        named = ((self.connection.options or {}).get("chats") or {}).get(str(chat))
        receiver = str(named if named not in (None, "") else chat).strip()
        if not USER_ID.fullmatch(receiver):
            raise PermanentApiError(f"{receiver[:40]!r} is not a Viber user id")
        return receiver

    def send_message(self, chat: str, text: str, buttons: list | None = None, parse_mode: str | None = None,
                     tracking_data: str | None = None) -> str | None:
        """send_message of type text (up to 7000 characters), with a keyboard if given; the message_token.
        Viber has no parse modes (its text is plain, with its own *bold* _italic_ marks)."""
        if parse_mode:
            raise PermanentApiError(f"Viber has no parse_mode ({parse_mode!r}): send plain text")
        if not text or len(text) > MAX_TEXT:
            raise PermanentApiError(f"a Viber text message is 1-{MAX_TEXT} characters, this one {len(text or '')}")
        body: dict[str, Any] = {"receiver": self._receiver(chat), "sender": self._sender(), "type": "text",
                                "text": text}
        return self._send(body, buttons, tracking_data)

    def send_photo(self, chat: str, photo: Any, caption: str | None = None, buttons: list | None = None) -> str | None:
        """send_message of type picture: Viber fetches the picture from an URL (JPEG/PNG, ≤ 1 MB)."""
        if not isinstance(photo, str) or not photo.startswith(("https://", "http://")):
            raise PermanentApiError("a Viber picture is sent as an URL Viber can fetch, not as bytes or a path")
        text = caption or ""
        if len(text) > MAX_PICTURE_TEXT:
            raise PermanentApiError(f"a Viber picture's text is at most {MAX_PICTURE_TEXT} characters")
        body = {"receiver": self._receiver(chat), "sender": self._sender(), "type": "picture", "text": text,
                "media": photo}
        return self._send(body, buttons, None)

    def _send(self, body: dict[str, Any], buttons: list | None, tracking_data: str | None) -> str | None:
        markup = keyboard(buttons)
        if markup:
            body["keyboard"] = markup
        if tracking_data:
            body["tracking_data"] = tracking_data[:4000]
        answer = self.call("send_message", body)
        return str(answer["message_token"]) if answer and answer.get("message_token") is not None else None

    def send_approval(self, chat: str, text: str, choices: list[dict[str, str]], record: dict[str, str],
                      nonce: str, approvers: Any = "chat_members", parse_mode: str | None = None) -> str | None:
        """A text message with one signed reply button per choice, bound to a CRM record.

        The policy (labels) is kept under the approval's key before the message leaves, so that a press
        coming right after it finds them; the first press a rule acts on is the choice
        (pipeline/links.py claim), later ones are refused. Viber shows the keyboard to the receiver
        alone, so the receiver is the approver (the token is bound to them)."""
        receiver = self._receiver(chat)
        rows = bind(BUTTONS, self.connection, self.store, self.key_prefix, choices, record, nonce, receiver,
                    "chat_members")
        return self.send_message(receiver, text, buttons=rows, parse_mode=parse_mode)

    def set_webhook(self, url: str, event_types: list[str] | None = None) -> dict[str, Any] | None:
        """set_webhook: Viber checks the URL with a `webhook` callback, then posts the events named."""
        body: dict[str, Any] = {"url": url}
        if event_types:
            body["event_types"] = list(event_types)
        return self.call("set_webhook", body)
