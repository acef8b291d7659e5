"""A scenario file: where the simulated time starts, what the fake CRMs hold, the steps, and
what is expected (docs/simulate.md has the format). Mistakes are reported with the file and the
step, what was expected and what was found."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from rules.calendar import CalendarError, parse_duration

STEP_KINDS = ("webhook", "advance", "at", "set")
EXPECT_KINDS = ("call", "no_call", "timer_set", "timer_fired", "timer_dropped", "timer_cancelled")
TOP_KEYS = ("description", "start", "timezone", "calendar", "env", "crm", "steps", "expect")


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with where and what."""


@dataclass
class Scenario:
    path: Path
    description: str
    start: str
    timezone: str | None
    calendar: str | None
    env: dict[str, str]
    crm: dict[str, dict[str, Any]]
    steps: list[dict[str, Any]]
    expect: list[dict[str, Any]] = field(default_factory=list)

    def where(self, section: str, n: int) -> str:
        return f"{self.path}: {section}[{n + 1}]"


def plain(value: Any) -> Any:
    """YAML's dates and times as the ISO text the rest reads."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (date, datetime)) else k.isoformat(): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def load(path: Path) -> Scenario:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc}") from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"{path}: expected a mapping with start: and steps:, found {type(doc).__name__}")
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ScenarioError(f"{path}: unknown key {unknown[0]!r}; expected one of {', '.join(TOP_KEYS)}")
    doc = plain(doc)
    if not doc.get("start"):
        raise ScenarioError(f"{path}: start: expected the moment the scenario begins (2026-12-07 11:00), found nothing")
    steps = doc.get("steps") or []
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{path}: steps: expected a list of webhook/advance/at/set steps, found {steps!r}")
    crm = {}
    for name, spec in (doc.get("crm") or {}).items():
        spec = dict(spec or {})
        if spec.get("include"):   # a CRM account shared by several scenarios (its pipelines, users, records)
            included = path.parent / str(spec.pop("include"))
            try:
                shared = plain(yaml.safe_load(included.read_text(encoding="utf-8"))) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise ScenarioError(f"{path}: crm → {name} → include: cannot read {included}: {exc}") from None
            spec = {**shared, **spec, "records": {**(shared.get("records") or {}), **(spec.get("records") or {})}}
        crm[str(name)] = spec
    scenario = Scenario(path, str(doc.get("description") or ""), str(doc["start"]), doc.get("timezone"),
                        doc.get("calendar"), {str(k): str(v) for k, v in (doc.get("env") or {}).items()},
                        crm, steps, doc.get("expect") or [])
    if scenario.timezone:
        try:
            ZoneInfo(scenario.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ScenarioError(f"{path}: timezone: expected an IANA zone such as Europe/Kyiv, "
                                f"found {scenario.timezone!r}") from None
    for n, step in enumerate(steps):
        kinds = [k for k in STEP_KINDS if isinstance(step, dict) and k in step]
        if kinds == ["webhook", "at"]:   # a webhook with its time: the clock goes there first
            kinds = ["webhook"]
        if len(kinds) != 1:
            raise ScenarioError(f"{scenario.where('steps', n)}: expected one of {', '.join(STEP_KINDS)}, found {step!r}")
        if kinds[0] == "advance":
            try:
                parse_duration(str(step["advance"]))
            except CalendarError as exc:
                raise ScenarioError(f"{scenario.where('steps', n)}: advance: {exc}") from None
        if kinds[0] == "webhook":
            bodies = [k for k in ("file", "body", "json", "form") if k in step]
            if len(bodies) != 1:
                raise ScenarioError(f"{scenario.where('steps', n)}: a webhook needs one of file, body, json or form; "
                                    f"found {', '.join(bodies) or 'none'}")
    for n, item in enumerate(scenario.expect):
        kinds = [k for k in EXPECT_KINDS if isinstance(item, dict) and k in item]
        if len(kinds) != 1:
            raise ScenarioError(f"{scenario.where('expect', n)}: expected one of {', '.join(EXPECT_KINDS)}, "
                                f"found {item!r}")
    return scenario


def moment(text: str, zone: ZoneInfo, where: str) -> datetime:
    """`2026-12-07 11:00` (local time in the scenario's zone) or an ISO moment with its offset."""
    try:
        found = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ScenarioError(f"{where}: expected a moment such as 2026-12-07 11:00, found {text!r}") from None
    return found if found.tzinfo else found.replace(tzinfo=zone)


def webhook_body(step: dict[str, Any], base: Path, content_types: tuple[str, ...]) -> tuple[bytes, str]:
    """The webhook's bytes and content type, as its vendor sends them."""
    if "file" in step:
        path = (base / str(step["file"])).resolve()
        body = path.read_bytes()
        default = "application/json" if path.suffix == ".json" else content_types[0]
    elif "json" in step:
        body, default = json.dumps(step["json"], ensure_ascii=False).encode(), "application/json"
    elif "form" in step:
        pairs = [(str(k), "" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                 for k, v in _form_pairs(step["form"])]
        body, default = urlencode(pairs).encode(), "application/x-www-form-urlencoded"
    else:
        body, default = str(step["body"]).encode(), content_types[0]
    return body, str(step.get("content_type") or default)


def _form_pairs(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested mapping as PHP-style form keys (amoCRM, Bitrix24): leads[status][0][id]=…"""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _form_pairs(v, f"{prefix}[{k}]" if prefix else str(k))]
    if isinstance(value, list):
        return [p for n, v in enumerate(value) for p in _form_pairs(v, f"{prefix}[{n}]")]
    return [(prefix, value)]


PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def stand_in_environment(config_dir: Path, given: dict[str, str], environ: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment the configuration is loaded with: the real one, the scenario's `env:`, and
    a stand-in for every `${NAME}` without a default that neither sets (secrets, tokens, URLs: no
    fake vendor needs them). Returns it and the names stood in for."""
    env = {**environ, **given}
    text = (config_dir / "connections.yaml").read_text(encoding="utf-8") if (config_dir / "connections.yaml").exists() else ""
    filled = []
    text = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())   # not in comments
    for name in sorted(set(PLACEHOLDER.findall(text))):
        if env.get(name):
            continue
        if name.endswith("URL"):
            env[name] = "https://simulated.invalid"
        elif "CHAT" in name:
            env[name] = str(-1009000000000 - len(filled))
        else:
            env[name] = f"simulated-{name.lower()}"
        filled.append(name)
    return env, filled
