"""Simulated time: a scenario of webhooks and clock steps run against the real rules, on an
in-process store with a virtual clock and fake vendors (`cli.py simulate`, docs/simulate.md)."""
from simulate.fakes import READ_VERBS
from simulate.runner import Outcome, simulate
from simulate.scenario import ScenarioError

__all__ = ["READ_VERBS", "Outcome", "ScenarioError", "simulate"]
