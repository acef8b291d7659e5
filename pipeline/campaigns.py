"""One recipient of a bulk send (pipeline/steps/send_bulk.py starts the campaign and queues a job
per recipient; worker.send_campaign_message runs this): checked against its final state and the
opt-outs, then sent as a planned action of pipeline/execute.py, and its final state kept."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from connectors.base import Entity, Event, PermanentApiError, RecipientUnreachable, RetryableApiError, utc_iso
from pipeline import clock
from pipeline.audit import audit
from pipeline.execute import StepMaybeDone, execute
from pipeline.retry import with_retries
from pipeline.steps.send_sms import sms_ident
from pipeline.steps.send_bulk import (
    CAMPAIGN_TTL, JOB, PLACEHOLDER, YES, campaign_key, method_of, opt_out, optout_key, quiet_until,
)
from rules.engine import PlannedAction


def deliver(rt: Any, payload: dict[str, Any]) -> str:
    """Send the campaign's message to one recipient, at most once; answers the recipient's state
    (or "deferred" when the recipient is in quiet hours: the job is scheduled again for their end)."""
    campaign, recipient = str(payload["campaign"]), str(payload["address"])
    state_key = campaign_key(rt, campaign, "state")
    done = rt.store.hget(state_key, recipient)
    if done is not None:
        return done.decode()
    raw = rt.store.get(campaign_key(rt, campaign))
    row_raw = rt.store.hget(campaign_key(rt, campaign, "recipients"), recipient)
    if raw is None or row_raw is None:
        return "unknown"
    kept, row = json.loads(raw), json.loads(row_raw)
    via, address = row.get("_via") or kept["connection"], row.get("_to") or recipient
    event = Event(id=f"campaign:{campaign}", connection=via, source="bulk", kind="schedule.tick",
                  entity=Entity("campaign", campaign),
                  data={"campaign": campaign}, raw=None, occurred_at=utc_iso())
    column = kept.get("opt_out_column")
    every = row.get("_all") or [[via, address]]
    if any(rt.store.sismember(optout_key(rt, conn), addr) for conn, addr in every) or (
            column and str(row.get(column) or "").strip().lower() in YES):
        return _final(rt, event, state_key, recipient, "opted_out")
    until = quiet_until(kept.get("quiet"), row, clock.now())
    if until is not None:
        return _defer(rt, event, campaign, recipient, payload, until)
    text = PLACEHOLDER.sub(lambda m: str(row.get(m.group(1).lower(), m.group(0))), kept["text"])
    method = kept["method"] if not row.get("_via") else method_of(rt, via)
    if method == "send_sms":
        args: dict[str, Any] = {"phone": address, "text": text}
    elif method == "send_email":
        args = {"to": address, "subject": kept.get("subject") or text.splitlines()[0][:78], "text": text}
    else:
        args = {"chat": address, "text": text}
    action = PlannedAction(rule=f"campaign {campaign}", rule_id="send_bulk", step=0, connection=via,
                           method=method, args=args, key=f"campaign:{campaign}|{recipient}")
    try:
        execute(rt, event, action)
    except RecipientUnreachable as exc:
        opt_out(rt, via, address)
        return _final(rt, event, state_key, recipient, "opted_out", reason=str(exc)[:200])
    except StepMaybeDone as exc:
        return _final(rt, event, state_key, recipient, f"uncertain: {str(exc)[:200]}")
    except RetryableApiError:
        raise   # nothing was done: RQ tries the job again
    except PermanentApiError as exc:
        return _final(rt, event, state_key, recipient, f"failed: {str(exc)[:200]}")
    return _final(rt, event, state_key, recipient, "sent")


def _defer(rt: Any, event: Event, campaign: str, recipient: str, payload: dict[str, Any], until: datetime) -> str:
    """Keep the recipient's deferral (the status counts it) and run its job again at `until`."""
    key = campaign_key(rt, campaign, "deferred")
    with rt.store.pipeline() as pipe:
        pipe.hset(key, recipient, until.isoformat())
        pipe.expire(key, CAMPAIGN_TTL)
        pipe.execute()
    rt.backend.call_at(until, JOB, payload, f"campaign-quiet:{campaign}|{recipient}|{until.isoformat()}")
    audit(rt, event, "campaign.deferred", address=recipient, until=until.isoformat())
    return "deferred"


def _final(rt: Any, event: Event, state_key: str, address: str, state: str, **details: Any) -> str:
    with rt.store.pipeline() as pipe:
        pipe.hsetnx(state_key, address, state)
        pipe.expire(state_key, CAMPAIGN_TTL)
        pipe.execute()
    audit(rt, event, "campaign.recipient", address=address, state=state, **details)
    return state


def delivery(rt: Any, campaign: str) -> dict[str, int] | None:
    """The delivery reports of a campaign's sent SMS, read from the provider by our ids (SMSC's
    status.php; one call per recipient, under the connection's limit), kept per recipient in
    `campaign:<id>:delivery` (recipient → status) and answered as {status: count}. None when the
    campaign is unknown or none of its channels' providers can be asked (TurboSMS, a messenger)."""
    raw = rt.store.get(campaign_key(rt, campaign))
    if raw is None:
        return None
    kept = json.loads(raw)
    channels = kept.get("channels") or [kept["connection"]]
    readable = {c for c in channels if method_of(rt, c) == "send_sms" and rt.client(c).can("sms_status")}
    if not readable:
        return None
    counts: dict[str, int] = {}
    found_key = campaign_key(rt, campaign, "delivery")
    for recipient_b, state in rt.store.hgetall(campaign_key(rt, campaign, "state")).items():
        recipient = recipient_b.decode()
        via, _, phone = recipient.rpartition("|")
        via = via or kept["connection"]
        if state != b"sent" or via not in readable:
            continue
        client = rt.client(via)
        ident = sms_ident(f"campaign:{campaign}|{recipient}")
        try:
            found = with_retries(rt, lambda: client.sms_status(phone, ident))
        except PermanentApiError as exc:
            found = {"status": f"unreadable: {str(exc)[:80]}"}
        status = (found or {}).get("status") or "not_found"
        rt.store.hset(found_key, recipient, status)
        counts[status] = counts.get(status, 0) + 1
    rt.store.expire(found_key, CAMPAIGN_TTL)
    return counts
