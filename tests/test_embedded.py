"""The embedded default (`make run` without REDIS_URL: an in-process store and worker), as the
README's first look uses it: the sample webhook is taken once and acted on in record-only mode."""
from __future__ import annotations

import json

from config.settings import Settings
from tests.conftest import QUICKSTART

SAMPLE = (QUICKSTART / "sample-webhook.form").read_bytes()
FORM = "application/x-www-form-urlencoded"


def test_the_first_look_takes_the_sample_webhook_once_and_acts_record_only():
    from webhooks import create_app
    app = create_app(settings=Settings(config_dir=QUICKSTART, redis_url=None, testing=True,
                                       environ={"AMO_WEBHOOK_SECRET": "amo-s", "TELEGRAM_WEBHOOK_SECRET": "tg-s"}))
    rt = app.extensions["crmbridge"]
    try:
        assert not rt.backend.durable
        client = app.test_client()
        first = client.post("/hooks/quickstart-amo?token=amo-s", data=SAMPLE, content_type=FORM)
        assert (first.status_code, first.json) == (200, {"accepted": 1, "duplicates": 0})
        again = client.post("/hooks/quickstart-amo?token=amo-s", data=SAMPLE, content_type=FORM)
        assert (again.status_code, again.json) == (200, {"accepted": 0, "duplicates": 1})
        rt.backend.join(timeout=10)
        done = [json.loads(e[b"entry"]) for _, e in rt.store.xrange(rt.keys("audit"))]
        actions = [(d["action"].split("(")[0], d["what"]) for d in done if d["what"].startswith("action.")]
        assert sorted(actions) == [("quickstart-amo.create_task", "action.done"),
                                   ("quickstart-bot.send_message", "action.done")]
    finally:
        rt.backend.close()


def test_a_webhook_the_embedded_store_cannot_queue_is_not_kept_as_seen(monkeypatch):
    """A 503 asks the vendor to send it again: its seen-mark must not make that retry a duplicate."""
    from redis.exceptions import RedisError

    from webhooks import create_app
    app = create_app(settings=Settings(config_dir=QUICKSTART, redis_url=None, testing=True,
                                       environ={"AMO_WEBHOOK_SECRET": "amo-s", "TELEGRAM_WEBHOOK_SECRET": "tg-s"}))
    rt = app.extensions["crmbridge"]
    try:
        def broken(event, pipe=None):
            raise RedisError("the store failed")
        monkeypatch.setattr(rt.backend.order, "ticket", broken)
        client = app.test_client()
        assert client.post("/hooks/quickstart-amo?token=amo-s", data=SAMPLE, content_type=FORM).status_code == 503
        monkeypatch.undo()
        retry = client.post("/hooks/quickstart-amo?token=amo-s", data=SAMPLE, content_type=FORM)
        assert retry.json == {"accepted": 1, "duplicates": 0}
        rt.backend.join(timeout=10)
    finally:
        rt.backend.close()
