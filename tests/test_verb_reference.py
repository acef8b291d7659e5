"""docs/rules.md's verb table is the generated one (`python -m verb_reference`): it lists every verb
with each connector's support as the clients declare it, and marks no shipped verb as planned."""
from __future__ import annotations

import re

import verb_reference
from rules import MODULES


def rows() -> dict[str, list[str]]:
    table = verb_reference.table().splitlines()
    head = [c.strip() for c in table[0].strip("|").split(" | ")]
    found = {}
    for line in table[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        found[cells[0].strip("`")] = dict(zip(head, cells))
    return found


def test_docs_rules_md_has_the_generated_table():
    text = verb_reference.DOC.read_text(encoding="utf-8")
    assert verb_reference.rewrite(text) == text, "docs/rules.md is out of date: run `python -m verb_reference`"


def test_every_verb_is_listed_and_no_shipped_verb_is_marked_planned():
    assert set(rows()) == set(MODULES)
    text = verb_reference.DOC.read_text(encoding="utf-8")
    planned_rows = [line for line in text.splitlines() if line.startswith("| `") and "🔜" in line]
    assert planned_rows == []


def test_support_follows_the_clients_capabilities():
    table = rows()
    assert (table["delete_entity"]["amoCRM"], table["delete_entity"]["Bitrix24"]) == ("—", "✅")
    assert (table["notify"]["amoCRM"], table["notify"]["Bitrix24"], table["notify"]["Planfix"]) == ("—", "✅", "—")
    assert table["create_task"]["Planfix"] == "✅ (not `bind`)" and table["create_task"]["Bitrix24"] == "✅"
    assert table["move_to_stage"]["Planfix"] == "✅ (not `only_forward`)"
    assert table["send_message"]["other connections"] == "telegram, viber" and table["send_message"]["amoCRM"] == "—"
    assert table["record"]["other connections"] == "any"   # no vendor call: any connection's events
    assert verb_reference.methods(MODULES["move_to_stage"]) == ["move_forward", "move_to_stage"]


def test_the_check_fails_on_a_table_edited_by_hand(tmp_path, monkeypatch, capsys):
    page = tmp_path / "rules.md"
    page.write_text(verb_reference.DOC.read_text(encoding="utf-8").replace("| `notify` |", "| `notify` | 🔜 |", 1),
                    encoding="utf-8")
    monkeypatch.setattr(verb_reference, "DOC", page)
    assert verb_reference.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert verb_reference.main([]) == 0 and verb_reference.main(["--check"]) == 0
