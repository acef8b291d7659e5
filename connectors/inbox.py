"""Social inbox (umnico, or any service posting our generic JSON): messages in, replies out.

A social-inbox service gathers several Instagram accounts' direct messages, comments and story
reactions and posts each one to one webhook. Two JSON bodies are read (docs/connectors/social-inbox.md):
- umnico's: {type: "message.incoming", accountId, leadId, isNewLead, isNewCustomer, message {messageId,
  datetime, sa {id, type, login}, message {text, attachments}, incoming, sender {id, customerId, login,
  profileUrl}, source {id, realId, saId, type}}}. Shape from a live capture quoted in public code
  (aliyaredpilled/chatwoot app/services/umnico/incoming_message_service.rb); umnico's webhook page
  itself (api.umnico.com/docs/ru/apiMethods/events.html) was not readable here.
- ours, for other services: {event: message|comment|story_reaction, message_id, conversation_id,
  account {id, name, network}, sender {id, name, avatar, link}, text, attachments [{type, url, name}],
  sent_at}. Defined by crmbridge, not by any vendor.
Whether umnico signs webhooks is unknown; its webhook registration takes only {url, name}, so the
secret rides in the URL (`?token=`) or, for services that can send one, an X-Crmbridge-Token header.
A service that can sign sends `X-Crmbridge-Signature: sha256=<hex HMAC-SHA256 of the raw body under
the secret>` instead (the secret never travels; a changed body fails).
The client speaks umnico's API v1.3. Samples: tests/payloads/inbox/.

Id grammar: umnico's `leadId` (the conversation, which goes into /v1.3/messaging/<lead>/… and
/v1.3/leads/<lead>) is a positive integer: the live capture has `"leadId": 64950001`, the API's lead
objects a numeric `id` (api.umnico.com/docs/ru/apiMethods/leads.html, quoted in docs/connectors/social-inbox.md),
and the client already refuses any other (_lead_id). The generic format is ours: its
`message_id` and `conversation_id` are 1-128 characters of letters, digits and `._:@=+-`, starting with a
letter or digit (enough for Instagram mids such as "aWdfZAG9tZA1" and "conv-7781"; no `/`, no spaces).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import uuid
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from connectors.base import (
    BadPayload, BaseClient, Connection, Entity, Event, PermanentApiError, RawWebhook, RetryableApiError, Unauthorized,
    check_secret, event_id, parse_json, positive_id, segment, utc_iso,
)

SOURCE = "inbox"
CONTENT_TYPES = ("application/json",)
TOKEN_HEADER = "X-Crmbridge-Token"
SIGNATURE_HEADER = "X-Crmbridge-Signature"   # sha256=<hex HMAC-SHA256(webhook_secret, raw body)>
CHANNELS = ("message", "comment", "story_reaction")
UMNICO_MESSAGE_TYPES = {"message.incoming": "incoming", "message.outgoing": "outgoing"}
# umnico integration types (sa.type) → network; the list is the one public Umnico integrations
# map (aliyaredpilled/chatwoot incoming_message_service.rb MESSENGER_LABELS); others pass as they are
NETWORKS = {"instagramV3": "instagram", "instagram": "instagram", "fb_messenger": "facebook",
            "telegram": "telegram", "telebot": "telegram", "whatsapp2": "whatsapp", "waba": "whatsapp",
            "vk_group": "vk", "viber_bot": "viber", "ok": "max", "max": "max", "discord": "discord"}
# umnico attachment types (photo, doc, video, audio, sticker, link: API docs, messages.html) → ours
FILE_TYPES = {"photo": "image", "image": "image", "doc": "file", "file": "file"}
OUR_CUSTOM_ID = "crmbridge:"  # prefix of the customId we send; umnico echoes it in message.outgoing
GENERIC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}")   # see "Id grammar" above
# Where a client's photo may be downloaded from (download_file): Instagram's CDNs and umnico's own
# hosts, by domain suffix. NOT confirmed from umnico's documentation (its attachment URLs were not
# seen live): `options: {file_hosts: [...]}` replaces the list; an entry "http://host:port" allows
# that one origin over plain HTTP (a service on the same network).
FILE_HOSTS = ("cdninstagram.com", "fbcdn.net", "umnico.com")
MAX_FILE_BYTES = 20 * 1024 * 1024   # Planfix takes larger, but a client's photo is far smaller


def verify(raw: RawWebhook, connection: Connection) -> None:
    """A signed body (X-Crmbridge-Signature) is checked by its signature alone; else the URL's
    `token` (or the X-Crmbridge-Token header) is compared with the connection's secret."""
    signed = raw.headers.get(SIGNATURE_HEADER)
    if signed is not None:
        scheme, _, given = signed.strip().partition("=")
        wanted = sign(raw.body, connection.webhook_secret) if connection.webhook_secret else ""
        if scheme.strip().lower() != "sha256" or not wanted or not hmac.compare_digest(
                given.strip().lower().encode(), wanted.encode()):
            raise Unauthorized(f"wrong signature ({SIGNATURE_HEADER}: expected sha256=<hex HMAC-SHA256 of the body "
                               "under the connection's webhook_secret>)")
        return
    given = raw.headers.get(TOKEN_HEADER) or raw.query.get("token") or ""
    check_secret(given, connection, f"missing or wrong token (URL 'token' or {TOKEN_HEADER} header)")


