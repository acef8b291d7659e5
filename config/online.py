"""`cli.py validate --online`: the names rules use, checked against what each connection really has.

Each connection's client reads its metadata, read only (`Client.metadata()`: amoCRM pipelines,
fields and users; Bitrix24 funnels and stages, fields and users; Planfix processes and statuses,
fields and users; Telegram `getChat` for every chat alias). Then every stage, pipeline, field,
user and enum value a rule names, every `entity.fields[…]` a template reads (a rule's text, and
the DOCX template a make_document fills, at its paragraph) and every chat it sends to is looked up
there. A miss is a ConfigError: `file:line:`, what was expected, what was found and
"did you mean …" from the real names (compared without case and ё/е, as people type them).

How a name matches is how the code that uses it matches: triggers and conditions compare a stage,
pipeline or user without case (rules.conditions.ref_matches); actions hand the name to the CRM
client, which looks it up exactly (amoCRM, Bitrix24 and Planfix clients' resolve_*), so there a name
that differs only in case or ё/е is an error too. Ids are always accepted when they exist.

A connection without credentials (record-only) is not read: it is listed as skipped, and the names
its rules use stay unchecked. Nothing here writes: the clients' metadata() make only reads.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import nodes

from config.loader import ConfigError, did_you_mean, fold, line_of
from rules._offline import CHATS, CHAT_ID, _path, _strings
from rules.templates import ENV

DEFAULT_ENTITY = {"amocrm": "lead", "bitrix24": "deal", "planfix": "task"}
VENDOR = {"amocrm": "amoCRM", "bitrix24": "Bitrix24", "planfix": "Planfix", "telegram": "Telegram"}
ENUM_OPS = ("equals", "not_equals", "in")


@dataclass
class Online:
    """What was read, and what was found wrong."""

    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)     # connections that could not be read: not checked
    errors: list[ConfigError] = field(default_factory=list)


def read(connections: Any, client_for: Any) -> Online:
    """Each connection's metadata, through `client_for(name)` (a client); record-only ones are skipped."""
    result = Online()
    for name, conn in connections.connections.items():
        if conn.type not in VENDOR:
            continue
        if conn.record_only:
            result.notes.append(f"{name}: not read (no credentials: record-only); its names are not checked")
            continue
        client = client_for(name)
        try:
            meta = client.metadata()
        except Exception as exc:   # a refused token, no network: said, and the others still checked
            result.notes.append(f"{name}: could not be read: {exc}")
            result.unread.append(name)
            continue
        result.metadata[name] = meta
        result.notes.append(f"{name}: {_summary(meta)}")
    return result


def _summary(meta: dict[str, Any]) -> str:
    if "chats" in meta:
        bad = sum(1 for c in meta["chats"].values() if "error" in c)
        return f"{len(meta['chats'])} chat(s) read with getChat" + (f", {bad} not reachable" if bad else "")
    stages = sum(len(p["stages"]) for p in meta["pipelines"].values())
    fields = sum(len(f) for f in meta["fields"].values())
    return (f"{len(meta['pipelines'])} pipeline(s), {stages} stage(s), {fields} field(s), "
            f"{len(meta['users'])} user(s) read")


def check(rules: list, connections: Any, online: Online, config_dir: Path | None = None) -> list[ConfigError]:
    """Every name the rules use that a connection read does not have; with `config_dir`, the
    fields the document templates their make_document actions name read too (at the template's
    paragraph)."""
    errors: list[ConfigError] = []
    for rule in rules:
        errors.extend(_Rule(rule, connections, online.metadata, config_dir).errors)
    return errors


