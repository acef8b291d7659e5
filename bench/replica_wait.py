"""What CRMBRIDGE_INTAKE_WAIT_REPLICAS=1 costs intake: a primary and a replica of this run's own
(redis-server on free loopback ports, AOF with appendfsync always as the README advises, temporary
directories, killed at the end), the Flask app called as gunicorn calls it (bench/receiver_cpu.py's
WSGI call), webhooks posted one after another from `--threads` threads, with the wait off and on in
alternating rounds.

    .venv/bin/python bench/replica_wait.py                      # 4 rounds of 1,000 webhooks per variant
    .venv/bin/python bench/replica_wait.py --threads 8 --count 2000

Prints, per variant, the median of the rounds: webhooks answered per second, latency p50 and p99
(ms, each post's wall time), receiver CPU per webhook (ms). Needs redis-server; nothing else.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from receiver_cpu import ENV  # noqa: E402 - the same environment


def post(app, body: bytes) -> str:
    """bench/receiver_cpu.py's WSGI call, as gunicorn makes it; the status line."""
    import io
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/hooks/quickstart-amo", "QUERY_STRING": "token=amo-secret",
               "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True, "wsgi.url_scheme": "http",
               "wsgi.errors": sys.stderr, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
               "SERVER_PROTOCOL": "HTTP/1.1"}
    status: list[str] = []
    b"".join(app(environ, lambda line, headers: status.append(line)))
    return status[0]


def free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port")


def redis_server(directory: Path, port: int, *extra: str) -> subprocess.Popen:
    directory.mkdir(parents=True)
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory),
                             "--maxmemory-policy", "noeviction", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001, S110 - not up yet
            pass
        time.sleep(0.05)
    raise SystemExit("Redis did not come up")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_round(app, bodies: list[bytes], threads: int) -> dict[str, float]:
    latencies: list[float] = []
    refused: list[str] = []
    lock = threading.Lock()
    chunks = [bodies[i::threads] for i in range(threads)]

    def sender(chunk: list[bytes]) -> None:
        mine, bad = [], []
        for body in chunk:
            started = time.perf_counter()
            status = post(app, body)
            mine.append(time.perf_counter() - started)
            if not status.startswith("200"):
                bad.append(status)
        with lock:
            latencies.extend(mine)
            refused.extend(bad)

    cpu, wall = time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=sender, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"per_s": len(bodies) / wall, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "cpu": cpu / len(bodies) * 1000,
            "refused": len(refused)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="webhooks per round and variant")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--wait-ms", type=int, default=100)
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    from redis import Redis

    from config.settings import Settings
    from webhooks import create_app

    tmp = Path(tempfile.mkdtemp(prefix="crmbridge-replica-wait-"))
    primary_port = free_port(17400)
    procs = [redis_server(tmp / "primary", primary_port)]
    replica_port = free_port(primary_port + 1)
    procs.append(redis_server(tmp / "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port)))
    try:
        store = Redis(port=primary_port)
        wait_for(lambda: store.info("replication").get("slave0", {}).get("state") == "online", 30)
        config = tmp / "config"
        shutil.copytree(ROOT / "config" / "examples" / "quickstart", config)
        url = f"redis://127.0.0.1:{primary_port}/0"
        apps = {name: create_app(settings=Settings(config_dir=config, redis_url=url, environ=ENV,
                                                   intake_wait_replicas=replicas, intake_wait_ms=args.wait_ms,
                                                   history_path=tmp / "history.sqlite3"))
                for name, replicas in (("wait off", 0), ("WAIT 1", 1))}
        sample = (ROOT / "tests" / "payloads" / "amocrm" / "lead_status_changed_full.form").read_bytes()
        lead = iter(range(50_000_000, 60_000_000))

        def bodies(n: int) -> list[bytes]:
            return [sample.replace(b"31926520", str(next(lead)).encode()) for _ in range(n)]

        logging.disable(logging.WARNING)   # a 503's log line per webhook: counted in the table instead
        for app in apps.values():   # warm-up: connections, the recorded enqueue, the script
            run_round(app, bodies(200), args.threads)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in apps}
        for r in range(args.rounds):
            order = list(apps) if r % 2 == 0 else list(reversed(apps))
            for name in order:
                results[name].append(run_round(apps[name], bodies(args.count), args.threads))
                store.flushdb()   # the queue's growth is not what is measured
        print(f"intake, {args.threads} threads, {args.count} webhooks x {args.rounds} rounds per variant "
              f"(median of rounds); primary and replica on loopback, appendfsync always")
        print("| variant | webhooks/s | latency p50 ms | latency p99 ms | receiver CPU ms/webhook | answered 503 (all rounds) |")
        print("|---|---|---|---|---|---|")
        for name, rounds in results.items():
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            print(f"| {name} | {med['per_s']:.0f} | {med['p50']:.2f} | {med['p99']:.2f} | {med['cpu']:.3f} "
                  f"| {sum(r['refused'] for r in rounds)} |")
        waits = store.info("commandstats").get("cmdstat_wait", {})
        print(f"WAIT calls on the primary: {waits.get('calls', 0)}, {waits.get('usec_per_call', 0):.0f} us per call")
        for app in apps.values():
            app.extensions["crmbridge"].backend.close()
        store.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
