"""What a step is given (StepContext) and the guard every step starts with (require)."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors.base import ApiError, PermanentApiError, RetryableApiError, UncertainApiError
from pipeline import clock

RESEND_ROUNDS = 3   # sends of a create that keeps getting no clear answer, each read back before the next


@dataclass(frozen=True)
class StepContext:
    """What a step may use: the runtime (store, keys, clients by connection), the client of the
    action's connection, the step's idempotency key and that connection's name."""
    rt: Any
    client: Any
    key: str
    connection: str

    def once(self, name: str, call: Callable[[], Any]) -> Any:
        """One vendor call of the step, recorded under its own key (the step's key + `name`): a
        step tried again (a retry, a re-run after a crash) resumes after the last call that
        succeeded instead of repeating it (a copy is created once, then linked)."""
        key = self.rt.keys("done", f"{self.key}|{name}")
        raw = self.rt.store.get(key)
        if raw is not None:
            return json.loads(raw)
        result = call()
        self.rt.store.set(key, json.dumps(result, default=str), ex=self.rt.settings.done_ttl)
        return result

    # --- creates the vendor lets us read back: uncertain is settled by looking -------------------

    @contextmanager
    def settling(self) -> Iterator[None]:
        """Run the step's calls with its own marks: every call of such a step is a read, an
        idempotent call (a link) or a create made through `created`, which marks what it sent
        under its own key. The step's mark at the executor stays "calling" (the executor's
        `sending` is taken off the client meanwhile), so a worker that dies mid-step leaves a
        step that is run again, and its create is read back there instead of being parked."""
        outer, self.client.sending = self.client.sending, None
        try:
            yield
        finally:
            self.client.sending = outer

    def created(self, name: str, create: Callable[[], Any], find: Callable[[str], Any]) -> Any:
        """One create of the step, recorded once like `once`, that is never repeated blindly: a 5xx
        after it was sent (the vendor answered, so it has finished) is read back at once with
        `find(since)` (its id, or None); a create that got no answer, or whose worker died, is
        read back once the vendor cannot be making it any more (the client's timeout and 2 s).
        Found: recorded done with that id; not found: sent again (RESEND_ROUNDS in all, then the
        UncertainApiError goes to the executor, which parks the step)."""
        known, made = self.made_before(name, find)
        if known:
            return made
        done_key = self.rt.keys("done", f"{self.key}|{name}")
        mark = self.rt.keys("attempted", f"{self.key}|{name}")
        outer = self.client.sending
        for round_ in range(1, RESEND_ROUNDS + 1):
            at = clock.now().isoformat()
            ttl = self.rt.settings.done_ttl
            self.rt.store.set(mark, json.dumps({"at": at, "phase": "calling"}), ex=ttl)
            self.client.sending = lambda: self.rt.store.set(mark, json.dumps({"at": at, "phase": "sent"}), ex=ttl)
            try:
                result = create()
            except UncertainApiError as exc:
                if exc.status is None:   # no answer: the mark says "sent"; read back on a later try
                    raise RetryableApiError(f"{exc}; looked for at the vendor before it is sent again",
                                            retry_after=float(getattr(self.client, "timeout", 10.0)) + 2.0) from None
                self.rt.store.set(mark, json.dumps({"at": at, "phase": "answered"}), ex=ttl)
                found = find(at)
                if found is not None:
                    return self._record(done_key, mark, found)
                if round_ == RESEND_ROUNDS:
                    raise
                continue
            except ApiError:   # refused (a 429, a 4xx, a connection never made): nothing was made
                self.rt.store.delete(mark)
                raise
            finally:
                self.client.sending = outer
            return self._record(done_key, mark, result)
        raise AssertionError("unreachable")

    def made_before(self, name: str, find: Callable[[str], Any]) -> tuple[bool, Any]:
        """What an earlier run of this step made with its create `name`: (True, what it recorded),
        or (True, what reading back finds) when that run was cut short after the create was sent
        (the vendor answered 5xx, or the worker died); (False, None) when nothing was made. A
        create sent with no answer less than the client's timeout and 2 s ago is not looked for
        yet (the vendor may still be making it): RetryableApiError with that wait."""
        done_key = self.rt.keys("done", f"{self.key}|{name}")
        raw = self.rt.store.get(done_key)
        if raw is not None:
            return True, json.loads(raw)
        mark = self.rt.keys("attempted", f"{self.key}|{name}")
        before = json.loads(self.rt.store.get(mark) or "{}")
        if before.get("phase") in ("sent", "answered"):
            if before["phase"] == "sent":
                age = (clock.now() - datetime.fromisoformat(before["at"])).total_seconds()
                wait = float(getattr(self.client, "timeout", 10.0)) + 2.0 - age
                if wait > 0:   # the vendor may still be making it: look when it cannot be any more
                    raise RetryableApiError(f"{name}: sent {age:.0f} s ago with no answer; looked for then",
                                            retry_after=wait)
            found = find(before["at"])
            if found is not None:
                return True, self._record(done_key, mark, found)
        return False, None

    def _record(self, done_key: str, mark: str, result: Any) -> Any:
        with self.rt.store.pipeline() as pipe:
            pipe.set(done_key, json.dumps(result, default=str), ex=self.rt.settings.done_ttl)
            pipe.delete(mark)
            pipe.execute()
        return result


def require(ctx: StepContext, method: str, requires: frozenset[str]) -> None:
    """Refuse a step whose client lacks a verb it calls (start-up refuses most of them first)."""
    lacking = sorted(v for v in requires if not ctx.client.can(v))
    if lacking:
        raise PermanentApiError(f"connection {ctx.connection!r} cannot {method}: its client has no "
                                f"{', '.join(lacking)}")
