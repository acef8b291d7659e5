"""The baseline worker: BRPOP a raw webhook body, POST one sendMessage to the fake Telegram.

`python bench/baseline_worker.py [--burst]` with REDIS_URL, TELEGRAM_API_URL,
TELEGRAM_BOT_TOKEN and TEAM_CHAT_ID set. It reads nothing from the CRM, plans nothing and
records nothing: it is the floor crmbridge's worker is compared with. The lead id is cut out
of the body with one regex so that the fake Telegram can match the message to its webhook.
"""
from __future__ import annotations

import os
import re
import signal
import sys

import requests
from redis import Redis

LIST_KEY = "bench-baseline:bodies"
LEAD_ID = re.compile(rb"leads%5Bstatus%5D%5B0%5D%5Bid%5D=(\d+)")


def main(argv: list[str]) -> int:
    burst = "--burst" in argv
    store = Redis.from_url(os.environ["REDIS_URL"])
    session = requests.Session()
    url = f"{os.environ['TELEGRAM_API_URL'].rstrip('/')}/bot{os.environ['TELEGRAM_BOT_TOKEN']}/sendMessage"
    chat = os.environ.get("TEAM_CHAT_ID", "-1001234567890")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        item = store.brpop(LIST_KEY, timeout=1)
        if item is None:
            if burst:
                break
            continue
        found = LEAD_ID.search(item[1])
        text = f"baseline #{found.group(1).decode() if found else '?'}"
        for attempt in range(3):  # a kept-alive connection may have been closed: a fresh one
            try:
                session.post(url, json={"chat_id": chat, "text": text}, timeout=10).raise_for_status()
                break
            except requests.RequestException as exc:
                print(f"baseline worker: {exc!r}", file=sys.stderr, flush=True)
                session.close()
                session = requests.Session()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
