"""Commands for integrators and operators: validate, dry-run, timers, dead letters.

    python cli.py validate
    python cli.py dry-run quickstart-amo config/examples/quickstart/sample-webhook.form
    python cli.py timers [--entity lead:31926520]
    python cli.py dead-letters list | replay KEY | replay --all [--match TEXT]
    python cli.py timeline lead:123 [--connection X] [--since 2d]
    python cli.py explain lead:123 --rule "Brief received → task"
    python cli.py replay-event EVENT_ID --dry-run
    python cli.py history prune | stats
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from config.loader import ConfigErrors
from config.settings import Settings
from connectors import CONNECTORS
from connectors.base import RawWebhook, WebhookError
from rules import MODULES
from rules.engine import plan
from runtime import load_configuration



@click.group()
@click.option("--config", "config_dir", type=click.Path(file_okay=False, path_type=Path),
              help="configuration directory (default: $CRMBRIDGE_CONFIG or ./config)")
@click.pass_context
def cli(ctx: click.Context, config_dir: Path | None) -> None:
    """crmbridge operator commands."""
    overrides = {"config_dir": config_dir} if config_dir else {}
    ctx.obj = Settings.from_env(**overrides)


def _load(settings: Settings):
    try:
        return load_configuration(settings)
    except ConfigErrors as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@cli.command()
@click.option("--online", is_flag=True, help="also read each connection's stages, fields, users and chats "
              "(read only) and check every name the rules use against them")
@click.pass_obj
def validate(settings: Settings, online: bool) -> None:
    """Check connections.yaml and every rule file; print all errors with file:line."""
    connections, ruleset = _load(settings)
    for warning in connections.warnings:
        click.echo(f"warning: {warning}")
    if online:
        _validate_online(settings, connections, ruleset)
    click.echo(f"ok: {len(connections.connections)} connection(s), {len(ruleset.rules)} rule(s) "
               f"in {settings.config_dir}" + (" (checked online)" if online else ""))


def _validate_online(settings: Settings, connections, ruleset) -> None:
    """validate --online: config/online.py with clients that read only, within each vendor's limit
    (shared with running workers when REDIS_URL is set)."""
    from config import online as checks
    from config.loader import ConfigErrors
    from ratelimit import limiter_for
    if settings.redis_url:
        from redis import Redis
        store = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    else:
        import fakeredis
        store = fakeredis.FakeRedis()

    def client_for(name: str):
        conn = connections.connections[name]
        client = CONNECTORS[conn.type].Client(conn, store=None, key_prefix=settings.redis_prefix)
        client.limiter = limiter_for(store, settings.redis_prefix, conn, client)
        return client
    found = checks.read(connections, client_for)
    for note in found.notes:
        click.echo(f"online: {note}")
    errors = checks.check(ruleset.rules, connections, found)
    if errors:
        click.echo(str(ConfigErrors(errors, "names the connections do not have (validate --online).")), err=True)
    if found.unread:
        click.echo(f"not checked online: {', '.join(found.unread)} could not be read (see above)", err=True)
    if errors or found.unread:
        sys.exit(1)


@cli.command("dry-run")
@click.argument("connection")
@click.argument("body", type=click.File("rb"))
@click.option("--content-type", default=None, help="default: what the connection's vendor sends")
@click.option("--now", default=None, help="the moment to plan for (ISO 8601); default: now")
@click.pass_obj
def dry_run(settings: Settings, connection: str, body, content_type: str | None, now: str | None) -> None:
    """Show what a webhook body would do: rules matched or not (and why), actions, timers.

    Nothing outside is called and nothing is queued: the entity is what the webhook says.
    """
    connections, ruleset = _load(settings)
    conn = connections.connections.get(connection)
    if conn is None:
        raise click.UsageError(f"no connection {connection!r}; known: {', '.join(connections.connections)}")
    connector = CONNECTORS[conn.type]
    raw = RawWebhook(headers={}, content_type=content_type or connector.CONTENT_TYPES[0], body=body.read())
    try:
        events = connector.parse(raw, conn)
    except WebhookError as exc:
        click.echo(f"the body is not a webhook of type {conn.type!r}: {exc}", err=True)
        sys.exit(1)
    moment = datetime.fromisoformat(now) if now else datetime.now(timezone.utc)
    for event in events:
        entity = {**event.data, "type": event.entity.type, "id": event.entity.id}
        click.echo(f"event {event.kind} {event.entity} (id {event.id})")
        click.echo(print_plan(plan(event, entity, ruleset, moment, MODULES)))


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


def _runtime(settings: Settings):
    import worker
    return worker.open_runtime(settings)


@cli.group(invoke_without_command=True)
@click.option("--entity", default=None, help="only timers of one entity, e.g. lead:31926520")
@click.pass_context
def timers(ctx: click.Context, entity: str | None) -> None:
    """List pending timers: when each fires, for which entity, set by which rule."""
    if ctx.invoked_subcommand is not None:
        return
    rt = _runtime(ctx.obj)
    pending = sorted(rt.backend.timers.pending(entity), key=lambda t: t["fire_at"])
    for t in pending:
        click.echo(f"{t['fire_at']}  {t['entity']['type']}:{t['entity']['id']}  {t['rule']!r}  ({t['timer_id']})")
    click.echo(f"{len(pending)} pending timer{'s' if len(pending) != 1 else ''}")


@timers.command("fire")
@click.argument("timer_id")
@click.pass_obj
def timers_fire(settings: Settings, timer_id: str) -> None:
    """Fire a pending timer now (a worker runs it; its guard is checked as at its own time)."""
    _operate_timer(settings, timer_id, "fire")


@timers.command("cancel")
@click.argument("timer_id")
@click.pass_obj
def timers_cancel(settings: Settings, timer_id: str) -> None:
    """Cancel a pending timer; the audit says an operator did."""
    _operate_timer(settings, timer_id, "cancel")


def _operate_timer(settings: Settings, timer_id: str, what: str) -> None:
    from connectors.base import Event
    from pipeline import clock
    from pipeline.audit import audit
    rt = _runtime(settings)
    timer = rt.backend.timers.get(timer_id)
    if timer is None:
        raise click.ClickException(f"no pending timer {timer_id!r} (see `cli.py timers`)")
    event = Event.from_dict(timer["event"])
    if what == "fire":
        rt.backend.schedule({**timer, "fire_at": clock.now().isoformat()})
        audit(rt, event, "timer.moved", timer=timer_id, fire_at=clock.now().isoformat(),
              reason="fired now by an operator (cli.py timers fire)")
        click.echo(f"timer {timer_id} fires now (was {timer['fire_at']}); a worker runs it")
    else:
        rt.backend.cancel(timer_id)
        audit(rt, event, "timer.cancelled", timer=timer_id, reason="cancelled by an operator (cli.py timers cancel)")
        click.echo(f"timer {timer_id} cancelled (was due {timer['fire_at']})")


@cli.group("dead-letters")
def dead_letters() -> None:
    """Jobs and steps that gave up after their retries: list, show, replay, discard."""


@dead_letters.command("list")
@click.pass_obj
def dead_list(settings: Settings) -> None:
    from pipeline import dead_letters as kept
    entries = kept.entries(_runtime(settings))
    for key, entry in entries.items():
        click.echo(f"{key}  {entry['at']}  {entry['job']}  {entry['error'].splitlines()[-1] if entry['error'] else ''}")
    click.echo(f"{len(entries)} dead letter{'s' if len(entries) != 1 else ''}")


@dead_letters.command("show")
@click.argument("key")
@click.pass_obj
def dead_show(settings: Settings, key: str) -> None:
    """One dead letter whole: its job, error and the event (or timer) it carries."""
    from pipeline import dead_letters as kept
    entry = kept.get(_runtime(settings), key)
    if entry is None:
        raise click.ClickException(f"no dead letter {key!r} (see `cli.py dead-letters list`)")
    click.echo(json.dumps(entry, ensure_ascii=False, indent=2, default=str))


def _chosen_keys(rt, key: str | None, every: bool, match: str | None, verb: str) -> list[str]:
    from pipeline import dead_letters as kept
    if key:
        return [key]
    if not every:
        raise click.UsageError(f"give a KEY, or --all (optionally with --match) to {verb}")
    return [k for k, entry in kept.entries(rt).items()
            if match is None or match in k or match in json.dumps(entry, ensure_ascii=False, default=str)]


@dead_letters.command("replay")
@click.argument("key", required=False)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter (or those matching)")
@click.option("--match", default=None, help="only dead letters whose key or error contains this text")
@click.pass_obj
def dead_replay(settings: Settings, key: str | None, replay_all: bool, match: str | None) -> None:
    """Queue dead letters again; steps that completed before are skipped."""
    from pipeline import dead_letters as kept
    rt = _runtime(settings)
    keys = _chosen_keys(rt, key, replay_all, match, "replay")
    if replay_all and match is None:
        # a step that "may have been sent" is replayed by its key (or --match) once checked, never in bulk
        unsure = [k for k in keys if "may have been sent" in ((kept.get(rt, k) or {}).get("error") or "")]
        keys = [k for k in keys if k not in unsure]
        if unsure:
            click.echo(f"left {len(unsure)} that may have been sent: check the vendor, then replay each by its key")
    replayed = sum(1 for k in keys if kept.replay(rt, k))
    click.echo(f"replayed {replayed} of {len(keys)}")


@dead_letters.command("discard")
@click.argument("key", required=False)
@click.option("--all", "discard_all", is_flag=True, help="discard every dead letter (or those matching)")
@click.option("--match", default=None, help="only dead letters whose key or error contains this text")
@click.pass_obj
def dead_discard(settings: Settings, key: str | None, discard_all: bool, match: str | None) -> None:
    """Drop dead letters without running them (e.g. the vendor had the step after all)."""
    from pipeline import dead_letters as kept
    rt = _runtime(settings)
    keys = _chosen_keys(rt, key, discard_all, match, "discard")
    dropped = sum(1 for k in keys if kept.discard(rt, k))
    click.echo(f"discarded {dropped} of {len(keys)}")


# --- the decision history (pipeline/history.py) ---------------------------------------------------

def _history(settings: Settings):
    from pipeline.history import open_history
    store = open_history(settings)
    if store is None:
        raise click.ClickException("the decision history is off (CRMBRIDGE_HISTORY=off)")
    return store


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


@cli.command()
@click.argument("record")
@click.option("--connection", default=None, help="only this connection's events (records of two CRMs may share an id)")
@click.option("--since", default="14d", show_default=True, help="how far back: 2d, 36h, 90m, 1w or an ISO date")
@click.pass_obj
def timeline(settings: Settings, record: str, connection: str | None, since: str) -> None:
    """A record's history in order: its events, each rule's decision (and why not), actions, timers."""
    entries = _history(settings).timeline(record, connection, _since(since))
    for entry in entries:
        click.echo(timeline_line(entry))
    events = sum(1 for e in entries if e.what == "event")
    click.echo(f"{events} event{'s' if events != 1 else ''}, {len(entries) - events} decision"
               f"{'s' if len(entries) - events != 1 else ''} for {record} since {_when(_since(since))} UTC")


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


@cli.command()
@click.argument("record")
@click.option("--rule", "rule_name", required=True, help="the rule's name, as in its rule file")
@click.option("--connection", default=None, help="only this connection's events")
@click.option("--since", default="14d", show_default=True, help="how far back: 2d, 36h, 90m, 1w or an ISO date")
@click.pass_obj
def explain(settings: Settings, record: str, rule_name: str, connection: str | None, since: str) -> None:
    """Why a rule did or did not act on a record's recent events, and what would make it act."""
    _, ruleset = _load(settings)
    rule = next((r for r in ruleset.rules if r.name == rule_name), None) or \
        next((r for r in ruleset.rules if r.name.casefold() == rule_name.casefold()), None)
    name = rule.name if rule else rule_name
    moment = _since(since)
    entries = _history(settings).timeline(record, connection, moment)
    if rule is None and not any(e.rule == name for e in entries):
        known = ", ".join(repr(r.name) for r in ruleset.rules)
        raise click.UsageError(f"no rule {rule_name!r} in the rule files, nor in {record}'s history; rules: {known}")
    click.echo(explain_rule(entries, name, rule, record, moment))


