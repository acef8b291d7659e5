"""The benchmark still runs: `bench/run.py --quick` (every phase with tiny counts, about 17 s)
prints its table. The figures of a quick run mean nothing; BENCHMARKS.md has a full run's."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TEST_REDIS_URL


def test_the_benchmark_runs_and_prints_its_table():
    # the benchmark flushes its database: the test's own (CRMBRIDGE_TEST_REDIS_URL), never bench's default 10
    env = {**os.environ, "BENCH_REDIS_URL": TEST_REDIS_URL}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--lock-wait", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=110, env=env)
    if done.returncode == 3:
        pytest.skip("another benchmark run holds the machine's benchmark lock")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| measure" in out and "| crmbridge" in out and "| holds" in out
    for measure in ("Intake: webhooks acked/s", "Intake: ack latency p99", "One worker process, burst",
                    "E2E closed loop", "E2E paced 50 webhooks/s: p99", "lost / duplicated", "Peak RSS",
                    "Redis bytes per queued event", "Redis bytes per dedupe key", "Redis bytes kept per handled event",
                    "Timers: Redis bytes per pending timer", "load: lateness p99"):
        assert measure in out, f"{measure!r} missing from the table:\n{out}"
    # nothing may be lost or sent twice, even in a tiny run
    for line in out.splitlines():
        if "lost / duplicated" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[1].startswith("0 / 0"), line


def test_the_burst_benchmark_runs_and_prints_its_table():
    """bench/burst.py with tiny sizes (a burst of 12 moves, the second account at 2 events/s, one
    worker, the paced mode only) on the tests' own database: every move done, nothing twice, no
    request over amoCRM's limit, the second account's events all delivered."""
    import os

    from tests.conftest import TEST_REDIS_URL
    env = {**os.environ, "BENCH_REDIS_URL": TEST_REDIS_URL}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "burst.py"), "--moves", "12", "--second-rate", "2",
                           "--workers", "1", "--timeout", "60", "--modes", "paced"],
                          cwd=ROOT, capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    rows = {cells[0]: cells[1] for line in done.stdout.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert rows["burst: tasks / messages"] == "12 / 12 of 12"
    assert rows["amoCRM requests over 7/s (429s), both accounts"] == "0"
    assert rows["duplicates (tasks or messages twice)"] == "0"
    assert rows["second account: end to end p99 (target < 1 s)"].endswith(" ms")
    assert rows["second account: events / still undelivered 3 s after the burst was done"].endswith("/ 0")
