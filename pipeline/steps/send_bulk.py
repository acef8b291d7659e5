"""Bulk sends: one message to each recipient of a list, one queued job per recipient.

`start` (the `send_bulk` step, and `cli.py bulk start`) reads the list (a CSV file beside the
rules, or the rows a rule gives), normalises and de-duplicates the addresses (a phone number to E.164
for SMS, a Viber user id or a Telegram chat id as given), keeps the campaign in Redis and queues one
RQ job per recipient (`worker.send_campaign_message`). There is no sleeping loop: each job sends one
message through the connection's client, so the channel's limit at the vendor is kept by the shared
limiter of ratelimit.py, as for every other message, however many workers run the jobs.

`pipeline.campaigns.deliver` (one recipient) is effectively once per campaign id, under retries, repeated starts and
killed workers: the recipient's final state is kept in the campaign's state hash and checked first,
and the send itself runs as a planned action of pipeline/execute.py keyed by campaign and address
(done marks, attempted marks, a send that may have been done parked and never resent blindly).

Opt-outs are checked right before each send, so one that arrives mid-campaign is honoured:
- the connection's opt-out set in Redis, `<prefix>optout:<connection>` (E.164 numbers or Viber
  ids): filled by Viber `unsubscribed` callbacks and "STOP"/«стоп» messages (pipeline/observers.py),
  by a vendor's refusal (Viber 5/6, TurboSMS stop list), and by `cli.py bulk opt-out`; it has
  no TTL: an opted-out person never gets a bulk message again unless removed by hand (SREM);
- a column of the list (`opt_out_column`, e.g. a CRM field exported with the list) whose value is
  yes / так / да / true / 1.

Keys (all under the prefix): `campaign:<id>` the campaign (JSON), `campaign:<id>:recipients` (hash
address → row JSON), `campaign:<id>:state` (hash address → sent | opted_out | failed: … | uncertain: …).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from rq import Retry

from connectors.base import PermanentApiError
from pipeline import clock
from sms_text import BadNumber, e164

METHOD = "send_bulk"
REQUIRES: frozenset[str] = frozenset()   # send_message or send_sms, by the connection's type (checked in start)
JOB = "worker.send_campaign_message"   # runs pipeline.campaigns.deliver
CAMPAIGN_TTL = 180 * 24 * 3600
CAMPAIGN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
SMS_TYPES = ("turbosms", "smsc")
YES = frozenset({"yes", "y", "так", "да", "true", "1", "stop", "стоп"})
MAX_RECIPIENTS = 100_000
ADDRESS_COLUMNS = ("address", "phone", "viber", "chat", "телефон")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def campaign_key(rt: Any, campaign: str, part: str | None = None) -> str:
    return rt.keys(f"campaign:{campaign}" + (f":{part}" if part else ""))


def optout_key(rt: Any, connection: str) -> str:
    return rt.keys(f"optout:{connection}")


def opt_out(rt: Any, connection: str, address: str) -> bool:
    """Add an address to the connection's opt-out set; True if it was not there."""
    return bool(rt.store.sadd(optout_key(rt, connection), address))


def address_of(conn_type: str, value: Any, region: str | None) -> str:
    text = str(value or "").strip()
    if conn_type in SMS_TYPES:
        return e164(text, region)
    if not text or len(text) > 64 or any(ch.isspace() for ch in text):
        raise BadNumber(f"{text[:40]!r} is not a chat or user id")
    return text


def read_rows(rt: Any, file: str | None, rows: list | None) -> list[dict[str, str]]:
    """The list's rows: a CSV file (UTF-8, a header row) under the configuration directory, or rows given."""
    if rows is not None:
        return [r if isinstance(r, dict) else {"address": str(r)} for r in rows]
    base = Path(rt.settings.config_dir).resolve()
    path = (base / str(file)).resolve()
    if base not in path.parents or not path.is_file():
        raise PermanentApiError(f"recipients file {file!r}: not a file under the configuration directory {base}")
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect: Any = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=",;\t")
    except csv.Error:   # one column: nothing to tell the delimiter by
        dialect = csv.excel
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text), dialect=dialect)]


