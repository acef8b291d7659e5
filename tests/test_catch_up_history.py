"""The catch-up reads the CRMs' change history: 300 stage moves made at the fakes with no webhook
(several intermediate stages per record, records never seen before), under amoCRM's enforced
limit of 7 requests a second and with 429s and 5xx on the history reads, are each acted on once,
in the order they were made, with the stage each one entered; moves that also came by webhook
(before the catch-up, or late after it) are acted on once in all.

Sources of the history the fakes keep and serve: amoCRM GET /api/v4/events (events-and-notes: the
event list, filter[type][]=lead_status_changed, filter[created_at][from], limit at most 100, `page`
while `_links.next`; value_before/value_after [{"lead_status": {"id", "pipeline_id"}}]) and
Bitrix24 crm.stagehistory.list (rest_help/crm/stagehistory.php: entityTypeId 2, filter, order,
start by 50; ID, TYPE_ID, OWNER_ID, CREATED_TIME, CATEGORY_ID, STAGE_SEMANTIC_ID, STAGE_ID).
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest

import worker
from config.settings import Settings
from connectors.base import RetryableApiError
from tests.conftest import TEST_REDIS_URL, run_worker
from tests.fakes import FakeAmo, FakeServer
from tests.fakes_bitrix24 import FakeBitrix24

pytestmark = pytest.mark.timeout(240)

CONNECTIONS = """
connections:
  shop-amo:
    type: amocrm
    base_url: ${AMO_URL}
    webhook_secret: ${AMO_SECRET}
    credentials:
      token: ${AMO_TOKEN}
    options:
      catch_up: {every: 5 minutes}
  shop-b24:
    type: bitrix24
    base_url: ${B24_URL}
    webhook_secret: ${B24_APP_TOKEN}
    credentials:
      webhook: ${B24_CODE}
    options:
      catch_up: {every: 5 minutes}
      rate_limit: {per_second: 2, burst: 50}   # the portal's leaky bucket: 50 at once, drained at 2/s (limits.md)
  sink:
    type: webhook
    base_url: ${SINK_URL}
    options:
      rate_limit: {per_second: 200}    # our own loopback sink, not a vendor
"""
RULES = """
rules:
  - name: Every stage a record enters is told to the sink
    on: {event: stage.changed}
    do:
      - post_webhook:
          connection: sink
          path: /moves
          body:
            connection: "{{ event.connection }}"
            record: "{{ entity.id }}"
            stage: "{{ entity.stage.id }}"
            left: "{{ entity.previous_stage.id if entity.previous_stage is defined else '' }}"
            at: "{{ event.occurred_at }}"
