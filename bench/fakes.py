"""The benchmark's fake vendors, each in a process of its own: `python bench/fakes.py amo|telegram`.

They are the test suite's fakes (tests/fakes.py) with two changes for load:

- the fake amoCRM answers any lead id with a lead in "Brief received" (the tests' fake only
  knows the leads a test added), so every webhook's fresh read is a real 200 with a body;
- the fake Telegram stamps each sendMessage with the wall-clock time it was received, which is
  what end-to-end latency and timer lateness are measured against;
- both speak HTTP/1.1 with keep-alive, as the real APIs do, so that the clients reuse their
  connections (the tests' fakes answer HTTP/1.0 and close every connection).

The process prints one JSON line (`{"url": ...}`) once it listens, then serves until it gets
SIGTERM or its stdin closes. `GET /_bench/deliveries?since=N` returns the stamped messages
from index N; `POST /_bench/reset` forgets everything received so far.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import Call, FakeAmo, FakeTelegram

TG_TOKEN = "123456:BENCH-token"


def _keep_alive(server) -> None:
    handler = server.server.RequestHandlerClass
    handler.protocol_version = "HTTP/1.1"  # every answer carries Content-Length
    # headers and body leave in two writes: without TCP_NODELAY the body waits for the client's
    # delayed ACK (40 ms) on a kept-alive connection
    handler.disable_nagle_algorithm = True


def _control(server, deliveries: list | None) -> None:
    def get(call: Call, m: re.Match):
        since = int((call.query.get("since") or ["0"])[0])
        with server.lock:
            items = list(deliveries[since:]) if deliveries is not None else []
            server.calls.clear()  # the fake's own call log: not needed here, keep memory flat
        return 200, {"deliveries": items}, {}

    def reset(call: Call, m: re.Match):
        with server.lock:
            server.calls.clear()
            if deliveries is not None:
                deliveries.clear()
        return 200, {"ok": True}, {}

    server.route("GET", r"/_bench/deliveries", get)
    server.route("POST", r"/_bench/reset", reset)


class BenchAmo(FakeAmo):
    """Every lead id exists, in stage "Brief received" of pipeline Sales."""

    def _get_lead(self, call: Call, m: re.Match):
        lead_id = int(m.group(1))
        lead = self.leads.get(lead_id) or {
            "id": lead_id, "name": f"Lead {lead_id}", "price": 1000, "status_id": 10216994,
            "pipeline_id": 2116, "responsible_user_id": 938348,
            "custom_fields_values": [{"field_id": 1119321, "field_name": "Some text field",
                                      "values": [{"value": "some text"}]}],
            "_embedded": {"tags": [], "contacts": []}}
        return 200, lead, {"Content-Type": "application/hal+json"}


class BenchTelegram(FakeTelegram):
    """sendMessage is stamped: (time received, text)."""

    def __init__(self, token: str = TG_TOKEN) -> None:
        super().__init__(token)
        self.deliveries: list[tuple[float, str]] = []

    def _handler(self):
        base = super()._handler()

        class Handler(base):
            """FakeTelegram's handler swaps rfile for the body it read (to keep the raw bytes);
            the connection's own rfile is put back, so that the next request on a kept-alive
            connection is read from the socket and not from an empty buffer."""

            def _serve(self) -> None:
                connection_rfile = self.rfile
                try:
                    base._serve(self)
                finally:
                    self.rfile = connection_rfile

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        return Handler

    def _method(self, call: Call, m: re.Match):
        if m.group(1) == "sendMessage":
            stamp = time.time()
            with self.lock:
                self.deliveries.append((stamp, str((call.body or {}).get("text", ""))))
        return super()._method(call, m)


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "telegram"
    if kind == "amo":
        server = BenchAmo()
        _control(server, None)
    else:
        server = BenchTelegram()
        _control(server, server.deliveries)
    _keep_alive(server)
    server.server.socket.listen(256)  # socketserver listens with a backlog of 5
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print(json.dumps({"url": server.url, "pid": os.getpid()}), flush=True)

    def watch_stdin() -> None:  # the parent went away: stop
        sys.stdin.read()
        done.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
