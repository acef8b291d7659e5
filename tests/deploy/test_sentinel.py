"""Redis Sentinel: the web process and a worker process find the primary through three Sentinels
(REDIS_SENTINELS, redisconn.py), the primary is SIGKILLed while webhooks come in, the Sentinels promote
a replica, and both go on without a restart. With the replica wait on (CRMBRIDGE_INTAKE_WAIT_REPLICAS=1,
web and worker) every acknowledged webhook is handled once; without it, the figures are printed
(`pytest -s`).

The Sentinels' `down-after-milliseconds 1000` is kept on purpose: on a busy machine it sometimes
declares the replica just promoted down and promotes the other one, leaving the first a primary no
replica follows for about 10 s, written to and then wiped (docs/deploy.md, "The workers wait too").
That is the case the workers' wait is for: nothing may be acted on twice then either.

Everything is loopback and temporary (tests/deploy/sentinels.py); the rates are far below the issue's
200 webhooks/s for 30 s, which this shared machine cannot give alongside the rest.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
from redis import Redis

from config.settings import Settings
from redisconn import parse_sentinels
from tests.deploy.sentinels import SERVICE, SentinelCluster
from tests.reliability.harness import (
    Deployment,
    LiveApp,
    Vendors,
    WorkerPool,
    amo_lead,
    post_leads,
    quickstart_config,
    report,
    tally,
    wait_until,
)

PREFIX, QUEUE = "crmdeploy-sentinel:", "crmdeploy-sentinel"
# the primary's host and port in REDIS_URL are not used with Sentinels: a closed port proves it
UNUSED_URL = "redis://127.0.0.1:1/0"


def refused_window(posted, since: float) -> tuple[int, float]:
    """Answers other than 200 after `since`, and the seconds from the first such post's start to the
    last one's end (the time webhooks were refused)."""
    spans = [span for p in posted for status, span in zip(p.statuses, p.spans) if status != 200 and span[0] >= since - 1]
    if not spans:
        return 0, 0.0
    return len(spans), max(end for _, end in spans) - min(start for start, _ in spans)


# The replica-wait case is in `make test` (about 30 s; 60 s on a loaded machine). The case without
# the wait asserts no figure of its own (without WAIT nothing is promised) and doubles the time: it
# is opt-in, CRMBRIDGE_TEST_FAILOVER=1, with its figures printed:
#   CRMBRIDGE_TEST_FAILOVER=1 .venv/bin/python -m pytest tests/deploy/test_sentinel.py -s
# A fresh-clone run of 2026-12-07 saw, with the wait on, 170 of 200 leads acted on twice and 503s
# for 18 s; docs/deploy.md says what did it and what changed (the servers' ports, the workers' wait).
OPT_IN = pytest.mark.skipif(not os.environ.get("CRMBRIDGE_TEST_FAILOVER"), reason="opt-in: CRMBRIDGE_TEST_FAILOVER=1")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("wait_replicas, replicas", [pytest.param(1, 2, id="replica-wait"),
                                                      pytest.param(0, 1, id="no-wait", marks=OPT_IN)])
def test_web_and_worker_follow_a_failover_without_a_restart(tmp_path, wait_replicas, replicas):
    before = list(range(8_200_000, 8_200_030))
    during = list(range(8_210_000, 8_210_150))
    after = list(range(8_220_000, 8_220_020))
    with SentinelCluster(tmp_path / "redis", replicas=replicas) as cluster, Vendors() as vendors:
        for lead in before + during + after:
            vendors.amo.add_lead(amo_lead(lead))
        config = quickstart_config(tmp_path / "config", amo_rate=50, tg_rate=25, chat_per_lead=True)
        dep = Deployment(config, UNUSED_URL, PREFIX, QUEUE, vendors.env)
        settings = Settings(config_dir=config, redis_url=UNUSED_URL, redis_prefix=PREFIX, queue_name=QUEUE,
                            environ=vendors.env, maintenance_interval=2, job_heartbeat_ttl=6,
                            redis_sentinels=parse_sentinels(cluster.addresses), redis_sentinel_service=SERVICE,
                            intake_wait_replicas=wait_replicas, intake_wait_ms=500,
                            history_path=tmp_path / "history.sqlite3")
        # the worker has the web's settings, as from one environment file: with the replica wait on, it
        # calls a vendor only once a replica has the step's marks (pipeline/execute.py)
        env = {**dep.worker_env(), "REDIS_SENTINELS": cluster.addresses, "REDIS_SENTINEL_SERVICE": SERVICE,
               "CRMBRIDGE_JOB_HEARTBEAT_TTL": "6", "CRMBRIDGE_HISTORY_PATH": str(tmp_path / "history.sqlite3"),
               "CRMBRIDGE_INTAKE_WAIT_REPLICAS": str(wait_replicas), "CRMBRIDGE_INTAKE_WAIT_MS": "500"}
        old_primary = cluster.primary_port()
        with LiveApp(settings) as web, WorkerPool(env, tmp_path / "workers", size=1) as pool:
            posted = post_leads(web.url, before, threads=4, attempts=5, timeout=60)
            assert all(p.acknowledged for p in posted), [p.statuses for p in posted if not p.acknowledged][:5]

            sender = threading.Thread(target=lambda: posted.extend(post_leads(
                web.url, during, threads=4, attempts=400, retry_pause=0.2, pace=0.06, timeout=150)))
            sender.start()
            time.sleep(1.5)
            cluster.kill(old_primary)   # SIGKILL, mid-traffic
            killed_at = time.monotonic()
            promoted = wait_until(lambda: cluster.primary_port() not in (None, old_primary), 30, interval=0.1)
            promoted_after = time.monotonic() - killed_at
            sender.join(timeout=200)
            assert promoted and not sender.is_alive()
            posted += post_leads(web.url, after, threads=4, attempts=50, retry_pause=0.2, timeout=60)

            leads = before + during + after
            acknowledged = [p.lead for p in posted if p.acknowledged]

            def settled() -> bool:
                pool.supervise()   # a worker that exited would be started again (and counted)
                return tally(vendors, acknowledged)["handled"] == len(acknowledged) and vendors.idle()

            done = wait_until(settled, 120, interval=0.5)
            time.sleep(2.0)
            counts = tally(vendors, acknowledged)
            n_refused, refused_seconds = refused_window(posted, killed_at)
            report(f"Sentinel fail-over, replica wait {'on' if wait_replicas else 'off'} ({replicas} replicas)", {
                "webhooks": len(leads), "acknowledged": len(acknowledged),
                "replica promoted after": f"{promoted_after:.1f} s",
                "answers not 200 (posted again)": n_refused, "seconds webhooks were refused": f"{refused_seconds:.1f}",
                "acknowledged lost": counts["lost"], "duplicated": counts["duplicated"],
                "worker exits": pool.exits, "worker starts": pool.starts})
            assert len(acknowledged) == len(leads)
            assert pool.exits == [] and pool.starts == 1, pool.log_tail()   # the worker followed, no restart
            new_primary = cluster.primary_port()
            assert new_primary not in (None, old_primary)
            probe = Redis(port=new_primary)
            waits = probe.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
            probe.close()
            assert (waits >= len(after)) if wait_replicas else waits == 0, waits   # intake's WAIT, on the new primary
            if wait_replicas:
                assert done and counts["lost"] == 0, (counts, pool.log_tail())
                assert counts["duplicated"] == 0, counts