class _Rule:
    """The checks of one rule against the metadata of the CRMs it acts on."""

    def __init__(self, rule: Any, connections: Any, metadata: dict[str, dict[str, Any]],
                 config_dir: Path | None = None):
        self.rule, self.errors = rule, []
        self.config_dir = config_dir
        self.known = connections.connections
        self.metadata = metadata
        self.crms = {n: m for n, m in metadata.items() if "pipelines" in m}
        self.trigger_crms = [n for n in rule.trigger.connections if n in self.crms]
        self.on_crm = [n for n in rule.trigger.connections if self._type(n) in DEFAULT_ENTITY]
        for key, value in rule.trigger.filters:
            if key in ("stage", "from_stage", "pipeline"):
                for item in _listed(value):
                    self.ref("pipeline" if key == "pipeline" else "stage", item, rule.line, f"on → {key}",
                             self._targets(None), exact=False)
            elif key == "field":
                for item in _listed(value):
                    self.field_name(item, rule.line, "on → field", self._targets(None))
        for key, conditions in (("if", rule.conditions), ("while", rule.guard),
                                ("every → until", rule.delay.until if rule.delay else ())):
            for i, condition in enumerate(conditions):
                self.condition(condition, f"{key}[{i}]", self._targets(None))
        if rule.delay is not None and rule.delay.cycle:   # a misspelled cycle field would wait the default
            self.field_name(rule.delay.cycle, rule.delay.line or rule.line, "after → cycle", self._targets(None))
        for spec in (*rule.actions, *rule.otherwise):
            self.action(spec)

    # --- where a name is looked up ------------------------------------------------------------

    def _type(self, name: str) -> str | None:
        conn = self.known.get(name)
        return conn.type if conn is not None else None

    def _targets(self, named: Any) -> list[str]:
        """The CRM connections (read) a name is looked up in: the action's own, else the CRMs the
        rule's `on:` names, else every CRM read (a Telegram or form event acts on its bound record)."""
        if isinstance(named, str) and named:
            return [named] if named in self.crms else []
        if self.on_crm:
            return self.trigger_crms
        return list(self.crms)

    def _entity(self, crm: str) -> str:
        return self.rule.trigger.entity or DEFAULT_ENTITY.get(self._type(crm) or "", "lead")

    def err(self, line: int, crumb: str, message: str, path: str | None = None) -> None:
        self.errors.append(ConfigError(path or self.rule.file, line, f'rule "{self.rule.name}" → {crumb}: {message}'))

    # --- names -----------------------------------------------------------------------------------

    def ref(self, kind: str, value: Any, line: int, crumb: str, targets: list[str], *, exact: bool,
            pipeline: Any = None) -> None:
        """A stage, pipeline or user name (or id) that must exist in one of `targets`."""
        if value in (None, "") or not isinstance(value, (str, int)) or _templated(value) or not targets:
            return
        text = str(value).strip()
        names: dict[str, str] = {}          # id → name, over every target
        for crm in targets:
            names.update(_names(self.crms[crm], kind, pipeline))
        if text in names or any(_same(text, n, exact) for n in names.values()):
            return
        where = " or ".join(f"{VENDOR[self._type(c)]} {c!r}" for c in targets)
        scope = f" of pipeline {pipeline!r}" if pipeline and kind == "stage" else ""
        hint = did_you_mean(text, set(names.values()))
        exactly = " (the CRM compares names exactly)" if exact and any(fold(text) == fold(n) for n in names.values()) else ""
        self.err(line, crumb, f"expected a {kind} name{scope} that {where} has{exactly}, found {text!r}{hint}")

    def field_name(self, name: Any, line: int, crumb: str, targets: list[str],
                   path: str | None = None, deal: bool = False) -> dict[str, Any] | None:
        """A field a rule (or a template at `path`) names; its description when found in one of `targets`.
        `deal`: a field of the CRM's deal (amoCRM lead, Bitrix24 deal, Planfix task), whatever the rule is on."""
        if not isinstance(name, str) or not name or _templated(name) or not targets:
            return None

        def entity(crm: str) -> str:
            return DEFAULT_ENTITY.get(self._type(crm) or "", "lead") if deal else self._entity(crm)
        for crm in targets:
            fields = self.crms[crm]["fields"].get(entity(crm)) or {}
            if name in fields:
                return fields[name]
            by_id = next((f for f in fields.values() if str(f.get("id")) == name), None)
            if by_id is not None:
                return by_id
        real = {n for crm in targets for n in (self.crms[crm]["fields"].get(entity(crm)) or {})}
        where = " or ".join(f"{VENDOR[self._type(c)]} {c!r} ({entity(c)})" for c in targets)
        self.err(line, crumb, f"expected a field that {where} has, found {name!r}{did_you_mean(name, real)}", path)
        return None

    def enum_value(self, described: dict[str, Any] | None, field_name: str, value: Any, line: int, crumb: str) -> None:
        enums = (described or {}).get("enums") or []
        if not enums:
            return
        for item in _listed(value):
            if item in (None, "") or _templated(item) or str(item) in enums:
                continue
            self.err(line, crumb, f"expected one of the values of field {field_name!r} "
                                  f"({', '.join(map(repr, enums))}), found {str(item)!r}{did_you_mean(item, enums)}")

    # --- conditions and actions ------------------------------------------------------------------

    def condition(self, condition: dict, crumb: str, targets: list[str]) -> None:
        line = line_of(condition, default=self.rule.line)
        kind = next(iter(condition), None)
        if kind in ("stage", "not_stage", "pipeline", "responsible"):
            what = {"not_stage": "stage", "responsible": "user"}.get(kind, kind)
            for item in _listed(condition[kind]):
                self.ref(what, item, line, f"{crumb} → {kind}", targets, exact=False)
        elif kind == "field":
            described = self.field_name(condition["field"], line, f"{crumb} → field", targets)
            for op in ENUM_OPS:
                if op in condition:
                    self.enum_value(described, condition["field"], condition[op], line, f"{crumb} → {op}")
        elif kind in ("filled", "empty"):
            for name in _listed(condition[kind]):
                self.field_name(name, line, f"{crumb} → {kind}", targets)
        elif kind == "any":
            for i, sub in enumerate(condition["any"]):
                self.condition(sub, f"{crumb} → any[{i}]", targets)
        elif kind == "not":
            self.condition(condition["not"], f"{crumb} → not", targets)

    def action(self, spec: Any) -> None:
        options = spec.options if isinstance(spec.options, dict) else {}
        targets = self._targets(options.get("connection"))
        crumb = spec.verb

        def line(key: str) -> int:
            return line_of(options, key, spec.line)
        if spec.verb == "move_to_stage":
            self.ref("pipeline", options.get("pipeline"), line("pipeline"), f"{crumb} → pipeline", targets, exact=True)
            self.ref("stage", options.get("stage"), line("stage"), f"{crumb} → stage", targets, exact=True,
                     pipeline=options.get("pipeline") if not _templated(options.get("pipeline")) else None)
        for key in ("responsible", "user"):
            if key in options and spec.verb in ("create_task", "start_next_task", "set_responsible", "notify"):
                self.ref("user", options[key], line(key), f"{crumb} → {key}", targets, exact=True)
        if spec.verb == "set_fields":
            values = options.get("fields") if isinstance(options.get("fields"), dict) else {}
            for name, value in values.items():
                described = self.field_name(name, line_of(values, name, spec.line), f"{crumb} → {name}", targets)
                self.enum_value(described, name, value, line_of(values, name, spec.line), f"{crumb} → {name}")
        if spec.verb == "attach_to_deal":   # the new deal's fields: a misspelled one would fail the intake's create
            values = options.get("deal_fields") if isinstance(options.get("deal_fields"), dict) else {}
            for name in values:
                self.field_name(name, line_of(values, name, line("deal_fields")), f"{crumb} → deal_fields", targets,
                                deal=True)
        for key, text in _strings(options):
            for name in _fields_read(text):
                self.field_name(name, line(key.split(" → ")[0].split("[")[0]), f"{crumb} → {key} (template)", targets)
        if spec.verb == "make_document":
            self.template(options, targets)
        self.chats(spec, options)

    def template(self, options: dict, targets: list[str]) -> None:
        """The fields a make_document's DOCX template reads, at the template's paragraph (the offline
        check, rules/make_document.load_templates, has seen that the file is there)."""
        name = options.get("template")
        if self.config_dir is None or not isinstance(name, str) or not name or _templated(name):
            return
        from documents import render   # docxtpl's world only for configurations that make documents
        path = self.config_dir / render.TEMPLATE_DIR / (name if name.endswith(".docx") else f"{name}.docx")
        if not path.is_file():
            return
        for paragraph, field_name in render.fields_read(path):
            self.field_name(field_name, paragraph, f"make_document → template {path.name}, paragraph {paragraph}",
                            targets, path=str(path))

    def chats(self, spec: Any, options: dict) -> None:
        sends = [(options.get("connection"), options.get(CHATS[spec.verb]), CHATS[spec.verb], options)] \
            if spec.verb in CHATS else []
        if spec.verb == "send_digest" and isinstance(options.get("to"), dict):
            sends.append((options["to"].get("connection"), options["to"].get("chat"), "to → chat", options["to"]))
        for conn, chat, key, node in sends:
            meta = self.metadata.get(conn) if isinstance(conn, str) else None
            if not meta or "chats" not in meta or chat in (None, "") or _templated(chat):
                continue
            alias = str(chat).strip()
            info = meta["chats"].get(alias)
            if info is None or "error" not in info:
                continue   # an id (not an alias) is the message's to try; an undefined alias is the offline check's
            self.err(line_of(node, key.split(" → ")[-1], spec.line), f"{spec.verb} → {key}",
                     f"expected a chat the bot is in, found {alias!r} = {info['id']} "
                     f"(connection {conn!r} → options → chats); Telegram getChat says: {info['error']}")


def _names(meta: dict[str, Any], kind: str, pipeline: Any) -> dict[str, str]:
    if kind == "user":
        return {str(k): str(v) for k, v in meta["users"].items()}
    if kind == "pipeline":
        return {str(k): str(p["name"]) for k, p in meta["pipelines"].items()}
    found: dict[str, str] = {}
    for pid, p in meta["pipelines"].items():
        if pipeline in (None, "") or str(pipeline) in (str(pid), p["name"]):
            found.update({str(k): str(v) for k, v in p["stages"].items()})
    return found


def _same(text: str, name: str, exact: bool) -> bool:
    return text == name if exact else text.casefold() == name.strip().casefold()


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _fields_read(text: str) -> Iterator[str]:
    """The field names a template reads as `entity.fields['X']` or `entity.fields.X`."""
    try:
        tree = ENV.parse(text)
    except Exception:
        return
    seen = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        path = _path(node)
        if path and len(path) == 3 and path[:2] == ["entity", "fields"] and path[2] not in seen:
            seen.add(path[2])
            yield path[2]
