"""A generic outbound webhook: JSON POSTs to one configured address (ad-platform audiences). Outbound only.

    connections:
      ads-audiences:
        type: webhook
        base_url: https://hooks.example.com/audiences       # rules add only a path under it
        credentials: {secret: "${ADS_HOOK_SECRET}"}           # optional, sent in a header
        options: {secret_header: X-Webhook-Secret}            # the header's name (this is the default)

Rule files never name a URL: `post_webhook` gives a path that must stay under `base_url`
(no scheme, no host, no `..`), so a rule cannot send data anywhere the connection does not
allow. 429 and 5xx are retried, other 4xx are not.
"""
from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import urlsplit

from connectors.base import (
    BaseClient,
    Connection,
    Event,
    PermanentApiError,
    RawWebhook,
    Unauthorized,
)

SOURCE = "webhook"
CONTENT_TYPES: tuple[str, ...] = ()
OUTBOUND_ONLY = True
BASE_URL_REQUIRED = True
RECORD_ONLY_WITHOUT_CREDENTIALS = False  # the secret is optional: no credentials still calls the hook
DEFAULT_SECRET_HEADER = "X-Webhook-Secret"


def verify(raw: RawWebhook, connection: Connection) -> None:
    """An outbound webhook connection receives nothing."""
    raise Unauthorized(f"connection {connection.name!r} is an outbound webhook connection; it takes no webhooks")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    return []


def safe_path(path: str | None) -> str:
    """'' or a relative path under base_url; anything that could leave it is refused."""
    text = str(path or "").strip()
    if not text:
        return ""
    parts = urlsplit(text)
    normal = posixpath.normpath("/" + text.lstrip("/"))
    if parts.scheme or parts.netloc or "\\" in text or ".." in text.split("/") or normal.startswith("//"):
        raise PermanentApiError(f"post_webhook: path {text!r} must be a path under the connection's base_url, "
                                "not an address")
    return normal


class Client(BaseClient):
    """POSTs JSON to base_url + path, with the connection's secret header when it has one."""

    capabilities = frozenset({"post_webhook"})
    rate_per_second = 5.0

    @property
    def record_only(self) -> bool:
        # a secret is optional: with no credentials at all the hook is still called, unless it is
        # explicitly record-only (options: {record_only: true})
        return bool(self.connection.options.get("record_only"))

    def auth_headers(self) -> dict[str, str]:
        secret = self.connection.credentials.get("secret")
        if not secret:
            return {}
        return {str(self.connection.options.get("secret_header") or DEFAULT_SECRET_HEADER): secret}

    def post_webhook(self, body: Any, path: str | None = None) -> dict[str, Any]:
        """POST body as JSON; returns {"status", "response"} (the answer's JSON, or its first 500 characters)."""
        if not self.connection.base_url:
            raise PermanentApiError(f"connection {self.connection.name!r}: base_url: required for a webhook")
        resp = self.request("POST", safe_path(path), json_body=body)
        if resp is None:
            return {"status": None, "recorded": True}
        try:
            answer: Any = resp.json()
        except ValueError:
            answer = resp.text[:500]
        return {"status": resp.status_code, "response": answer}
