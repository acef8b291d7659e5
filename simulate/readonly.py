"""A real connection's client that can only read: what `cli.py dry-run --fetch` plans with.

Only the verbs in READ_VERBS (get_entity, rule_context, list_tasks, …) can be called; every other
verb raises ReadOnlyRefused before anything leaves, and `can()` answers False for it, so a step
that would write is never reached. The client keeps its metadata cache in the store it is given
(the dry run's own in-process store), never in the deployment's Redis."""
from __future__ import annotations

from typing import Any

from connectors.base import PermanentApiError
from simulate.fakes import READ_VERBS

PASSED = frozenset({"connection", "record_only", "timeout", "FIND_BY", "reports_sends"})


class ReadOnlyRefused(PermanentApiError):
    """A write asked of a read-only client."""


class ReadOnly:
    def __init__(self, client: Any):
        object.__setattr__(self, "_client", client)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self._client.capabilities) & READ_VERBS

    def can(self, verb: str) -> bool:
        return verb in READ_VERBS and self._client.can(verb)

    def __getattr__(self, name: str) -> Any:
        if name in READ_VERBS or name in PASSED:
            return getattr(self._client, name)
        raise ReadOnlyRefused(f"{self._client.connection.name}.{name}: refused, the dry run only reads")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("sending", "limiter"):
            setattr(self._client, name, value)
            return
        raise ReadOnlyRefused(f"{self._client.connection.name}: {name} cannot be set on a read-only client")
