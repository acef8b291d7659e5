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

A list may instead come from the CRM (`crm`: the deals in a stage, with tags, field values, last
changed within or before a number of days; the client's `bulk_recipients` reads every page and each
deal's contact). Each recipient is then reached in one channel, the first of `channels` (an order of
preference: connection + the row's field that holds the address) for which the row has a usable
address; a person with none is listed as invalid, never guessed. The opt-out check covers every
address the person has in any of the channels: opted out in one, they get nothing.

Quiet hours (`quiet_hours`: from, to, the zone from a row field or the campaign's zone or the
channel connection's `options → timezone`): a recipient whose local time is inside the window is not
sent to and not skipped: the job is scheduled again for the window's end (`rt.backend.call_at`, on
`clock.now()`), counted "deferred for quiet hours" in the status.

Keys (all under the prefix): `campaign:<id>` the campaign (JSON), `campaign:<id>:recipients` (hash
recipient → row JSON; the recipient is the address, or `<connection>|<address>` with channels),
`campaign:<id>:state` (hash recipient → sent | opted_out | failed: … | uncertain: …),
`campaign:<id>:deferred` (hash recipient → the end of the quiet hours it was deferred to), and
`campaigns` (sorted set id → start time: what the console and `cli.py bulk list` show).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
METHODS = {"turbosms": "send_sms", "smsc": "send_sms", "email": "send_email"}   # any other: send_message
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
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
    if conn_type == "email":
        if not EMAIL.fullmatch(text):
            raise BadNumber(f"{text[:40]!r} is not an e-mail address")
        return text.lower()
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


def method_of(rt: Any, connection: str) -> str:
    """The verb a channel connection sends with; refused when it has none."""
    conn = rt.connections.connections.get(connection)
    if conn is None:
        raise PermanentApiError(f"unknown connection {connection!r}")
    method = METHODS.get(conn.type, "send_message")
    if not rt.client(connection).can(method):
        raise PermanentApiError(f"connection {connection!r} ({conn.type}) cannot send a message to a list")
    return method


def crm_rows(rt: Any, connection: str, crm: dict[str, Any]) -> list[dict[str, Any]]:
    """The list read from a CRM connection: `stage` (one or a list), `pipeline`, `tags`, `fields`
    ({name: value}), `active_within_days` (changed in the last N days) / `inactive_for_days` (not
    changed in the last N days)."""
    client = rt.client(connection)
    if not client.can("bulk_recipients"):
        raise PermanentApiError(f"connection {connection!r} cannot list recipients from its CRM")
    unknown = set(crm) - {"stage", "pipeline", "tags", "fields", "active_within_days", "inactive_for_days"}
    if unknown:
        raise PermanentApiError(f"crm list: unknown option(s) {', '.join(sorted(unknown))}; expected stage, "
                                "pipeline, tags, fields, active_within_days, inactive_for_days")
    stages = crm.get("stage")
    stages = [stages] if isinstance(stages, (str, int)) else list(stages or [])
    now = clock.now().timestamp()
    within, before = crm.get("active_within_days"), crm.get("inactive_for_days")
    return client.bulk_recipients(
        stages=[str(s) for s in stages], pipeline=crm.get("pipeline"), tags=list(crm.get("tags") or []),
        fields=dict(crm.get("fields") or {}),
        updated_from=now - float(within) * 86400 if within is not None else None,
        updated_to=now - float(before) * 86400 if before is not None else None)


def quiet_window(rt: Any, quiet: dict[str, Any] | None, channels: list[str]) -> dict[str, Any] | None:
    """quiet_hours checked and kept: {from, to, zone, zone_field}; the zone defaults to the channel
    connections' `options → timezone` (the first that has one)."""
    if not quiet:
        return None
    start_, end = str(quiet.get("from") or ""), str(quiet.get("to") or "")
    if not (CLOCK.fullmatch(start_) and CLOCK.fullmatch(end)) or start_ == end:
        raise PermanentApiError(f"quiet_hours: from and to are two different times HH:MM, found {start_!r} and {end!r}")
    zone = quiet.get("zone") or next((rt.connections.connections[c].options.get("timezone") for c in channels
                                      if rt.connections.connections[c].options.get("timezone")), None)
    if not zone:
        raise PermanentApiError("quiet_hours: no zone: give quiet_hours → zone, or options → timezone on the "
                                f"connection {channels[0]!r}")
    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise PermanentApiError(f"quiet_hours: zone {zone!r} is not an IANA time zone such as Europe/Kyiv") from None
    return {"from": start_, "to": end, "zone": str(zone),
            "zone_field": str(quiet["zone_field"]).lower() if quiet.get("zone_field") else None}


def quiet_until(quiet: dict[str, Any] | None, row: dict[str, Any], now: datetime) -> datetime | None:
    """The end of the quiet hours the recipient is in now (in their zone), or None when they are not."""
    if not quiet:
        return None
    zone = ZoneInfo(quiet["zone"])
    if quiet.get("zone_field") and row.get(quiet["zone_field"]):
        try:
            zone = ZoneInfo(str(row[quiet["zone_field"]]).strip())
        except (ZoneInfoNotFoundError, ValueError):
            pass   # a zone the CRM field spells wrongly: the campaign's zone
    local = now.astimezone(zone)
    (h1, m1), (h2, m2) = (map(int, quiet[k].split(":")) for k in ("from", "to"))
    begin, end, at = time(h1, m1), time(h2, m2), local.time()
    inside = begin <= at < end if begin < end else (at >= begin or at < end)
    if not inside:
        return None
    day = local.date() if at < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone)


