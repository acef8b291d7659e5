"""Playbook A, the production line: A1 sequential tasks, A2 start notices, A8 handover gate, and
the shipped example folder as a whole. Real-format Planfix scenario requests go through the app
into a real RQ worker on the real Redis, against the fake Planfix and Telegram."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import yaml

from tests.conftest import ROOT, run_worker
from tests.playbooks import smm
from tests.playbooks.smm import (
    CLIENT_CHAT,
    EXAMPLE,
    PROJECT,
    planfix_body,
    post_planfix,
    sent,
    task,
)

# the SMM test bed's fixtures: the example configuration, the fake Planfix, the clock
at, config_dir, env, fake_planfix = smm.at, smm.config_dir, smm.env, smm.fake_planfix

FRIDAY_5PM_KYIV = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def test_the_whole_example_folder_loads():
    """`python cli.py validate` on config/examples/smm-agency, every rule file included."""
    environ = {**os.environ, "CRMBRIDGE_CONFIG": str(EXAMPLE), "REDIS_URL": "", "PLANFIX_WEBHOOK_SECRET": "a",
               "TELEGRAM_WEBHOOK_SECRET": "b", "FORMS_WEBHOOK_SECRET": "c", "VIBER_WEBHOOK_SECRET": "d",
               "STAFF_CHAT_ID": "-1001000000001"}   # no default: tests/test_guides.py
    for name in ("PLANFIX_TOKEN", "TELEGRAM_BOT_TOKEN", "PLANFIX_BASE_URL", "VIBER_TOKEN", "VIBER_API_URL"):
        environ.pop(name, None)
    done = subprocess.run([sys.executable, "cli.py", "validate"], cwd=ROOT, env=environ, timeout=60,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("ok: 4 connection(s), ") and last.endswith(f"in {EXAMPLE}")
    files = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in (EXAMPLE / "rules").glob("*.yaml")]
    shipped = sum(1 for doc in files for rule in (doc["rules"] if isinstance(doc, dict) else doc)
                  if rule.get("enabled", True))
    assert f" {shipped} rule(s) " in last


def test_a1_completing_a_task_starts_the_next_one_by_order(live_server, runtime, fake_planfix, fake_tg, at):
    at(FRIDAY_5PM_KYIV)
    fake_planfix.add("task", task(1041, "Комунікація", "Завершена", "Комунікація", order=1))
    fake_planfix.add("task", task(1042, "Рубрикатор", "Завершена", "Рубрикатор", order=2))
    # numbers and order differ: the order field decides, not the task number
    fake_planfix.add("task", task(1043, "Оформлення акаунту", "Нова", "Оформлення акаунту", order=4))
    fake_planfix.add("task", task(1044, "Контент-план", "Нова", "Контент-план", order=3, assignee="user:6"))
    fake_planfix.add("task", task(2001, "Контент-план", "Нова", "Контент-план", order=3, project=78))

    assert post_planfix(live_server, planfix_body("smm_task_status_changed.json")) == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)

    [listed] = fake_planfix.received("POST", "/rest/task/list")
    assert listed.body["filters"] == [{"type": 5, "operator": "equal", "value": PROJECT}]
    [started] = fake_planfix.received("POST", "/rest/task/1044")
    # 3 working days from Friday 17:00 Kyiv: Wednesday 17:00 Kyiv (15:00 UTC)
    assert started.body == {"status": {"id": 2}, "endDateTime": {"datetime": "2026-12-02T15:00Z"}}
    assert fake_planfix.tasks[1044]["assignees"]["users"] == [{"id": "user:6", "name": "Олена Коваленко"}]
    assert fake_planfix.received("POST", r"/rest/task/(1043|2001)") == []

    # Planfix repeats the request (a retry), and the status is set again later (another `at`):
    # the next task is already in work, so nothing is started twice
    post_planfix(live_server, planfix_body("smm_task_status_changed.json"))
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", at="27-11-2026 17:20"))
    run_worker(runtime)
    assert len(fake_planfix.received("POST", "/rest/task/1044")) == 1
    assert fake_planfix.received("POST", r"/rest/task/(1043|2001)") == []


def test_a1_a_template_task_gets_the_clients_chat_with_its_status(live_server, runtime, fake_planfix, fake_tg, at):
    """A project template makes its tasks without the client's chat (only the task the group was
    /linked to has it): the task started gets the chat in the same write as its status, so the
    start notice that its status change sends (A2) reaches the client."""
    at(FRIDAY_5PM_KYIV)
    fake_planfix.add("task", task(1041, "Комунікація", "Завершена", "Комунікація", order=1))
    fake_planfix.add("task", task(1042, "Рубрикатор", "Завершена", "Рубрикатор", order=2))
    fake_planfix.add("task", task(1044, "Контент-план", "Нова", "Контент-план", order=3, chat=None))
    post_planfix(live_server, planfix_body("smm_task_status_changed.json"))
    run_worker(runtime)
    [started] = fake_planfix.received("POST", "/rest/task/1044")
    assert started.body["status"] == {"id": 2}
    [chat] = [f for f in started.body["customFieldData"] if f["value"] == str(CLIENT_CHAT)]
    assert fake_planfix.tasks[1044]["status"]["id"] == 2
    # a task that has its chat already is not written again
    fake_planfix.add("task", task(1045, "Оформлення акаунту", "Нова", "Оформлення акаунту", order=4))
    fake_planfix.tasks[1044]["status"] = {"id": smm.SMM_STATUSES["Завершена"], "name": "Завершена"}
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", task_id=1044, status="Завершена"))
    run_worker(runtime)
    [next_one] = fake_planfix.received("POST", "/rest/task/1045")
    assert "customFieldData" not in next_one.body


def test_a1_the_last_task_of_a_project_starts_nothing(live_server, runtime, fake_planfix, at):
    """A task that is not in the service's create: list (an extra task added by the PM)."""
    at(FRIDAY_5PM_KYIV)
    fake_planfix.add("task", task(1041, "Комунікація", "Завершена", "Комунікація", order=1))
    fake_planfix.add("task", task(1042, "Аудит конкурентів", "Завершена", "Рубрикатор", order=2))
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", name="Аудит конкурентів"))
    run_worker(runtime)
    assert len(fake_planfix.received("POST", "/rest/task/list")) == 1
    assert fake_planfix.received("POST", r"/rest/task/\d*") == []


