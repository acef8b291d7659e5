"""TurboSMS (turbosms.ua), Ukraine: HTTP API v2, JSON.

`POST https://api.turbosms.ua/message/send.json` with `Authorization: Bearer <token>` and
`{"recipients": ["380…"], "sms": {"sender": "<approved sender name>", "text": "…"}}`; the answer
(HTTP 200) is `{"response_code", "response_status", "response_result": [{"phone", "response_code",
"message_id", "response_status"}]}` (turbosms.ua/api.html; the answer codes as the TurboSMS client
libraries list them, tests/payloads/sms/README.md):
  800 SUCCESS_MESSAGE_ACCEPTED, 801 SUCCESS_MESSAGE_SENT, 802/803 …_PARTIAL_… (some recipients left out);
  103/105/301 token missing or wrong, 106 user blocked, 200-206 a required field missing (203: no
  balance), 300-306 an invalid field (305 INVALID_PHONE), 400-415 not allowed (404
  NOT_ALLOWED_NUMBER_STOPLIST: the number is on the stop list), 500/501 the answer could not be
  built (the messages exist), 502 the body could not be read, 503/504 sending failed, 999 FATAL_ERROR.

TurboSMS takes no id of ours, so a send that got no clear answer cannot be looked up: it is
uncertain and parked (never sent again blindly). TurboSMS documents no request rate; the client
keeps to 5 requests a second (connections.yaml `rate_limit` can change it).
"""
from __future__ import annotations

from typing import Any

from connectors.base import (
    BaseClient,
    PermanentApiError,
    RecipientUnreachable,
    RetryableApiError,
    UncertainApiError,
)
from connectors.sms import CONTENT_TYPES, OUTBOUND_ONLY, check_text, number, parse, verify

__all__ = ["CONTENT_TYPES", "OUTBOUND_ONLY", "SOURCE", "Client", "parse", "verify"]

SOURCE = "turbosms"
API_URL = "https://api.turbosms.ua"
ACCEPTED = {800, 801, 802, 803}
STOP_LIST = 404
NOT_SENT = {502, 503, 504}         # the body was not read, or sending failed: nothing went out
MAYBE_DONE = {500, 501, 999}       # made, then the answer failed; or an error of unknown extent
AUTH = {103, 105, 106, 301}


class Client(BaseClient):
    """One TurboSMS account; `credentials.token`, `options.sender` (the approved sender name)."""

    rate_per_second = 5.0
    docs_url = "https://turbosms.ua/api.html"
    reports_sends = True
    capabilities = frozenset({"send_sms"})

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.credentials.get('token') or ''}"}

    def send_sms(self, phone: str, text: str, ident: str | None = None) -> dict[str, Any] | None:
        """One SMS; {"provider": "turbosms", "message_id", "phone", "status"}. `ident` is ours: TurboSMS
        keeps none, so it is only returned."""
        options = self.connection.options or {}
        sender = str(options.get("sender") or "")
        if not sender:
            raise PermanentApiError("TurboSMS needs options.sender: the sender name approved in the account")
        to = number(phone, options.get("region") or "UA")
        body = {"recipients": [to], "sms": {"sender": sender, "text": check_text(text, int(options.get("max_parts") or 6))}}
        base = (self.connection.base_url or API_URL).rstrip("/")
        resp = self.request("POST", "/message/send.json", json_body=body, url=f"{base}/message/send.json")
        if resp is None:
            return None
        try:
            answer = resp.json()
        except ValueError:
            raise UncertainApiError("TurboSMS send: the answer is not JSON (the SMS may have been sent)",
                                    status=resp.status_code) from None
        return read_answer(answer, to, ident)


def read_answer(answer: Any, to: str, ident: str | None) -> dict[str, Any]:
    """The send's answer: the recipient's message id, or the error it names."""
    if not isinstance(answer, dict):
        raise UncertainApiError("TurboSMS send: the answer is not an object (the SMS may have been sent)")
    code, status = answer.get("response_code"), str(answer.get("response_status") or "")
    what = f"TurboSMS send: {code} {status}"
    if code in ACCEPTED:
        result = answer.get("response_result") or []
        mine = next((r for r in result if isinstance(r, dict) and str(r.get("phone") or "").lstrip("+") == to), None)
        if mine is None or mine.get("response_code") not in (0, None) or not mine.get("message_id"):
            inner = (mine or {}).get("response_code")
            detail = f"{what}: recipient {to}: {inner} {(mine or {}).get('response_status') or 'left out'}"
            if inner == STOP_LIST:
                raise RecipientUnreachable(detail, status=400)
            raise PermanentApiError(detail, status=400)
        return {"provider": "turbosms", "message_id": str(mine["message_id"]), "phone": "+" + to,
                "status": status, "ident": ident}
    if code == STOP_LIST:
        raise RecipientUnreachable(what, status=400)
    if code in NOT_SENT:
        raise RetryableApiError(what, status=503)
    if code in MAYBE_DONE:
        raise UncertainApiError(f"{what} (the SMS may have been sent)", status=500)
    raise PermanentApiError(what + (" (check credentials.token)" if code in AUTH else ""), status=400)
