"""connections.yaml `options: {rate_limit: …}`: a connection's own limit, its margin, and Telegram's
per-chat and per-group limits, checked at start-up with their lines, then taken by the limiter."""
from __future__ import annotations

import time

import pytest

import runtime
from config.loader import ConfigErrors
from connectors import amocrm, telegram
from queueing import Keys
from ratelimit import DEFAULT_MARGIN, Limit, RateLimiter, configured
from tests.test_connections import load

BOT = """connections:
  bot:
    type: telegram
    webhook_secret: ${S}
    options:
      rate_limit:
        per_second: 20
        margin: 0.25
        per_chat: {per_second: 0.5}
        per_group: {per_minute: "${GROUP_RATE:-12}"}
"""


def test_the_settings_load_as_numbers_and_the_limiter_takes_them(tmp_path, redis_db, monkeypatch):
    loaded = load(tmp_path, BOT, {"S": "s"})
    options = loaded.connections["bot"].options
    assert options["rate_limit"] == {"per_second": 20.0, "margin": 0.25, "per_chat": {"per_second": 0.5},
                                     "per_group": {"per_minute": 12.0}}
    assert configured(options, "own", (30, 30)) == Limit(20.0, 20.0, 0.25)
    calls = []
    monkeypatch.setattr(runtime.RateLimiter, "acquire", lambda self, key, limit, *more, **kw: calls.append((key, limit, more)))
    rt = runtime.Runtime(settings=None, connections=loaded, ruleset=None, store=redis_db, keys=Keys("t:"), backend=None)
    conn = loaded.connections["bot"]
    bot = telegram.Client(conn)
    rt._limiter_for(conn, bot)(also=bot._chat_limits("send_message", "-100"), hold=21)
    [(key, own, more)] = calls
    assert (key, own) == ("bot", Limit(20.0, 20.0, 0.25))
    assert more == (("bot:chat:-100", Limit(0.5, 0.5, 0.25)), ("bot:group:-100", Limit(12 / 60, 12.0, 0.25)))


def test_without_settings_the_vendors_published_limits_get_the_default_margin():
    assert configured({}, "own", (7.0, 7.0)) == Limit(7.0, 7.0, DEFAULT_MARGIN)
    assert Limit(7.0, 7.0, DEFAULT_MARGIN).window_ms == 1100          # 7 calls in any 1.1 s
    assert configured({"rate_per_second": 5.0, "burst": 5.0}, "own", (7, 7)) == Limit(5.0, 5.0, DEFAULT_MARGIN)
    assert configured({}, "per_group", telegram.PER_GROUP).window_ms == 66_000   # 20 in any 66 s


@pytest.mark.parametrize("options, line, message", [
    ("rate_limit: 6", 6, "options → rate_limit: expected a mapping such as {per_second: 6, margin: 0.1}, found 6"),
    ("rate_limit: {per_second: fast}", 6, "options → rate_limit → per_second: expected a positive number of calls, "
                                          "found 'fast'"),
    ("rate_limit:\n        per_second: 6\n        margin: 2", 8,
     "options → rate_limit → margin: expected a share of the window from 0 to 1 (0.1 is 10 %), found 2"),
    ("rate_limit:\n        per_second: 6\n        per_chat: {per_second: 1}", 8,
     "options → rate_limit: unknown key 'per_chat'; expected one of: per_second, per_minute, burst, margin"),
    ("rate_limit: {per_second: 6, per_minute: 300}", 6, "options → rate_limit: give per_second or per_minute, not both"),
])
def test_a_wrong_setting_names_its_line(tmp_path, options, line, message):
    text = f"connections:\n  amo:\n    type: amocrm\n    webhook_secret: ${{S}}\n    options:\n      {options}\n"
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, text, {"S": "s"})
    assert str(exc.value).splitlines()[0] == f'connections.yaml:{line}: connection "amo" → {message}'


def test_above_the_published_limit_it_warns(tmp_path):
    text = ("connections:\n  amo:\n    type: amocrm\n    webhook_secret: ${S}\n"
            "    options: {rate_limit: {per_second: 10}}\n"
            "  bot:\n    type: telegram\n    webhook_secret: ${S}\n"
            "    options: {rate_limit: {per_chat: {per_second: 2}, per_group: {per_minute: 20}}}\n")
    warnings = " ".join(load(tmp_path, text, {"S": "s"}).warnings)
    assert 'connection "amo" → options → rate_limit: 10 per second is above the amocrm limit of 7' in warnings
    assert "per_chat: above Telegram's 1 message per second" in warnings
    assert "per_group" not in warnings


