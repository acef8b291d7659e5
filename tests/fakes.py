"""Local fake vendor servers on 127.0.0.1 that speak the recorded wire formats.

Each records what it received (method, path, query, body) and can be told to fail the next
calls of a path (status + body), the way the real APIs do under load: refusing the call, or doing
it and then answering an error (`applied=True`: a 500 after the task was made) or dropping the
connection (`reset=True`), which is what makes a create uncertain.
"""
from __future__ import annotations

import bisect
import io
import itertools
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, urlsplit
from urllib.parse import unquote


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
    applied: bool = False     # the call is done first, then this answer is given
    reset: bool = False       # the call is done, then the connection is closed without an answer
    method: str | None = None   # only calls of this HTTP method (None: any)


RESET = object()   # an answer's status that tells the handler to drop the connection unanswered


@dataclass
class VendorLimit:
    """A vendor's published limit as it counts it: at most `calls` requests in any `window` seconds
    per key (`key(call)`: the account, a chat, a group; None: the call does not count)."""

    name: str
    calls: int
    window: float
    key: Callable[["Call"], str | None]


@dataclass
class Violation:
    limit: str
    key: str
    at: float          # time.monotonic() when the request arrived
    in_window: int     # admitted requests already in the window it arrived in


class LimitKeeper:
    """Counts arrivals per limit and key the way the vendor does (a sliding window of admitted
    requests, on the fake's clock, when the request arrives) and records every request that would
    exceed one. Every arrival time is kept, so a test can say how many calls any window held."""

    def __init__(self, limits: list[VendorLimit]):
        self.limits = limits
        self.lock = threading.Lock()
        self.admitted: dict[tuple[str, str], list[float]] = {}
        self.arrived: dict[tuple[str, str], list[float]] = {}    # admitted or refused
        self.violations: list[Violation] = []

    def admit(self, call: "Call", at: float) -> Violation | None:
        """Log the call under each limit it counts against, or (over any) log a violation instead."""
        with self.lock:
            keys = [(limit, limit.key(call)) for limit in self.limits]
            keys = [(limit, key) for limit, key in keys if key is not None]
            for limit, key in keys:
                bisect.insort(self.arrived.setdefault((limit.name, key), []), at)
            for limit, key in keys:
                log = self.admitted.get((limit.name, key), [])
                held = bisect.bisect_right(log, at) - bisect.bisect_right(log, at - limit.window)
                later = bisect.bisect_left(log, at + limit.window) - bisect.bisect_right(log, at)
                if held >= limit.calls or held + later >= limit.calls and self._crowds(log, at, limit):
                    found = Violation(limit.name, key, at, held)
                    self.violations.append(found)
                    return found
            for limit, key in keys:
                bisect.insort(self.admitted.setdefault((limit.name, key), []), at)
            return None

    @staticmethod
    def _crowds(log: list[float], at: float, limit: VendorLimit) -> bool:
        """Would `at` (arriving out of order, after later arrivals were logged) make some window
        hold more than `limit.calls`?"""
        merged = sorted([*log, at])
        return any(merged[i + limit.calls] - merged[i] < limit.window for i in range(len(merged) - limit.calls))

    def peak(self, name: str, window: float | None = None, *, refused_too: bool = True) -> int:
        """The most calls any one key sent in any window of the limit's (or `window`) seconds: all
        that arrived (refused ones too: what the caller sent), or only those admitted."""
        limit = next(lim for lim in self.limits if lim.name == name)
        span = limit.window if window is None else window
        with self.lock:
            logs = [sorted(times) for (lname, _), times in (self.arrived if refused_too else self.admitted).items()
                    if lname == name]
        best = 0
        for times in logs:
            lo = 0
            for hi, t in enumerate(times):
                while times[lo] <= t - span:
                    lo += 1
                best = max(best, hi - lo + 1)
        return best


