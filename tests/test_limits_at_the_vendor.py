"""The vendors' limits, kept where the vendor counts them. FakeAmo (7 requests in any second) and
FakeTelegram (30 messages a second per bot, one a second per chat, 20 a minute per group) enforce
their published limits on the arrival of each request, answer 429 as the vendors do, and count every
violation. Several threads and a second process hammer one amoCRM connection and one Telegram group
through the real clients and the shared limiter for a bounded time: the fakes see none.

The figures are printed (pytest -s): the most calls any window held at the vendor.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_REDIS_URL
from tests.fakes import FakeAmo, FakeTelegram
from tests.limit_hammer import GROUP, LEAD, TG_TOKEN, hammer

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 5.0
PREFIX = "crmbridge-limits-test:"


@pytest.fixture
def vendors(redis_db):
    amo, tg = FakeAmo().enforce_limits().start(), FakeTelegram(TG_TOKEN).enforce_limits().start()
    amo.add_lead({"id": LEAD, "name": "Hammered"})
    yield amo, tg
    amo.stop()
    tg.stop()


def test_the_fakes_refuse_and_count_what_exceeds_the_published_limits(vendors):
    """The fakes' own check: 8 amoCRM requests at once get one 429; a second message to one chat
    within a second gets a 429 with retry_after, as Telegram's does."""
    amo, tg = vendors
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: requests.get(f"{amo.url}/api/v4/leads/{LEAD}", timeout=5).status_code,
                                range(8)))
    assert codes == [200] * 7 + [429] and [v.limit for v in amo.violations] == ["account"]
    send = f"{tg.url}/bot{TG_TOKEN}/sendMessage"
    assert requests.post(send, json={"chat_id": 42, "text": "a"}, timeout=5).json()["ok"] is True
    refused = requests.post(send, json={"chat_id": 42, "text": "b"}, timeout=5)
    assert refused.status_code == 429 and refused.json()["parameters"] == {"retry_after": 1}
    assert requests.post(send, json={"chat_id": 43, "text": "c"}, timeout=5).json()["ok"] is True
    assert [(v.limit, v.key) for v in tg.violations] == [("chat", "42")]


@pytest.mark.timeout(180)
def test_threads_and_two_processes_keep_every_limit_at_the_vendor(vendors):
    amo, tg = vendors
    other = subprocess.Popen(
        [sys.executable, "-m", "tests.limit_hammer", "--redis", TEST_REDIS_URL, "--prefix", PREFIX,
         "--amo", amo.url, "--tg", tg.url, "--seconds", str(SECONDS), "--threads", "8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    here = hammer(TEST_REDIS_URL, PREFIX, amo.url, tg.url, seconds=SECONDS, threads=8, tag="p1-")
    out, err = other.communicate(timeout=150)
    assert other.returncode == 0, err[-2000:]
    there = json.loads(out.strip().splitlines()[-1])
    took = time.monotonic() - started
    figures = {
        "amoCRM requests (7 in any 1 s)": amo.keeper.peak("account"),
        "Telegram bot messages (30 in any 1 s)": tg.keeper.peak("bot"),
        "Telegram group messages (1 in any 1 s)": tg.keeper.peak("chat"),
        "Telegram group messages (20 in any 60 s)": tg.keeper.peak("group"),
    }
    print(f"\n=== limits at the vendor: 2 processes x 8 threads, {SECONDS:g} s of calls ({took:.1f} s in all) ===")
    print(f"  calls (this process)  : {here}")
    print(f"  calls (other process) : {there}")
    for name, peak in figures.items():
        print(f"  max in any window, {name}: {peak}")
    print(f"  violations seen by the fakes: amoCRM {len(amo.violations)}, Telegram {len(tg.violations)}")
    assert amo.violations == [] and tg.violations == []
    assert not [k for k in {**here, **there} if "refused" in k or "failed" in k], (here, there)
    assert figures["amoCRM requests (7 in any 1 s)"] <= 7 and figures["Telegram bot messages (30 in any 1 s)"] <= 30
    assert figures["Telegram group messages (1 in any 1 s)"] <= 1
    # both processes got their share, and the limiter did not starve them: near the limits, less the margin
    assert here["amo"] > 0 and there["amo"] > 0 and here["private"] > 0 and there["private"] > 0
    assert here["amo"] + there["amo"] >= 5 * SECONDS
    assert here["group"] + there["group"] >= SECONDS - 2


@pytest.mark.timeout(60)
def test_planfix_gets_one_request_a_second_from_several_threads(redis_db):
    """Planfix allows one request a second: 4 threads reading one task for 3 s through the client."""
    import threading

    from config.connections import Connections
    from connectors import planfix
    from connectors.base import Connection, Entity
    from queueing import Keys
    import runtime
    from tests.fakes_planfix import FakePlanfix
    fake = FakePlanfix().enforce_limits().start()
    try:
        fake.add("task", {"id": 1042, "name": "Plan"})
        conn = Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest", credentials={"token": "t"})
        rt = runtime.Runtime(settings=None, connections=Connections(connections={"pf": conn}), ruleset=None,
                             store=redis_db, keys=Keys(PREFIX), backend=None)
        deadline, done = time.monotonic() + 3.0, []

        def reader() -> None:
            client = planfix.Client(conn, store=redis_db, key_prefix=PREFIX)
            client.limiter = rt._limiter_for(conn, client)
            while time.monotonic() < deadline:
                client.request("GET", "/task/1042", params={"fields": "id,name"})
                done.append(1)
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        print(f"\n  Planfix: {len(done)} requests in ~3 s, max in any 1 s: {fake.keeper.peak('account')}, "
              f"violations: {len(fake.violations)}")
        assert fake.violations == [] and fake.keeper.peak("account") == 1 and len(done) >= 2
    finally:
        fake.stop()
