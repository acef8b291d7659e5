"""Issue 17 item 7: the texts an `otherwise:` action writes carry no engine English. `reason` is
phrased in the rule's language (told from its own texts) and `missing` gives the empty fields as data."""
from __future__ import annotations

import pytest

from tests.rules.test_engine import run, stage_event

GATE = """
rules:
  - name: gate
    on: stage.changed
    if: [{{filled: ["Бюджет", "Дата зустрічі"]}}]
    do: [{{add_note: ok}}]
    otherwise:
      - add_note: "{note}"
"""


@pytest.mark.parametrize("note, text", [
    ("Угоду повернуто на етап «{{ entity.previous_stage.name }}»: {{ reason }}",
     "Угоду повернуто на етап «Новий»: не заповнено: Бюджет, Дата зустрічі"),
    ("Сделка возвращена на этап «{{ entity.previous_stage.name }}»: {{ reason }}",
     "Сделка возвращена на этап «Новий»: не заполнено: Бюджет, Дата зустрічі"),
    ("Stage move undone: {{ reason }}", "Stage move undone: not filled: Бюджет, Дата зустрічі"),
    ("Заповніть: {{ missing | join('; ') }} ({{ missing | length }})", "Заповніть: Бюджет; Дата зустрічі (2)"),
    ("{{ failed.filled | join(', ') }}", "Бюджет, Дата зустрічі"),
])
def test_reason_is_in_the_rules_language_and_missing_is_data(tmp_path, note, text):
    result = run(tmp_path, GATE.format(note=note), stage_event(fields={}))
    [action] = result.actions
    assert action.args["text"] == text
    if "reason" in note and "Stage" not in note:
        assert "not filled" not in action.args["text"]


@pytest.mark.parametrize("condition, note, text", [
    ("{stage: Оплачено}", "Етап не той, відхилено: {{ reason }}",
     "Етап не той, відхилено: етап «Бриф отримано», а не «Оплачено»"),
    ("{stage: Оплачено}", "Этап не тот: {{ reason }}", "Этап не тот: этап «Бриф отримано», а не «Оплачено»"),
    ("{tag: VIP}", "Пропущено: {{ reason }}", "Пропущено: нет тега «VIP»"),   # neither's letters: Russian
    ("{tag: VIP}", "Пропущено: {{ reason }} ", "Пропущено: нет тега «VIP» "),
    ("{field: Бюджет, gte: 1000}", "Відхилено: {{ reason }}", "Відхилено: поле «Бюджет»: 900"),
    ("{expr: \"entity.fields['Бюджет'] | int > 1000\"}", "Відхилено: {{ reason }}", "Відхилено: умову не виконано"),
    ("{empty: [Бюджет]}", "Ошибка: {{ reason }}; {{ missing | length }}", "Ошибка: заполнено: Бюджет; 0"),
])
def test_other_conditions_are_phrased_too(tmp_path, condition, note, text):
    rules = f"""
rules:
  - name: gate
    on: stage.changed
    if: [{condition}]
    do: [{{add_note: ok}}]
    otherwise:
      - add_note: "{note}"
"""
    result = run(tmp_path, rules, stage_event(fields={"Бюджет": "900"}))
    assert [a.args["text"] for a in result.actions] == [text]


def test_the_dry_run_reason_stays_the_engines(tmp_path):
    result = run(tmp_path, GATE.format(note="{{ reason }}"), stage_event(fields={}))
    assert result.skipped == [("gate", "not filled: Бюджет, Дата зустрічі")]
