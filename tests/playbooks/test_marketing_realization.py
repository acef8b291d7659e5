"""Playbook C end to end, pipeline «Реализация»: C11 timing tasks per blogger and service, C12 task
gates, C13 the project deadline, C14 the report, C15 done or failed. amoCRM's real webhook shapes go
through the Flask app into a real RQ worker on real Redis; the whole shipped example configuration
acts on the fake amoCRM v4, and each test checks the calls amoCRM received. Harness:
tests/playbooks/marketing_amo.py."""
from __future__ import annotations

from datetime import datetime

import pytest

from tests.playbooks import marketing_amo
from tests.playbooks.marketing_amo import (
    FIELD_IDS,
    HEAD,
    REALIZATION,
    USERS,
    announced,
    closed,
    contact,
    created,
    lead,
    moved,
    msk,
    open_tasks,
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

PROJECT = 41000001
BLOGGERS = {"ФИО блогера 1": "Бузова Ольга", "Услуга 1.1": "Размещение фото", "Площадка 1.1": "Instagram",
            "Услуга 1.2": "Сторис", "Площадка 1.2": "Instagram",
            "ФИО блогера 2": "Ивлеева Анастасия", "Услуга 2.1": "Видеообзор", "Площадка 2.1": "YouTube"}
TIMING = ["Согласовать тайминг: Бузова Ольга, Instagram, Размещение фото",
          "Согласовать тайминг: Бузова Ольга, Instagram, Сторис",
          "Согласовать тайминг: Ивлеева Анастасия, YouTube, Видеообзор",
          "Согласовать и подписать документы: Бузова Ольга",
          "Согласовать и подписать документы: Ивлеева Анастасия"]
DEADLINE = msk(2026, 12, 18)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


@pytest.fixture
def project(client, runtime, amo, at):
    """The project C9 created in «Тайминг»: two bloggers, three services, the client, a blogger's
    and a contractor's contacts; amoCRM announces it (leads[add])."""
    at(msk(2026, 11, 30, 11, 0))
    contact(amo, 4001, "ООО «Весна»", "клиент")
    contact(amo, 4002, "Бузова Ольга", "блогер")
    contact(amo, 4003, "ИП Петров (монтаж)", "подрядчик")
    lead(amo, PROJECT, "Весна 2027", REALIZATION, "Тайминг", {**BLOGGERS, "Менеджер по продажам": "Ольга Смирнова"},
         responsible="Анна Кузнецова", contacts=[4001, 4002, 4003])
    created(client, runtime, amo, PROJECT)
    return PROJECT


def close_all(client, runtime, amo, at, minute: int) -> None:
    """The team closes every open task of the project, a minute apart."""
    for n, task in enumerate(open_tasks(amo, PROJECT)):
        at(msk(2026, 11, 30, 12, minute + n))
        closed(client, runtime, amo, task["id"], "Готово")


def test_c11_timing_and_documents_tasks_per_blogger_and_service(project, amo):
    made = tasks_made(amo)
    assert [t["text"] for t in made] == TIMING
    assert {(t["entity_id"], t["responsible_user_id"]) for t in made} == {(PROJECT, USERS["Анна Кузнецова"])}
    assert {t["complete_till"] for t in made} == {ts(msk(2026, 12, 2, 11, 0))}  # 2 working days


def test_c12_all_tasks_closed_moves_on_and_sets_the_next_stages_tasks(project, client, runtime, amo, at):
    close_all(client, runtime, amo, at, 0)
    assert stage_moves(amo, PROJECT) == [{"status_id": stage(REALIZATION, "Подготовка контента"), "pipeline_id": REALIZATION}]
    at(msk(2026, 11, 30, 13, 0))
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Тайминг"))
    assert [t["text"] for t in tasks_made(amo, since=5)] == [
        "Подготовить контент: Бузова Ольга, Instagram, Размещение фото", "Подготовить контент: Бузова Ольга, Instagram, Сторис",
        "Подготовить контент: Ивлеева Анастасия, YouTube, Видеообзор"]
    assert stage_moves(amo, PROJECT)[-1]["status_id"] == stage(REALIZATION, "Подготовка контента")  # not moved back


def test_c12_a_task_closed_while_others_are_open_moves_nothing(project, client, runtime, amo, at):
    first = open_tasks(amo, PROJECT)[0]
    at(msk(2026, 11, 30, 12, 0))
    closed(client, runtime, amo, first["id"], "Готово")
    assert stage_moves(amo, PROJECT) == []
    assert len(tasks_made(amo)) == 5


def test_c12_a_stage_skipped_by_hand_with_open_tasks_is_moved_back(project, client, runtime, amo, at):
    at(msk(2026, 11, 30, 14, 0))
    moved(client, runtime, amo, PROJECT, "Согласование контента")     # by hand, five tasks still open
    assert stage_moves(amo, PROJECT) == [{"status_id": stage(REALIZATION, "Тайминг")}]
    [note] = [c.body[0]["params"]["text"] for c in amo.received("POST", "/api/v4/leads/notes")]
    assert note.startswith("Сделку нельзя передвинуть, пока не закрыты задачи этапа «Тайминг»: "
                           "Согласовать тайминг: Бузова Ольга, Instagram, Размещение фото; ")
    assert len(tasks_made(amo)) == 5                                    # no «Согласовать контент» tasks
    at(msk(2026, 11, 30, 14, 1))
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Согласование контента"))   # the move back
    assert len(stage_moves(amo, PROJECT)) == 1 and len(tasks_made(amo)) == 5


def advance_to_execution(client, runtime, amo, at) -> None:
    """Timing and content done; the deal stands in «Согласование контента» with no open task."""
    for n, nxt in enumerate(["Подготовка контента", "Согласование контента"]):
        close_all(client, runtime, amo, at, 10 * n)
        at(msk(2026, 11, 30, 15, n))
        announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Тайминг" if n == 0 else "Подготовка контента"))
    close_all(client, runtime, amo, at, 30)     # content approved: C12 moves it to «Исполнение»


def test_c13_execution_needs_the_deadline_then_tasks_warning_and_closing_documents(project, client, runtime, amo, at):
    advance_to_execution(client, runtime, amo, at)
    assert stage_moves(amo, PROJECT)[-1] == {"status_id": stage(REALIZATION, "Исполнение"), "pipeline_id": REALIZATION}
    at(msk(2026, 11, 30, 16, 0))
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Согласование контента"))   # no «Дедлайн проекта»
    assert stage_moves(amo, PROJECT)[-1] == {"status_id": stage(REALIZATION, "Согласование контента")}
    assert tasks_made(amo)[-1]["text"] == "Этап «Исполнение» не сохранён — заполните «Дедлайн проекта»"
    at(msk(2026, 11, 30, 16, 5))
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Исполнение"))      # the move back, announced
    for task in open_tasks(amo, PROJECT):
        amo.close_task(task["id"], "ок")

    at(msk(2026, 11, 30, 16, 10))
    updated(client, runtime, amo, PROJECT, {"Дедлайн проекта": ts(DEADLINE)})
    before = len(tasks_made(amo))
    moved(client, runtime, amo, PROJECT, "Исполнение")
    assert [t["text"] for t in tasks_made(amo, since=before)] == [
        "Разместить: Бузова Ольга, Instagram, Размещение фото", "Разместить: Бузова Ольга, Instagram, Сторис",
        "Разместить: Ивлеева Анастасия, YouTube, Видеообзор"]
    assert {t["complete_till"] for t in tasks_made(amo, since=before)} == {ts(DEADLINE)}

    [warning] = timers(runtime, "C13 за 5 дней до дедлайна → руководителю")
    assert datetime.fromisoformat(warning["fire_at"]) == msk(2026, 12, 13)
    tick(runtime, at, msk(2026, 12, 13, 0, 0, 5))
    head = tasks_made(amo)[-1]
    assert (head["text"], head["responsible_user_id"]) == ("Близится дата сдачи, проект отстает от сроков", HEAD)
    amo.close_task(open_tasks(amo, PROJECT)[-1]["id"], "Принято")   # the head has seen it

    for task in open_tasks(amo, PROJECT):          # the placements are done
        amo.close_task(task["id"], "Размещено")
    before = len(tasks_made(amo))
    tick(runtime, at, msk(2026, 12, 18, 10, 5, 5))  # the deadline: C14 at 10:00, closing documents at 10:05
    texts = [t["text"] for t in tasks_made(amo, since=before)]
    assert texts == ["Подготовить и загрузить отчет по проекту", "Указать срок передачи отчета клиенту",
                     "Получить закрывающие документы: Бузова Ольга", "Получить закрывающие документы: Ивлеева Анастасия",
                     "Получить закрывающие документы: ООО «Весна»", "Получить закрывающие документы: ИП Петров (монтаж)"]

    closing = [t for t in open_tasks(amo, PROJECT) if t["text"].startswith("Получить закрывающие документы")]
    for n, task in enumerate(closing):
        at(msk(2026, 12, 18, 12, n))
        closed(client, runtime, amo, task["id"], "Получены")
        ticked = [c.body for c in amo.received("PATCH", f"/api/v4/leads/{PROJECT}") if "custom_fields_values" in c.body]
        assert bool(ticked) == (n == len(closing) - 1)     # only when the last one is closed
    assert ticked == [{"custom_fields_values": [{"field_id": FIELD_IDS["Закрывающие документы получены"],
                                                 "values": [{"value": True}]}]}]


def at_the_deadline_with_the_report_tasks(project, client, runtime, amo, at) -> None:
    advance_to_execution(client, runtime, amo, at)
    at(msk(2026, 11, 30, 17, 0))
    updated(client, runtime, amo, PROJECT, {"Дедлайн проекта": ts(DEADLINE)})
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Согласование контента"))
    assert len(open_tasks(amo, PROJECT)) == 3        # the placements, open until the deadline…
    at(msk(2026, 12, 1, 12, 0))
    uploaded(client, runtime, amo, PROJECT, "Медиаплан.xlsx")   # …do not cancel C14's check (keep_timer)
    assert len(timers(runtime, "C14 дедлайн, задачи закрыты → отчет по проекту")) == 1
    for task in open_tasks(amo, PROJECT):
        amo.close_task(task["id"], "Размещено")
    tick(runtime, at, msk(2026, 12, 13, 0, 0, 5))     # «Близится дата сдачи» to the head…
    amo.close_task(open_tasks(amo, PROJECT)[-1]["id"], "Принято")   # …who has seen it
    tick(runtime, at, msk(2026, 12, 18, 10, 0, 5))   # C14's check only (closing documents come at 10:05)


def test_c14_report_task_closed_without_the_report_is_set_again_and_the_head_told(project, client, runtime, amo, at):
    at_the_deadline_with_the_report_tasks(project, client, runtime, amo, at)
    [report] = [t for t in open_tasks(amo, PROJECT) if t["text"] == "Подготовить и загрузить отчет по проекту"]
    uploaded(client, runtime, amo, PROJECT, 'Отчет по проекту "Весна 2026".pdf')   # another project's name
    before = len(tasks_made(amo))
    at(msk(2026, 12, 18, 15, 0))
    closed(client, runtime, amo, report["id"], "Отчет отправлен")
    again, head = tasks_made(amo, since=before)
    assert again["text"] == 'Подготовить и загрузить отчет по проекту (файл «Отчет по проекту "Весна 2027"»)'
    assert (again["entity_id"], again["responsible_user_id"]) == (PROJECT, USERS["Анна Кузнецова"])
    assert (head["text"], head["responsible_user_id"]) == (
        "Невыполнение требований системы: задача «Подготовить и загрузить отчет по проекту» закрыта без отчета", HEAD)
    assert stage_moves(amo, PROJECT)[-1]["status_id"] != 142


def test_c14_report_uploaded_and_last_task_closed_moves_to_done_and_c15_follows(project, client, runtime, amo, at):
    at_the_deadline_with_the_report_tasks(project, client, runtime, amo, at)
    uploaded(client, runtime, amo, PROJECT, 'Отчет по проекту "Весна 2027".pdf')
    report, when = sorted(open_tasks(amo, PROJECT), key=lambda t: t["text"])
    at(msk(2026, 12, 18, 15, 0))
    closed(client, runtime, amo, report["id"], "Загружен")
    assert stage_moves(amo, PROJECT)[-1]["status_id"] != 142      # «Указать срок…» still open
    at(msk(2026, 12, 18, 15, 1))
    closed(client, runtime, amo, when["id"], "25.12")
    assert stage_moves(amo, PROJECT)[-1] == {"status_id": 142, "pipeline_id": REALIZATION}

    before = len(tasks_made(amo))
    at(msk(2026, 12, 18, 15, 2))
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Исполнение"))
    [follow] = tasks_made(amo, since=before)
    assert follow == {"text": "Спланировать дальнейшую работу по клиенту", "entity_id": 4001, "entity_type": "contacts",
                      "responsible_user_id": USERS["Ольга Смирнова"], "complete_till": ts(msk(2026, 12, 22, 15, 2))}


def test_c15_failed_needs_a_reason_and_gives_the_head_a_task(project, client, runtime, amo, at):
    at(msk(2026, 11, 30, 14, 0))
    moved(client, runtime, amo, PROJECT, "Не реализовано")
    assert stage_moves(amo, PROJECT) == [{"status_id": stage(REALIZATION, "Тайминг")}]
    assert tasks_made(amo)[-1]["text"] == "Этап «Не реализовано» не сохранён — не заполнено: Причина отказа"
    at(msk(2026, 11, 30, 14, 5))
    announced(client, runtime, amo, PROJECT, stage(REALIZATION, "Не реализовано"))
    updated(client, runtime, amo, PROJECT, {"Причина отказа": "Блогер отказался"})
    moved(client, runtime, amo, PROJECT, "Не реализовано")
    head = tasks_made(amo)[-1]
    assert (head["text"], head["responsible_user_id"]) == ("Проект не реализован (Блогер отказался): разобраться", HEAD)
