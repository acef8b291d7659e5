"""cli.py timeline / explain / replay-event end to end: real HTTP into the app, a real RQ worker on
the real Redis writing the decision history (SQLite, and the real PostgreSQL), then the commands as
an operator types them."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest
import requests
from click.testing import CliRunner

import cli
from pipeline import clock
from tests.conftest import payload, run_worker
from tests.history_db import history_settings  # noqa: F401  (a fixture)

FRIDAY_5PM_KYIV = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)
LEAD = {"id": 31926520, "name": "Кондитерська «Ромашка»", "price": 1000, "status_id": 10216994,
        "pipeline_id": 2116, "responsible_user_id": 938348,
        "custom_fields_values": [{"field_id": 1, "field_name": "Бюджет", "values": [{"value": "5000"}]}]}
BIG_BRIEF = """
rules:
  - name: Big brief → note
    on: {event: stage.changed, connection: quickstart-amo}
    if:
      - {field: Бюджет, gt: %d}
    do:
      - add_note: "A big brief: {{ entity.fields['Бюджет'] }}"
  - name: Lead won → thanks
    on: {event: stage.changed, stage: Won}
    do:
      - add_note: "Won"
  - name: New lead → hello
    on: entity.created
    do:
      - add_note: "Hello"
"""


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: FRIDAY_5PM_KYIV)


@pytest.fixture
def settings(settings, history_settings):  # noqa: F811  (the suite's settings, with one history backend)
    return replace(settings, **history_settings)


@pytest.fixture
def operator(settings, env):
    """cli.py as an operator runs it on the same configuration and history."""
    where = ({"DATABASE_URL": settings.database_url} if settings.database_url
             else {"CRMBRIDGE_HISTORY_PATH": str(settings.history_path)})

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli.cli, ["--config", str(settings.config_dir), *args],
                                    env={**env, **where, "REDIS_URL": ""})
        assert result.exit_code == 0, result.output
        return result.output
    return run


def post_amo(live_server: str) -> None:
    resp = requests.post(f"{live_server}/hooks/quickstart-amo?token=amo-secret",
                         data=payload("amocrm/lead_status_changed_full.form"),
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    assert resp.json() == {"accepted": 1, "duplicates": 0}


def test_timeline_explain_and_replay_after_a_real_worker(live_server, runtime, fake_amo, fake_tg, config_dir, operator):
    (config_dir / "rules" / "big.yaml").write_text(BIG_BRIEF % 10000, encoding="utf-8")
    from webhooks import create_app
    app = create_app(settings=runtime.settings)   # the rules as the worker loads them
    worker_rt = app.extensions["crmbridge"]
    fake_amo.add_lead(LEAD)
    post_amo(live_server)
    run_worker(worker_rt)
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    import worker
    assert worker.runtime().history.flush()   # the worker's writer thread has written the job's rows

    lines = operator("timeline", "lead:31926520", "--since", "2026-11-01").splitlines()
    assert lines[0].startswith("2026-11-27 15:00:00  quickstart-amo  event stage.changed lead:31926520  [quickstart-amo:")
    body = "\n".join(lines)
    assert ("skipped  'Big brief → note': field 'Бюджет' is '5000'; expected gt 10000") in body
    assert "skipped  'Lead won → thanks': stage is 'Brief received', not 'Won'" in body
    assert "not listening to stage.changed: 'New lead → hello'" in body
    assert "matched  'Brief received → task and team notice': trigger and conditions hold" in body
    assert "action.done     quickstart-amo.create_task(" in body and "action.done     quickstart-bot.send_message(" in body
    assert lines[-1].startswith("1 event, 6 decisions for lead:31926520")

    why_not = operator("explain", "lead:31926520", "--rule", "Big brief → note", "--since", "2026-11-01")
    assert why_not.startswith(f"Rule 'Big brief → note' ({config_dir / 'rules' / 'big.yaml'}:3) considered 1 event "
                              "of lead:31926520 since 2026-11-01")
    assert ("skipped 1 time, last on 2026-11-27 15:00:00: condition `fields.Бюджет > 10000` failed: "
            "field 'Бюджет' is '5000'; expected gt 10000 — it acts on the record's next stage.changed event "
            "once `fields.Бюджет > 10000` holds.") in why_not
    acted = operator("explain", "lead:31926520", "--rule", "Brief received → task and team notice", "--since", "2026-11-01")
    assert "it matched 1 time, last on 2026-11-27 15:00:00 (trigger and conditions hold) and acted: quickstart-amo.create_task(" in acted
    wrong_stage = operator("explain", "lead:31926520", "--rule", "lead won → thanks", "--since", "2026-11-01")
    assert "trigger `stage` did not match: stage is 'Brief received', not 'Won' — it acts on a stage.changed event whose stage is 'Won'." in wrong_stage
    other_kind = operator("explain", "lead:31926520", "--rule", "New lead → hello", "--since", "2026-11-01")
    assert "it listens to entity.created, and lead:31926520's events were stage.changed" in other_kind

    # today's rules: the threshold lowered; the kept event planned again, nothing called
    (config_dir / "rules" / "big.yaml").write_text(BIG_BRIEF % 1000, encoding="utf-8")
    [event_id] = {line.rsplit("[", 1)[1].rstrip("]") for line in lines if " event " in line}
    calls = len(fake_amo.received()) + len(fake_tg.received())
    replayed = operator("replay-event", event_id, "--dry-run", "--now", "2026-11-27T17:00:00+02:00").splitlines()
    assert replayed[0] == f"event stage.changed lead:31926520 (id {event_id}), as kept; today's rules:"
    assert "  matched  'Big brief → note': trigger and conditions hold" in replayed
    assert ("  would call quickstart-amo.add_note(entity={'type': 'lead', 'id': '31926520'}, "
            "text='A big brief: 5000')") in replayed
    assert len(fake_amo.received()) + len(fake_tg.received()) == calls

    # what is kept has no secrets: not the webhook's token, nor the connections' credentials
    kept = json.dumps(worker_rt.history.event(event_id), ensure_ascii=False)
    assert "amo-secret" not in kept and "amo-token" not in kept and "TEST-token" not in kept
    assert '"Кондитерська «Ромашка»"' in kept
    app.extensions["crmbridge"].backend.close()


def test_the_webhook_path_opens_no_history(live_server, runtime, settings):
    post_amo(live_server)
    # accepted and queued; no worker ran: nothing of the history was opened or written
    assert runtime.history is not None and runtime.history._conn is None
    assert settings.database_url or not settings.history_path.exists()
