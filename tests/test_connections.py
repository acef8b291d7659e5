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


CRM_EXPECTED = 'connections.yaml:13: connection "bot" → options → link → crm: expected the name of a CRM connection ' \
    "of this file (pf), found "


@pytest.mark.parametrize("link, expected", [
    ("{crm: agency-planfx, field: Telegram чат}", CRM_EXPECTED + "'agency-planfx'"),
    ("{crm: bot}", CRM_EXPECTED + "'bot'"),
    ("{field: Telegram чат}", CRM_EXPECTED + "None"),
    ("agency-planfix", ('connections.yaml:12: connection "bot" → options → link: expected a mapping such as '
                        "{crm: <connection>, field: …}, found 'agency-planfix'")),
])
def test_a_bots_link_must_name_a_crm_connection(tmp_path, link, expected):
    """options.link.crm is checked when the configuration loads, not on the first /link or press."""
    text = f"""
calendars: {{}}
connections:
  pf:
    type: planfix
    webhook_secret: ${{S}}
  bot:
    type: telegram
    webhook_secret: ${{S}}
    options:
      chats: {{staff: "-100"}}
      link:
        {link}
"""
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, text, {"S": "s"})
    assert str(exc.value).splitlines()[0] == expected
    fixed = text.replace(link, "{crm: pf, field: Telegram чат}")
    assert load(tmp_path, fixed, {"S": "s"}).connections["bot"].options["link"]["crm"] == "pf"


def test_the_rate_may_come_from_the_environment_and_above_the_vendors_limit_warns(tmp_path):
    """`options: {rate_per_second: ${AMO_RATE_PER_SECOND:-7}}`: text from the environment becomes a
    number; above amoCRM's documented 7/s it loads with a warning (a raised quota, a test's fake)."""
    text = """
connections:
  amo:
    type: amocrm
    webhook_secret: ${S}
    options: {rate_per_second: "${AMO_RATE_PER_SECOND:-7}", burst: "${AMO_BURST:-7}"}
"""
    default = load(tmp_path, text, {"S": "s"})
    assert default.connections["amo"].options == {"rate_per_second": 7.0, "burst": 7.0}
    assert not [w for w in default.warnings if "rate_per_second" in w]
    raised = load(tmp_path, text, {"S": "s", "AMO_RATE_PER_SECOND": "50"})
    assert raised.connections["amo"].options["rate_per_second"] == 50.0
    assert 'connection "amo" → options → rate_per_second: 50 is above the amocrm limit of 7 requests per second' \
        in " ".join(raised.warnings)
    for bad in ("fast", "0", "-1", "inf"):   # empty: `:-` gives the default, as in a shell
        with pytest.raises(ConfigErrors) as exc:
            load(tmp_path, text, {"S": "s", "AMO_RATE_PER_SECOND": bad})
        assert str(exc.value).splitlines()[0] == (
            f'connections.yaml:6: connection "amo" → options → rate_per_second: expected a positive number '
            f"of requests per second, found {bad!r}")


def test_the_limiter_takes_the_configured_rate(tmp_path, redis_db, monkeypatch):
    import runtime
    from connectors import amocrm
    from queueing import Keys
    loaded = load(tmp_path, "connections:\n  amo:\n    type: amocrm\n    webhook_secret: ${S}\n"
                            "    options: {rate_per_second: '${R}'}\n", {"S": "s", "R": "3"})
    calls = []
    monkeypatch.setattr(runtime.RateLimiter, "acquire", lambda self, key, limit, **kw: calls.append((key, limit)))
    rt = runtime.Runtime(settings=None, connections=loaded, ruleset=None, store=redis_db, keys=Keys("t:"), backend=None)
    conn = loaded.connections["amo"]
    rt._limiter_for(conn, amocrm.Client(conn, store=redis_db))()
    assert calls == [("amo", runtime.Limit(3.0, 3.0, margin=0.1))]   # the default margin: 3 calls in any 1.1 s


def test_only_forward_on_a_crm_that_does_not_know_its_stage_order_is_refused_at_start_up(tmp_path):
    from config.settings import Settings
    from runtime import load_configuration
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text("""
connections:
  amo: {type: amocrm, webhook_secret: "${S}"}
  b24: {type: bitrix24, webhook_secret: "${S}"}
  pf: {type: planfix, webhook_secret: "${S}"}
""", encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text("""rules:
  - name: amo forward
    on: {event: file.added, connection: amo}
    do: [{move_to_stage: {stage: Proposal, only_forward: true}}]
  - name: b24 forward
    on: {event: file.added, connection: b24}
    do:
      - add_note: x
      - move_to_stage: {stage: Proposal, only_forward: true}
  - name: pf plain
    on: {event: task.updated, connection: pf}
    do: [{move_to_stage: Done}]
  - name: pf forward by connection
    on: {event: file.added, connection: amo}
    do: [{move_to_stage: {stage: Done, only_forward: true, connection: pf}}]
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as exc:
        load_configuration(Settings(config_dir=tmp_path, environ={"S": "s"}))
    lines = str(exc.value).splitlines()
    assert lines[-1] == "1 error in 1 file; crmbridge did not start."  # Bitrix24 reads its stage order now
    assert [line.split(": rule ")[0].rsplit("/", 1)[-1] for line in lines[:-1]] == ["r.yaml:15"]
    assert ('rule "pf forward by connection": move_to_stage → only_forward: not supported for planfix '
            "(connection 'pf'); only amoCRM and Bitrix24 read their stages' order") in lines[0]


def test_a_connections_time_zone_is_checked_and_a_planfix_catch_up_without_one_warns(tmp_path):
    """Planfix reads dates, and the catch-up's filter, in the token user's zone (options.timezone)."""
    text = """
connections:
  pf:
    type: planfix
    webhook_secret: ${S}
    options: {catch_up: {every: 10 minutes}, timezone: "${PF_ZONE:-Europe/Kyiv}"}
"""
    assert not [w for w in load(tmp_path, text, {"S": "s"}).warnings if "timezone" in w]
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, text, {"S": "s", "PF_ZONE": "Kyiv"})
    assert "options → timezone: expected an IANA time zone such as Europe/Kyiv, found 'Kyiv'" in str(exc.value)
    unset = load(tmp_path, text.replace(', timezone: "${PF_ZONE:-Europe/Kyiv}"', ""), {"S": "s"})
    assert 'connection "pf" → options: catch_up without timezone' in " ".join(unset.warnings)
