"""The generic outbound webhook: JSON POSTs under a configured base_url, secret from the environment."""
from __future__ import annotations

import pytest

from connectors import webhook
from connectors.base import (
    Connection,
    PermanentApiError,
    RawWebhook,
    RetryableApiError,
    Unauthorized,
)
from tests.fakes_telephony import FakeHook


@pytest.fixture
def hook():
    server = FakeHook().start()
    yield server
    server.stop()


def conn(url: str, secret: str | None = "hook-secret", **options) -> Connection:
    return Connection(name="ads-audiences", type="webhook", base_url=f"{url}/audiences",
                      credentials={"secret": secret} if secret else {}, options=options)


def test_posts_json_with_the_secret_header(hook):
    answer = webhook.Client(conn(hook.url)).post_webhook({"audience": "бриф", "phone": "+79161234567"}, "/brief")
    [call] = hook.received("POST", "/audiences/brief")
    assert call.body == {"audience": "бриф", "phone": "+79161234567"}
    assert call.headers["X-Webhook-Secret"] == "hook-secret" and call.headers["Content-Type"] == "application/json"
    assert answer == {"status": 200, "response": {"ok": True, "added": 1}}


def test_a_custom_header_name_and_no_path(hook):
    hook.header = "X-Api-Key"
    webhook.Client(conn(hook.url, secret_header="X-Api-Key")).post_webhook({"a": 1})
    [call] = hook.received("POST", "/audiences")
    assert call.headers["X-Api-Key"] == "hook-secret"


@pytest.mark.parametrize("path", ["https://evil.example/x", "//evil.example/x", "/../admin", "a/../../b", "\\\\evil"])
def test_a_rule_cannot_leave_the_base_url(hook, path):
    with pytest.raises(PermanentApiError, match="must be a path under the connection's base_url"):
        webhook.Client(conn(hook.url)).post_webhook({"a": 1}, path)
    assert hook.calls == []


def test_errors_split_in_two(hook):
    hook.fail("/audiences", 503, {"error": "busy"})
    with pytest.raises(RetryableApiError, match="HTTP 503"):
        webhook.Client(conn(hook.url)).post_webhook({"a": 1})
    with pytest.raises(PermanentApiError, match="HTTP 403"):
        webhook.Client(conn(hook.url, secret="wrong")).post_webhook({"a": 1})


def test_record_only_when_asked(hook):
    calls = []
    client = webhook.Client(conn(hook.url, record_only=True), recorder=lambda *a: calls.append(a))
    assert client.post_webhook({"a": 1})["recorded"] and hook.calls == [] and calls[0][2] == {"a": 1}


def test_takes_no_webhooks(hook):
    with pytest.raises(Unauthorized):
        webhook.verify(RawWebhook(headers={}, content_type="application/json", body=b"{}"), conn(hook.url))