def sign(body: bytes, secret: str) -> str:
    """The hex HMAC-SHA256 of a body under the webhook secret (what X-Crmbridge-Signature carries after sha256=)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One webhook → one message.received event, or none for kinds of event no rule uses."""
    body = parse_json(raw.body)
    if not isinstance(body, dict):
        raise BadPayload(f"expected a JSON object, found {type(body).__name__}")
    if "event" in body:
        return [_generic_event(body, connection)]
    if isinstance(body.get("type"), str):
        return _umnico_events(body, connection)
    raise BadPayload("not an inbox webhook (expected umnico's 'type' or the generic 'event')")


# --- umnico ---------------------------------------------------------------------------------

def _umnico_events(body: dict[str, Any], connection: Connection) -> list[Event]:
    direction = UMNICO_MESSAGE_TYPES.get(body["type"])
    if direction is None:  # lead.created, lead.changed.status, customer.*: acknowledged, unused
        return []
    if direction == "outgoing" and not connection.options.get("outgoing"):
        return []
    lead = _str(body.get("leadId"))
    if lead is None:
        raise BadPayload(f"{body['type']} without leadId")
    lead = positive_id(body["leadId"] if isinstance(body["leadId"], int) else lead, "leadId")
    message = body.get("message")
    if not isinstance(message, dict):
        raise BadPayload(f"{body['type']}: 'message' is not an object")
    # the live capture has the text in message.message.text; a comment citing umnico's docs puts it
    # in message.text (both in public code: aliyaredpilled/chatwoot, and the NestJS UmnicoController)
    inner = message.get("message") if isinstance(message.get("message"), dict) else {}
    sa, sender = _obj(message, "sa"), _obj(message, "sender")
    source = _obj(message, "source")
    reply_source = source.get("realId") or source.get("id")  # "send source.id if there is no realId"
    data = {
        "account": _account(sa.get("id") or source.get("saId"), sa.get("login"), sa.get("type")),
        "from": _person(sender.get("customerId") or sender.get("id"), sender.get("login") or sender.get("name"),
                        sender.get("avatar"), sender.get("profileUrl")),
        "text": _text(inner.get("text") if "text" in inner else message.get("text")),
        "files": _files(inner.get("attachments", message.get("attachments")), "message.attachments"),
        "channel": "comment" if source.get("type") == "comment" else "message",
        "message_id": _str(message.get("messageId")),
        "direction": direction,
        "reply": {"source": _str(reply_source), "sa_id": _str(source.get("saId") or sa.get("id"))},
        "new_conversation": bool(body.get("isNewLead")), "new_sender": bool(body.get("isNewCustomer")),
    }
    custom_id = str(message.get("customId") or body.get("customId") or "")
    if direction == "outgoing":
        data["by_bridge"] = custom_id.startswith(OUR_CUSTOM_ID)
    key = (f"{connection.name}:umnico:{data['message_id']}" if data["message_id"]
           else event_id(connection.name, "umnico", body))
    return [Event(id=key, connection=connection.name, source=SOURCE, kind="message.received",
                  entity=Entity("conversation", lead), data=data, raw=body,
                  occurred_at=_when(message.get("datetime")) or utc_iso())]


