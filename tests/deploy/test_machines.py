"""Workers on several machines, played on one host: two `worker.py` processes, each started from a
working directory of its own with a configuration directory of its own (equal copies, as a deployment
copies them to each machine), sharing only Redis with the web process. Every webhook is handled once,
both "machines" do work, and each keeps its own SQLite decision history: the one thing that assumes
one host (docs/deploy.md: set DATABASE_URL on more than one machine)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from redis import Redis

from tests.deploy.common import end_group
from tests.reliability.harness import (
    ROOT,
    Deployment,
    LiveApp,
    RedisServer,
    Vendors,
    amo_lead,
    post_leads,
    quickstart_config,
    report,
    tally,
    wait_until,
)

PREFIX, QUEUE = "crmdeploy-machines:", "crmdeploy-machines"


@pytest.mark.timeout(180)
def test_workers_in_separate_directories_share_only_redis(tmp_path):
    leads = list(range(8_300_000, 8_300_060))
    with RedisServer(tmp_path / "redis") as redis, Vendors() as vendors:
        for lead in leads:
            vendors.amo.add_lead(amo_lead(lead))
        web_config = quickstart_config(tmp_path / "web" / "config", amo_rate=50, tg_rate=25, chat_per_lead=True)
        dep = Deployment(web_config, redis.url(0), PREFIX, QUEUE, vendors.env)
        machines, procs = [], []
        try:
            for name in ("machine-a", "machine-b"):
                home = tmp_path / name
                shutil.copytree(web_config, home / "config")   # the same configuration, copied
                env = {**dep.worker_env(), "CRMBRIDGE_CONFIG": str(home / "config")}
                env.pop("CRMBRIDGE_HISTORY_PATH", None)        # the default: beside the configuration
                log = open(home / "worker.log", "wb")  # noqa: SIM115 - closed below
                procs.append(subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=home, env=env,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                machines.append((home, log))
            with LiveApp(dep.settings) as web:
                posted = post_leads(web.url, leads, threads=4, attempts=5, timeout=60)
                assert all(p.acknowledged for p in posted)
                done = wait_until(lambda: tally(vendors, leads)["handled"] == len(leads) and vendors.idle(), 90,
                                  interval=0.5)
                time.sleep(1.0)
            counts = tally(vendors, leads)
            store = Redis.from_url(redis.url(0))
            per_worker = {}
            for member in store.smembers(f"rq:workers:{QUEUE}"):
                jobs, pid = store.hmget(member, "successful_job_count", "pid")
                per_worker[int(pid)] = int(jobs or 0)
            store.close()
            histories = [home / "crmbridge-history.sqlite3" for home, _ in machines]
            report("workers on two 'machines' (own directories), sharing Redis", {
                "webhooks": len(leads), "handled once": counts["handled"], "lost": counts["lost"],
                "duplicated": counts["duplicated"], "jobs per worker process": per_worker,
                "history files": [str(h.relative_to(tmp_path)) for h in histories if h.exists()]})
            assert done and counts["lost"] == 0 and counts["duplicated"] == 0, counts
            assert set(per_worker) == {p.pid for p in procs}
            assert all(n > 0 for n in per_worker.values()), per_worker   # both machines worked
            assert all(h.exists() for h in histories)   # each keeps its own part of the history
        finally:
            for proc in procs:
                end_group(proc)
            for _, log in machines:
                log.close()
