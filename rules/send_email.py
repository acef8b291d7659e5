"""Send an email through an `email` connection. Subject and text are Jinja2 templates.

    do:
      - send_email:
          connection: agency-mail
          to: "{{ entity.main_contact.email }}"        # one address, "a@x, b@y", or a list
          subject: "{{ entity.name }}: ждём ваш бриф"
          text: |
            Здравствуйте! …
          html: "<p>Здравствуйте! …</p>"              # optional HTML alternative

Or a named template, kept as files beside the rules (the configuration directory):

      - send_email: {connection: agency-mail, to: "…", template: warming-1}

    templates/email/warming-1.subject   the subject (one line)
    templates/email/warming-1.txt       the plain-text body
    templates/email/warming-1.html      optional HTML alternative

The files are read and compiled at start-up (a missing file or a Jinja2 error stops the service
with the rule's file:line, or the template file's line), and rendered like every option, in the
same sandbox with the same names (`entity`, `event`, `now`…). `subject:`/`text:`/`html:` written
in the rule win over the files'.
"""
from __future__ import annotations

import re
from pathlib import Path

from marshmallow import Schema, fields

from config.loader import ConfigError
from rules.templates import TemplateProblem, compile_template, is_template

NAME = "send_email"
TEMPLATE_DIR = Path("templates") / "email"
TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PARTS = (("subject", ".subject", True), ("text", ".txt", True), ("html", ".html", False))


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "an email connection name"})
    to = fields.Raw(required=True, metadata={"expected": "an address, a comma-separated list or a template"})
    template = fields.String(load_default=None, metadata={
        "expected": "a template name: files templates/email/<name>.subject, .txt (and .html)"})
    subject = fields.String(load_default=None, metadata={"expected": "the subject (a template)"})
    text = fields.String(load_default=None, metadata={"expected": "the plain-text body (a template)"})
    html = fields.String(load_default=None, metadata={"expected": "an HTML body (a template)"})


def plan(ctx, options: dict) -> list:
    to = options["to"]
    addresses = [str(a).strip() for a in to] if isinstance(to, list) else str(to).strip()
    if not addresses:
        raise ValueError("to: the address is empty after rendering the template (is the field filled?)")
    if not (options["subject"] or "").strip():
        raise ValueError("subject: empty after rendering the template")
    if options["text"] is None:
        raise ValueError("text: required (or template:)")
    return [ctx.step("send_email", options["connection"], to=addresses, subject=options["subject"].strip(),
                     text=options["text"], html=options["html"])]


def load_templates(rules: list, config_dir: Path) -> list[ConfigError]:
    """At start-up: put each `template:`'s files into its action's options (what the rule does not
    write itself), so they render like any option; every problem with its file and line."""
    errors: list[ConfigError] = []
    for rule in rules:
        for spec in (*rule.actions, *rule.otherwise):
            if spec.verb != NAME:
                continue
            opts = spec.options
            name = opts.get("template")
            err = _reporter(errors, rule, spec)

            if name is None:
                missing = [k for k in ("subject", "text") if not opts.get(k)]
                if missing:
                    err(f"{' and '.join(missing)}: required; expected {missing[0]}: or template: <name>")
                continue
            if not isinstance(name, str) or is_template(name) or not TEMPLATE_NAME.fullmatch(name):
                err(f"template: expected a name such as warming-1 (letters, digits, - _ .), found {name!r}")
                continue
            for key, suffix, required in PARTS:
                path = config_dir / TEMPLATE_DIR / f"{name}{suffix}"
                if key in opts:
                    continue   # written in the rule: the rule's wins
                if not path.is_file():
                    if required:
                        err(f"template: {name!r} has no {TEMPLATE_DIR / (name + suffix)} in the configuration "
                            f"directory {str(config_dir)!r}")
                    continue
                body = path.read_text(encoding="utf-8")
                if key == "subject":
                    body = body.strip()
                    if "\n" in body:
                        err("template: the subject file is one line", (str(path), 2))
                        continue
                try:
                    compile_template(body)
                except TemplateProblem as exc:
                    line = re.search(r"template line (\d+)", str(exc))
                    err(f"template {name!r}: {exc}", (str(path), int(line.group(1)) if line else 1))
                    continue
                opts[key] = body
    return errors


def _reporter(errors: list[ConfigError], rule, spec):
    """Problems of one action: at the rule's line, or at a template file's line."""
    def err(message: str, where: tuple[str, int] | None = None) -> None:
        path, line = where or (rule.file, spec.line)
        errors.append(ConfigError(path, line, f'rule "{rule.name}": send_email → {message}'))
    return err
