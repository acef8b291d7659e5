"""Bulk sends: one queued job per recipient against a fake Viber that enforces its limit and a fake
TurboSMS; the limit is never exceeded, opted-out people are skipped (the Redis opt-out set, the list's
opt-out column, Viber's own refusal, an unsubscribe callback), and each recipient gets the campaign
once however often it is started and whatever attempt a killed worker left behind."""
from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

import cli
from pipeline import campaigns
from pipeline.steps import send_bulk
from tests.conftest import payload, run_worker
from tests.fakes_sms import FakeSMSC, FakeTurboSMS
from tests.fakes_viber import TOKEN, FakeViber, callback

PER_SECOND = 20


@pytest.fixture
def fake_viber():
    server = FakeViber().start()
    server.enforce_limits(calls=PER_SECOND, window=1.0)
    yield server
    server.stop()


@pytest.fixture
def fake_turbo():
    server = FakeTurboSMS().start()
    yield server
    server.stop()


@pytest.fixture
def fake_smsc():
    server = FakeSMSC().start()
    yield server
    server.stop()


@pytest.fixture
def env(env):
    return {**env, "VIBER_TOKEN": TOKEN, "VIBER_SECRET": "viber-secret", "TURBOSMS_TOKEN": "turbo-token",
            "SMSC_LOGIN": "agency", "SMSC_PASSWORD": "smsc-pass"}


@pytest.fixture
def config_dir(config_dir, fake_viber, fake_turbo, fake_smsc):
    (config_dir / "connections.yaml").write_text(textwrap.dedent(f"""
        connections:
          quickstart-amo:
            type: amocrm
            base_url: ${{AMO_BASE_URL}}
            webhook_secret: ${{AMO_WEBHOOK_SECRET}}
            credentials:
              token: ${{AMO_TOKEN}}
          quickstart-bot:
            type: telegram
            base_url: ${{TELEGRAM_API_URL}}
            webhook_secret: ${{TELEGRAM_WEBHOOK_SECRET}}
            credentials:
              token: ${{TELEGRAM_BOT_TOKEN}}
          shop-viber:
            type: viber
            base_url: {fake_viber.base_url}
            webhook_secret: ${{VIBER_SECRET}}
            credentials:
              token: ${{VIBER_TOKEN}}
            options:
              rate_limit: {{per_second: {PER_SECOND}, burst: {PER_SECOND}}}
          sms-ua:
            type: turbosms
            base_url: {fake_turbo.url}
            credentials:
              token: ${{TURBOSMS_TOKEN}}
            options: {{sender: Romashka}}
          sms-ru:
            type: smsc
            base_url: {fake_smsc.url}
            credentials:
              login: ${{SMSC_LOGIN}}
              password: ${{SMSC_PASSWORD}}
            options: {{region: RU}}
        """), encoding="utf-8")
    (config_dir / "rules" / "quickstart.yaml").write_text(textwrap.dedent("""
        defaults:
          connection: quickstart-amo
        rules:
          - name: Графік на свята — SMS усім клієнтам
            on: {event: stage.changed, stage: "10216994"}
            do:
              - send_bulk:
                  connection: sms-ua
                  campaign: holidays-2026
                  file: lists/clients.csv
                  text: "{name}, з 31.12 по 2.01 ми не працюємо. Гарних свят!"
                  opt_out_column: не надсилати
        """), encoding="utf-8")
    (config_dir / "lists").mkdir()
    (config_dir / "lists" / "clients.csv").write_text(
        "name;phone;не надсилати\nОлена;067 123 45 67;\nІгор;+380501112233;так\nМарія;0501112234;\n"
        "Олена двічі;+380 67 123-45-67;\nбез номера;12;\n", encoding="utf-8")
    return config_dir


def viber_ids(n: int) -> list[str]:
    return [f"user{i:04d}AAAAAAAA=" for i in range(n)]


