"""amoCRM auth: a long-lived token, or OAuth 2.0 with single-use, rotating refresh tokens.

OAuth facts (amocrm.ru/developers/content/oauth/oauth and /step-by-step, via the verbatim mirror
biradrags/amo-docs): the access token lives 1 day (`expires_in: 86400`), the refresh token 3
months, and every refresh issues a new refresh token; the old one can no longer be used.
A long-lived token "не имеет refresh_token" (same page, "Долгосрочные токены").
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from redis.exceptions import WatchError

from connectors.base import PermanentApiError, RetryableApiError

log = logging.getLogger("crmbridge.connectors.amocrm")


class TokenAuth:
    """Mixed into the API client: Bearer headers, refresh on expiry or 401, stored pair, lock."""

    connection: Any      # these four come from BaseClient
    store: Any
    session: requests.Session
    key_prefix: str
    token_margin = 300   # refresh an access token with less than 5 minutes left
    lock_seconds = 30
    _token_in_use: str | None = None
    _memory_tokens: str | None = None  # the pair, when there is no store

    @property
    def oauth(self) -> bool:
        """OAuth when the credentials carry a refresh_token (with client_id, client_secret, redirect_uri)."""
        return bool(self.connection.credentials.get("refresh_token"))

    def auth_headers(self) -> dict[str, str]:
        token = self.access_token() if self.oauth else self.connection.credentials.get("token", "")
        self._token_in_use = token
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        """One call; with OAuth a 401 refreshes the token pair once and retries once."""
        try:
            return super().request(method, path, **kwargs)
        except PermanentApiError as exc:
            if exc.status != 401 or not self.oauth:
                raise
            self.refresh_tokens(rejected=self._token_in_use)
            return super().request(method, path, **kwargs)

    @property
    def token_key(self) -> str:
        return f"{self.key_prefix}oauth:{self.connection.name}"

    def access_token(self) -> str:
        """The stored access token, refreshed first when it is missing or about to expire."""
        state = self._load_tokens()
        if state and state["expires_at"] - self.token_margin > time.time():
            return state["access_token"]
        return self.refresh_tokens(rejected=state["access_token"] if state else None)

    def refresh_tokens(self, rejected: str | None = None) -> str:
        """Trade the refresh token for a new pair under a lock; the pair is stored before use.

        The refresh token is single-use and every refresh issues a new one ("при каждом обновлении
        access token выдается новый refresh token", oauth/oauth), so two workers must not both
        spend it: the second waits for the lock, then finds the first one's pair.
        """
        with self._token_lock():
            state = self._load_tokens()
            if state and state["access_token"] != rejected and \
                    state["expires_at"] - self.token_margin > time.time():
                return state["access_token"]
            spent = state["refresh_token"] if state else self.connection.credentials["refresh_token"]
            fresh = self._grant(spent)
            self._save_tokens(fresh)
            return fresh["access_token"]

    def _grant(self, refresh_token: str) -> dict[str, Any]:
        """POST /oauth2/access_token, grant_type refresh_token (oauth/step-by-step)."""
        creds = self.connection.credentials
        body = {"client_id": creds.get("client_id", ""), "client_secret": creds.get("client_secret", ""),
                "grant_type": "refresh_token", "refresh_token": refresh_token,
                "redirect_uri": creds.get("redirect_uri", "")}
        url = f"{(self.connection.base_url or '').rstrip('/')}/oauth2/access_token"
        try:
            resp = self.session.post(url, json=body, timeout=self.timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise RetryableApiError(f"POST /oauth2/access_token: {type(exc).__name__}") from None
        if 400 <= resp.status_code < 500 and resp.status_code != 429:
            raise PermanentApiError(
                f"amoCRM refused the refresh token (HTTP {resp.status_code}: {self.error_message(resp)}); "
                "authorize the integration again and set the new refresh_token", status=resp.status_code)
        self.check(resp, "POST /oauth2/access_token")
        pair = resp.json()
        return {"access_token": pair["access_token"], "refresh_token": pair["refresh_token"],
                "expires_at": time.time() + int(pair.get("expires_in") or 86400),
                "seed": creds["refresh_token"]}

    def _load_tokens(self) -> dict[str, Any] | None:
        raw = self.store.get(self.token_key) if self.store is not None else self._memory_tokens
        if not raw:
            return None
        state = json.loads(raw)
        # a refresh_token in the credentials other than the one we started from means the
        # integration was authorized again: the stored chain is dead, start from the new one
        if state.get("seed") != self.connection.credentials.get("refresh_token"):
            return None
        return state

    def _save_tokens(self, state: dict[str, Any]) -> None:
        raw = json.dumps(state)
        if self.store is None:
            log.warning("%s: no store; the amoCRM token pair lives in this process only", self.connection.name)
            self._memory_tokens = raw
        else:
            self.store.set(self.token_key, raw)

    @contextmanager
    def _token_lock(self) -> Iterator[None]:
        """SET NX EX on a key beside the pair; plain commands, so the embedded fakeredis (no Lua) works too."""
        if self.store is None:
            yield
            return
        key, mine = f"{self.token_key}:lock", uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_seconds
        while not self.store.set(key, mine, nx=True, ex=self.lock_seconds):
            if time.monotonic() > deadline:
                raise RetryableApiError("another worker is refreshing the amoCRM token; try again")
            time.sleep(0.05)
        try:
            yield
        finally:
            self._unlock(key, mine)

    def _unlock(self, key: str, mine: str) -> None:
        """Delete the lock only while it is still ours (it may have expired and been taken)."""
        with self.store.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) in (mine, mine.encode()):
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except WatchError:
                pass