def test_a2_start_notice_depends_on_the_task_type(live_server, runtime, fake_planfix, fake_tg, at):
    at(FRIDAY_5PM_KYIV)
    fake_planfix.add("task", task(1044, "Контент-план", "В роботі", "Контент-план", order=3))
    fake_planfix.add("task", task(1045, "Перші 9 публікацій", "В роботі", "Перші 9 публікацій", order=5))
    fake_planfix.add("task", task(1041, "Комунікація", "В роботі", "Комунікація", order=1))
    fake_planfix.add("task", task(1042, "Рубрикатор", "В роботі", "Рубрикатор", order=2))
    fake_planfix.add("task", task(1043, "Оформлення акаунту", "В роботі", "Оформлення акаунту", order=4))
    fake_planfix.add("task", task(1046, "Реклама публікацій", "В роботі", "Реклама", order=6))
    for number, name in ((1044, "Контент-план"), (1045, "Перші 9 публікацій"), (1041, "Комунікація"),
                         (1042, "Рубрикатор"), (1043, "Оформлення акаунту"), (1046, "Реклама публікацій")):
        post_planfix(live_server, planfix_body("smm_task_status_changed.json", task_id=number, name=name,
                                               status="В роботі", previous_status="Нова"))
    # back in work after a revision: not announced again
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", task_id=1044, name="Контент-план",
                                           status="В роботі", previous_status="Доопрацювання", at="28-11-2026 11:00"))
    run_worker(runtime)
    assert sent(fake_tg, CLIENT_CHAT) == [
        ("🗓 Розпочали підготовку контент-плану — переліку публікацій на наступний період. "
         "Надішлемо його вам на затвердження."),
        "📸 Для мінімального заповнення Instagram-профілю потрібно 9 публікацій. Ми вже почали над ними працювати.",
        ("📝 Розпочали роботу над рубрикатором — списком тем і підтем, на основі яких складемо контент-план. "
         "Повідомимо, щойно він буде готовий до перегляду."),
        "🎨 Працюємо над оформленням акаунту: залишилося завантажити логотип і придумати опис профілю.",
        "📣 Готуємося до рекламної кампанії: обираємо дописи, створюємо кампанію та налаштовуємо аудиторію."]


def test_a8_handover_with_everything_filled_goes_through(live_server, runtime, fake_planfix, fake_tg, at):
    at(FRIDAY_5PM_KYIV)
    deal = task(3001, "SMM для «Зерна»", "Передано у виробництво", process=8, project=None, chat=None,
                **{"Проєкт": "SMM · Кав'ярня «Зерно»", "Вид робіт": "SMM-просування", "Сума": 18000})
    deal["counterparty"] = {"id": "contact:318", "name": "Кав'ярня «Зерно»"}
    fake_planfix.add("task", deal)
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", task_id=3001, name="SMM для «Зерна»",
                                           status="Передано у виробництво", previous_status="Угода"))
    run_worker(runtime)
    assert fake_planfix.received("POST", "/rest/task/3001") == []          # not moved back
    [note] = fake_planfix.comments[("task", 3001)]
    assert note["description"] == ("✅ Угоду передано у виробництво: SMM · Кав'ярня «Зерно», SMM-просування, "
                                   "18000 грн.")


