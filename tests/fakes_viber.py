"""A fake Viber REST bot API on 127.0.0.1 (connectors/viber.py's sources): POST /pa/<method> with
X-Viber-Auth-Token, answering HTTP 200 with {"status": 0, "status_message": "ok", "message_token": …}
or a non-zero status (6 receiverNotSubscribed for people who unsubscribed, 2 invalidAuthToken,
12 tooManyRequests over the limit), and signed callbacks for the webhook."""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from typing import Any

from tests.fakes import Call, FakeServer, VendorLimit, Violation

TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec9cbb5448c51f"   # the shape of a Viber auth token


class FakeViber(FakeServer):
    def __init__(self, token: str = TOKEN) -> None:
        super().__init__()
        self.token = token
        self.tokens = itertools.count(5741311803571721087)
        self.unsubscribed: set[str] = set()
        self.not_registered: set[str] = set()
        self.delivered: list[dict[str, Any]] = []    # the messages Viber took (status 0)
        self.route("POST", r"/pa/(\w+)", self._method)

    @property
    def base_url(self) -> str:
        return f"{self.url}/pa"

    def sent(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.delivered)

    def enforce_limits(self, calls: int = 500, window: float = 10.0) -> "FakeViber":
        """500 requests in any 10 s (creators-hub broadcast-message.md), counted per bot."""
        return self.limited([VendorLimit("bot", calls, window, lambda call: "bot")])

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        return 200, {"status": 12, "status_message": "tooManyRequests"}, {}

    def _method(self, call: Call, m: re.Match):
        if call.headers.get("X-Viber-Auth-Token") != self.token:
            return 200, {"status": 2, "status_message": "invalidAuthToken"}, {}
        body = call.body if isinstance(call.body, dict) else {}
        name = m.group(1)
        if name == "set_webhook":
            return 200, {"status": 0, "status_message": "ok", "event_types": ["delivered", "seen", "failed",
                         "subscribed", "unsubscribed", "conversation_started"]}, {}
        if name != "send_message":
            return 200, {"status": 3, "status_message": "badData"}, {}
        receiver = body.get("receiver")
        if not receiver or not body.get("type") or not (body.get("sender") or {}).get("name"):
            return 200, {"status": 4, "status_message": "missingData"}, {}
        if receiver in self.not_registered:
            return 200, {"status": 5, "status_message": "receiverNotRegistered"}, {}
        if receiver in self.unsubscribed:
            return 200, {"status": 6, "status_message": "receiverNotSubscribed"}, {}
        with self.lock:
            self.delivered.append(body)
        return 200, {"status": 0, "status_message": "ok", "message_token": next(self.tokens),
                     "chat_hostname": "SN-CHAT-05_"}, {}


def callback(event: str, token: str = TOKEN, **fields: Any) -> tuple[bytes, dict[str, str]]:
    """A callback body as Viber posts it and its headers (X-Viber-Content-Signature: hex HMAC-SHA256
    of the body keyed with the auth token)."""
    payload = {"event": event, "timestamp": int(time.time() * 1000), **fields}
    if event != "webhook":
        payload.setdefault("message_token", 4912661846655238145)
    body = json.dumps(payload, ensure_ascii=False).encode()
    signature = hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Viber-Content-Signature": signature}
