"""Fixtures: a real Redis database of our own, local fake vendor servers, the app and a worker.

Tests use Redis database 15 (CRMBRIDGE_TEST_REDIS_URL to change it), flushed before and
after each test that touches it.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from redis import Redis
from werkzeug.serving import make_server

from config.settings import Settings
from connectors.base import RawWebhook
from tests.fakes import FakeAmo, FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = Path(__file__).resolve().parent / "payloads"
QUICKSTART = ROOT / "config" / "examples" / "quickstart"
TEST_REDIS_URL = os.environ.get("CRMBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TG_TOKEN = "123456:TEST-token"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def raw(name: str, content_type: str | None = None, **query: str) -> RawWebhook:
    """A recorded payload as the receiver would see it."""
    if content_type is None:
        content_type = "application/json" if name.endswith(".json") else "application/x-www-form-urlencoded"
    return RawWebhook(headers={}, content_type=content_type, body=payload(name), query=query)


@pytest.fixture
def redis_db() -> Iterator[Redis]:
    conn = Redis.from_url(TEST_REDIS_URL)
    try:
        conn.ping()
    except Exception as exc:  # the suite needs the real Redis; .ci/run starts it
        pytest.fail(f"Redis at {TEST_REDIS_URL} does not answer: {exc}")
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def fake_amo() -> Iterator[FakeAmo]:
    server = FakeAmo().start()
    yield server
    server.stop()


@pytest.fixture
def fake_tg() -> Iterator[FakeTelegram]:
    server = FakeTelegram(TG_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_amo: FakeAmo, fake_tg: FakeTelegram) -> dict[str, str]:
    """The environment a deployment would give the quickstart, pointed at the fakes."""
    return {"AMO_BASE_URL": fake_amo.url, "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": "amo-secret",
            "TELEGRAM_API_URL": fake_tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": "tg-secret", "TEAM_CHAT_ID": "-1001234567890"}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the quickstart configuration that a test may edit."""
    target = tmp_path / "config"
    shutil.copytree(QUICKSTART, target)
    return target


@pytest.fixture
def settings(config_dir: Path, env: dict[str, str], redis_db: Redis) -> Settings:
    return Settings(config_dir=config_dir, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                    queue_name="crmbridge-test", testing=True, environ=env, action_attempts=3)


@pytest.fixture
def app(settings: Settings):
    from webhooks import create_app
    application = create_app(settings=settings)
    yield application
    application.extensions["crmbridge"].backend.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runtime(app):
    return app.extensions["crmbridge"]


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The real app on a real socket, for tests that post over HTTP."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run_worker(runtime: Any) -> None:
    """Drain the queue with a real RQ worker in this process (burst mode)."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=False)
