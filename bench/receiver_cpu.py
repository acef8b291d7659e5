"""CPU time of the receiver per webhook, in-process: the Flask app called as gunicorn calls it
(a WSGI environ with `wsgi.input_terminated`), no HTTP, no load generator, on the real Redis.

    .venv/bin/python bench/receiver_cpu.py                 # 2,000 webhooks, intake as configured
    .venv/bin/python bench/receiver_cpu.py --intake rq     # the public path (CRMBRIDGE_INTAKE=rq)

The recorded amoCRM status webhook with a new lead id each (no duplicates), after 200 warm-up
calls; prints CPU ms per webhook. Uses database 10 (BENCH_REDIS_URL), flushed before and after.
Steadier than bench/run.py's intake phase on a shared machine, since it counts only this
process's CPU; run it a few times, alternating the variants you compare.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
ENV = {"AMO_BASE_URL": "http://127.0.0.1:9", "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": "amo-secret",
       "TELEGRAM_API_URL": "http://127.0.0.1:9", "TELEGRAM_BOT_TOKEN": "123456:BENCH-token",
       "TELEGRAM_WEBHOOK_SECRET": "tg-secret", "TEAM_CHAT_ID": "-1001234567890"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--intake", choices=("fast", "rq"), default=None)
    args = parser.parse_args(argv)
    if args.intake:
        os.environ["CRMBRIDGE_INTAKE"] = args.intake
    sys.path.insert(0, str(ROOT))
    from redis import Redis

    from config.settings import Settings
    from webhooks import create_app

    store = Redis.from_url(REDIS_URL)
    store.flushdb()
    config = Path(tempfile.mkdtemp()) / "config"
    shutil.copytree(ROOT / "config" / "examples" / "quickstart", config)
    try:
        app = create_app(settings=Settings(config_dir=config, redis_url=REDIS_URL, environ=ENV))
        sample = (ROOT / "tests" / "payloads" / "amocrm" / "lead_status_changed_full.form").read_bytes()
        bodies = [sample.replace(b"31926520", str(40_000_000 + i).encode()) for i in range(args.count + 200)]
        for body in bodies[:200]:
            post(app, body)
        started = time.process_time()
        for body in bodies[200:]:
            post(app, body)
        cpu = (time.process_time() - started) / args.count
    finally:
        store.flushdb()
        shutil.rmtree(config.parent, ignore_errors=True)
    print(f"receiver CPU per webhook: {cpu * 1000:.3f} ms (intake {os.environ.get('CRMBRIDGE_INTAKE', 'fast')}, "
          f"{args.count} webhooks)")
    return 0


def post(app, body: bytes) -> None:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/hooks/quickstart-amo", "QUERY_STRING": "token=amo-secret",
               "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True, "wsgi.url_scheme": "http",
               "wsgi.errors": sys.stderr, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
               "SERVER_PROTOCOL": "HTTP/1.1"}
    status: list[str] = []
    answer = b"".join(app(environ, lambda line, headers: status.append(line)))
    if not status[0].startswith("200"):
        raise SystemExit(f"unexpected answer: {status[0]} {answer!r}")


if __name__ == "__main__":
    sys.exit(main())
