"""connections.yaml: secrets from the environment, every problem with its line."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.connections import load_connections
from config.loader import ConfigErrors


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "connections.yaml"
    path.write_text(text, encoding="utf-8")
    return load_connections(path, env or {}, shown_as="connections.yaml")


def test_secrets_and_urls_come_from_the_environment(tmp_path):
    loaded = load(tmp_path, """
calendars:
  kyiv: {timezone: Europe/Kyiv, country: UA}
connections:
  amo:
    type: amocrm
    base_url: ${AMO_URL}
    webhook_secret: ${AMO_SECRET}
    credentials:
      token: ${AMO_TOKEN}
    calendar: kyiv
  bot:
    type: telegram
    webhook_secret: ${TG_SECRET}
    credentials:
      token: ${TG_TOKEN}
    options: {chats: {team: "${TEAM:--100}"}}
""", {"AMO_URL": "http://127.0.0.1:9", "AMO_SECRET": "s", "AMO_TOKEN": "t", "TG_SECRET": "x"})
    amo, bot = loaded.connections["amo"], loaded.connections["bot"]
    assert (amo.base_url, amo.webhook_secret, amo.credentials, amo.calendar) == ("http://127.0.0.1:9", "s", {"token": "t"}, "kyiv")
    assert not amo.record_only and bot.record_only
    assert bot.options == {"chats": {"team": "-100"}}
    assert loaded.warnings == ['connection "bot" has no credentials: record-only mode, calls are logged, not made']


@pytest.mark.parametrize("entry, expected", [
    ("type: amocrm\n    webhook_secret: plain-text", 'connections.yaml:5: connection "x" → webhook_secret: secrets come '
     "from the environment; expected ${ENV_VAR}, found a literal value"),
    ("type: amocrm", 'connections.yaml:4: connection "x" → webhook_secret: required; expected an environment '
     "reference such as ${MY_SECRET}"),
    ("type: amocrm\n    webhook_secret: ${NOPE}", 'connections.yaml:5: connection "x" → webhook_secret: environment '
     "variable NOPE is not set"),
    ("type: hubspot\n    webhook_secret: ${S}", 'connections.yaml:4: connection "x" → type: expected one of '),
    ("type: amocrm\n    webhook_secret: ${S}\n    credentials: {token: \"${S}\"}", 'connections.yaml:4: connection "x" → '
     "base_url: required when credentials are set (the account's own address)"),
    ("type: amocrm\n    webhook_secret: ${S}\n    base_url: ftp://x", 'connections.yaml:6: connection "x" → base_url: '
     "expected an http(s) URL, found 'ftp://x'"),
    ("type: amocrm\n    webhook_secret: ${S}\n    colour: red", "connections.yaml:6: connection \"x\" → unknown key 'colour'"),
    ("type: amocrm\n    webhook_secret: ${S}\n    calendar: mars", "connections.yaml:6: connection \"x\" → calendar: "
     "no calendar 'mars' in 'calendars:'"),
])
def test_errors(tmp_path, entry, expected):
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, f"calendars: {{}}\nconnections:\n  x:\n    {entry}\n", {"S": "s"})
    assert str(exc.value).splitlines()[0].startswith(expected)
