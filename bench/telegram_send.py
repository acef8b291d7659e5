"""One sendMessage, three ways, in this process against the benchmark's fake Telegram (its own process).

    .venv/bin/python bench/telegram_send.py [--calls 600] [--rounds 3]

- `ptb`: python-telegram-bot's `Bot.send_message` on the client's event loop (how every Bot API
  call went before `connectors/telegram.py:JSON_METHODS`);
- `requests`: `Client._post`, the JSON POST on a keep-alive requests session (what
  `Client.call` does now for the JSON methods), the session reading the environment once;
- `requests+env`: the same with `trust_env = True`, i.e. requests reading the proxy environment on
  every call (what `connectors/base.py:read_environment_once` avoids).

Each round runs the variants one after the other; prints wall and CPU time per call. No Redis,
no rate limits, no "sent" mark: the request path only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors import telegram
from connectors.base import Connection

TOKEN = "123456:BENCH-token"   # bench/fakes.py's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fakes.py"), "telegram"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = json.loads(fake.stdout.readline())["url"]
        client = telegram.Client(Connection(name="bot", type="telegram", base_url=url,
                                            credentials={"token": TOKEN}))
        trusting = client.session.trust_env

        def ptb() -> object:
            return client._run("send_message", client.bot.send_message(chat_id="42", text="hello"))

        def direct() -> object:
            client.session.trust_env = trusting
            return client._post("send_message", {"chat_id": "42", "text": "hello"})

        def direct_env() -> object:
            client.session.trust_env = True
            return client._post("send_message", {"chat_id": "42", "text": "hello"})

        variants = {"ptb": ptb, "requests": direct, "requests+env": direct_env}
        for send in variants.values():   # connections made, code warm
            for _ in range(50):
                send()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, send in variants.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.calls):
                    send()
                results[name].append(((time.perf_counter() - wall) / args.calls * 1000,
                                      (time.process_time() - cpu) / args.calls * 1000))
        for name, rounds in results.items():
            print(f"{name:13} " + "   ".join(f"wall {w:.2f} ms, cpu {c:.2f} ms" for w, c in rounds))
    finally:
        fake.stdin.close()
        fake.terminate()
        fake.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
