"""Commands for integrators and operators: validate, dry-run, timers, dead letters.

    python cli.py validate
    python cli.py dry-run quickstart-amo config/examples/quickstart/sample-webhook.form
    python cli.py timers [--entity lead:31926520]
    python cli.py dead-letters list | replay KEY | replay --all [--match TEXT]
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
@click.pass_obj
def validate(settings: Settings) -> None:
    """Check connections.yaml and every rule file; print all errors with file:line."""
    connections, ruleset = _load(settings)
    for warning in connections.warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"ok: {len(connections.connections)} connection(s), {len(ruleset.rules)} rule(s) "
               f"in {settings.config_dir}")


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