@cli.command("replay-event")
@click.argument("event_id")
@click.option("--dry-run", is_flag=True, required=True, help="plan only (the one mode): nothing is called or queued")
@click.option("--now", default=None, help="the moment to plan for (ISO 8601); default: now")
@click.pass_obj
def replay_event(settings: Settings, event_id: str, dry_run: bool, now: str | None) -> None:
    """Plan a kept event again against today's rules, with the record as it was then; no vendor is called."""
    from connectors.base import Event
    if not dry_run:
        raise click.UsageError("only --dry-run is supported: to run an event's steps again, replay its dead letter")
    _, ruleset = _load(settings)
    kept = _history(settings).event(event_id)
    if kept is None:
        raise click.ClickException(f"no kept event {event_id!r} (older than the history's retention, or never planned; "
                                   "see cli.py timeline)")
    event = Event.from_dict(kept["event"])
    entity = kept.get("record") or {**event.data, "type": event.entity.type, "id": event.entity.id}
    moment = datetime.fromisoformat(now) if now else datetime.now(timezone.utc)
    click.echo(f"event {event.kind} {event.entity} (id {event.id}), as kept; today's rules:")
    click.echo(print_plan(plan(event, entity, ruleset, moment, MODULES)))


@cli.group()
def history() -> None:
    """The decision history: prune it now, or see its size."""


