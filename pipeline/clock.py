"""The pipeline's time: `clock.now()` everywhere, so that tests and simulations can set it."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # tests replace it
