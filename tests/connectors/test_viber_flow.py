"""Viber end to end: an amoCRM stage change asks the client in Viber (signed keyboard buttons); the
client's press comes back as a signed callback, changes the lead once (a note and a stage), and a
second press, a redelivery or a forged token change nothing. Real app, real RQ worker on Redis,
fake amoCRM and Viber; and an SMS rule's plan in a dry run shows its encoding and parts."""
from __future__ import annotations

import json
import textwrap

import pytest

from connectors.base import RawWebhook
from tests.conftest import payload, run_worker
from tests.fakes_viber import TOKEN, FakeViber, callback

CLIENT = "01234567890A="
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def fake_viber():
    server = FakeViber().start()
    yield server
    server.stop()


@pytest.fixture
def env(env):
    return {**env, "VIBER_TOKEN": TOKEN, "VIBER_SECRET": "viber-buttons-secret", "TURBOSMS_TOKEN": ""}


@pytest.fixture
def config_dir(config_dir, fake_viber):
    (config_dir / "connections.yaml").write_text(textwrap.dedent(f"""
        connections:
          quickstart-amo:
            type: amocrm
            base_url: ${{AMO_BASE_URL}}
            webhook_secret: ${{AMO_WEBHOOK_SECRET}}
            credentials:
              token: ${{AMO_TOKEN}}
          shop-viber:
            type: viber
            base_url: {fake_viber.base_url}
            webhook_secret: ${{VIBER_SECRET}}
            credentials:
              token: ${{VIBER_TOKEN}}
            options:
              sender_name: Кондитерська Ромашка
              link: {{crm: quickstart-amo}}
          sms-ua:
            type: turbosms
            credentials:
              token: ${{TURBOSMS_TOKEN}}
            options: {{sender: Romashka}}
        """), encoding="utf-8")
    (config_dir / "rules" / "quickstart.yaml").write_text(textwrap.dedent(f"""
        defaults:
          connection: quickstart-amo
        rules:
          - name: Замовлення готове → питання у Viber
            on: {{event: stage.changed, stage: "10216994"}}
            do:
              - ask_approval:
                  connection: shop-viber
                  chat: "{CLIENT}"
                  text: "Замовлення «{{{{ entity.name }}}}» готове. Заберете сьогодні?"
                  buttons:
                    - {{text: "✅ Так, сьогодні", choice: today}}
                    - {{text: "🕓 Пізніше", choice: later}}
          - name: Клієнт забере сьогодні
            on: {{event: button.pressed, connection: shop-viber, entity: lead, button: today}}
            do:
              - add_note: "Клієнт підтвердив у Viber: забере сьогодні"
              - send_message:
                  connection: shop-viber
                  chat: "{CLIENT}"
                  text: "Дякуємо! Чекаємо вас."
          - name: SMS про готовність
            on: {{event: stage.changed, stage: "10216994"}}
            do:
              - send_sms:
                  connection: sms-ua
                  to: "067 123 45 67"
                  text: "Ваше замовлення «{{{{ entity.name }}}}» готове. Чекаємо!"
        """), encoding="utf-8")
    return config_dir


def press(client, body: bytes, headers: dict) -> dict:
    resp = client.post("/hooks/shop-viber", data=body, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_a_press_changes_the_lead_once(client, runtime, fake_amo, fake_viber):
    fake_amo.add_lead({"id": 31926520, "name": "Торт «Наполеон»", "price": 1000, "status_id": 10216994,
                       "pipeline_id": 2116, "responsible_user_id": 938348})
    resp = client.post("/hooks/quickstart-amo?token=amo-secret", data=payload("amocrm/lead_status_changed_full.form"),
                       headers=FORM)
    assert resp.get_json() == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)

    [asked] = fake_viber.sent()
    assert asked["receiver"] == CLIENT and asked["text"] == "Замовлення «Торт «Наполеон»» готове. Заберете сьогодні?"
    today, later = (b["ActionBody"] for b in asked["keyboard"]["Buttons"])
    assert today.startswith("v1.today.l31926520.") and later.startswith("v1.later.l31926520.")

    body, headers = callback("message", sender={"id": CLIENT, "name": "Олена"},
                             message={"type": "text", "text": today})
    assert press(client, body, headers) == {"accepted": 1, "duplicates": 0}
    assert press(client, body, headers) == {"accepted": 0, "duplicates": 1}      # Viber redelivers it
    # a second press of the same button (a new message token), then the other button
    again, headers2 = callback("message", message_token=4912661846655238146, sender={"id": CLIENT, "name": "Олена"},
                               message={"type": "text", "text": today})
    other, headers3 = callback("message", message_token=4912661846655238147, sender={"id": CLIENT, "name": "Олена"},
                               message={"type": "text", "text": later})
    press(client, again, headers2)
    press(client, other, headers3)
    run_worker(runtime)

    notes = [c.body for c in fake_amo.received("POST", "/api/v4/leads/notes")]
    assert notes == [[{"entity_id": 31926520, "note_type": "common",
                       "params": {"text": "Клієнт підтвердив у Viber: забере сьогодні"}}]]
    assert [m["text"] for m in fake_viber.sent()][1:] == ["Дякуємо! Чекаємо вас."]
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert [a["what"] for a in audit].count("approval.chosen") == 1
    assert [a["what"] for a in audit].count("approval.already_chosen") == 2


def test_a_forged_button_and_a_bad_signature_change_nothing(client, runtime, fake_amo, fake_viber):
    forged = "v1.today.l31926520.Xk3_q9.AAAAAAAAAAAAAAAA"
    body, headers = callback("message", sender={"id": CLIENT, "name": "?"}, message={"type": "text", "text": forged})
    assert press(client, body, headers) == {"accepted": 1, "duplicates": 0}
    bad = dict(headers, **{"X-Viber-Content-Signature": "0" * 64})
    assert client.post("/hooks/shop-viber", data=body, headers=bad).status_code == 401
    run_worker(runtime)
    assert fake_amo.received("POST", "/api/v4/leads/notes") == [] and fake_viber.sent() == []
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert [a["what"] for a in audit] == ["button.refused"]


def test_the_sms_rule_s_dry_run_shows_number_encoding_and_parts(config_dir):
    from click.testing import CliRunner

    import cli
    from tests.conftest import QUICKSTART
    result = CliRunner().invoke(cli.cli, ["--config", str(config_dir), "dry-run", "quickstart-amo",
                                          str(QUICKSTART / "sample-webhook.form")],
                                env={"AMO_WEBHOOK_SECRET": "a", "AMO_TOKEN": "", "AMO_BASE_URL": "", "REDIS_URL": "",
                                     "VIBER_TOKEN": "", "VIBER_SECRET": "s", "TURBOSMS_TOKEN": ""})
    assert result.exit_code == 0, result.output
    [line] = [li for li in result.output.splitlines() if "send_sms" in li]
    assert line == ("  would call sms-ua.send_sms(phone='+380671234567', text='Ваше замовлення «Some test lead» "
                    "готове. Чекаємо!', encoding='UCS-2', length=49, parts=1)")
