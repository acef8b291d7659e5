"""A worker never sleeps on one chat's or group's limit while other work is ready.

A burst of 30 leads whose rule messages one Telegram group (20 messages per window at the group)
and, queued after them, 10 leads of another amoCRM account (a task there, a message to a private
chat): one real `worker.py` process drains the queue. The group's messages beyond its window are
deferred (queued again for when the window has room, resuming where they stopped), so the other
account's events are done before the group's 21st message, while the group's limit is never
exceeded at the fake and no message is lost or sent twice.

The group's window is scaled down (20 per 15 s, a chat 10 per second; set per connection in
connections.yaml and enforced by the fake the same way) so the test takes seconds;
CRMBRIDGE_TEST_REAL_LIMITS=1 runs it with the published limits (20 a minute per group, 1 a second
per chat: about 80 s). The figures are printed (pytest -s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUICKSTART, TEST_REDIS_URL, TG_TOKEN, payload
from tests.fakes import FakeAmo, FakeTelegram, VendorLimit
from tests.reliability.harness import Deployment, amo_lead, amo_status_form

ROOT = Path(__file__).resolve().parent.parent
TEAM = "-1001234567890"
PREFIX, QUEUE = "crmbridge-test:", "crmbridge-test"
REAL = os.environ.get("CRMBRIDGE_TEST_REAL_LIMITS") == "1"
GROUP_CALLS, GROUP_WINDOW = 20, (60.0 if REAL else 15.0)
CHAT_CALLS = 1 if REAL else 10
BURST = list(range(7100, 7130))          # quickstart-amo leads: each a message to the team group
OTHER = list(range(8100, 8110))          # other-amo leads: a task there and a private message each

RULES = """\
rules:
  - name: Brief received → team group
    on:
      event: stage.changed
      connection: quickstart-amo
    do:
      - send_message:
          connection: quickstart-bot
          chat: team
          text: "Бриф отримано: {{ entity.name }}"
  - name: Other account → task and a private message
    on:
      event: stage.changed
      connection: other-amo
    do:
      - create_task:
          connection: other-amo
          text: "Перевірити бриф «{{ entity.name }}»"
          due: 1 working day
      - send_message:
          connection: quickstart-bot
          chat: "{{ entity.id }}"
          text: "Інший акаунт: {{ entity.name }}"
