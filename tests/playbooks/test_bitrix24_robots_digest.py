"""Playbook D7 on Bitrix24 end to end: every working morning each manager gets their overdue tasks
and open deals/leads without an open task as a Bitrix24 notification (im.notify.system.add), the
head a summary; a dismissed manager (ACTIVE false: no notification channel) has their list in
the head's summary. The portal holds 520 open deals and as many tasks: every list is read across
its pages (50 a page, `start`/`next`). A Telegram variant: a manager with no chat.

The shipped rule (config/examples/bitrix24-robots/rules/control.yaml) runs from its schedule timer
in a real RQ worker against the fake portal; the tests assert on the REST calls it received.
"""
from __future__ import annotations

import pytest

from config.loader import ConfigErrors
from pipeline import timers as pipeline_timers
from runtime import load_configuration
from tests.playbooks.bitrix24_robots import (  # noqa: F401 - fixtures
    ANNA, HEAD, IVAN, at, calls, config_dir, env, msk, portal, tick,
)

DISMISSED = "12"        # a manager who left: user.get lists them with ACTIVE false
FIRST, MANY = 1000, 520


def busy_portal(portal) -> None:
    """520 open deals (half Ivan's, half Anna's), each with an open task but three; two leads;
    Пётр Сидоренко has left (ACTIVE false); overdue tasks of Ivan (2), Anna (1) and Пётр (1); tasks
    that are not overdue or are done; closed deals without a task (not listed)."""
    portal.users.append({"ID": DISMISSED, "ACTIVE": False, "NAME": "Пётр", "LAST_NAME": "Сидоренко"})
    for n in range(MANY):
        deal_id = FIRST + n
        owner = IVAN if n % 2 == 0 else ANNA
        portal.add("deal", {"ID": str(deal_id), "TITLE": f"Сделка {deal_id}", "STAGE_ID": "UC_BRIEF", "CATEGORY_ID": "0",
                            "CLOSED": "N", "ASSIGNED_BY_ID": owner, "DATE_MODIFY": "2026-12-01T10:00:00+03:00"})
        if deal_id not in (1006, 1013, 1515):
            portal.add_task(id=str(50000 + n), title=f"Позвонить {deal_id}", responsibleId=owner,
                            deadline="2026-12-10T18:00:00+03:00", ufCrmTask=[f"D_{deal_id}"])
    portal.add("deal", {"ID": "1900", "TITLE": "Закрыта", "STAGE_ID": "WON", "CATEGORY_ID": "0", "CLOSED": "Y",
                        "ASSIGNED_BY_ID": IVAN})
    portal.add("lead", {"ID": "55", "TITLE": "Заявка с сайта", "STATUS_ID": "NEW", "STATUS_SEMANTIC_ID": "P",
                        "ASSIGNED_BY_ID": IVAN})
    portal.add("lead", {"ID": "56", "TITLE": "Сконвертирована", "STATUS_ID": "CONVERTED", "STATUS_SEMANTIC_ID": "S",
                        "ASSIGNED_BY_ID": ANNA})
    overdue = [("61", "Отправить договор", IVAN, "2026-12-02T18:00:00+03:00", ["D_1002"]),
               ("62", "Перезвонить по смете", IVAN, "2026-12-04T12:00:00+03:00", ["D_1004", "C_84"]),
               ("63", "Согласовать меню", ANNA, "2026-12-03T15:00:00+03:00", ["D_1001"]),
               ("64", "Забрать оплату", DISMISSED, "2026-12-01T11:00:00+03:00", ["D_1008"])]
    for tid, title, who, due, bound in overdue:
        portal.add_task(id=tid, title=title, responsibleId=who, deadline=due, ufCrmTask=bound)
    portal.add_task(id="65", title="Уже сделано", responsibleId=ANNA, deadline="2026-12-01T12:00:00+03:00",
                    status="5", ufCrmTask=["D_1003"])
    portal.add_task(id="66", title="Ещё не срок", responsibleId=IVAN, deadline="2026-12-07T18:00:00+03:00",
                    ufCrmTask=["D_1010"])


def run_the_morning(settings, at):
    """Friday afternoon the schedule is set; Monday 09:00 it fires. Returns the runtime."""
    from webhooks import create_app
    at(msk(2026, 12, 4, 15))
    app = create_app(settings=settings)
    rt = app.extensions["crmbridge"]
    pipeline_timers.ensure_schedules(rt)
    [tick_] = [t for t in rt.backend.timers.pending() if t["entity"]["type"] == "schedule"]
    assert tick_["fire_at"] == "2026-12-07T09:00:00+03:00"
    tick(rt, at, msk(2026, 12, 7, 9, 0, 1))
    return rt


IVAN_TEXT = ("Контроль на 2026-12-07\nИван Петренко: 4\n"
             "• Отправить договор — до 02.12.2026 18:00 [deal 1002]\n"
             "• Перезвонить по смете — до 04.12.2026 12:00 [deal 1004]\n"
             "Без открытой задачи: 2\n• сделка «Сделка 1006» [deal 1006]\n• лид «Заявка с сайта» [lead 55]")
ANNA_TEXT = ("Контроль на 2026-12-07\nАнна Сидорова: 3\n"
             "• Согласовать меню — до 03.12.2026 15:00 [deal 1001]\n"
             "Без открытой задачи: 2\n• сделка «Сделка 1013» [deal 1013]\n• сделка «Сделка 1515» [deal 1515]")
DISMISSED_LINES = "• Забрать оплату — до 01.12.2026 11:00 [deal 1008]"


