"""pipeline.execute remembers a move_to_stage made with `undo: true` (the CRM's stage change that
follows is then marked data.undo) whatever the CRM's client returns for a move: amoCRM a dict
({"moved": False} when only_forward left the record where it was), Bitrix24 True, Planfix a
status name."""
from __future__ import annotations

import pytest

from connectors.base import Entity, Event
from rules.engine import PlannedAction
from pipeline import execute

EVENT = Event(id="quickstart-amo:undo-result", connection="quickstart-amo", source="amocrm",
              kind="stage.changed", entity=Entity("lead", "5"), data={}, raw={},
              occurred_at="2026-11-24T10:00:00+00:00")


@pytest.mark.parametrize("answer, remembered", [(True, True), ("В роботі", True), (None, True),
                                                ({"moved": True}, True), ({"moved": False}, False)])
def test_an_undo_move_is_remembered_unless_the_client_says_it_did_not_move(runtime, monkeypatch, answer,
                                                                            remembered):
    class Client:
        reports_sends = False
        sending = None
        capabilities = frozenset({"move_to_stage"})

        def can(self, verb):
            return verb in self.capabilities

        def move_to_stage(self, entity, stage, pipeline=None):
            return answer

    monkeypatch.setattr(runtime, "client", lambda name: Client())
    action = PlannedAction(rule="Gate", rule_id="gate", step=0, connection="quickstart-amo", method="move_to_stage",
                           args={"entity": {"type": "lead", "id": "5"}, "stage": "142", "undo": True},
                           key=f"{EVENT.id}|gate|{answer!r}")
    assert execute.execute(runtime, EVENT, action)
    mark = runtime.store.get(runtime.keys("undo", "quickstart-amo", "lead:5"))
    assert (mark == b"142") is remembered
