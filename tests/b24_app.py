"""crmbridge on one Bitrix24 connection (the fake's), for end-to-end rule tests: the connection,
the recorded-format deal webhook, and the app built on a rule file."""
from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from tests.conftest import TEST_REDIS_URL

B24_CONNECTIONS = """
connections:
  shop-b24:
    type: bitrix24
    base_url: ${B24_URL}
    webhook_secret: ${B24_APP_TOKEN}
    credentials:
      webhook: ${B24_CODE}
"""
# ONCRMDEALADD as Bitrix24's outbound handlers send it (tests/payloads/bitrix24/)
DEAL_ADD = (b"event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=410&ts=1766047124"
            b"&auth%5Bapplication_token%5D=app-token&auth%5Bdomain%5D=shop.bitrix24.ru")


def b24_app(tmp_path: Path, fake_b24, rules: str, connections: str = B24_CONNECTIONS):
    """The Flask app (testing, the test Redis) with `rules` as its one rule file."""
    from webhooks import create_app
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(connections, encoding="utf-8")
    (tmp_path / "rules" / "b24.yaml").write_text(rules, encoding="utf-8")
    env = {"B24_URL": fake_b24.base_url, "B24_APP_TOKEN": "app-token", "B24_CODE": fake_b24.code}
    return create_app(settings=Settings(config_dir=tmp_path, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                        queue_name="crmbridge-test", environ=env, testing=True))