def choose_channel(rt: Any, row: dict[str, Any], channels: list[dict[str, str]],
                   region: str | None) -> tuple[list[list[str]], str | None]:
    """Every (connection, address) the row gives, in the order of preference, and why none did."""
    found: list[list[str]] = []
    why = None
    for channel in channels:
        conn = rt.connections.connections[channel["connection"]]
        value = row.get(channel["field"])
        if value in (None, "", []):
            continue
        try:
            found.append([channel["connection"], address_of(conn.type, value[0] if isinstance(value, list) else value,
                                                            region)])
        except BadNumber as exc:
            why = why or f"{channel['field']}: {exc}"
    return found, (None if found else why or "no address in any channel's field")


def start(rt: Any, connection: str, campaign: str, text: str, file: str | None = None, rows: list | None = None,
          region: str | None = "UA", opt_out_column: str | None = None, crm: dict[str, Any] | None = None,
          channels: list[dict[str, str]] | None = None, quiet_hours: dict[str, Any] | None = None,
          subject: str | None = None) -> dict[str, Any]:
    """Keep the campaign and queue one job per recipient; starting it again queues only those who have
    no final state yet (nobody gets it twice). Answers the campaign's counts.

    Without `channels` every row is sent through `connection`; with them (a list of {connection,
    field}), each row through the first channel whose field holds a usable address, and a `crm`
    list is read from `connection` (a CRM's)."""
    if not CAMPAIGN_ID.fullmatch(campaign or ""):
        raise PermanentApiError(f"campaign id {campaign!r}: 1-64 of A-Z, a-z, 0-9, _ . : - (starting with a letter or digit)")
    if rt.connections.connections.get(connection) is None:
        raise PermanentApiError(f"unknown connection {connection!r}")
    conn = rt.connections.connections[connection]
    if crm is not None and not channels:
        raise PermanentApiError("a list from the CRM needs channels: [{connection, field}, …] in the order of preference")
    chans = [{"connection": str(c["connection"]), "field": str(c.get("field") or "").lower()} for c in channels or []]
    for c in chans:
        if not c["field"]:
            raise PermanentApiError(f"channel {c['connection']!r}: which field of the row holds its address?")
        method_of(rt, c["connection"])
    method = method_of(rt, connection) if not chans else "by channel"
    quiet = quiet_window(rt, quiet_hours, [c["connection"] for c in chans] or [connection])
    queue = getattr(rt.backend, "queue", None)
    if not hasattr(queue, "enqueue_call"):   # the embedded default, or a simulation (cli.py simulate)
        raise PermanentApiError("bulk sends queue one job per recipient in RQ: they need Redis (REDIS_URL) and "
                                "worker.py; the embedded default and simulations do not run them")
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
        listed = crm_rows(rt, connection, crm) if crm is not None else read_rows(rt, file, rows)
        for row in listed[:MAX_RECIPIENTS + 1]:
            if chans:
                every, why = choose_channel(rt, row, chans, region)
                if not every:
                    skipped.append({"address": str(row.get("name") or row.get("contact") or "")[:40], "reason": why})
                    continue
                via, address = every[0]
                recipient = f"{via}|{address}"
                row = {**row, "_via": via, "_to": address, "_all": every}
            else:
                raw = next((row[c] for c in ADDRESS_COLUMNS if row.get(c)), "")
                try:
                    recipient = address_of(conn.type, raw, region)
                except BadNumber as exc:
                    skipped.append({"address": str(raw)[:40], "reason": str(exc)})
                    continue
            recipients.setdefault(recipient, json.dumps(row, ensure_ascii=False))   # the first row of a duplicate wins
        if len(recipients) > MAX_RECIPIENTS:
            raise PermanentApiError(f"more than {MAX_RECIPIENTS} recipients: split the list into campaigns")
        kept = {"id": campaign, "connection": connection, "method": method, "text": text,
                "opt_out_column": (opt_out_column or "").lower() or None, "total": len(recipients),
                "invalid": skipped, "started_at": clock.now().isoformat(),
                "channels": [c["connection"] for c in chans], "quiet": quiet, "subject": subject,
                "source": "crm" if crm is not None else "file" if file else "rows"}
        with rt.store.pipeline() as pipe:
            pipe.set(key, json.dumps(kept, ensure_ascii=False), ex=CAMPAIGN_TTL, nx=True)
            pipe.zadd(rt.keys("campaigns"), {campaign: clock.now().timestamp()}, nx=True)
            pipe.zremrangebyscore(rt.keys("campaigns"), "-inf", clock.now().timestamp() - CAMPAIGN_TTL)
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
    final = {k.decode(): v.decode() for k, v in rt.store.hgetall(campaign_key(rt, campaign, "state")).items()}
    deferred = {k.decode(): v.decode() for k, v in rt.store.hgetall(campaign_key(rt, campaign, "deferred")).items()}
    counts = {"sent": 0, "opted_out": 0, "failed": 0, "uncertain": 0}
    reasons: dict[str, int] = {}
    by_channel: dict[str, dict[str, int]] = {}
    for recipient, state in final.items():
        head, _, why = state.partition(": ")
        counts[head] = counts.get(head, 0) + 1
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        if "|" in recipient:
            channel = by_channel.setdefault(recipient.partition("|")[0], {})
            channel[head] = channel.get(head, 0) + 1
    waiting = {r: until for r, until in deferred.items() if r not in final}
    return {"campaign": campaign, "connection": kept["connection"], "started_at": kept["started_at"],
            "total": kept["total"], **counts, "pending": kept["total"] - len(final),
            "deferred": len(deferred), "deferred_waiting": len(waiting),
            "deferred_until": max(waiting.values()) if waiting else None,
            "invalid": kept["invalid"], "reasons": reasons, "by_channel": by_channel,
            "channels": kept.get("channels") or [kept["connection"]], "text": kept["text"]}


def campaigns(rt: Any, limit: int = 50) -> list[dict[str, Any]]:
    """The campaigns started (the index `<prefix>campaigns`, newest first, at most `limit`), each with its status."""
    found = []
    for name in rt.store.zrevrange(rt.keys("campaigns"), 0, limit - 1):
        one = status(rt, name.decode())
        if one is not None:
            found.append(one)
    return found


def run(ctx: Any, campaign: str, text: str, file: str | None = None, rows: list | None = None,
        region: str | None = "UA", opt_out_column: str | None = None, crm: dict[str, Any] | None = None,
        channels: list[dict[str, str]] | None = None, quiet_hours: dict[str, Any] | None = None,
        subject: str | None = None) -> dict[str, Any]:
    return start(ctx.rt, ctx.connection, campaign, text, file=file, rows=rows, region=region,
                 opt_out_column=opt_out_column, crm=crm, channels=channels, quiet_hours=quiet_hours,
                 subject=subject)