def test_d7_each_manager_is_notified_and_the_head_gets_the_summary_across_every_page(settings, portal, at):
    busy_portal(portal)
    rt = run_the_morning(settings, at)
    try:
        notes = calls(portal, "im.notify.system.add")
        assert [(n["USER_ID"], n["MESSAGE"]) for n in notes[:2]] == [(int(IVAN), IVAN_TEXT), (int(ANNA), ANNA_TEXT)]
        [head] = notes[2:]
        assert head["USER_ID"] == int(HEAD)
        assert head["MESSAGE"] == (
            "Контроль на 2026-12-07\nИтого: просроченных задач 4, без открытой задачи 4\n"
            "Иван Петренко: просрочено 2, без задачи 2\nАнна Сидорова: просрочено 1, без задачи 2\n"
            "Пётр Сидоренко: просрочено 1, без задачи 0\n\n"
            f"Пётр Сидоренко — нет канала для уведомления:\n{DISMISSED_LINES}")
        # every page of the deals (50 a page: 520 open deals → 11 calls, start 0…500) and of the tasks
        deal_pages = [c["start"] for c in calls(portal, "crm.deal.list")]
        assert deal_pages == list(range(0, MANY, 50))
        assert all(c["filter"] == {"CLOSED": "N"} for c in calls(portal, "crm.deal.list"))
        task_lists = calls(portal, "tasks.task.list")
        overdue = [c for c in task_lists if "<DEADLINE" in c["filter"]]
        assert [c["start"] for c in overdue] == [0]
        assert overdue[0]["filter"] == {"<DEADLINE": "2026-12-07T09:00:01+03:00", "!REAL_STATUS": 5}
        open_all = [c["start"] for c in task_lists if "<DEADLINE" not in c["filter"]]
        assert open_all == list(range(0, 523, 50))          # 519 open tasks: 11 pages
        assert [c["filter"] for c in calls(portal, "crm.lead.list")] == [{"STATUS_SEMANTIC_ID": "P"}]
        # the next working morning is scheduled
        [nxt] = [t for t in rt.backend.timers.pending() if t["entity"]["type"] == "schedule"]
        assert nxt["fire_at"] == "2026-12-08T09:00:00+03:00"
    finally:
        rt.backend.close()


def test_d7_a_retried_digest_sends_nobody_twice(settings, portal, at):
    busy_portal(portal)
    fail_after = {"n": 0}
    original = portal.methods["im.notify.system.add"]

    def flaky(params):   # the head's summary fails once with a refusal: the step is retried
        fail_after["n"] += 1
        if fail_after["n"] == 3:
            from tests.fakes_bitrix24 import BitrixError
            raise BitrixError(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        return original(params)
    portal.methods["im.notify.system.add"] = flaky
    rt = run_the_morning(settings, at)
    try:
        notes = calls(portal, "im.notify.system.add")
        assert [n["USER_ID"] for n in notes] == [int(IVAN), int(ANNA), int(HEAD)]   # the head's once, after the retry
    finally:
        rt.backend.close()


def test_d7_by_telegram_a_manager_with_no_chat_goes_to_the_heads_summary(config_dir, settings, portal, fake_tg, at):
    rules = config_dir / "rules" / "control.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace(
        "to: {connection: portal-b24, user: responsible}",
        'to: {connection: office-bot, chats: {"Иван Петренко": "7001"}}').replace(
        'head: {connection: portal-b24, user: "Ольга Коваленко"}', 'head: {connection: office-bot, chat: "7000"}'),
        encoding="utf-8")
    busy_portal(portal)
    rt = run_the_morning(settings, at)
    try:
        sent = [(m.body["chat_id"], m.body["text"]) for m in fake_tg.method_calls("sendMessage")]
        assert sent[0] == ("7001", IVAN_TEXT)
        chat, text = sent[1]
        assert chat == "7000" and len(sent) == 2
        assert "\n\nАнна Сидорова — нет канала для уведомления:\n" + ANNA_TEXT.split("\n", 2)[2] in text
        assert f"Пётр Сидоренко — нет канала для уведомления:\n{DISMISSED_LINES}" in text
        assert calls(portal, "im.notify.system.add") == []
    finally:
        rt.backend.close()


@pytest.mark.parametrize("edit, expected", [
    # Planfix has no deals: a digest of deals without a task cannot come from it
    (lambda text: text.replace("source: portal-b24", "source: smm-planfix"),
     "send_digest → query deals_without_task: not supported for planfix (connection 'smm-planfix'); "
     "it gives overdue_tasks"),
    # a Telegram bot cannot notify a CRM user
    (lambda text: text.replace("to: {connection: portal-b24, user: responsible}",
                               "to: {connection: office-bot, user: responsible}"),
     "send_digest → to: {user: …} needs notify, which a telegram connection ('office-bot') cannot do"),
])
def test_d7_validate_refuses_a_source_or_destination_at_start_up_with_file_and_line(
        config_dir, settings, edit, expected):
    settings.environ.update(PLANFIX_SECRET="pf-secret", PLANFIX_TOKEN="pf-token")
    (config_dir / "connections.yaml").write_text((config_dir / "connections.yaml").read_text(encoding="utf-8") + """
  smm-planfix:
    type: planfix
    base_url: https://smm.planfix.com/rest
    webhook_secret: ${PLANFIX_SECRET}
    credentials: {token: "${PLANFIX_TOKEN}"}
""", encoding="utf-8")
    rules = config_dir / "rules" / "control.yaml"
    rules.write_text(edit(rules.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_configuration(settings)
    [error] = caught.value.errors
    assert error.path.endswith("rules/control.yaml") and error.line == 9
    assert expected in str(error)
