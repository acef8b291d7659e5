"""Run a pipeline step (pipeline/steps) the way the executor does, against a client of a test:
on a small real Runtime holding that client's connection, store and key prefix."""
from __future__ import annotations

from typing import Any

from config.connections import Connections
from config.settings import Settings
from pipeline.steps import STEPS, StepContext
from queueing import Keys
from runtime import Runtime


def step_context(client: Any, key: str = "test-step") -> StepContext:
    """The StepContext the executor would give a step of `client`'s connection."""
    name = client.connection.name
    rt = Runtime(settings=Settings(), connections=Connections(connections={name: client.connection}), ruleset=None,
                 store=client.store, keys=Keys(client.key_prefix), backend=None, clients={name: client})
    return StepContext(rt, client, key, name)


def run_step(method: str, client: Any, *args: Any, step_key: str = "test-step", **kwargs: Any) -> Any:
    """STEPS[method].run(StepContext(…), …), as the executor calls it (which names every argument).
    `step_key`: the step's idempotency key (another one is another step; the same one, a re-run)."""
    return STEPS[method].run(step_context(client, step_key), *args, **kwargs)
