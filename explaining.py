"""The explanations shared by cli.py and the console: a plan as lines, a record's timeline as lines,
why a rule did or did not act on a record and what would make it act."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click

def _derived_why(change) -> str:
    if change.data.get("first_seen"):
        return "first seen, entering its stage"
    if change.kind == "field.changed":
        return "fields " + ", ".join(change.data.get("changed") or {})
    return f"{change.kind.split('.')[0]} changed"


def print_plan(result) -> str:
    lines = []
    for rule, why in result.matched:
        lines.append(f"  matched  {rule!r}: {why}")
    for rule, why in result.skipped:
        lines.append(f"  skipped  {rule!r}: {why}")
    for action in result.actions:
        lines.append(f"  would call {action.describe()}")
    for timer in result.timers:
        lines.append(f"  would set timer {timer.timer_id} at {timer.fire_at} for {timer.rule!r}")
    for timer_id, why in result.cancels:
        lines.append(f"  would cancel timer {timer_id}: {why}")
    for rule, message in result.errors:
        lines.append(f"  error in {rule!r}: {message}")
    return "\n".join(lines) or "  no rules"

def _since(text: str | None, default: str | None = None) -> datetime | None:
    """`2d`, `36h`, `90m`, `1w`, or an ISO date or moment."""
    import re
    from datetime import timedelta
    text = text or default
    if not text:
        return None
    found = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text)
    if found:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[found[2]]
        return datetime.now(timezone.utc) - timedelta(**{unit: int(found[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected 2d, 36h, 90m, 1w or an ISO date, found {text!r}", param_hint="--since")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def timeline_line(entry) -> str:
    """One timeline entry as a line: events flush left, decisions under them."""
    d = entry.detail
    if entry.what == "event":
        derived = " (derived from the record's snapshot)" if d.get("derived") else ""
        return f"{_when(entry.at)}  {entry.connection}  event {entry.rule} {entry.record}{derived}  [{entry.event_id}]"
    head = f"{_when(entry.at)}    "
    if entry.what == "rule.skipped":
        return f"{head}skipped  {entry.rule!r}: {d.get('reason')}"
    if entry.what == "rules.not_listening":
        return f"{head}not listening to {d.get('kind')}: {', '.join(map(repr, d.get('rules', [])))}"
    if entry.what == "rule.matched":
        return f"{head}matched  {entry.rule!r}: {d.get('reason')}"
    if entry.what.startswith("action."):
        outcome = d.get("error") or d.get("reason") or (f"→ {json.dumps(d['result'], ensure_ascii=False, default=str)}"
                                                         if "result" in d else "")
        return f"{head}{entry.what:<15} {d.get('action')} {outcome}".rstrip()
    if entry.what.startswith("timer."):
        extra = d.get("fire_at") or d.get("reason") or ""
        rule = f" {entry.rule!r}" if entry.rule else ""
        return f"{head}{entry.what:<15} {d.get('timer')}{rule} {extra}".rstrip()
    rest = ", ".join(f"{k}={v}" for k, v in d.items())
    rule = f" {entry.rule!r}" if entry.rule else ""
    return f"{head}{entry.what}{rule} {rest}".rstrip()

_OPS = {"equals": "=", "not_equals": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "in": "in",
        "matches": "matches", "starts_with": "starts with", "contains": "contains"}


def condition_text(condition) -> str:
    """A condition as written, in one short line: `fields.Budget > 0`, `stage: 'Won'`."""
    if isinstance(condition, dict) and "field" in condition:
        ops = [(k, v) for k, v in condition.items() if k != "field"]
        name = condition["field"]
        if not ops:
            return f"fields.{name}"
        return " and ".join(f"fields.{name} is {op}" if op in ("filled", "empty") else
                            f"fields.{name} {_OPS.get(op, op)} {v!r}" for op, v in ops)
    if isinstance(condition, dict) and len(condition) == 1:
        [(kind, value)] = condition.items()
        return f"{kind}: {value!r}"
    return str(condition)


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def what_would_act(rule, skip: dict) -> str:
    """What would make a skipped rule act, from the reason it was skipped."""
    key, want = skip.get("key"), skip.get("want")
    kinds = " or ".join(rule.trigger.events) if rule else "its event"
    if skip.get("stage") == "condition" and isinstance(key, dict):
        return f"it acts on the record's next {kinds} event once `{condition_text(key)}` holds"
    if skip.get("stage") == "guard":
        return f"its timer acts only while `{condition_text(key)}` holds; a new {kinds} event sets it again"
    if skip.get("stage") == "trigger":
        if key == "event":
            return f"it acts on {_a(kinds)} event of this record"
        wanted = " or ".join(map(repr, want)) if isinstance(want, list) else repr(want)
        return f"it acts on {_a(kinds)} event whose {key} is {wanted}"
    if skip.get("stage") == "timer":
        return f"it sets its timer once {skip.get('reason')} no longer holds"
    return "it acts once the reason above no longer holds"


def explain_rule(entries: list, rule_name: str, rule, record: str, since: datetime) -> str:
    """One paragraph: what the rule did with the record's recent events, and what would make it act."""
    where = f" ({rule.where})" if rule else " (no longer in today's rule files)"
    events = [e for e in entries if e.what == "event"]
    mine = [e for e in entries if e.rule == rule_name and e.what != "event"]
    not_listening = [e for e in entries if e.what == "rules.not_listening" and rule_name in e.detail.get("rules", [])]
    head = f"Rule {rule_name!r}{where}"
    if not events and not mine:
        return (f"{head}: no event of {record} was planned since {_when(since)} UTC, so it had nothing to act on "
                f"(is the record written as its CRM names it, e.g. lead:123, and did its webhook arrive?).")
    done = [e for e in mine if e.what == "action.done"]
    failed = [e for e in mine if e.what in ("action.failed", "action.uncertain", "rule.error")]
    matched = [e for e in mine if e.what == "rule.matched"]
    skipped = [e for e in mine if e.what in ("rule.skipped", "timer.skipped")]
    parts = [f"{head} considered {len(events)} event{'s' if len(events) != 1 else ''} of {record} since {_when(since)} UTC:"]
    if matched:
        last = matched[-1]
        parts.append(f"it matched {len(matched)} time{'s' if len(matched) != 1 else ''}, last on {_when(last.at)} "
                     f"({last.detail.get('reason')})")
        if done:
            parts.append(f"and acted: {'; '.join(str(e.detail.get('action')) for e in done[-3:])}")
        if failed:
            last_fail = failed[-1]
            parts.append(f"but {last_fail.what} on {_when(last_fail.at)}: "
                         f"{last_fail.detail.get('error') or last_fail.detail.get('reason')} (see cli.py dead-letters list)")
    if skipped:
        last = skipped[-1]
        d = last.detail
        if d.get("stage") == "condition" or d.get("stage") == "guard":
            what = f"{'guard' if d.get('stage') == 'guard' else 'condition'} `{condition_text(d.get('key'))}` failed: {d.get('reason')}"
        elif d.get("stage") == "trigger":
            what = f"trigger `{d.get('key')}` did not match: {d.get('reason')}"
        else:
            what = d.get("reason") or d.get("error") or last.what
        parts.append(f"{'then ' if matched else ''}skipped {len(skipped)} time{'s' if len(skipped) != 1 else ''}, "
                     f"last on {_when(last.at)}: {what}")
        if not matched or last.at >= matched[-1].at:
            parts.append(f"— {what_would_act(rule, d)}")
    elif not matched:
        kinds = sorted({e.rule for e in events})
        listens = " or ".join(rule.trigger.events) if rule else "other events"
        parts.append(f"it listens to {listens}, and {record}'s events were {', '.join(kinds)}"
                     f"{' (' + str(len(not_listening)) + ' noted as not listening)' if not_listening else ''}"
                     f" — it acts on {_a(listens)} event of this record")
    return " ".join(parts).replace(": —", " —").rstrip(":") + "."
