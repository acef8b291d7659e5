"""The common model every connector speaks, and the base of every API client.

A connector module turns one vendor's webhook into `Event`s (`verify` + `parse`) and
offers a `Client` whose verbs (the CrmClient and ChannelClient protocols below; each client
names its own in `capabilities`) are single API calls: wire format in, single calls out.
What takes several calls or keeps state (find-or-create, only-forward moves, time tracking…)
is a pipeline step built on those verbs (pipeline/steps). Nothing past a connector sees a
vendor's wire format.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import quote, unquote, urlsplit

import requests

import metrics

log = logging.getLogger("crmbridge.connectors")


# --- the common model ------------------------------------------------------------------

@dataclass(frozen=True)
class Entity:
    """What an event is about: a lead, deal, contact, task, chat, form…"""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


@dataclass(frozen=True)
class Event:
    """One change in an outside system, in the common shape rules read."""

    id: str
    connection: str
    source: str
    kind: str
    entity: Entity
    data: dict[str, Any]
    raw: Any
    occurred_at: str            # ISO 8601, UTC
    dedupe_window: int | None = None   # seconds; None = the configured default

    def to_dict(self) -> dict[str, Any]:
        """The payload that is queued. Shallow (no deep copy of `data`/`raw` as `asdict` makes):
        the payload is serialized right away, or copied by whoever changes it."""
        return {**self.__dict__, "entity": {"type": self.entity.type, "id": self.entity.id}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        """From a queued payload (which may also carry the queue's own keys: seq, defers…)."""
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["entity"] = Entity(**d["entity"])
        return cls(**fields)


EVENT_KINDS = (
    "entity.created", "entity.updated", "entity.deleted", "stage.changed", "field.changed",
    "responsible.changed", "file.added", "note.added", "task.created", "task.updated",
    "task.completed", "message.received", "message.edited", "button.pressed",
    "form.submitted", "timer.fired", "schedule.tick", "call.ended",
    # messengers' and SMS providers' own: a person (un)subscribed, opened a chat, a sent message's receipt
    "subscription.changed", "conversation.started", "message.status",
)


def event_id(connection: str, *parts: Any) -> str:
    """A stable id from the connection and the parts that identify one change."""
    canonical = json.dumps([connection, *parts], sort_keys=True, ensure_ascii=False, default=str)
    return f"{connection}:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def written_key(prefix: str, connection: str, kind: str, ident: Any) -> str:
    """Marks what the bridge itself wrote (a CRM comment), so its webhook is not echoed back."""
    return f"{prefix}written:{connection}:{kind}:{ident}"


def utc_iso(ts: float | int | str | None = None) -> str:
    """A unix timestamp (or now) as an ISO 8601 UTC string."""
    value = time.time() if ts in (None, "") else float(ts)
    return datetime.fromtimestamp(value, timezone.utc).isoformat()


@dataclass(frozen=True)
class RawWebhook:
    """What came over the wire, without Flask: enough to verify and parse."""

    headers: Mapping[str, str]
    content_type: str
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Connection:
    """One configured external account (an entry of connections.yaml)."""

    name: str
    type: str
    base_url: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict)
    webhook_secret: str | None = None
    calendar: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def record_only(self) -> bool:
        """No credentials: log the calls that would be made instead of making them."""
        return not any(self.credentials.values())


# --- errors -----------------------------------------------------------------------------

class WebhookError(Exception):
    """A webhook was refused; `status` is the HTTP answer the caller gets."""

    status = 400


class Unauthorized(WebhookError):
    """The caller is not who the connection says it is."""

    status = 401


class BadPayload(WebhookError):
    """The body cannot be read as this vendor's webhook."""

    status = 400


class UnsupportedMediaType(WebhookError):
    """The body's content type is not one this vendor sends."""

    status = 415


class ApiError(Exception):
    """The external system answered, and the answer was an error."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RetryableApiError(ApiError):
    """429, 5xx, a timeout, or the vendor's own 'slow down'. Try again later."""


class PermanentApiError(ApiError):
    """The request itself is wrong (4xx other than 429). Retrying will not help."""


class RecipientUnreachable(PermanentApiError):
    """The vendor refuses to deliver to this person: unsubscribed from the bot (Viber 6), not on
    the messenger (Viber 5), on the provider's stop list (TurboSMS 404). Not retried; a bulk send
    counts the person as opted out."""


