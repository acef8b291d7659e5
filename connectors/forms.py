"""Google Forms: a submitted response in, as one `form.submitted` event. Inbound only.

Google Forms has no outgoing webhook. An Apps Script installable "On form submit" trigger
posts the response as JSON with UrlFetchApp (script and set-up: docs/connectors/google-forms.md).
The form-bound script sends {secret, form {id, title}, response_id, email, submitted_at,
answers {question title: answer}}: a checkbox answer is a list of strings, a grid a list per row
(ItemResponse.getResponse, developers.google.com/apps-script/reference/forms/item-response).
The sheet-bound variant sends the event's `namedValues` ({column title: [answer]}, always lists,
"Timestamp" included; developers.google.com/apps-script/guides/triggers/events); a bare
`namedValues` object and the flat {Email, Form_Id, Form_Title, question: answer} shape seen in
public scripts are read too. Apps Script signs nothing: the secret comes in the body, the URL
(`token`) or an X-Crmbridge-Token header. Samples: tests/payloads/forms/.

A body in the Forms API's own `FormResponse` shape (forms.responses.get/list, e.g. relayed by a script
that reads responses through the API: {formId, responseId, createTime, lastSubmittedTime,
respondentEmail, answers {questionId: {questionId, textAnswers {answers [{value}]}, fileUploadAnswers
{answers [{fileId, fileName, mimeType}]}}}}, developers.google.com/forms/api/reference/rest/v1/
forms.responses) is read as such: answers keyed by question id (or by the title that
`options.questions: {questionId: title}` gives), text answers as text (a list when several), file
uploads as [{id, name, mime_type}], and its responseId as the response id.

What is refused (400), because neither Apps Script nor the Forms API sends it: an answer that is not
text, a list of text or a list of such lists (ItemResponse.getResponse gives String, String[] or
String[][]); a namedValues column that is not a list of text; a FormResponse answer without its
questionId or with neither textAnswers nor fileUploadAnswers. Ids: a form id and a question id are
Drive-style ids, 1-128 of A-Z a-z 0-9 _ -; a response id the same alphabet up to 256 (FormResponse.getId
"2_ABaOnud8Xk…", responseId "ACYDBNj…").
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from connectors.base import (
    check_secret, BadPayload, BaseClient, Connection, Entity, Event, RawWebhook, event_id,
    parse_json, utc_iso,
)

SOURCE = "forms"
INBOUND_ONLY = True  # no API to call: never "record-only"
CONTENT_TYPES = ("application/json",)
TOKEN_HEADER = "X-Crmbridge-Token"
# Column titles the response sheet adds, in the form's language (en, uk, ru). Not documented
# per language by Google; these are the titles Sheets shows.
TIMESTAMP_TITLES = ("timestamp", "позначка часу", "отметка времени")
EMAIL_TITLES = ("email address", "email", "адреса електронної пошти", "електронна пошта",
                "адрес электронной почты", "электронная почта")
FLAT_KEYS = {"Email": "email", "Form_Id": "form_id", "Form_Title": "form_title"}
ENVELOPE = {"secret", "form", "form_id", "form_title", "response_id", "email", "submitted_at",
            "answers", "namedValues", "values", "row", "sheet", "edit_url"}
API_RESPONSE = {"formId", "responseId", "createTime", "lastSubmittedTime", "respondentEmail", "answers",
                "totalScore", "secret"}
FORM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")


def verify(raw: RawWebhook, connection: Connection) -> None:
    """Compare the header, URL or body secret with the connection's, in constant time."""
    given = raw.headers.get(TOKEN_HEADER) or raw.query.get("token") or _body(raw).get("secret")
    check_secret(given, connection, f"missing or wrong secret (body 'secret', URL 'token' or {TOKEN_HEADER} header)")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    """One submission → one form.submitted event, keyed by the response id when there is one."""
    body = _body(raw)
    if "responseId" in body or "formId" in body:
        response = _api_response(body, connection)
    elif isinstance(body.get("answers"), dict):
        response = _form_bound(body)
    elif isinstance(body.get("namedValues"), dict):
        response = _sheet_bound(body, body["namedValues"])
    elif "Form_Id" in body:
        response = _flat(body)
    elif body and not set(body) & ENVELOPE and all(isinstance(v, list) for v in body.values()):
        response = _sheet_bound({}, body)  # e.namedValues posted as it is
    else:
        raise BadPayload("no answers found (expected 'answers', 'namedValues' or the bare namedValues)")
    given = response["form"].get("id") or raw.query.get("form")
    if given is not None and not FORM_ID.fullmatch(given):
        raise BadPayload(f"form id {given[:40]!r} is not a Google Forms id (1-128 of A-Z a-z 0-9 _ -)")
    if response["response_id"] is not None and not RESPONSE_ID.fullmatch(response["response_id"]):
        raise BadPayload(f"response id {response['response_id'][:40]!r} is not a Google Forms response id")
    form_id = given or str((connection.options or {}).get("form_id") or "") or connection.name
    response["form"]["id"] = form_id
    plain = {k: v for k, v in body.items() if k != "secret"}
    # Apps Script gives every response an id (FormResponse.getId); a sheet row has none, so
    # its content is the key.
    key = (f"{connection.name}:response:{response['response_id']}" if response["response_id"]
           else event_id(connection.name, form_id, plain))
    return [Event(id=key, connection=connection.name, source=SOURCE, kind="form.submitted",
                  entity=Entity("form", form_id), data=response, raw=plain,
                  occurred_at=_iso(response["submitted_at"]) or utc_iso())]


