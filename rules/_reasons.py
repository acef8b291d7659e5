"""Why a condition failed, for the texts an `otherwise:` action writes, in the rule's language.

The engine's own reasons ("not filled: Дата первой встречи") are for the dry run and the decision
history, in English. A rule's text must not carry them: «Сделка возвращена: not filled: …» is half
English. So an `otherwise:` action's templates get
- `missing`: the field names a `filled:` condition found empty (a list; empty for other conditions),
- `failed`: the condition as written in the rule (a mapping such as {"filled": [...]}),
- `reason`: the reason phrased in the rule's language: Ukrainian, Russian or English, told from the
  letters of the rule's own texts (і ї є ґ are Ukrainian, ы э ъ ё Russian; see `language`), e.g.
  «не заповнено: Дата зустрічі», «не заполнено: Дата первой встречи», "not filled: First meeting".

A condition whose reason has no phrase here (an `expr:`, `any:` …) gives a plain «умову не виконано» /
«условие не выполнено» / "a condition does not hold": a rule that needs more says it itself.
"""
from __future__ import annotations

import re
from typing import Any

LANGUAGES = ("uk", "ru", "en")
_UK = re.compile(r"[іїєґІЇЄҐ]")
_RU = re.compile(r"[ыэъёЫЭЪЁ]")
_CYRILLIC = re.compile(r"[а-яёА-ЯЁ]")

PHRASES = {
    "filled": {"uk": "не заповнено: {names}", "ru": "не заполнено: {names}", "en": "not filled: {names}"},
    "empty": {"uk": "заповнено: {names}", "ru": "заполнено: {names}", "en": "filled: {names}"},
    "stage": {"uk": "етап «{have}», а не «{want}»", "ru": "этап «{have}», а не «{want}»",
              "en": "stage is «{have}», not «{want}»"},
    "not_stage": {"uk": "етап «{have}»", "ru": "этап «{have}»", "en": "stage is «{have}»"},
    "pipeline": {"uk": "воронка «{have}», а не «{want}»", "ru": "воронка «{have}», а не «{want}»",
                 "en": "pipeline is «{have}», not «{want}»"},
    "responsible": {"uk": "відповідальний «{have}», а не «{want}»", "ru": "ответственный «{have}», а не «{want}»",
                    "en": "responsible is «{have}», not «{want}»"},
    "tag": {"uk": "немає тегу «{want}»", "ru": "нет тега «{want}»", "en": "no tag «{want}»"},
    "field": {"uk": "поле «{name}»: {have}", "ru": "поле «{name}»: {have}", "en": "field «{name}» is {have}"},
    None: {"uk": "умову не виконано", "ru": "условие не выполнено", "en": "a condition does not hold"},
}
EMPTY = {"uk": "порожньо", "ru": "пусто", "en": "empty"}


def language(rule: Any) -> str:
    """uk, ru or en: the language of the texts the rule's actions write. Letters only one of the two
    languages has decide (і ї є ґ, or ы э ъ ё), in the texts first, then in the rest of the rule
    (its conditions' field and stage names); Cyrillic with neither is taken as Russian, texts
    without Cyrillic as English."""
    text = " ".join(_strings([spec.options for spec in (*rule.actions, *rule.otherwise)]))
    rest = repr((rule.conditions, rule.trigger.filters, rule.name))
    if not _CYRILLIC.search(text):
        return "en"
    for words in (text, rest):
        uk, ru = len(_UK.findall(words)), len(_RU.findall(words))
        if uk != ru:
            return "uk" if uk > ru else "ru"
    return "ru"


def for_templates(condition: dict, template: dict[str, Any], lang: str) -> dict[str, Any]:
    """`reason`, `missing` and `failed` for an `otherwise:` action's templates."""
    entity = template.get("entity") or {}
    fields = entity.get("fields") or {}
    kind = next(iter(condition), None)
    missing = [str(n) for n in condition.get("filled") or [] if not _filled(fields.get(n))] if kind == "filled" else []
    return {"reason": phrase(condition, entity, lang), "missing": missing, "failed": dict(condition)}


def phrase(condition: dict, entity: dict[str, Any], lang: str) -> str:
    """The failed condition in words of `lang`."""
    fields = entity.get("fields") or {}
    kind = next(iter(condition), None)
    table = PHRASES.get(kind) or PHRASES[None]
    if kind == "filled":
        names = [str(n) for n in condition["filled"] if not _filled(fields.get(n))]
        return table[lang].format(names=", ".join(names))
    if kind == "empty":
        names = [str(n) for n in condition["empty"] if _filled(fields.get(n))]
        return table[lang].format(names=", ".join(names))
    if kind in ("stage", "not_stage", "pipeline", "responsible"):
        ref = entity.get("pipeline" if kind == "pipeline" else "responsible" if kind == "responsible" else "stage")
        have = (ref.get("name") or ref.get("id")) if isinstance(ref, dict) else ref
        return table[lang].format(have=have if have not in (None, "") else EMPTY[lang], want=_listed(condition[kind]))
    if kind == "tag":
        return table[lang].format(want=condition["tag"])
    if kind == "field":
        have = fields.get(condition["field"])
        return table[lang].format(name=condition["field"], have=have if _filled(have) else EMPTY[lang])
    return PHRASES[None][lang]


def _listed(wanted: Any) -> str:
    return "», «".join(map(str, wanted)) if isinstance(wanted, list) else str(wanted)


def _filled(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [re.sub(r"\{\{.*?\}\}|\{%.*?%\}", " ", value, flags=re.S)]   # the rule's words, not its field names
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