def test_a8_handover_with_missing_fields_is_refused_and_undone(live_server, runtime, fake_planfix, fake_tg, at):
    at(FRIDAY_5PM_KYIV)
    fake_planfix.add("task", task(3002, "Сайт для «Зерна»", "Передано у виробництво", process=8, project=None,
                                  chat=None, Проєкт="Сайт · Кав'ярня «Зерно»"))  # no kind, amount, client
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", task_id=3002, name="Сайт для «Зерна»",
                                           status="Передано у виробництво", previous_status="Угода", contact=None))
    run_worker(runtime)
    [moved] = fake_planfix.received("POST", "/rest/task/3002")
    assert moved.body == {"status": {"id": SALES_DEAL}}
    [note] = fake_planfix.comments[("task", 3002)]
    assert note["description"] == ("⛔ Угоду не передано у виробництво. Заповніть: "
                                   "Вид робіт, Сума, Клієнт (контрагент).")
    assert fake_planfix.tasks[3002]["status"] == {"id": SALES_DEAL}


SALES_DEAL = 12  # "Угода"


def _staff(fake_planfix) -> None:
    """The executors the example's create: list names (config/examples/smm-agency/rules/tasks.yaml)."""
    fake_planfix.users += [{"id": 7, "name": "Ірина", "lastname": "Мельник"},
                           {"id": 8, "name": "Максим", "lastname": "Бондар"}]


def test_a1_a_project_without_the_next_task_gets_it_created_from_the_service_list(
        live_server, runtime, fake_planfix, fake_tg, at):
    """The project was made by hand, not from the template: after "Рубрикатор" (order 2) nothing
    follows, so "Контент-план" of the create: list is created in the project, in work, with its
    executor, 5 working days, its type, the client's chat and order 3. Repeats create nothing."""
    at(FRIDAY_5PM_KYIV)
    _staff(fake_planfix)
    fake_planfix.add("task", task(1041, "Комунікація", "Завершена", "Комунікація", order=1))
    fake_planfix.add("task", task(1042, "Рубрикатор", "Завершена", "Рубрикатор", order=2))
    post_planfix(live_server, planfix_body("smm_task_status_changed.json"))
    run_worker(runtime)

    [created] = fake_planfix.received("POST", "/rest/task/")
    # 5 working days from Friday 17:00 Kyiv: Friday 4 December 17:00 Kyiv (15:00 UTC)
    assert created.body == {
        "name": "Контент-план", "project": {"id": PROJECT}, "status": {"id": 2}, "processId": 7,
        "endDateTime": {"datetime": "2026-12-04T15:00Z"}, "assignees": {"users": [{"id": "user:7"}]},
        "customFieldData": [{"field": {"id": 112}, "value": str(CLIENT_CHAT)}, {"field": {"id": 110}, "value": 3},
                            {"field": {"id": 111}, "value": "Контент-план"}]}
    # the step's own read of the completed task asks for its name, process, order and the copied field
    reads = [set(c.query["fields"][0].split(",")) for c in fake_planfix.received("GET", "/rest/task/1042")]
    assert {"id", "name", "project", "processId", "110", "112"} in reads

    # Planfix repeats the completion, and it is completed again later: the created task follows
    post_planfix(live_server, planfix_body("smm_task_status_changed.json"))
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", at="27-11-2026 17:20"))
    run_worker(runtime)
    assert len(fake_planfix.received("POST", "/rest/task/")) == 1


def test_a1_the_last_task_of_the_service_list_creates_nothing(live_server, runtime, fake_planfix, at):
    at(FRIDAY_5PM_KYIV)
    _staff(fake_planfix)
    fake_planfix.add("task", task(1042, "Реклама публікацій", "Завершена", "Реклама", order=6))
    fake_planfix.add("task", task(1043, "Контент-план", "Завершена", "Контент-план", order=3))
    post_planfix(live_server, planfix_body("smm_task_status_changed.json", name="Реклама публікацій"))
    run_worker(runtime)
    assert fake_planfix.received("POST", r"/rest/task/\d*") == []
    done = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    [step] = [e for e in done if e["what"] == "action.done" and ".start_next_task(" in e["action"]]
    assert step["result"]["reason"] == ("task 1042 ('Реклама публікацій') is the last of project 77, "
                                        "and no task of the create: list follows it")
