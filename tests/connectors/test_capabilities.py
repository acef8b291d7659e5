"""The declared client interface: each connector's Client names in `capabilities` exactly the
verbs (connectors.base.VERBS, the CrmClient and ChannelClient protocols) it defines, so the set the
pipeline and the start-up checks read cannot drift from the code; every step needs only verbs;
every action method a rule plans is a verb or a step some client can run."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from connectors import CONNECTORS
from connectors.base import CRM_VERBS, VERBS, BaseClient, Connection, is_crm_client
from pipeline.observers import OBSERVERS
from pipeline.steps import STEPS
from rules import MODULES
from rules._verb_support import can
from tests.conftest import ROOT

COMPOSITE = {"send_digest"}   # a step spanning two connections (digests.py), run by the executor itself


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
def test_capabilities_name_exactly_the_verbs_the_client_defines(kind):
    client = CONNECTORS[kind].Client
    defined = {verb for verb in VERBS if callable(getattr(client, verb, None))}
    assert client.capabilities == defined, f"{kind}: declared {sorted(client.capabilities)}, defines {sorted(defined)}"
    assert client.capabilities <= VERBS
    instance = client(Connection(name=kind, type=kind))
    assert all(instance.can(verb) for verb in defined) and not instance.can("observe")


def test_the_verbs_are_not_probed_on_the_base_client():
    assert BaseClient.capabilities == frozenset() and not any(hasattr(BaseClient, verb) for verb in VERBS)


def test_a_crm_client_is_one_that_reads_and_writes_records():
    crms = {kind for kind, module in CONNECTORS.items() if is_crm_client(module.Client)}
    assert crms == {"amocrm", "bitrix24", "planfix"}
    assert all(CRM_VERBS <= CONNECTORS[kind].Client.capabilities for kind in crms)
    assert not is_crm_client(None) and not is_crm_client(object())


def test_each_step_is_registered_by_its_method_and_needs_only_verbs():
    for method, step in STEPS.items():
        assert step.METHOD == method and callable(step.run)
        assert isinstance(step.REQUIRES, frozenset) and step.REQUIRES <= VERBS, method
        assert any(can(module.Client, method, STEPS) for module in CONNECTORS.values()), f"no client can {method}"
    found = {p.stem for p in (ROOT / "pipeline" / "steps").glob("*.py") if p.stem not in ("__init__", "base")}
    assert found == {step.__name__.rsplit(".", 1)[1] for step in STEPS.values()}   # none left out


def test_observers_are_keyed_by_connector_type():
    assert set(OBSERVERS) <= set(CONNECTORS)


def planned_methods(path: Path) -> set[str]:
    """The action methods a rule module plans: the first argument of each ctx.step(…) — a string,
    the module's NAME, or a local `method` chosen between strings."""
    module = importlib.import_module(f"rules.{path.stem}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    chosen = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and [getattr(t, "id", None) for t in node.targets] == ["method"]]

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.IfExp):
            return names(node.body) | names(node.orelse)
        if isinstance(node, ast.Name) and node.id == "method":
            return set().union(*(names(value) for value in chosen))
        if isinstance(node, ast.Name) and isinstance(vars(module).get(node.id), str):
            return {vars(module)[node.id]}
        raise AssertionError(f"{path.name}: cannot tell the method of ctx.step({ast.unparse(node)}, …)")
    return set().union(*(names(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call)
                         and getattr(node.func, "attr", None) == "step" and node.args))


def test_every_planned_action_method_is_a_verb_or_a_step_that_some_client_can_run():
    methods = set().union(*(planned_methods(ROOT / "rules" / f"{m.__name__.rsplit('.', 1)[1]}.py")
                            for m in MODULES.values()))
    assert {"move_to_stage", "move_forward", "find_or_create", "send_message"} <= methods
    for method in methods - COMPOSITE:
        assert method in VERBS or method in STEPS, method
        assert any(can(module.Client, method, STEPS) for module in CONNECTORS.values()), method
