"""The arrows of the layout: rules never see a vendor's connector, connectors never each other."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, ROOT


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "rules").glob("*.py")), ids=lambda p: p.name)
def test_rule_modules_import_only_the_common_model(path):
    vendor = {i for i in imports(path) if i.startswith("connectors") and not i.startswith("connectors.base")
              and i != "connectors"}
    assert not vendor, f"{path.name} imports {sorted(vendor)}"
    assert not {i for i in imports(path) if i.split(".")[0] in ("webhooks", "worker", "runtime")}


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "connectors").glob("*.py") if p.name not in ("__init__.py", "base.py")),
                         ids=lambda p: p.name)
def test_connectors_do_not_import_each_other(path):
    others = {i for i in imports(path) if i.startswith("connectors.") and not i.startswith("connectors.base")}
    assert not others, f"{path.name} imports {sorted(others)}"
    assert not {i for i in imports(path) if i.split(".")[0] in ("rules", "webhooks", "worker")}


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
