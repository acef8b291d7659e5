"""CRMBRIDGE_LOG_FORMAT=json (logging_setup.py): `python worker.py` handling an event writes one
JSON object per line, the lines about the event carry its id, connection and record (and the rule
while its steps run); the default stays text; secrets reach no line in either format."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
import requests

import logging_setup
from tests.conftest import ROOT, TEST_REDIS_URL, TG_TOKEN, payload

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LEAD = {"id": 31926520, "name": "Кондитерська «Ромашка»", "price": 1000, "status_id": 10216994,
        "pipeline_id": 2116, "responsible_user_id": 938348,
        "custom_fields_values": [{"field_id": 1, "field_name": "Бюджет", "values": [{"value": "5000"}]}]}
RULE = "Brief received → task and team notice"


def worker_run(settings, live_server, fake_amo, *, fmt: str | None, level: str = "INFO") -> str:
    """Queue the quickstart's stage change through the door, then let `worker.py --burst` handle it;
    what the worker wrote to stderr."""
    fake_amo.add_lead(LEAD)
    resp = requests.post(f"{live_server}/hooks/quickstart-amo?token=amo-secret",
                         data=payload("amocrm/lead_status_changed_full.form"), headers=FORM, timeout=5)
    assert resp.json() == {"accepted": 1, "duplicates": 0}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}, **settings.environ,
           "REDIS_URL": TEST_REDIS_URL, "CRMBRIDGE_CONFIG": str(settings.config_dir), "CRMBRIDGE_LOG_LEVEL": level,
           "CRMBRIDGE_REDIS_PREFIX": settings.redis_prefix, "CRMBRIDGE_QUEUE": settings.queue_name}
    if fmt:
        env["CRMBRIDGE_LOG_FORMAT"] = fmt
    done = subprocess.run([sys.executable, "worker.py", "--burst"], cwd=ROOT, env=env, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_worker_handling_an_event_writes_json_lines_that_name_the_event(settings, live_server, runtime,
                                                                          fake_amo, fake_tg):
    out = worker_run(settings, live_server, fake_amo, fmt="json")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]   # every line parses
    assert len(lines) >= 4 and all({"message", "level", "logger", "timestamp"} <= set(x) for x in lines)
    [event_id] = {x["event_id"] for x in lines if "event_id" in x}
    about = [x for x in lines if x.get("event_id") == event_id]
    # the audit's lines: fields of their own, and the event's context on each
    assert [x["message"] for x in about if x["logger"] == "crmbridge.worker"] == \
        ["rule.matched", "action.done", "action.done"]
    for x in about:
        assert (x["connection"], x["record"], x["kind"]) == ("quickstart-amo", "lead:31926520", "stage.changed")
    assert all(x["rule"] == RULE for x in about if x["message"].startswith(("rule.", "action.")))
    done = [x for x in about if x["message"] == "action.done"]
    assert {x["action"].split("(")[0] for x in done} == {"quickstart-amo.create_task", "quickstart-bot.send_message"}
    # lines outside the job (the worker starting, RQ's own) carry no event
    assert any("event_id" not in x for x in lines)


def test_the_default_stays_text(settings, live_server, runtime, fake_amo, fake_tg):
    out = worker_run(settings, live_server, fake_amo, fmt=None)
    lines = [line for line in out.splitlines() if line.strip()]
    assert any(" INFO crmbridge.worker: " in line and '"what": "action.done"' in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_secret_reaches_a_log_line_even_at_debug(fmt, settings, live_server, runtime, fake_amo, fake_tg):
    """At DEBUG, urllib3 writes every URL it calls: Telegram's carries the bot token."""
    out = worker_run(settings, live_server, fake_amo, fmt=fmt, level="DEBUG")
    assert "sendMessage" in out          # the call was logged…
    for secret in (TG_TOKEN, TG_TOKEN.split(":")[1], "amo-token", "amo-secret", "tg-secret"):
        assert secret not in out, f"{secret!r} in the {fmt} log"
    if fmt == "json":
        assert all(json.loads(line) for line in out.splitlines() if line.strip())


def test_values_of_secret_keys_and_tokens_in_text_are_taken_out():
    stream, root = io.StringIO(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logging_setup.configure("json", "INFO", stream=stream)
    try:
        log = logging.getLogger("crmbridge.test")
        with logging_setup.event_context({"id": "amo:1", "connection": "amo", "kind": "stage.changed",
                                          "entity": {"type": "lead", "id": "7"}}):
            with logging_setup.rule_context("Rule A"):
                log.info("calling %s", "https://api.telegram.org/bot123456:ABCdefGHIjkl/sendMessage",
                         extra={"audit": {"event": "amo:1", "what": "action.failed", "rule": "Rule A",
                                          "headers": {"Authorization": "Bearer xyz"}, "error": "token=abcdef1"}})
            log.info("after the rule")
        log.info("after the job, bot123456:ABCdefGHIjkl")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "action.failed" and first["rule"] == "Rule A" and first["record"] == "lead:7"
    assert first["headers"] == {"Authorization": "(secret, not logged)"} and first["error"] == "token=(secret)"
    assert "ABCdefGHIjkl" not in json.dumps(first)
    assert second["event_id"] == "amo:1" and "rule" not in second
    assert "event_id" not in third and "record" not in third and third["message"] == "after the job, bot(token)"
