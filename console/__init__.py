"""The console: a record's history, recent events, dead letters, timers, connections and rules,
as server-rendered pages under /console of the same app (docs/console.md).

Off unless CRMBRIDGE_CONSOLE_TOKEN is set (every /console URL is then a 404). With it, a browser
logs in once per browser session with that token (compared in constant time); its session cookie
(HttpOnly, SameSite=Lax, path /console) is signed with CRMBRIDGE_CONSOLE_SECRET, or with a key
derived from the token (changing the token logs everyone out). Every POST carries the session's
CSRF token. A script may read any page with `Authorization: Bearer <token>`, never act with it.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

SESSION_KEY = "crmbridge_console"
LOGIN_TRIES = 10          # wrong tokens an address may try …
LOGIN_PAUSE = 15 * 60     # … in this many seconds, then it waits (shared by every web process through Redis)
READS = ("GET", "HEAD")
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "form-action 'self'; base-uri 'none'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}


def register_console(app: Flask, rt: Any) -> None:
    """Mount the console on the app when CRMBRIDGE_CONSOLE_TOKEN is set; otherwise nothing (404)."""
    token = (rt.settings.environ.get("CRMBRIDGE_CONSOLE_TOKEN") or "").strip()
    if not token:
        return
    from console import pages
    secret = rt.settings.environ.get("CRMBRIDGE_CONSOLE_SECRET") or \
        hmac.new(token.encode(), b"crmbridge console session", hashlib.sha256).hexdigest()
    app.secret_key = secret
    app.config.update(SESSION_COOKIE_NAME=SESSION_KEY, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_PATH="/console",
                      SESSION_COOKIE_SECURE=rt.settings.environ.get("CRMBRIDGE_CONSOLE_COOKIE_SECURE", "") in ("1", "true", "yes"))
    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    gate = Gate(token, rt)
    bp.before_request(gate.check)
    bp.after_request(gate.harden)
    bp.add_url_rule("/login", "login", gate.login, methods=["GET", "POST"])
    bp.add_url_rule("/logout", "logout", gate.logout, methods=["POST"])
    bp.register_error_handler(HTTPException, error_page)
    bp.app_context_processor(lambda: {"csrf_token": csrf_token})
    pages.add_pages(bp, rt, scrub=secrets_of(rt, token))
    app.register_blueprint(bp)


class Gate:
    """The token check in front of every console page, and the login that opens a session."""

    def __init__(self, token: str, rt: Any) -> None:
        self.token = token.encode()
        self.rt = rt
        # what a session holds once logged in: a digest of the token, so a new token ends old sessions
        self.mark = hashlib.sha256(b"crmbridge console login:" + self.token).hexdigest()

    def matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self.token)

    def check(self):
        """Before every console request: open pages, the bearer token (reads only), the session;
        and the CSRF token on every POST."""
        if request.endpoint in ("console.static",):
            return None
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            if request.method not in READS:
                abort(403, "a bearer token reads the console; actions need a logged-in session")
            if not self.matches(header[7:].strip()):
                abort(401, "wrong token")
            return None
        if request.method not in READS:
            check_csrf()
        if request.endpoint == "console.login" or session.get("auth") == self.mark:
            return None
        if request.method in READS:
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        abort(401, "log in first")

    def login(self):
        error = None
        if request.method == "POST":
            tries = self.rt.keys("console-login-failed", request.remote_addr or "unknown")
            if int(self.rt.store.get(tries) or 0) >= LOGIN_TRIES:
                abort(429, f"{LOGIN_TRIES} wrong tokens from this address: try again in {LOGIN_PAUSE // 60} minutes")
            if self.matches(request.form.get("token", "")):
                self.rt.store.delete(tries)
                session.clear()                      # a fresh session (and CSRF token) after login
                session["auth"] = self.mark
                session["csrf"] = secrets.token_urlsafe(32)
                return redirect(_safe_next(request.args.get("next")))
            with self.rt.store.pipeline() as pipe:
                pipe.incr(tries)
                pipe.expire(tries, LOGIN_PAUSE, nx=True)
                pipe.execute()
            error = "That token is not the console's token."
        return render_template("console/login.html", error=error), (401 if error else 200)

    def logout(self):
        session.clear()
        return redirect(url_for("console.login"))

    @staticmethod
    def harden(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def csrf_token() -> str:
    """The session's CSRF token (made on first use, also before login: the login form carries it)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    offered = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(offered.encode(), expected.encode()):
        abort(403, "the form's CSRF token is missing or out of date: reload the page and try again")


def _safe_next(target: str | None) -> str:
    """Back to where the login was asked from, only inside the console."""
    if target and target.startswith("/console") and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for("console.home")


def error_page(exc: HTTPException):
    return render_template("console/error.html", code=exc.code, name=exc.name,
                           description=exc.description), exc.code or 500


def secrets_of(rt: Any, token: str) -> tuple[str, ...]:
    """Every secret value the console must never show: the token and the connections' credentials
    and webhook secrets (blanked in any page text as a last guard; pages do not show them anyway)."""
    found = {token}
    for conn in rt.connections.connections.values():
        found |= {str(v) for v in conn.credentials.values() if v}
        if conn.webhook_secret:
            found.add(str(conn.webhook_secret))
    return tuple(sorted((s for s in found if len(s) >= 6), key=len, reverse=True))
