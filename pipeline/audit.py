"""The audit trail: one JSON line per decision, to the log and to a capped Redis stream, and every
decision to the decision history (pipeline/history.py, outside Redis).

Inside a job (`batch()`), a job's entries are written in one round trip when it ends, together
with its record's order mark (the record's next event may go), so that a job costs one write for
all it has to say; then its history rows go to the history's writer thread (one transaction). Some decisions go to the history
only (`received`, `planned`: the event as the rules saw it, and every rule skipped), as they are
one per rule and event: too many for the log and the capped stream.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import metrics
from connectors.base import Event
from pipeline import clock, history
from queueing import finish_pipeline

log = logging.getLogger("crmbridge.worker")

_batch = threading.local()   # the audit entries of the job this thread runs (see batch)


def audit(rt: Any, event: Event, what: str, **details: Any) -> None:
    """One line of the audit trail: to the log, and to a capped Redis stream (at the end of the
    job, see batch)."""
    at = clock.now()
    entry = {"at": at.isoformat(), "event": event.id, "kind": event.kind,
             "entity": str(event.entity), "what": what, **details}
    text = json.dumps(entry, ensure_ascii=False, default=str)
    log.info("%s", text, extra={"audit": entry})   # CRMBRIDGE_LOG_FORMAT=json: its fields (logging_setup.py)
    metrics.decision(what, details)
    calls = metrics.take_calls()   # the vendor calls made since the last decision: an action's own
    if _kept(rt):
        kept = {**details, "calls": calls} if calls and what.startswith("action.") else details
        _history(rt, [], [history.decision_row(event, what, kept, at)])
    if getattr(_batch, "entries", None) is not None:
        _batch.entries.append((rt, text))
        return
    rt.store.xadd(rt.keys("audit"), {"entry": text}, maxlen=rt.settings.audit_max, approximate=True)


def received(rt: Any, event: Event, view: dict[str, Any] | None, derived: bool = False) -> None:
    """The event a job plans, with the record as the rules see it (history only: its body is kept
    for the history's retention, to explain and re-plan it later)."""
    metrics.event_planned(event.kind)
    if _kept(rt):
        _history(rt, [history.event_row(event, view, clock.now(), derived)], [])


def planned(rt: Any, event: Event, plan: Any) -> None:
    """Every rule the plan skipped and why (history only; rule.matched and the rest are audited
    where they happen). Rules listening to other event kinds make one row together."""
    metrics.rules_skipped(plan.skipped)
    metrics.take_calls()   # the record's reads: not an action's
    if not _kept(rt) or not plan.skipped:
        return
    at, rows, other = clock.now(), [], []
    for skip in plan.skipped:
        if getattr(skip, "listening", True) is False:
            other.append(skip[0])
            continue
        details = skip.details() if hasattr(skip, "details") else {"rule": skip[0], "reason": skip[1]}
        rows.append(history.decision_row(event, "rule.skipped", details, at))
    if other:
        rows.append(history.decision_row(event, "rules.not_listening", {"kind": event.kind, "rules": other}, at))
        log.debug("event %s: %d rule(s) listen to other events", event.id, len(other))
    _history(rt, [], rows)


def _kept(rt: Any) -> bool:
    """Does this runtime keep a decision history (CRMBRIDGE_HISTORY is not off)?"""
    return getattr(rt, "history", None) is not None


def _history(rt: Any, events: list[tuple], decisions: list[tuple]) -> None:
    """History rows: with the job's (see batch), or at once outside a job."""
    if getattr(_batch, "entries", None) is not None:
        _batch.events.extend(events)
        _batch.decisions.extend(decisions)
        _batch.rt = rt
    else:
        rt.history.write(events, decisions)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Write a job's audit entries in one round trip when it ends, failed or not (a worker killed
    in the middle loses that job's entries; its re-run writes its own), and the order marks
    `after_success` queued, only if it ended well."""
    if getattr(_batch, "entries", None) is not None:  # nested: the outer job writes them
        yield
        return
    _batch.entries, _batch.handled, _batch.events, _batch.decisions, _batch.rt = [], [], [], [], None
    metrics.calls_begin()   # the job's vendor calls, kept for the actions that make them
    failed = True
    try:
        yield
        failed = False
    finally:
        entries, _batch.entries = _batch.entries, None
        handled, _batch.handled = _batch.handled if not failed else [], None
        events, decisions, rt = _batch.events, _batch.decisions, _batch.rt or (entries[0][0] if entries else None)
        _batch.events = _batch.decisions = _batch.rt = None
        metrics.calls_end()
        try:
            if entries or handled:
                try:
                    _write(entries, handled)
                except Exception:
                    if not failed:
                        raise
                    log.exception("audit entries of a failed job not written")
        finally:
            # a failed job's decisions too (why it failed); the history never fails a job
            if rt is not None and _kept(rt) and (events or decisions):
                rt.history.submit(events, decisions)
                rt.history.maybe_prune(rt.store, rt.keys("history-prune"))


def _write(entries: list[tuple[Any, str]], handled: list[tuple[Any, dict[str, Any]]]) -> None:
    store = (entries or handled)[0][0].store
    pipe = store.pipeline(transaction=False)
    for rt, text in entries:
        pipe.xadd(rt.keys("audit"), {"entry": text}, maxlen=rt.settings.audit_max, approximate=True)
    # the record's next event may go (Order.done)
    redo = [again for rt, payload in handled if (again := rt.backend.order.done(payload, pipe))]
    finish_pipeline(pipe.execute(raise_on_error=False), redo)


def after_success(rt: Any, payload: dict[str, Any]) -> bool:
    """Queue the event's order mark with the job's audit entries; False outside a job."""
    if getattr(_batch, "handled", None) is None:
        return False
    _batch.handled.append((rt, payload))
    return True