@history.command("prune")
@click.pass_obj
def history_prune(settings: Settings) -> None:
    """Remove events and decisions older than the retention (CRMBRIDGE_HISTORY_RETENTION)."""
    events, decisions = _history(settings).prune()
    click.echo(f"removed {events} event(s) and {decisions} decision(s) older than "
               f"{settings.history_retention // 86400} day(s)")


@history.command("stats")
@click.pass_obj
def history_stats(settings: Settings) -> None:
    """Events and decisions kept, bytes on disk, bytes per event."""
    store = _history(settings)
    stats = store.stats()
    per = stats["bytes"] / stats["events"] if stats["events"] else 0
    click.echo(f"{store.name}: {stats['events']} event(s), {stats['decisions']} decision(s), "
               f"{stats['bytes']:,} bytes ({per:,.0f} bytes per event)")


@cli.command("telegram-set-webhook")
@click.argument("connection")
@click.argument("public_base_url")
@click.pass_obj
def telegram_set_webhook(settings: Settings, connection: str, public_base_url: str) -> None:
    """Point a bot at <PUBLIC_BASE_URL>/hooks/<CONNECTION>, its webhook_secret as secret_token."""
    from urllib.parse import quote

    from connectors.base import ApiError
    from connectors.telegram import ALLOWED_UPDATES
    connections, _ = _load(settings)
    conn = connections.connections.get(connection)
    telegram = [name for name, c in connections.connections.items() if c.type == "telegram"]
    if conn is None or conn.type != "telegram":
        raise click.UsageError(f"no telegram connection {connection!r}; telegram connections: {', '.join(telegram) or 'none'}")
    if not public_base_url.startswith("https://"):  # setWebhook: "HTTPS URL to send updates to"
        raise click.UsageError(f"PUBLIC_BASE_URL must be an https:// address Telegram can reach, got {public_base_url!r}")
    client = CONNECTORS[conn.type].Client(conn)
    if client.record_only:
        raise click.UsageError(f"connection {connection!r} has no bot token (credentials → token)")
    url = f"{public_base_url.rstrip('/')}/hooks/{quote(connection, safe='')}"
    try:
        client.set_webhook(url, conn.webhook_secret or "", ALLOWED_UPDATES)
    except ApiError as exc:
        click.echo(f"Telegram refused the webhook: {exc}", err=True)
        sys.exit(1)
    click.echo(f"webhook set: {url} (secret_token = the connection's webhook_secret; updates: "
               f"{', '.join(ALLOWED_UPDATES)})")


if __name__ == "__main__":
    cli()
