"""One recipient of a bulk send (pipeline/steps/send_bulk.py starts the campaign and queues a job
per recipient; worker.send_campaign_message runs this): checked against its final state and the
opt-outs, then sent as a planned action of pipeline/execute.py, and its final state kept."""
from __future__ import annotations

import json
from typing import Any

from connectors.base import Entity, Event, PermanentApiError, RecipientUnreachable, RetryableApiError, utc_iso
from pipeline.audit import audit
from pipeline.execute import StepMaybeDone, execute
from pipeline.retry import with_retries
from pipeline.steps.send_sms import sms_ident
from pipeline.steps.send_bulk import CAMPAIGN_TTL, PLACEHOLDER, YES, campaign_key, opt_out, optout_key
from rules.engine import PlannedAction


def deliver(rt: Any, payload: dict[str, Any]) -> str:
    """Send the campaign's message to one recipient, at most once; answers the recipient's state."""
    campaign, address = str(payload["campaign"]), str(payload["address"])
    state_key = campaign_key(rt, campaign, "state")
    done = rt.store.hget(state_key, address)
    if done is not None:
        return done.decode()
    raw = rt.store.get(campaign_key(rt, campaign))
    row_raw = rt.store.hget(campaign_key(rt, campaign, "recipients"), address)
    if raw is None or row_raw is None:
        return "unknown"
    kept, row = json.loads(raw), json.loads(row_raw)
    connection = kept["connection"]
    event = Event(id=f"campaign:{campaign}", connection=connection, source="bulk", kind="schedule.tick",
                  entity=Entity("campaign", campaign),
                  data={"campaign": campaign}, raw=None, occurred_at=utc_iso())
    column = kept.get("opt_out_column")
    if rt.store.sismember(optout_key(rt, connection), address) or (
            column and str(row.get(column) or "").strip().lower() in YES):
        return _final(rt, event, state_key, address, "opted_out")
    text = PLACEHOLDER.sub(lambda m: str(row.get(m.group(1).lower(), m.group(0))), kept["text"])
    args = {"phone": address, "text": text} if kept["method"] == "send_sms" else {"chat": address, "text": text}
    action = PlannedAction(rule=f"campaign {campaign}", rule_id="send_bulk", step=0, connection=connection,
                           method=kept["method"], args=args, key=f"campaign:{campaign}|{address}")
    try:
        execute(rt, event, action)
    except RecipientUnreachable as exc:
        opt_out(rt, connection, address)
        return _final(rt, event, state_key, address, "opted_out", reason=str(exc)[:200])
    except StepMaybeDone as exc:
        return _final(rt, event, state_key, address, f"uncertain: {str(exc)[:200]}")
    except RetryableApiError:
        raise   # nothing was done: RQ tries the job again
    except PermanentApiError as exc:
        return _final(rt, event, state_key, address, f"failed: {str(exc)[:200]}")
    return _final(rt, event, state_key, address, "sent")


def _final(rt: Any, event: Event, state_key: str, address: str, state: str, **details: Any) -> str:
    with rt.store.pipeline() as pipe:
        pipe.hsetnx(state_key, address, state)
        pipe.expire(state_key, CAMPAIGN_TTL)
        pipe.execute()
    audit(rt, event, "campaign.recipient", address=address, state=state, **details)
    return state


def delivery(rt: Any, campaign: str) -> dict[str, int] | None:
    """The delivery reports of a campaign's sent SMS, read from the provider by our ids (SMSC's
    status.php; one call per recipient, under the connection's limit): {status: count}. None when the
    campaign is unknown or its provider cannot be asked (TurboSMS, a messenger)."""
    raw = rt.store.get(campaign_key(rt, campaign))
    if raw is None:
        return None
    kept = json.loads(raw)
    client = rt.client(kept["connection"])
    if kept["method"] != "send_sms" or not client.can("sms_status"):
        return None
    counts: dict[str, int] = {}
    for address, state in rt.store.hgetall(campaign_key(rt, campaign, "state")).items():
        if state != b"sent":
            continue
        phone = address.decode()
        ident = sms_ident(f"campaign:{campaign}|{phone}")
        try:
            found = with_retries(rt, lambda: client.sms_status(phone, ident))
        except PermanentApiError as exc:
            found = {"status": f"unreadable: {str(exc)[:80]}"}
        status = (found or {}).get("status") or "not_found"
        counts[status] = counts.get(status, 0) + 1
    return counts
