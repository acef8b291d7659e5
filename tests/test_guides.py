"""Every shipped example's guide names what its configuration needs: for each
config/examples/<name>/ with a guide docs/playbooks/<name>.md, the fields, stages and pipelines,
users, chats and environment variables that its rules and connections.yaml use all appear in the
guide's set-up text. An integrator sets up the CRM from the guide alone; a name missing there is a
rule that silently never matches. Examples are found by walking the folder: a new one with a guide
is checked without a change here.

Also: no value that only the deployment knows (a chat id, a phone extension, an address) has a
made-up default in an example's connections.yaml; a missing one stops the start with file:line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.connections import load_connections
from config.loader import ConfigErrors

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "config" / "examples"
GUIDES = ROOT / "docs" / "playbooks"
WITH_GUIDES = sorted(p.name for p in EXAMPLES.iterdir() if (GUIDES / f"{p.name}.md").exists())

FIELD_KEYS = {"field", "filled", "copy_fields", "order_field", "has_field"}
FIELD_MAPS = {"fields", "set_fields"}            # a mapping whose keys are fields
STAGE_KEYS = {"stage", "not_stage", "status"}
USER_KEYS = {"responsible", "executor", "user", "users", "assignee", "assignees", "auditor", "manager"}
SPECIAL = {"previous", "next", "staff", "chat_members", "forward", "backward", "any", "team"}
TEMPLATE_FIELD = re.compile(r"""fields(?:\.get\(|\[)\s*['"]([^'"]+)['"]""")
FIELD_GROUP = re.compile(r"""['"]([^'"{}]+\{i\}[^'"]*)['"]""")
FORM_ANSWER = re.compile(r"""answers\[\s*['"]([^'"]+)['"]\s*\]""")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# a value only the deployment knows: never a made-up default (a chat id, an extension, an address, a URL)
DEPLOYMENT_VALUE = re.compile(r"(CHAT|EXTENSION|_URL$|FROM$|_HOST$|EMAIL|PHONE|USER_ID)")
# defaults that are the vendor's or the protocol's own, not the deployment's
VENDOR_DEFAULTS = {"ZADARMA_API_URL": "https://api.zadarma.com"}


def norm(text: str) -> str:
    """Compared as a reader would: any case, ё as е, any quotes, one space."""
    text = text.lower().replace("ё", "е")
    text = re.sub(r"[«»“”„\"'`*]", "", text)
    return re.sub(r"\s+", " ", text)


def literal(value: Any) -> str | None:
    return value if isinstance(value, str) and "{{" not in value and "{%" not in value and value.strip() else None


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class Names:
    """What an example's configuration names, by kind."""

    def __init__(self) -> None:
        self.fields: set[str] = set()
        self.stages: set[str] = set()
        self.pipelines: set[str] = set()
        self.users: set[str] = set()
        self.chats: set[str] = set()
        self.env: set[str] = set()
        self.questions: set[str] = set()

    def kinds(self) -> dict[str, set[str]]:
        return {"field": self.fields, "stage": self.stages, "pipeline": self.pipelines, "user": self.users,
                "chat": self.chats, "environment variable": self.env, "form question": self.questions}


def walk(node: Any, names: Names) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            key = str(key)
            if key in FIELD_KEYS:
                names.fields.update(v for v in map(literal, items(value)) if v)
            elif key in FIELD_MAPS and isinstance(value, dict) and not isinstance(value.get("fields"), dict):
                names.fields.update(str(k) for k in value)   # (the long form {entity: …, fields: {…}}: walked)
            elif key == "map" and isinstance(value, dict):          # fill_from_form: question → field
                names.questions.update(str(k) for k in value)
                names.fields.update(v for v in map(literal, value.values()) if v)
            elif key in STAGE_KEYS:
                names.stages.update(v for v in map(literal, items(value)) if v and v not in SPECIAL)
            elif key == "move_to_stage" and literal(value):
                names.stages.add(value)
            elif key == "pipeline":
                names.pipelines.update(v for v in map(literal, items(value)) if v)
            elif key in USER_KEYS:
                names.users.update(v for v in map(literal, items(value)) if v and v not in SPECIAL
                                   and not v.isdigit())
            elif key == "chat":
                names.chats.update(v for v in map(literal, items(value)) if v and not v.lstrip("-").isdigit())
            walk(value, names)
    elif isinstance(node, list):
        for value in node:
            walk(value, names)
    elif isinstance(node, str):
        names.fields.update(TEMPLATE_FIELD.findall(node))
        names.fields.update(p.replace("{i}", "1").replace("{j}", "1") for p in FIELD_GROUP.findall(node)
                            if "field_groups" in node)
        names.questions.update(FORM_ANSWER.findall(node))


def configured(example: Path) -> Names:
    names = Names()
    for path in sorted((example / "rules").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")), names)
    text = (example / "connections.yaml").read_text(encoding="utf-8")
    names.env.update(name for name, _ in ENV_REF.findall(text))
    for name, conn in (yaml.safe_load(text).get("connections") or {}).items():
        options = conn.get("options") or {}
        names.chats.update(str(k) for k in (options.get("chats") or {}))
        names.users.update(str(k) for k in (options.get("extensions") or {}) if not str(k).isdigit())
        link = options.get("link") or {}
        if literal(link.get("field")):
            names.fields.add(link["field"])
        record = options.get("record") or {}
        if literal(record.get("answer")):
            names.questions.add(record["answer"])
    return names


SETUP_HEADING = re.compile(r"set.?up|connection|environment|field|status|stage|planfix|amocrm|bitrix|form\b|user", re.I)


def setup_text(markdown: str) -> tuple[str, str]:
    """The guide's set-up: (its tables' rows, the rows with the set-up sections' text). Set-up sections
    are those whose heading says so (set-up, connections, fields, the CRM's name…) and the
    paragraphs that start with **Set up.**"""
    tables, setup, in_section, in_paragraph = [], [], False, False
    for line in markdown.splitlines():
        if line.startswith("#"):
            in_section, in_paragraph = bool(SETUP_HEADING.search(line)), False
        elif line.startswith("**"):
            in_paragraph = bool(re.match(r"\*\*set.?up", line, re.I))
        if line.lstrip().startswith("|"):
            tables.append(line)
        if line.lstrip().startswith("|") or in_section or in_paragraph:
            setup.append(line)
    return norm("\n".join(tables)), norm("\n".join(setup))


def documented(name: str, guide: str) -> bool:
    """In the guide: as written, or a numbered field («Дата оплаты 3», «Услуга 1.4») whose family the
    guide names («Дата оплаты 1 … Дата оплаты 4»)."""
    if norm(name) in guide:
        return True
    numbered = re.fullmatch(r"(.*\D)\d+(?:\.\d+)?", name)
    return bool(numbered) and re.search(re.escape(norm(numbered.group(1))) + r"\d", guide) is not None


def test_examples_with_guides_are_found():
    assert {"marketing-agency", "smm-agency"} <= set(WITH_GUIDES)


def test_the_set_up_text_is_the_tables_and_the_set_up_sections():
    tables, setup = setup_text("""# Guide
intro «Бюджет»
## Set-up in amoCRM
stage «Новий»
| field | type |
|---|---|
| Дата | date |
## What each rule does
rule text «Звіт»
**Set up.** the field «Графік»
**How it works.** «Результат»
""")
    assert "дата" in tables and "новий" not in tables
    assert all(w in setup for w in ("новий", "дата", "графік")) and not any(w in setup for w in ("бюджет", "звіт", "результат"))


@pytest.mark.parametrize("example", WITH_GUIDES)
def test_the_guide_names_everything_the_rules_and_connections_use(example):
    tables, setup = setup_text((GUIDES / f"{example}.md").read_text(encoding="utf-8"))
    names = configured(EXAMPLES / example)
    assert names.fields and names.stages and names.env, "nothing found: the walk is broken"
    # a field is created from the guide's fields table; the other names are found in its set-up text
    missing = [f"{kind} {name!r}" for kind, found in names.kinds().items() for name in sorted(found)
               if not documented(name, tables if kind == "field" else setup)]
    assert not missing, (f"docs/playbooks/{example}.md does not name what config/examples/{example}/ uses: "
                         + "; ".join(missing))


def test_the_walk_finds_each_kind_of_name():
    """The checker itself: a rule file naming one of each kind is read as such."""
    names = Names()
    walk(yaml.safe_load("""
rules:
  - name: r
    on: {event: stage.changed, pipeline: "Продажі", stage: "Бриф", field: "Бюджет"}
    if: [{filled: ["Дата зустрічі"]}, {not_stage: "Архів"}, {open_tasks: {stage: previous, count: 0}}]
    for_each: "entity.fields | field_groups({'blogger': 'Блогер {i}'})"
    do:
      - create_task: {text: "{{ entity.fields['Назва'] }}", responsible: "Олена Коваленко", due: 1 day}
      - send_message: {chat: head, text: "{{ data.answers['Номер задачі'] }}"}
      - set_fields: {"Статус оплати": "так"}
      - set_fields: {entity: "lead:1", fields: {"Сума": 1}}
      - move_to_stage: "Готово"
"""), names)
    assert names.fields == {"Бюджет", "Дата зустрічі", "Назва", "Статус оплати", "Блогер 1", "Сума"}
    assert names.stages == {"Бриф", "Архів", "Готово"} and names.pipelines == {"Продажі"}
    assert names.users == {"Олена Коваленко"} and names.chats == {"head"} and names.questions == {"Номер задачі"}
    assert documented("Дата оплаты 3", norm("«Дата оплаты 1» … «Дата оплаты 4»"))
    assert not documented("Дата оплаты 3", norm("«Дата оплаты»"))


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if (p / "connections.yaml").exists()))
def test_no_deployment_value_has_a_made_up_default(example):
    """`${STAFF_CHAT_ID:--100…}` would pass validation and send the staff's messages to nobody's chat."""
    if example == "quickstart":
        pytest.skip("the quickstart runs with no set-up for a first look (record-only): its team chat has a sample id")
    text = (EXAMPLES / example / "connections.yaml").read_text(encoding="utf-8")
    made_up = [f"${{{name}:-{default}}}" for name, default in ENV_REF.findall(text)
               if default and DEPLOYMENT_VALUE.search(name) and VENDOR_DEFAULTS.get(name) != default]
    assert not made_up, f"config/examples/{example}/connections.yaml: {made_up}"


@pytest.mark.parametrize("example", WITH_GUIDES)
def test_a_missing_deployment_value_stops_the_start_with_file_and_line(example):
    """Every variable set but one chat id (or phone extension): the start stops, naming the file, the
    line and the variable."""
    path = EXAMPLES / example / "connections.yaml"
    text = path.read_text(encoding="utf-8")
    environ = {name: "x" for name, _ in ENV_REF.findall(text)}
    environ.update({n: "https://example.invalid" for n in environ if n.endswith("_URL")})
    environ.update({n: "7" for n in environ if re.search("RATE|BURST", n)})   # numbers where numbers go
    load_connections(path, environ)   # all set: it loads
    chats = [name for name, default in ENV_REF.findall(text) if re.search("CHAT|EXTENSION", name) and not default]
    if not chats:
        pytest.skip(f"{example} takes no chat id or extension from the environment")
    for name in chats:
        with pytest.raises(ConfigErrors) as caught:
            load_connections(path, {k: v for k, v in environ.items() if k != name}, shown_as=str(path))
        errors = [e for e in caught.value.errors if name in e.message]   # one per place it is used
        lines = [i for i, row in enumerate(text.splitlines(), 1) if f"${{{name}" in row]
        assert [(e.line, e.path) for e in errors] == [(line, str(path)) for line in lines], errors
        assert all(e.message.endswith(f"environment variable {name} is not set") for e in errors)
