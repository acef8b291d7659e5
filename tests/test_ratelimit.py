"""The shared sliding window: never more than N calls in any window, across clients of one connection."""
from __future__ import annotations

import threading
import time

from ratelimit import Limit, RateLimiter
from tests.reliability.harness import max_in_window

# A caller's stamp is taken after Redis granted its slot; a slot granted at the window's edge can be
# stamped a little later than Redis's clock said (thread scheduling on a loaded machine). Windows are
# checked this much shorter than the limit's own window.
SLACK = 0.05
# Callers that hold their slot (acquire(hold=…), then release once "answered") are stamped between the
# grant and the release, as a vendor sees a request arrive: the limit holds exactly, however late the
# stamp, but for Redis's clock in whole milliseconds.
MS = 0.002


def test_a_full_window_then_one_slot_as_the_oldest_call_leaves_it(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=20, burst=5)       # 5 calls in any 0.25 s
    assert [limiter.wait_time("c", limit) for _ in range(5)] == [0.0] * 5
    wait = limiter.wait_time("c", limit)
    assert 0.15 < wait <= 0.251           # until the first call is 0.25 s old
    time.sleep(wait)
    assert limiter.wait_time("c", limit) == 0.0


def test_no_second_window_holds_more_than_the_limit_even_after_an_idle_spell(redis_db):
    """The token bucket this replaced let a full burst and a second's refill through within one
    second (2x the limit) after an idle spell; a window log never does."""
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=7, burst=7)
    stamps: list[float] = []
    start = time.monotonic()
    while len(stamps) < 21 and time.monotonic() - start < 10:
        release = limiter.acquire("amo", limit, hold=5.0)
        stamps.append(time.monotonic())
        release()
    assert len(stamps) == 21
    assert max_in_window(stamps, 1.0 - MS) <= 7
    assert stamps[-1] - stamps[0] >= 2.0 - SLACK    # 21 calls at 7 per second: 3 windows


def test_two_processes_worth_of_callers_share_one_window(redis_db):
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=10, burst=1)       # one call in any 0.1 s
    stamps: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(5):
            release = limiter.acquire("amo", limit, hold=5.0)
            with lock:
                stamps.append(time.monotonic())
            release()

    threads = [threading.Thread(target=caller) for _ in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(stamps) == 10
    # 10 calls at 10/s with one per 0.1 s take at least 0.9 s, whoever makes them
    assert time.monotonic() - start >= 0.85
    assert max_in_window(sorted(stamps), 0.1 - MS) <= 1   # never two in the same tenth


def test_runtime_clients_get_their_connections_limit(runtime, fake_amo):
    client = runtime.client("quickstart-amo")
    assert client.limiter is not None
    first = time.monotonic()
    for _ in range(7):  # amoCRM: 7 in any second
        client.limiter()
    client.limiter()    # the 8th waits until the first is a second old
    assert time.monotonic() - first >= 1.0 - SLACK


def test_telegram_keeps_one_message_per_second_per_chat(runtime, fake_tg):
    bot = runtime.client("quickstart-bot")
    start = time.monotonic()
    for _ in range(3):
        bot.send_message("-1001234567890", "x")
    assert time.monotonic() - start >= 1.9      # 3 messages to one group: at least 2 s apart in all
    assert len(fake_tg.method_calls("sendMessage")) == 3
    other = time.monotonic()
    bot.send_message("42", "y")                 # another chat does not wait for that one
    assert time.monotonic() - other < 0.5


def test_a_telegram_group_gets_at_most_20_messages_in_any_minute(redis_db):
    """Telegram's group limit (20 a minute, connectors/telegram.PER_GROUP): the 21st waits until
    the first is a minute old, however the 20 were spread."""
    from connectors.telegram import PER_GROUP
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(*PER_GROUP)
    granted = [limiter.wait_time("group:-100", limit) for _ in range(20)]
    assert granted == [0.0] * 20
    assert 59.0 < limiter.wait_time("group:-100", limit) <= 60.001


def test_the_bot_limit_holds_under_concurrent_callers(redis_db):
    """Telegram's bot limit (30 messages a second) from 4 threads asking at once: no 1 s window holds more."""
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=30, burst=30)
    stamps: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(20):
            release = limiter.acquire("bot", limit, hold=5.0)
            with lock:
                stamps.append(time.monotonic())
            release()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert len(stamps) == 80
    assert max_in_window(sorted(stamps), 1.0 - MS) <= 30


def test_a_call_under_several_limits_takes_a_slot_in_all_or_in_none(redis_db):
    """A Telegram message counts against the bot, its chat and its group in one script call: when
    one window is full nothing is taken from the others, and the wait is the fullest window's."""
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    bot, chat, group = Limit(rate=30, burst=30), Limit(rate=1, burst=1), Limit(rate=20 / 60, burst=20)
    assert limiter.wait_time("bot", bot, ("chat:-1", chat), ("group:-1", group)) == 0.0
    wait = limiter.wait_time("bot", bot, ("chat:-1", chat), ("group:-1", group))
    assert 0.0 < wait <= 1.001                              # the chat's window is full for ~1 s
    bot_log = redis_db.zcard("crmbridge-test:rate:bot")
    group_log = redis_db.zcard("crmbridge-test:rate:group:-1")
    assert (bot_log, group_log) == (1, 1)                   # the refused call took no slot anywhere
    assert limiter.wait_time("bot", bot, ("chat:-2", chat)) == 0.0   # another chat goes at once
    assert redis_db.zcard("crmbridge-test:rate:bot") == 2


def test_inside_a_deferring_job_a_far_slot_is_not_waited_for(redis_db):
    """A slot a minute away (a group's window full of answered calls) is certain: SlotLater at once,
    with the wait, and nothing logged; outside such a job the caller waits as before."""
    import pytest
    from ratelimit import SlotLater, deferring
    limiter = RateLimiter(redis_db, "crmbridge-test:", max_wait=0.3)
    limit = Limit(rate=20 / 60, burst=20)
    assert [limiter.wait_time("group:-100", limit) for _ in range(20)] == [0.0] * 20
    started = time.monotonic()
    with deferring(1.5), pytest.raises(SlotLater) as exc:
        limiter.acquire("group:-100", limit)
    assert time.monotonic() - started < 0.2 and exc.value.certain and 59.0 < exc.value.retry_after <= 60.001
    assert redis_db.zcard("crmbridge-test:rate:group:-100") == 20
    with pytest.raises(Exception) as waited:   # no patience: the limiter's own max_wait, then a retryable error
        limiter.acquire("group:-100", limit)
    assert not isinstance(waited.value, SlotLater)


def test_a_wait_on_calls_in_flight_is_polled_for_the_patience_then_deferred(redis_db):
    """Held slots (calls not answered yet) are logged ahead, so the wait they report is an upper
    bound: the caller polls for its patience (an answer may free a slot), then defers, uncertain."""
    import pytest
    from ratelimit import SlotLater, deferring
    limiter = RateLimiter(redis_db, "crmbridge-test:")
    limit = Limit(rate=2, burst=2)
    releases = [limiter.acquire("acct", limit, hold=21.0) for _ in range(2)]
    started = time.monotonic()
    with deferring(0.3), pytest.raises(SlotLater) as exc:
        limiter.acquire("acct", limit, hold=21.0)
    assert 0.15 <= time.monotonic() - started < 1.0 and not exc.value.certain   # polled, then gave up
    releases[0]()   # one call answered: its slot is logged at its answer, and the window has room soon
    with deferring(1.5):
        assert limiter.acquire("acct", limit, hold=21.0) is not None
