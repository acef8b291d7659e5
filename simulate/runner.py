"""Run a scenario: the real rules and the real worker jobs, on an in-process store, with a virtual
clock and fake vendors; print what happens and when, and check the scenario's expectations.

Time is `pipeline.clock.now`, set by the steps. Webhooks go through their connector's own
`parse` (the vendor's wire format; authentication is not simulated) and the intake's dedupe
into a queue that the worker's `handle_event` drains at once; a timer fires through the
worker's `fire_timer` when the clock passes it (its guard read on the fake CRM as it is then),
earliest first, and a repeating timer or a daily digest sets its next firing as in production.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import fakeredis

from config.settings import Settings
from connectors import CONNECTORS
from connectors.base import Event, RawWebhook, WebhookError, is_crm_client
from queueing import Keys, Order, TimerIndex
from rules.calendar import parse_duration
from runtime import Runtime, load_configuration
from simulate.fakes import READ_VERBS, Call, FakeClient, World, matches
from simulate.scenario import Scenario, ScenarioError, moment, stand_in_environment, webhook_body

MAX_FIRINGS = 5000   # timers fired in one scenario: a repeating timer with a tiny interval stops here

# audit entries shown, and how (the rest are shown as `what: details`)
QUIET = {"action.done", "action.skipped"}


class SimBackend:
    """The queue and timers of a simulation: events wait in a list the runner drains; timers are
    kept in the same index as production's (queueing.TimerIndex), fired by the runner's clock."""

    durable = False

    def __init__(self, store: Any, keys: Keys):
        self.store, self.keys = store, keys
        self.timers = TimerIndex(store, keys)
        self.order = Order(store, keys)
        self.queue: deque[dict[str, Any]] = deque()

    def accept(self, event: dict[str, Any], seen: str, ttl: int) -> bool:
        if not self.store.set(seen, 1, nx=True, ex=ttl):
            return False
        self.order.ticket(event)
        self.queue.append(event)
        return True

    def enqueue_event(self, event: dict[str, Any]) -> None:
        self.queue.append(event)

    def defer_event(self, event: dict[str, Any], seconds: float) -> None:
        self.queue.append(event)

    def call_at(self, when: datetime, func: str, arg: Any, key: str) -> None:
        """Periodic jobs (catch-up) are not simulated: fake CRMs lose no webhooks."""

    def schedule(self, timer: dict[str, Any]) -> None:
        self.timers.add(timer)

    def cancel(self, timer_id: str) -> bool:
        existed = self.timers.get(timer_id) is not None
        self.timers.remove(timer_id)
        return existed

    def due(self, until: datetime) -> dict[str, Any] | None:
        """The earliest pending timer due at or before `until`."""
        found = self.store.zrangebyscore(self.keys("timers"), "-inf", TimerIndex.due_by(until.timestamp()),
                                         start=0, num=1)
        return self.timers.get(found[0].decode()) if found else None

    def close(self) -> None:
        pass


@dataclass
class Outcome:
    lines: list[str]
    failures: list[str]
    calls: list[Call]
    timers: list[dict[str, Any]]   # timer events: {"what": set|fired|dropped|cancelled, "rule", "at"}


class Simulation:
    def __init__(self, scenario: Scenario, settings: Settings, out: Callable[[str], None] = print):
        self.scenario, self.out = scenario, out
        env, self.stood_in = stand_in_environment(settings.config_dir, scenario.env, dict(settings.environ))
        self.settings = Settings(config_dir=settings.config_dir, environ=env, history=False,
                                 redis_prefix="crmbridge-simulation:", action_attempts=1)
        connections, ruleset = load_configuration(self.settings)   # ConfigErrors: the caller prints them
        calendar_name = scenario.calendar or next(iter(connections.calendars), None)
        if scenario.calendar and scenario.calendar not in ruleset.calendars:
            raise ScenarioError(f"{scenario.path}: calendar: no calendar {scenario.calendar!r} in connections.yaml; "
                                f"known: {', '.join(ruleset.calendars) or 'none'}")
        self.calendar = ruleset.calendars.get(calendar_name) if calendar_name else None
        self.zone = ZoneInfo(scenario.timezone) if scenario.timezone else (self.calendar.tz if self.calendar else ZoneInfo("UTC"))
        self.now = moment(scenario.start, self.zone, f"{scenario.path}: start")
        store = fakeredis.FakeRedis()
        keys = Keys(self.settings.redis_prefix)
        self.backend = SimBackend(store, keys)
        self.rt = Runtime(self.settings, connections, ruleset, store, keys, self.backend)
        self.world = World(lambda: self.now)
        unknown = sorted(set(scenario.crm) - set(connections.connections))
        if unknown:
            raise ScenarioError(f"{scenario.path}: crm: no connection {unknown[0]!r} in connections.yaml; "
                                f"known: {', '.join(connections.connections)}")
        for name, conn in connections.connections.items():
            client = FakeClient(conn, CONNECTORS[conn.type].Client, self.world, scenario.crm.get(name))
            self.rt.clients[name] = client
            if is_crm_client(client):
                self.world.crms[name] = client
        self.lines: list[str] = []
        self.job_failures: list[str] = []
        self.timer_rules: dict[str, str] = {}
        self.timer_log: list[dict[str, Any]] = []
        self.wrote = False
        self.world.listeners.append(self._on_call)

    # --- output --------------------------------------------------------------------------------

    def when(self, at: datetime | None = None) -> str:
        return (at or self.now).astimezone(self.zone).strftime("%Y-%m-%d %H:%M %a")

    def say(self, text: str, depth: int = 1) -> None:
        line = f"{self.when()}  {'  ' * depth}{text}"
        if self.lines and self.lines[-1] == line and text.startswith("matched "):
            return   # a repeating timer's rule is audited once for its firing and once for its next one
        self.lines.append(line)
        self.out(line)

    def _on_call(self, call: Call) -> None:
        if call.verb in READ_VERBS:
            return
        self.wrote = True
        args = ", ".join(f"{k}={_short(v)}" for k, v in call.args.items() if v not in (None, "", [], {}))
        self.say(f"→ {call.connection}.{call.verb}({args})", 2)

    def _on_audit(self, entry: dict[str, Any]) -> None:
        what = entry.get("what")
        rule = entry.get("rule")
        if what == "timer.set":
            self.timer_rules[entry["timer"]] = rule
            self.timer_log.append({"what": "set", "rule": rule, "at": self.now, "fire_at": entry.get("fire_at")})
            fire = datetime.fromisoformat(entry["fire_at"])
            self.say(f"timer set     {rule!r}: fires {self.when(fire)}", 2)
        elif what == "timer.cancelled":
            name = self.timer_rules.get(entry["timer"], entry["timer"])
            self.timer_log.append({"what": "cancelled", "rule": name, "at": self.now})
            self.say(f"timer cancelled {name!r}: {entry.get('reason')}", 2)
        elif what == "timer.skipped":
            self.timer_log.append({"what": "dropped", "rule": rule, "at": self.now})
            self.say(f"dropped by its guard {rule!r}: {entry.get('reason')}", 2)
        elif what == "rule.matched":
            self.say(f"matched  {rule!r}", 2)
        elif what in ("action.done", "action.skipped"):
            if what == "action.skipped" or not self.wrote:
                self.say(f"{'skipped' if what == 'action.skipped' else 'done'} {_short(entry.get('action'), 120, quote=False)}"
                         f"{' → ' + _short(entry.get('result')) if 'result' in entry else ''}"
                         f"{': ' + entry['reason'] if entry.get('reason') else ''}", 2)
            self.wrote = False
        elif what in ("action.failed", "rule.error"):
            self.wrote = False
            self.say(f"{what} {rule!r}: {_short(entry.get('action', ''), 120, quote=False)} {entry.get('error')}".replace("  ", " "), 2)
        else:
            details = {k: v for k, v in entry.items() if k not in ("at", "event", "kind", "entity", "what")}
            self.say(f"{what} {_short(details)}", 2)

    def _on_received(self, event: Event, view: Any, derived: bool) -> None:
        how = ""
        if derived:
            how = " (first seen: entering its stage)" if (event.data or {}).get("first_seen") else " (derived from the snapshot)"
        self.say(f"event {event.kind} {event.entity}{how}", 1)

    def _on_planned(self, event: Event, plan: Any) -> None:
        for skip in plan.skipped:
            if getattr(skip, "stage", None) in ("condition",):
                self.say(f"skipped  {skip[0]!r}: {skip[1]}", 2)

    # --- running -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        import worker
        from pipeline import timers
        with self._attached(worker):
            if self.stood_in:
                self.out(f"(stand-ins for {', '.join(self.stood_in)}: no fake vendor needs them)")
            self.out(f"scenario {self.scenario.path}" + (f": {self.scenario.description.strip()}"
                                                          if self.scenario.description else ""))
            timers.ensure_schedules(self.rt)
            for n, step in enumerate(self.scenario.steps):
                where = self.scenario.where("steps", n)
                if "webhook" in step:
                    target = moment(str(step["at"]), self.zone, where) if "at" in step else self.now
                    if target < self.now:
                        raise ScenarioError(f"{where}: at: {self.when(target)} is before the simulated now "
                                            f"({self.when()}); time only goes forward")
                    self.advance_to(target)
                    self.webhook(step, where)
                elif "advance" in step:
                    self.advance_to(parse_duration(str(step["advance"])).apply(self.now, self.calendar))
                elif "at" in step:
                    target = moment(str(step["at"]), self.zone, where)
                    if target < self.now:
                        raise ScenarioError(f"{where}: at: {self.when(target)} is before the simulated now "
                                            f"({self.when()}); time only goes forward")
                    self.advance_to(target)
                else:
                    self.set_record(step["set"], where)
            pending = sorted(self.backend.timers.pending(), key=lambda t: t["fire_at"])
            self.out(f"{self.when()}  end: {len(pending)} timer{'s' if len(pending) != 1 else ''} pending")
            for t in pending:
                self.out(f"    {self.when(datetime.fromisoformat(t['fire_at']))}  {t['rule']!r} "
                         f"({t['entity']['type']}:{t['entity']['id']})")
        failures = self.job_failures + check(self.scenario, self.world.calls, self.timer_log, self.zone)
        for failure in failures:
            self.out(f"FAILED {failure}")
        if self.scenario.expect and not failures:
            self.out(f"ok: {len(self.scenario.expect)} expectation{'s' if len(self.scenario.expect) != 1 else ''} held")
        return Outcome(self.lines, failures, self.world.calls, self.timer_log)

    @contextlib.contextmanager
    def _attached(self, worker: Any) -> Iterator[None]:
        """This simulation's runtime, clock and listeners, for the time of the run (restored after)."""
        from pipeline import audit, clock
        saved = (worker._runtime, clock.now, audit.received, audit.planned)
        original_received, original_planned = audit.received, audit.planned

        def received(rt: Any, event: Event, view: Any, derived: bool = False) -> None:
            self._on_received(event, view, derived)
            original_received(rt, event, view, derived)

        def planned(rt: Any, event: Event, plan: Any) -> None:
            self._on_planned(event, plan)
            original_planned(rt, event, plan)

        handler = _AuditHandler(self._on_audit)
        logger = logging.getLogger("crmbridge.worker")
        level, propagate = logger.level, logger.propagate
        worker.install(self.rt)
        clock.now = lambda: self.now
        audit.received, audit.planned = received, planned
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
            worker._runtime, clock.now, audit.received, audit.planned = saved

    def webhook(self, step: dict[str, Any], where: str) -> None:
        import webhooks
        name = str(step["webhook"])
        conn = self.rt.connections.connections.get(name)
        if conn is None:
            raise ScenarioError(f"{where}: webhook: no connection {name!r}; known: "
                                f"{', '.join(self.rt.connections.connections)}")
        connector = CONNECTORS[conn.type]
        try:
            body, content_type = webhook_body(step, self.scenario.path.parent, connector.CONTENT_TYPES)
        except OSError as exc:
            raise ScenarioError(f"{where}: file: {exc}") from None
        raw = RawWebhook(headers={}, content_type=content_type, body=body,
                         query={str(k): str(v) for k, v in (step.get("query") or {}).items()})
        try:
            events = connector.parse(raw, conn)
        except WebhookError as exc:
            raise ScenarioError(f"{where}: the body is not a {conn.type} webhook ({exc.status}): {exc}") from None
        # the webhook arrives now: its events happened at the simulated moment
        events = [Event(**{**e.__dict__, "occurred_at": self.now.isoformat()}) for e in events]
        self.say(f"webhook {name}: {', '.join(f'{e.kind} {e.entity}' for e in events) or 'no event'}", 0)
        for event in events:
            self.world.apply(event)
        accepted, duplicates = webhooks.intake(self.rt, events)
        if duplicates:
            self.say(f"{duplicates} duplicate{'s' if duplicates != 1 else ''} dropped (seen before)", 1)
        self.drain()

    def drain(self) -> None:
        import worker
        while self.backend.queue:
            payload = self.backend.queue.popleft()
            try:
                worker.handle_event(payload)
            except Exception as exc:   # the worker would retry, then dead-letter it: show it
                self.say(f"job failed: {type(exc).__name__}: {exc}", 1)
                self.job_failures.append(f"{self.when()}: event {payload.get('kind')} {payload.get('entity')}: "
                                         f"job failed: {type(exc).__name__}: {exc}")

    def advance_to(self, target: datetime) -> None:
        """Move the clock to `target`, firing every timer due on the way at its own time."""
        import worker
        fired = 0
        while (timer := self.backend.due(target)) is not None:
            fired += 1
            if fired > MAX_FIRINGS:
                raise ScenarioError(f"{self.scenario.path}: more than {MAX_FIRINGS} timers fired before "
                                    f"{self.when(target)}; is a repeating timer's interval too small?")
            self.now = max(self.now, datetime.fromisoformat(timer["fire_at"]))
            self.say(f"timer fires {timer['rule']!r} for {timer['entity']['type']}:{timer['entity']['id']}", 0)
            self.timer_log.append({"what": "fired", "rule": timer["rule"], "at": self.now})
            try:
                worker.fire_timer(dict(timer))
            except Exception as exc:
                self.backend.timers.remove(timer["timer_id"])
                self.say(f"job failed: {type(exc).__name__}: {exc}", 1)
                self.job_failures.append(f"{self.when()}: timer {timer['rule']!r}: job failed: {type(exc).__name__}: {exc}")
            self.drain()
        self.now = max(self.now, target)

    def set_record(self, spec: Any, where: str) -> None:
        """The CRM changed with no webhook (someone edited the record): the fake CRM's record."""
        if not isinstance(spec, dict) or "connection" not in spec or "record" not in spec:
            raise ScenarioError(f"{where}: set: expected {{connection, record: lead:1, fields|stage|…}}, found {spec!r}")
        crm = self.world.crms.get(str(spec["connection"]))
        if crm is None:
            raise ScenarioError(f"{where}: set: {spec['connection']!r} is not a CRM connection; "
                                f"CRMs: {', '.join(self.world.crms) or 'none'}")
        key = str(spec["record"])
        current = crm.records.get(key)
        merged = {k: v for k, v in (current or {}).items() if k not in ("type", "id")}
        for name, value in spec.items():
            if name in ("connection", "record"):
                continue
            if name == "fields":
                merged["fields"] = {**merged.get("fields", {}), **value}
            else:
                merged[name] = value
        crm.add_record(key, merged)
        self.say(f"set {spec['connection']} {key}: {_short({k: v for k, v in spec.items() if k not in ('connection', 'record')})}", 0)


