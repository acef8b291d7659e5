"""amoCRM (Kommo) API v4: webhooks in, leads/contacts/tasks/notes/files out.

`parse.py` reads webhooks (form bodies, no signature: the URL carries a secret);
`client.py` is the API client, `auth.py` its tokens (long-lived, or OAuth 2.0 with rotating
refresh tokens kept in Redis). amoCRM waits 2 s for an answer and switches a hook off after
more than 100 bad answers in 2 hours (webhooks-format).
"""
from connectors.amocrm.client import API_ENTITY, Client
from connectors.amocrm.parse import (
    ACTION_KINDS,
    BASE_URL_REQUIRED,
    COMPACT_DEDUPE_WINDOW,
    CONTENT_TYPES,
    ENTITY_TYPES,
    SOURCE,
    normalize_webhook_item,
    parse,
    verify,
)

__all__ = [
    "ACTION_KINDS",
    "API_ENTITY",
    "BASE_URL_REQUIRED",
    "COMPACT_DEDUPE_WINDOW",
    "CONTENT_TYPES",
    "ENTITY_TYPES",
    "SOURCE",
    "Client",
    "normalize_webhook_item",
    "parse",
    "verify",
]