class FakeServer:
    """A threaded HTTP server whose routes are (method, regex) → handler(call, match)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.applied_faults: list[tuple[str, str, int]] = []   # (method, path, the status it had) done, then failed
        self.keeper: LimitKeeper | None = None       # the vendor's limits, once enforce_limits() is called
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

    def fail(self, pattern: str, status: int, body: Any, times: int = 1, headers: dict | None = None, *,
             applied: bool = False, reset: bool = False, method: str | None = None) -> None:
        """The next `times` calls whose path matches `pattern` (and of `method`, if given) get this
        answer; with `applied` they are done first (a vendor that made the task, then failed to
        answer); with `reset` they are done and the connection is dropped instead of answered."""
        self.faults.append(Fault(pattern, status, body, times, headers or {}, applied, reset, method))

    def limited(self, limits: list[VendorLimit]) -> "FakeServer":
        """Enforce these limits from now on: a request over one is answered as the vendor answers
        it (`over_limit`) and counted in `violations`."""
        self.keeper = LimitKeeper(limits)
        return self

    @property
    def violations(self) -> list[Violation]:
        return list(self.keeper.violations) if self.keeper else []

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        return 429, {"error": f"over the {violation.limit} limit"}, {}

    def received(self, method: str | None = None, path: str | None = None, *,
                 failed: bool = False) -> list[Call]:
        """Calls the vendor did: answered with success, or done and then failed (an applied fault);
        with failed=True, every call."""
        with self.lock:
            return [c for c in self.calls if (method is None or c.method == method)
                    and (path is None or re.fullmatch(path, c.path))
                    and (failed or c.status < 400 or getattr(c, "applied", False))]

    def wait_for(self, method: str, path: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(method, path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count}× {method} {path} not received in {timeout}s; got "
                             f"{[(c.method, c.path) for c in self.calls]}")

    def _answer(self, call: Call) -> tuple[Any, Any, dict[str, str]]:
        with self.lock:
            fault = next((f for f in self.faults if f.times > 0 and re.search(f.pattern, call.path)
                          and f.method in (None, call.method)), None)
            if fault is not None:
                fault.times -= 1
        if fault is not None and not (fault.applied or fault.reset):
            return fault.status, fault.body, fault.headers
        answer = self._route(call)
        if fault is None:
            return answer
        call.applied = answer[0] < 400
        self.applied_faults.append((call.method, call.path, answer[0]))
        return (RESET, b"", {}) if fault.reset else (fault.status, fault.body, fault.headers)

    def _route(self, call: Call) -> tuple[int, Any, dict[str, str]]:
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
                arrived = time.monotonic()
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = Call(self.command, parts.path, parse_qs(parts.query),
                            decode_body(raw, self.headers.get("Content-Type", "")), dict(self.headers))
                call.raw = raw
                refused = fake.keeper.admit(call, arrived) if fake.keeper else None
                status, body, headers = fake.over_limit(refused) if refused else fake._answer(call)
                if status is RESET:   # done, but the client never hears: drop the connection
                    call.status = 200
                    with fake.lock:
                        fake.calls.append(call)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
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


def _neg(ident: str) -> str:
    """A key that sorts zero-padded ids (the fake's event ids) newest first."""
    return "".join(chr(0x10FFFF - ord(ch)) for ch in str(ident))


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


def multipart_parts(call: Call) -> dict[str, dict[str, Any]]:
    """A multipart request's file parts as {field: {"filename", "content": bytes}} (exact bytes)."""
    content_type = call.headers.get("Content-Type", "")
    raw = getattr(call, "raw", b"")
    if "multipart/form-data" not in content_type or not raw:
        return {}
    message = BytesParser(policy=email_policy).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    return {part.get_param("name", header="content-disposition"):
            {"filename": part.get_filename(), "content": part.get_payload(decode=True)}
            for part in message.iter_parts() if part.get_filename() is not None}


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
        self.route("POST", r"/api/v4/tasks", self._add_tasks)  # kept, so that lists and closing find them
        self.route("POST", r"/api/v4/(leads|contacts|companies)/notes", self._add_notes)
        self._more_routes()
        self._playbook_routes()
        self._contact_search_routes()

    def add_lead(self, lead: dict[str, Any]) -> None:
        self.leads[int(lead["id"])] = lead

    def enforce_limits(self, per_second: int = 7) -> "FakeAmo":
        """amoCRM's limit, "не более 7 запросов в секунду" per integration (API-REFERENCE.md §1, Rate
        limits; developers.kommo.com/docs/limitations): here every /api/ request of the account, in any
        sliding second. Over it amoCRM answers 429 (and repeated excess blocks the account with 403)."""
        return self.limited([VendorLimit("account", per_second, 1.0,
                                         lambda call: "account" if call.path.startswith("/api/") else None)])

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        # the 429 body "may not be JSON" (API-REFERENCE.md §1): the problem+json shape of other errors
        return 429, {"title": "Too Many Requests", "status": 429}, {"Content-Type": "application/problem+json"}

    def _get_lead(self, call: Call, m: re.Match):
        lead = self.leads.get(int(m.group(1)))
        if lead is None:  # amoCRM answers 204 with no body for what it does not find
            return 204, b"", {}
        return 200, lead, {"Content-Type": "application/hal+json"}

    def _patch_lead(self, call: Call, m: re.Match):
        lead = self.leads.setdefault(int(m.group(1)), {"id": int(m.group(1))})
        if "status_id" in call.body and hasattr(self, "events") and call.body["status_id"] != lead.get("status_id"):
            self.move_lead(lead["id"], call.body["status_id"], call.body.get("pipeline_id"))
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

    # --- added for the amoCRM connector's tests: paged lists, tasks, notes, files, contacts, OAuth ---

    def _more_routes(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.notes: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.file_links: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.drive_files: dict[str, dict[str, Any]] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.entity_fields: dict[str, list[dict[str, Any]]] = {"contacts": [], "companies": []}
        self.oauth_client = {"client_id": "integration-id", "client_secret": "integration-secret",
                             "redirect_uri": "https://bridge.example/oauth"}
        self.refresh_token: str | None = None       # the one refresh token amoCRM would accept now
        self.access_tokens: set[str] | None = None  # when set, /api/v4 and the drive need one of these
        self.token_delay = 0.0
        self.token_serial = itertools.count(1)
        self.route("GET", r"/api/v4/leads", self._list_leads)
        self.route("POST", r"/api/v4/leads", self._add_leads)
        self.route("POST", r"/api/v4/leads/(\d+)/link", self._link)
        self.route("GET", r"/api/v4/tasks", self._list_tasks)
        self.route("GET", r"/api/v4/tasks/(\d+)", self._get_task)
        self.route("PATCH", r"/api/v4/tasks/(\d+)", self._patch_task)
        self.route("GET", r"/api/v4/(leads|contacts|companies)/(\d+)/notes", self._list_notes)
        self.route("GET", r"/api/v4/(leads|contacts|companies)/(\d+)/notes/(\d+)", self._get_note)
        self.route("GET", r"/api/v4/(leads|contacts|companies)/(\d+)/files", self._list_file_links)
        self.route("GET", r"/api/v4/account", self._account)
        self.route("GET", r"/drive/v1.0/files/([0-9a-f-]+)", self._drive_file)
        self.route("GET", r"/api/v4/contacts/(\d+)", self._get_contact)
        self.route("PATCH", r"/api/v4/contacts/(\d+)", self._patch_contact)
        self.route("GET", r"/api/v4/(contacts|companies)/custom_fields", self._other_fields)
        self.route("POST", r"/oauth2/access_token", self._token)
        self._drive_upload_routes()

    # --- the drive's upload sessions and file links (make_document) ----------------------------

    def _drive_upload_routes(self, part_size: int = 4096) -> None:
        """POST {drive}/v1.0/sessions {file_name, file_size, content_type} → {upload_url,
        max_part_size}; each part POSTed raw to upload_url answers {next_url} until the file is
        whole, then the file (amocrm-api-php Files::uploadOne, FileModel). PUT
        /api/v4/<entity>/{id}/files [{file_uuid}] links a drive file (EntityFiles::add)."""
        self.part_size = part_size
        self.upload_sessions: dict[str, dict[str, Any]] = {}
        self.drive_contents: dict[str, bytes] = {}   # uuid → the bytes uploaded
        self.route("POST", r"/drive/v1.0/sessions", self._open_session)
        self.route("POST", r"/drive/upload/([0-9a-f]+)/(\d+)", self._upload_part)
        self.route("PUT", r"/api/v4/(leads|contacts|companies)/(\d+)/files", self._link_files)

    def _open_session(self, call: Call, m: re.Match):
        body = call.body or {}
        if not body.get("file_name") or not isinstance(body.get("file_size"), int):
            return 400, {"title": "Bad Request", "status": 400, "detail": "file_name and file_size are required"}, {}
        sid = uuid.uuid4().hex
        self.upload_sessions[sid] = {**body, "parts": []}
        return 200, {"session_id": sid, "upload_url": f"{self.url}/drive/upload/{sid}/0",
                     "max_part_size": self.part_size, "max_file_size": 314572800}, {}

    def _upload_part(self, call: Call, m: re.Match):
        session = self.upload_sessions.get(m.group(1))
        raw = getattr(call, "raw", b"")
        if session is None or int(m.group(2)) != len(session["parts"]) or len(raw) > self.part_size:
            return 400, {"title": "Bad Request", "status": 400, "detail": "unexpected part"}, {}
        session["parts"].append(raw)
        if sum(map(len, session["parts"])) < session["file_size"]:
            return 200, {"next_url": f"{self.url}/drive/upload/{m.group(1)}/{len(session['parts'])}"}, {}
        file_uuid, version = str(uuid.uuid4()), str(uuid.uuid4())
        name, _, extension = session["file_name"].rpartition(".")
        self.drive_files[file_uuid] = {
            "uuid": file_uuid, "version_uuid": version, "name": name, "size": session["file_size"],
            "metadata": {"extension": extension, "mime_type": session.get("content_type")},
            "_links": {"download": {"href": f"{self.url}/drive/download/{file_uuid}"}}}
        self.drive_contents[file_uuid] = b"".join(session["parts"])
        return 200, self.drive_files[file_uuid], {}

    def _link_files(self, call: Call, m: re.Match):
        links = self.file_links.setdefault((m.group(1), int(m.group(2))), [])
        for item in call.body or []:
            if all(link["file_uuid"] != item["file_uuid"] for link in links):
                links.append({"id": next(self.ids), "file_uuid": item["file_uuid"]})
        return 200, {"_embedded": {"files": [{"file_uuid": i["file_uuid"]} for i in call.body or []]}}, {}

    def issue_tokens(self) -> tuple[str, str]:
        """A new access/refresh pair; the previous refresh token stops working (it rotates)."""
        n = next(self.token_serial)
        access, refresh = f"access-{n}", f"refresh-{n}"
        if self.access_tokens is None:
            self.access_tokens = set()
        self.access_tokens.add(access)
        self.refresh_token = refresh
        return access, refresh

    def _answer(self, call: Call) -> tuple[int, Any, dict[str, str]]:
        if self.access_tokens is not None and call.path.startswith(("/api/", "/drive/")):
            token = call.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in self.access_tokens:
                return 401, {"title": "Unauthorized", "status": 401}, {"Content-Type": "application/problem+json"}
        return super()._answer(call)

    def _page(self, call: Call, key: str, items: list[Any], default_limit: int = 50):
        """A page the amoCRM way: `_page`, `_links.next` while more remain, 204 when empty."""
        limit = int(call.query.get("limit", [default_limit])[0])
        page = int(call.query.get("page", ["1"])[0])
        chunk = items[(page - 1) * limit: page * limit]
        if not chunk:
            return 204, b"", {}
        links = {"self": {"href": f"{self.url}{call.path}?limit={limit}&page={page}"}}
        if page * limit < len(items):
            links["next"] = {"href": f"{self.url}{call.path}?limit={limit}&page={page + 1}"}
        return 200, {"_page": page, "_links": links, "_embedded": {key: chunk}}, {"Content-Type": "application/hal+json"}

    def _list_leads(self, call: Call, m: re.Match):
        """filter[updated_at][from] (oldest first), or filter[created_at][from] with filter[pipeline_id]
        and order[created_at]=desc (filters-api, leads-api: how find_lead reads back a copy)."""
        q = call.query
        since = int(q.get("filter[updated_at][from]", ["0"])[0])
        until = int(q.get("filter[updated_at][to]", [str(2 ** 40)])[0])
        made = int(q.get("filter[created_at][from]", ["0"])[0])
        pipeline = (q.get("filter[pipeline_id]") or q.get("filter[pipeline_id][]") or [None])[0]
        # filters-api: filter[statuses][i][pipeline_id] + filter[statuses][i][status_id], any of them
        statuses = {(q.get(f"filter[statuses][{i}][pipeline_id]", [""])[0], q[f"filter[statuses][{i}][status_id]"][0])
                    for i in range(50) if f"filter[statuses][{i}][status_id]" in q}
        found = [lead for lead in self.leads.values() if since <= lead.get("updated_at", 0) <= until
                 and lead.get("created_at", 0) >= made and pipeline in (None, str(lead.get("pipeline_id")))
                 and (not statuses or (str(lead.get("pipeline_id")), str(lead.get("status_id"))) in statuses)]
        if (q.get("order[created_at]") or [""])[0] == "desc":
            return self._page(call, "leads", sorted(found, key=lambda lead: (-lead.get("created_at", 0), -lead["id"])))
        if (q.get("order[id]") or [""])[0] == "asc":
            return self._page(call, "leads", sorted(found, key=lambda lead: lead["id"]))
        return self._page(call, "leads", sorted(found, key=lambda lead: lead.get("updated_at", 0)))

    def _add_leads(self, call: Call, m: re.Match):
        made = []
        for i, lead in enumerate(call.body):
            new_id = next(self.ids)
            tags = [{"id": next(self.ids), "name": t["name"]} for t in lead.get("tags_to_add", [])]
            self.leads[new_id] = {**lead, "id": new_id, "_embedded": {"tags": tags}}
            if hasattr(self, "clock"):  # read back as amoCRM shows it: field names, times, no contacts yet
                names = {f["id"]: f["name"] for f in self.fields}
                self.leads[new_id].update(
                    created_at=int(self.clock()), updated_at=int(self.clock()), price=lead.get("price", 0),
                    custom_fields_values=[{**cf, "field_name": names.get(cf["field_id"]), "field_code": None,
                                           "field_type": "text"} for cf in lead.get("custom_fields_values", [])])
                self.leads[new_id]["_embedded"].update(contacts=[], companies=[])
            made.append({"id": new_id, "request_id": str(i)})
        return 200, {"_embedded": {"leads": made}}, {"Content-Type": "application/hal+json"}

    def _link(self, call: Call, m: re.Match):
        lead_id = int(m.group(1))
        links = [{"entity_id": lead_id, "entity_type": "leads", **link} for link in call.body]
        embedded = self.leads.get(lead_id, {}).get("_embedded")
        if isinstance(embedded, dict) and "contacts" in embedded:  # the linked contacts show on the lead
            embedded["contacts"] += [{"id": link["to_entity_id"], "is_main": (link.get("metadata") or {}).get("is_main", False)}
                                     for link in call.body if link["to_entity_type"] == "contacts"]
        return 200, {"_total_items": len(links), "_embedded": {"links": links}}, {"Content-Type": "application/hal+json"}

    def _list_tasks(self, call: Call, m: re.Match):
        q = {k: v[0] for k, v in call.query.items()}
        found = [t for t in self.tasks.values()
                 if q.get("filter[entity_type]") in (None, t["entity_type"])
                 and q.get("filter[entity_id]") in (None, str(t["entity_id"]))
                 and q.get("filter[is_completed]") in (None, str(int(t["is_completed"])))
                 and t.get("updated_at", 0) >= int(q.get("filter[updated_at][from]", 0))]
        # tasks-api: order by created_at, complete_till or id, asc or desc
        order = next((k for k in ("complete_till", "created_at", "id") if q.get(f"order[{k}]")), "id")
        return self._page(call, "tasks", sorted(found, key=lambda t: (t.get(order) or 0, t["id"]),
                                                reverse=q.get(f"order[{order}]") == "desc"))

    def _get_task(self, call: Call, m: re.Match):
        task = self.tasks.get(int(m.group(1)))
        return (200, task, {"Content-Type": "application/hal+json"}) if task else (204, b"", {})

    def _patch_task(self, call: Call, m: re.Match):
        task = self.tasks.get(int(m.group(1)))
        if task is None:
            return 400, {"title": "Bad Request", "status": 400, "detail": "Task not found"}, {}
        task.update({k: v for k, v in call.body.items() if k in ("is_completed", "result", "text")})
        return 200, {"id": task["id"], "updated_at": int(time.time()), "request_id": "0"}, {}

    def _add_notes(self, call: Call, m: re.Match):
        """POST /api/v4/<entity>/notes: an array; each kept as GET shows it (api_notes_list.json)."""
        made = []
        for i, note in enumerate(call.body):
            new_id, now = next(self.ids), int(self.clock())
            self.notes.setdefault((m.group(1), int(note["entity_id"])), []).append({
                "id": new_id, "entity_id": int(note["entity_id"]), "created_by": 0, "updated_by": 0,
                "created_at": now, "updated_at": now, "responsible_user_id": 0, "group_id": 0,
                "note_type": note.get("note_type"), "params": note.get("params") or {}, "account_id": 1231414})
            made.append({"id": new_id, "entity_id": int(note["entity_id"]), "request_id": str(i)})
        return 200, {"_embedded": {"notes": made}}, {"Content-Type": "application/hal+json"}

    def _list_notes(self, call: Call, m: re.Match):
        """filter[note_type], filter[updated_at][from], order[id|updated_at] (events-and-notes, "Список
        примечаний по конкретной сущности, по ID сущности")."""
        q = {k: v[0] for k, v in call.query.items()}
        found = [n for n in self.notes.get((m.group(1), int(m.group(2))), [])
                 if q.get("filter[note_type]") in (None, n.get("note_type"))
                 and n.get("updated_at", 0) >= int(q.get("filter[updated_at][from]", 0))]
        for key in ("id", "updated_at"):
            if q.get(f"order[{key}]"):
                found = sorted(found, key=lambda n: n.get(key) or 0, reverse=q[f"order[{key}]"] == "desc")
        return self._page(call, "notes", found)

    def _get_note(self, call: Call, m: re.Match):
        for note in self.notes.get((m.group(1), int(m.group(2))), []):
            if note["id"] == int(m.group(3)):
                return 200, note, {"Content-Type": "application/hal+json"}
        return 204, b"", {}

    def _list_file_links(self, call: Call, m: re.Match):
        """limit + before_id paging over link ids, newest first (files-api); 204 when none."""
        links = sorted(self.file_links.get((m.group(1), int(m.group(2))), []), key=lambda f: -f["id"])
        before = call.query.get("before_id")
        if before:
            links = [f for f in links if f["id"] < int(before[0])]
        links = links[:int(call.query.get("limit", ["50"])[0])]
        if not links:
            return 204, b"", {}
        return 200, {"_embedded": {"files": links}}, {"Content-Type": "application/hal+json"}

    def _account(self, call: Call, m: re.Match):
        account = {"id": 1231414, "subdomain": "example"}
        if "drive_url" in call.query.get("with", [""])[0]:
            account["drive_url"] = f"{self.url}/drive"
        return 200, account, {"Content-Type": "application/hal+json"}

    def _drive_file(self, call: Call, m: re.Match):
        found = self.drive_files.get(m.group(1))
        if found is None:
            return 404, {"title": "Not Found", "status": 404}, {}
        return 200, found, {}

    def _get_contact(self, call: Call, m: re.Match):
        """GET /api/v4/contacts/{id}; `with=leads` adds `_embedded.leads` [{"id", "_links"}]: the leads
        whose `_embedded.contacts` name it (contacts-api, the `with` parameter "leads")."""
        contact = self.contacts.get(int(m.group(1)))
        if not contact:
            return 204, b"", {}
        if "leads" in (call.query.get("with") or [""])[0].split(","):
            # the links a stored contact carries (a recorded sample), then those its leads name
            leads = list((contact.get("_embedded") or {}).get("leads") or [])
            known = {int(lead["id"]) for lead in leads}
            leads += [{"id": lid, "_links": {"self": {"href": f"{self.url}/api/v4/leads/{lid}"}}}
                      for lid, lead in sorted(self.leads.items()) if lid not in known
                      and any(int(c["id"]) == contact["id"] for c in ((lead.get("_embedded") or {}).get("contacts") or []))]
            contact = {**contact, "_embedded": {**(contact.get("_embedded") or {}), "leads": leads}}
        return 200, contact, {"Content-Type": "application/hal+json"}

    def _patch_contact(self, call: Call, m: re.Match):
        contact = self.contacts.setdefault(int(m.group(1)), {"id": int(m.group(1))})
        contact.update({k: v for k, v in call.body.items() if k in ("name", "first_name", "last_name")})
        return 200, {"id": contact["id"], "updated_at": int(time.time())}, {}

    def _other_fields(self, call: Call, m: re.Match):
        return self._page(call, "custom_fields", self.entity_fields[m.group(1)])

    def _token(self, call: Call, m: re.Match):
        """POST /oauth2/access_token, grant_type refresh_token: a spent or unknown token gets 400."""
        time.sleep(self.token_delay)
        body = call.body or {}
        good = all(body.get(k) == v for k, v in self.oauth_client.items())
        with self.lock:
            if not good or body.get("grant_type") != "refresh_token" or body.get("refresh_token") != self.refresh_token:
                return 400, {"hint": "Token has been revoked", "title": "Некорректный запрос",
                             "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson", "status": 400,
                             "detail": "В запросе отсутствует ряд параметров или параметры невалидны"}, {}
            access, refresh = self.issue_tokens()
        return 200, {"token_type": "Bearer", "expires_in": 86400, "server_time": int(time.time()),
                     "access_token": access, "refresh_token": refresh}, {"Content-Type": "application/json"}

    # --- added for playbook C: tasks kept with results, events, stage moves, copies -------------

    def _playbook_routes(self) -> None:
        self.clock: Callable[[], float] = time.time  # amoCRM's own time (created_at): tests move it
        self.events: list[dict[str, Any]] = []
        self.event_ids = itertools.count(1)
        self.route("GET", r"/api/v4/events", self._list_events)
        self.catalogs: list[dict[str, Any]] = []                # GET /api/v4/catalogs (catalogs-api)
        self.catalog_elements: dict[int, list[dict[str, Any]]] = {}
        self.route("GET", r"/api/v4/catalogs", lambda c, m: self._page(c, "catalogs", self.catalogs))
        self.route("GET", r"/api/v4/catalogs/(\d+)/elements", self._list_catalog_elements)
        self.product_links: dict[int, list[dict[str, Any]]] = {}   # lead id → its catalog_elements links
        self.route("GET", r"/api/v4/leads/(\d+)/links", self._list_lead_links)

    def add_event(self, lead_id: int, kind: str, at: float | None = None, **value_after: Any) -> None:
        """An events-and-notes event of a lead ("incoming_call", "lead_status_changed"…)."""
        self.events.append({"id": f"01evt{next(self.event_ids):020d}", "type": kind, "entity_id": int(lead_id),
                            "entity_type": "lead", "created_by": 0, "created_at": int(at if at is not None else self.clock()),
                            "value_after": [value_after] if value_after else [], "value_before": [],
                            "account_id": 1231414})

    def _add_tasks(self, call: Call, m: re.Match):
        """POST /api/v4/tasks: an array; each kept as GET would show it (tasks-api)."""
        made = []
        for i, task in enumerate(call.body):
            new_id = next(self.ids)
            now = int(self.clock())
            self.tasks[new_id] = {"id": new_id, "created_by": 0, "updated_by": 0, "created_at": now, "updated_at": now,
                                  "responsible_user_id": task.get("responsible_user_id", 0), "group_id": 0,
                                  "entity_id": task.get("entity_id"), "entity_type": task.get("entity_type"),
                                  "duration": 0, "is_completed": False, "task_type_id": task.get("task_type_id", 1),
                                  "text": task.get("text"), "result": [], "complete_till": task.get("complete_till"),
                                  "account_id": 1231414}
            made.append({"id": new_id, "request_id": str(i)})
        return 200, {"_embedded": {"tasks": made}}, {"Content-Type": "application/hal+json"}

    def close_task(self, task_id: int, result: str = "") -> dict[str, Any]:
        """A user closes a task in amoCRM (with a result text, as the task card asks)."""
        task = self.tasks[int(task_id)]
        task.update(is_completed=True, result={"text": result} if result else [], updated_at=int(self.clock()))
        return task

    def move_lead(self, lead_id: int, status_id: int, pipeline_id: int | None = None) -> None:
        """A user drags the lead to another stage: the lead changes (updated_at too) and a
        lead_status_changed event is kept, with value_before and value_after [{"lead_status":
        {"id", "pipeline_id"}}] (events-and-notes, the event list's sample)."""
        lead = self.leads[int(lead_id)]
        before = {"lead_status": {"id": lead.get("status_id"), "pipeline_id": lead.get("pipeline_id")}}
        lead["status_id"], lead["pipeline_id"] = status_id, pipeline_id or lead.get("pipeline_id")
        lead["updated_at"] = int(self.clock())
        self.add_event(lead_id, "lead_status_changed", lead_status={"id": status_id, "pipeline_id": lead["pipeline_id"]})
        self.events[-1]["value_before"] = [before]

    def add_catalog_element(self, catalog_id: int, name: str, price: Any = None) -> dict[str, Any]:
        """An element of a list, as GET /api/v4/catalogs/{id}/elements shows it (api_catalog_elements_list.json:
        a price is the field "Цена", field_code PRICE, its value a string)."""
        prices = None if price is None else [{"field_id": 271211, "field_name": "Цена", "field_code": "PRICE",
                                              "field_type": "numeric", "values": [{"value": str(price)}]}]
        element = {"id": next(self.ids), "name": name, "created_by": 0, "updated_by": 0, "created_at": int(self.clock()),
                   "updated_at": int(self.clock()), "is_deleted": None, "custom_fields_values": prices,
                   "catalog_id": catalog_id, "account_id": 1231414}
        self.catalog_elements.setdefault(catalog_id, []).append(element)
        return element

    def _list_catalog_elements(self, call: Call, m: re.Match):
        """`query` searches the filled fields (catalogs-api); here: the name contains it, any case.
        filter[id][] (catalogs-api: "filter[id] int|array"): those elements only."""
        query = (call.query.get("query") or [""])[0].casefold()
        ids = {int(i) for i in call.query.get("filter[id][]", [])}
        found = [e for e in self.catalog_elements.get(int(m.group(1)), []) if query in e["name"].casefold()
                 and (not ids or e["id"] in ids)]
        return self._page(call, "elements", found)

    def link_product(self, lead_id: int, element: dict[str, Any], quantity: Any = 1,
                     price_id: int | None = None) -> None:
        """A list element linked to a lead, as GET /api/v4/leads/{id}/links lists it (entity-links-api,
        tests/payloads/amocrm/api_lead_links_list.json): metadata {quantity, catalog_id[, price_id]}."""
        meta = {"quantity": quantity, "catalog_id": element["catalog_id"], **({"price_id": price_id} if price_id else {})}
        self.product_links.setdefault(int(lead_id), []).append(
            {"to_entity_id": element["id"], "to_entity_type": "catalog_elements", "metadata": meta})

    def _list_lead_links(self, call: Call, m: re.Match):
        """filter[to_entity_type] (entity-links-api "Список связанных сущностей"); the lead's contacts
        and companies are listed too when it is not given."""
        lead = self.leads.get(int(m.group(1)))
        if lead is None and int(m.group(1)) not in self.product_links:
            return 204, b"", {}
        embedded = (lead or {}).get("_embedded") or {}
        links = [*({"to_entity_id": c["id"], "to_entity_type": "contacts",
                    "metadata": {"main_contact": bool(c.get("is_main"))}} for c in embedded.get("contacts") or []),
                 *({"to_entity_id": c["id"], "to_entity_type": "companies", "metadata": None}
                   for c in embedded.get("companies") or []),
                 *self.product_links.get(int(m.group(1)), [])]
        kind = (call.query.get("filter[to_entity_type]") or [None])[0]
        return self._page(call, "links", [link for link in links if kind in (None, link["to_entity_type"])])

    # --- added for find_or_create: contacts searched by `query` and created (contacts-api) -----------

    def _contact_search_routes(self) -> None:
        self.route("GET", r"/api/v4/contacts", self._search_contacts)
        self.route("POST", r"/api/v4/contacts", self._add_contacts)

    def _search_contacts(self, call: Call, m: re.Match):
        """`query` "searches the filled fields"; here: the name or a field value contains it (any
        case), or, for 5+ digits, a value's digits do. amoCRM's own matching is not documented."""
        query = (call.query.get("query") or [""])[0].strip().casefold()
        digits = re.sub(r"\D", "", query)

        def hit(contact: dict[str, Any]) -> bool:
            texts = [str(contact.get("name") or "")] + [str(v.get("value")) for cf in contact.get("custom_fields_values") or []
                                                        for v in cf.get("values") or []]
            return any(query in t.casefold() or (len(digits) >= 5 and digits in re.sub(r"\D", "", t)) for t in texts)
        ids = {int(i) for i in call.query.get("filter[id][]") or []}
        if ids:                       # filters-api: filter[id][]=1&filter[id][]=2
            return self._page(call, "contacts", [c for c in sorted(self.contacts.values(), key=lambda c: c["id"])
                                                 if c["id"] in ids])
        made = int((call.query.get("filter[created_at][from]") or ["-1"])[0])
        if made >= 0 and not query:   # filter[created_at][from], newest first: find_contact's read-back
            found = [c for c in self.contacts.values() if c.get("created_at", 0) >= made]
            return self._page(call, "contacts", sorted(found, key=lambda c: (-c.get("created_at", 0), -c["id"])))
        found = [c for c in sorted(self.contacts.values(), key=lambda c: c["id"]) if query and hit(c)]
        return self._page(call, "contacts", found)

    def _add_contacts(self, call: Call, m: re.Match):
        """POST /api/v4/contacts: an array; kept as GET shows it (field names and codes, created_at)."""
        made = []
        names = {f["id"]: f["name"] for f in self.entity_fields["contacts"]}
        for i, contact in enumerate(call.body):
            new_id = next(self.ids)
            values = [{**cf, "field_name": names.get(cf.get("field_id"), cf.get("field_code")),
                       "field_code": cf.get("field_code")} for cf in contact.get("custom_fields_values", [])]
            self.contacts[new_id] = {"id": new_id, "name": contact.get("name"), "created_at": int(self.clock()),
                                     "updated_at": int(self.clock()), "custom_fields_values": values or None,
                                     "_embedded": {"tags": [], "companies": []}}
            made.append({"id": new_id, "request_id": str(i)})
        return 200, {"_embedded": {"contacts": made}}, {"Content-Type": "application/hal+json"}

    EVENTS_LIMIT = 100   # events-and-notes, the event list: "limit … Максимум – 100"

    def _list_events(self, call: Call, m: re.Match):
        """GET /api/v4/events: filter[entity], filter[entity_id][], filter[type][], filter[created_at]
        (a timestamp, or [from]/[to]); newest first, `limit` at most 100 (events-and-notes; the fake
        refuses more with 400, amoCRM's answer to a bad parameter)."""
        q = call.query
        if int((q.get("limit") or ["50"])[0]) > self.EVENTS_LIMIT:
            return 400, {"title": "Bad Request", "status": 400, "detail": "limit is over 100"}, \
                {"Content-Type": "application/problem+json"}
        ids = set(q.get("filter[entity_id][]", []) + q.get("filter[entity_id]", []))
        types = set(q.get("filter[type][]", []) + q.get("filter[type]", []))
        entity = (q.get("filter[entity]") or [None])[0]
        lo = int((q.get("filter[created_at][from]") or q.get("filter[created_at]") or ["0"])[0])
        hi = int((q.get("filter[created_at][to]") or q.get("filter[created_at]") or [str(2 ** 62)])[0])
        found = [e for e in self.events if (not ids or str(e["entity_id"]) in ids) and (not types or e["type"] in types)
                 and entity in (None, e["entity_type"]) and lo <= e["created_at"] <= hi]
        # newest first; events of one second newest first too (a later event has a later id here)
        return self._page(call, "events", sorted(found, key=lambda e: (-e["created_at"], _neg(e["id"]))))


# --- Telegram Bot API ----------------------------------------------------------------------------

class FakeTelegram(FakeServer):
    """Bot API methods under /bot<token>/<method>, answering {"ok": true, "result": …}."""

    def __init__(self, token: str = "123456:TEST") -> None:
        super().__init__()
        self.token = token
        self.message_ids = itertools.count(100)
        self.route("POST", rf"/bot{re.escape(token)}/(\w+)", self._method)
        self._more_methods()

    def method_calls(self, name: str) -> list[Call]:
        return self.received("POST", rf"/bot{re.escape(self.token)}/{name}")

    def enforce_limits(self, per_bot: int = 30, per_chat: int = 1, per_group_minute: int = 20) -> "FakeTelegram":
        """The Bot FAQ's limits ("My bot is hitting limits", API-REFERENCE.md §4): not more than 30
        messages a second per bot, one a second per chat, 20 a minute per group, counted over messages
        sent (send*, copy*, forward*); over them Telegram answers 429 with parameters.retry_after."""
        def chat(call: Call) -> str | None:
            method = call.path.rsplit("/", 1)[-1]
            body = call.body if isinstance(call.body, dict) else {}
            if not method.startswith(("send", "copy", "forward")) or "chat_id" not in body:
                return None
            return str(body["chat_id"])

        def group(call: Call) -> str | None:
            found = chat(call)
            return found if found is not None and found.startswith("-") else None

        return self.limited([VendorLimit("bot", per_bot, 1.0, lambda call: "bot" if chat(call) is not None else None),
                             VendorLimit("chat", per_chat, 1.0, chat),
                             VendorLimit("group", per_group_minute, 60.0, group)])

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        wait = 60 if violation.limit == "group" else 1
        return 429, {"ok": False, "error_code": 429, "description": f"Too Many Requests: retry after {wait}",
                     "parameters": {"retry_after": wait}}, {}

    def _method(self, call: Call, m: re.Match):
        name, params = m.group(1), call.body or {}
        if name in self.methods:
            return self.methods[name](call, params)
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

    # --- added for the Telegram connector's tests: uploads, files, webhook ------------------------

    def _more_methods(self) -> None:
        self.raw = threading.local()           # each request's raw body, to read multipart file names
        self.uploads: list[dict[str, Any]] = []
        self.multipart_fields: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.webhook: dict[str, Any] | None = None
        self.methods: dict[str, Callable] = {"sendPhoto": self._send_photo, "sendDocument": self._send_document,
                                             "getFile": self._get_file, "setWebhook": self._set_webhook}
        # PTB percent-encodes the file URL's path, so the token's ":" arrives as %3A
        token = re.escape(self.token).replace(":", "(?::|%3A)")
        self.route("GET", rf"/file/bot{token}/(.+)", self._download)
        self.chats: dict[str, dict[str, Any]] = {}   # getChat (validate --online): chats the bot is in
        self.methods["getChat"] = self._get_chat

    def add_file(self, file_id: str, path: str, content: bytes, size: int | None = None) -> None:
        """A file getFile knows; `size` above 20 MB makes getFile refuse it as Telegram does."""
        self.files[file_id] = {"path": path, "content": content, "size": len(content) if size is None else size}

    def _handler(self):
        base = super()._handler()
        fake = self

        class Handler(base):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.raw.body, fake.raw.content_type = body, self.headers.get("Content-Type", "")
                self.rfile = io.BytesIO(body)
                base._serve(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        return Handler

    def _multipart(self, method: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """This thread's multipart request as (text fields decoded as UTF-8, {field: {"filename", "content"}})."""
        content_type = getattr(self.raw, "content_type", "")
        if "multipart/form-data" not in content_type:
            return {}, {}
        message = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + self.raw.body)
        fields, files = {}, {}
        for part in message.iter_parts():
            name, payload = part.get_param("name", header="content-disposition"), part.get_payload(decode=True)
            if part.get_filename() is not None:
                files[name] = {"filename": part.get_filename(), "content": payload}
                self.uploads.append({"method": method, "field": name, **files[name]})
            else:
                fields[name] = _maybe_json(payload.decode("utf-8"))
        self.multipart_fields.append({"method": method, **fields})
        return fields, files

    def _message(self, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        chat_id = int(params.get("chat_id", 0))
        return {"message_id": next(self.message_ids), "date": int(time.time()),
                "chat": {"id": chat_id, "type": "group" if chat_id < 0 else "private", "title": "Team"},
                **({"caption": params["caption"]} if params.get("caption") else {}), **extra}

    def _send_photo(self, call: Call, params: dict[str, Any]):
        fields, files = self._multipart("sendPhoto")
        params, upload = {**params, **fields}, files.get("photo")
        size = len(upload["content"]) if upload else 0
        photo = [{"file_id": f"photo-{next(self.message_ids)}", "file_unique_id": "AQADphoto", "file_size": size,
                  "width": 90, "height": 60}]
        return 200, {"ok": True, "result": self._message(params, photo=photo)}, {}

    def _send_document(self, call: Call, params: dict[str, Any]):
        fields, files = self._multipart("sendDocument")
        params, upload = {**params, **fields}, files.get("document") or {"filename": None, "content": b""}
        document = {"file_id": f"doc-{next(self.message_ids)}", "file_unique_id": "AgADdoc",
                    "file_name": upload["filename"], "file_size": len(upload["content"])}
        return 200, {"ok": True, "result": self._message(params, document=document)}, {}

    def _get_file(self, call: Call, params: dict[str, Any]):
        found = self.files.get(str(params.get("file_id")))
        if found is None:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"}, {}
        if found["size"] > 20_000_000:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: file is too big"}, {}
        return 200, {"ok": True, "result": {"file_id": params["file_id"], "file_unique_id": f"u-{params['file_id']}",
                                            "file_size": found["size"], "file_path": found["path"]}}, {}

    def _set_webhook(self, call: Call, params: dict[str, Any]):
        self.webhook = dict(params)
        return 200, {"ok": True, "result": True, "description": "Webhook was set"}, {}

    def _download(self, call: Call, m: re.Match):
        for found in self.files.values():
            if found["path"] == unquote(m.group(1)):
                return 200, found["content"], {"Content-Type": "application/octet-stream"}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found"}, {}

    # --- getChat, for validate --online -----------------------------------------------------------

    def add_chat(self, chat_id: int, title: str, kind: str = "supergroup") -> None:
        """A chat the bot is a member of: getChat answers its ChatFullInfo."""
        self.chats[str(chat_id)] = {"id": int(chat_id), "type": kind, "title": title}

    def _get_chat(self, call: Call, params: dict[str, Any]):
        """getChat {chat_id} → ChatFullInfo (core.telegram.org/bots/api#getchat; Bot API 7.3 made
        accent_color_id and max_reaction_count, 9.0 accepted_gift_types — with gifts_from_channels since
        9.3 —, always present); a chat the
        bot is not in: 400 "Bad Request: chat not found" (API-REFERENCE.md §4 errors)."""
        chat = self.chats.get(str(params.get("chat_id")))
        if chat is None:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, {}
        gifts = {"unlimited_gifts": False, "limited_gifts": False, "unique_gifts": False, "premium_subscription": False,
                 "gifts_from_channels": False}
        return 200, {"ok": True, "result": {**chat, "accent_color_id": 0, "max_reaction_count": 11,
                                            "accepted_gift_types": gifts}}, {}
