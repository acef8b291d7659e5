"""No test or benchmark touches a Redis database it was not given (issue 14, item 9): a database of
the shared server (127.0.0.1:6379/N) is named in code only as the default of the environment
variable that gives it (CRMBRIDGE_TEST_REDIS_URL, BENCH_REDIS_URL), or in a docstring that shows a
command; and a test that runs the benchmark hands it the test's own database."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

SHARED_DB = re.compile(r"redis://[^\s\"']*:6379/\d+")


def named_databases(path: Path) -> list[str]:
    """`file:line: url` for each string naming a shared-server database other than as an
    environment default or in a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and len(node.args) == 2:
            allowed.add(id(node.args[1]))   # os.environ.get("…_REDIS_URL", "redis://…/N")
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            allowed.add(id(node.body[0].value))   # a docstring
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed:
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {url}" for url in SHARED_DB.findall(node.value)]
    return found


def test_no_test_or_benchmark_names_a_shared_redis_database_in_code():
    files = [*sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
    assert [hit for path in files for hit in named_databases(path)] == []


def test_the_benchmark_smoke_test_runs_on_the_tests_database():
    source = (ROOT / "tests" / "test_bench_smoke.py").read_text(encoding="utf-8")
    assert '"BENCH_REDIS_URL": TEST_REDIS_URL' in source and "env=env" in source
