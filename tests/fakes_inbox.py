"""A local fake of umnico's API v1.3 (api.umnico.com/docs/ru/): send, sources, leads, managers.

Shapes: managers as in managers.html's example; a lead with the fields leads.html lists; sources as
public integrations read them ([{id, realId, saId, type}]: aliyaredpilled/chatwoot
history_backfill_service.rb). Like the real API it refuses a send without `source` and `userId`
(422, aliyaredpilled/chatwoot UMNICO-PROGRESS.md) and a request without the bearer token (401).
umnico's error body is undocumented; the fake answers {"message": …}, which public code reads.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

from tests.conftest import PAYLOADS
from tests.fakes import Call, FakeServer

TOKEN = "umnico-test-token"


def sample(name: str) -> Any:
    return json.loads((PAYLOADS / "inbox" / name).read_text(encoding="utf-8"))


class FakeInbox(FakeServer):
    """umnico: leads by id, their reply channels, the account's managers, and what was sent."""

    def __init__(self, token: str = TOKEN) -> None:
        super().__init__()
        self.token = token
        self.leads: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, list[dict[str, Any]]] = {}
        self.managers: list[dict[str, Any]] = sample("api_managers.json")
        self.route("POST", r"/v1\.3/messaging/(\d+)/send", self._send)
        self.route("GET", r"/v1\.3/messaging/(\d+)/sources", self._sources)
        self.route("GET", r"/v1\.3/leads/(\d+)", self._lead)
        self.route("GET", r"/v1\.3/managers", lambda c, m: (200, self.managers, {}))
        self.media: dict[str, bytes] = {}   # attachments as a CDN serves them: GET /media/<name>, no token
        self.route("GET", r"/media/(.+)", self._media)

    def add_lead(self, lead: dict[str, Any], sources: list[dict[str, Any]]) -> None:
        self.leads[str(lead["id"])] = copy.deepcopy(lead)
        self.sources[str(lead["id"])] = copy.deepcopy(sources)

    def sent(self, lead: str | int) -> list[Call]:
        return self.received("POST", rf"/v1\.3/messaging/{lead}/send")

    def _answer(self, call: Call):
        if call.path.startswith("/media/"):   # a file host, not the API: it asks for no token
            return super()._answer(call)
        if call.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}, {}
        return super()._answer(call)

    def _media(self, call: Call, m: re.Match):
        found = self.media.get(m.group(1))
        if found is None:
            return 404, {"message": "Not found"}, {}
        return 200, found, {"Content-Type": "image/jpeg"}

    def _send(self, call: Call, m: re.Match):
        body = call.body or {}
        if m.group(1) not in self.leads:
            return 404, {"message": f"Lead {m.group(1)} not found"}, {}
        if not str(body.get("source", "")).replace("_", "").isdigit():
            return 422, sample("api_error_422_source.json"), {}
        if not isinstance(body.get("userId"), int):
            return 422, {"message": "\"userId\" is required"}, {}
        return 200, {}, {}

    def _sources(self, call: Call, m: re.Match):
        return 200, self.sources.get(m.group(1), []), {}

    def _lead(self, call: Call, m: re.Match):
        lead = self.leads.get(m.group(1))
        if lead is None:
            return 404, {"message": f"Lead {m.group(1)} not found"}, {}
        return 200, lead, {}
