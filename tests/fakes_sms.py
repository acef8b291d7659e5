"""Fake SMS providers on 127.0.0.1 speaking connectors/sms's wire formats: TurboSMS (JSON, Bearer
token, answer codes 800/802 with per-recipient codes, 404 for the stop list, 105 for a wrong token)
and SMSC.ru (form POSTs to /sys/send.php and /sys/status.php, fmt=3 JSON answers, our own `id`)."""
from __future__ import annotations

import itertools
import re
import time
import uuid
from typing import Any

from tests.fakes import Call, FakeServer, VendorLimit, Violation


class FakeTurboSMS(FakeServer):
    def __init__(self, token: str = "turbo-token") -> None:
        super().__init__()
        self.token = token
        self.stop_list: set[str] = set()
        self.messages: dict[str, dict[str, Any]] = {}
        self.route("POST", r"/message/send\.json", self._send)

    def enforce_limits(self, per_second: int = 5) -> "FakeTurboSMS":
        return self.limited([VendorLimit("account", per_second, 1.0, lambda call: "account")])

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        return 429, {"response_code": 429, "response_status": "TOO_MANY_REQUESTS"}, {}

    def sent_to(self) -> list[str]:
        return [m["phone"] for m in self.messages.values()]

    def _send(self, call: Call, m: re.Match):
        if call.headers.get("Authorization") != f"Bearer {self.token}":
            return 200, {"response_code": 105, "response_status": "REQUIRED_AUTH", "response_result": None}, {}
        body = call.body if isinstance(call.body, dict) else {}
        sms = body.get("sms") or {}
        if not sms.get("sender"):
            return 200, {"response_code": 200, "response_status": "REQUIRED_MESSAGE_SENDER", "response_result": None}, {}
        if not sms.get("text"):
            return 200, {"response_code": 201, "response_status": "REQUIRED_MESSAGE_TEXT", "response_result": None}, {}
        result, left_out = [], False
        for phone in body.get("recipients") or []:
            if phone in self.stop_list:
                left_out = True
                result.append({"phone": phone, "response_code": 404, "message_id": None,
                               "response_status": "NOT_ALLOWED_NUMBER_STOPLIST"})
                continue
            ident = str(uuid.uuid4())
            self.messages[ident] = {"phone": phone, "text": sms["text"], "sender": sms["sender"]}
            result.append({"phone": phone, "response_code": 0, "message_id": ident, "response_status": "OK"})
        code, status = (802, "SUCCESS_MESSAGE_PARTIAL_ACCEPTED") if left_out else (800, "SUCCESS_MESSAGE_ACCEPTED")
        return 200, {"response_code": code, "response_status": status, "response_result": result}, {}


class FakeSMSC(FakeServer):
    def __init__(self, login: str = "agency", password: str = "smsc-pass") -> None:
        super().__init__()
        self.login, self.password = login, password
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}   # (our id, phone) → the SMS
        self.auto_ids = itertools.count(1000)
        self.route("POST", r"/sys/send\.php", self._send)
        self.route("POST", r"/sys/status\.php", self._status)

    def enforce_limits(self, per_second: int = 5) -> "FakeSMSC":
        return self.limited([VendorLimit("account", per_second, 1.0, lambda call: "account")])

    def over_limit(self, violation: Violation) -> tuple[int, Any, dict[str, str]]:
        return 200, {"error": "too many requests", "error_code": 9}, {}

    def _auth(self, form: dict[str, Any]) -> dict[str, Any] | None:
        if form.get("login") != self.login or form.get("psw") != self.password:
            return {"error": "authorise error", "error_code": 2}
        if str(form.get("fmt")) != "3":
            return {"error": "the fake answers fmt=3 only", "error_code": 1}
        return None

    def _send(self, call: Call, m: re.Match):
        form = call.body if isinstance(call.body, dict) else {}
        refused = self._auth(form)
        if refused:
            return 200, refused, {}
        phone, text = str(form.get("phones") or ""), str(form.get("mes") or "")
        if not re.fullmatch(r"\d{10,15}", phone):
            return 200, {"error": "invalid number", "error_code": 7}, {}
        if not text:
            return 200, {"error": "parameters error", "error_code": 1}, {}
        ident = str(form.get("id") or next(self.auto_ids))
        parts = 1 if len(text) <= 70 else -(-len(text) // 67)
        self.messages[(ident, phone)] = {"text": text, "sender": form.get("sender"), "at": int(time.time())}
        return 200, {"id": ident, "cnt": parts}, {}

    def _status(self, call: Call, m: re.Match):
        form = call.body if isinstance(call.body, dict) else {}
        refused = self._auth(form)
        if refused:
            return 200, refused, {}
        found = self.messages.get((str(form.get("id") or ""), str(form.get("phone") or "")))
        if found is None:
            return 200, {"error": "message not found", "error_code": 3}, {}
        return 200, {"status": 1, "last_date": time.strftime("%d.%m.%Y %H:%M:%S"),
                     "last_timestamp": found["at"], "err": 0}, {}
