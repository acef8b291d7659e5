"""Offline `validate` (issue 17 items 1 and 2): what needs no CRM is caught at start-up, each mistake
said once, where it is, with the file's path as given, what was expected, what was found and the
nearest real name. Each case is one mistake an integrator made; the test pins the exact line."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

CONNECTIONS = """calendars:
  office:
    timezone: Europe/Kyiv
    hours: {mon-fri: "10:00-19:00"}
  night:
    timezone: Europe/Kiyv
connections:
  amo:
    type: amocrm
    webhook_secret: ${AMO_SECRET}
    calendar: office
  bot:
    type: telegram
    webhook_secret: ${TG_SECRET}
    options:
      chats:
        team: "-100200"
"""
ENV = {"AMO_SECRET": "a-secret", "TG_SECRET": "t-secret", "REDIS_URL": ""}

# mistake → (rule text under `rules:`, the exact error line after "<file>:<line>: ")
MISTAKES = {
    "bad duration in an action option": ("""  - name: task
    on: {event: stage.changed, connection: amo}
    do:
      - create_task:
          text: Call back
          due: 2 workign days""", 6,
        'rule "task" → create_task → due: expected a duration such as \'3 days\', \'2 working days\' or '
        '\'30-60 minutes\', found \'2 workign days\'; did you mean "working"?'),
    "bad date in an action option": ("""  - name: dated
    on: {event: stage.changed, connection: amo}
    do: [{create_task: {text: x, due: "2026-13-01"}}]""", 3,
        'rule "dated" → create_task → due: expected a duration such as \'1 working day\', a date such as '
        '\'2026-03-01\' or \'01.03.2026\', or a template, found \'2026-13-01\''),
    "bad duration in a delay": ("""  - name: later
    on: {event: stage.changed, connection: amo}
    after: 3 workin days
    do: [{add_note: x}]""", 3,
        'rule "later" → after: expected a duration such as \'3 days\', \'2 working days\' or \'30-60 minutes\', '
        'found \'3 workin days\'; did you mean "working"?'),
    "undefined Telegram chat alias": ("""  - name: notice
    on: {event: stage.changed, connection: amo}
    do: [{send_message: {connection: bot, chat: teem, text: hi}}]""", 3,
        'rule "notice" → send_message → chat: expected a chat id, an @username or a chat name from connection '
        '\'bot\' → options → chats, found \'teem\'; did you mean "team"?'),
    "unknown connection in an action": ("""  - name: elsewhere
    on: {event: stage.changed, connection: amo}
    do: [{send_message: {connection: bott, chat: team, text: hi}}]""", 3,
        'rule "elsewhere" → send_message → connection: no connection \'bott\' in connections.yaml; did you mean "bot"?'),
    "send_digest from a source that is no CRM": ("""  - name: digest
    on: {schedule: "09:00", connection: amo}
    do: [{send_digest: {query: overdue_tasks, source: bot, to: {connection: bot, chat: team}}}]""", 3,
        'rule "digest" → send_digest → source: expected a CRM connection that can list overdue tasks (amo), '
        'found \'bot\' (a telegram connection)'),
    "misspelled name in a template": ("""  - name: template name
    on: {event: stage.changed, connection: amo}
    do: [{add_note: "Deal {{ entiy.name }}"}]""", 3,
        'rule "template name" → add_note → text: the template reads \'entiy\', which no rule\'s template has; '
        'expected one of actor, calendar, data, entity, event, now, rule; did you mean "entity"?'),
    "event key that no event has": ("""  - name: template event
    on: {event: stage.changed, connection: amo}
    do: [{add_note: "{{ event.kindd }}"}]""", 3,
        'rule "template event" → add_note → text: the template reads event.kindd: expected one of kind, '
        'connection, source, entity, data, occurred_at, id; did you mean "kind"?'),
    "data key a scheduled tick does not have": ("""  - name: tick
    on: {schedule: "09:00", connection: amo}
    do: [{send_digest: {query: overdue_tasks, to: {connection: bot, chat: team}, title: "{{ data.scheduled }}"}}]""", 3,
        'rule "tick" → send_digest → title: the template reads data.scheduled: expected one of scheduled_for; '
        'did you mean "scheduled_for"?'),
    "misspelled calendar name": ("""  - name: cal
    on: {event: stage.changed, connection: amo}
    calendar: offfice
    do: [{add_note: x}]""", 3,
        'rule "cal" → calendar: no calendar \'offfice\' in connections.yaml; did you mean "office"?'),
    "otherwise names it does not get outside otherwise": ("""  - name: reason outside
    on: {event: stage.changed, connection: amo}
    do: [{add_note: "{{ missing }}"}]""", 3,
        'rule "reason outside" → add_note → text: the template reads \'missing\', which no rule\'s template has; '
        'expected one of actor, calendar, data, entity, event, now, rule'),
}


def configure(tmp_path: Path, rules: str, connections: str = CONNECTIONS, name: str = "r.yaml") -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "connections.yaml").write_text(connections.replace("Europe/Kiyv", "Europe/Kyiv"), encoding="utf-8")
    (tmp_path / "rules" / name).write_text(rules, encoding="utf-8")
    return tmp_path


def validate(config: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli.cli, ["--config", str(config), "validate"], env=ENV)
    return result.exit_code, result.output.splitlines()


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_is_one_line_with_file_line_expected_found(tmp_path, mistake):
    rule, line, said = MISTAKES[mistake]
    config = configure(tmp_path, "rules:\n" + rule + "\n")
    code, output = validate(config)
    assert code == 1
    assert output == [f"{config}/rules/r.yaml:{line + 1}: {said}", "1 error in 1 file; crmbridge did not start."]


def test_all_at_once_each_said_once(tmp_path):
    config = configure(tmp_path, "rules:\n" + "\n".join(r for r, _, _ in MISTAKES.values()) + "\n")
    code, output = validate(config)
    assert code == 1 and len(output) == len(MISTAKES) + 1, output


def test_a_wrong_time_zone_is_said_once_in_connections_yaml_not_per_rule(tmp_path):
    rules = "rules:\n" + "\n".join(f"""  - name: r{i}
    on: {{event: stage.changed, connection: amo}}
    calendar: night
    do: [{{add_note: x}}]""" for i in range(5)) + "\n"
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text(rules, encoding="utf-8")
    code, output = validate(tmp_path)
    assert code == 1
    assert output == [f"{tmp_path}/connections.yaml:6: calendar 'night': timezone: expected an IANA name such as "
                      "'Europe/Kyiv', got 'Europe/Kiyv'; did you mean \"Europe/Kyiv\"?",
                      "1 error in 1 file; crmbridge did not start."]


def test_a_misspelled_calendar_in_defaults_is_said_once_where_it_is_written(tmp_path):
    rules = "defaults:\n  calendar: ofice\nrules:\n" + "\n".join(f"""  - name: r{i}
    on: {{event: stage.changed, connection: amo}}
    do: [{{add_note: x}}]""" for i in range(5)) + "\n"
    config = configure(tmp_path, rules)
    code, output = validate(config)
    assert code == 1
    assert output == [f"{config}/rules/r.yaml:2: defaults → calendar: no calendar 'ofice' in connections.yaml; "
                      "did you mean \"office\"?", "1 error in 1 file; crmbridge did not start."]


def test_a_file_that_is_not_utf8_is_said_by_line_and_column(tmp_path):
    config = configure(tmp_path, "")
    text = "rules:\n  - name: note\n    on: stage.changed\n    do: [{add_note: \"Угода\"}]\n"
    (config / "rules" / "r.yaml").write_bytes(text.encode("cp1251"))
    code, output = validate(config)
    assert code == 1
    assert output == [f"{config}/rules/r.yaml:4: expected UTF-8 text, found byte(s) d3 at column 22; "
                      "save the file as UTF-8", "1 error in 1 file; crmbridge did not start."]


def test_a_bulk_send_s_channels_and_crm_are_checked_at_start_up(tmp_path):
    rules = """rules:
  - name: prices
    on: {event: stage.changed, connection: amo}
    do:
      - send_bulk:
          connection: bot
          campaign: prices-2027
          text: Нові ціни
          crm: {stage: Постійний клієнт}
          channels:
            - {connection: bott, field: telegram chat}
            - {connection: amo, field: phone}
