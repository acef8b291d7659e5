"""SMS providers, one module each, behind the same client verbs (`send_sms`, and `sms_status` where
the provider can look a message up by an id we gave it): TurboSMS (Ukraine, connectors/sms/turbosms.py)
and SMSC.ru (Russia and the CIS, connectors/sms/smsc.py). What they share is here: the number as the
provider wants it (E.164 digits, normalised with phonenumbers by sms_text.e164) and the text's
encoding and parts (sms_text.segments), and the webhook, which neither provider's reports reach yet.

Neither provider's delivery reports are read from a webhook: SMSC's are looked up (`sms_status`);
TurboSMS's status lookup takes its own message ids only, which the bridge keeps in the step's result.
The connections are outbound only: a webhook to one is refused (401 without a secret, else 400).
"""
from __future__ import annotations

from typing import Any

from connectors.base import BadPayload, Connection, Event, PermanentApiError, RawWebhook, check_secret
from sms_text import BadNumber, e164, segments

CONTENT_TYPES = ("application/x-www-form-urlencoded", "application/json")
OUTBOUND_ONLY = True   # no webhook is read (config/connections.py then needs no webhook_secret)


def verify(raw: RawWebhook, connection: Connection) -> None:
    """A report posted to the bridge carries the connection's secret as ?token=… (the providers sign nothing)."""
    check_secret(raw.query.get("token"), connection, "missing or wrong ?token= for this SMS connection")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    raise BadPayload(f"the {connection.type} connection reads no webhooks (delivery is looked up: sms_status)")


def number(phone: Any, region: str | None) -> str:
    """E.164 digits without the plus (380671234567), as both providers take them."""
    try:
        return e164(phone, region).lstrip("+")
    except BadNumber as exc:
        raise PermanentApiError(str(exc), status=400) from None


def check_text(text: Any, max_parts: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PermanentApiError("an SMS needs a text", status=400)
    found = segments(text)
    if found.parts > max_parts:
        raise PermanentApiError(f"the SMS would take {found.parts} parts ({found.describe()}); this connection "
                                f"allows {max_parts} (options.max_parts)", status=400)
    return text
