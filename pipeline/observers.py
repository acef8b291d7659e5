"""A connector learns from its own events (interim: replaced by the declared observers)."""
from __future__ import annotations

from typing import Any

from connectors.base import Event


def observe(rt: Any, event: Event) -> dict[str, Any] | None:
    if event.connection not in rt.connections.connections:
        return None
    learn = getattr(rt.client(event.connection), "observe", None)
    return learn(event) if learn else None
