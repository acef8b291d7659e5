"""The operator commands: validate, dry-run, timers, dead letters."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

import cli
from tests.conftest import QUICKSTART
from pipeline import timers

ENV = {"AMO_WEBHOOK_SECRET": "a", "TELEGRAM_WEBHOOK_SECRET": "b", "AMO_TOKEN": "", "TELEGRAM_BOT_TOKEN": "",
       "REDIS_URL": ""}


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli.cli, ["--config", str(QUICKSTART), *args], env={**ENV, **(env or {})})


def test_validate_the_quickstart():
    result = invoke("validate")
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == f"ok: 2 connection(s), 1 rule(s) in {QUICKSTART}"


def test_validate_reports_missing_secrets():
    result = invoke("validate", env={"AMO_WEBHOOK_SECRET": ""})
    assert result.exit_code == 1
    assert 'connection "quickstart-amo" → webhook_secret: environment variable AMO_WEBHOOK_SECRET is not set' in result.output


def test_dry_run_prints_the_plan_and_calls_nothing():
    result = invoke("dry-run", "quickstart-amo", str(QUICKSTART / "sample-webhook.form"), "--now", "2026-11-27T17:00:00+02:00")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("event stage.changed lead:31926520")
    assert lines[1] == "  matched  'Brief received → task and team notice': trigger and conditions hold"
    assert lines[2] == ("  would call quickstart-amo.create_task(entity={'type': 'lead', 'id': '31926520'}, "
                        "text='Check the brief for «Some test lead» and prepare the proposal', "
                        "due='2026-11-30T17:00:00+02:00', responsible='938348', task_type=None)")
    assert lines[3].startswith("  would call quickstart-bot.send_message(chat='team', text='📥 Бриф отримано")


def test_dry_run_says_why_a_rule_did_not_match(tmp_path):
    body = tmp_path / "added.form"
    body.write_bytes(b"leads[add][0][id]=5&leads[add][0][status_id]=1")
    result = invoke("dry-run", "quickstart-amo", str(body))
    assert "  skipped  'Brief received → task and team notice': event is entity.created, rule listens to stage.changed" in result.output


def test_dry_run_refuses_a_body_of_another_vendor(tmp_path):
    body = tmp_path / "x.json"
    body.write_text('{"update_id": 1}')
    result = invoke("dry-run", "quickstart-amo", str(body))
    assert result.exit_code == 1
    assert "the body is not a webhook of type 'amocrm': no amoCRM entity found" in result.output


def test_timers_lists_pending_timers_by_entity(runtime, settings):
    from rules.engine import PlannedTimer
    for entity, when in (("31926520", "2026-12-01T10:00:00+02:00"), ("5", "2026-11-30T10:00:00+02:00")):
        runtime.backend.schedule(timers.as_dict(PlannedTimer(
            rule="Brief reminder", rule_id="abc", timer_id=f"timer:abc:quickstart-amo:lead:{entity}", fire_at=when,
            entity={"type": "lead", "id": entity}, event={})))
    env = {**settings.environ, "REDIS_URL": settings.redis_url, "CRMBRIDGE_REDIS_PREFIX": settings.redis_prefix,
           "CRMBRIDGE_QUEUE": settings.queue_name}
    every = CliRunner().invoke(cli.cli, ["--config", str(settings.config_dir), "timers"], env=env)
    assert every.output.splitlines() == [
        "2026-11-30T10:00:00+02:00  lead:5  'Brief reminder'  (timer:abc:quickstart-amo:lead:5)",
        "2026-12-01T10:00:00+02:00  lead:31926520  'Brief reminder'  (timer:abc:quickstart-amo:lead:31926520)",
        "2 pending timers"]
    one = CliRunner().invoke(cli.cli, ["--config", str(settings.config_dir), "timers", "--entity", "lead:5"], env=env)
    assert one.output.splitlines()[-1] == "1 pending timer"


def test_a_connections_file_that_cannot_be_read_is_reported_alone(tmp_path):
    """Missing secrets in connections.yaml are the errors; the rules naming its calendars are not
    reported again as naming unknown calendars (the calendars are unknown until it loads)."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    env = {"PATH": "/usr/bin:/bin", "CRMBRIDGE_CONFIG": str(ROOT / "config" / "examples" / "smm-agency")}
    done = subprocess.run([sys.executable, "cli.py", "validate"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() + done.stdout.splitlines() if line.strip()]
    assert [line for line in lines if "no calendar" in line] == []
    assert any(line.endswith("environment variable PLANFIX_WEBHOOK_SECRET is not set") for line in lines)
    assert any(line.endswith("environment variable STAFF_CHAT_ID is not set") for line in lines)   # no default
    assert any(line.endswith("environment variable VIBER_WEBHOOK_SECRET is not set") for line in lines)
    assert lines[-1] == "5 errors in 1 file; crmbridge did not start."


def live_env(settings) -> dict[str, str]:
    return {**settings.environ, "REDIS_URL": settings.redis_url, "CRMBRIDGE_REDIS_PREFIX": settings.redis_prefix,
            "CRMBRIDGE_QUEUE": settings.queue_name}


def run(settings, *args: str):
    return CliRunner().invoke(cli.cli, ["--config", str(settings.config_dir), *args], env=live_env(settings))


def audit_lines(runtime) -> list[dict]:
    import json
    return [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]


def a_timer(runtime, lead: str = "5", when: str = "2030-11-30T10:00:00+02:00") -> str:
    from rules.engine import PlannedTimer
    timer_id = f"timer:abc:quickstart-amo:lead:{lead}"
    event = {"id": f"quickstart-amo:t{lead}", "connection": "quickstart-amo", "source": "amocrm",
             "kind": "stage.changed", "entity": {"type": "lead", "id": lead}, "data": {}, "raw": {},
             "occurred_at": "2026-11-30T08:00:00+00:00"}
    runtime.backend.schedule(timers.as_dict(PlannedTimer(
        rule="Brief reminder", rule_id="abc", timer_id=timer_id, fire_at=when, entity=event["entity"], event=event)))
    return timer_id


def test_an_operator_fires_a_timer_now(runtime, settings):
    import time
    timer_id = a_timer(runtime)
    result = run(settings, "timers", "fire", timer_id)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"timer {timer_id} fires now (was 2030-11-30T10:00:00+02:00)")
    assert runtime.store.zscore(runtime.keys("timers"), timer_id) <= time.time()   # due: the next poll queues it
    assert runtime.backend.fire_due_timers() == 1
    [moved] = [e for e in audit_lines(runtime) if e["what"] == "timer.moved"]
    assert moved["timer"] == timer_id and "operator" in moved["reason"]


