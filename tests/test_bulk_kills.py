"""A bulk send run by three `python worker.py` processes that are SIGKILLed (the whole process
group, as when a container dies) and restarted while they send: every recipient gets the message at
most once (exactly once unless a worker died with its request in flight: then `uncertain`, never
resent), opted-out people get nothing, and the fake Viber, which refuses any call over its limit,
records no violation. Loopback only; every wait has a deadline; every process is killed at the end."""
from __future__ import annotations

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

RECIPIENTS = 600
PER_SECOND = 50
OPTED_OUT = 25


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
    deadline = time.monotonic() + 150
    with WorkerPool(deployment.worker_env(), tmp_path / "logs", size=3) as pool:
        kills = 0
        while kills < 6 and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.4, 1.2))
            pool.kill(rng.randrange(3))
            kills += 1
            for slot in range(3):
                if pool.procs[slot].poll() is not None:
                    pool.start(slot)
        done = wait_until(lambda: (pool.supervise() or True) and send_bulk.status(rt, "kills")["pending"] == 0,
                          timeout=max(5.0, deadline - time.monotonic()), interval=0.5)
        status = send_bulk.status(rt, "kills")
        assert done, f"campaign not finished: {status}\n{pool.log_tail()}"

    received = Counter(m["receiver"] for m in fake_viber.sent())
    twice = [r for r, n in received.items() if n > 1]
    assert twice == []                                                  # nobody got it twice
    assert not set(received) & set(people[:OPTED_OUT])                   # opted-out people got nothing
    assert fake_viber.violations == []                                  # the limit held at the vendor
    assert status["sent"] + status["uncertain"] + status["opted_out"] == RECIPIENTS
    assert status["opted_out"] == OPTED_OUT and status["failed"] == 0
    assert status["sent"] <= len(received) <= status["sent"] + status["uncertain"]
    report("bulk send with worker kills", {"recipients": RECIPIENTS, "kills": pool.kills, "sent": status["sent"],
                                           "uncertain (parked, not resent)": status["uncertain"],
                                           "opted out": status["opted_out"], "received at the vendor": len(received),
                                           "received twice": len(twice), "limit violations": len(fake_viber.violations),
                                           "peak calls in any 1 s": fake_viber.keeper.peak("bot")})