class UncertainApiError(RetryableApiError):
    """The request may have reached the vendor and been done: a read timeout, a connection lost
    after the request was sent, or a 5xx answer to a request that is not idempotent (a vendor may
    apply a create and then fail to answer it). Repeating it is safe only for an idempotent call
    (a read, an edit, a set); a create or a message must not be sent again blindly."""


# Requests that leave the same result however often they are done (RFC 9110 §9.2.2 names GET, HEAD,
# OPTIONS, PUT and DELETE; the vendors' PATCH sets fields, a stage or tags, so it is one too). A POST
# creates unless its connector says otherwise (BaseClient.idempotent).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


def answered_error(message: str, status: int, retry_after: float | None, *,
                   idempotent: bool) -> RetryableApiError:
    """A 429 or 5xx answer. A 429 refuses the call: nothing was done, try again later. A 5xx to an
    idempotent request is tried again as well; to one that is not (a create, a message) it is
    uncertain: the vendor may have done it and failed only in answering."""
    if status >= 500 and not idempotent:
        return UncertainApiError(f"{message} (the request may have been done)", status=status,
                                 retry_after=retry_after)
    return RetryableApiError(message, status=status, retry_after=retry_after)


def check_secret(given: Any, connection: Connection, refusal: str) -> None:
    """Compare what the caller sent with the connection's webhook secret, in constant time."""
    if not connection.webhook_secret or not hmac.compare_digest(
            str(given or "").encode(), connection.webhook_secret.encode()):
        raise Unauthorized(refusal)


# --- form bodies with PHP-style bracket keys ----------------------------------------------

MAX_FORM_KEYS = 5000
MAX_FORM_DEPTH = 8


def parse_nested_form(body: bytes) -> dict[str, Any]:
    """Unflatten `a[b][0][c]=v` pairs into nested dicts (lists stay dicts keyed "0", "1"…)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"body is not UTF-8 (byte {exc.start})") from None
    # what parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_KEYS) does, with the
    # decoded and split keys remembered: a vendor sends the same few dozen keys every time, and
    # unquoting them was a fifth of the receiver's CPU per webhook (BENCHMARKS.md)
    if text and text.count("&") + 1 > MAX_FORM_KEYS:
        raise BadPayload(f"more than {MAX_FORM_KEYS} form fields")
    root: dict[str, Any] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        raw_key, _, value = pair.partition("=")
        key, path = _form_key(raw_key)
        if "+" in value or "%" in value:
            value = _unquote(value.replace("+", " "))
        node = root
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadPayload(f"form key {key!r} clashes with a plain value")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise BadPayload(f"form key {key!r} clashes with a nested value")
        node[path[-1]] = value
    return root


_FORM_KEYS: dict[str, tuple[str, list[str]]] = {}   # raw form key → (key, its path); bounded below


def _form_key(raw: str) -> tuple[str, list[str]]:
    found = _FORM_KEYS.get(raw)
    if found is None:
        key = _unquote(raw.replace("+", " ")) if "+" in raw or "%" in raw else raw
        found = (key, _split_key(key))
        if len(raw) <= 200 and len(_FORM_KEYS) < 10_000:
            _FORM_KEYS[raw] = found
    return found


def _unquote(text: str) -> str:
    """Percent-decoding that refuses bytes which are not UTF-8 (`%ff`): a vendor's form is UTF-8
    throughout, and a replacement character would silently change a value."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise BadPayload(f"form field {text[:40]!r} is not UTF-8 once percent-decoded") from None


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    parts = [head]
    if rest:
        parts += rest.rstrip("]").split("][")
    if len(parts) > MAX_FORM_DEPTH:
        raise BadPayload(f"form key {key[:60]!r} is nested deeper than {MAX_FORM_DEPTH}")
    return parts


def indexed(node: Any) -> list[Any]:
    """The items of a form list (`{"0": …, "1": …}`) in index order."""
    if not isinstance(node, dict):
        return []
    keys = sorted((k for k in node if k.isdigit()), key=int)
    return [node[k] for k in keys]