def test_200_recipients_keep_the_limit_skip_opt_outs_and_get_it_once(runtime, fake_viber):
    people = viber_ids(200)
    rows = [{"viber": p, "name": f"Клієнт {i}", "stop": "так" if i % 40 == 20 else ""} for i, p in enumerate(people)]
    for p in people[:10]:                               # unsubscribed earlier (the Redis opt-out set)
        send_bulk.opt_out(runtime, "shop-viber", p)
    fake_viber.unsubscribed.update(people[10:13])      # Viber itself refuses these (status 6)
    started = send_bulk.start(runtime, "shop-viber", "price-2026-12", "{name}, ціни змінюються з 1.01.",
                                 rows=rows, opt_out_column="stop")
    assert started == {"campaign": "price-2026-12", "total": 200, "queued": 200, "invalid": 0}
    run_worker(runtime)

    column_opt_outs = {p for i, p in enumerate(people) if i % 40 == 20}       # 5 rows
    expected = set(people) - set(people[:13]) - column_opt_outs
    received = [m["receiver"] for m in fake_viber.sent()]
    assert sorted(received) == sorted(expected) and len(received) == 182       # each once
    assert fake_viber.violations == []                                          # the limit at the vendor held
    assert fake_viber.keeper.peak("bot", refused_too=True) <= PER_SECOND
    first = next(m for m in fake_viber.sent() if m["receiver"] == people[13])
    assert first["text"] == "Клієнт 13, ціни змінюються з 1.01."
    status = send_bulk.status(runtime, "price-2026-12")
    assert {k: status[k] for k in ("total", "sent", "opted_out", "failed", "uncertain", "pending")} == {
        "total": 200, "sent": 182, "opted_out": 18, "failed": 0, "uncertain": 0, "pending": 0}
    # Viber's refusals joined the opt-out set: they are never tried again
    assert all(runtime.store.sismember(runtime.keys("optout:shop-viber"), p) for p in people[10:13])

    # the same campaign started again (an operator, a re-run rule): nobody gets it twice
    again = send_bulk.start(runtime, "shop-viber", "price-2026-12", "{name}, ціни змінюються з 1.01.",
                               rows=rows, opt_out_column="stop")
    assert again["queued"] == 0
    run_worker(runtime)
    assert len(fake_viber.sent()) == 182

    out = CliRunner().invoke(cli.cli, ["--config", str(runtime.settings.config_dir), "bulk", "status",
                                       "price-2026-12"], env={**runtime.settings.environ,
                                                               "REDIS_URL": runtime.settings.redis_url,
                                                               "CRMBRIDGE_REDIS_PREFIX": runtime.settings.redis_prefix})
    assert "sent 182, opted out 18, failed 0, uncertain 0, pending 0" in out.output, out.output


def test_a_campaign_started_twice_before_it_ran_is_sent_once(runtime, fake_viber):
    people = viber_ids(30)
    send_bulk.start(runtime, "shop-viber", "twice", "Привіт!", rows=people)
    send_bulk.start(runtime, "shop-viber", "twice", "Привіт!", rows=people)   # its jobs queued again
    run_worker(runtime)
    assert sorted(m["receiver"] for m in fake_viber.sent()) == sorted(people)
    with pytest.raises(Exception, match="another connection or text"):
        send_bulk.start(runtime, "shop-viber", "twice", "Інший текст", rows=people)


def test_what_a_killed_worker_left_is_resumed_without_a_second_message(runtime, fake_viber):
    people = viber_ids(3)
    send_bulk.start(runtime, "shop-viber", "killed", "Привіт!", rows=people)
    now = json.dumps({"at": "2026-12-07T10:00:00+00:00", "pid": 1})
    # a worker died before its request left (phase "calling"), another after it left (phase "sent")
    runtime.store.set(runtime.keys("attempted", f"campaign:killed|{people[0]}"), now[:-1] + ', "phase": "calling"}')
    runtime.store.set(runtime.keys("attempted", f"campaign:killed|{people[1]}"), now[:-1] + ', "phase": "sent"}')
    run_worker(runtime)
    assert sorted(m["receiver"] for m in fake_viber.sent()) == sorted([people[0], people[2]])
    status = send_bulk.status(runtime, "killed")
    assert (status["sent"], status["uncertain"]) == (2, 1)
    assert campaigns.deliver(runtime, {"campaign": "killed", "address": people[1]}).startswith("uncertain")


def test_an_answer_lost_after_viber_took_the_message_is_not_resent(runtime, fake_viber):
    people = viber_ids(2)
    fake_viber.fail("/pa/send_message", 0, b"", reset=True)      # the first one is sent, its answer lost
    send_bulk.start(runtime, "shop-viber", "lost", "Привіт!", rows=people)
    run_worker(runtime)
    assert len(fake_viber.sent()) == 2                             # each once, the lost one not again
    status = send_bulk.status(runtime, "lost")
    assert (status["sent"], status["uncertain"]) == (1, 1)