# --- the slot is held until the answer: the limit holds at the vendor however long the transit ----------

def test_a_held_slot_counts_until_its_answer_then_from_the_answer(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=10, burst=1)                 # one call in any 0.1 s
    release = limiter.acquire("amo", limit, hold=5.0)
    time.sleep(0.15)                                # the call is slow: no answer yet
    assert limiter.wait_time("amo", limit) > 4.5    # still counted as arriving as late as it can
    release()                                       # answered now: the window runs from now
    assert 0.05 < limiter.wait_time("amo", limit) <= 0.101
    time.sleep(0.11)
    assert limiter.wait_time("amo", limit) == 0.0


def test_a_waiting_caller_goes_as_soon_as_a_held_slot_is_released(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=20, burst=1)                 # one call in any 0.05 s
    release = limiter.acquire("amo", limit, hold=10.0)
    import threading
    threading.Timer(0.3, release).start()
    started = time.monotonic()
    limiter.acquire("amo", limit)                   # waits for the answer, then one window
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.05 + limiter.poll + 0.2


def test_a_holder_that_died_frees_its_slot_after_the_hold_and_a_window(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=10, burst=1)
    limiter.acquire("amo", limit, hold=0.3)         # never released: its worker was killed
    assert 0.3 < limiter.wait_time("amo", limit) <= 0.401
    time.sleep(0.41)
    assert limiter.wait_time("amo", limit) == 0.0
    assert 0 < redis_db.pttl("crmbridge-test:rate:amo") <= 1100 + 300   # the log expires by itself


def test_clients_hold_their_slot_through_the_request(fake_amo, redis_db):
    """BaseClient.request takes the slot with hold (the client's timeouts) and releases it on the answer."""
    from connectors.base import Connection, Entity
    conn = Connection(name="amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "t"})
    client = amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    seen = []

    def limiter(**kw):
        seen.append(kw)
        return lambda: seen.append("released")
    client.limiter = limiter
    client.get_raw(Entity("lead", "1"))
    assert seen == [{"hold": 2 * client.timeout + 1.0}, "released"]


@pytest.mark.parametrize("options, line, message", [
    ("leads_limit: 30", 6, "options → leads_limit: expected a mapping such as {per_minute: 10, burst: 10} "
                           "(per_second or per_minute, and burst), found 30"),
    ("leads_limit: {burst: 5}", 6, "options → leads_limit: expected a mapping such as"),
    ("leads_limit: {per_minute: lots}", 6, "options → leads_limit → per_minute: expected a positive number of calls, "
                                           "found 'lots'"),
    ("leads_limit:\n        per_minute: 30\n        brust: 5", 6, "options → leads_limit: expected a mapping such as"),
])
def test_a_wrong_leads_limit_names_its_line(tmp_path, options, line, message):
    text = f"connections:\n  site:\n    type: tilda\n    webhook_secret: ${{S}}\n    options:\n      {options}\n"
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, text, {"S": "s"})
    assert str(exc.value).splitlines()[0].startswith(f'connections.yaml:{line}: connection "site" → {message}')


def test_a_leads_limit_loads_as_numbers_and_becomes_the_doors_window(tmp_path):
    from pipeline.lead_rate import limit_of
    text = ("connections:\n  site:\n    type: tilda\n    webhook_secret: ${S}\n"
            "    options: {leads_limit: {per_minute: \"${PER_MINUTE:-30}\", burst: 10}}\n")
    options = load(tmp_path, text, {"S": "s"}).connections["site"].options
    assert options["leads_limit"] == {"per_minute": 30.0, "burst": 10.0}
    assert limit_of(options) == Limit(0.5, 10.0, 0.0) and limit_of(options).window_ms == 20_000   # 10 in any 20 s
    assert limit_of({"leads_limit": {"per_second": 2}}) == Limit(2.0, 2.0, 0.0) and limit_of({}) is None
