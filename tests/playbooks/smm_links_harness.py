"""Shared set-up for the approval and chat-sync tests of Playbook A (SMM agency).

The example configuration (config/examples/smm-agency) with only the rule files under test
(approvals.yaml, chat.yaml), pointed at local fakes of Planfix and Telegram, served by the real
Flask app into a real RQ worker on the real Redis.

Wire formats: Telegram updates are the recorded captures in tests/payloads/telegram/ with the
chat, sender, ids and callback data changed (callback_query.json: a real press; the group and
document messages: real captures), Planfix requests are the scenario bodies
docs/connectors/planfix.md defines (tests/payloads/planfix/).
"""
from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from tests.conftest import PAYLOADS, ROOT, TEST_REDIS_URL, TG_TOKEN, run_worker
from tests.fakes import FakeTelegram
from tests.fakes_planfix import FakePlanfix

SMM = ROOT / "config" / "examples" / "smm-agency"
TG = {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"}
CLIENT_CHAT = "-1002233445566"
STAFF_CHAT = "-1001000000001"
OLENA_PM = {"id": 555000111, "is_bot": False, "first_name": "Олена", "last_name": "Коваленко", "username": "olena_pm"}
CLIENT = {"id": 700100200, "is_bot": False, "first_name": "Марія", "last_name": "Зерно", "username": "maria_zerno"}
CLIENT_2 = {"id": 700100201, "is_bot": False, "first_name": "Андрій", "username": "andrii_zerno"}
TASK_FIELDS = [{"id": 105, "name": "Тип задачі", "type": 0}, {"id": 106, "name": "Telegram чат", "type": 0},
               {"id": 107, "name": "Очікуваний результат", "type": 2}, {"id": 108, "name": "Графік кампанії", "type": 2},
               {"id": 109, "name": "Звіт", "type": 2}]


def load(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text(encoding="utf-8"))


@dataclass
class Smm:
    client: Any
    rt: Any
    planfix: FakePlanfix
    tg: FakeTelegram
    updates: Iterator[int]
    tg_updates: list = field(default_factory=list)   # every update posted, in order

    # --- webhooks in ---------------------------------------------------------------------------

    def planfix_status(self, task: int, status: str) -> dict:
        body = load("planfix/task_status_changed.json")
        body["task"].update(id=str(task), status=status, previous_status="")
        body["at"] = f"24-11-2025 14:{next(self.updates) % 60:02d}"  # two changes are two events
        return self.post_planfix(body)

    def post_planfix(self, body: dict) -> dict:
        resp = self.client.post("/hooks/agency-planfix", json=body)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    def press(self, data: str, who: dict, chat: str = CLIENT_CHAT, message_id: int = 100,
              callback_id: str | None = None) -> dict:
        """A callback query in a group, on a message of the bot (shape: callback_query.json)."""
        update = load("telegram/callback_query.json")
        update["update_id"] = next(self.updates)
        query = update["callback_query"]
        query.update({"id": callback_id or f"cb-{update['update_id']}", "from": who, "data": data})
        query["message"].update(message_id=message_id, chat={"id": int(chat), "title": "SMM · Кав'ярня «Зерно»",
                                                               "type": "supergroup"})
        return self.post_tg(update)

    def message(self, text: str | None, who: dict, chat: str = CLIENT_CHAT, base: str = "telegram/message_group_photo.json",
                keep_media: bool = False) -> dict:
        """A group message (shape: message_group_photo.json, a real group capture)."""
        update = load(base)
        update["update_id"] = next(self.updates)
        msg = update["message"]
        if not keep_media:
            msg.pop("photo", None)
            msg.pop("caption", None)
            msg.pop("document", None)
        if text is not None:
            msg["text" if not keep_media else "caption"] = text
        msg.update({"from": who, "chat": {"id": int(chat), "title": "SMM · Кав'ярня «Зерно»", "type": "supergroup"},
                    "message_id": 7000 + update["update_id"]})
        return self.post_tg(update)

    def post_tg(self, update: dict) -> dict:
        self.tg_updates.append(update)
        resp = self.client.post("/hooks/agency-bot", json=update, headers=TG)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    def work(self) -> None:
        run_worker(self.rt)

    # --- what the fakes received ---------------------------------------------------------------

    def comments(self, task: int) -> list[str]:
        return [c["description"] for c in self.planfix.comments.get(("task", task), [])]

    def sent(self, chat: str | None = None) -> list[dict]:
        return [c.body for c in self.tg.method_calls("sendMessage") if chat is None or str(c.body["chat_id"]) == chat]

    def answers(self) -> list[str]:
        return [c.body.get("text") for c in self.tg.method_calls("answerCallbackQuery")]

    def audit(self, what: str) -> list[dict]:
        entries = [json.loads(e[b"entry"]) for _, e in self.rt.store.xrange(self.rt.keys("audit"))]
        return [e for e in entries if e["what"] == what]

    def last_message_id(self) -> int:
        """The id the fake gave the last message sent (it numbers them 100, 101, … in order)."""
        made = [c for c in self.tg.calls if c.path.rsplit("/", 1)[-1] in ("sendMessage", "sendPhoto", "sendDocument")
                and c.status == 200]
        return 100 + len(made) - 1

    def buttons(self, sent: dict) -> list[dict]:
        return [b for row in sent["reply_markup"]["inline_keyboard"] for b in row]

    def link(self, chat: str, task: int) -> None:
        """What `/link` leaves behind (test_smm_chat.py drives /link itself)."""
        self.rt.store.set(self.rt.keys.prefix + f"link:agency-bot:{chat}",
                          json.dumps({"connection": "agency-planfix", "type": "task", "id": str(task)}))


def add_task(planfix: FakePlanfix, number: int, name: str, status: str, **fields: Any) -> None:
    statuses = {s["name"]: s["id"] for s in planfix.statuses[7]}
    by_name = {f["name"]: f["id"] for f in planfix.custom_fields["task"]}
    planfix.add("task", {"id": number, "name": name, "processId": 7,
                         "status": {"id": statuses[status], "name": status},
                         "customFieldData": [{"field": {"id": by_name[k], "name": k}, "value": v}
                                             for k, v in fields.items()]})


@pytest.fixture(name="smm")
def smm_fixture(tmp_path: Path, fake_tg: FakeTelegram, redis_db) -> Iterator[Smm]:
    from webhooks import create_app
    planfix = FakePlanfix().start()
    planfix.custom_fields["task"] = copy.deepcopy(planfix.custom_fields["task"]) + TASK_FIELDS
    config = tmp_path / "config"
    (config / "rules").mkdir(parents=True)
    # the fakes answer at once: Planfix's 1 request/second would only slow the test down
    text = (SMM / "connections.yaml").read_text(encoding="utf-8")
    (config / "connections.yaml").write_text(text.replace(
        "      timezone: Europe/Kyiv", "      rate_per_second: 100\n      timezone: Europe/Kyiv", 1), encoding="utf-8")
    for name in ("approvals.yaml", "chat.yaml"):
        shutil.copy(SMM / "rules" / name, config / "rules" / name)
    env = {"PLANFIX_BASE_URL": f"{planfix.url}/rest", "PLANFIX_WEBHOOK_SECRET": "pf-secret", "PLANFIX_TOKEN": "pf-token",
           "TELEGRAM_API_URL": fake_tg.url, "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
           "FORMS_WEBHOOK_SECRET": "forms-secret", "STAFF_CHAT_ID": STAFF_CHAT,
           "AGENCY_STAFF_TELEGRAM": "@olena_pm, 555000999", "BUTTON_SIGNING_SECRET": "buttons-secret-for-tests",
           "VIBER_WEBHOOK_SECRET": "viber-secret"}
    settings = Settings(config_dir=config, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                        queue_name="crmbridge-test", testing=True, environ=env, action_attempts=3)
    app = create_app(settings=settings)
    rt = app.extensions["crmbridge"]
    yield Smm(app.test_client(), rt, planfix, fake_tg, iter(range(900000001, 999999999)))
    rt.backend.close()
    planfix.stop()