"""
    config = configure(tmp_path, rules)
    code, output = validate(config)
    assert code == 1
    assert output == [
        f"{config}/rules/r.yaml:6: rule \"prices\" → send_bulk → connection: expected, with crm:, the CRM the list "
        "is read from (amo), found 'bot' (a telegram connection)",
        f"{config}/rules/r.yaml:11: rule \"prices\" → send_bulk → channels[0] → connection: no connection "
        "'bott' in connections.yaml; did you mean \"bot\"?",
        f"{config}/rules/r.yaml:12: rule \"prices\" → send_bulk → channels[1] → connection: expected a "
        "connection that sends messages (bot), found 'amo' (a amocrm connection)",
        "3 errors in 1 file; crmbridge did not start."]


def test_the_shipped_examples_pass(tmp_path):
    """No false alarm on the rules the project ships."""
    root = Path(cli.__file__).parent / "config" / "examples"
    for example in ("quickstart", "marketing-agency", "smm-agency"):
        text = (root / example / "connections.yaml").read_text(encoding="utf-8")
        import re
        env = {name: ("https://x.example" if "URL" in name else "v") for name in re.findall(r"\$\{([A-Z_0-9]+)\}", text)}
        result = CliRunner().invoke(cli.cli, ["--config", str(root / example), "validate"], env={**env, "REDIS_URL": ""})
        assert result.exit_code == 0, (example, result.output)


def test_a_misspelled_connection_in_defaults_is_said_once_where_it_is_written(tmp_path):
    rules = "defaults:\n  connection: amoo\nrules:\n" + "\n".join(f"""  - name: r{i}
    on: stage.changed
    do: [{{add_note: x}}]""" for i in range(5)) + "\n"
    config = configure(tmp_path, rules)
    code, output = validate(config)
    assert code == 1
    assert output == [f"{config}/rules/r.yaml:2: defaults → connection: no connection 'amoo' in connections.yaml; "
                      "did you mean \"amo\"?", "1 error in 1 file; crmbridge did not start."]
