"""The audit trail: one JSON line per decision, to the log and to a capped Redis stream.

Inside a job (`batch()`), a job's entries are written in one round trip when it ends, together
with its record's order mark (the record's next event may go), so that a job costs one write for
all it has to say.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from connectors.base import Event
from pipeline import clock
from queueing import finish_pipeline

log = logging.getLogger("crmbridge.worker")

_batch = threading.local()   # the audit entries of the job this thread runs (see batch)


def audit(rt: Any, event: Event, what: str, **details: Any) -> None:
    """One line of the audit trail: to the log, and to a capped Redis stream (at the end of the
    job, see batch)."""
    entry = {"at": clock.now().isoformat(), "event": event.id, "kind": event.kind,
             "entity": str(event.entity), "what": what, **details}
    text = json.dumps(entry, ensure_ascii=False, default=str)
    log.info("%s", text)
    if getattr(_batch, "entries", None) is not None:
        _batch.entries.append((rt, text))
        return
    rt.store.xadd(rt.keys("audit"), {"entry": text}, maxlen=rt.settings.audit_max, approximate=True)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Write a job's audit entries in one round trip when it ends, failed or not (a worker killed
    in the middle loses that job's entries; its re-run writes its own), and the order marks
    `after_success` queued, only if it ended well."""
    if getattr(_batch, "entries", None) is not None:  # nested: the outer job writes them
        yield
        return
    _batch.entries, _batch.handled = [], []
    failed = True
    try:
        yield
        failed = False
    finally:
        entries, _batch.entries = _batch.entries, None
        handled, _batch.handled = _batch.handled if not failed else [], None
        if entries or handled:
            try:
                _write(entries, handled)
            except Exception:
                if not failed:
                    raise
                log.exception("audit entries of a failed job not written")


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
