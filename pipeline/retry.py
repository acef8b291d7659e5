"""Retries inside a job: what may pass (429, 5xx, timeouts) is tried again with backoff and
jitter, never sooner than the vendor's Retry-After, for as long as the job's retry budget lasts
(`settings.retry_budget` seconds per run of a job, CRMBRIDGE_RETRY_BUDGET); RQ retries the job
after that. The budget is per run: a worker killed mid-job leaves the re-run a whole budget,
while RQ's own retries count the job's failures."""
from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception

import metrics
from connectors.base import RetryableApiError, UncertainApiError
from ratelimit import SlotLater

# the monotonic time the running job's retries must end by (None: outside a job, each call has a budget)
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("crmbridge_retry_deadline", default=None)


@contextmanager
def budget(rt: Any) -> Iterator[None]:
    """One run of a job: every with_retries inside shares `settings.retry_budget` seconds of waiting
    and trying (a nested run keeps the outer one's)."""
    if _DEADLINE.get() is not None:
        yield
        return
    token = _DEADLINE.set(time.monotonic() + float(rt.settings.retry_budget))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def with_retries(rt: Any, call: Callable[[], Any], *, repeat_uncertain: bool = True) -> Any:
    """Call, retrying what may pass while the retry budget lasts (and, if `settings.action_attempts`
    is set, up to that many tries). The first try is always made; a retry whose wait (backoff, or
    the vendor's Retry-After) would end past the budget is not: the error is raised, and RQ tries
    the job again later.

    A call that may have been done (UncertainApiError: no answer after it was sent) is tried
    again only when `repeat_uncertain` (the call is idempotent). A rate-limit slot too far away
    (ratelimit.SlotLater) is never waited for here: the job is deferred (pipeline/resume.py)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        deadline = time.monotonic() + float(rt.settings.retry_budget)
    attempts = rt.settings.action_attempts

    def worth_trying(exc: BaseException) -> bool:
        return (isinstance(exc, RetryableApiError) and not isinstance(exc, SlotLater)
                and getattr(exc, "retry_here", True)   # pipeline/execute.PrimaryChanged: the job's next run
                and (repeat_uncertain or not isinstance(exc, UncertainApiError)))

    def give_up(state: RetryCallState) -> bool:
        out_of_time = time.monotonic() + state.upcoming_sleep > deadline
        return out_of_time or (attempts is not None and state.attempt_number >= attempts)

    return Retrying(retry=retry_if_exception(worth_trying), wait=backoff, reraise=True, stop=give_up,
                    before_sleep=metrics.retried)(call)


def backoff(state: RetryCallState) -> float:
    """Exponential backoff with full jitter, never shorter than the vendor's Retry-After."""
    exc = state.outcome.exception() if state.outcome else None
    base = min(30.0, 0.5 * 2 ** (state.attempt_number - 1))
    wait = random.uniform(base / 2, base)
    retry_after = getattr(exc, "retry_after", None)
    return max(wait, float(retry_after)) if retry_after else wait
