"""README's settings table is the whole truth: every environment variable the code reads is a row,
every row is read somewhere, and the defaults it gives are the code's."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NAMES = r"(?:CRMBRIDGE_[A-Z0-9_]+|REDIS_[A-Z_]+|DATABASE_URL|PROMETHEUS_MULTIPROC_DIR|HOST|PORT)"
READ_IN_PYTHON = re.compile(rf"""(?:environ|env)(?:\.get\(|\[)\s*["']({NAMES})["']""")
READ_IN_SHELL = re.compile(rf"\$\{{({NAMES})\b")
# a name kept in a constant or a table and read through it (config/settings.py's from_env, TOKEN = "…")
NAMED_IN_PYTHON = re.compile(rf"""(?:^\s*[A-Z_]+ = |\(\s*)["']({NAMES})["']""", re.M)
NOT_OURS = ("tests", "bench", ".venv", ".git")   # the test suite's and benchmarks' own variables


def table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- settings -->", 1)[1].split("<!-- settings: end -->", 1)[0]
    rows = {}
    for line in block.splitlines():
        found = re.match(r"\| `([A-Z0-9_]+)` \| (.*?) \| (.*) \|$", line)
        if found:
            rows[found[1]] = (found[2], found[3])
    return rows


def read_by_the_code() -> dict[str, str]:
    """Each variable the project's code reads, and one file that reads it."""
    read = {}
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if not path.is_file() or parts[0] in NOT_OURS:
            continue
        text = path.read_text(encoding="utf-8", errors="replace") if path.suffix in (".py", ".sh", "") else ""
        if path.suffix == ".py":
            names = READ_IN_PYTHON.findall(text) + NAMED_IN_PYTHON.findall(text)
        elif path.parent.name == "deploy":
            names = READ_IN_SHELL.findall(text)
        else:
            continue
        for name in names:
            read.setdefault(name, str(path.relative_to(ROOT)))
    return read


def test_every_variable_the_code_reads_is_in_the_table():
    rows, read = table(), read_by_the_code()
    assert len(rows) > 20 and {"REDIS_URL", "CRMBRIDGE_CONFIG", "DATABASE_URL"} <= set(read)
    missing = {name: where for name, where in read.items() if name not in rows}
    assert missing == {}, f"read by the code, not in README's settings table: {missing}"


def test_every_row_is_read_by_the_code():
    stale = sorted(set(table()) - set(read_by_the_code()))
    assert stale == [], f"in README's settings table, read by nothing: {stale}"


def settings_field(name: str) -> str | None:
    """The Settings field an environment variable sets (None: read elsewhere), found by giving it."""
    default = Settings.from_env({})
    for sample in ("7", "h:1", "x"):
        try:
            given = Settings.from_env({name: sample})
        except (ValueError, TypeError):
            continue
        changed = [f.name for f in dataclasses.fields(Settings)
                   if f.name != "environ" and getattr(given, f.name) != getattr(default, f.name)]
        if changed:   # REDIS_SENTINELS also fills in a REDIS_URL: the field named after it wins
            return next((f for f in changed if f.replace("_", "") in name.lower().replace("_", "")), changed[0])
    return None


def test_the_defaults_in_the_table_are_the_codes():
    default, checked = Settings.from_env({}), 0
    for name, (documented, _) in table().items():
        field = settings_field(name)
        value = getattr(default, field) if field else None
        if field is None or value is None or isinstance(value, (bool, Path, tuple)):
            continue   # read elsewhere, or a default that is a sentence (off, derived, beside the config)
        checked += 1
        assert f"`{value}`" in documented, f"{name}: README says {documented}, the code's default is {value!r}"
    assert checked >= 12


def test_the_check_sees_a_variable_missing_from_the_table(tmp_path, monkeypatch):
    """The scan finds what a module reads: a new variable in code and not in the table fails."""
    assert READ_IN_PYTHON.findall('x = os.environ.get("CRMBRIDGE_SOMETHING_NEW", "1")') == ["CRMBRIDGE_SOMETHING_NEW"]
    assert READ_IN_PYTHON.findall('rt.settings.environ.get("CRMBRIDGE_CONSOLE_SECRET")') == ["CRMBRIDGE_CONSOLE_SECRET"]
    assert READ_IN_SHELL.findall(': "${CRMBRIDGE_WORKERS:=2}"') == ["CRMBRIDGE_WORKERS"]
    assert NAMED_IN_PYTHON.findall('TOKEN = "CRMBRIDGE_REPORTS_TOKEN"\n  for n, k in (("CRMBRIDGE_QUEUE", "q"),') == [
        "CRMBRIDGE_REPORTS_TOKEN", "CRMBRIDGE_QUEUE"]
    assert "CRMBRIDGE_SOMETHING_NEW" not in table()


@pytest.mark.parametrize("name, field", [("CRMBRIDGE_DEDUPE_TTL", "dedupe_ttl"), ("REDIS_SENTINELS", "redis_sentinels"),
                                         ("CRMBRIDGE_RETRY_BUDGET", "retry_budget")])
def test_a_variable_is_matched_to_its_settings_field(name, field):
    assert settings_field(name) == field
