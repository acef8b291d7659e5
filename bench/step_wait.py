"""The workers' side of the replica wait (issue 24): what CRMBRIDGE_INTAKE_WAIT_REPLICAS=1 costs a step.

A primary and a replica on loopback (both AOF `appendfsync always`), the fake amoCRM, the quickstart's
connection; `--steps` amoCRM create_task steps run through `pipeline/execute.execute` (claim, "sent"
mark, the call, the done mark), alternately with the wait off and on, `--rounds` rounds of each.
Prints per variant the median over rounds of the milliseconds per step and of WAITs per step.

    .venv/bin/python bench/step_wait.py                   # 200 steps, 5 rounds of each
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402

from config.settings import Settings  # noqa: E402
from connectors.base import Entity, Event  # noqa: E402
from pipeline import execute  # noqa: E402
from rules.engine import PlannedAction  # noqa: E402
from runtime import Runtime  # noqa: E402
from tests.fakes import FakeAmo  # noqa: E402
from tests.reliability.harness import RedisServer, quickstart_config, vendor_env, wait_until  # noqa: E402


def one_round(rt: Runtime, tag: str, steps: int) -> tuple[float, float]:
    waits_before = _waits(rt.store)
    started = time.perf_counter()
    for i in range(steps):
        event = Event(id=f"quickstart-amo:bench-{tag}-{i}", connection="quickstart-amo", source="amocrm",
                      kind="stage.changed", entity=Entity("lead", "31926520"), data={}, raw={},
                      occurred_at="2026-11-24T10:00:00+00:00")
        action = PlannedAction(rule="Bench", rule_id="bench", step=0, connection="quickstart-amo", method="create_task",
                               args={"entity": {"type": "lead", "id": "31926520"}, "text": f"Передзвонити {i}",
                                     "due": "2026-11-25T10:00:00+00:00"}, key=f"{event.id}|bench|create_task")
        assert execute.execute(rt, event, action) is True
    elapsed = time.perf_counter() - started
    return elapsed / steps * 1000, (_waits(rt.store) - waits_before) / steps


def _waits(store: Redis) -> int:
    return int(store.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crmbridge-step-wait-") as tmp_dir:
        tmp = Path(tmp_dir)
        fake = FakeAmo().start()
        try:
            fake.add_lead({"id": 31926520, "name": "Brief", "status_id": 10216995, "pipeline_id": 2116})
            with RedisServer(tmp / "primary") as primary, \
                    RedisServer(tmp / "replica", extra_args=("--replicaof", "127.0.0.1", str(primary.port))):
                probe = Redis(port=primary.port)
                assert wait_until(lambda: probe.info("replication").get("slave0", {}).get("state") == "online", 20)
                base = Settings(config_dir=quickstart_config(tmp / "config", amo_rate=1000), redis_url=primary.url(0),
                                redis_prefix="crmbench-step:", queue_name="crmbench-step", history_path=tmp / "h.sqlite3",
                                environ=vendor_env(fake.url, "http://127.0.0.1:9"), intake_wait_ms=200)
                runtimes = {"wait off": Runtime.create(base),
                            "WAIT 1": Runtime.create(dataclasses.replace(base, intake_wait_replicas=1))}
                figures: dict[str, list[tuple[float, float]]] = {name: [] for name in runtimes}
                for r in range(args.rounds):
                    for name, rt in runtimes.items():
                        figures[name].append(one_round(rt, f"{name.replace(' ', '')}-{r}", args.steps))
                for name, rows in figures.items():
                    print(f"{name}: {statistics.median(ms for ms, _ in rows):.2f} ms per step, "
                          f"{statistics.median(w for _, w in rows):.1f} WAITs per step "
                          f"({args.rounds} rounds of {args.steps} steps)", flush=True)
                for rt in runtimes.values():
                    rt.backend.close()
                probe.close()
        finally:
            fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
