"""Retries inside a job: what may pass (429, 5xx, timeouts) is tried again with backoff and
jitter, never sooner than the vendor's Retry-After; RQ retries the job after that."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception

import metrics
from connectors.base import RetryableApiError, UncertainApiError

MAX_INLINE_WAIT = 60.0  # a vendor asking for a longer pause (Planfix's daily quota) fails the job instead


def with_retries(rt: Any, call: Callable[[], Any], *, repeat_uncertain: bool = True) -> Any:
    """Call, retrying what may pass, up to `settings.action_attempts` tries.

    A call that may have been done (UncertainApiError: no answer after it was sent) is tried
    again only when `repeat_uncertain` (the call is idempotent)."""
    def worth_trying(exc: BaseException) -> bool:
        return isinstance(exc, RetryableApiError) and (repeat_uncertain or not isinstance(exc, UncertainApiError))

    def give_up(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        too_long = (getattr(exc, "retry_after", None) or 0) > MAX_INLINE_WAIT
        return too_long or state.attempt_number >= rt.settings.action_attempts

    return Retrying(retry=retry_if_exception(worth_trying), wait=backoff, reraise=True, stop=give_up,
                    before_sleep=metrics.retried)(call)


def backoff(state: RetryCallState) -> float:
    """Exponential backoff with full jitter, never shorter than the vendor's Retry-After."""
    exc = state.outcome.exception() if state.outcome else None
    base = min(30.0, 0.5 * 2 ** (state.attempt_number - 1))
    wait = random.uniform(base / 2, base)
    retry_after = getattr(exc, "retry_after", None)
    return max(wait, float(retry_after)) if retry_after else wait
