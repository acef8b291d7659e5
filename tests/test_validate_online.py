"""`cli.py validate --online` (issue 17 item 1): the names rules use, checked against what each
connection really has, read from fakes of amoCRM, Bitrix24, Planfix and Telegram — and nothing written.

Each mistake below is one an integrator made; the test pins what validate now says about it."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.conftest import TEST_REDIS_URL, TG_TOKEN
from tests.fakes import FakeAmo, FakeTelegram
from tests.fakes_bitrix24 import FakeBitrix24, field, status
from tests.fakes_planfix import FakePlanfix

CONNECTIONS = """
connections:
  amo:
    type: amocrm
    base_url: ${AMO_URL}
    webhook_secret: ${SECRET}
    credentials:
      token: ${AMO_TOKEN}
  b24:
    type: bitrix24
    base_url: ${B24_URL}
    webhook_secret: ${SECRET}
    credentials:
      webhook: ${B24_CODE}
    options:
      rate_limit: {per_second: 50}      # the fake's, not a portal's: the test does not wait 2 s a call
  pf:
    type: planfix
    base_url: ${PF_URL}
    webhook_secret: ${SECRET}
    credentials:
      token: ${PF_TOKEN}
    options:
      rate_limit: {per_second: 50}      # the fake's: Planfix's own is 1 a second
  bot:
    type: telegram
    base_url: ${TG_URL}
    webhook_secret: ${SECRET}
    credentials:
      token: ${TG_TOKEN}
    options:
      chats: {team: "-100200", old: "-100999"}
