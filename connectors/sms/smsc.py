"""SMSC.ru (smsc.ru, also smsc.kz / smsc.ua hosts), Russia and the CIS: HTTP API, JSON answers.

`POST https://smsc.ru/sys/send.php` with form fields login, psw, phones, mes, sender, id, charset=utf-8,
fmt=3 (JSON answers); the answer is `{"id": <id>, "cnt": <parts>}` or `{"error": "…", "error_code": N}`.
`id` is ours ("назначается Клиентом"; up to 40 characters of Latin letters, digits, . - _), and
`POST /sys/status.php` (login, psw, phone, id, fmt=3) answers `{"status": N, "last_timestamp", "err"}`
for it, so a send that got no clear answer is looked up by that id (pipeline/steps/send_sms.py)
instead of being parked blind. Sources: SMSC's own client library smsc_api.php (send_sms: `id`,
`sender`, `phones`, `mes`; get_status: `phone`, `id`), the error texts its integrations carry
(tests/payloads/sms/README.md):
  send errors 1 parameters, 2 login/password, 3 no funds, 4 IP blocked for frequent errors, 5 date
  format, 6 message forbidden (text or sender), 7 phone format, 8 cannot be delivered to the number,
  9 "more than one identical request to send an SMS … within a minute" (a repeat is refused, so
  nothing is sent twice by it);
  statuses -3 not found, -1 waiting, 0 handed to the operator, 1 delivered, 2 read, 3 expired,
  20 cannot be delivered, 22 wrong number, 23 forbidden, 24 no funds, 25 unavailable number.

SMSC documents no request rate beyond error 9; the client keeps to 5 requests a second.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import requests

from connectors.base import (
    BaseClient,
    PermanentApiError,
    RecipientUnreachable,
    RetryableApiError,
    UncertainApiError,
    transport_error,
)
from connectors.sms import CONTENT_TYPES, OUTBOUND_ONLY, check_text, number, parse, verify

__all__ = ["CONTENT_TYPES", "OUTBOUND_ONLY", "SOURCE", "Client", "parse", "verify"]

log = logging.getLogger("crmbridge.connectors")
SOURCE = "smsc"
API_URL = "https://smsc.ru"
IDENT = re.compile(r"[A-Za-z0-9._-]{1,40}")
SEND_ERRORS = {1: "parameters error", 2: "wrong login or password", 3: "not enough funds",
               4: "IP address blocked for frequent errors", 5: "wrong date format",
               6: "message forbidden (text or sender name)", 7: "wrong phone number format",
               8: "the message cannot be delivered to this number", 9: "identical request within a minute"}
STATUSES = {-3: "not_found", -1: "waiting", 0: "sent", 1: "delivered", 2: "read", 3: "expired",
            4: "clicked", 20: "undeliverable", 22: "wrong_number", 23: "forbidden", 24: "no_funds",
            25: "unavailable"}


class Client(BaseClient):
    """One SMSC account: `credentials.login`, `credentials.password`; `options.sender`, `options.region`."""

    rate_per_second = 5.0
    docs_url = "https://smsc.ru/api/http/"
    reports_sends = True
    capabilities = frozenset({"send_sms", "sms_status"})

    def _post(self, script: str, fields: dict[str, Any]) -> Any:
        creds = self.connection.credentials
        body = {"login": creds.get("login") or "", "psw": creds.get("password") or "", "fmt": 3,
                "charset": "utf-8", **fields}
        base = (self.connection.base_url or API_URL).rstrip("/")
        resp = self._form(f"{base}/sys/{script}", body, idempotent=script == "status.php")
        if resp is None:
            return None
        try:
            return resp.json()
        except ValueError:
            if script == "status.php":
                raise RetryableApiError(f"SMSC {script}: the answer is not JSON") from None
            raise UncertainApiError(f"SMSC {script}: the answer is not JSON (the SMS may have been sent)",
                                    status=resp.status_code) from None

    def _form(self, url: str, body: dict[str, Any], *, idempotent: bool) -> requests.Response | None:
        """One form POST, as BaseClient.request makes a JSON one: record-only logs it (without the
        password), the connection's limit is held until the answer, `sending` is told before it leaves,
        a timeout after it left is uncertain unless the request is a read."""
        if self.record_only:
            shown = {k: v for k, v in body.items() if k not in ("login", "psw")}
            log.info("record-only %s: would call POST %s body=%s", self.connection.name, url, shown)
            if self.recorder:
                self.recorder("POST", url, shown)
            return None
        release = self.limiter(hold=self.hold_seconds) if self.limiter else None
        try:
            if self.sending:
                self.sending()
            try:
                resp = self.session.post(url, data=body, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                error = transport_error(f"POST {url.rsplit('/', 1)[-1]}", exc)
                if idempotent and isinstance(error, UncertainApiError):
                    raise RetryableApiError(str(error)) from None
                raise error from None
        finally:
            if release:
                release()
        self.check(resp, f"POST {url.rsplit('/', 1)[-1]}", idempotent=idempotent)
        return resp

    def send_sms(self, phone: str, text: str, ident: str | None = None) -> dict[str, Any] | None:
        """send.php for one number under our id; {"provider": "smsc", "ident", "phone", "parts"}."""
        options = self.connection.options or {}
        to = number(phone, options.get("region") or "RU")
        if ident is not None and not IDENT.fullmatch(ident):
            raise PermanentApiError(f"SMSC message id {ident[:50]!r}: up to 40 of A-Z, a-z, 0-9, . - _")
        fields: dict[str, Any] = {"phones": to, "mes": check_text(text, int(options.get("max_parts") or 6))}
        if ident:
            fields["id"] = ident
        if options.get("sender"):
            fields["sender"] = str(options["sender"])
        answer = self._post("send.php", fields)
        if answer is None:
            return None
        if not isinstance(answer, dict):
            raise UncertainApiError("SMSC send.php: the answer is not an object (the SMS may have been sent)")
        if "error_code" in answer or "error" in answer:
            code = answer.get("error_code")
            what = f"SMSC send.php: error {code} {SEND_ERRORS.get(code, '')}: {str(answer.get('error') or '')[:200]}"
            if code == 9:
                raise RetryableApiError(what, status=429, retry_after=60.0)
            if code == 8:
                raise RecipientUnreachable(what, status=400)
            raise PermanentApiError(what, status=400)
        return {"provider": "smsc", "ident": str(answer.get("id") or ident or ""), "phone": "+" + to,
                "parts": answer.get("cnt")}

    def sms_status(self, phone: str, ident: str) -> dict[str, Any] | None:
        """status.php by our id: {"status", "code", "at", "error"}; None when SMSC has no such message."""
        options = self.connection.options or {}
        if not IDENT.fullmatch(str(ident or "")):
            raise PermanentApiError(f"SMSC message id {str(ident)[:50]!r}: up to 40 of A-Z, a-z, 0-9, . - _")
        answer = self._post("status.php", {"phone": number(phone, options.get("region") or "RU"), "id": ident})
        if answer is None:
            return None
        if not isinstance(answer, dict):
            raise RetryableApiError("SMSC status.php: the answer is not an object")
        if "error_code" in answer or "error" in answer:
            code = answer.get("error_code")
            if code == 3:   # "сообщение не найдено" in status.php's own list
                return None
            what = f"SMSC status.php: error {code}: {str(answer.get('error') or '')[:200]}"
            if code == 9:
                raise RetryableApiError(what, status=429, retry_after=60.0)
            raise PermanentApiError(what, status=400)
        code = answer.get("status")
        if code == -3:
            return None
        return {"status": STATUSES.get(code, f"code_{code}"), "code": code,
                "at": answer.get("last_timestamp"), "error": answer.get("err")}
