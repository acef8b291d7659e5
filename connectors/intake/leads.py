"""The common lead shape every intake door gives, and the readers they share.

Phones are normalised to E.164 with `phonenumbers` (Google's libphonenumber): the number as typed is
parsed in the connection's region (`options.region`, default UA), then in UA and RU; the forms
people type in this market are read too: `+380 67 123-45-67`, `067 123 45 67`, `380671234567`,
`8 067 123 45 67` (the old Ukrainian long-distance 8), `8 (916) 123-45-67` and `+7 916…` (Russia).
A number that is not valid in any of them keeps `phone: null` and its text in `phone_raw`, so a
rule can still show it. E-mails are stripped and case-folded (`Anna@Example.COM` = `anna@example.com`).
"""
from __future__ import annotations

import base64
import hashlib
import re
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr
from typing import Any
from urllib.parse import parse_qsl

import phonenumbers

from connectors.base import MAX_FORM_KEYS, BadPayload, RawWebhook, parse_json

UTM_KEYS = ("source", "medium", "campaign", "content", "term")
FALLBACK_REGIONS = ("UA", "RU")
MAX_VALUE = 10_000             # characters of one field: a form field, not a file
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"
ATTACHMENT_MAX_BYTES = 262144     # a file up to this travels in the event (base64); bigger: described


def normalise_phone(text: Any, region: str = "UA") -> str | None:
    """The number in E.164 (`+380671234567`), or None when it is not a valid number."""
    if not isinstance(text, str) or not text.strip() or len(text) > 64:
        return None
    typed = text.strip()
    digits = re.sub(r"\D", "", typed)
    candidates = [typed]
    if not typed.startswith("+"):
        if len(digits) == 12 and digits.startswith("380") or len(digits) == 11 and digits.startswith("7"):
            candidates.append("+" + digits)                 # the country code without its plus
        if len(digits) == 11 and digits.startswith("80"):
            candidates.append(digits[1:])                   # 8 0XX…: the old Ukrainian trunk prefix
    for candidate in candidates:
        for where in dict.fromkeys((region.upper(), *FALLBACK_REGIONS)):
            try:
                number = phonenumbers.parse(candidate, where)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def normalise_email(text: Any) -> str | None:
    """`addr@domain` stripped and case-folded, or None when it is no address."""
    if not isinstance(text, str) or len(text) > 320:
        return None
    _, addr = parseaddr(text.strip())
    addr = addr.strip().casefold()
    local, at, domain = addr.rpartition("@")
    if not at or not local or "." not in domain or " " in addr:
        return None
    return addr


def utm(values: dict[str, Any]) -> dict[str, str]:
    """utm_source… (any case) → {source, medium, …}, only those given."""
    found = {}
    lowered = {str(k).lower(): v for k, v in values.items()}
    for key in UTM_KEYS:
        value = lowered.get(f"utm_{key}")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str) and value.strip():
            found[key] = value.strip()
    return found


def lead(*, door: str, connection: str, name: Any = None, phone: Any = None, email: Any = None,
         text: Any = None, form: Any = None, page: Any = None, utm_tags: dict[str, str] | None = None,
         region: str = "UA", **more: Any) -> dict[str, Any]:
    """The event `data` every door gives (the keys rules read, whatever the door; `subject` and
    `attachments` are a letter's, empty elsewhere, so one template serves every door)."""
    phone_raw = _text(phone)
    return {"name": _text(name), "phone": normalise_phone(phone_raw, region), "phone_raw": phone_raw,
            "email": normalise_email(email), "text": _text(text),
            "source": {"door": door, "connection": connection, "form": _text(form), "page": _text(page)},
            "utm": utm_tags or {}, "subject": None, "attachments": [], **more}


def region_of(options: Any) -> str:
    region = str((options or {}).get("region") or "UA").upper()
    return region if region in phonenumbers.SUPPORTED_REGIONS else "UA"


def read_fields(body: bytes, content_type: str) -> dict[str, str | list[str]]:
    """A form's fields, form-encoded or JSON, as text (a repeated or `x[]` field: a list of text).

    JSON: an object whose values are text, numbers, booleans, null or lists of those; a nested
    object's keys are joined with dots (`data.Name`). Anything else is refused."""
    if content_type == JSON:
        body_json = parse_json(body)
        if not isinstance(body_json, dict):
            raise BadPayload(f"expected a JSON object, found {type(body_json).__name__}")
        return _flatten(body_json, "")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_KEYS, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"body is not UTF-8 (byte {exc.start})") from None
    except ValueError:
        raise BadPayload(f"more than {MAX_FORM_KEYS} form fields") from None
    fields: dict[str, str | list[str]] = {}
    for key, value in pairs:
        if _bad_text(key) or _bad_text(value):
            raise BadPayload(f"form field {key[:40]!r} is not text a form sends")
        listed = key.endswith("[]")
        key = key[:-2] if listed else key
        if key in fields or listed:
            before = fields.get(key, [])
            fields[key] = [*(before if isinstance(before, list) else [before]), value]
        else:
            fields[key] = value
    return fields