"""

# (rule file text, the exact error line validate --online prints for it)
MISTAKES = {
    "stage typo (amoCRM trigger)": (
        """  - name: amo stage
    on: {event: stage.changed, connection: amo, stage: "Brief recieved"}
    do: [{add_note: x}]""",
        'rule "amo stage" → on → stage: expected a stage name that amoCRM \'amo\' has, found \'Brief recieved\'; '
        'did you mean "Brief received"?'),
    "stage in another case for an action (amoCRM compares exactly)": (
        """  - name: amo move
    on: {event: stage.changed, connection: amo}
    do: [{move_to_stage: "proposal approval"}]""",
        'rule "amo move" → move_to_stage → stage: expected a stage name that amoCRM \'amo\' has (the CRM compares '
        'names exactly), found \'proposal approval\'; did you mean "Proposal approval"?'),
    "unknown field in a condition (amoCRM)": (
        """  - name: amo field
    on: {event: stage.changed, connection: amo}
    if: [{field: "Поле 1", equals: "x"}]
    do: [{add_note: x}]""",
        'rule "amo field" → if[0] → field: expected a field that amoCRM \'amo\' (lead) has, found \'Поле 1\'; '
        'did you mean "Поле1"?'),
    "cycle field typo (amoCRM): the offer would wait its default": (
        """  - name: amo repeat sale
    on: {event: stage.changed, connection: amo, stage: Won}
    after: {cycle: "Поле 1", default: 30 days}
    do: [{add_note: x}]""",
        'rule "amo repeat sale" → after → cycle: expected a field that amoCRM \'amo\' (lead) has, found \'Поле 1\'; '
        'did you mean "Поле1"?'),
    "enum value typo (amoCRM)": (
        """  - name: amo enum
    on: {event: stage.changed, connection: amo}
    if: [{field: "Источник", equals: "instagram"}]
    do: [{add_note: x}]""",
        'rule "amo enum" → if[0] → equals: expected one of the values of field \'Источник\' (\'Instagram\', '
        '\'Сайт\', \'Рекомендация\'), found \'instagram\'; did you mean "Instagram"?'),
    "misspelled user (amoCRM)": (
        """  - name: amo user
    on: {event: stage.changed, connection: amo}
    do: [{create_task: {text: x, responsible: "Olena Kovalenco"}}]""",
        'rule "amo user" → create_task → responsible: expected a user name that amoCRM \'amo\' has, found '
        '\'Olena Kovalenco\'; did you mean "Olena Kovalenko"?'),
    "undefined template attribute (a field that does not exist)": (
        """  - name: amo template
    on: {event: stage.changed, connection: amo}
    do: [{add_note: "Бюджет: {{ entity.fields['Бюджетт'] }}"}]""",
        'rule "amo template" → add_note → text (template): expected a field that amoCRM \'amo\' (lead) has, found '
        '\'Бюджетт\'; did you mean "Бюджет"?'),
    "stage typo with ё (Bitrix24)": (
        """  - name: b24 stage
    on: {event: stage.changed, connection: b24, stage: "Подготовка документов"}
    if: [{stage: "Счет на предоплату"}]
    do: [{add_note: x}]""",
        'rule "b24 stage" → if[0] → stage: expected a stage name that Bitrix24 \'b24\' has, found \'Счет на предоплату\'; '
        'did you mean "Счёт на предоплату"?'),
    "field typo in a trigger (Bitrix24)": (
        """  - name: b24 trigger field
    on: {event: field.changed, connection: b24, field: "Дата оплати"}
    do: [{add_note: x}]""",
        'rule "b24 trigger field" → on → field: expected a field that Bitrix24 \'b24\' (deal) has, found '
        '\'Дата оплати\'; did you mean "Дата оплаты"?'),
    "pipeline typo (Bitrix24)": (
        """  - name: b24 pipeline
    on: {event: stage.changed, connection: b24, pipeline: "Реализацыя"}
    do: [{add_note: x}]""",
        'rule "b24 pipeline" → on → pipeline: expected a pipeline name that Bitrix24 \'b24\' has, found \'Реализацыя\'; '
        'did you mean "Реализация"?'),
    "unknown field in filled (Bitrix24)": (
        """  - name: b24 filled
    on: {event: stage.changed, connection: b24}
    if: [{filled: ["Дата встречи"]}]
    do: [{add_note: x}]""",
        'rule "b24 filled" → if[0] → filled: expected a field that Bitrix24 \'b24\' (deal) has, found \'Дата встречи\'; '
        'did you mean "Дата первой встречи"?'),
    "status typo (Planfix)": (
        """  - name: pf status
    on: {event: task.updated, connection: pf}
    do: [{move_to_stage: {stage: "В работі", pipeline: SMM}}]""",
        'rule "pf status" → move_to_stage → stage: expected a stage name of pipeline \'SMM\' that Planfix \'pf\' has, '
        'found \'В работі\'; did you mean "В роботі"?'),
    "misspelled user (Planfix)": (
        """  - name: pf user
    on: {event: task.updated, connection: pf}
    do: [{set_responsible: "Олена Коваленка"}]""",
        'rule "pf user" → set_responsible → user: expected a user name that Planfix \'pf\' has, found '
        '\'Олена Коваленка\'; did you mean "Олена Коваленко"?'),
    "new deal's field typo in attach_to_deal (Bitrix24 deal field)": (
        """  - name: b24 intake
    on: {event: message.received, connection: bot}
    do:
      - attach_to_deal:
          connection: b24
          by: phone
          value: "{{ data.text }}"
          text: "{{ data.text }}"
          none_open: new_deal
          deal_fields:
            UTM_SOURSE: "{{ data.utm_source }}"
            "Комментарий клиента": x""",
        'rule "b24 intake" → attach_to_deal → deal_fields: expected a field that Bitrix24 \'b24\' (deal) has, found '
        '\'UTM_SOURSE\'; did you mean "UTM_SOURCE"?'),
    "new lead's field typo in attach_to_deal (Planfix task field)": (
        """  - name: pf intake
    on: {event: message.received, connection: bot}
    do:
      - attach_to_deal: {connection: pf, by: phone, value: "{{ data.text }}", text: x, none_open: new_deal,
                         deal_fields: {"Бюджетт": "{{ data.text }}"}}""",
        'rule "pf intake" → attach_to_deal → deal_fields: expected a field that Planfix \'pf\' (task) has, found '
        '\'Бюджетт\'; did you mean "Бюджет"?'),
    "chat alias the bot is not in (Telegram getChat)": (
        """  - name: tg chat
    on: {event: stage.changed, connection: amo}
    do: [{send_message: {connection: bot, chat: old, text: x}}]""",
        'rule "tg chat" → send_message → chat: expected a chat the bot is in, found \'old\' = -100999 (connection '
        '\'bot\' → options → chats); Telegram getChat says: '),
}


@pytest.fixture
def fakes():
    amo, b24, pf, tg = FakeAmo().start(), FakeBitrix24().start(), FakePlanfix().start(), FakeTelegram(TG_TOKEN).start()
    amo.fields.append({"id": 752011, "name": "Источник", "type": "select", "enums": [
        {"id": 1, "value": "Instagram"}, {"id": 2, "value": "Сайт"}, {"id": 3, "value": "Рекомендация"}]})
    amo.fields.append({"id": 752013, "name": "Бюджет", "type": "numeric"})
    b24.statuses["DEAL_STAGE"].append(status("DEAL_STAGE", "PREPAYMENT_INVOICE", "Счёт на предоплату", 30))
    b24.fields["deal"]["UF_CRM_1726000000001"] = field("date", "UF_CRM_1726000000001", "Дата первой встречи")
    b24.fields["deal"]["UTM_SOURCE"] = field("string", "UTM_SOURCE")   # a standard deal field (crm-deal-fields.md)
    tg.add_chat(-100200, "Team")
    yield amo, b24, pf, tg
    for fake in (amo, b24, pf, tg):
        fake.stop()


def environment(fakes) -> dict[str, str]:
    amo, b24, pf, tg = fakes
    return {"AMO_URL": amo.url, "AMO_TOKEN": "amo-token", "B24_URL": f"{b24.url}/rest/{b24.user_id}",
            "B24_CODE": b24.code, "PF_URL": f"{pf.url}/rest", "PF_TOKEN": "pf-token", "TG_URL": tg.url,
            "TG_TOKEN": TG_TOKEN, "SECRET": "s3cret", "REDIS_URL": TEST_REDIS_URL}


def configure(tmp_path: Path, rules: list[str]) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text("rules:\n" + "\n".join(rules) + "\n", encoding="utf-8")
    return tmp_path


def validate(config: Path, fakes, *args: str):
    return CliRunner().invoke(cli.cli, ["--config", str(config), "validate", *args], env=environment(fakes))


def test_the_fakes_know_the_names_the_mistakes_miss(fakes):
    amo, b24, pf, tg = fakes
    assert any(s["name"] == "Brief received" for p in amo.pipelines for s in p["statuses"])
    assert any(row["NAME"] == "Счёт на предоплату" for rows in b24.statuses.values() for row in rows)


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_is_said_with_file_line_expected_found_and_did_you_mean(tmp_path, fakes, mistake):
    rule, said = MISTAKES[mistake]
    config = configure(tmp_path, [rule])
    offline = validate(config, fakes)
    assert offline.exit_code == 0, offline.output            # offline cannot know these
    result = validate(config, fakes, "--online")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith(str(config))]
    assert len(errors) == 1, result.output
    path, line, message = errors[0].split(":", 2)
    assert path == str(config / "rules" / "r.yaml")
    assert message.strip().startswith(said), message
    # the line is the one that says it: the value found stands there (a trigger's: the rule's line)
    found = said.split("found '", 1)[1].split("'", 1)[0]
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert int(line) == 2 if " → on → " in said else found in lines[int(line) - 1], (line, lines)


def test_a_correct_configuration_passes_and_says_what_it_read(tmp_path, fakes):
    config = configure(tmp_path, ["""  - name: all good
    on: {event: stage.changed, connection: amo, stage: ["brief received", "10216994"]}
    if: [{field: "Источник", in: [Instagram, Сайт]}, {responsible: olena kovalenko}]
    do:
      - move_to_stage: {stage: "Proposal approval", pipeline: Sales}
      - create_task: {text: "{{ entity.fields['Бюджет'] }}", responsible: "Ivan Petrenko"}
      - send_message: {connection: bot, chat: team, text: "{{ entity.name }}"}"""])
    result = validate(config, fakes, "--online")
    assert result.exit_code == 0, result.output
    assert "online: amo: 1 pipeline(s), 4 stage(s), 4 field(s), 2 user(s) read" in result.output
    assert "online: bot: 2 chat(s) read with getChat, 1 not reachable" in result.output
    assert "(checked online)" in result.output


def test_it_never_writes(tmp_path, fakes):
    config = configure(tmp_path, [MISTAKES[m][0] for m in sorted(MISTAKES)])
    result = validate(config, fakes, "--online")
    assert result.exit_code == 1 and len([l for l in result.output.splitlines() if l.startswith(str(config))]) == len(MISTAKES)
    assert f"{len(MISTAKES)} errors in 1 file; names the connections do not have (validate --online)." in result.output
    amo, b24, pf, tg = fakes
    assert amo.calls and all(c.method == "GET" for c in amo.calls)
    reads = {"crm.category.list", "crm.status.list", "batch", "user.get", "crm.deal.fields", "crm.lead.fields",
             "crm.contact.fields", "crm.company.fields"}
    methods = {c.path.rsplit("/", 1)[-1].removesuffix(".json") for c in b24.calls}
    assert methods and methods <= reads, methods
    assert all(c.method == "GET" or c.path.endswith("/list") for c in pf.calls), [(c.method, c.path) for c in pf.calls]
    assert {c.path.rsplit("/", 1)[-1] for c in tg.calls} == {"getChat"}


def test_a_connection_without_credentials_is_said_not_read(tmp_path, fakes):
    config = configure(tmp_path, [MISTAKES["stage typo (amoCRM trigger)"][0]])
    result = CliRunner().invoke(cli.cli, ["--config", str(config), "validate", "--online"],
                                env={**environment(fakes), "AMO_TOKEN": ""})
    assert "online: amo: not read (no credentials: record-only); its names are not checked" in result.output


def test_a_document_templates_fields_are_looked_up_at_its_paragraph(tmp_path, fakes):
    """make_document's DOCX template reads entity.fields['…']: a field the CRM lacks is said at the
    template's paragraph (file:line), with did-you-mean, like a rule's own text."""
    from docx import Document

    from documents.render import docx_text
    from tests.test_documents import TEMPLATES
    config = configure(tmp_path, ["""  - name: amo doc
    on: {event: stage.changed, connection: amo}
    do:
      - make_document: {template: invoice-uk, pdf: false}"""])
    folder = config / "templates" / "documents"
    folder.mkdir(parents=True)
    doc = Document(str(TEMPLATES / "invoice-uk.docx"))
    doc.add_paragraph("Бюджет проєкту: {{ entity.fields['Бюджетт'] }}{% if entity.fields.Бюджет %} (узгоджено){% endif %}")
    doc.save(str(folder / "invoice-uk.docx"))
    paragraph = docx_text((folder / "invoice-uk.docx").read_bytes()).splitlines().index(
        "Бюджет проєкту: {{ entity.fields['Бюджетт'] }}{% if entity.fields.Бюджет %} (узгоджено){% endif %}") + 1
    offline = validate(config, fakes)
    assert offline.exit_code == 0, offline.output
    result = validate(config, fakes, "--online")
    assert result.exit_code == 1
    [error] = [line for line in result.output.splitlines() if line.startswith(str(config))]
    assert error == (f"{folder / 'invoice-uk.docx'}:{paragraph}: rule \"amo doc\" → make_document → template "
                     f"invoice-uk.docx, paragraph {paragraph}: expected a field that amoCRM 'amo' (lead) has, found "
                     f"'Бюджетт'; did you mean \"Бюджет\"?")
    doc.paragraphs[-1].text = "Бюджет проєкту: {{ entity.fields['Бюджет'] }}"
    doc.save(str(folder / "invoice-uk.docx"))
    assert validate(config, fakes, "--online").exit_code == 0