def _body(raw: RawWebhook) -> dict[str, Any]:
    body = parse_json(raw.body)
    if not isinstance(body, dict):
        raise BadPayload(f"expected a JSON object, found {type(body).__name__}")
    return body


def _response(form_id: Any, title: Any, response_id: Any, email: Any, submitted_at: Any,
              answers: dict[str, Any]) -> dict[str, Any]:
    return {"form": {"id": _text(form_id), "title": _text(title)}, "response_id": _text(response_id),
            "email": _text(email), "submitted_at": _text(submitted_at), "answers": answers}


def _answer(value: Any, where: str) -> Any:
    """An ItemResponse.getResponse value: String, String[] or String[][]; anything else is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value):
        return value
    raise BadPayload(f"answer {where[:60]!r} is not text, a list of text or a list of such lists")


def _api_response(body: dict[str, Any], connection: Connection) -> dict[str, Any]:
    """The Forms API's FormResponse: answers by question id (or options.questions' title)."""
    unknown = set(body) - API_RESPONSE
    if unknown:
        raise BadPayload(f"not a FormResponse: unexpected key {sorted(unknown)[0][:40]!r}")
    if not isinstance(body.get("responseId"), str) or not isinstance(body.get("answers", {}), dict):
        raise BadPayload("a FormResponse needs a responseId (text) and answers (an object by questionId)")
    titles = (connection.options or {}).get("questions") or {}
    answers: dict[str, Any] = {}
    for key, item in body.get("answers", {}).items():
        if not isinstance(item, dict) or item.get("questionId") != key or not FORM_ID.fullmatch(key):
            raise BadPayload(f"answer {key[:40]!r}: expected {{questionId: {key[:40]!r}, textAnswers | fileUploadAnswers}}")
        answers[str(titles.get(key) or key)] = _api_answer(item, key)
    return _response(body.get("formId"), None, body["responseId"], body.get("respondentEmail"),
                     body.get("lastSubmittedTime") or body.get("createTime"), answers)


def _api_answer(item: dict[str, Any], key: str) -> Any:
    """textAnswers.answers[].value → text (a list when several); fileUploadAnswers → [{id, name, mime_type}]."""
    text, files = item.get("textAnswers"), item.get("fileUploadAnswers")
    holder = text if text is not None else files
    found = holder.get("answers") if isinstance(holder, dict) else None
    if not isinstance(found, list) or not all(isinstance(a, dict) for a in found):
        raise BadPayload(f"answer {key[:40]!r}: expected textAnswers.answers or fileUploadAnswers.answers (a list)")
    if text is not None:
        values = [a.get("value") for a in found]
        if not all(isinstance(v, str) for v in values):
            raise BadPayload(f"answer {key[:40]!r}: a textAnswers value is not text")
        return values[0] if len(values) == 1 else values
    uploads = [{"id": a.get("fileId"), "name": a.get("fileName"), "mime_type": a.get("mimeType")} for a in found]
    if not all(isinstance(u["id"], str) and FORM_ID.fullmatch(u["id"]) for u in uploads):
        raise BadPayload(f"answer {key[:40]!r}: a fileUploadAnswers fileId is not a Drive id")
    return uploads


def _form_bound(body: dict[str, Any]) -> dict[str, Any]:
    form = body.get("form") if isinstance(body.get("form"), dict) else {}
    answers = {str(k): _answer(v, str(k)) for k, v in body["answers"].items()}
    return _response(form.get("id") or body.get("form_id"), form.get("title") or body.get("form_title"),
                     body.get("response_id"), body.get("email"), body.get("submitted_at"), answers)


def _sheet_bound(body: dict[str, Any], named: dict[str, Any]) -> dict[str, Any]:
    """namedValues: one-item lists unwrapped; the timestamp and email columns taken out."""
    answers, stamp, email = {}, None, body.get("email")
    for title, value in named.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadPayload(f"namedValues {str(title)[:60]!r} is not a list of text (Sheets gives [answer])")
        value = value[0] if len(value) == 1 else value
        lowered = str(title).strip().lower()
        if lowered in TIMESTAMP_TITLES:
            stamp = value
        elif lowered in EMAIL_TITLES:
            email = email or value
        else:
            answers[str(title)] = value
    form = body.get("form") if isinstance(body.get("form"), dict) else {}
    return _response(form.get("id") or body.get("form_id"), form.get("title") or body.get("form_title"),
                     body.get("response_id"), email, body.get("submitted_at") or stamp, answers)


def _flat(body: dict[str, Any]) -> dict[str, Any]:
    answers = {k: _answer(v, k) for k, v in body.items() if k not in FLAT_KEYS and k not in ENVELOPE}
    return _response(body.get("Form_Id"), body.get("Form_Title"), body.get("response_id"),
                     body.get("Email"), body.get("submitted_at"), answers)


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value).strip() or None


def _iso(stamp: str | None) -> str | None:
    """An ISO timestamp (the script sends toISOString()) as ISO UTC; sheet dates are locale text."""
    try:
        moment = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return moment.astimezone(timezone.utc).isoformat()


class Client(BaseClient):
    """Forms are inbound only: rules react to submissions and act through other connections."""
