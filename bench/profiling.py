"""Profile crmbridge's webhook path and worker path with py-spy, and count Redis commands.

    .venv/bin/pip install py-spy          # not a project requirement
    .venv/bin/python bench/profiling.py [--out DIR] [--seconds 10] [--events 1500]

Same setup as bench/run.py (gunicorn --workers 4, worker.py, fakes, Redis database 10):

1. web: py-spy samples every gunicorn worker while 16 clients post webhooks (CPU only);
2. worker: py-spy runs `python worker.py --burst` on pre-queued events, once on CPU and once
   on wall-clock time (`--idle`: time spent waiting for Redis and HTTP shows too);
3. Redis: MONITOR counts the commands one webhook and one job send to database 10.

For each profile it prints the functions with the most samples, inclusive (the function and
what it calls) and self (the function's own code), as `file:function`. Raw collapsed stacks
(flamegraph.pl / speedscope input) are kept in DIR.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import (
    BIN,
    PYTHON,
    REDIS_URL,
    ROOT,
    Fake,
    Procs,
    Web,
    Webhooks,
    crm_env,
    crm_path,
    exclusive,
    flush,
    make_config,
    make_workdir,
    redis,
)
from load import closed_loop

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{m.group('func')}"


def summarize(raw: Path, top: int, title: str, skip: tuple[str, ...] = ()) -> str:
    """Top functions by inclusive and by self samples from py-spy's raw (collapsed) output."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames or any(s in frames[-1] for s in skip):
            continue
        total += n
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    out = [f"== {title}: {total} samples"]
    out.append("-- inclusive (function and what it calls)")
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    out.append("-- self (the function's own code)")
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    return "\n".join(out)


def post(web: Web, hooks: Webhooks, *, seconds: float | None = None, count: int | None = None):
    return asyncio.run(closed_loop("127.0.0.1", web.port, hooks.stream(web.port, crm_path()), 16,
                                   duration=seconds, count=count))


def monitor_counts(store, action) -> collections.Counter:
    """Redis commands sent to the benchmark's database while `action()` runs."""
    db = REDIS_URL.rsplit("/", 1)[1]
    proc = subprocess.Popen(["redis-cli", "-h", "127.0.0.1", "-p", REDIS_URL.rsplit(":", 1)[1].split("/")[0],
                             "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            errors="replace")
    counts: collections.Counter = collections.Counter()
    in_multi: dict[str, bool] = {}

    def read() -> None:
        # commands a Lua script runs show as "[db lua]"; MULTI … EXEC goes out as one write
        for line in proc.stdout:
            m = re.match(r"^\S+ \[(\d+) (\S+)\] \"(\w+)\"", line)
            if not m or m.group(1) != db:
                continue
            client, cmd = m.group(2), m.group(3).upper()
            counts[cmd] += 1
            if client == "lua":
                continue
            if cmd == "MULTI":
                in_multi[client] = True
            elif cmd == "EXEC":
                in_multi[client] = False
                counts["(round trips)"] += 1
            elif not in_multi.get(client):
                counts["(round trips)"] += 1
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)
    try:
        action()
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(5)
    reader.join(2)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/crmbridge-profiles"))
    parser.add_argument("--seconds", type=float, default=10.0, help="web profile length")
    parser.add_argument("--events", type=int, default=1500, help="events per worker profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    spy = BIN / "py-spy"
    if not spy.exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    if exclusive(900) is None:
        print("another benchmark is running on this machine", file=sys.stderr)
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = make_workdir()
    procs = Procs(workdir)
    store = redis()
    flush(store)
    reports = []
    try:
        amo, tg = Fake(procs, "amo"), Fake(procs, "telegram")
        env = crm_env(make_config(workdir), amo, tg)
        web = Web(procs, "crm-web", "webhooks:create_app()", env, ROOT).ready()
        hooks = Webhooks(first_lead=60_000_000)
        post(web, hooks, seconds=1.0)

        # 1. the webhook path
        spies = [procs.start(f"spy-web-{pid}", [str(spy), "record", "--pid", str(pid), "--rate", "250",
                                                "--duration", str(int(args.seconds)), "--format", "raw",
                                                "--output", str(args.out / f"web-{pid}.txt"), "--nonblocking"],
                             env) for pid in web.worker_pids()]
        time.sleep(0.5)
        run = post(web, hooks, seconds=args.seconds - 1)
        for s in spies:
            s.wait(60)
        merged = args.out / "web.txt"
        with merged.open("w") as f:
            for part in sorted(args.out.glob("web-*.txt")):
                f.write(part.read_text())
                part.unlink()
        reports.append(summarize(merged, args.top, f"web: gunicorn workers, {len(run.ok)} webhooks at "
                                                   f"{len(run.ok) / run.elapsed:.0f}/s"))
        flush(store)

        # 2. the worker path, CPU and wall clock
        for mode, extra in (("worker-cpu", []), ("worker-wall", ["--idle"])):
            post(web, hooks, count=args.events)
            t0 = time.time()
            proc = procs.start(f"spy-{mode}", [str(spy), "record", "--rate", "250", "--format", "raw",
                                               "--output", str(args.out / f"{mode}.txt"), "--nonblocking", *extra,
                                               "--", PYTHON, "worker.py", "--burst"], env)
            proc.wait(600)
            took = time.time() - t0
            reports.append(summarize(args.out / f"{mode}.txt", args.top,
                                     f"{mode}: worker.py --burst, {args.events} events in {took:.1f} s "
                                     f"(start-up included)",
                                     skip=("select", "poll", "epoll") if mode == "worker-wall" else ()))
            flush(store)
            tg.reset()

        # 3. Redis commands per webhook and per job
        n = 100

        def drain() -> None:
            subprocess.run([PYTHON, "worker.py", "--burst"], cwd=ROOT, env=env, capture_output=True, timeout=120,
                           check=False)
        idle = monitor_counts(store, drain)            # a worker's start and stop, no job
        web_counts = monitor_counts(store, lambda: post(web, hooks, count=n))
        job_counts = monitor_counts(store, drain) - idle
        job_title = "one job (worker; its start and stop subtracted)"
        for title, counts in (("one webhook (intake)", web_counts), (job_title, job_counts)):
            trips = counts.pop("(round trips)", 0)
            total = sum(counts.values())
            reports.append(f"== Redis commands for {title}: {total / n:.1f} per event (Lua's own included), "
                           f"about {trips / n:.1f} round trips\n" + ", ".join(
                               f"{cmd} {c / n:.1f}" for cmd, c in counts.most_common()))
    finally:
        procs.stop_all()
        flush(store)
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n\n".join(reports)
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nraw stacks and this summary: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
