"""A bulk send run by three `python worker.py` processes that are SIGKILLed (the whole process
group, as when a container dies) and restarted while they send: every recipient gets the message at
most once (exactly once unless a worker died with its request in flight: then `uncertain`, never
resent), opted-out people get nothing, and the fake Viber, which refuses any call over its limit,
records no violation; people opted out before the start, and others opted out mid-campaign (in
Redis, or refused by Viber as unsubscribed), get nothing. Loopback only; every wait has a deadline;
every process is killed at the end.

600 recipients in the suite (about 30 s); the issue's 2,000 with
    CRMBRIDGE_BULK_RECIPIENTS=2000 CRMBRIDGE_TEST_REDIS_URL=redis://127.0.0.1:6379/<N> \
        .venv/bin/python -m pytest -q -s tests/test_bulk_kills.py
(figures in BENCHMARKS.md, "Bulk send with worker kills")."""
from __future__ import annotations

import os
import random
import textwrap
import time
import uuid
from collections import Counter

import pytest

from config.settings import Settings
from pipeline.steps import send_bulk
from tests.fakes_viber import TOKEN, FakeViber
from tests.reliability.harness import TEST_REDIS_URL, Deployment, WorkerPool, open_test_db, report, wait_until

RECIPIENTS = int(os.environ.get("CRMBRIDGE_BULK_RECIPIENTS", "600"))
PER_SECOND = 50
OPTED_OUT = 25
LATE_OPT_OUTS = 10      # opted out in Redis mid-campaign (the list's last ones: not reached yet)
LATE_UNSUBSCRIBED = 5   # unsubscribed at Viber mid-campaign: Viber refuses them (status 6)


@pytest.fixture
def fake_viber():
    server = FakeViber().start()
    server.enforce_limits(calls=PER_SECOND, window=1.0)
    yield server
    server.stop()


@pytest.fixture
def store():
    conn = open_test_db()
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def test_workers_killed_mid_campaign_send_each_recipient_at_most_once(tmp_path, fake_viber, store):
    config = tmp_path / "config"
    (config / "rules").mkdir(parents=True)
    (config / "connections.yaml").write_text(textwrap.dedent(f"""
        connections:
          shop-viber:
            type: viber
            base_url: {fake_viber.base_url}
            webhook_secret: ${{VIBER_SECRET}}
            credentials:
              token: ${{VIBER_TOKEN}}
            options:
              rate_limit: {{per_second: {PER_SECOND}, burst: {PER_SECOND}}}
        """), encoding="utf-8")
    (config / "rules" / "none.yaml").write_text("rules: []\n", encoding="utf-8")
    suffix = uuid.uuid4().hex[:8]
    deployment = Deployment(config_dir=config, redis_url=TEST_REDIS_URL, prefix=f"crmbulk{suffix}:",
                            queue=f"crmbulk-{suffix}", vendors={"VIBER_TOKEN": TOKEN, "VIBER_SECRET": "s"})
    settings: Settings = deployment.settings
    import worker
    rt = worker.open_runtime(settings)
    people = [f"kill{i:05d}AAAAAA=" for i in range(RECIPIENTS)]
    for p in people[:OPTED_OUT]:
        send_bulk.opt_out(rt, "shop-viber", p)
    started = send_bulk.start(rt, "shop-viber", "kills", "Ціни змінюються з 1 січня.", rows=people)
    assert started["queued"] == RECIPIENTS

    rng = random.Random(22)
    late = sorted(people)[-(LATE_OPT_OUTS + LATE_UNSUBSCRIBED):]       # jobs run in this order: queued last
    late_redis, late_viber = late[:LATE_OPT_OUTS], late[LATE_OPT_OUTS:]
    began = time.monotonic()
    deadline = began + 60 + 3 * RECIPIENTS / PER_SECOND
    kills_wanted = max(6, RECIPIENTS // 100)
    with WorkerPool(deployment.worker_env(), tmp_path / "logs", size=3) as pool:
        kills, late_at = 0, None
        while kills < kills_wanted and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 1.5) * RECIPIENTS / PER_SECOND / kills_wanted)   # spread over the send
            pool.kill(rng.randrange(3))
            kills += 1
            if late_at is None and len(fake_viber.sent()) >= RECIPIENTS // 5:   # opt-outs arriving mid-campaign
                for p in late_redis:
                    send_bulk.opt_out(rt, "shop-viber", p)
                with fake_viber.lock:
                    fake_viber.unsubscribed.update(late_viber)
                late_at = len(fake_viber.sent())
            for slot in range(3):
                if pool.procs[slot].poll() is not None:
                    pool.start(slot)
        done = wait_until(lambda: (pool.supervise() or True) and send_bulk.status(rt, "kills")["pending"] == 0,
                          timeout=max(5.0, deadline - time.monotonic()), interval=0.5)
        status = send_bulk.status(rt, "kills")
        assert done, f"campaign not finished: {status}\n{pool.log_tail()}"
    elapsed = time.monotonic() - began

    received = Counter(m["receiver"] for m in fake_viber.sent())
    twice = [r for r, n in received.items() if n > 1]
    assert twice == []                                                  # nobody got it twice
    assert not set(received) & set(people[:OPTED_OUT])                   # opted-out people got nothing
    assert late_at is not None and late_at > 0                          # the late ones came mid-campaign
    assert not set(received) & set(late)                                # nor those who opted out mid-campaign
    assert fake_viber.violations == []                                  # the limit held at the vendor
    assert status["sent"] + status["uncertain"] + status["opted_out"] == RECIPIENTS
    assert status["opted_out"] == OPTED_OUT + len(late) and status["failed"] == 0
    assert all(rt.store.sismember(rt.keys("optout:shop-viber"), p) for p in late_viber)   # kept for good
    assert status["sent"] <= len(received) <= status["sent"] + status["uncertain"]
    report("bulk send with worker kills", {"recipients": RECIPIENTS, "kills": pool.kills, "sent": status["sent"],
                                           "uncertain (parked, not resent)": status["uncertain"],
                                           "opted out (before / mid-campaign)": f"{OPTED_OUT} / {len(late)}",
                                           "sent when the mid-campaign opt-outs came": late_at,
                                           "seconds to the last recipient": round(elapsed, 1), "received at the vendor": len(received),
                                           "received twice": len(twice), "limit violations": len(fake_viber.violations),
                                           "peak calls in any 1 s": fake_viber.keeper.peak("bot")})
