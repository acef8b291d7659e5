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
from explaining import _derived_why, _since, _when, explain_rule, print_plan, timeline_line



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
        import redisconn   # REDIS_URL, or the primary the Sentinels name
        store = redisconn.connect(settings)
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
    errors = checks.check(ruleset.rules, connections, found, settings.config_dir)
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
@click.option("--fetch", is_flag=True, help="read the record (and the tasks, files, contacts the rules need) "
              "from the CRM, read-only, and plan as the worker would")
@click.option("--record", "record_file", type=click.File("rb"), default=None,
              help="a saved record (JSON, as the CRM's client returns it) instead of reading it")
@click.pass_obj
def dry_run(settings: Settings, connection: str, body, content_type: str | None, now: str | None,
            fetch: bool, record_file) -> None:
    """Show what a webhook body would do: rules matched or not (and why), actions, timers.

    Nothing is queued and nothing is written. Without --fetch or --record the entity is what the
    webhook says (a Bitrix24 webhook says only the id); with them, the record is read (or loaded)
    and the changes the worker derives from it are planned too.
    """
    connections, ruleset = _load(settings)
    conn = connections.connections.get(connection)
    if conn is None:
        raise click.UsageError(f"no connection {connection!r}; known: {', '.join(connections.connections)}")
    if fetch and record_file is not None:
        raise click.UsageError("give --fetch or --record, not both")
    connector = CONNECTORS[conn.type]
    raw = RawWebhook(headers={}, content_type=content_type or connector.CONTENT_TYPES[0], body=body.read())
    try:
        events = connector.parse(raw, conn)
    except WebhookError as exc:
        click.echo(f"the body is not a webhook of type {conn.type!r}: {exc}", err=True)
        sys.exit(1)
    moment = datetime.fromisoformat(now) if now else datetime.now(timezone.utc)
    saved = None
    if record_file is not None:
        try:
            saved = json.loads(record_file.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise click.BadParameter(f"expected a JSON object (a record), found: {exc}", param_hint="--record")
        if not isinstance(saved, dict):
            raise click.BadParameter(f"expected a JSON object (a record), found {type(saved).__name__}",
                                     param_hint="--record")
    rt = _read_only_runtime(settings, connections, ruleset) if fetch else None
    for event in events:
        click.echo(f"event {event.kind} {event.entity} (id {event.id})")
        if not fetch and saved is None:
            entity = {**event.data, "type": event.entity.type, "id": event.entity.id}
            click.echo(print_plan(plan(event, entity, ruleset, moment, MODULES)))
            continue
        for change, view in _changes(settings, rt, event, saved, ruleset):
            if change is not event:
                click.echo(f"event {change.kind} {change.entity} (derived from the record: {_derived_why(change)})")
            click.echo(print_plan(plan(change, view, ruleset, moment, MODULES)))


def _read_only_runtime(settings: Settings, connections, ruleset):
    """A runtime whose clients are the real connections' clients, able only to read (their
    metadata cached in a store of this process, never in the deployment's Redis)."""
    import fakeredis

    from queueing import Keys
    from runtime import Runtime
    from simulate.readonly import ReadOnly
    rt = Runtime(settings, connections, ruleset, fakeredis.FakeRedis(), Keys(settings.redis_prefix), backend=None)
    for name, conn in connections.connections.items():
        rt.clients[name] = ReadOnly(CONNECTORS[conn.type].Client(conn, store=rt.store, key_prefix=settings.redis_prefix))
    return rt


def _changes(settings: Settings, rt, event, saved: dict | None, ruleset):
    """The event and the changes the worker would derive, each with the record as its rules see it
    (pipeline/snapshot.py's take, without keeping anything)."""
    from pipeline import snapshot
    from rules.engine import data_needs
    if saved is not None:
        entity = {**event.data, **saved, "type": event.entity.type, "id": event.entity.id}
    else:
        entity = snapshot.read(rt, event)
    previous = _kept_snapshot(settings, event)
    derived = snapshot.derive(event, previous, entity)
    if rt is not None:
        entity = snapshot.enrich(rt, event, entity, data_needs(ruleset.rules, {event.kind, *(d.kind for d in derived)}))
    yield event, {**entity, **{k: v for k, v in event.data.items() if k == "changed"}}
    for d in derived:
        yield d, {**entity, **{k: v for k, v in d.data.items() if k.startswith("previous_") or k == "changed"}}


def _kept_snapshot(settings: Settings, event) -> dict | None:
    """The record's last snapshot in the deployment's Redis (read only), or None: none kept (or no
    REDIS_URL), so the record is first seen (docs/rules.md, "First-seen records")."""
    if not settings.redis_url:
        return None
    from redis.exceptions import RedisError
    import redisconn
    try:
        kept = redisconn.connect(settings).get(
            f"{settings.redis_prefix}snapshot:{event.connection}:{event.entity}")
    except RedisError as exc:
        click.echo(f"(the record's snapshot could not be read from Redis: {exc}; planned as first seen)", err=True)
        return None
    return json.loads(kept) if kept else None


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
    from pipeline.operate import cancel_timer, fire_timer_now
    rt = _runtime(settings)
    if what == "fire":
        timer = fire_timer_now(rt, timer_id, "cli.py timers fire")
    else:
        timer = cancel_timer(rt, timer_id, "cli.py timers cancel")
    if timer is None:
        raise click.ClickException(f"no pending timer {timer_id!r} (see `cli.py timers`)")
    if what == "fire":
        click.echo(f"timer {timer_id} fires now (was {timer['fire_at']}); a worker runs it")
    else:
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
@click.option("--force", is_flag=True, help="also those older than the done marks (CRMBRIDGE_DONE_TTL), once checked")
@click.pass_obj
def dead_replay(settings: Settings, key: str | None, replay_all: bool, match: str | None, force: bool) -> None:
    """Queue dead letters again; steps that completed before are skipped."""
    from pipeline import dead_letters as kept
    rt = _runtime(settings)
    keys = _chosen_keys(rt, key, replay_all, match, "replay")
    if not force:   # older than the done marks: a replay could repeat what the event did
        found = {k: kept.get(rt, k) for k in keys}
        old = {k: reason for k, entry in found.items() if entry and (reason := kept.outlived(rt, entry))}
        keys = [k for k in keys if k not in old]
        for k, reason in old.items():
            click.echo(f"left {k}: {reason} (--force)")
    if replay_all and match is None:
        # a step that "may have been sent" is replayed by its key (or --match) once checked, never in bulk
        unsure = [k for k in keys if "may have been sent" in ((kept.get(rt, k) or {}).get("error") or "")]
        keys = [k for k in keys if k not in unsure]
        if unsure:
            click.echo(f"left {len(unsure)} that may have been sent: check the vendor, then replay each by its key")
    replayed = sum(1 for k in keys if kept.replay(rt, k, force=True))
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


@cli.command()
@click.argument("name")
@click.option("--from", "first", default=None, help="first day, YYYY-MM-DD (default: the first of --to's month)")
@click.option("--to", "last", default=None, help="last day, YYYY-MM-DD, included (default: today)")
@click.option("--by", default=None, help="dimensions, comma-separated (default: the report's; '' for one total)")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.pass_obj
def report(settings: Settings, name: str, first: str | None, last: str | None, by: str | None, fmt: str) -> None:
    """Print a report of reports.yaml as GET /reports/NAME answers it (docs/reports.md)."""
    import reports
    from pipeline.steps.record import store
    _, ruleset = _load(settings)   # reports.yaml is checked with the rules
    known = reports.load(settings.config_dir, ruleset.rules)
    if name not in known:
        raise click.UsageError(f"no report {name!r}; reports: {', '.join(sorted(known)) or 'none (reports.yaml)'}")
    try:
        _, text = reports.answer(store(settings), known, ruleset.rules, name,
                                 {"from": first, "to": last, "by": by, "format": fmt}, datetime.now(timezone.utc).date())
    except reports.BadRequest as exc:
        raise click.UsageError(str(exc))
    click.echo(text, nl=False)


@cli.command()
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def simulate(settings: Settings, scenario: Path) -> None:
    """Run a scenario (webhooks and clock steps) against the rules with fake vendors and a virtual
    clock; print what would happen and when. Exit 1 if an `expect:` fails (docs/simulate.md)."""
    from simulate import ScenarioError
    from simulate import simulate as run_scenario
    try:
        outcome = run_scenario(scenario, settings, click.echo)
    except ConfigErrors as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except ScenarioError as exc:
        click.echo(f"scenario error: {exc}", err=True)
        sys.exit(2)
    if outcome.failures:
        sys.exit(1)


@cli.command("render-document")
@click.argument("template")
@click.option("--record", "record_file", type=click.File("rb"), required=True,
              help="the record as rules see it (JSON: name, price, fields…), e.g. saved by dry-run --fetch")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the document here: .docx, or .pdf (LibreOffice converts it)")
@click.option("--rule", "rule_name", default=None, help="the rule whose make_document options to use "
              "(default: the first rule making this template; none: the options' defaults)")
@click.option("--number", default=None, help="the number to print (default: the series' format with 0)")
@click.pass_obj
def render_document(settings: Settings, template: str, record_file, out: Path | None, rule_name: str | None,
                    number: str | None) -> None:
    """Preview a document template with a saved record, as make_document would fill it; no CRM is
    called and no number is taken. Prints the document's text; --out writes the file."""
    from documents import numbering, render
    from documents.words import as_date
    from rules import make_document
    from rules.templates import TemplateProblem, render_value
    _, ruleset = _load(settings)
    try:
        entity = json.loads(record_file.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise click.BadParameter(f"expected a JSON object (a record), found: {exc}", param_hint="--record")
    if not isinstance(entity, dict):
        raise click.BadParameter(f"expected a JSON object (a record), found {type(entity).__name__}", param_hint="--record")
    stem = template.removesuffix(".docx")
    specs = [(rule, spec) for rule in ruleset.rules for spec in (*rule.actions, *rule.otherwise)
             if spec.verb == make_document.NAME and str(spec.options.get("template", "")).removesuffix(".docx") == stem
             and rule_name in (None, rule.name)]
    if rule_name and not specs:
        raise click.UsageError(f"no rule {rule_name!r} makes the template {stem!r}")
    now = datetime.now(timezone.utc)
    raw = dict(specs[0][1].options) if specs else {"template": stem}
    try:
        rendered = render_value(raw, {"entity": entity, "now": now, "data": {}, "event": {}, "actor": None})
        rendered.pop("entity", None)
        options = make_document.Options().load(rendered)
    except (TemplateProblem, ValueError) as exc:
        raise click.UsageError(f"the options of {specs[0][0].name if specs else 'make_document'!r}: {exc}")
    path = settings.config_dir / render.TEMPLATE_DIR / f"{stem}.docx"
    if not path.is_file():
        raise click.UsageError(f"no template {render.TEMPLATE_DIR / path.name} in {str(settings.config_dir)!r}")
    for _, problem in render.check_template(path):
        click.echo(f"{path}: {problem}", err=True)
    if options["items"] == make_document.FROM_CRM:   # no CRM here: the rows come with the record
        if not isinstance(entity.get("items"), list):
            raise click.UsageError('the rule reads the rows from the CRM (items: crm); add them to the record as '
                                   '"items": [{"name": …, "quantity": …, "unit": …, "price": …}] to preview')
        options["items"] = entity["items"]
    items = options["items"] or [{"name": entity.get("name") or "", "quantity": 1, "unit": "", "price": entity.get("price")}]
    day = now.date()
    try:
        values = render.context(number=number or numbering.formatted(0, day.year, options["number_format"]),
                                date=as_date(day), language=options["language"], currency=options["currency"],
                                items=[dict(i) for i in items], vat_rate=options["vat"],
                                vat_included=options["vat_included"], entity=entity, client=options["client"],
                                company=options["company"], values=options["values"])
        content = render.render_docx(path, values)
        if out is not None and out.suffix.lower() == ".pdf":
            out.write_bytes(render.to_pdf(content, out.name))
        elif out is not None:
            out.write_bytes(content)
    except (render.DocumentError, render.ConversionFailed) as exc:
        click.echo(f"render-document: {exc}", err=True)
        sys.exit(1)
    click.echo(render.docx_text(content))
    if out is not None:
        click.echo(f"written to {out}", err=True)


# --- bulk sends (pipeline/steps/send_bulk.py, pipeline/campaigns.py) -----------------------------------

@cli.group()
def bulk() -> None:
    """Bulk sends: start one from a CSV list, see its progress, keep an opt-out."""


@bulk.command("start")
@click.argument("connection")
@click.argument("campaign_id")
@click.option("--file", "file", default=None, help="a CSV (UTF-8, header row) under the configuration directory")
@click.option("--text", required=True, help="the message; {column} is the recipient's value of that column")
@click.option("--stage", "stages", multiple=True, help="CRM list: deals in this stage (name or id; repeatable)")
@click.option("--pipeline", default=None, help="CRM list: the pipeline (funnel) of the stages")
@click.option("--tag", "tags", multiple=True, help="CRM list: deals with this tag (repeatable: every one)")
@click.option("--field", "field_values", multiple=True, metavar="NAME=VALUE",
              help="CRM list: the deal's or contact's field has this value (repeatable)")
@click.option("--active-within-days", type=float, default=None, help="CRM list: changed in the last N days")
@click.option("--inactive-for-days", type=float, default=None, help="CRM list: not changed in the last N days")
@click.option("--channel", "channels", multiple=True, metavar="CONNECTION:FIELD",
              help="a channel and the row field with its address, in the order of preference (repeatable)")
@click.option("--quiet", default=None, metavar="HH:MM-HH:MM", help="quiet hours in the recipient's zone")
@click.option("--zone", default=None, help="quiet hours: the zone (default: the channel's options → timezone)")
@click.option("--zone-field", default=None, help="quiet hours: a row field holding the recipient's zone")
@click.option("--subject", default=None, help="the e-mail subject (an email channel)")
@click.option("--opt-out-column", default=None, help="a column whose yes/так/да/1 opts the row out")
@click.option("--region", default="UA", show_default=True, help="SMS: country of numbers written without +")
@click.pass_obj
def bulk_start(settings: Settings, connection: str, campaign_id: str, file: str | None, text: str,
               stages: tuple[str, ...], pipeline: str | None, tags: tuple[str, ...], field_values: tuple[str, ...],
               active_within_days: float | None, inactive_for_days: float | None, channels: tuple[str, ...],
               quiet: str | None, zone: str | None, zone_field: str | None, subject: str | None,
               opt_out_column: str | None, region: str) -> None:
    """Queue one job per recipient (a running worker sends them); starting it again sends nobody twice.

    The list is --file (CONNECTION is the channel), or read from the CRM connection CONNECTION when
    --stage/--tag/--field/--active-within-days/--inactive-for-days is given (then --channel is needed)."""
    from connectors.base import PermanentApiError
    from pipeline.steps import send_bulk
    crm: dict | None = None
    if stages or tags or field_values or active_within_days is not None or inactive_for_days is not None:
        bad = [f for f in field_values if "=" not in f]
        if bad:
            raise click.UsageError(f"--field {bad[0]!r}: expected NAME=VALUE")
        crm = {"stage": list(stages), "pipeline": pipeline, "tags": list(tags),
               "fields": dict(f.split("=", 1) for f in field_values),
               "active_within_days": active_within_days, "inactive_for_days": inactive_for_days}
        crm = {k: v for k, v in crm.items() if v not in (None, [], {})}
    if (crm is None) == (file is None):
        raise click.UsageError("give --file, or a CRM list (--stage, --tag, --field, --active-within-days, "
                               "--inactive-for-days), not both")
    bad = [c for c in channels if ":" not in c]
    if bad:
        raise click.UsageError(f"--channel {bad[0]!r}: expected CONNECTION:FIELD, e.g. sms-ua:phone")
    chans = [{"connection": c.split(":", 1)[0], "field": c.split(":", 1)[1]} for c in channels]
    quiet_hours = None
    if quiet is not None:
        begin, _, end = quiet.partition("-")
        quiet_hours = {"from": begin.strip(), "to": end.strip(), "zone": zone, "zone_field": zone_field}
    try:
        found = send_bulk.start(_runtime(settings), connection, campaign_id, text, file=file, region=region,
                                opt_out_column=opt_out_column, crm=crm, channels=chans or None,
                                quiet_hours=quiet_hours, subject=subject)
    except PermanentApiError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"campaign {campaign_id}: {found['total']} recipient(s), {found['queued']} queued now, "
               f"{found['invalid']} without a usable address left out")


def progress_lines(found: dict) -> list[str]:
    """A campaign's status as the console and `bulk status` show it: a bar and the counts."""
    total, pending = found["total"], found["pending"]
    width, done = 30, total - pending
    bar = "#" * (width * done // total if total else width)
    lines = [f"[{bar:<{width}}] {done}/{total} ({100 * done // total if total else 100}%)",
             f"sent {found['sent']}, opted out {found['opted_out']}, failed {found['failed']}, "
             f"uncertain {found['uncertain']}, pending {pending}, invalid addresses {len(found['invalid'])}",
             f"deferred for quiet hours {found['deferred']}"
             + (f" ({found['deferred_waiting']} waiting until {found['deferred_until']})"
                if found["deferred_waiting"] else "")]
    for channel, counts in sorted(found["by_channel"].items()):
        lines.append(f"  via {channel}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for reason, count in sorted(found["reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {count} × {reason}")
    return lines


@bulk.command("status")
@click.argument("campaign_id")
@click.option("--delivery", is_flag=True, help="also read the SMS delivery reports from the provider (SMSC)")
@click.pass_obj
def bulk_status(settings: Settings, campaign_id: str, delivery: bool) -> None:
    """Progress: sent, opted out, failed (and why), uncertain (may have been sent: never resent),
    deferred for quiet hours, pending."""
    from pipeline.steps import send_bulk
    rt = _runtime(settings)
    found = send_bulk.status(rt, campaign_id)
    if found is None:
        raise click.ClickException(f"no campaign {campaign_id!r}")
    click.echo(f"campaign {campaign_id} via {', '.join(found['channels'])}, started {found['started_at']}")
    for line in progress_lines(found):
        click.echo(line)
    if delivery:
        from pipeline import campaigns
        reports = campaigns.delivery(rt, campaign_id)
        if reports is None:
            click.echo("delivery: this provider's reports cannot be read by our ids")
        else:
            click.echo("delivery: " + (", ".join(f"{k} {v}" for k, v in sorted(reports.items())) or "nothing sent yet"))


@bulk.command("list")
@click.option("--limit", default=20, show_default=True, type=int)
@click.pass_obj
def bulk_list(settings: Settings, limit: int) -> None:
    """The latest campaigns, newest first, with their progress."""
    from pipeline.steps import send_bulk
    for found in send_bulk.campaigns(_runtime(settings), limit):
        done = found["total"] - found["pending"]
        click.echo(f"{found['campaign']}  {found['started_at']}  {done}/{found['total']}  sent {found['sent']}, "
                   f"failed {found['failed']}, opted out {found['opted_out']}, deferred {found['deferred']}")


@bulk.command("opt-out")
@click.argument("connection")
@click.argument("address")
@click.option("--region", default="UA", show_default=True, help="SMS: country of a number written without +")
@click.pass_obj
def bulk_opt_out(settings: Settings, connection: str, address: str, region: str) -> None:
    """Keep ADDRESS (a phone number or a Viber id) out of every bulk send of CONNECTION from now on."""
    from pipeline.steps import send_bulk
    from sms_text import BadNumber
    rt = _runtime(settings)
    conn = rt.connections.connections.get(connection)
    if conn is None:
        raise click.ClickException(f"unknown connection {connection!r}")
    try:
        kept = send_bulk.address_of(conn.type, address, region)
    except BadNumber as exc:
        raise click.ClickException(str(exc)) from None
    added = send_bulk.opt_out(rt, connection, kept)
    click.echo(f"{kept}: {'opted out' if added else 'was already opted out'} of {connection}'s bulk sends")


@cli.command("viber-set-webhook")
@click.argument("connection")
@click.argument("public_base_url")
@click.pass_obj
def viber_set_webhook(settings: Settings, connection: str, public_base_url: str) -> None:
    """Point a Viber bot at <PUBLIC_BASE_URL>/hooks/<CONNECTION> (Viber's set_webhook; it checks the URL first)."""
    from urllib.parse import quote

    from connectors.base import ApiError
    connections, _ = _load(settings)
    conn = connections.connections.get(connection)
    if conn is None or conn.type != "viber":
        found = [name for name, c in connections.connections.items() if c.type == "viber"]
        raise click.UsageError(f"no viber connection {connection!r}; viber connections: {', '.join(found) or 'none'}")
    if not public_base_url.startswith("https://"):
        raise click.UsageError(f"PUBLIC_BASE_URL must be an https:// address Viber can reach, got {public_base_url!r}")
    client = CONNECTORS[conn.type].Client(conn)
    if client.record_only:
        raise click.UsageError(f"connection {connection!r} has no auth token (credentials → token)")
    url = f"{public_base_url.rstrip('/')}/hooks/{quote(connection, safe='')}"
    events = ["delivered", "seen", "failed", "subscribed", "unsubscribed", "conversation_started"]
    try:
        client.set_webhook(url, events)
    except ApiError as exc:
        click.echo(f"Viber refused the webhook: {exc}", err=True)
        sys.exit(1)
    click.echo(f"webhook set: {url} (events: message, {', '.join(events)})")


if __name__ == "__main__":
    cli()
