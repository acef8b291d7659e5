"""Playbook C end to end, pipeline «Воронка продаж» and the lost deals: C1 (the task), C3, C4, C5,
C6, C8, C9, C10. amoCRM's real webhook shapes go through the Flask app into a real RQ worker on
real Redis; the whole shipped example configuration acts on the fake amoCRM v4, and each test
checks the calls amoCRM received. Harness: tests/playbooks/marketing_amo.py."""
from __future__ import annotations

from datetime import datetime

from tests.playbooks import marketing_amo
from tests.playbooks.marketing_amo import (
    FIELD_IDS,
    HEAD,
    LOST,
    REALIZATION,
    SALES,
    USERS,
    audit,
    closed,
    created,
    lead,
    moved,
    msk,
    stage,
    stage_moves,
    tasks_made,
    tick,
    timers,
    updated,
    uploaded,
)

# the agency's amoCRM, its configuration and clock (fixtures of the harness)
amo, at, config_dir, env = marketing_amo.amo, marketing_amo.at, marketing_amo.config_dir, marketing_amo.env

DEAL = 31926520


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def test_c1_a_new_client_gets_the_contact_task(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Новый клиент")
    created(client, runtime, amo, DEAL)
    [task] = tasks_made(amo)
    assert task == {"text": "Связаться и взять в работу", "entity_id": DEAL, "entity_type": "leads",
                    "responsible_user_id": USERS["Ольга Смирнова"],
                    "complete_till": ts(msk(2026, 11, 25, 11, 0))}  # one working day, Moscow


def test_c3_deferred_gets_a_task_for_the_brief_date_and_comes_back_on_it(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    brief_date = msk(2026, 12, 8, 0, 0)
    lead(amo, DEAL, "Весна 2027", SALES, "Получение брифа", {"Дата получения брифа": ts(brief_date)})
    moved(client, runtime, amo, DEAL, "Отложенные")
    [task] = tasks_made(amo)
    assert (task["text"], task["complete_till"]) == ("Получить бриф от клиента", ts(brief_date))
    [timer] = timers(runtime, "C3 дата получения брифа наступила → снова «Получение брифа»")
    assert datetime.fromisoformat(timer["fire_at"]) == msk(2026, 12, 8, 10, 0)
    tick(runtime, at, msk(2026, 12, 8, 10, 0, 5))
    assert stage_moves(amo, DEAL)[-1] == {"status_id": stage(SALES, "Получение брифа"), "pipeline_id": SALES}


def test_c3_a_deal_moved_out_of_deferred_before_the_date_stays_where_it_is(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Получение брифа", {"Дата получения брифа": ts(msk(2026, 12, 8))})
    moved(client, runtime, amo, DEAL, "Отложенные")
    at(msk(2026, 12, 1, 12, 0))
    moved(client, runtime, amo, DEAL, "Бриф получен")   # the client sent the brief early
    assert timers(runtime, "C3 дата получения брифа наступила → снова «Получение брифа»") == []
    tick(runtime, at, msk(2026, 12, 8, 10, 0, 5))
    assert stage_moves(amo, DEAL) == []
    assert any(a["reason"].startswith("C3 дата получения брифа наступила") for a in audit(runtime, "timer.cancelled"))


def test_c3_deferred_without_the_date_asks_for_it(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Получение брифа")
    moved(client, runtime, amo, DEAL, "Отложенные")
    [task] = tasks_made(amo)
    assert task["text"].startswith("Заполните поле «Дата получения брифа»")
    assert timers(runtime, "C3 дата получения брифа наступила → снова «Получение брифа»") == []


def test_c4_a_move_without_the_required_field_is_undone_and_the_manager_told(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Получение брифа")
    moved(client, runtime, amo, DEAL, "Встреча назначена")
    assert stage_moves(amo, DEAL) == [{"status_id": stage(SALES, "Получение брифа")}]  # back where it came from
    [note] = [c.body[0] for c in amo.received("POST", "/api/v4/leads/notes")]
    assert note["params"]["text"] == "Сделка возвращена на этап «Получение брифа»: не заполнено: Дата первой встречи"
    [task] = tasks_made(amo)
    assert task["text"] == "Этап «Встреча назначена» не сохранён — не заполнено: Дата первой встречи"
    assert task["responsible_user_id"] == USERS["Ольга Смирнова"]


def test_c4_with_the_field_filled_the_move_stands(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Получение брифа", {"Дата первой встречи": ts(msk(2026, 11, 26, 15))})
    moved(client, runtime, amo, DEAL, "Встреча назначена")
    assert stage_moves(amo, DEAL) == [] and amo.received("POST", "/api/v4/leads/notes") == []
    # the approved project needs both requisites
    updated(client, runtime, amo, DEAL, {"Реквизиты клиента": "ООО «Весна», ИНН 7701234567"})
    moved(client, runtime, amo, DEAL, "Утвержденный проект")
    assert stage_moves(amo, DEAL) == [{"status_id": stage(SALES, "Встреча назначена")}]
    assert tasks_made(amo)[-1]["text"] == "Этап «Утвержденный проект» не сохранён — не заполнено: Реквизиты подрядчика"


def test_c5_the_deadline_gives_the_pr_manager_a_task_and_the_proposal_file_moves_the_deal(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Встреча назначена", {"PR-менеджер": "Анна Кузнецова"})
    moved(client, runtime, amo, DEAL, "Бриф получен")
    deadline = msk(2026, 11, 30, 18, 0)
    updated(client, runtime, amo, DEAL, {"Дата дедлайна КП": ts(deadline)})
    [task] = tasks_made(amo)
    assert task == {"text": "Проверить бриф и составить КП", "complete_till": ts(deadline), "entity_id": DEAL,
                    "entity_type": "leads", "responsible_user_id": USERS["Анна Кузнецова"]}
    [(task_id, _)] = [(i, t) for i, t in amo.tasks.items() if t["text"] == "Проверить бриф и составить КП"]

    uploaded(client, runtime, amo, DEAL, "КП Весна 2027 черновик.pdf")        # not the proposal's name
    uploaded(client, runtime, amo, DEAL, "Старое Коммерческое предложение.pdf")  # nor this
    assert stage_moves(amo, DEAL) == []

    uploaded(client, runtime, amo, DEAL, "Коммерческое предложение Весна 2027.pdf")
    assert stage_moves(amo, DEAL) == [{"status_id": stage(SALES, "Согласование КП"), "pipeline_id": SALES}]
    [done] = amo.received("PATCH", f"/api/v4/tasks/{task_id}")
    assert done.body == {"is_completed": True, "result": {"text": "КП загружено: Коммерческое предложение Весна 2027.pdf"}}


def test_c5_only_forward_never_moves_a_deal_back(client, runtime, amo, at):
    """The proposal step moves with only_forward: amoCRM is read first, and a deal already past
    «Согласование КП» (moved on by hand after the webhook was sent) stays where it is."""
    from connectors.base import Entity
    from tests.steps import run_step
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Утвержденный проект")
    amo_client = runtime.client("agency-amo")

    def forward() -> dict:   # move_to_stage with only_forward: the move_forward step
        return run_step("move_forward", amo_client, entity=Entity("lead", str(DEAL)), stage="Согласование КП")
    assert forward() == {
        "moved": False, "reason": f"already at stage {stage(SALES, 'Утвержденный проект')}, "
                                  f"not before {stage(SALES, 'Согласование КП')}"}
    assert stage_moves(amo, DEAL) == []
    amo.leads[DEAL]["status_id"] = stage(SALES, "Бриф получен")
    assert forward() == {"moved": True}
    assert stage_moves(amo, DEAL) == [{"status_id": stage(SALES, "Согласование КП"), "pipeline_id": SALES}]


def test_c6_the_head_approves_or_not_and_the_right_tasks_follow(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Бриф получен", {"PR-менеджер": "Анна Кузнецова"})
    moved(client, runtime, amo, DEAL, "Согласование КП")
    [approve] = tasks_made(amo)
    assert (approve["text"], approve["responsible_user_id"]) == ("Согласовать КП", HEAD)
    [head_task] = [i for i, t in amo.tasks.items() if t["text"] == "Согласовать КП"]

    closed(client, runtime, amo, head_task, "Не согласовано")
    redo, describe = tasks_made(amo, since=1)
    assert (redo["text"], redo["responsible_user_id"], redo["entity_id"]) == ("Переделать КП", USERS["Анна Кузнецова"], DEAL)
    assert (describe["text"], describe["responsible_user_id"]) == ("Описать правки в комментарии к сделке", HEAD)

    moved(client, runtime, amo, DEAL, "Бриф получен")
    moved(client, runtime, amo, DEAL, "Согласование КП")
    second = max(i for i, t in amo.tasks.items() if t["text"] == "Согласовать КП")
    closed(client, runtime, amo, second, "Согласовано")
    send = tasks_made(amo)[-1]
    assert send["text"].startswith("Отправить КП клиенту и согласовать")
    assert (send["responsible_user_id"], send["entity_id"]) == (USERS["Ольга Смирнова"], DEAL)


def test_c6_a_task_closed_with_another_result_does_nothing(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Бриф получен")
    moved(client, runtime, amo, DEAL, "Согласование КП")
    [head_task] = [i for i, t in amo.tasks.items() if t["text"] == "Согласовать КП"]
    closed(client, runtime, amo, head_task, "Посмотрю после выходных")
    assert len(tasks_made(amo)) == 1


def test_c8_documents_contract_prepayment_and_payment_dates(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Согласование КП",
         {"Реквизиты клиента": "ООО «Весна»", "Реквизиты подрядчика": "ИП Кузнецова", "Тип оплаты": "Предоплата",
          "Дата оплаты 1": ts(msk(2026, 12, 3)), "Дата оплаты 2": ts(msk(2026, 12, 17))})
    moved(client, runtime, amo, DEAL, "Утвержденный проект")
    [docs] = tasks_made(amo)
    assert (docs["text"], docs["responsible_user_id"]) == ("Подготовить документы: договор и счёт", USERS["Елена Новикова"])
    uploaded(client, runtime, amo, DEAL, "Договор 118 Весна.docx")
    assert len(tasks_made(amo)) == 1          # the contract without the invoice: not yet
    uploaded(client, runtime, amo, DEAL, "Счет 118 от 25.11.2026.pdf")
    send, confirm = tasks_made(amo, since=1)
    assert (send["text"], send["responsible_user_id"]) == ("Отправить клиенту договор и согласовать", USERS["Ольга Смирнова"])
    assert (confirm["text"], confirm["complete_till"]) == ("Запросить подтверждение оплаты", ts(msk(2026, 11, 29, 11, 0)))
    uploaded(client, runtime, amo, DEAL, "Договор 118 Весна v2.docx")   # a new version: no second request
    assert len(tasks_made(amo)) == 3
    first = timers(runtime, "C8 дата оплаты 1 → «Уточнить статус оплаты»")
    assert [datetime.fromisoformat(t["fire_at"]) for t in first] == [msk(2026, 12, 3, 10, 0)]
    assert timers(runtime, "C8 дата оплаты 3 → «Уточнить статус оплаты»") == []   # not filled
    tick(runtime, at, msk(2026, 12, 3, 10, 0, 5))
    assert tasks_made(amo)[-1]["text"] == "Уточнить статус оплаты (дата оплаты 1)"


def test_c9_won_creates_the_project_in_realization_with_fields_contacts_and_the_pr_manager(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Утвержденный проект",
         {"PR-менеджер": "Анна Кузнецова", "Тип оплаты": "Предоплата", "Ссылка на КП": "https://disk.example/kp",
          "ФИО блогера 1": "Бузова Ольга", "Услуга 1.1": "Размещение фото", "Площадка 1.1": "Instagram"},
         contacts=[4001, 4002])
    moved(client, runtime, amo, DEAL, "Успешно реализовано")
    [create] = amo.received("POST", "/api/v4/leads")
    [body] = create.body
    assert (body["pipeline_id"], body["status_id"]) == (REALIZATION, stage(REALIZATION, "Тайминг"))
    assert body["responsible_user_id"] == USERS["Анна Кузнецова"] and body["name"] == "Весна 2027"
    values = {v["field_id"]: v["values"] for v in body["custom_fields_values"]}
    assert values[FIELD_IDS["Ссылка на КП"]] == [{"value": "https://disk.example/kp"}]
    assert values[FIELD_IDS["Тип оплаты"]] == [{"value": "Предоплата"}]
    assert values[FIELD_IDS["Менеджер по продажам"]] == [{"value": "Ольга Смирнова"}]
    [new_id] = [i for i in amo.leads if i != DEAL]
    [link] = amo.received("POST", f"/api/v4/leads/{new_id}/link")
    assert link.body == [{"to_entity_id": 4001, "to_entity_type": "contacts", "metadata": {"is_main": True}},
                         {"to_entity_id": 4002, "to_entity_type": "contacts", "metadata": {"is_main": False}}]


def test_c10_lost_needs_a_reason_then_goes_on_in_the_lost_pipeline_with_its_tag(client, runtime, amo, at):
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Согласование КП")
    moved(client, runtime, amo, DEAL, "Закрыто и не реализовано")
    assert stage_moves(amo, DEAL) == [{"status_id": stage(SALES, "Согласование КП")}]
    assert tasks_made(amo)[-1]["text"].startswith("Сделка не закрыта — не заполнено: Причина отказа")
    assert amo.received("POST", "/api/v4/leads") == []

    updated(client, runtime, amo, DEAL, {"Причина отказа": "Дорого"})
    moved(client, runtime, amo, DEAL, "Закрыто и не реализовано")
    [create] = amo.received("POST", "/api/v4/leads")
    [body] = create.body
    assert (body["pipeline_id"], body["status_id"]) == (LOST, stage(LOST, "Вернуть клиента"))
    assert body["tags_to_add"] == [{"name": "Дорого"}]
    [tagged] = [c.body for c in amo.received("PATCH", f"/api/v4/leads/{DEAL}") if "tags_to_add" in c.body]
    assert tagged == {"tags_to_add": [{"name": "Дорого"}]}
    [copy] = [i for i in amo.leads if i != DEAL]
    amo.leads[copy].update(created_at=int(amo.clock()), updated_at=int(amo.clock()), price=450000,
                           responsible_user_id=USERS["Ольга Смирнова"])
    created(client, runtime, amo, copy)
    assert tasks_made(amo)[-1]["text"] == "Связаться с клиентом: причина отказа «Дорого» — есть что предложить?"


def test_the_shipped_example_folder_loads_whole(env):
    """config/examples/marketing-agency as shipped (every rule file, the other part's too) loads
    with no error, and every rule of this part is in it."""
    from pathlib import Path

    from config.settings import Settings
    from runtime import load_configuration
    connections, ruleset = load_configuration(Settings(config_dir=Path(marketing_amo.EXAMPLE), environ=env, testing=True))
    mine = {r.name for r in ruleset.rules if r.file.rsplit("/", 1)[-1] in ("sales.yaml", "realization.yaml", "lost.yaml")}
    assert {name.split()[0] for name in mine} >= {"C1", "C3", "C4", "C5", "C6", "C8", "C9", "C11", "C12", "C13", "C14",
                                                  "C15"}
    assert "C4 C10 потеряна → «Работа с потерянными» с тегом причины" in mine
    assert {"agency-amo", "staff-bot"} <= set(connections.connections)


def test_c4_a_deal_put_back_by_the_gate_is_not_greeted_again(client, runtime, amo, at):
    """The undo is a stage change amoCRM announces like any other: marked `data.undo`, it does not
    give the head a second «Согласовать КП»; a later move back by a person does."""
    from tests.playbooks.marketing_amo import announced
    at(msk(2026, 11, 24, 11, 0))
    lead(amo, DEAL, "Весна 2027", SALES, "Бриф получен")
    moved(client, runtime, amo, DEAL, "Согласование КП")
    assert [t["text"] for t in tasks_made(amo)] == ["Согласовать КП"]
    at(msk(2026, 11, 24, 12, 0))
    moved(client, runtime, amo, DEAL, "Утвержденный проект")          # no requisites: put back
    assert stage_moves(amo, DEAL) == [{"status_id": stage(SALES, "Согласование КП")}]
    at(msk(2026, 11, 24, 12, 1))
    announced(client, runtime, amo, DEAL, stage(SALES, "Утвержденный проект"))
    assert [t["text"] for t in tasks_made(amo)] == [
        "Согласовать КП", "Этап «Утвержденный проект» не сохранён — не заполнено: Реквизиты клиента, Реквизиты подрядчика"]
    at(msk(2026, 11, 25, 12, 0))
    moved(client, runtime, amo, DEAL, "Бриф получен")
    moved(client, runtime, amo, DEAL, "Согласование КП")               # by a person: greeted again
    assert [t["text"] for t in tasks_made(amo)][-1] == "Согласовать КП" and len(tasks_made(amo)) == 3
