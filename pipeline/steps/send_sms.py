"""One SMS under an id of our own, looked up at the provider when its send got no clear answer.

The id is derived from the step's idempotency key, so every try of one step sends under the same id.
A send that got no clear answer (a 5xx, a timeout after it left) is looked up by that id where the
provider allows it (`sms_status`, SMSC): found, the step is done with what the provider reports;
not found, or not lookable (TurboSMS), it stays uncertain and is parked for a person
(pipeline/execute.py): an SMS is never sent twice blindly. `encoding`, `length` and `parts` are
the plan's (rules/send_sms.py, shown in dry runs) and are not sent.
"""
from __future__ import annotations

import hashlib
from typing import Any

from connectors.base import PermanentApiError, RetryableApiError, UncertainApiError
from pipeline.steps.base import require

METHOD = "send_sms"
REQUIRES = frozenset({"send_sms"})
ONE_CLIENT = True   # every request of the step is the action's client's: its `sending` marks are the step's


def sms_ident(key: str) -> str:
    """Our id of the SMS a step sends: 32 hex characters (SMSC takes up to 40 of [A-Za-z0-9._-])."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def run(ctx: Any, phone: str, text: str, encoding: str | None = None, length: int | None = None,
        parts: int | None = None, ident: str | None = None) -> Any:
    require(ctx, METHOD, REQUIRES)
    ident = ident or sms_ident(ctx.key)
    try:
        return ctx.client.send_sms(phone=phone, text=text, ident=ident)
    except UncertainApiError as exc:
        if not ctx.client.can("sms_status"):
            raise
        try:
            found = ctx.client.sms_status(phone, ident)
        except (RetryableApiError, PermanentApiError):
            raise exc from None
        if found is None:   # not (yet) known to the provider: it may still be taking it in
            raise
        return {"ident": ident, "phone": phone, "reconciled": True, **found}
