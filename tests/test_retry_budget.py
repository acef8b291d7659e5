"""Retries inside a job last a time budget (CRMBRIDGE_RETRY_BUDGET), not a count: Retry-After
honoured while it fits, the budget shared by every call of one run, and a fresh one per run."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from config.settings import Settings
from connectors.base import PermanentApiError, RetryableApiError
from pipeline import retry
from pipeline.retry import with_retries
from ratelimit import SlotLater


def rt(budget: float, attempts: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(settings=SimpleNamespace(retry_budget=budget, action_attempts=attempts))


class Flaky:
    """Fails `failures` times with `error`, then answers "ok"; counts its calls and their times."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.times = failures, error, []

    def __call__(self) -> str:
        self.times.append(time.monotonic())
        if len(self.times) <= self.failures:
            raise self.error
        return "ok"


def test_the_budget_is_a_setting_with_a_default():
    assert Settings.from_env({}).retry_budget == 60.0
    assert Settings.from_env({"CRMBRIDGE_RETRY_BUDGET": "15"}).retry_budget == 15.0
    assert Settings.from_env({}).action_attempts is None    # no count unless one is set


def test_retries_go_on_while_the_budget_lasts_not_for_a_count(monkeypatch):
    monkeypatch.setattr(retry, "backoff", lambda state: 0.05)   # the pauses do not matter here
    call = Flaky(5, RetryableApiError("502"))                # more failures than the old 4 tries
    assert with_retries(rt(budget=30.0), call) == "ok" and len(call.times) == 6


def test_retry_after_is_honoured_while_it_fits_in_the_budget():
    call = Flaky(1, RetryableApiError("429", status=429, retry_after=0.6))
    assert with_retries(rt(budget=5.0), call) == "ok"
    assert call.times[1] - call.times[0] >= 0.6


def test_a_retry_after_longer_than_the_budget_left_fails_at_once():
    call = Flaky(1, RetryableApiError("429", status=429, retry_after=10.0))
    started = time.monotonic()
    with pytest.raises(RetryableApiError):
        with_retries(rt(budget=3.0), call)
    assert len(call.times) == 1 and time.monotonic() - started < 0.5   # RQ tries the job later


def test_one_run_of_a_job_shares_one_budget_and_the_next_run_gets_a_new_one():
    runtime = rt(budget=1.5)
    with retry.budget(runtime):
        first = Flaky(100, RetryableApiError("502"))
        started = time.monotonic()
        with pytest.raises(RetryableApiError):
            with_retries(runtime, first)
        assert time.monotonic() - started <= 1.6
        second = Flaky(100, RetryableApiError("502"))
        with pytest.raises(RetryableApiError):
            with_retries(runtime, second)
        assert len(second.times) <= 2          # little or nothing left for the run's later calls
    with retry.budget(runtime):                # a new run (a re-run after a worker was killed): a new budget
        third = Flaky(2, RetryableApiError("502"))
        assert with_retries(runtime, third) == "ok"


def test_a_count_still_caps_the_tries_when_set():
    call = Flaky(5, RetryableApiError("502"))
    with pytest.raises(RetryableApiError):
        with_retries(rt(budget=30.0, attempts=3), call)
    assert len(call.times) == 3


def test_refusals_and_far_slots_are_not_retried_inside_the_job():
    for error in (PermanentApiError("400"), SlotLater("no slot", retry_after=50.0, certain=True)):
        call = Flaky(1, error)
        with pytest.raises(type(error)):
            with_retries(rt(budget=30.0), call)
        assert len(call.times) == 1