"""


def configure(target: Path) -> Path:
    target.mkdir()
    conf = yaml.safe_load((QUICKSTART / "connections.yaml").read_text(encoding="utf-8"))
    conf["connections"]["other-amo"] = {
        "type": "amocrm", "base_url": "${OTHER_AMO_BASE_URL}", "webhook_secret": "${OTHER_AMO_WEBHOOK_SECRET}",
        "credentials": {"token": "${AMO_TOKEN}"}, "calendar": "office"}
    per_group = {"per_minute": GROUP_CALLS} if REAL else {"per_second": round(GROUP_CALLS / GROUP_WINDOW, 4),
                                                          "burst": GROUP_CALLS}
    conf["connections"]["quickstart-bot"]["options"]["rate_limit"] = {
        "per_chat": {"per_second": CHAT_CALLS}, "per_group": per_group}
    (target / "connections.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (target / "rules").mkdir()
    (target / "rules" / "deferral.yaml").write_text(RULES, encoding="utf-8")
    return target


def chat_of(call) -> str | None:
    body = call.body if isinstance(call.body, dict) else {}
    return str(body["chat_id"]) if call.path.endswith("/sendMessage") and "chat_id" in body else None


def limited_telegram() -> FakeTelegram:
    """The Bot FAQ's limits as FakeTelegram.enforce_limits counts them, with this test's windows."""
    def group(call) -> str | None:
        found = chat_of(call)
        return found if found is not None and found.startswith("-") else None
    fake = FakeTelegram(TG_TOKEN)
    fake.limited([VendorLimit("bot", 30, 1.0, lambda call: "bot" if chat_of(call) else None),
                  VendorLimit("chat", CHAT_CALLS, 1.0, chat_of),
                  VendorLimit("group", GROUP_CALLS, GROUP_WINDOW, group)])
    return fake.start()


@pytest.mark.timeout(240 if REAL else 90)
def test_a_burst_to_one_group_does_not_hold_up_other_work(redis_db, tmp_path):
    amo, other, tg = FakeAmo().enforce_limits().start(), FakeAmo().enforce_limits().start(), limited_telegram()
    for lead in BURST:
        amo.add_lead(amo_lead(lead))
    for lead in OTHER:
        other.add_lead(amo_lead(lead))
    env = {"AMO_BASE_URL": amo.url, "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": "amo-secret",
           "OTHER_AMO_BASE_URL": other.url, "OTHER_AMO_WEBHOOK_SECRET": "other-secret",
           "TELEGRAM_API_URL": tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
           "TEAM_CHAT_ID": TEAM}
    deployment = Deployment(configure(tmp_path / "config"), TEST_REDIS_URL, PREFIX, QUEUE, env)
    log = (tmp_path / "worker.log").open("w")
    proc = None
    from webhooks import create_app
    app = create_app(settings=deployment.settings)
    try:
        web = app.test_client()
        for lead in BURST:   # the burst first: before the fix, the other account's events waited behind it
            assert web.post("/hooks/quickstart-amo?token=amo-secret", data=amo_status_form(lead),
                            content_type="application/x-www-form-urlencoded").status_code == 200
        for lead in OTHER:
            assert web.post("/hooks/other-amo?token=other-secret", data=amo_status_form(lead),
                            content_type="application/x-www-form-urlencoded").status_code == 200
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=deployment.worker_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        other_done = group_first = group_21st = group_done = None
        deadline = started + (200 if REAL else 60)
        while time.monotonic() < deadline and group_done is None:
            now = time.monotonic() - started
            to_group = [c for c in tg.received("POST", r".*/sendMessage") if chat_of(c) == TEAM]
            tasks = other.received("POST", "/api/v4/tasks")
            private = [c for c in tg.received("POST", r".*/sendMessage") if chat_of(c) in {str(x) for x in OTHER}]
            if other_done is None and len(tasks) >= len(OTHER) and len(private) >= len(OTHER):
                other_done = now
            if group_first is None and to_group:
                group_first = now
            if group_21st is None and len(to_group) > GROUP_CALLS:
                group_21st = now
            if len(to_group) >= len(BURST) and other_done is not None:
                group_done = now
            time.sleep(0.02)
        time.sleep(1.0)   # anything sent twice would arrive now
        sent = Counter(chat_of(c) for c in tg.received("POST", r".*/sendMessage"))
        texts = Counter(c.body["text"] for c in tg.received("POST", r".*/sendMessage"))
        entries = [json.loads(e[b"entry"]) for _, e in redis_db.xrange(f"{PREFIX}audit")]
        deferred = [e for e in entries if e["what"] == "event.deferred"]
        figures = {"group's first message (s)": group_first, "other account done (s)": other_done, "group's 21st message (s)": group_21st,
                   "group's last message (s)": group_done, "deferrals": len(deferred),
                   "most group messages in any window": tg.keeper.peak("group", refused_too=True),
                   "violations": len(tg.violations) + len(amo.violations) + len(other.violations)}
        print("\n" + json.dumps(figures, ensure_ascii=False))
        assert group_done is not None, (figures, (tmp_path / "worker.log").read_text()[-3000:])
        assert sent[TEAM] == len(BURST) and all(sent[str(lead)] == 1 for lead in OTHER)
        assert all(n == 1 for n in texts.values())                      # none twice
        assert len(other.received("POST", "/api/v4/tasks")) == len(OTHER)
        assert tg.violations == [] and amo.violations == [] and other.violations == []
        assert figures["most group messages in any window"] <= GROUP_CALLS
        assert other_done < group_21st          # the other account did not wait for the group's window
        assert deferred and all(e["entity"].startswith("lead:71") for e in deferred)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        app.extensions["crmbridge"].backend.close()
        for fake in (amo, other, tg):
            fake.stop()