# --- the generic format ---------------------------------------------------------------------

def _generic_event(body: dict[str, Any], connection: Connection) -> Event:
    channel = body.get("event")
    if channel not in CHANNELS:
        raise BadPayload(f"event {channel!r} is not one of {', '.join(CHANNELS)}")
    for key in ("message_id", "conversation_id"):
        if _str(body.get(key)) is None:
            raise BadPayload(f"{key} is missing")
        if not GENERIC_ID.fullmatch(_str(body[key]) or ""):
            raise BadPayload(f"{key} must be 1-128 letters, digits or ._:@=+- (found {str(body[key])[:40]!r})")
    account, sender = _obj(body, "account"), _obj(body, "sender")
    data = {
        "account": _account(account.get("id"), account.get("name"), account.get("network")),
        "from": _person(sender.get("id"), sender.get("name"), sender.get("avatar"), sender.get("link")),
        "text": _text(body.get("text")),
        "files": _files(body.get("attachments"), "attachments"),
        "channel": channel,
        "message_id": _str(body["message_id"]),
        "direction": "incoming",
    }
    return Event(id=f"{connection.name}:message:{data['message_id']}", connection=connection.name,
                 source=SOURCE, kind="message.received",
                 entity=Entity("conversation", _str(body["conversation_id"]) or ""), data=data, raw=body,
                 occurred_at=_when(body.get("sent_at")) or utc_iso())


# --- small readers --------------------------------------------------------------------------

