"""GET /reports/<name>?from=&to=&by=&format=csv|json: a report (reports/__init__) for a BI tool;
GET /reports: the reports there are.

Off (404) unless CRMBRIDGE_REPORTS_TOKEN is set; then the token is asked for as
`Authorization: Bearer <token>` or `?token=<token>` (for tools that cannot send headers), compared
in constant time: missing or wrong → 401. An unknown report → 404; a wrong date, dimension or
format → 400 with the reason. The facts store is opened at the first report asked, not at start.
"""
from __future__ import annotations

import hmac
from datetime import UTC, datetime

from flask import Blueprint, current_app, jsonify, request

import reports
from pipeline.steps.record import store

blueprint = Blueprint("reports", __name__)
TOKEN = "CRMBRIDGE_REPORTS_TOKEN"


def _error(status: int, reason: str, **headers: str):
    return jsonify(error=reason), status, headers


def _token(given: str, wanted: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), wanted.encode("utf-8"))


def _refused(rt):
    """The answer when the request may not see reports (None when it may)."""
    wanted = rt.settings.environ.get(TOKEN) or ""
    if not wanted:
        return _error(404, "reports are off (CRMBRIDGE_REPORTS_TOKEN is not set)")
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else request.args.get("token", "")
    if not given or not _token(given, wanted):
        return _error(401, "a valid token is needed (Authorization: Bearer, or ?token=)",
                      **{"WWW-Authenticate": 'Bearer realm="crmbridge reports"'})
    return None


@blueprint.get("/reports")
def listing():
    """The reports reports.yaml names: {"reports": [{name, title, metrics, aggregate, by, where, plan}]}."""
    rt = current_app.extensions["crmbridge"]
    refused = _refused(rt)
    if refused:
        return refused
    known = reports.load(rt.settings.config_dir, rt.ruleset.rules)
    return jsonify(reports=[{"name": r.name, "title": r.title, "metrics": list(r.metrics), "aggregate": r.aggregate,
                             "by": list(r.by), "where": dict(r.where), "plan": r.plan.metric if r.plan else None}
                            for r in known.values()])


@blueprint.get("/reports/<name>")
def report(name: str):
    rt = current_app.extensions["crmbridge"]
    refused = _refused(rt)
    if refused:
        return refused
    known = reports.load(rt.settings.config_dir, rt.ruleset.rules)   # checked at start-up: loads cleanly
    if name not in known:
        return _error(404, f"unknown report {name!r}; reports: {', '.join(sorted(known)) or 'none'}")
    args = {k: request.args.get(k) for k in ("from", "to", "by", "format")}
    try:
        kind, text = reports.answer(store(rt.settings), known, rt.ruleset.rules, name, args,
                                    datetime.now(UTC).date())
    except reports.BadRequest as exc:
        return _error(400, str(exc))
    return text, 200, {"Content-Type": kind, "Cache-Control": "no-store"}