def parse_json(body: bytes, *, max_depth: int = 32) -> Any:
    """Decode a JSON body, refusing bad UTF-8 and absurd nesting with a one-line reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"body is not UTF-8 (byte {exc.start})") from None
    depth = 0
    for ch in text:  # cheap guard before json's recursion can blow up
        if ch in "[{":
            depth += 1
            if depth > max_depth:
                raise BadPayload(f"JSON nested deeper than {max_depth}")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise BadPayload(str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None


class DuplicateKey(ValueError):
    """A JSON object names one key twice (or holds text that is not Unicode)."""


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: an object that names a key twice is refused. RFC 8259 leaves the
    meaning of such an object to the reader (json keeps the last value, other readers the first), so
    a sender and a proxy could each see a different record; no vendor here sends one.

    So is a string with an unpaired surrogate escape ("\\ud800"): it is no Unicode text (RFC 8259
    §8.2), cannot be written as UTF-8, and no vendor sends one."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(f"JSON object names the key {twice[:60]!r} twice")
    for key, value in pairs:
        _no_lone_surrogates(key)
        _no_lone_surrogates(value)
    return found


def _no_lone_surrogates(value: Any) -> None:
    """Strings, and the strings in lists (objects are checked by their own hook call)."""
    if isinstance(value, str):
        if not value.isascii() and LONE_SURROGATE.search(value):
            raise DuplicateKey("JSON text holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)")
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogates(item)


# --- record ids: what goes into a vendor's URL ------------------------------------------------

POSITIVE_INT = re.compile(r"[1-9][0-9]{0,18}")   # and below 2^63: the signed 64-bit ids vendors keep


def positive_id(value: Any, where: str) -> str:
    """A record id that must be a positive decimal integer (amoCRM, Bitrix24, Planfix, umnico…), as
    its text; anything else (`1/../../account`, `-1`, `1e3`, ` 7`, `007`) is BadPayload. A JSON
    integer is taken as is; a string must be the digits alone."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not POSITIVE_INT.fullmatch(value) or int(value) >= 2 ** 63:
        raise BadPayload(f"{where} must be a positive integer id, found {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def segment(value: Any) -> str:
    """One path segment built from a value (a record id, a file id): percent-quoted whole, so that
    `/`, `?`, `#` and `..` in it can never change which path of the vendor is called."""
    return quote(str(value), safe="")


def has_dot_segments(path: str) -> bool:
    """Does a request path (or URL) walk up or sideways with `.`/`..` segments (also %2e-encoded)?"""
    parts = urlsplit(path).path.split("/")
    return any(unquote(p) in (".", "..") for p in parts)


# --- the connector protocol -----------------------------------------------------------------

class Connector(Protocol):
    SOURCE: str
    CONTENT_TYPES: tuple[str, ...]

    def verify(self, raw: RawWebhook, connection: Connection) -> None: ...
    def parse(self, raw: RawWebhook, connection: Connection) -> list[Event]: ...
    Client: type["BaseClient"]


# --- what a client offers: the verbs --------------------------------------------------------

@dataclass(frozen=True)
class Changed:
    """One record a CRM lists as changed since a moment (changed_since), the same for every CRM:
    the record, its modification mark (a time, or a time and a digest of the record's state; a
    new mark is a new change) and the item as the vendor listed it."""

    type: str
    id: str
    modified: str
    raw: dict[str, Any]


@dataclass(frozen=True)
class Moved:
    """One stage move a CRM keeps in its change history (stage_history), the same for every CRM:
    the record, the stage (and pipeline) it entered and the one it left (None: not in the row),
    when (ISO 8601 UTC), and the vendor's own id of the history row (one move, one id)."""

    type: str
    id: str
    stage: str
    pipeline: str | None
    previous_stage: str | None
    previous_pipeline: str | None
    at: str
    ref: str


class CrmClient(Protocol):
    """What a CRM's client is. Every verb a client really implements is named in its
    `capabilities` (tests/connectors/test_capabilities.py keeps the two equal); the pipeline asks
    `client.can(verb)` and start-up checks read the same set. A client with CRM_VERBS is a CRM's
    (is_crm_client); the others are optional. Records are `Entity`s; what comes back is in the
    common shape (connectors' normalize functions), never a vendor's wire format."""

    capabilities: frozenset[str]
    FIND_BY: tuple[str, ...]

    def can(self, verb: str) -> bool:
        """Is `verb` one of this client's capabilities?"""
        ...

    # reading records
    def get_entity(self, entity: Entity) -> dict[str, Any] | None:
        """The record as it is now (None: record-only mode, or gone)."""
        ...

    def name_refs(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add the CRM's names to the stage, pipeline and responsible refs of `data` (cached metadata)."""
        ...

    def rule_context(self, entity: Entity, needs: set[str] | frozenset[str]) -> dict[str, Any]:
        """What rule conditions read besides the record (tasks, activity, files, contacts), per `needs`."""
        ...

    def changed_since(self, since: str) -> list[Changed] | None:
        """The records changed after `since` (ISO 8601), oldest first (None: record-only)."""
        ...

    def list_tasks(self, entity: Entity, open_only: bool = True) -> list[dict[str, Any]] | None:
        """The tasks of a record (open ones only by default)."""
        ...

    def bulk_recipients(self, stages: list[str] | None = None, pipeline: str | None = None,
                        tags: list[str] | None = None, fields: dict[str, Any] | None = None,
                        updated_from: float | None = None, updated_to: float | None = None) -> list[dict[str, Any]]:
        """A bulk send's list: the deals in `stages` (names or ids), with every tag of `tags`, the
        `fields` values, last changed within [updated_from, updated_to] (unix), every page; each as
        one row of its main contact (`contact`, `name`, `phone`, `email`, the contact's and then the
        deal's fields by lower-cased name, `deal`, `tags`)."""
        ...

    def overdue_tasks(self, before: str) -> list[dict[str, Any]]:
        """Open tasks whose deadline is before `before` (ISO 8601), with their responsible."""
        ...

    def deals_without_task(self) -> list[dict[str, Any]]:
        """Open deals (and leads) that have no open task, with their responsible (digests, D7):
        [{"type", "id", "name", "responsible": {"id", "name"}, "modified"}]."""
        ...

    def open_deals(self, contact_id: str) -> list[dict[str, Any]]:
        """The contact's open deals, [{"id", "name", "modified"}] (`modified`: ISO 8601), for routing
        a message to the most recently active one (pipeline/steps/attach_to_deal.py, D8)."""
        ...

    add_deal_links_contact = True   # add_deal links the contact itself (else the caller links it)

    def add_deal(self, title: str, contact_id: str, fields: dict[str, Any] | None = None) -> Any:
        """A new deal in the first stage, linked to the contact, with `fields` (by name); its id."""
        ...

    # writing records
    def set_fields(self, entity: Entity, fields: dict[str, Any]) -> Any:
        """Write fields by the name the CRM shows (or by id/code)."""
        ...

    def move_to_stage(self, entity: Entity, stage: str, pipeline: str | None = None,
                      current_pipeline: str | None = None) -> Any:
        """Move the record to a stage (name or id), in `pipeline` or its own, no questions asked;
        `current_pipeline`: the record's own, when the caller has just read it (spares a read)."""
        ...

    def create_task(self, entity: Entity, text: str, due: str, responsible: Any = None) -> Any:
        """A task on the record, due at `due` (ISO 8601), for `responsible` (a name or id)."""
        ...

    def add_note(self, entity: Entity, text: str) -> Any:
        """A note (comment) on the record."""
        ...

    def set_responsible(self, entity: Entity, user: Any) -> Any:
        """Make `user` (a name or id) responsible for the record."""
        ...

    def delete_entity(self, entity: Entity) -> Any:
        """Delete the record ("gone" when it already was)."""
        ...

    def notify(self, user: Any, text: str) -> Any:
        """A notification to a user of the CRM."""
        ...

    def complete_task(self, task_id: Any, result_text: str) -> Any:
        """Complete one task with a result text."""
        ...

    def complete_tasks_matching(self, entity: Entity, pattern: str, result_text: str) -> Any:
        """Complete the record's open tasks whose text matches `pattern`."""
        ...

    def change_tags(self, entity: Entity, add: Any = (), remove: Any = ()) -> Any:
        """Add and remove tags by name."""
        ...

    def get_raw(self, entity: Entity) -> dict[str, Any] | None:
        """The record as the vendor's API returns it (what create_copy copies from)."""
        ...

    def create_copy(self, source: dict[str, Any] | None, pipeline: str, stage: str, **options: Any) -> Any:
        """A new record copied from `source`, in another pipeline and stage (one create)."""
        ...

    def link_copy(self, record_id: Any, source: dict[str, Any]) -> Any:
        """Link a record to the contacts and company of `source` (one call)."""
        ...

    # reading back an uncertain create (a 5xx or no answer after it was sent)
    def find_task(self, entity: Entity, text: str, since: float | str) -> Any:
        """The id of the record's task with this text made at or after `since`, or None."""
        ...

    def find_note(self, entity: Entity, text: str, since: float | str) -> Any:
        """The id of the record's note (comment) with this text made at or after `since`, or None."""
        ...

    def find_lead(self, pipeline: str, stage: str, name: str | None, since: float | str) -> Any:
        """The id of a lead/deal made at or after `since` in that pipeline and stage, with that
        name (None: any), or None (reads back create_copy)."""
        ...

    def find_contact(self, name: str, by: str, value: str, since: float | str, field: str | None = None) -> Any:
        """The id of a contact with that name carrying `value` (a phone, an e-mail, or the sender
        kept in `field`) made at or after `since`, or None (reads back add_contact)."""
        ...

    # the catch-up: what the CRM's change history says
    def stage_history(self, since: str) -> list[Moved] | None:
        """Every stage move since `since` (ISO 8601), oldest first (None: record-only)."""
        ...

    def add_chat_comment(self, entity: Entity, text: str, uploads: list[dict[str, Any]] | None = None) -> Any:
        """A comment carrying a chat message and its files, marked as crmbridge's own."""
        ...

    def download(self, file_id: str, size: int | None = None) -> tuple[bytes, str] | None:
        """(content, name) of a file the CRM keeps (None: record-only)."""
        ...

    # files made by crmbridge (make_document, pipeline/steps/make_document.py)
    def upload_file(self, content: bytes, name: str, mime_type: str | None = None) -> Any:
        """Store a file where the CRM keeps files apart from records; what attach_file needs to name it."""
        ...

    def attach_file(self, entity: Entity, name: str, text: str, file: Any = None, content: bytes | None = None) -> Any:
        """Show a file on the record as its users see files (a note or comment carrying it): `file`
        as upload_file returned it, or the `content` itself where one call carries it; its id."""
        ...

    def product_rows(self, entity: Entity) -> list[dict[str, Any]]:
        """The record's product rows as documents read them: {name, quantity, unit, price} and,
        where the CRM keeps them per row, vat_rate (percent or None) and vat_included."""
        ...

    # single calls the pipeline's steps (pipeline/steps/) are built on
    def search_contacts(self, by: str, value: str, field: str | None = None) -> list[dict[str, Any]] | None:
        """Contacts the vendor's search finds for a phone, email or sender: candidates to be checked,
        [{"id", "created" (unix seconds or None), "phones", "emails", "fields"}]."""
        ...

    def add_contact(self, name: str, by: str, value: str, fields: dict[str, Any]) -> Any:
        """Create a contact carrying the phone/email `value`; its id."""
        ...

    def link_contact(self, entity: Entity, contact_id: str) -> str | None:
        """Link a contact to a record: None when linked, else why it cannot be."""
        ...

    def find_catalog_elements(self, catalog: str | int, query: str) -> list[dict[str, Any]]:
        """Entries of a catalog (a list) the vendor's search finds for `query`: [{"id", "name"}]."""
        ...

    def read_stage(self, entity: Entity) -> dict[str, Any] | None:
        """The record's stage and pipeline ids now, {"stage", "pipeline"}, in one read."""
        ...

    def find_stage(self, entity: Entity, stage: str, pipeline: str | None = None) -> dict[str, Any]:
        """A stage named as the CRM shows it (or its id) → {"stage", "pipeline"} ids."""
        ...

    def stage_order(self, entity: Entity, pipeline: str | None, fresh: bool = False) -> dict[str, Any]:
        """{stage id: rank} of the record's kind in `pipeline`: a higher rank is further on."""
        ...

    def read_task(self, entity: Entity, fields: list[str] = ()) -> dict[str, Any] | None:
        """A task with its project and process, and the custom `fields` named (by those names)."""
        ...

    def project_tasks(self, project: Any, fields: list[str] = ()) -> list[dict[str, Any]]:
        """Every task of a project, as read_task gives one."""
        ...

    def find_tasks(self, field: str, value: str) -> list[dict[str, Any]] | None:
        """Every task whose line custom field `field` equals `value` (an order by its conversation),
        in the common shape with its status, lowest id first."""
        ...

    def process_id(self, process: Any) -> Any:
        """A task process by name or id → its id."""
        ...

    def set_status(self, entity: Entity, status: Any, pipeline: Any = None, due: str | None = None,
                   responsible: Any = None, fields: dict[str, Any] | None = None) -> Any:
        """A task's status (in its process `pipeline`), and its deadline, executor and custom
        fields, in one write."""
        ...


class ChannelClient(Protocol):
    """The verbs of the other clients: messengers, e-mail, outgoing webhooks, telephony."""

    def send_message(self, chat: Any, text: str, buttons: list | None = None) -> Any:
        """A message to a chat."""
        ...

    def send_approval(self, chat: Any, text: str, choices: list[dict[str, str]], record: dict[str, str]) -> Any:
        """A message with signed choice buttons for a record."""
        ...

    def answer_button(self, callback_id: str, text: str | None = None) -> Any:
        """Answer a button press."""
        ...

    def edit_buttons(self, chat: Any, message_id: int, buttons: list | None = None) -> Any:
        """Replace a message's buttons."""
        ...

    def edit_text(self, chat: Any, message_id: int, text: str, buttons: list | None = None) -> Any:
        """Replace a message's text."""
        ...

    def send_photo(self, chat: Any, photo: Any, caption: str | None = None) -> Any:
        """A photo to a chat."""
        ...

    def send_document(self, chat: Any, content: bytes, filename: str) -> Any:
        """A file to a chat."""
        ...

    def reply(self, conversation: Any, text: str, attachments: list[dict[str, Any]] | None = None) -> Any:
        """A reply in an inbox conversation."""
        ...

    def download_file(self, url: str) -> tuple[bytes, str]:
        """(content, name) of a file a message named by its URL (an inbox attachment), from the hosts
        the connection allows, without the connection's credentials."""
        ...

    def send_email(self, to: Any, subject: str, text: str, html: str | None = None) -> Any:
        """An e-mail."""
        ...

    def send_sms(self, phone: str, text: str, ident: str | None = None) -> Any:
        """One SMS to one phone number (E.164), under our own id where the provider keeps one."""
        ...

    def sms_status(self, phone: str, ident: str) -> Any:
        """The delivery status of an SMS sent under our own id (None: the provider does not have it)."""
        ...

    def post_webhook(self, body: Any, path: str | None = None) -> Any:
        """A POST of `body` to the connection's URL."""
        ...

    def request_callback(self, manager: str, client: str) -> Any:
        """Ring the manager, then connect the client (telephony)."""
        ...

    def extension(self, manager: str) -> str:
        """A manager's name or id → their PBX extension."""
        ...

    def download(self, file_id: str, size: int | None = None) -> tuple[bytes, str] | None:
        """(content, name) of a file the channel keeps."""
        ...


def _verbs(*protocols: type) -> frozenset[str]:
    return frozenset(name for proto in protocols for name, value in vars(proto).items()
                     if callable(value) and not name.startswith("_") and name != "can")


# every verb a client may name in `capabilities`; CRM_VERBS make a client a CRM's
VERBS = _verbs(CrmClient, ChannelClient)
CRM_VERBS = frozenset({"get_entity", "set_fields"})


# --- API clients ---------------------------------------------------------------------------

Recorder = Callable[[str, str, Any], None]


# how lookup_field (pipeline/steps/lookup_field.py) compares what was typed with a catalog's names
LOOKUP_MATCHES = ("starts_with", "word_starts_with")


class BaseClient:
    """One HTTP session per connection, with timeouts and errors split in two kinds."""

    rate_per_second: float = 5.0
    burst: float | None = None        # None: one second's worth
    # True when every request the client's action methods make goes through request() (or, for
    # Telegram, call()), so that `sending` is told before each one leaves (pipeline.execute)
    reports_sends: bool = False
    timeout: float = 10.0
    metadata_ttl = 3600               # seconds the CRM's names (stages, users, fields) are cached
    memo_ttl = 60.0                   # …and kept in this process in front of that cache
    # The optional verbs this client implements (the CrmClient interface): the pipeline asks
    # `client.can(verb)` instead of probing attributes, and start-up checks read the same set.
    capabilities: frozenset[str] = frozenset()

    def __init__(self, connection: Connection, *, store: Any = None, recorder: Recorder | None = None,
                 key_prefix: str = "crmbridge:"):
        self.connection = connection
        self.store = store
        self.key_prefix = key_prefix
        self.recorder = recorder
        self.session = requests.Session()
        self.session.hooks["response"].append(metrics.vendor_hook(connection))   # counted, timed, kept
        read_environment_once(self.session)
        self.limiter: Callable[..., Any] | None = None   # set by the runtime: the connection's shared limits
        self.sending: Callable[[], None] | None = None    # set by the worker: a request is about to leave
        self._memo: dict[str, tuple[float, Any]] = {}      # cached(): name → (expires, value)

    def can(self, verb: str) -> bool:
        """Does this client implement `verb` (a name in `capabilities`)?"""
        return verb in self.capabilities

    @property
    def record_only(self) -> bool:
        return self.connection.record_only

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                url: str | None = None, idempotent: bool | None = None) -> requests.Response | None:
        """Send one request; in record-only mode log it and return None. `idempotent` (default:
        self.idempotent(method, path)) decides whether a 5xx answer is retryable or uncertain."""
        target = url or f"{(self.connection.base_url or '').rstrip('/')}{path}"
        if has_dot_segments(path) or has_dot_segments(target):
            # defence in depth: ids are checked at parse time and quoted as path segments, so a
            # `..` here means a bug let one through; nothing leaves (GET /leads/1/../../account)
            raise PermanentApiError(f"{method} {path[:80]}: refused, the path has '.' or '..' segments")
        if self.record_only:
            log.info("record-only %s: would call %s %s params=%s body=%s", self.connection.name,
                     method, target, dict(params or {}),
                     json.dumps(json_body, ensure_ascii=False, default=str))
            if self.recorder:
                self.recorder(method, target, json_body)
            return None
        release = self.limiter(hold=self.hold_seconds) if self.limiter else None
        try:
            if self.sending:
                self.sending()
            try:
                resp = self.session.request(method, target, json=json_body, params=params,
                                            headers={**self.auth_headers(), **(headers or {})},
                                            timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                metrics.vendor_failed(self.connection, method, target, exc)
                raise transport_error(f"{method} {path}", exc) from None
        finally:
            if release:
                release()
        self.check(resp, f"{method} {path}",
                   idempotent=self.idempotent(method, path) if idempotent is None else idempotent)
        return resp

    @property
    def hold_seconds(self) -> float:
        """How long a call may still reach the vendor after its rate-limit slot was taken: the
        connect and read timeouts, and a second more. The slot counts as that late until the
        answer comes (ratelimit.RateLimiter.acquire `hold`)."""
        return 2 * self.timeout + 1.0

    def idempotent(self, method: str, path: str) -> bool:
        """Does doing this request twice leave what doing it once leaves? Reads, sets and deletes
        do; a POST creates. Connectors whose POSTs also read or set say which (Planfix, Bitrix24)."""
        return method.upper() in IDEMPOTENT_METHODS

    def auth_headers(self) -> dict[str, str]:
        return {}

    def cached(self, name: str, fetch: Callable[[], Any]) -> Any:
        """Metadata kept in Redis for `metadata_ttl`, shared by every worker; fetch() on a miss.

        In front of Redis, this process keeps what it read for `memo_ttl` seconds (a worker reads
        pipelines and users for every event). Callers must not change the value they get."""
        memo = self._memo.get(name)
        if memo is not None and memo[0] > time.monotonic():
            return memo[1]
        key = f"{self.key_prefix}meta:{self.connection.name}:{name}"
        hit = self.store.get(key) if self.store is not None else None
        if hit:
            value = json.loads(hit)
        else:
            value = fetch()
            if self.store is not None:
                self.store.set(key, json.dumps(value, ensure_ascii=False), ex=self.metadata_ttl)
        self._memo[name] = (time.monotonic() + self.memo_ttl, value)
        return value

    def forget(self, name: str) -> None:
        """Drop cached metadata, so that the next use reads it fresh (a name was not found)."""
        self._memo.pop(name, None)
        if self.store is not None:
            self.store.delete(f"{self.key_prefix}meta:{self.connection.name}:{name}")

    def check(self, resp: requests.Response, what: str, *, idempotent: bool = True) -> None:
        """Raise RetryableApiError for 429 and 5xx (UncertainApiError for a 5xx to a request that is
        not idempotent), PermanentApiError for other 4xx."""
        if resp.status_code < 400:
            return
        message = f"{what}: HTTP {resp.status_code}: {self.error_message(resp)}"
        if resp.status_code == 429 or resp.status_code >= 500:
            raise answered_error(message, resp.status_code, retry_after_header(resp), idempotent=idempotent)
        raise PermanentApiError(message, status=resp.status_code)

    def error_message(self, resp: requests.Response) -> str:
        return resp.text[:300]

    # find_or_create (pipeline/steps/find_or_create.py): the `by:` values a client's search_contacts can do
    FIND_BY: tuple[str, ...] = ()


FIND_BY = ("phone", "email", "inbox_sender")


def is_crm_client(client: Any) -> bool:
    """A connector's Client (class or instance) that reads and writes records: a CRM's (CRM_VERBS)."""
    return CRM_VERBS <= getattr(client, "capabilities", frozenset())


def phone_digits(value: Any) -> str:
    """A phone number compared as its last 10 digits (all of them when shorter): +380 67 123 45 67,
    067 123-45-67 and 380671234567 are one number, as are +7 912 … and 8 912 …; no vendor source
    here names a rule to rewrite prefixes (8… → 7…), so none is applied."""
    digits = re.sub(r"\D", "", str(value or ""))
    return digits[-10:] if len(digits) >= 10 else digits


def match_key(by: str, value: Any) -> str:
    """What two values of `by` are compared as: phone digits, an email in any case, a sender's
    id or profile link in any case and without a trailing slash."""
    if by == "phone":
        return phone_digits(value)
    text = str(value or "").strip()
    return text.casefold() if by == "email" else text.rstrip("/").casefold()


def contact_matches(by: str, value: Any, contact: dict[str, Any], field: str | None = None) -> bool:
    """Does a candidate the vendor's search returned really carry `value`? (Searches are fuzzy.)"""
    want = match_key(by, value)
    if by == "phone":
        have = contact.get("phones") or []
    elif by == "email":
        have = contact.get("emails") or []
    else:
        kept = (contact.get("fields") or {}).get(field)
        have = kept if isinstance(kept, list) else [kept]
    return bool(want) and any(match_key(by, h) == want for h in have if h not in (None, ""))


def read_environment_once(session: requests.Session) -> None:
    """Apply what the environment tells requests once, instead of on every call. A session that
    trusts the environment walks all of it twice per request to look for proxies (urllib's
    getproxies_environment: ~0.15 ms a request in bench's profile). With no proxy and no .netrc,
    the only thing it could find is a CA bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE), which is set
    on the session here; with a proxy or a .netrc the session keeps reading the environment."""
    import os
    import urllib.request
    netrc = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    if urllib.request.getproxies() or any(os.path.exists(os.path.expanduser(f)) for f in netrc):
        return
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle


def transport_error(what: str, exc: Exception) -> RetryableApiError:
    """A request that got no answer: RetryableApiError if it cannot have reached the vendor (the
    connection was never made), UncertainApiError if it may have (read timeout, connection lost)."""
    from urllib3.exceptions import NewConnectionError
    reason = exc.args[0] if exc.args else None
    never_sent = isinstance(exc, requests.ConnectTimeout) or isinstance(getattr(reason, "reason", reason),
                                                                          NewConnectionError)
    kind = RetryableApiError if never_sent else UncertainApiError
    return kind(f"{what}: {type(exc).__name__}" + ("" if never_sent else " (the request may have been done)"))


def retry_after_header(resp: requests.Response) -> float | None:
    """Seconds from a Retry-After header, if it gives a number."""
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def fields_match(have: dict[str, Any], want: dict[str, Any] | None) -> bool:
    """Every wanted field has the value (a list field: one of its values), compared as text, any case."""
    for name, value in (want or {}).items():
        found = have.get(name)
        found = found if isinstance(found, list) else [found]
        if str(value).casefold() not in {str(v).casefold() for v in found if v is not None}:
            return False
    return True


def recipient_row(contact: dict[str, Any], deal: dict[str, Any]) -> dict[str, Any]:
    """One bulk-send row from a contact and its deal, both in the common shape: the contact's fields
    and then the deal's (a name both have: the contact's), every key lower-cased."""
    row: dict[str, Any] = {str(k).lower(): v for k, v in (deal.get("fields") or {}).items()}
    row.update({str(k).lower(): v for k, v in (contact.get("fields") or {}).items()})
    row.update({"contact": contact["id"], "name": contact.get("name") or "", "phone": contact.get("phone") or "",
                "email": contact.get("email") or "", "deal": deal["id"], "deal_name": deal.get("name") or "",
                "tags": ", ".join(str(t) for t in deal.get("tags") or [])})
    return row
