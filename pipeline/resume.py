"""An event deferred on a rate limit goes on later where it left off, with the same plan.

A worker does not sleep on one chat's, group's or account's limit while other work is ready: a
step whose slot is more than DEFER_AFTER seconds away raises ratelimit.SlotLater before anything
leaves, and the event's job is queued again for when the slot comes (RQ's `enqueue_in`, through
queueing.RQBackend.defer_event). The re-run must not think again: the record's snapshot was kept
by the first run, so reading it again would find no difference and the changes derived from the
snapshot (a Bitrix24 stage move, changed fields) would be lost; and a rule's plan may depend on
the time. So the deferred job carries its progress: the changes still to act on (the event's own
and the derived ones, with the record as the rules saw it), the outcome of those finished, and the
plan of the change it stopped in. Its steps already done are skipped by their done marks
(pipeline/execute.py); the step that got no slot dropped its attempted mark (nothing was sent).

An event with changes derived from the snapshot also keeps them in Redis (`progress:<event id>`,
PROGRESS_TTL) before its first step, for a re-run after its worker was killed.

While deferred, the event holds its record's turn (queueing.Order.held): the record's later
events wait for it, and are not let go after the order gap timeout as if it were missing.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from connectors.base import Event
from pipeline.audit import audit
from pipeline.snapshot import Change, enrich_changes
from ratelimit import SlotLater, deferring
from rules.engine import Plan, PlannedAction

DEFER_AFTER = 1.5          # seconds a step may wait for a slot before its event is deferred: more than
                           # one window of a per-second limit (1.1 s with the margin), less than any other
UNSURE_DELAY = 1.0         # a wait on calls still in flight ends with their answers: look again this soon
MAX_DELAY = 120.0          # a deferral is never longer (a slot further away is looked for again then)
DEFERRED_FOR_AT_MOST = 15 * 60   # seconds of deferrals, then the event waits in the worker (and may fail)
PROGRESS_TTL = 3600        # seconds an event's kept changes wait for a re-run (a dead worker's job: ~25 s; RQ's retries: minutes)


@contextmanager
def patience(rt: Any, payload: dict[str, Any]) -> Iterator[None]:
    """The job's rate-limit patience: DEFER_AFTER seconds when its event can be deferred (a durable
    queue; not deferred for longer than DEFERRED_FOR_AT_MOST already), else the limiter's wait."""
    since = payload.get("deferred_since")
    durable = getattr(rt.backend, "durable", False)
    fresh = since is None or time.time() - float(since) < DEFERRED_FOR_AT_MOST
    with deferring(DEFER_AFTER if durable and fresh else None):
        yield


@dataclass
class Progress:
    """How far an event got: its changes, the outcomes of the first `len(finished)` of them, and
    the plan of the next one if it was made (its steps are run, the rules are not asked again)."""
    changes: list[Change]
    finished: list[tuple[str, Any]] = field(default_factory=list)
    plan: Plan | None = None
    # not yet added to the changes' views: {"entity": the record as read, "needs": [...]} (snapshot.enrich_changes)
    enrich: dict[str, Any] | None = None

    def enriched(self, rt: Any) -> None:
        """Add what the rules read besides the record, once (a rate limit there raises SlotLater
        with the changes still kept here: the event is deferred and enriched on its re-run)."""
        if self.enrich is not None:
            enrich_changes(rt, self.changes, self.enrich["entity"], set(self.enrich["needs"]))
            self.enrich = None

    def pending(self) -> list[Change]:
        return self.changes[len(self.finished):]

    def finish(self, change: Change, outcome: Any) -> None:
        self.finished.append((change.event.kind, outcome))
        self.plan = None

    @property
    def answered(self) -> dict[str, Any]:
        return dict(self.finished)

    def to_dict(self) -> dict[str, Any]:
        state = {"changes": [{"event": c.event.to_dict(), "view": c.view, "derived": c.derived,
                              "seen_before": c.seen_before} for c in self.changes],
                 "finished": [list(f) for f in self.finished],
                 "plan": None if self.plan is None else [a.__dict__ for a in self.plan.actions],
                 "enrich": self.enrich}
        return json.loads(json.dumps(state, ensure_ascii=False, default=str))

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Progress":
        changes = [Change(Event.from_dict(c["event"]), c["view"], derived=c["derived"], seen_before=c["seen_before"])
                   for c in state["changes"]]
        plan = None if state.get("plan") is None else Plan(actions=[PlannedAction(**a) for a in state["plan"]])
        return cls(changes, [tuple(f) for f in state.get("finished", [])], plan, state.get("enrich"))


def saved(payload: dict[str, Any], kept: bytes | None = None) -> Progress | None:
    """The progress a deferred event carries, or the one an earlier run kept (`kept`, read with
    the turn's check); None: the event starts from the beginning."""
    state = payload.get("resume") or (json.loads(kept) if kept else None)
    return Progress.from_dict(state) if state else None


def of(record: Any) -> Progress:
    """A record's progress before anything was done: its changes, enrichment pending if the rules need some."""
    return Progress(record.changes, enrich={"entity": record.entity, "needs": sorted(record.needs)}
                    if record.needs else None)


def keep(rt: Any, event_id: str, progress: Progress) -> None:
    """Before the first step, keep an event's changes when some were derived from the record's
    snapshot: a worker killed mid-event leaves its re-run those changes, which a fresh read
    could no longer see (the snapshot was kept). Only then: one round trip, for those events."""
    if len(progress.changes) > 1:
        rt.store.set(rt.keys("progress", event_id), json.dumps(progress.to_dict(), ensure_ascii=False),
                     ex=PROGRESS_TTL)


def forget(rt: Any, event_id: str, progress: Progress) -> None:
    """The event is done: drop the changes `keep` kept (else they expire after PROGRESS_TTL)."""
    if len(progress.changes) > 1:
        rt.store.delete(rt.keys("progress", event_id))


def defer(rt: Any, payload: dict[str, Any], progress: Progress | None, exc: SlotLater) -> dict[str, Any]:
    """Queue the event again for when its slot comes, with its progress; its record's later events
    wait for it. What the job answers."""
    wait = float(exc.retry_after or UNSURE_DELAY)
    delay = min(MAX_DELAY, wait if exc.certain else min(wait, UNSURE_DELAY)) + random.uniform(0.0, 0.25)
    if progress is not None:
        payload["resume"] = progress.to_dict()
    payload.setdefault("deferred_since", time.time())
    payload["rate_defers"] = payload.get("rate_defers", 0) + 1
    audit(rt, Event.from_dict(payload), "event.deferred", reason=str(exc), seconds=round(delay, 2),
          defers=payload["rate_defers"])
    rt.backend.defer_event(payload, delay, hold=True)
    return {"deferred": True, "rate_limited": True, "seconds": round(delay, 2)}