def test_an_unsubscribe_or_a_stop_reply_opts_out_for_good(client, runtime, fake_viber):
    for event, fields in (("unsubscribed", {"user_id": "gone0001AAAA="}),
                          ("message", {"sender": {"id": "stop0001AAAA=", "name": "Ігор"},
                                       "message": {"type": "text", "text": "Стоп"}})):
        body, headers = callback(event, **fields)
        assert client.post("/hooks/shop-viber", data=body, headers=headers).status_code == 200
    run_worker(runtime)
    send_bulk.start(runtime, "shop-viber", "after-stop", "Знижки!", rows=["gone0001AAAA=", "stop0001AAAA=",
                                                                                "stay0001AAAA="])
    run_worker(runtime)
    assert [m["receiver"] for m in fake_viber.sent()] == ["stay0001AAAA="]


def test_a_rule_starts_an_sms_campaign_from_a_csv_with_its_opt_out_column(client, runtime, fake_amo, fake_turbo):
    fake_amo.add_lead({"id": 31926520, "name": "x", "status_id": 10216994, "pipeline_id": 2116})
    resp = client.post("/hooks/quickstart-amo?token=amo-secret", data=payload("amocrm/lead_status_changed_full.form"),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.get_json() == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)      # the rule's step starts the campaign; the same worker then sends its jobs
    sent = sorted((m["phone"], m["text"]) for m in fake_turbo.messages.values())
    assert sent == [("380501112234", "Марія, з 31.12 по 2.01 ми не працюємо. Гарних свят!"),
                    ("380671234567", "Олена, з 31.12 по 2.01 ми не працюємо. Гарних свят!")]
    status = send_bulk.status(runtime, "holidays-2026")
    assert (status["total"], status["sent"], status["opted_out"], len(status["invalid"])) == (3, 2, 1, 1)


def test_an_smsc_campaign_s_delivery_reports_are_read_by_our_ids(runtime, fake_smsc):
    send_bulk.start(runtime, "sms-ru", "ru-1", "Заказ готов", rows=["8 912 345-67-89", "+7 912 345 67 90"],
                       region="RU")
    run_worker(runtime)
    assert sorted(phone for _, phone in fake_smsc.messages) == ["79123456789", "79123456790"]
    assert campaigns.delivery(runtime, "ru-1") == {"delivered": 2}
    assert campaigns.delivery(runtime, "no-such") is None
    out = CliRunner().invoke(cli.cli, ["--config", str(runtime.settings.config_dir), "bulk", "status", "ru-1",
                                       "--delivery"], env={**runtime.settings.environ,
                                                           "REDIS_URL": runtime.settings.redis_url,
                                                           "CRMBRIDGE_REDIS_PREFIX": runtime.settings.redis_prefix})
    assert "delivery: delivered 2" in out.output, out.output


def test_a_one_column_list_is_read_and_a_file_outside_the_configuration_refused(tmp_path):
    from types import SimpleNamespace

    from connectors.base import PermanentApiError
    rt = SimpleNamespace(settings=SimpleNamespace(config_dir=tmp_path / "config"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "one.csv").write_text("Phone\n067 123 45 67\n", encoding="utf-8")
    (tmp_path / "secret.csv").write_text("phone\n1\n", encoding="utf-8")
    assert send_bulk.read_rows(rt, "one.csv", None) == [{"phone": "067 123 45 67"}]
    for outside in ("../secret.csv", str(tmp_path / "secret.csv"), "missing.csv"):
        with pytest.raises(PermanentApiError, match="not a file under the configuration directory"):
            send_bulk.read_rows(rt, outside, None)


def test_a_telegram_list_keeps_the_bot_s_30_a_second(runtime, fake_tg):
    fake_tg.enforce_limits()                     # 30 a second per bot, 1 a second per chat (Bot FAQ)
    chats = [str(100000 + i) for i in range(90)]
    send_bulk.start(runtime, "quickstart-bot", "tg-1", "Новий прайс: {chat}", rows=[{"chat": c} for c in chats])
    run_worker(runtime)
    sent = [(str(c.body["chat_id"]), c.body["text"]) for c in fake_tg.method_calls("sendMessage")]
    assert sorted(sent) == sorted((c, f"Новий прайс: {c}") for c in chats)
    assert fake_tg.violations == [] and fake_tg.keeper.peak("bot") <= 30