def read_multipart(raw: RawWebhook) -> tuple[dict[str, str | list[str]], list[dict[str, Any]]]:
    """A `multipart/form-data` body (RFC 7578): text parts as fields, file parts as attachments
    [{field, name, content_type, size, sha256, content_base64 (up to ATTACHMENT_MAX_BYTES), too_large}]."""
    head = str(raw.headers.get("Content-Type", raw.content_type)).replace("\r", " ").replace("\n", " ")
    message = BytesParser(policy=policy.default).parsebytes(f"Content-Type: {head}\r\n\r\n".encode() + raw.body)
    if not message.is_multipart():
        raise BadPayload("multipart body without parts (or without its boundary)")
    fields: dict[str, str | list[str]] = {}
    files: list[dict[str, Any]] = []
    try:
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or not name:
                raise BadPayload("a multipart part without its field name")
            if part.get_filename() is not None:
                content = part.get_payload(decode=True) or b""
                found = {"field": name, "name": part.get_filename(), "content_type": part.get_content_type(),
                         "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                         "too_large": len(content) > ATTACHMENT_MAX_BYTES}
                if not found["too_large"]:
                    found["content_base64"] = base64.b64encode(content).decode("ascii")
                files.append(found)
                continue
            # a browser sends text parts in the page's charset without saying so (HTML's
            # "multipart/form-data encoding algorithm"): UTF-8 unless the part names another
            raw_value = part.get_payload(decode=True) or b""
            try:
                value = raw_value.decode(part.get_content_charset() or "utf-8")
            except UnicodeDecodeError:
                raise BadPayload(f"form field {name[:40]!r} is not UTF-8") from None
            if _bad_text(value) or _bad_text(name):
                raise BadPayload(f"form field {name[:40]!r} is not text a form sends")
            key = name[:-2] if name.endswith("[]") else name
            if key in fields or name.endswith("[]"):
                before = fields.get(key, [])
                fields[key] = [*(before if isinstance(before, list) else [before]), value]
            else:
                fields[key] = value
    except (LookupError, ValueError, TypeError, AttributeError, AssertionError) as exc:
        raise BadPayload(f"unreadable multipart part: {type(exc).__name__}") from None
    return fields, files


def _flatten(node: dict[str, Any], prefix: str) -> dict[str, str | list[str]]:
    fields: dict[str, str | list[str]] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            fields.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            if not all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
                raise BadPayload(f"field {name[:40]!r} is a list of something other than text")
            fields[name] = [_scalar(v) for v in value if v is not None]
        elif value is not None:
            fields[name] = _scalar(value)
        if isinstance(fields.get(name), str) and _bad_text(fields[name]):
            raise BadPayload(f"field {name[:40]!r} is over {MAX_VALUE} characters")
    return fields


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bad_text(value: str) -> bool:
    return len(value) > MAX_VALUE or "\x00" in value


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        value = ", ".join(v for v in value if isinstance(v, str) and v.strip())
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value).strip() or None


def first(fields: dict[str, Any], names: Any) -> Any:
    """The value of the first of `names` present (exactly, then in any case)."""
    if isinstance(names, str):
        names = [names]
    lowered = {str(k).casefold(): k for k in fields}
    for name in names or []:
        if name in fields:
            return fields[name]
        key = lowered.get(str(name).casefold())
        if key is not None:
            return fields[key]
    return None


LEAD_KEYS = ("name", "phone", "email", "text", "page")


def form_option_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """A form door's options, checked at start-up: `fields` maps lead keys to the form's field
    names (a name or a list of names), `region` is a country code phonenumbers knows."""
    found = []
    fields = options.get("fields")
    if fields is not None:
        if not isinstance(fields, dict):
            found.append(("fields", f"expected a mapping such as {{name: your-name, phone: tel}}, found {fields!r}"))
        else:
            for key, names in fields.items():
                if key not in LEAD_KEYS:
                    found.append(("fields", f"unknown key {key!r}; expected one of: {', '.join(LEAD_KEYS)}"))
                elif not (isinstance(names, str) or isinstance(names, list) and all(isinstance(n, str) for n in names)):
                    found.append(("fields", f"{key}: expected a field name or a list of them, found {names!r}"))
    region = options.get("region")
    if region is not None and str(region).upper() not in phonenumbers.SUPPORTED_REGIONS:
        found.append(("region", f"expected a country code such as UA or RU, found {region!r}"))
    return found
