"""The arrows of the layout: no import cycle anywhere; rules never see a vendor's connector,
connectors never each other nor the pipeline; the pipeline never the door."""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, ROOT


@functools.cache
def project_modules() -> dict[str, Path]:
    """Every module of the project (packages included, tests and benchmarks not), by dotted name."""
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "bench") or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, package: str = "") -> set[str]:
    """The names a file imports, at any depth (an import inside a function is an arrow too),
    relative imports resolved against `package`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {i for i in imports(path, package) if i in modules and i != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere():
    graph = import_graph()
    assert {"worker", "webhooks", "pipeline.execute", "connectors.amocrm.client", "rules.engine"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle_through_packages_and_local_imports():
    graph = {"worker": {"pipeline.links"}, "pipeline.links": {"pipeline.execute"},
             "pipeline.execute": {"worker"}, "rules.engine": set()}
    assert cycles(graph) == [["pipeline.execute", "pipeline.links", "worker"]]


SHARED = {"connectors.base", "connectors.buttons"}   # what every connector may use: the interface, signed buttons
VENDOR_CONNECTORS = {name for name in project_modules() if name.startswith("connectors.") and name not in SHARED}


@pytest.mark.parametrize("name", sorted(n for n in project_modules() if n.startswith(("rules", "pipeline"))))
def test_rules_and_the_pipeline_reach_vendors_only_through_clients(name):
    """A rule module never imports a vendor connector (nor the worker); the pipeline only
    connectors.base and, for Telegram's client groups, the link keys (pipeline/links.py)."""
    found = import_graph()[name]
    vendor = {i for i in found if i in VENDOR_CONNECTORS}
    if name.startswith("rules"):
        assert not vendor, f"{name} imports {sorted(vendor)}"
        assert not {i for i in found if i.split(".")[0] in ("webhooks", "worker", "runtime", "pipeline")}
    else:
        assert vendor <= ({"connectors.telegram"} if name == "pipeline.links" else set()), f"{name} imports {sorted(vendor)}"
        assert not {i for i in found if i.split(".")[0] in ("webhooks", "worker")}


@pytest.mark.parametrize("name", sorted(n for n in project_modules() if n.startswith("connectors.")
                                         and n not in SHARED))
def test_connectors_do_not_import_each_other(name):
    """A vendor's connector (a module, or a package such as connectors/amocrm/) imports only
    connectors.base, connectors.buttons and its own package's modules; never the rules, the
    pipeline or the door."""
    own = name.split(".")[1]
    found = import_graph()[name]
    others = {i for i in found if i.startswith("connectors.") and i not in SHARED
              and i.split(".")[1] != own}
    assert not others, f"{name} imports {sorted(others)}"
    assert not {i for i in found if i.split(".")[0] in ("rules", "webhooks", "worker", "pipeline", "runtime")}


def test_the_default_configuration_is_the_quickstart():
    assert (ROOT / "config" / "connections.yaml").read_text() == (QUICKSTART / "connections.yaml").read_text()
    assert (ROOT / "config" / "rules" / "quickstart.yaml").read_text() == (QUICKSTART / "rules" / "quickstart.yaml").read_text()


def test_no_secret_values_in_shipped_configurations():
    for path in (ROOT / "config").rglob("connections.yaml"):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            key = line.split("#")[0].strip()
            if key.startswith(("token:", "webhook_secret:", "client_secret:", "refresh_token:")):
                assert "${" in key, f"{path}: {line.strip()}"
