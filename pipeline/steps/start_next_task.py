"""start_next_task: start the task that follows a completed one in its project (Planfix projects;
rules/start_next_task.py plans it): its status, deadline and executor.

Built on the client's read_task (the task's project, process and the custom fields asked),
project_tasks (every task of the project, the same way), set_status (status, deadline and executor
in one write) and create_task (a task in the project, with status, process and fields).

The next task has the smallest `order_field` above the completed one's; tasks without a value
follow, in task-number order (the order a project template creates them). It is started only
while its status is one of `waiting`, so a repeated completion starts nothing twice. When the
project has no task after this one, `create` (the service's ordered list: {name, responsible,
due, fields}) gives the one after this task's name: it is created in the project, in `status`,
with `copy_fields` copied from this task and the order field one above this task's — unless a
task of that name is already in the project. A task that is started gets the `copy_fields` it
lacks (a project template's tasks have no client chat yet) in the same write as its status.
"""
from __future__ import annotations

from typing import Any

from connectors.base import Entity
from pipeline.steps.base import StepContext, require

METHOD = "start_next_task"
REQUIRES = frozenset({"read_task", "project_tasks", "set_status", "create_task"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)


def run(ctx: StepContext, entity: Entity, status: str, order_field: str | None = None,
        waiting: list[str] | None = None, due: str | None = None, responsible: Any = None,
        create: list[dict[str, Any]] | None = None, copy_fields: list[str] | None = None) -> dict[str, Any]:
    """{"next", "name", "outcome"} when a task was started; {"next", "reason"} when none was;
    {"next", "name", "created": True} when one was created."""
    require(ctx, METHOD, REQUIRES)
    client = ctx.client
    order = [order_field] if order_field else []
    current = client.read_task(entity, [*order, *[n for n in copy_fields or [] if n not in order]])
    if current is None:  # record-only: nothing to read the project from
        return {"next": None, "reason": "record-only"}
    project = (current.get("project") or {}).get("id")
    if not project:
        return {"next": None, "reason": f"task {entity.id} is not in a project"}
    tasks = client.project_tasks(project, [*order, *[n for n in copy_fields or [] if n not in order]])
    place = _place(current, order_field)
    following = sorted((t for t in tasks if str(t.get("id")) != str(entity.id) and _place(t, order_field) > place),
                       key=lambda t: _place(t, order_field))
    if not following and create:
        return _create_next(ctx, entity, current, project, tasks, create, status, order_field, copy_fields or [])
    if not following:
        return {"next": None, "reason": f"task {entity.id} is the last of project {project}"}
    nxt = following[0]
    if not _status_in(nxt.get("stage"), waiting or ["Нова"]):
        return {"next": nxt["id"], "reason": f"already {(nxt.get('stage') or {}).get('name') or 'started'}"}
    lacking = {name: value for name in copy_fields or []
               if (value := (current.get("fields") or {}).get(name)) not in (None, "")
               and (nxt.get("fields") or {}).get(name) in (None, "")}
    outcome = client.set_status(Entity("task", nxt["id"]), status, (nxt.get("pipeline") or {}).get("id"),
                                due=due, responsible=responsible, fields=lacking or None)
    return {"next": nxt["id"], "name": nxt.get("name"), "outcome": outcome}


def _create_next(ctx: StepContext, entity: Entity, current: dict[str, Any], project: Any,
                 tasks: list[dict[str, Any]], create: list[dict[str, Any]], status: str,
                 order_field: str | None, copy_fields: list[str]) -> dict[str, Any]:
    """Create the task that follows this one in `create` (matched by name) in the project."""
    names = [_name(item.get("name")) for item in create]
    here = _name(current.get("name"))
    if here not in names or names.index(here) + 1 >= len(create):
        return {"next": None, "reason": f"task {entity.id} ({current.get('name')!r}) is the last of project "
                                        f"{project}, and no task of the create: list follows it"}
    item = create[names.index(here) + 1]
    taken = [t for t in tasks if _name(t.get("name")) == _name(item["name"])]
    if taken:  # already made (by hand, or by an earlier completion): never twice
        return {"next": str(taken[0].get("id")), "reason": f"{item['name']!r} is already in project {project}"}
    values = {name: value for name in copy_fields
              if (value := (current.get("fields") or {}).get(name)) not in (None, "")}
    own = _place(current, order_field)
    if order_field and own[0] == 0:
        values[order_field] = int(own[1]) + 1 if own[1].is_integer() else own[1] + 1
    values.update(item.get("fields") or {})
    made = ctx.client.create_task(Entity("project", str(project)), str(item["name"])[:250], item.get("due"),
                                  responsible=item.get("responsible") or None, status=status,
                                  pipeline=(current.get("pipeline") or {}).get("id"), fields=values)
    return {"next": str(made) if made else None, "name": item["name"], "created": True}


def _place(task: dict[str, Any], order_field: str | None) -> tuple[int, float, int]:
    """A task's place in its project: by the order field's number, else after those, by number."""
    number = int(task.get("id") or 0)
    value = (task.get("fields") or {}).get(order_field) if order_field else None
    try:
        return (0, float(str(value).replace(",", ".")), number) if value not in (None, "") else (1, 0.0, number)
    except (TypeError, ValueError):
        return (1, 0.0, number)


def _status_in(ref: Any, names: list[Any]) -> bool:
    """Is a {"id", "name"} status one of these names or ids (names compared without case)?"""
    if not isinstance(ref, dict):
        return False
    wanted = {str(n).strip().casefold() for n in names}
    return str(ref.get("id")) in wanted or str(ref.get("name") or "").strip().casefold() in wanted


def _name(value: Any) -> str:
    return str(value or "").strip().casefold()
