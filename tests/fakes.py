"""Local fake vendor servers on 127.0.0.1 that speak the recorded wire formats.

Each records what it received (method, path, query, body) and can be told to fail the next
calls of a path (status + body), the way the real APIs do under load.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, urlsplit


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    status: int = 0


@dataclass
class Fault:
    pattern: str
    status: int
    body: Any
    times: int
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """A threaded HTTP server whose routes are (method, regex) → handler(call, match)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.routes: list[tuple[str, re.Pattern, Callable]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> "FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, pattern: str, handler: Callable) -> None:
        self.routes.append((method, re.compile(pattern + "$"), handler))

    def fail(self, pattern: str, status: int, body: Any, times: int = 1, headers: dict | None = None) -> None:
        """The next `times` calls whose path matches `pattern` get this answer."""
        self.faults.append(Fault(pattern, status, body, times, headers or {}))

    def received(self, method: str | None = None, path: str | None = None, *,
                 failed: bool = False) -> list[Call]:
        """Calls answered with success (or, with failed=True, every call)."""
        with self.lock:
            return [c for c in self.calls if (method is None or c.method == method)
                    and (path is None or re.fullmatch(path, c.path)) and (failed or c.status < 400)]

    def wait_for(self, method: str, path: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(method, path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count}× {method} {path} not received in {timeout}s; got "
                             f"{[(c.method, c.path) for c in self.calls]}")

    def _answer(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and re.search(fault.pattern, call.path):
                    fault.times -= 1
                    return fault.status, fault.body, fault.headers
        for method, pattern, handler in self.routes:
            match = pattern.match(call.path)
            if method == call.method and match:
                return handler(call, match)
        return 404, {"error": f"no route {call.method} {call.path}"}, {}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = Call(self.command, parts.path, parse_qs(parts.query),
                            decode_body(raw, self.headers.get("Content-Type", "")), dict(self.headers))
                status, body, headers = fake._answer(call)
                call.status = status
                with fake.lock:
                    fake.calls.append(call)
                payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        return Handler


def decode_body(raw: bytes, content_type: str) -> Any:
    """JSON, form-encoded, or multipart (python-telegram-bot sends the last two)."""
    if not raw:
        return None
    if "json" in content_type:
        return json.loads(raw)
    if "x-www-form-urlencoded" in content_type:
        return {k: _maybe_json(v) for k, v in parse_qsl(raw.decode(), keep_blank_values=True)}
    if "multipart/form-data" in content_type:
        message = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        return {part.get_param("name", header="content-disposition"):
                _maybe_json(part.get_content() if part.get_content_type().startswith("text")
                            else part.get_payload(decode=True).decode(errors="replace"))
                for part in message.iter_parts()}
    return raw


def _maybe_json(value: str) -> Any:
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


# --- amoCRM API v4 -----------------------------------------------------------------------------

class FakeAmo(FakeServer):
    """amoCRM API v4: leads, pipelines, users, custom fields, tasks, notes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(5000)
        self.leads: dict[int, dict[str, Any]] = {}
        self.pipelines = [{"id": 2116, "name": "Sales", "statuses": [
            {"id": 10216995, "name": "Getting the brief"}, {"id": 10216994, "name": "Brief received"},
            {"id": 10216996, "name": "Proposal approval"}, {"id": 142, "name": "Won"}]}]
        self.users = [{"id": 938348, "name": "Olena Kovalenko"}, {"id": 102525, "name": "Ivan Petrenko"}]
        self.fields = [{"id": 1119321, "name": "Some text field", "type": "text"},
                       {"id": 752009, "name": "Поле1", "type": "text"}]
        self.route("GET", r"/api/v4/leads/(\d+)", self._get_lead)
        self.route("PATCH", r"/api/v4/leads/(\d+)", self._patch_lead)
        self.route("GET", r"/api/v4/leads/pipelines", self._pipelines)
        self.route("GET", r"/api/v4/users", lambda c, m: (200, {"_embedded": {"users": self.users}}, {}))
        self.route("GET", r"/api/v4/leads/custom_fields",
                   lambda c, m: (200, {"_embedded": {"custom_fields": self.fields}}, {}))
        self.route("POST", r"/api/v4/tasks", self._created("tasks"))
        self.route("POST", r"/api/v4/leads/notes", self._created("notes"))

    def add_lead(self, lead: dict[str, Any]) -> None:
        self.leads[int(lead["id"])] = lead

    def _get_lead(self, call: Call, m: re.Match):
        lead = self.leads.get(int(m.group(1)))
        if lead is None:  # amoCRM answers 204 with no body for what it does not find
            return 204, b"", {}
        return 200, lead, {"Content-Type": "application/hal+json"}

    def _patch_lead(self, call: Call, m: re.Match):
        lead = self.leads.setdefault(int(m.group(1)), {"id": int(m.group(1))})
        lead.update({k: v for k, v in call.body.items() if k in ("status_id", "pipeline_id", "name", "price")})
        return 200, {"id": lead["id"], "updated_at": int(time.time())}, {}

    def _pipelines(self, call: Call, m: re.Match):
        body = [{"id": p["id"], "name": p["name"], "_embedded": {"statuses": p["statuses"]}}
                for p in self.pipelines]
        return 200, {"_embedded": {"pipelines": body}}, {}

    def _created(self, what: str):
        def handler(call: Call, m: re.Match):
            items = [{"id": next(self.ids), "request_id": str(i)} for i, _ in enumerate(call.body)]
            return 200, {"_embedded": {what: items}}, {"Content-Type": "application/hal+json"}
        return handler


# --- Telegram Bot API ----------------------------------------------------------------------------

class FakeTelegram(FakeServer):
    """Bot API methods under /bot<token>/<method>, answering {"ok": true, "result": …}."""

    def __init__(self, token: str = "123456:TEST") -> None:
        super().__init__()
        self.token = token
        self.message_ids = itertools.count(100)
        self.route("POST", rf"/bot{re.escape(token)}/(\w+)", self._method)

    def method_calls(self, name: str) -> list[Call]:
        return self.received("POST", rf"/bot{re.escape(self.token)}/{name}")

    def _method(self, call: Call, m: re.Match):
        name, params = m.group(1), call.body or {}
        if name == "getMe":
            return 200, {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "Bridge",
                                                 "username": "bridge_bot"}}, {}
        if name in ("sendMessage", "editMessageReplyMarkup", "editMessageText"):
            chat_id = int(params.get("chat_id", 0))
            result = {"message_id": int(params.get("message_id") or next(self.message_ids)),
                      "date": int(time.time()), "text": params.get("text", ""),
                      "chat": {"id": chat_id, "type": "group" if chat_id < 0 else "private", "title": "Team"}}
            return 200, {"ok": True, "result": result}, {}
        return 200, {"ok": True, "result": True}, {}
