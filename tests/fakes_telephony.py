"""Local fakes for the outbound channels: Zadarma's API, an ad-platform hook, an SMTP server.

FakeZadarma checks each request's `Authorization: <key>:<signature>` the way Zadarma's API
does (the SDKs' algorithm, connectors/zadarma.py) and answers in its format; `notification()`
builds the signed PBX call-end form Zadarma would post to us. FakeSmtp is aiosmtpd, a real
SMTP server on 127.0.0.1, with AUTH LOGIN/PLAIN and a switch to refuse with a 4xx.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
import warnings
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any
from urllib.parse import urlencode

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.fakes import Call, FakeServer

ZD_KEY, ZD_SECRET = "zd-key-1f2e", "zd-secret-9a8b"


def zd_sign(data: str, secret: str = ZD_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), data.encode(), hashlib.sha1).hexdigest().encode()).decode()


class FakeZadarma(FakeServer):
    """GET /v1/request/callback/: checks the signature, records (from, to), answers success or error."""

    def __init__(self, key: str = ZD_KEY, secret: str = ZD_SECRET) -> None:
        super().__init__()
        self.key, self.secret = key, secret
        self.route("GET", r"/v1/request/callback/", self._callback)

    def callbacks(self) -> list[tuple[str, str]]:
        return [(c.query["from"][0], c.query["to"][0]) for c in self.received("GET", r"/v1/request/callback/")]

    def _callback(self, call: Call, m: Any):
        params = {k: v[0] for k, v in call.query.items()}
        query = urlencode(sorted(params.items()))
        expected = f"{self.key}:{zd_sign(call.path + query + hashlib.md5(query.encode()).hexdigest(), self.secret)}"
        if call.headers.get("Authorization") != expected:
            return 401, {"status": "error", "message": "Not authorized"}, {}
        if params.get("format") != "json" or not params.get("from") or not params.get("to"):
            return 400, {"status": "error", "message": "Wrong parameters"}, {}
        return 200, {"status": "success", "from": params["from"], "to": params["to"], "time": int(time.time())}, {}

    def notification(self, internal: str, destination: str, disposition: str, duration: int = 0,
                     call_start: str = "2026-12-07 10:05:11", pbx_call_id: str = "out_3f1c9d2e") -> tuple[bytes, dict]:
        """A NOTIFY_OUT_END form and its Signature header, as Zadarma posts them."""
        form = {"event": "NOTIFY_OUT_END", "call_start": call_start, "pbx_call_id": pbx_call_id,
                "caller_id": "74951234567", "destination": destination, "internal": internal,
                "duration": str(duration), "disposition": disposition,
                "status_code": "16" if disposition == "answered" else "17", "is_recorded": "0",
                "call_id_with_rec": ""}
        signature = zd_sign(internal + destination + call_start, self.secret)
        return urlencode(form).encode(), {"Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}


class FakeHook(FakeServer):
    """An ad platform's audience endpoint: accepts JSON POSTs under /audiences/, checks the secret header."""

    def __init__(self, secret: str | None = "hook-secret", header: str = "X-Webhook-Secret") -> None:
        super().__init__()
        self.secret, self.header = secret, header
        self.route("POST", r"/audiences(/.*)?", self._post)

    def _post(self, call: Call, m: Any):
        if self.secret is not None and call.headers.get(self.header) != self.secret:
            return 403, {"error": "forbidden"}, {}
        return 200, {"ok": True, "added": 1}, {}


class _Handler:
    def __init__(self, smtp: FakeSmtp) -> None:
        self.smtp = smtp

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.smtp.lock:
            if self.smtp.accept_first > 0:
                self.smtp.accept_first -= 1
            elif self.smtp.refusals > 0:
                self.smtp.refusals -= 1
                self.smtp.refused += 1
                return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.smtp.lock:
            self.smtp.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                       "login": session.auth_data.login.decode() if session.auth_data else None,
                                       "message": message_from_bytes(envelope.original_content, policy=default_policy),
                                       "raw": envelope.original_content})
        return "250 Message accepted for delivery"


def _free_port() -> int:
    """aiosmtpd's Controller checks its own port after start, so it needs a real one, not 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeSmtp:
    """aiosmtpd on 127.0.0.1: AUTH over plain text (no TLS on loopback), records what it accepts."""

    def __init__(self, user: str = "mailer@agency.example", password: str = "smtp-pass") -> None:
        self.user, self.password = user, password
        self.messages: list[dict[str, Any]] = []
        self.refusals = 0
        self.accept_first = 0
        self.refused = 0
        self.lock = threading.Lock()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=_free_port(), authenticator=self._auth,
                                     auth_required=True, auth_require_tls=False)

    def _auth(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user \
            and auth_data.password.decode() == self.password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def start(self) -> FakeSmtp:
        with warnings.catch_warnings():  # AUTH without TLS is what we want on loopback
            warnings.simplefilter("ignore", UserWarning)
            self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    def refuse_next(self, times: int = 1, after: int = 0) -> None:
        """After `after` more accepted recipients, the next `times` get 451 (greylisting), as a busy server answers."""
        with self.lock:
            self.refusals, self.accept_first = times, after

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"{count} message(s) not received in {timeout}s; got {len(self.messages)}")

    @staticmethod
    def text_of(message: EmailMessage) -> str:
        return message.get_body(preferencelist=("plain",)).get_content()
