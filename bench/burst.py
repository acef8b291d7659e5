"""Bursts at the vendor's limit (issue 23, items 3–4): MOVES amoCRM stage moves at once on one account
whose fake enforces amoCRM's 7 requests/s, each needing a task there and a Telegram message; while
they are worked off, a second amoCRM account posts SECOND_RATE stage moves a second, each needing a
Telegram message. Prints the time until the burst is done against the one-request-per-event floor
(MOVES × 2 requests / 7 s⁻¹: a read and a task each), the second account's end-to-end latency
(webhook sent → the fake Telegram received its message), requests over the limit, duplicates.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/6 .venv/bin/python bench/burst.py [--moves 2000] [--workers 2]

What runs: crmbridge as README's Production section runs it (gunicorn with the webhook app, `python
worker.py` processes), on the real Redis (its own database, flushed before and after), against
bench/fakes.py: two fake amoCRM accounts (`amo-limited`: over 7 requests in any second answers 429
and is counted as a violation) and a fake Telegram. The quickstart configuration with the second
account added; the amoCRM accounts keep their real limits (7/s, the connector's 10 % margin), the
Telegram bot's are raised and each lead's message goes to a chat of its own (Telegram allows 30
messages/s per bot and 20 a minute per group: 2,000 messages to one group take 100 minutes
whatever crmbridge does; that quota is not what this measures). Bounded: --timeout seconds at most.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import (AMO_SECRET, KEY_RE, PYTHON, REDIS_URL, ROOT, Background, Fake, Procs, Web, Webhooks, crm_env,
                    flush, make_config, make_workdir, redis)

SECOND_SECRET = "bench-second-secret"
AMO_LIMIT = 7.0   # requests/s (API-REFERENCE.md §1; developers.kommo.com/docs/limitations)

BURST_RULES = """\
# bench/burst.py: a stage move on the first account makes a task and a message; on the second, a message.
rules:
  - name: Burst - brief received, task and notice
    on:
      event: stage.changed
      connection: quickstart-amo
      stage: ["Brief received", "10216994"]
    do:
      - create_task: {connection: quickstart-amo, text: "Бриф отримано: зв'язатися з клієнтом", due: 1 day}
      - send_message: {connection: quickstart-bot, chat: "{{ entity.id }}", text: "burst #{{ entity.id }}"}

  - name: Burst - second account's notice
    on:
      event: stage.changed
      connection: second-amo
    do:
      - send_message: {connection: quickstart-bot, chat: "{{ entity.id }}", text: "second #{{ entity.id }}"}
"""


def log(message: str) -> None:
    print(f"[burst {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def configure(workdir: Path) -> Path:
    """The bench configuration (limits raised), then: the amoCRM accounts back at their real limit,
    a second account, the burst's rules."""
    config = make_config(workdir)
    path = config / "connections.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["connections"]["quickstart-amo"].pop("options", None)
    doc["connections"]["second-amo"] = {"type": "amocrm", "base_url": "${SECOND_AMO_URL}",
                                        "webhook_secret": "${SECOND_AMO_SECRET}",
                                        "credentials": {"token": "${AMO_TOKEN}"}}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    for old in (config / "rules").glob("*.yaml"):
        old.unlink()
    (config / "rules" / "burst.yaml").write_text(BURST_RULES, encoding="utf-8")
    return config


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(args: argparse.Namespace, extra_env: dict[str, str]) -> dict:
    workdir = make_workdir()
    (workdir / "logs").mkdir()
    procs = Procs(workdir / "logs")
    store = redis()
    flush(store)
    try:
        amo, second, tg = Fake(procs, "amo-limited"), Fake(procs, "amo-limited"), Fake(procs, "telegram")
        env = crm_env(configure(workdir), amo, tg)
        env.update(SECOND_AMO_URL=second.url, SECOND_AMO_SECRET=SECOND_SECRET, CRMBRIDGE_LOG_LEVEL="WARNING",
                   CRMBRIDGE_RESULT_TTL="0", **extra_env)
        code = Path(args.code) if args.code else ROOT
        web = Web(procs, "web", "webhooks:create_app()", env, code, workers=2).ready()
        workers = [procs.start(f"worker-{i}", [PYTHON, "worker.py"], env, cwd=code) for i in range(args.workers)]
        time.sleep(2.0)   # the workers start (configuration, clients)
        base = f"http://127.0.0.1:{web.port}"
        burst_hooks, second_hooks = Webhooks(first_lead=50_000_000), Webhooks(first_lead=60_000_000)
        burst_leads = [str(50_000_000 + i) for i in range(args.moves)]
        sent_second: dict[str, float] = {}
        stop = threading.Event()
        local = threading.local()

        def post(path: str, lead: int, hooks: Webhooks) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            resp = session.post(base + path, data=hooks.body(lead), timeout=30,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert resp.status_code == 200, (resp.status_code, resp.text[:300])

        def second_account() -> None:
            lead, due = 60_000_000, time.monotonic()
            while not stop.is_set():
                sent_second[str(lead)] = time.time()
                post(f"/hooks/second-amo?token={SECOND_SECRET}", lead, second_hooks)
                lead += 1
                due += 1.0 / args.second_rate
                stop.wait(max(0.0, due - time.monotonic()))

        t0 = time.time()
        pacer = threading.Thread(target=second_account, daemon=True)
        pacer.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda lead: post(f"/hooks/quickstart-amo?token={AMO_SECRET}", int(lead), burst_hooks),
                          burst_leads))
        acked = time.time() - t0
        log(f"{args.moves} burst webhooks acked in {acked:.1f} s; working them off")
        wanted = set(burst_leads)
        done_at = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            stats = requests.get(f"{amo.url}/_bench/amo", timeout=30).json()
            tasked = {str(lead) for lead, _ in stats["tasks"]}
            messaged = {m.group(1) for _, text in tg.deliveries() if text.startswith("burst")
                        for m in [KEY_RE.search(text)] if m}
            if wanted <= tasked and wanted <= messaged:
                done_at = time.time()
                break
            log(f"tasks {len(tasked & wanted)}, messages {len(messaged & wanted)} of {args.moves}")
            time.sleep(2.0)
        stop.set()
        pacer.join(10)
        time.sleep(3.0)   # the second account's last messages, and anything sent twice
        stats = requests.get(f"{amo.url}/_bench/amo", timeout=30).json()
        second_stats = requests.get(f"{second.url}/_bench/amo", timeout=30).json()
        deliveries = tg.deliveries()
        got: dict[str, list[float]] = {}
        for stamp, text in deliveries:
            m = KEY_RE.search(text)
            if m:
                got.setdefault(("b:" if text.startswith("burst") else "s:") + m.group(1), []).append(stamp)
        burst_times = [stamp for lead, stamp in stats["tasks"]] + [min(v) for k, v in got.items() if k.startswith("b:")]
        last = max(burst_times) if burst_times else float("nan")
        tasks_per_lead = Counter(str(lead) for lead, _ in stats["tasks"])
        latencies = [(min(got[f"s:{lead}"]) - sent) * 1000 for lead, sent in sent_second.items() if f"s:{lead}" in got]
        return {
            "moves": args.moves, "workers": args.workers, "env": extra_env,
            "acked_s": acked,
            "done_s": (done_at and last - t0) or None,
            "floor_s": args.moves * 2 / AMO_LIMIT,
            "tasks": len(tasks_per_lead), "messages": sum(1 for k in got if k.startswith("b:")),
            "reads": stats["reads"], "task_requests": None,
            "violations": stats["violations"] + second_stats["violations"],
            "peak_per_second": stats["peak"],
            "duplicates": sum(n - 1 for n in tasks_per_lead.values() if n > 1)
                          + sum(len(v) - 1 for v in got.values() if len(v) > 1),
            "second_sent": len(sent_second), "second_lost": len(sent_second) - len(latencies),
            "second_p50_ms": pct(latencies, 50), "second_p99_ms": pct(latencies, 99),
            "second_max_ms": max(latencies) if latencies else float("nan"),
            "workers_alive": sum(w.poll() is None for w in workers),
            # (seconds after the burst began it was sent, ms until its message): where the slow ones were
            "second_latencies": [(round(sent - t0, 2), round((min(got[f"s:{lead}"]) - sent) * 1000))
                                 for lead, sent in sent_second.items() if f"s:{lead}" in got],
        }
    finally:
        procs.stop_all()
        if not args.keep:
            flush(store)