def _obj(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(f"'{key}' is not an object")
    return value


def _str(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value).strip() or None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _account(account_id: Any, name: Any, kind: Any) -> dict[str, Any]:
    network = NETWORKS.get(str(kind), _str(kind))
    return {"id": _str(account_id), "name": _str(name), "network": network}


def _person(person_id: Any, name: Any, avatar: Any, link: Any) -> dict[str, Any]:
    return {"id": _str(person_id), "name": _str(name), "avatar": _str(avatar), "link": _str(link)}


def _files(value: Any, where: str) -> list[dict[str, Any]]:
    """Attachments as [{type, url, name}]; umnico's URL may be in url, src or payload.url."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadPayload(f"{where} is not a list")
    files = []
    for item in value:
        if not isinstance(item, dict):
            raise BadPayload(f"{where} holds a {type(item).__name__}, not an object")
        payload = item.get("payload") if isinstance(item.get("payload"), dict) else {}
        kind = str(item.get("type") or "file")
        files.append({"type": FILE_TYPES.get(kind, kind),
                      "url": _str(item.get("url") or item.get("src") or payload.get("url")),
                      "name": _str(item.get("name") or item.get("text"))})
    return files


def _when(stamp: Any) -> str | None:
    """ISO 8601 (the webhook's datetime) or unix milliseconds (umnico's history) as ISO UTC."""
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return utc_iso(stamp / 1000 if stamp > 1e11 else stamp)
    if not isinstance(stamp, str) or not stamp.strip():
        return None
    try:
        moment = datetime.fromisoformat(stamp.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


# --- the API client -------------------------------------------------------------------------

class Client(BaseClient):
    """umnico API v1.3 (api.umnico.com/docs/ru/): reply to a conversation, read it, list managers."""

    # umnico documents no request limit (the integrators' notes in aliyaredpilled/chatwoot
    # UMNICO-INTEGRATION-BRIEF.md say so too), so a conservative 5 per second
    rate_per_second = 5.0
    capabilities = frozenset({"reply", "download_file"})
    default_base_url = "https://api.umnico.com"
    docs_url = "https://api.umnico.com/docs/ru/"

    def __init__(self, connection: Connection, **kwargs: Any):
        super().__init__(connection, **kwargs)
        self._user_id: str | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.credentials.get('token', '')}"}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request under the configured (or umnico's) base URL; the decoded JSON, or None."""
        base = (self.connection.base_url or self.default_base_url).rstrip("/")
        resp = self.request(method, path, json_body=body, url=f"{base}{path}")
        if resp is None or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return None

    def error_message(self, resp: Any) -> str:
        """umnico's own words: `message`, `error` or the first of `errors`, else the raw body."""
        try:
            body = resp.json()
        except ValueError:
            return resp.text[:300]
        if isinstance(body, dict):
            errors = body.get("errors")
            first = errors[0] if isinstance(errors, list) and errors else None
            found = body.get("message") or body.get("error") or (
                first.get("message") if isinstance(first, dict) else first)
            if found:
                return str(found)[:300]
        return resp.text[:300]

    def reply(self, conversation: Any, text: str, attachments: list[dict[str, Any]] | None = None, *,
              source: str | None = None, user_id: str | int | None = None) -> list[str]:
        """POST /v1.3/messaging/<lead>/send, one message per attachment; returns the customIds sent."""
        lead = _lead_id(conversation)
        # `source` (the channel's realId) and `userId` are required: umnico answers 422 without them
        # (aliyaredpilled/chatwoot UMNICO-PROGRESS.md); both are looked up when a rule does not give them
        base = {"source": source or self.reply_source(lead), "userId": _int(user_id or self.manager_id())}
        sent = []
        for message in _messages(text, attachments or []):
            custom_id = f"{OUR_CUSTOM_ID}{uuid.uuid4().hex[:16]}"
            self.call("POST", f"/v1.3/messaging/{segment(lead)}/send",
                      {"message": message, **{k: v for k, v in base.items() if v is not None},
                       "customId": custom_id})
            sent.append(custom_id)
        return sent

    def reply_source(self, conversation: Any) -> str | None:
        """The channel to answer through: GET /v1.3/messaging/<lead>/sources, a `message` one first."""
        lead = _lead_id(conversation)
        sources = self.call("GET", f"/v1.3/messaging/{segment(lead)}/sources")
        if sources is None and self.record_only:
            return None
        items = [s for s in (sources if isinstance(sources, list) else []) if isinstance(s, dict)]
        if not items:
            raise PermanentApiError(f"conversation {lead} has no channel to reply through")
        chosen = next((s for s in items if s.get("type") == "message"), items[0])
        return _str(chosen.get("realId") or chosen.get("id"))

    def manager_id(self) -> str | None:
        """The manager replies are sent as: `options: {user_id: …}`, else the account's owner."""
        configured = self.connection.options.get("user_id")
        if configured not in (None, ""):
            return str(configured)
        if self._user_id is None:
            managers = self.list_managers()
            owner = next((m for m in managers if m["role"] == "owner"), managers[0] if managers else None)
            self._user_id = owner["id"] if owner else None
        return self._user_id

    def get_conversation(self, conversation: Any) -> dict[str, Any] | None:
        """GET /v1.3/leads/<lead>: account, customer, status, responsible, whether the client wrote last."""
        lead = self.call("GET", f"/v1.3/leads/{segment(_lead_id(conversation))}")
        if not isinstance(lead, dict):
            return None
        sa, customer = lead.get("socialAccount") or {}, lead.get("customer") or {}
        return {
            "id": _str(lead.get("id")),
            "account": _account(sa.get("id"), sa.get("login"), sa.get("type")),
            "customer": _person(customer.get("id"), customer.get("name") or customer.get("login"),
                                customer.get("avatar"), customer.get("profileUrl")),
            "status": {"id": _str(lead.get("statusId"))},
            "responsible": {"id": _str(lead.get("userId"))},
            "tags": lead.get("tags") or [],
            # "responseTime: null means the last message in the lead is the client's" (leads.html)
            "client_wrote_last": lead.get("responseTime") is None,
            "raw": lead,
        }

    def download_file(self, url: str) -> tuple[bytes, str]:
        """(content, name) of an attachment's URL (a client's photo), GET without our credentials
        (the umnico token never leaves for another host), from the allowed hosts only (FILE_HOSTS or
        `options.file_hosts`: https, a host that is one of them or under one; IP literals only when
        listed exactly), at most MAX_FILE_BYTES, no redirects followed."""
        target = _allowed_file_url(url, self.connection.options.get("file_hosts") or FILE_HOSTS)
        if self.record_only:
            raise PermanentApiError(f"record-only: {target} not downloaded")
        try:
            resp = self.session.get(target, timeout=self.timeout, stream=True, allow_redirects=False)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetryableApiError(f"GET {target}: {type(exc).__name__}") from None
        with resp:
            if resp.status_code == 429 or resp.status_code >= 500:
                raise RetryableApiError(f"GET {target}: HTTP {resp.status_code}", status=resp.status_code)
            if resp.status_code != 200:
                raise PermanentApiError(f"GET {target}: HTTP {resp.status_code}", status=resp.status_code)
            if int(resp.headers.get("Content-Length") or 0) > MAX_FILE_BYTES:
                raise PermanentApiError(f"GET {target}: larger than {MAX_FILE_BYTES} bytes")
            content = bytearray()
            for chunk in resp.iter_content(64 * 1024):
                content += chunk
                if len(content) > MAX_FILE_BYTES:
                    raise PermanentApiError(f"GET {target}: larger than {MAX_FILE_BYTES} bytes")
        name = unquote(PurePosixPath(urlsplit(target).path).name) or "photo.jpg"
        return bytes(content), name[:200]

    def list_managers(self) -> list[dict[str, Any]]:
        """GET /v1.3/managers (managers.html): [{id, name, email, role: owner|manager}]."""
        managers = self.call("GET", "/v1.3/managers")
        return [{"id": _str(m.get("id")), "name": _str(m.get("name")), "email": _str(m.get("login")),
                 "role": m.get("role")} for m in (managers or []) if isinstance(m, dict)]


def _allowed_file_url(url: Any, hosts: Any) -> str:
    """The URL, if it may be fetched: https to an allowed host (see FILE_HOSTS), or http to an
    origin listed as "http://host[:port]"; else PermanentApiError saying why."""
    text = str(url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise PermanentApiError(f"attachment URL {text[:80]!r} is not a URL") from None
    host = (parts.hostname or "").lower().rstrip(".")
    allowed = [str(h).strip().lower().rstrip("/.") for h in (hosts if isinstance(hosts, (list, tuple)) else [hosts])]
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    if parts.username or parts.password or not host:
        raise PermanentApiError(f"attachment URL {text[:80]!r}: no host, or credentials in it")
    if parts.scheme == "http" and origin in allowed:
        return text
    if parts.scheme != "https":
        raise PermanentApiError(f"attachment URL {text[:80]!r}: only https is fetched")
    try:
        ipaddress.ip_address(host.strip("[]"))
        literal = True
    except ValueError:
        literal = False
    named = [h.removeprefix("https://") for h in allowed if "://" not in h or h.startswith("https://")]
    if (literal and host not in named) or not any(host == h or host.endswith("." + h) for h in named):
        raise PermanentApiError(f"attachment URL host {host!r} is not one of the allowed file hosts "
                                f"({', '.join(named)}; options.file_hosts)")
    return text


def _lead_id(conversation: Any) -> str:
    value = conversation.id if isinstance(conversation, Entity) else conversation
    text = _str(value)
    if text is None or not text.isdigit():
        raise PermanentApiError(f"conversation {value!r} is not an umnico lead id")
    return text


def _int(value: Any) -> int | None:
    return int(value) if _str(value) and str(value).isdigit() else None


def _messages(text: str, attachments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The text alone, or one message per attachment with the text on the first (umnico takes one)."""
    if not attachments:
        return [{"text": text}]
    messages = []
    for n, item in enumerate(attachments):
        # attachment {type: photo|doc, media}: media is "the saved file object" from POST
        # /v1.3/messaging/upload (messages.html); a bare {url} is unconfirmed (see the doc)
        if not isinstance(item, dict) or not _str(item.get("url")):
            raise PermanentApiError(f"attachment {n + 1} has no url (expected {{type, url}})")
        kind = "photo" if item.get("type") in ("image", "photo") else "doc"
        message: dict[str, Any] = {"attachment": {"type": kind, "media": {"url": item["url"]}}}
        if n == 0 and text:
            message["text"] = text
        messages.append(message)
    return messages
