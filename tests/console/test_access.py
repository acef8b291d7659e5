"""Who may see and do what in the console (Flask's test client): off without a token, a login
with the token, CSRF on every action, read-only bearer access, no secret in any page."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from tests.conftest import TG_TOKEN
from tests.console.conftest import RECORD, TOKEN, audit_lines

PAGES = ["/console/", "/console/events", "/console/dead-letters", "/console/timers", "/console/connections",
         "/console/campaigns",
         "/console/rules", f"/console/records/{RECORD}", "/console/search?q=31926520"]


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page)[1]


def log_in(client, token: str = TOKEN):
    page = client.get("/console/login").get_data(as_text=True)
    return client.post("/console/login", data={"token": token, "csrf_token": csrf_of(page)})


def test_without_a_token_the_console_does_not_exist(settings, fake_amo, fake_tg):
    from webhooks import create_app
    environ = {k: v for k, v in settings.environ.items() if k != "CRMBRIDGE_CONSOLE_TOKEN"}
    app = create_app(settings=replace(settings, environ=environ))
    try:
        client = app.test_client()
        for path in ("/console/", "/console/login", f"/console/records/{RECORD}", "/console/static/console.css"):
            assert client.get(path).status_code == 404, path
        assert client.get("/console/", headers=bearer()).status_code == 404
        assert client.post("/console/login", data={"token": TOKEN}).status_code == 404
        assert "Set-Cookie" not in client.get("/console/").headers
    finally:
        app.extensions["crmbridge"].backend.close()


def test_a_page_without_login_sends_the_browser_to_the_login_page(client):
    resp = client.get(f"/console/records/{RECORD}?since=2d")
    assert resp.status_code == 302
    assert resp.headers["Location"] == f"/console/login?next=/console/records/{RECORD}?since%3D2d"
    for path in PAGES:
        assert client.get(path).status_code == 302, path


def test_an_action_without_login_is_refused(client, seeded):
    page = client.get("/console/login").get_data(as_text=True)   # a CSRF token, but no login
    resp = client.post(f"/console/timers/{seeded['timer']}/cancel", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 401
    assert client.application.extensions["crmbridge"].backend.timers.get(seeded["timer"]) is not None


def test_login_with_the_token_opens_a_browser_session_cookie(client):
    resp = log_in(client)
    assert resp.status_code == 302 and resp.headers["Location"] == "/console/"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("crmbridge_console=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert "Expires" not in cookie and "Max-Age" not in cookie   # a browser session's cookie
    assert TOKEN not in cookie
    assert client.get("/console/").status_code == 200


def test_login_goes_back_to_the_page_asked_for_and_only_inside_the_console(client):
    page = client.get("/console/login").get_data(as_text=True)
    resp = client.post(f"/console/login?next=/console/records/{RECORD}", data={"token": TOKEN, "csrf_token": csrf_of(page)})
    assert resp.headers["Location"] == f"/console/records/{RECORD}"
    for elsewhere in ("https://evil.example/console", "//evil.example/console", "/hooks/x", "/console\\@evil.example"):
        page = client.get("/console/login").get_data(as_text=True)
        resp = client.post(f"/console/login?next={elsewhere}", data={"token": TOKEN, "csrf_token": csrf_of(page)})
        assert resp.headers["Location"] == "/console/", elsewhere


@pytest.mark.parametrize("token", ["wrong", TOKEN[:-1], TOKEN + "x", "", "ключ-консолі"])
def test_a_wrong_token_is_refused(client, token):
    resp = log_in(client, token)
    assert resp.status_code == 401
    assert "That token is not the console&#39;s token." in resp.get_data(as_text=True)
    assert client.get("/console/").status_code == 302
    assert client.get("/console/", headers=bearer(token)).status_code == 401


def test_login_needs_the_forms_csrf_token(client):
    client.get("/console/login")
    assert client.post("/console/login", data={"token": TOKEN}).status_code == 403
    assert client.post("/console/login", data={"token": TOKEN, "csrf_token": "forged"}).status_code == 403
    assert client.get("/console/").status_code == 302


def test_actions_without_the_csrf_token_are_refused(client, seeded, runtime):
    log_in(client)
    timer, dead = seeded["timer"], seeded["dead"]
    for path in (f"/console/timers/{timer}/cancel", f"/console/timers/{timer}/fire",
                 f"/console/dead-letters/{dead}/replay", f"/console/dead-letters/{dead}/discard", "/console/logout"):
        for form in ({}, {"csrf_token": "forged"}):
            resp = client.post(path, data=form)
            assert resp.status_code == 403, path
            assert "CSRF token is missing or out of date" in resp.get_data(as_text=True)
    assert runtime.backend.timers.get(timer)["fire_at"].startswith("2026-11-29T17:00:00")
    assert runtime.store.hexists(runtime.keys("dead"), dead)


def test_with_the_csrf_token_a_timer_is_cancelled_and_the_audit_says_by_whom(client, seeded, runtime):
    log_in(client)
    page = client.get("/console/timers").get_data(as_text=True)
    resp = client.post(f"/console/timers/{seeded['timer']}/cancel", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/console/timers"
    assert runtime.backend.timers.get(seeded["timer"]) is None
    [cancelled] = [e for e in audit_lines(runtime) if e["what"] == "timer.cancelled"]
    assert cancelled["timer"] == seeded["timer"] and cancelled["reason"].startswith("cancelled by an operator (console")
    again = client.post(f"/console/timers/{seeded['timer']}/cancel", data={"csrf_token": csrf_of(page)})
    assert again.status_code == 404


def test_fire_now_makes_the_timer_due_and_is_audited(client, seeded, runtime):
    log_in(client)
    page = client.get("/console/timers").get_data(as_text=True)
    client.post(f"/console/timers/{seeded['timer']}/fire", data={"csrf_token": csrf_of(page)})
    assert runtime.backend.timers.get(seeded["timer"])["fire_at"] == "2026-11-27T15:00:00+00:00"
    [moved] = [e for e in audit_lines(runtime) if e["what"] == "timer.moved"]
    assert moved["reason"].startswith("fired now by an operator (console")


def test_discard_drops_the_dead_letter(client, seeded, runtime):
    log_in(client)
    page = client.get(f"/console/dead-letters/{seeded['dead']}").get_data(as_text=True)
    resp = client.post(f"/console/dead-letters/{seeded['dead']}/discard", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 302
    assert not runtime.store.hexists(runtime.keys("dead"), seeded["dead"])
    assert f"Dead letter {seeded['dead']} discarded." in client.get("/console/dead-letters").get_data(as_text=True)


def test_a_bearer_token_reads_every_page_and_acts_on_nothing(client, seeded, runtime):
    for path in PAGES + [f"/console/dead-letters/{seeded['dead']}"]:
        resp = client.get(path, headers=bearer())
        assert resp.status_code in (200, 302), path
        assert "Set-Cookie" not in resp.headers or "auth" not in resp.headers["Set-Cookie"]
    page = client.get(f"/console/records/{RECORD}", headers=bearer())
    assert page.status_code == 200 and page.mimetype == "text/html"
    resp = client.post(f"/console/timers/{seeded['timer']}/cancel", headers=bearer(), data={})
    assert resp.status_code == 403
    assert runtime.backend.timers.get(seeded["timer"]) is not None


def test_no_secret_in_any_page(client, seeded, env):
    secrets = [TOKEN, TG_TOKEN, env["AMO_TOKEN"], env["AMO_WEBHOOK_SECRET"], env["TELEGRAM_WEBHOOK_SECRET"]]
    event_id = re.search(r'href="/console/events/([^"?]+)"', client.get(f"/console/records/{RECORD}", headers=bearer())
                         .get_data(as_text=True))[1]
    pages = PAGES + [f"/console/dead-letters/{seeded['dead']}", f"/console/events/{event_id}",
                     f"/console/events/{event_id}?replan=1", "/console/login"]
    for path in pages:
        text = client.get(path, headers=bearer()).get_data(as_text=True)
        for secret in secrets:
            assert secret not in text, (path, secret)
    connections = client.get("/console/connections", headers=bearer()).get_data(as_text=True)
    assert "record-only" not in connections and "7/s, burst" in connections   # credentials set: live, not shown


def test_pages_are_utf8_and_escaped(client, seeded, runtime):
    resp = client.get(f"/console/records/{RECORD}", headers=bearer())
    assert resp.content_type == "text/html; charset=utf-8"
    text = resp.get_data(as_text=True)
    assert "Бриф отримано → нотатка" in text and "Кондитерська «Ромашка»" in text and "Ошибка валидации" in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert resp.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    hostile = client.get("/console/records/lead:<script>alert(1)</script>", headers=bearer()).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in hostile and "lead:&lt;script&gt;alert(1)&lt;/script&gt;" in hostile


def test_the_record_page_says_why_a_rule_was_skipped(client, seeded):
    text = client.get(f"/console/records/{RECORD}", headers=bearer()).get_data(as_text=True)
    assert "field &#39;Бюджет&#39; is &#39;5000&#39;; expected gt 10000" in text
    assert "it acts on the record&#39;s next stage.changed event once `fields.Бюджет &gt; 10000` holds" in text


def test_search_by_bare_id_finds_the_record(client, seeded):
    resp = client.get("/console/search?q=31926520", headers=bearer())
    assert resp.status_code == 302 and resp.headers["Location"] == f"/console/records/{RECORD}"
    unknown = client.get("/console/search?q=777", headers=bearer()).get_data(as_text=True)
    assert "No kept event is about a record with id 777" in unknown


def test_events_filtered_by_outcome_and_rule(client, seeded):
    def rows(query: str) -> int:
        return client.get(f"/console/events?{query}", headers=bearer()).get_data(as_text=True).count('<tr class="outcome-')
    assert rows("") == 1
    assert rows("outcome=failed") == 1 and rows("outcome=acted") == 0 and rows("outcome=nothing+matched") == 0
    assert rows("kind=stage.changed&connection=quickstart-amo") == 1 and rows("kind=entity.created") == 0
    by_rule = client.get("/console/events?rule=Big+brief+→+note", headers=bearer()).get_data(as_text=True)
    assert "skipped: field &#39;Бюджет&#39; is &#39;5000&#39;; expected gt 10000" in by_rule
    assert client.get("/console/events?outcome=bogus", headers=bearer()).status_code == 400


def test_rules_page_shows_each_rule_with_file_and_line(client, config_dir):
    text = client.get("/console/rules", headers=bearer()).get_data(as_text=True)
    assert "<code>rules/console.yaml:6</code>" in text and "<code>rules/quickstart.yaml:8</code>" in text
    assert f"From {config_dir} (rule files named from there)" in text
    assert "fields.Бюджет &gt; 10000" in text


def test_replanning_a_kept_event_calls_nothing(client, seeded, fake_amo, fake_tg):
    page = client.get(f"/console/records/{RECORD}", headers=bearer()).get_data(as_text=True)
    event_id = re.search(r'href="/console/events/([^"?]+)"', page)[1]
    calls = len(fake_amo.received()) + len(fake_tg.received())
    text = client.get(f"/console/events/{event_id}?replan=1", headers=bearer()).get_data(as_text=True)
    assert "skipped  &#39;Big brief → note&#39;" in text and "would call quickstart-amo.add_note(" in text
    assert len(fake_amo.received()) + len(fake_tg.received()) == calls


def test_a_secret_inside_an_error_text_is_blanked(client, runtime, seeded):
    """A vendor library's error may quote a URL with the bot token in it (Telegram's /bot<token>/):
    the page shows the error without it."""
    from pipeline import dead_letters
    letter = dead_letters.get(runtime, seeded["dead"])
    dead_letters.dead_letter(runtime, "worker.handle_event", letter["payload"],
                             f"HTTPSConnectionPool: Max retries exceeded with url: /bot{TG_TOKEN}/sendMessage",
                             key="telegram-step")
    text = client.get("/console/dead-letters/telegram-step", headers=bearer()).get_data(as_text=True)
    assert TG_TOKEN not in text and "url: /bot(secret)/sendMessage" in text


def test_connections_count_a_dead_letter_for_the_connection_its_step_acts_on(client, runtime, seeded):
    from pipeline import dead_letters
    letter = dead_letters.get(runtime, seeded["dead"])   # quickstart-amo's add_note, on a quickstart-amo event
    dead_letters.dead_letter(runtime, "worker.handle_event", letter["payload"],
                             "quickstart-bot.send_message(chat='team', text='Бриф'): HTTP 403: bot was kicked",
                             key="bot-step")
    text = client.get("/console/connections", headers=bearer()).get_data(as_text=True)
    amo, bot = text.split('id="conn-quickstart-bot"')
    assert "<dt>Dead letters</dt><dd>1</dd>" in amo and "<dt>Dead letters</dt><dd>1</dd>" in bot


def test_connections_show_the_catch_up_and_a_record_only_connection(settings, fake_amo, fake_tg, config_dir):
    from webhooks import create_app
    path = config_dir / "connections.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "    calendar: office\n", "    calendar: office\n    options: {catch_up: {every: 10 minutes}}\n", 1), encoding="utf-8")
    environ = {k: v for k, v in settings.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    app = create_app(settings=replace(settings, environ=environ))
    rt = app.extensions["crmbridge"]
    try:
        client = app.test_client()
        before = client.get("/console/connections", headers=bearer()).get_data(as_text=True)
        assert "every 10 min; no look yet" in before
        rt.store.set(rt.keys("catch-up", "quickstart-amo"), "2026-11-27T14:59:00+00:00")
        amo, bot = client.get("/console/connections", headers=bearer()).get_data(as_text=True).split('id="conn-quickstart-bot"')
        assert "every 10 min; next look asks for changes since 2026-11-27T14:59:00+00:00" in amo
        assert "record-only" in bot and "record-only" not in amo and "<dt>Catch-up</dt><dd>off</dd>" in bot
    finally:
        rt.backend.close()


def test_an_address_that_keeps_guessing_waits(client, runtime):
    from console import LOGIN_PAUSE, LOGIN_TRIES
    for _ in range(LOGIN_TRIES):
        assert log_in(client, "guess").status_code == 401
    resp = log_in(client, TOKEN)   # even the right token, until the pause is over
    assert resp.status_code == 429 and "10 wrong tokens from this address" in resp.get_data(as_text=True)
    key = runtime.keys("console-login-failed", "127.0.0.1")
    assert 0 < runtime.store.ttl(key) <= LOGIN_PAUSE
    runtime.store.delete(key)      # the pause over
    assert log_in(client, TOKEN).status_code == 302


def test_with_the_history_off_the_pages_say_so(settings, fake_amo, fake_tg):
    from webhooks import create_app
    app = create_app(settings=replace(settings, history=False))
    try:
        client = app.test_client()
        assert "The decision history is off" in client.get("/console/", headers=bearer()).get_data(as_text=True)
        resp = client.get(f"/console/records/{RECORD}", headers=bearer())
        assert resp.status_code == 404 and "the decision history is off (CRMBRIDGE_HISTORY=off)" in resp.get_data(as_text=True)
        assert client.get("/console/connections", headers=bearer()).status_code == 200
        assert client.get("/console/timers", headers=bearer()).status_code == 200
    finally:
        app.extensions["crmbridge"].backend.close()


def test_a_wrong_since_is_a_400_that_says_what_is_expected(client):
    resp = client.get(f"/console/records/{RECORD}?since=yesterday", headers=bearer())
    assert resp.status_code == 400
    assert "expected 2d, 36h, 90m, 1w or an ISO date, found &#39;yesterday&#39;" in resp.get_data(as_text=True)
