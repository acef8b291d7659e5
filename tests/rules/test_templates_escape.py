"""Templates escape what they insert for the message's parse mode: hostile field values arrive as
text, the template's own markup stays, and a missing value renders as nothing (rules/templates.py)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from pipeline import clock
from rules.templates import TemplateProblem, escape_markdown_v2, render, render_value
from tests.conftest import run_worker

HOSTILE = '<a href="https://evil.example/pay">Pay here</a> <script>alert(1)</script> *_[]()~>#+-=|{}.! & \\'
FRIDAY_5PM_KYIV = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)
CTX = {"entity": {"name": HOSTILE, "price": None, "fields": {"Budget": None}}}


def test_html_escapes_every_inserted_value_and_keeps_the_template_markup():
    options = {"connection": "bot", "chat": "1", "parse_mode": "HTML",
               "text": '<b>New lead:</b> {{ entity.name }}\n<i>Budget:</i> {{ entity.price }}|{{ entity.fields["Budget"] }}|'}
    rendered = render_value(options, CTX)
    assert rendered["text"] == (
        "<b>New lead:</b> &lt;a href=&#34;https://evil.example/pay&#34;&gt;Pay here&lt;/a&gt; "
        "&lt;script&gt;alert(1)&lt;/script&gt; *_[]()~&gt;#+-=|{}.! &amp; \\\n<i>Budget:</i> ||")
    assert "<a " not in rendered["text"] and "<script>" not in rendered["text"]
    assert rendered["chat"] == "1" and rendered["parse_mode"] == "HTML"


def test_markdown_v2_escapes_every_reserved_character_of_inserted_values_only():
    options = {"parse_mode": "markdownv2", "text": "*New lead:* {{ entity.name }} _{{ entity.price }}_"}
    rendered = render_value(options, CTX)
    assert rendered["parse_mode"] == "MarkdownV2"   # Telegram's spelling, whatever the rule wrote
    assert rendered["text"] == (
        "*New lead:* <a href\\=\"https://evil\\.example/pay\"\\>Pay here</a\\> <script\\>alert\\(1\\)</script\\> "
        "\\*\\_\\[\\]\\(\\)\\~\\>\\#\\+\\-\\=\\|\\{\\}\\.\\! & \\\\ __")
    assert escape_markdown_v2("_*[]()~`>#+-=|{}.!\\") == "\\_\\*\\[\\]\\(\\)\\~\\`\\>\\#\\+\\-\\=\\|\\{\\}\\.\\!\\\\"


def test_without_a_parse_mode_values_are_inserted_as_they_are_and_none_is_empty():
    rendered = render_value({"text": "{{ entity.name }}|{{ entity.price }}|"}, CTX)
    assert rendered["text"] == HOSTILE + "||"
    assert render("{{ entity.price }}", CTX) == ""


def test_only_the_message_text_is_escaped_and_safe_opts_out():
    options = {"parse_mode": "HTML", "chat": "{{ entity.name }}",
               "text": "{{ '<b>' | safe }}{{ entity.name | truncate(9, True, '') }}{{ '</b>' | safe }}"}
    rendered = render_value(options, CTX)
    assert rendered["chat"] == HOSTILE                 # not Telegram-parsed: left as it is
    assert rendered["text"] == "<b>&lt;a href=&#34;</b>"


def test_an_unknown_parse_mode_is_refused_by_the_action():
    from rules import send_message
    from marshmallow import ValidationError
    with pytest.raises(ValidationError, match="HTML, MarkdownV2"):
        send_message.Options().load({"connection": "bot", "chat": "1", "text": "x", "parse_mode": "Markdown"})
    assert send_message.Options().load({"connection": "bot", "chat": "1", "text": "x",
                                        "parse_mode": "html"})["parse_mode"] == "html"


def test_a_strict_undefined_name_is_still_an_error():
    with pytest.raises(TemplateProblem):
        render_value({"parse_mode": "HTML", "text": "{{ nobody.name }}"}, CTX)


# --- end to end: webhook → worker → the message Telegram receives ------------------------------------

RULE = """
defaults:
  connection: quickstart-amo
rules:
  - name: Escaped notice
    on: {{event: stage.changed}}
    do:
      - send_message:
          connection: quickstart-bot
          chat: team
          parse_mode: {mode}
          text: "{text}"
"""


@pytest.fixture
def mode_rule(request, config_dir):
    mode, text = request.param
    (config_dir / "rules" / "quickstart.yaml").write_text(RULE.format(mode=mode, text=text), encoding="utf-8")
    return mode


@pytest.mark.parametrize("mode_rule, expected", [
    (("HTML", "<b>Lead</b> {{ entity.name }}: <i>{{ entity.price }}</i>"),
     "<b>Lead</b> &lt;a href=&#34;https://evil.example/pay&#34;&gt;Pay here&lt;/a&gt; &lt;script&gt;alert(1)"
     "&lt;/script&gt; *_[]()~&gt;#+-=|{}.! &amp; \\: <i></i>"),
    (("MarkdownV2", "*Lead* {{ entity.name }}: _{{ entity.price }}_"),
     "*Lead* <a href\\=\"https://evil\\.example/pay\"\\>Pay here</a\\> <script\\>alert\\(1\\)</script\\> "
     "\\*\\_\\[\\]\\(\\)\\~\\>\\#\\+\\-\\=\\|\\{\\}\\.\\! & \\\\: __"),
], indirect=["mode_rule"], ids=["HTML", "MarkdownV2"])
def test_a_crm_record_with_hostile_fields_reaches_telegram_escaped(mode_rule, expected, monkeypatch, live_server,
                                                                   runtime, fake_amo, fake_tg):
    monkeypatch.setattr(clock, "now", lambda: FRIDAY_5PM_KYIV)
    fake_amo.add_lead({"id": 31926520, "name": HOSTILE, "price": None, "status_id": 10216994, "pipeline_id": 2116,
                       "responsible_user_id": 938348})
    body = (f"leads[status][0][id]=31926520&leads[status][0][status_id]=10216994&leads[status][0][pipeline_id]=2116"
            f"&leads[status][0][old_status_id]=10216993").encode()
    resp = requests.post(f"{live_server}/hooks/quickstart-amo?token=amo-secret", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    assert resp.json() == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    [message] = fake_tg.method_calls("sendMessage")
    assert message.body["parse_mode"] == mode_rule
    assert message.body["text"] == expected
