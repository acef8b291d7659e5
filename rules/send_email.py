"""Send an email through an `email` connection. Subject and text are Jinja2 templates.

    do:
      - send_email:
          connection: agency-mail
          to: "{{ entity.fields['Email'] }}"          # one address, "a@x, b@y", or a list
          subject: "{{ entity.name }}: ждём ваш бриф"
          text: |
            Здравствуйте! …
          html: "<p>Здравствуйте! …</p>"              # optional HTML alternative
"""
from marshmallow import Schema, fields

NAME = "send_email"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "an email connection name"})
    to = fields.Raw(required=True, metadata={"expected": "an address, a comma-separated list or a template"})
    subject = fields.String(required=True, metadata={"expected": "the subject (a template)"})
    text = fields.String(required=True, metadata={"expected": "the plain-text body (a template)"})
    html = fields.String(load_default=None, metadata={"expected": "an HTML body (a template)"})


def plan(ctx, options: dict) -> list:
    to = options["to"]
    addresses = [str(a).strip() for a in to] if isinstance(to, list) else str(to).strip()
    if not addresses:
        raise ValueError("to: the address is empty after rendering the template (is the field filled?)")
    if not options["subject"].strip():
        raise ValueError("subject: empty after rendering the template")
    return [ctx.step("send_email", options["connection"], to=addresses, subject=options["subject"].strip(),
                     text=options["text"], html=options["html"])]