"""
AMO_STAGES = [10216994, 10216996, 142, 10216995, 10216994]   # a return to the first stage included
B24_STAGES = ["PREPARATION", "EXECUTING", "NEW", "PREPARATION", "WON"]
AMO_LEADS = range(7001, 7053)     # 52 leads x 5 moves = 260
B24_DEALS = range(801, 809)       # 8 deals x 5 moves = 40


class Clock:
    """The vendors' own time for the moves: half a second apart, all within the last look's window."""

    def __init__(self, start: float):
        self.at = start

    def tick(self) -> float:
        self.at += 0.5
        return self.at


@pytest.fixture
def world(tmp_path, redis_db):
    amo, b24, sink = FakeAmo().start(), FakeBitrix24().start(), FakeServer().start()
    amo.enforce_limits()
    b24.zone = timezone(timedelta(hours=3))   # the portal writes and reads its times at +03:00
    sink.route("POST", r"/moves", lambda call, m: (200, {"ok": True}, {}))
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (tmp_path / "rules" / "moves.yaml").write_text(RULES, encoding="utf-8")
    env = {"AMO_URL": amo.url, "AMO_SECRET": "amo-secret", "AMO_TOKEN": "amo-token", "B24_APP_TOKEN": "app-token", "B24_URL": b24.base_url, "B24_CODE": b24.code, "SINK_URL": sink.url}
    from webhooks import create_app
    app = create_app(settings=Settings(config_dir=tmp_path, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                       queue_name="crmbridge-test", environ=env, testing=True, action_attempts=3))
    yield app, amo, b24, sink
    app.extensions["crmbridge"].backend.close()
    for server in (amo, b24, sink):
        server.stop()


def status_webhook(lead: dict, old: int) -> bytes:
    """amoCRM's status webhook for the lead's last move (webhooks-format: leads[status][n][…])."""
    item = {"id": lead["id"], "status_id": lead["status_id"], "pipeline_id": lead["pipeline_id"], "old_status_id": old,
            "last_modified": lead["updated_at"], "name": lead["name"]}
    return urlencode({f"leads[status][0][{k}]": v for k, v in item.items()} | {"account[subdomain]": "shop"}).encode()


def posted(sink: FakeServer) -> list[dict]:
    return [call.body for call in sink.received("POST", "/moves")]


def test_every_stage_move_in_the_history_is_acted_on_once_in_order(world):
    app, amo, b24, sink = world
    rt, web = app.extensions["crmbridge"], app.test_client()
    clock = Clock(time.time() - 240)
    amo.clock = lambda: clock.at
    for lead in AMO_LEADS:
        amo.add_lead({"id": lead, "name": f"Заявка {lead}", "status_id": 10216995, "pipeline_id": 2116,
                      "responsible_user_id": 938348, "created_at": int(clock.at), "updated_at": int(clock.at)})
    for deal in B24_DEALS:
        b24.add("deal", {"ID": str(deal), "TITLE": f"Угода {deal}", "STAGE_ID": "NEW", "CATEGORY_ID": "0",
                         "ASSIGNED_BY_ID": "1", "DATE_MODIFY": b24.now(clock.at)})

    # the first move of ten leads comes by webhook, in time, and is handled then
    for lead in AMO_LEADS[:10]:
        clock.tick()
        amo.move_lead(lead, AMO_STAGES[0])
        answer = web.post("/hooks/shop-amo?token=amo-secret", data=status_webhook(amo.leads[lead], 10216995),
                          content_type="application/x-www-form-urlencoded")
        assert answer.status_code == 200, answer.json
    run_worker(rt)
    assert len(posted(sink)) == 10
    # every other move is made with no webhook: leads and deals in turn, several stages each
    for step in range(5):
        for lead in AMO_LEADS:
            if step or lead not in AMO_LEADS[:10]:
                clock.tick()
                amo.move_lead(lead, AMO_STAGES[step])
        for deal in B24_DEALS:
            b24.move_deal(deal, B24_STAGES[step], at=clock.tick())
    assert len(amo.events) + len(b24.history[2]) == 300

    # the history reads are refused and fail now and then; each look is retried in its job
    amo.fail(r"/api/v4/events", 429, {"title": "Too Many Requests", "status": 429}, headers={"Retry-After": "1"})
    amo.fail(r"/api/v4/events", 502, {"title": "Bad Gateway", "status": 502})
    b24.fail(r"crm\.stagehistory\.list", 503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many"},
             times=3)   # more than one job's tries: that look fails, and the next misses nothing
    amo.fail(r"/api/v4/leads/\d+", 503, {"title": "Service Unavailable", "status": 503}, times=2)
    started = time.monotonic()
    assert worker.catch_up("shop-amo")["accepted"] == 260 + 52    # every history move (10 came by webhook too) + updates
    with pytest.raises(RetryableApiError):
        worker.catch_up("shop-b24")
    assert worker.catch_up("shop-b24")["accepted"] == 40 + 8
    run_worker(rt)
    settled = time.monotonic() - started

    # a late webhook for a move the catch-up handled, and a second look over the same window
    late = AMO_LEADS[20]
    third = next(e for e in amo.events if e["entity_id"] == late and e["value_after"][0]["lead_status"]["id"] == 142)
    amo.leads[late].update(status_id=142, updated_at=third["created_at"])
    assert web.post("/hooks/shop-amo?token=amo-secret", data=status_webhook(amo.leads[late], 10216996),
                    content_type="application/x-www-form-urlencoded").status_code == 200
    amo.leads[late].update(status_id=AMO_STAGES[-1])
    again = worker.catch_up("shop-amo")
    run_worker(rt)
    assert again["accepted"] <= 52     # only updates (a new modification mark) can be new: no move again

    moves = posted(sink)
    expected = ([("shop-amo", str(e["entity_id"]), str(e["value_after"][0]["lead_status"]["id"]),
                  datetime.fromtimestamp(e["created_at"], timezone.utc).isoformat()) for e in amo.events]
                + [("shop-b24", row["OWNER_ID"], row["STAGE_ID"],
                    datetime.fromisoformat(row["CREATED_TIME"]).astimezone(timezone.utc).isoformat())
                   for row in b24.history[2]])
    seen = [(m["connection"], m["record"], m["stage"], m["at"]) for m in moves]
    assert len(seen) == 300 and sorted(seen) == sorted(expected)          # every move, each once
    for record in {(c, r) for c, r, _, _ in expected}:                    # in the order it was made
        assert [s for s in seen if s[:2] == record] == [e for e in expected if e[:2] == record], record
    # the stage a record left is the one before, as the history says (the first of a deal: unknown)
    assert all(m["left"] for m in moves if m["connection"] == "shop-amo")
    assert amo.violations == []
    pages = amo.received("GET", "/api/v4/events")                         # 100 a page, the documented most
    assert {c.query["limit"][0] for c in pages} == {"100"} and {c.query["page"][0] for c in pages} >= {"1", "2", "3"}
    history_reads = b24.received(None, r".*/crm\.stagehistory\.list\.json", failed=True)
    assert [c.status for c in history_reads] == [503, 503, 503, 200]   # a look that failed its 3 tries, then one page
    audit = [json.loads(e[b"entry"]) for _, e in rt.store.xrange(rt.keys("audit"))]
    skipped = [a for a in audit if a["what"] == "event.skipped"]
    own = [a for a in skipped if "|stage.changed|" not in a["event"]]
    assert len(own) == 11          # the ten webhook moves read again from the history, and the late webhook
    # a record first seen by the catch-up's update enters its stage (docs/rules.md, First-seen records):
    # that stage move is the history's last one, already acted on, so it is skipped, once per record at most
    first_seen = [a["entity"] for a in skipped if "|stage.changed|" in a["event"]]
    assert len(first_seen) == len(set(first_seen))
    print(f"\n300 moves caught up in {settled:.1f} s; amoCRM calls {len(amo.calls)}, peak "
          f"{amo.keeper.peak('account')} in any second; Bitrix24 calls {len(b24.calls)}")