def start(rt: Any, connection: str, campaign: str, text: str, file: str | None = None, rows: list | None = None,
          region: str | None = "UA", opt_out_column: str | None = None) -> dict[str, Any]:
    """Keep the campaign and queue one job per recipient; starting it again queues only those who have
    no final state yet (nobody gets it twice). Answers the campaign's counts."""
    if not CAMPAIGN_ID.fullmatch(campaign or ""):
        raise PermanentApiError(f"campaign id {campaign!r}: 1-64 of A-Z, a-z, 0-9, _ . : - (starting with a letter or digit)")
    conn = rt.connections.connections.get(connection)
    if conn is None:
        raise PermanentApiError(f"unknown connection {connection!r}")
    client = rt.client(connection)
    method = "send_sms" if conn.type in SMS_TYPES else "send_message"
    if not client.can(method):
        raise PermanentApiError(f"connection {connection!r} ({conn.type}) cannot send a message to a list")
    queue = getattr(rt.backend, "queue", None)
    if queue is None:
        raise PermanentApiError("bulk sends queue one job per recipient: they need Redis (REDIS_URL)")
    key = campaign_key(rt, campaign)
    found = rt.store.get(key)
    if found is not None:
        kept = json.loads(found)
        if (kept["connection"], kept["text"]) != (connection, text):
            raise PermanentApiError(f"campaign {campaign!r} was started with another connection or text; "
                                    "a new campaign needs a new id")
    else:
        recipients: dict[str, str] = {}
        skipped: list[dict[str, str]] = []
        for row in read_rows(rt, file, rows)[:MAX_RECIPIENTS + 1]:
            raw = next((row[c] for c in ADDRESS_COLUMNS if row.get(c)), "")
            try:
                address = address_of(conn.type, raw, region)
            except BadNumber as exc:
                skipped.append({"address": str(raw)[:40], "reason": str(exc)})
                continue
            recipients.setdefault(address, json.dumps(row, ensure_ascii=False))   # the first row of a duplicate wins
        if len(recipients) > MAX_RECIPIENTS:
            raise PermanentApiError(f"more than {MAX_RECIPIENTS} recipients: split the list into campaigns")
        kept = {"id": campaign, "connection": connection, "method": method, "text": text,
                "opt_out_column": (opt_out_column or "").lower() or None, "total": len(recipients),
                "invalid": skipped, "started_at": clock.now().isoformat()}
        with rt.store.pipeline() as pipe:
            pipe.set(key, json.dumps(kept, ensure_ascii=False), ex=CAMPAIGN_TTL, nx=True)
            if recipients:
                pipe.hset(campaign_key(rt, campaign, "recipients"), mapping=recipients)
                pipe.expire(campaign_key(rt, campaign, "recipients"), CAMPAIGN_TTL)
            pipe.execute()
    state = {k.decode(): v.decode() for k, v in rt.store.hgetall(campaign_key(rt, campaign, "state")).items()}
    queued = 0
    for address in sorted(a.decode() for a in rt.store.hkeys(campaign_key(rt, campaign, "recipients"))):
        if address in state:
            continue
        ident = hashlib.sha256(f"{campaign}|{address}".encode()).hexdigest()[:24]
        queue.enqueue_call(JOB, args=({"campaign": campaign, "address": address},),
                           job_id=f"campaign-{ident}", description=f"campaign {campaign}: one recipient",
                           result_ttl=300, failure_ttl=30 * 24 * 3600,
                           retry=Retry(max=5, interval=[10, 60, 300, 900, 3600]))
        queued += 1
    return {"campaign": campaign, "total": kept["total"], "queued": queued, "invalid": len(kept["invalid"])}


def status(rt: Any, campaign: str) -> dict[str, Any] | None:
    """The campaign's counts: total, sent, opted_out, failed (with reasons), uncertain, pending."""
    raw = rt.store.get(campaign_key(rt, campaign))
    if raw is None:
        return None
    kept = json.loads(raw)
    states = [v.decode() for v in rt.store.hvals(campaign_key(rt, campaign, "state"))]
    counts = {"sent": 0, "opted_out": 0, "failed": 0, "uncertain": 0}
    reasons: dict[str, int] = {}
    for state in states:
        head, _, why = state.partition(": ")
        counts[head] = counts.get(head, 0) + 1
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    return {"campaign": campaign, "connection": kept["connection"], "started_at": kept["started_at"],
            "total": kept["total"], **counts, "pending": kept["total"] - len(states),
            "invalid": kept["invalid"], "reasons": reasons}


def run(ctx: Any, campaign: str, text: str, file: str | None = None, rows: list | None = None,
        region: str | None = "UA", opt_out_column: str | None = None) -> dict[str, Any]:
    return start(ctx.rt, ctx.connection, campaign, text, file=file, rows=rows, region=region,
                 opt_out_column=opt_out_column)
