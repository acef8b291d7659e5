"""The operator commands: validate, dry-run, timers, dead letters."""
from __future__ import annotations

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
    assert lines[-1] == "3 errors in 1 file; crmbridge did not start."
