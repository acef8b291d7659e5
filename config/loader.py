"""YAML that remembers where each value came from, and configuration errors that say so.

Every mapping and list loaded here knows the line of each of its items, so an error can
start with `path:line:` (the idea of Home Assistant's line-stamping SafeLineLoader).
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class LineDict(dict):
    """A mapping from YAML with the line of each key (1-based)."""

    line: int = 0
    lines: dict


class LineList(list):
    """A list from YAML with the line of each item (1-based)."""

    line: int = 0
    lines: list


class _Loader(yaml.SafeLoader):
    pass


def _map(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    result = LineDict()
    result.line, result.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                       "found a key that is not a plain value", key_node.start_mark)
        if key in result:
            raise yaml.MarkedYAMLError("while reading a mapping", node.start_mark,
                                       f"found the key {key!r} twice", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _seq(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


# YAML 1.1 reads `on`, `off`, `yes` and `no` as booleans, and `on:` is the rule's trigger key:
# only true/false are booleans here (as in YAML 1.2).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _seq)


@dataclass(frozen=True)
class ConfigError:
    """One problem in one configuration file."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class ConfigErrors(Exception):
    """The configuration is invalid; crmbridge does not start half-configured."""

    def __init__(self, errors: list[ConfigError], ending: str = "crmbridge did not start."):
        self.errors = sorted(errors, key=lambda e: (e.path, e.line))
        files = len({e.path for e in self.errors})
        summary = (f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''} in {files} "
                   f"file{'s' if files != 1 else ''}; {ending}")
        super().__init__("\n".join([*map(str, self.errors), summary]))


def load_yaml(path: Path, shown_as: str | None = None) -> Any:
    """Read a YAML file with line marks; a syntax error becomes a ConfigErrors."""
    shown = shown_as or str(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([not_utf8(shown, data, exc)]) from None
    except OSError as exc:
        raise ConfigErrors([ConfigError(shown, 0, f"cannot read the file: {exc.strerror}")])
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigErrors([ConfigError(shown, line, f"invalid YAML: {exc.problem or exc.context}")])
    except yaml.YAMLError as exc:
        raise ConfigErrors([ConfigError(shown, 1, f"invalid YAML: {exc}")])


def not_utf8(shown: str, data: bytes, exc: UnicodeDecodeError) -> ConfigError:
    """A file that is not UTF-8, reported at the line and column of its first bad byte, with what
    stands there (an editor saving in Windows-1251 is the usual cause)."""
    before = data[:exc.start]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
    bad = data[exc.start:exc.end].hex(" ")
    return ConfigError(shown, line, f"expected UTF-8 text, found byte(s) {bad} at column {column}; "
                                    "save the file as UTF-8")


def line_of(node: Any, key: Any = None, default: int = 0) -> int:
    """The line of `node[key]` (or of `node` itself) if the loader recorded it."""
    if key is not None:
        lines = getattr(node, "lines", None)
        if isinstance(lines, dict) and key in lines:
            return lines[key]
        if isinstance(lines, list) and isinstance(key, int) and 0 <= key < len(lines):
            return lines[key]
    return getattr(node, "line", default) or default


ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def expand_env(value: str, environ: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Replace `${NAME}` (or `${NAME:-default}`) with the environment's value; return the
    names that were not set and had no default."""
    env = os.environ if environ is None else environ
    missing = []

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is None:
            missing.append(name)
        return default or ""
    return ENV_REF.sub(sub, value), missing


def fold(text: Any) -> str:
    """A name as a vendor that ignores case and ё/е compares it (amoCRM, Bitrix24 and Planfix show
    «Ещё» and «еще» as different names but people type either)."""
    return str(text).strip().casefold().replace("ё", "е")


def did_you_mean(found: Any, names: Any, cutoff: float = 0.6) -> str:
    """'; did you mean "Brief received"?' with the nearest of `names` (difflib, compared folded),
    or '' when none is near."""
    real = {fold(n): str(n) for n in names}
    close = difflib.get_close_matches(fold(found), list(real), n=1, cutoff=cutoff)
    return f'; did you mean "{real[close[0]]}"?' if close else ""
