"""A Redis fail-over under load (issue 24): a primary, two replicas and three Sentinels on loopback
(tests/deploy/sentinels.py), gunicorn and `worker.py` processes on REDIS_SENTINELS, the loopback fakes of
amoCRM and Telegram; webhooks posted at `--rate` a second for `--seconds`, each refused or unanswered post
posted again every 0.25 s (as amoCRM does) until acknowledged; the primary SIGKILLed `--kill-at` seconds
in. Then it waits until every acknowledged webhook is handled (or `--drain` seconds) and prints:

    seconds of refusals, webhooks acknowledged, lost (acknowledged, never handled), duplicated

once with the replica wait (CRMBRIDGE_INTAKE_WAIT_REPLICAS=1) and once without.

    .venv/bin/python bench/failover.py                              # 200/s for 30 s, kill at 10 s, both variants
    .venv/bin/python bench/failover.py --rate 50 --seconds 10 --kill-at 4 --wait on
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.deploy.sentinels import SERVICE, SentinelCluster  # noqa: E402
from tests.reliability.deployment import Gunicorn  # noqa: E402
from tests.reliability.harness import (  # noqa: E402
    AMO_SECRET,
    FORM,
    Deployment,
    Vendors,
    WorkerPool,
    amo_lead,
    amo_status_form,
    quickstart_config,
    tally,
    wait_until,
)


def run(args: argparse.Namespace, wait: bool, tmp: Path) -> dict:
    total = int(args.rate * args.seconds)
    leads = list(range(9_000_000 + (1_000_000 if wait else 0), 9_000_000 + (1_000_000 if wait else 0) + total))
    with SentinelCluster(tmp / "redis", replicas=2) as cluster, Vendors() as vendors:
        for lead in leads:
            vendors.amo.add_lead(amo_lead(lead))
        config = quickstart_config(tmp / "config", amo_rate=1000, tg_rate=1000, chat_per_lead=True)
        dep = Deployment(config, "redis://127.0.0.1:1/0", "crmbench-failover:", "crmbench-failover", vendors.env)
        env = {**dep.worker_env(), "REDIS_SENTINELS": cluster.addresses, "REDIS_SENTINEL_SERVICE": SERVICE,
               "CRMBRIDGE_JOB_HEARTBEAT_TTL": "6", "CRMBRIDGE_HISTORY": "off", "CRMBRIDGE_LOG_LEVEL": "WARNING",
               "CRMBRIDGE_INTAKE_WAIT_REPLICAS": "1" if wait else "0", "CRMBRIDGE_INTAKE_WAIT_MS": "200"}
        with Gunicorn(env, tmp / "web", workers=args.web_workers) as web, \
                WorkerPool(env, tmp / "workers", size=args.workers) as pool:
            url = f"{web.url}/hooks/quickstart-amo?token={AMO_SECRET}"
            attempts: list[tuple[float, float, int]] = []   # (sent, answered, status), monotonic
            acknowledged: set[int] = set()
            lock = threading.Lock()
            local = threading.local()
            start = time.monotonic() + 0.5
            deadline = start + args.seconds + 60

            def send(i: int) -> None:
                session = getattr(local, "session", None) or requests.Session()
                local.session = session
                delay = start + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body = amo_status_form(leads[i])
                while time.monotonic() < deadline:
                    sent = time.monotonic()
                    try:
                        status = session.post(url, data=body, headers={"Content-Type": FORM}, timeout=15).status_code
                    except requests.RequestException:
                        status = -1
                    with lock:
                        attempts.append((sent, time.monotonic(), status))
                    if status == 200:
                        with lock:
                            acknowledged.add(leads[i])
                        return
                    time.sleep(0.25)

            old = cluster.primary_port()
            killer = threading.Timer(max(0.0, start + args.kill_at - time.monotonic()),
                                     lambda: cluster.kill(old))
            killer.start()
            with ThreadPoolExecutor(max_workers=args.senders) as senders:
                list(senders.map(send, range(total)))
            killed_at = start + args.kill_at
            promoted = cluster.primary_port()
            drained = wait_until(lambda: (pool.supervise() or True) and
                                 tally(vendors, sorted(acknowledged))["handled"] == len(acknowledged) and vendors.idle(),
                                 args.drain, interval=1.0)
            time.sleep(2.0)
            counts = tally(vendors, sorted(acknowledged))
            refused = [(s, a) for s, a, status in attempts if status != 200 and s >= killed_at - 1]
            ends = [a for _, a, status in attempts if status == 200]
            return {"variant": "WAIT 1 (2 replicas)" if wait else "no wait (2 replicas)",
                    "posted": total, "offered rate /s": args.rate,
                    "achieved rate /s": round(total / max(1e-9, (max(ends) if ends else start) - start), 1),
                    "primary killed at s": args.kill_at, "new primary": promoted not in (None, old),
                    "refused posts": len(refused),
                    "seconds of refusals": round(max(a for _, a in refused) - min(s for s, _ in refused), 1) if refused else 0.0,
                    "acknowledged": len(acknowledged), "lost": counts["lost"], "duplicated": counts["duplicated"],
                    "drained": drained, "worker exits": pool.exits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--kill-at", type=float, default=10.0)
    parser.add_argument("--wait", choices=("on", "off", "both"), default="both")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--senders", type=int, default=48)
    parser.add_argument("--drain", type=float, default=300.0)
    args = parser.parse_args(argv)
    variants = {"on": [True], "off": [False], "both": [True, False]}[args.wait]
    for wait in variants:
        with tempfile.TemporaryDirectory(prefix="crmbridge-failover-") as tmp:
            figures = run(args, wait, Path(tmp))
        print(" | ".join(f"{k}: {v}" for k, v in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
