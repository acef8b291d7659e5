"""The console's pages. Reads come from the decision history (pipeline/history.py) and Redis (dead
letters, timers, catch-up marks); the explanations are those cli.py prints (explaining.py: timeline, explain, replay);
actions are the operator's functions the CLI uses (pipeline/dead_letters.py, pipeline/operate.py)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

import click
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

import explaining
import reports
from connectors.base import Event
import console.queries as queries
import console.charts as charts
from pipeline import dead_letters, operate
from pipeline.steps.record import store as facts_store
from pipeline.history import record_of, redact
from ratelimit import configured
from rules import MODULES
from rules.engine import plan

WHERE = "console"   # how the audit names an action taken here


def add_pages(bp: Blueprint, rt: Any, scrub: tuple[str, ...]) -> None:
    """The console's views on the blueprint (rt: the app's runtime)."""
    rules = {r.name: r for r in rt.ruleset.rules}
    config_dirs = {f"{rt.settings.config_dir}{os.sep}", f"{rt.settings.config_dir.resolve()}{os.sep}"}

    @bp.app_template_filter("short")
    def short(text: Any) -> str:
        """Rule files named from the configuration directory (rules/x.yaml:3), as an integrator knows them."""
        text = str(text)
        for base in config_dirs:
            text = text.replace(base, "")
        return text

    def history():
        if rt.history is None:
            abort(404, "the decision history is off (CRMBRIDGE_HISTORY=off): nothing is kept to show")
        return rt.history

    def since_arg(default: str = "14d") -> tuple[str, datetime]:
        text = request.args.get("since") or default
        try:
            return text, explaining._since(text)
        except click.BadParameter as exc:
            abort(400, exc.format_message())

    @bp.app_template_filter("when")
    def when(moment: Any) -> str:
        if isinstance(moment, str):
            try:
                moment = datetime.fromisoformat(moment)
            except ValueError:
                return moment
        if not isinstance(moment, datetime):
            return "" if moment is None else str(moment)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    bp.add_app_template_filter(explaining.condition_text, "condition")

    @bp.app_template_filter("pretty")
    def pretty(value: Any) -> str:
        return json.dumps(redact(value), ensure_ascii=False, indent=2, default=str)

    @bp.after_request
    def blank_secrets(response):
        """The last guard: no configured secret value leaves in a page, whatever put it there."""
        if response.mimetype == "text/html" and not response.direct_passthrough:
            text = response.get_data(as_text=True)
            for value in scrub:
                text = text.replace(value, "(secret)")
            response.set_data(text)
        return response

    @bp.get("/")
    def home():
        pending = rt.backend.timers.pending()
        letters = dead_letters.entries(rt)
        recent = queries.recent_events(rt.history, limit=10) if rt.history else []
        return render_template("console/home.html", timers=len(pending), dead=len(letters), recent=recent,
                               history_on=rt.history is not None)

    @bp.get("/search")
    def search():
        q = (request.args.get("q") or "").strip()
        if not q:
            return redirect(url_for("console.home"))
        if ":" in q:
            return redirect(url_for("console.record", record=q))
        found = queries.records_with_id(history(), q)
        if len(found) == 1:
            return redirect(url_for("console.record", record=found[0]))
        return render_template("console/search.html", q=q, found=found)

    @bp.get("/records/<path:record>")
    def record(record: str):
        connection = request.args.get("connection") or None
        since_text, since = since_arg()
        entries = history().timeline(record, connection, since)
        names = [n for n in dict.fromkeys(e.rule for e in entries if e.what != "event" and e.rule)]
        explained = [(name, rules.get(name), explaining.explain_rule(entries, name, rules.get(name), record, since))
                     for name in names]
        letters = {k: v for k, v in dead_letters.entries(rt).items() if _record_of_payload(v.get("payload")) == record}
        return render_template("console/record.html", record=record, connection=connection, since=since_text,
                               groups=queries.group_timeline(entries), explained=explained,
                               why_not=lambda e: _why_not(e, rules), timers=rt.backend.timers.pending(record),
                               dead=letters, events=sum(1 for e in entries if e.what == "event"),
                               connections=sorted(rt.connections.connections))

    @bp.get("/events")
    def events():
        f = {k: (request.args.get(k) or None) for k in ("connection", "kind", "outcome", "rule")}
        if f["outcome"] and f["outcome"] not in queries.OUTCOMES:
            abort(400, f"outcome: expected one of {', '.join(queries.OUTCOMES)}")
        found = queries.recent_events(history(), **f, limit=100)
        return render_template("console/events.html", found=found, f=f, outcomes=queries.OUTCOMES,
                               kinds=queries.kinds(history()), rules=sorted(rules),
                               connections=sorted(rt.connections.connections))

    @bp.get("/events/<path:event_id>")
    def event(event_id: str):
        kept = history().event(event_id)
        if kept is None:
            abort(404, f"no kept event {event_id!r} (older than the retention, or never planned)")
        decisions = [e for e in history().timeline(record_of(Event.from_dict(kept["event"])))
                     if e.event_id == event_id and e.what != "event"]
        replanned = None
        if request.args.get("replan"):
            ev = Event.from_dict(kept["event"])
            entity = kept.get("record") or {**ev.data, "type": ev.entity.type, "id": ev.entity.id}
            replanned = explaining.print_plan(plan(ev, entity, rt.ruleset, datetime.now(timezone.utc), MODULES))
        return render_template("console/event.html", event_id=event_id, kept=kept, decisions=decisions,
                               why_not=lambda e: _why_not(e, rules), replanned=replanned)

    @bp.get("/dead-letters")
    def dead_list():
        letters = dead_letters.entries(rt)
        return render_template("console/dead_letters.html",
                               letters=[(k, v, _record_of_payload(v.get("payload"))) for k, v in letters.items()])

    @bp.get("/dead-letters/<path:key>")
    def dead_show(key: str):
        entry = dead_letters.get(rt, key)
        if entry is None:
            abort(404, f"no dead letter {key!r}: replayed, discarded or expired")
        return render_template("console/dead_letter.html", key=key, entry=entry,
                               record=_record_of_payload(entry.get("payload")),
                               unsure="may have been sent" in (entry.get("error") or ""),
                               outlived=dead_letters.outlived(rt, entry))

    @bp.post("/dead-letters/<path:key>/replay")
    def dead_replay(key: str):
        try:
            replayed = dead_letters.replay(rt, key, force=request.form.get("force") == "1")
        except dead_letters.MarksGone as exc:
            flash(f"Not replayed: {exc}.")
            return redirect(url_for("console.dead_show", key=key))
        if not replayed:
            abort(404, f"no dead letter {key!r}: replayed, discarded or expired")
        flash(f"Dead letter {key} queued again; steps that completed before are skipped.")
        return redirect(url_for("console.dead_list"))

    @bp.post("/dead-letters/<path:key>/discard")
    def dead_discard(key: str):
        if not dead_letters.discard(rt, key):
            abort(404, f"no dead letter {key!r}: replayed, discarded or expired")
        flash(f"Dead letter {key} discarded.")
        return redirect(url_for("console.dead_list"))

    @bp.get("/timers")
    def timer_list():
        entity = request.args.get("entity") or None
        pending = sorted(rt.backend.timers.pending(entity), key=lambda t: t["fire_at"])
        return render_template("console/timers.html", pending=pending, entity=entity)

    @bp.post("/timers/<path:timer_id>/<any(cancel, fire):what>")
    def timer_operate(timer_id: str, what: str):
        act = operate.cancel_timer if what == "cancel" else operate.fire_timer_now
        timer = act(rt, timer_id, f"{WHERE}, {request.remote_addr}")
        if timer is None:
            abort(404, f"no pending timer {timer_id!r}: fired, cancelled or replaced meanwhile")
        flash(f"Timer {timer_id} cancelled (was due {when(timer['fire_at'])})." if what == "cancel" else
              f"Timer {timer_id} fires now (was due {when(timer['fire_at'])}); a worker runs it, its guard checked.")
        return redirect(request.form.get("back") if (request.form.get("back") or "").startswith("/console/")
                        else url_for("console.timer_list"))

    @bp.get("/connections")
    def connections():
        rows, letters = [], list(dead_letters.entries(rt).values())
        for name, conn in sorted(rt.connections.connections.items()):
            rows.append({"name": name, "type": conn.type, "record_only": conn.record_only,
                         "calendar": conn.calendar, "limit": _limit_text(rt, name),
                         "catch_up": _catch_up(rt, name),
                         "last_event": queries.last_event(rt.history, name) if rt.history else None,
                         "last_error": queries.last_error(rt.history, name) if rt.history else None,
                         "dead": sum(1 for v in letters if _letter_connection(v, rt.connections.connections) == name)})
        return render_template("console/connections.html", rows=rows, history_on=rt.history is not None)

    @bp.get("/campaigns")
    def campaign_list():
        from pipeline.steps import send_bulk
        return render_template("console/campaigns.html", found=send_bulk.campaigns(rt, 50), shown=None)

    @bp.get("/campaigns/<campaign>")
    def campaign_show(campaign: str):
        from pipeline.steps import send_bulk
        found = send_bulk.status(rt, campaign)
        if found is None:
            abort(404, f"no campaign {campaign!r}")
        return render_template("console/campaigns.html", found=[found], shown=campaign)

    @bp.get("/rules")
    def rule_list():
        return render_template("console/rules.html", rules=rt.ruleset.rules, config_dir=str(rt.settings.config_dir))

    def known_reports() -> dict[str, Any]:
        return reports.load(rt.settings.config_dir, rt.ruleset.rules)   # checked at start-up: loads cleanly

    def drawn(name: str) -> dict[str, Any]:
        """A report's rows for the page's parameters (reports/__init__: the same as GET /reports/<name>),
        and its chart."""
        known = known_reports()
        if name not in known:
            abort(404, f"unknown report {name!r}; reports: {', '.join(sorted(known)) or 'none (no reports.yaml)'}")
        report = known[name]
        args = {k: request.args.get(k) for k in ("from", "to", "by")}
        try:
            first, last, by, _ = reports.parameters(report, rt.ruleset.rules, args, datetime.now(timezone.utc).date())
        except reports.BadRequest as exc:
            abort(400, str(exc))
        try:
            columns, rows = reports.compute(facts_store(rt.settings), report, first, last, by)
        except Exception as exc:   # sqlite3.Error, psycopg.Error: the database, not the request
            abort(503, f"the facts store did not answer: {type(exc).__name__}: {exc}")
        series = [*report.metrics, *(["plan"] if report.plan else [])]
        return {"report": report, "first": first, "last": last, "by": by, "columns": columns, "rows": rows,
                "chart": charts.chart(by, series, rows, f"{report.title}, {first} – {last}")}

    @bp.get("/reports")
    def report_list():
        return render_template("console/reports.html", reports=list(known_reports().values()))

    @bp.get("/reports/<name>")
    def report_chart(name: str):
        asked = {k: request.args[k] for k in ("from", "to", "by") if k in request.args}
        return render_template("console/report.html", **drawn(name), args=asked)

    @bp.get("/reports/<name>/chart.svg")
    def report_svg(name: str):
        """The chart alone, for a wiki page or a mail (the console's token: Authorization: Bearer)."""
        return str(drawn(name)["chart"]), 200, {"Content-Type": "image/svg+xml; charset=utf-8"}


def _why_not(entry: Any, rules: dict[str, Any]) -> str | None:
    """Beside a skipped rule: what would make it act (cli.py explain's words)."""
    if entry.what not in ("rule.skipped", "timer.skipped") or not isinstance(entry.detail, dict):
        return None
    return explaining.what_would_act(rules.get(entry.rule), entry.detail)


def _record_of_payload(payload: Any) -> str | None:
    """The record a dead letter's event (or timer's event) is about."""
    if not isinstance(payload, dict):
        return None
    try:
        return record_of(Event.from_dict(payload["event"] if "event" in payload else payload))
    except Exception:   # an old or partial payload: shown without its record
        return None


def _letter_connection(letter: dict[str, Any], names: Any) -> str | None:
    """The connection a dead letter is about: the one its failed step acts on (its error starts
    with the step, `quickstart-bot.send_message(...)`), else its event's."""
    error = letter.get("error") or ""
    acted_on = next((n for n in names if error.startswith(f"{n}.")), None)
    payload = letter.get("payload") or {}
    return acted_on or payload.get("connection") or (payload.get("event") or {}).get("connection")


def _limit_text(rt: Any, name: str) -> str:
    conn = rt.connections.connections[name]
    try:
        client = rt.client(name)
        limit = configured(conn.options, "own", (float(client.rate_per_second),
                                                 float(client.burst or client.rate_per_second)))
    except Exception as exc:   # a client that cannot be made shows why, the page still loads
        return f"unknown ({type(exc).__name__})"
    return f"{limit.rate:g}/s, burst {limit.burst:g}, margin {limit.margin:.0%}"


def _catch_up(rt: Any, name: str) -> str:
    from pipeline import catch_up
    seconds = catch_up.every(rt, name)
    if not seconds:
        return "off"
    mark = rt.store.get(rt.keys("catch-up", name))
    last = f"next look asks for changes since {mark.decode()}" if mark else "no look yet"
    return f"every {seconds / 60:g} min; {last}"
