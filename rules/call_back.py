"""Telephony callback: the PBX calls the manager first, then connects the client.

    every: {start: 10 days, interval: 30-60 working minutes}   # first call on day 10, then retries
    while: [{stage: "Получение брифа"}]
    do:
      - call_back:
          connection: zadarma
          manager: "{{ entity.responsible.id }}"      # a PBX extension or phone; or a name/id looked up
          client: "{{ entity.fields['Телефон'] }}"    #   in the connection's options.extensions
          pause_after_talk: 1                         # working days after the day they talked

Calls go out only in the working hours of the rule's calendar: a rule that fires outside them
plans no call (its `every:` timer comes back in working time). Once a call-end notification
says manager and client talked, calls for the pair pause for the rest of that day and
`pause_after_talk` working days after it; a busy or unanswered manager is simply called again
at the next firing of the rule's `every:` timer.
"""
from marshmallow import Schema, fields, validate

NAME = "call_back"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a telephony connection name"})
    manager = fields.Raw(required=True, metadata={"expected": "the manager's extension, phone, or a name in options.extensions"})
    client = fields.Raw(required=True, metadata={"expected": "the client's phone number (a template)"})
    pause_after_talk = fields.Integer(load_default=1, validate=validate.Range(min=0, max=30),
                                      metadata={"expected": "working days to pause after a talk (0-30)"})


def resume_after_talk(ctx, days: int):
    """Where a pause that starts today ends: the opening of the (days + 1)-th working day after today."""
    cal = ctx.calendar
    later = cal.add_working_days(ctx.now, days + 1)
    opening = cal.working_hours_on(later.date())
    return opening[0] if opening else cal.next_working_moment(later)


def plan(ctx, options: dict) -> list:
    manager, client = str(options["manager"]).strip(), str(options["client"]).strip()
    if not manager or not client:
        raise ValueError(f"manager and client: expected both after rendering, found {manager!r} and {client!r}")
    if not ctx.calendar.is_working_time(ctx.now):
        raise ValueError(f"not calling at {ctx.now.astimezone(ctx.calendar.tz).isoformat()}: outside the working "
                         f"hours of the rule's calendar (next working moment "
                         f"{ctx.calendar.next_working_moment(ctx.now).isoformat()})")
    until = resume_after_talk(ctx, options["pause_after_talk"])
    return [ctx.step("call_back", options["connection"], manager=manager, client=client,
                     pause_until=until.isoformat(), entity=ctx.entity_ref, now=ctx.now.isoformat())]