def test_an_operator_cancels_a_timer_and_the_audit_says_so(runtime, settings):
    timer_id = a_timer(runtime, "6")
    result = run(settings, "timers", "cancel", timer_id)
    assert result.exit_code == 0 and f"timer {timer_id} cancelled" in result.output
    assert runtime.backend.timers.get(timer_id) is None
    [cancelled] = [e for e in audit_lines(runtime) if e["what"] == "timer.cancelled"]
    assert cancelled["entity"] == "lead:6" and "operator" in cancelled["reason"]
    missing = run(settings, "timers", "cancel", timer_id)
    assert missing.exit_code == 1 and "no pending timer" in missing.output


def test_dead_letters_are_shown_whole_discarded_and_expire(runtime, settings):
    from pipeline import dead_letters
    payload = {"id": "quickstart-amo:x", "kind": "stage.changed", "entity": {"type": "lead", "id": "1"}}
    dead_letters.dead_letter(runtime, "worker.handle_event", payload, "PermanentApiError: 400 bad", key="step-1")
    dead_letters.dead_letter(runtime, "worker.handle_event", payload, "may have been sent: check", key="step-2")
    runtime.store.set(runtime.keys("attempted", "step-2"), "{}")
    shown = run(settings, "dead-letters", "show", "step-1")
    assert shown.exit_code == 0 and '"error": "PermanentApiError: 400 bad"' in shown.output
    assert '"id": "quickstart-amo:x"' in shown.output
    dropped = run(settings, "dead-letters", "discard", "step-2")
    assert dropped.output.strip() == "discarded 1 of 1"
    assert runtime.store.get(runtime.keys("attempted", "step-2")) is None   # nothing left waiting
    assert run(settings, "dead-letters", "list").output.splitlines()[-1] == "1 dead letter"
    # one older than the TTL goes the next time dead letters are written or listed
    runtime.store.zadd(runtime.keys("dead-index"), {"step-1": 1.0})
    assert run(settings, "dead-letters", "list").output.splitlines()[-1] == "0 dead letters"
    assert runtime.store.hlen(runtime.keys("dead")) == 0 and runtime.store.zcard(runtime.keys("dead-index")) == 0


def test_a_dead_letter_older_than_the_done_marks_is_replayed_only_when_forced(runtime, settings):
    """Its event's done marks are gone: a replay could repeat what the event did, so it waits for
    a person who checked the vendor (`--force`); a younger one is replayed as before."""
    from pipeline import clock, dead_letters
    from connectors.base import Entity, Event
    payload = Event(id="ev-old", connection="quickstart-amo", source="amocrm", kind="stage.changed",
                    entity=Entity("lead", "1"), data={}, raw=None, occurred_at=clock.now().isoformat()).to_dict()
    dead_letters.dead_letter(runtime, "worker.handle_event", payload, "PermanentApiError: 400 bad", key="old")
    dead_letters.dead_letter(runtime, "worker.handle_event", {**payload, "id": "ev-new"}, "PermanentApiError", key="new")
    old = dead_letters.get(runtime, "old")
    old["at"] = (clock.now() - timedelta(seconds=runtime.settings.done_ttl + 3600)).isoformat()
    runtime.store.hset(runtime.keys("dead"), "old", json.dumps(old))
    with pytest.raises(dead_letters.MarksGone, match="2 days"):
        dead_letters.replay(runtime, "old")
    result = run(settings, "dead-letters", "replay", "--all")
    assert result.exception is None, result.output
    assert "left old: it is 2.0 days old" in result.output and "--force" in result.output
    assert result.output.splitlines()[-1] == "replayed 1 of 1"
    assert dead_letters.get(runtime, "old") is not None and dead_letters.get(runtime, "new") is None
    assert run(settings, "dead-letters", "replay", "old", "--force").output.splitlines()[-1] == "replayed 1 of 1"
    assert dead_letters.get(runtime, "old") is None


def test_a_timer_that_fails_for_good_leaves_the_index_with_its_data_in_the_dead_letter(runtime):
    import worker
    from pipeline import dead_letters
    timer_id = a_timer(runtime, "7")

    class Job:  # what RQ hands the failure callback once retries are exhausted
        retries_left = 0
        func_name = "worker.fire_timer"
        args = [{"timer_id": timer_id, "at": 1.0}]
    worker.on_job_failed(Job, runtime.store, RuntimeError, RuntimeError("boom"), None)
    assert runtime.backend.timers.get(timer_id) is None
    assert runtime.store.zscore(runtime.keys("timers"), timer_id) is None
    entry = dead_letters.get(runtime, timer_id)
    assert entry["payload"]["event"]["entity"] == {"type": "lead", "id": "7"} and entry["error"] == "RuntimeError: boom"
    assert dead_letters.replay(runtime, timer_id) and runtime.backend.timers.get(timer_id) is not None
