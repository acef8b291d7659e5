"""lookup_field: replace what was typed into a field by the one catalog entry it starts (the
bloggers' base by the first letters of a surname; rules/lookup_field.py plans it).

Built on the CRM client's find_catalog_elements(catalog, query) → [{"id", "name", …}] (the
vendor's search; how it matches is not documented, so names are matched here), set_fields and
add_note.
"""
from __future__ import annotations

import re
from typing import Any

from connectors.base import LOOKUP_MATCHES, Entity, PermanentApiError
from pipeline.steps.base import StepContext, require

METHOD = "lookup_field"
REQUIRES = frozenset({"find_catalog_elements", "set_fields", "add_note"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)

# the notes' default texts: {field}, {value}, {catalog} and {matches} are filled in
AMBIGUOUS = "«{field}»: several entries of «{catalog}» start with «{value}»: {matches}. Type more letters."
NOT_FOUND = "«{field}»: no entry of «{catalog}» starts with «{value}»."


def run(ctx: StepContext, entity: Entity, field: str, value: str, catalog: str, match: str = "starts_with",
        ambiguous: str = AMBIGUOUS, not_found: str = NOT_FOUND) -> dict[str, Any]:
    """One entry: the field gets its full name ({"set"}). Several: a note lists them; none: a note
    says so ({"matches"}); the field is left as it is. A value that already is an entry's full name
    (crmbridge's own write, announced back) is left alone ({"kept"}), so the lookup never loops."""
    if not ctx.client.can("find_catalog_elements"):
        raise PermanentApiError(f"{ctx.connection}: this CRM has no catalogs to look {field!r} up in")
    require(ctx, METHOD, REQUIRES)
    found = ctx.client.find_catalog_elements(catalog, value)
    names = list(dict.fromkeys(str(e.get("name") or "") for e in found))
    if any(fold(n) == fold(value) for n in names):
        return {"kept": value}
    hits = catalog_matches(names, value, match)
    if len(hits) == 1:
        ctx.client.set_fields(entity, {field: hits[0]})
        return {"set": hits[0]}
    words = {"field": field, "value": value, "catalog": str(catalog), "matches": ", ".join(hits)}
    text = re.sub(r"\{(field|value|catalog|matches)\}", lambda m: words[m.group(1)],
                  ambiguous if hits else not_found)    # one pass: typed braces stay as typed
    ctx.client.add_note(entity, text)
    return {"matches": hits}


def fold(text: Any) -> str:
    """Text compared as people read it: any case, ё as е, runs of spaces as one."""
    return " ".join(str(text or "").casefold().replace("ё", "е").split())


def catalog_matches(names: list[str], typed: str, match: str = "starts_with") -> list[str]:
    """The names that `typed` starts: the whole name (starts_with: "Фамилия Имя" by the surname),
    or any of its words onwards (word_starts_with: "Имя Фамилия" too)."""
    want = fold(typed)
    if match not in LOOKUP_MATCHES:
        raise ValueError(f"match: expected one of {', '.join(LOOKUP_MATCHES)}, found {match!r}")
    if not want:
        return []
    found = []
    for name in names:
        words = fold(name).split(" ")
        tails = [" ".join(words[i:]) for i in range(len(words))] if match == "word_starts_with" else [" ".join(words)]
        if any(t.startswith(want) for t in tails):
            found.append(name)
    return found