class _AuditHandler(logging.Handler):
    """The worker's audit lines (pipeline/audit.py logs each as JSON when it is made)."""

    def __init__(self, sink: Callable[[dict[str, Any]], None]):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = json.loads(record.getMessage())
        except (ValueError, TypeError):
            if record.levelno >= logging.WARNING:
                self.sink({"what": "log", "message": record.getMessage()})
            return
        if isinstance(entry, dict) and "what" in entry:
            self.sink(entry)


def _short(value: Any, limit: int = 160, quote: bool = True) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = repr(text) if isinstance(value, str) and quote else text
    text = text.replace("\\n", " ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- expectations ----------------------------------------------------------------------------

def check(scenario: Scenario, calls: list[Call], timer_log: list[dict[str, Any]], zone: ZoneInfo) -> list[str]:
    """Each expectation that did not hold, said with what happened instead."""
    failures = []
    for n, item in enumerate(scenario.expect):
        where = scenario.where("expect", n)
        after = moment(str(item["after"]), zone, where) if item.get("after") else None
        before = moment(str(item["before"]), zone, where) if item.get("before") else None

        def in_time(at: datetime) -> bool:
            return (after is None or at >= after) and (before is None or at <= before)

        if "call" in item or "no_call" in item:
            verb = str(item.get("call") or item.get("no_call"))
            found = [c for c in calls if c.verb == verb and in_time(c.at)
                     and (not item.get("connection") or c.connection == item["connection"])
                     and (not item.get("containing") or matches(str(item["containing"]), c.text()))]
            want = item.get("count")
            if "no_call" in item and found:
                failures.append(f"{where}: expected no {verb}{_filters(item)}, found {len(found)}: "
                                f"{_short(found[0].args)} at {found[0].at.astimezone(zone):%Y-%m-%d %H:%M}")
            elif "call" in item and (not found if want is None else len(found) != int(want)):
                same = [c for c in calls if c.verb == verb]
                seen = "; ".join(f"{c.at.astimezone(zone):%Y-%m-%d %H:%M} {_short(c.args, 100)}" for c in same[:3])
                failures.append(f"{where}: expected {want if want is not None else 'a'} {verb}{_filters(item)}, "
                                f"found {len(found)}" + (f" (all {verb} calls: {seen})" if same else f" (no {verb} at all)"))
        else:
            kind = next(k for k in ("timer_set", "timer_fired", "timer_dropped", "timer_cancelled") if k in item)
            rule = str(item[kind])
            found = [t for t in timer_log if t["what"] == kind[6:] and matches(rule, str(t["rule"])) and in_time(t["at"])]
            if not found:
                seen = "; ".join(f"{t['what']} {t['rule']!r} {t['at'].astimezone(zone):%Y-%m-%d %H:%M}"
                                 for t in timer_log if matches(rule, str(t["rule"])))
                failures.append(f"{where}: expected timer {kind[6:]} for {rule!r}{_filters(item)}, found "
                                + (seen or "no timer of that rule"))
    return failures


def _filters(item: dict[str, Any]) -> str:
    parts = [f"{k} {item[k]!r}" for k in ("connection", "containing", "after", "before") if item.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def simulate(path: Path, settings: Settings, out: Callable[[str], None] = print) -> Outcome:
    from simulate.scenario import load
    return Simulation(load(path), settings, out).run()