def table(results: list[dict]) -> str:
    rows = [("mode", lambda r: r["label"]),
            ("background CPU of other processes (cores, of 2)", lambda r: f"{r['background']:.2f}"),
            ("burst: webhooks acked in", lambda r: f"{r['acked_s']:.1f} s"),
            ("burst: all tasks and messages done in", lambda r: f"{r['done_s']:.1f} s" if r["done_s"] else "not done"),
            ("burst: one-request-per-event floor (2 × moves / 7 s⁻¹)", lambda r: f"{r['floor_s']:.1f} s"),
            ("burst: floor ÷ time (gain over one-by-one at the limit)",
             lambda r: f"{r['floor_s'] / r['done_s']:.2f}×" if r["done_s"] else "—"),
            ("burst: tasks / messages", lambda r: f"{r['tasks']} / {r['messages']} of {r['moves']}"),
            ("amoCRM reads: one by one / lists", lambda r: f"{r['reads']['one']} / {r['reads']['list']}"),
            ("amoCRM requests over 7/s (429s), both accounts", lambda r: str(r["violations"])),
            ("most requests in any 1 s window (burst account)", lambda r: str(r["peak_per_second"])),
            ("duplicates (tasks or messages twice)", lambda r: str(r["duplicates"])),
            ("second account: events / still undelivered 3 s after the burst was done",
             lambda r: f"{r['second_sent']} / {r['second_lost']}"),
            ("second account: end to end p50 (of those delivered)", lambda r: f"{r['second_p50_ms']:.0f} ms"),
            ("second account: end to end p99 (target < 1 s)", lambda r: f"{r['second_p99_ms']:.0f} ms"),
            ("second account: end to end max", lambda r: f"{r['second_max_ms']:.0f} ms")]
    lines = ["| measure | " + " | ".join(r["label"] for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for name, cell in rows[1:]:
        lines.append(f"| {name} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines)


# paced (intake paces the account, records read together) and one by one (CRMBRIDGE_PACE=0: as
# before: every event queued at once, each record read alone), in the same run
MODES = {"paced": {}, "one-by-one": {"CRMBRIDGE_PACE": "0"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=2000)
    parser.add_argument("--second-rate", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a mode may take at most")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--code", help="run crmbridge from this directory (a copy of another commit: "
                                          "`git archive <commit> | tar -x -C DIR`); the fakes stay this tree's")
    parser.add_argument("--keep", action="store_true", help="leave the database as the run left it (to look into)")
    args = parser.parse_args(argv)
    results = []
    background = Background().start()
    for mode in args.modes.split(","):
        log(f"mode {mode}: {args.moves} moves, {args.workers} worker(s), Redis {REDIS_URL}")
        t0 = time.time()
        result = run(args, MODES[mode])
        result["label"] = mode + (f" ({Path(args.code).name})" if args.code else "")
        result["background"] = background.mean(t0, time.time())
        results.append(result)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0 if all(r["done_s"] and not r["violations"] and not r["duplicates"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
