"""Rule modules, by the verb a rule file writes under `do:`.

Every module in this package that defines `NAME`, `Options` and `plan` is a verb; the
engine's own modules (engine, conditions, files, templates, calendar) define none of them.
A new verb is a new file here, nothing else to register.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_INFRASTRUCTURE = {"engine", "conditions", "files", "templates", "calendar"}


def _discover() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        if info.name in _INFRASTRUCTURE or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"rules.{info.name}")
        if all(hasattr(module, attr) for attr in ("NAME", "Options", "plan")):
            found[module.NAME] = module
    return found


MODULES = _discover()
