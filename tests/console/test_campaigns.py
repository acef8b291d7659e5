"""The console's bulk-send page (Flask's test client): behind the token, each campaign with its
progress bar and counts (sent, failed and why, opted out, deferred for quiet hours), one campaign's
page with its text and the rows left out; an unknown one is a 404."""
from __future__ import annotations

import re

from pipeline.steps import send_bulk
from tests.conftest import run_worker
from tests.console.test_access import bearer, log_in


def test_the_campaigns_page_shows_progress_and_why(client, runtime, fake_tg):
    assert client.get("/console/campaigns").status_code == 302            # to the login page
    send_bulk.opt_out(runtime, "quickstart-bot", "100003")
    fake_tg.fail(r"/bot[^/]+/sendMessage", 400, {"ok": False, "error_code": 400,
                                                 "description": "Bad Request: chat not found"})
    send_bulk.start(runtime, "quickstart-bot", "prices-2027", "Новий прайс з 1 січня <3",
                    rows=[{"chat": c} for c in ("100001", "100002", "100003")] + [{"chat": "two words"}])
    run_worker(runtime)
    status = send_bulk.status(runtime, "prices-2027")
    assert (status["sent"], status["failed"], status["opted_out"]) == (1, 1, 1)

    log_in(client)
    page = client.get("/console/campaigns").get_data(as_text=True)
    assert 'id="campaign-prices-2027"' in page and '<progress max="3" value="3">' in page
    assert re.search(r"<dt>Sent</dt><dd>1</dd>.*<dt>Failed</dt><dd>1</dd>", page, re.S)
    assert "<dt>Opted out</dt><dd>1</dd>" in page and "<dt>Deferred for quiet hours</dt><dd>0</dd>" in page
    assert "send_message: Chat not found" in page
    one = client.get("/console/campaigns/prices-2027").get_data(as_text=True)
    assert "Новий прайс з 1 січня &lt;3" in one and "is not a chat or user id" in one
    assert client.get("/console/campaigns/no-such").status_code == 404
    assert client.get("/console/campaigns", headers=bearer()).status_code == 200


def test_no_campaign_yet(client):
    log_in(client)
    assert "No bulk send started yet" in client.get("/console/campaigns").get_data(as_text=True)
