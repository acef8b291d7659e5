"""/metrics (metrics.py): counters that move where things happen, every process added up in
multiprocess mode (gunicorn's workers and worker.py), the queue read at scrape time at a bounded
cost; and each vendor call kept with the action that made it in the decision history."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import metrics
from pipeline import clock
from tests.conftest import ROOT, TEST_REDIS_URL, TG_TOKEN, payload, run_worker

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
AMO_HOOK = "/hooks/quickstart-amo?token=amo-secret"
FRIDAY_5PM_KYIV = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)
LEAD = {"id": 31926520, "name": "Кондитерська «Ромашка»", "price": 1000, "status_id": 10216994,
        "pipeline_id": 2116, "responsible_user_id": 938348,
        "custom_fields_values": [{"field_id": 1, "field_name": "Бюджет", "values": [{"value": "5000"}]}]}


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: FRIDAY_5PM_KYIV)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_webhook_an_action_and_a_vendor_call_move_their_counters(live_server, runtime, fake_amo, fake_tg):
    fake_amo.add_lead(LEAD)
    before = {
        "hook": value("crmbridge_webhooks_total", connection="quickstart-amo", status="200"),
        "refused": value("crmbridge_webhooks_total", connection="quickstart-amo", status="401"),
        "unknown": value("crmbridge_webhooks_total", connection="(unknown)", status="404"),
        "event": value("crmbridge_events_total", kind="stage.changed"),
        "matched": value("crmbridge_rule_outcomes_total", rule="Brief received → task and team notice",
                         outcome="matched"),
        "task": value("crmbridge_actions_total", verb="create_task", outcome="done"),
        "message": value("crmbridge_actions_total", verb="send_message", outcome="done"),
        "amo": value("crmbridge_vendor_calls_total", connection="quickstart-amo", status="200"),
        "tg": value("crmbridge_vendor_calls_total", connection="quickstart-bot", status="200"),
        "amo_timed": value("crmbridge_vendor_call_seconds_count", connection="quickstart-amo"),
    }
    assert requests.post(live_server + AMO_HOOK, data=payload("amocrm/lead_status_changed_full.form"),
                         headers=FORM, timeout=5).status_code == 200
    assert requests.post(live_server + "/hooks/quickstart-amo?token=wrong", data=b"x=1",
                         headers=FORM, timeout=5).status_code == 401
    assert requests.post(live_server + "/hooks/nobody", data=b"x=1", headers=FORM, timeout=5).status_code == 404
    assert value("crmbridge_webhooks_total", connection="quickstart-amo", status="200") == before["hook"] + 1
    assert value("crmbridge_webhooks_total", connection="quickstart-amo", status="401") == before["refused"] + 1
    assert value("crmbridge_webhooks_total", connection="(unknown)", status="404") == before["unknown"] + 1

    run_worker(runtime)

    assert value("crmbridge_events_total", kind="stage.changed") == before["event"] + 1
    assert [r.name for r in runtime.ruleset.rules if r.name == "Brief received → task and team notice"]
    assert value("crmbridge_rule_outcomes_total", rule="Brief received → task and team notice",
                 outcome="matched") == before["matched"] + 1
    assert value("crmbridge_actions_total", verb="create_task", outcome="done") == before["task"] + 1
    assert value("crmbridge_actions_total", verb="send_message", outcome="done") == before["message"] + 1
    # the lead read, its metadata, the task: every answer of amoCRM counted and timed; one message
    amo_calls = len(fake_amo.received())
    assert value("crmbridge_vendor_calls_total", connection="quickstart-amo", status="200") == before["amo"] + amo_calls
    assert value("crmbridge_vendor_call_seconds_count", connection="quickstart-amo") == before["amo_timed"] + amo_calls
    assert value("crmbridge_vendor_calls_total", connection="quickstart-bot", status="200") == before["tg"] + 1

    page = requests.get(live_server + "/metrics", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    seen = scraped(page.text)
    assert seen[("crmbridge_webhooks_total", (("connection", "quickstart-amo"), ("status", "200")))] >= 1
    assert seen[("crmbridge_queue_depth", ())] == 0          # the worker drained it
    assert seen[("crmbridge_redis_up", ())] == 1


def test_each_vendor_call_is_kept_with_its_action_in_the_decision_history(live_server, runtime, fake_amo, fake_tg):
    """An action's row carries its calls: method, path without secrets, status, latency, retries and
    the answer's first characters (a 429 retried, then 200)."""
    fake_amo.add_lead(LEAD)
    fake_tg.fail("sendMessage", 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                                      "parameters": {"retry_after": 1}})
    retried = value("crmbridge_retries_total", reason="429")
    requests.post(live_server + AMO_HOOK, data=payload("amocrm/lead_status_changed_full.form"), headers=FORM, timeout=5)
    run_worker(runtime)
    assert runtime.history.flush()
    rows = [e for e in runtime.history.timeline("lead:31926520") if e.what == "action.done"]
    by_verb = {metrics.verb_of(e.detail["action"]): e.detail for e in rows}

    [task_call] = by_verb["create_task"]["calls"]     # the record's reads are not the action's
    assert task_call["method"] == "POST" and task_call["path"] == "/api/v4/tasks"
    assert task_call["status"] == 200 and task_call["retry"] == 0 and task_call["ms"] >= 0

    first, second = by_verb["send_message"]["calls"]
    assert (first["status"], first["retry"], second["status"], second["retry"]) == (429, 0, 200, 1)
    assert first["path"] == second["path"] and first["path"].endswith("/sendMessage")
    assert "Too Many Requests" in first["answer"] and len(first["answer"]) <= metrics.ANSWER_CHARS
    assert value("crmbridge_retries_total", reason="429") == retried + 1
    text = json.dumps([e.detail for e in rows], ensure_ascii=False)
    assert TG_TOKEN not in text and TG_TOKEN.split(":")[1] not in text     # the bot token is in Telegram's URL


def test_paths_and_answers_lose_their_secrets():
    from connectors.base import Connection
    b24 = Connection("b24", "bitrix24", base_url="https://example.bitrix24.ua/rest/1/s3cr3tc0de",
                     credentials={"webhook": "1/an0therc0de"}, webhook_secret="app-token-123")
    assert metrics.safe_path(b24, "https://example.bitrix24.ua/rest/1/s3cr3tc0de/crm.deal.get.json?id=5") \
        == "/crm.deal.get.json"
    assert metrics.safe_path(b24, "https://example.bitrix24.ua/rest/1/an0therc0de/crm.deal.add.json") \
        == "/rest/<secret>/crm.deal.add.json"
    tg = Connection("tg", "telegram", credentials={"bot_token": TG_TOKEN})
    assert metrics.safe_path(tg, f"https://api.telegram.org/bot{TG_TOKEN}/sendMessage") == "/bot<secret>/sendMessage"
    assert metrics.scrub(tg, 'POST /bot987:AAAbbbCCC/x {"access_token": "abc.def"} app-token-123') \
        == 'POST /bot<token>/x {"access_token": "<secret>"} app-token-123'
    assert "app-token-123" not in metrics.scrub(b24, "the app token app-token-123")


def test_metrics_ask_for_the_token_when_one_is_set(settings, monkeypatch):
    monkeypatch.setenv("CRMBRIDGE_METRICS_TOKEN", "s3cret-scrape")
    from webhooks import create_app
    app = create_app(settings=settings)
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        page = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"})
        assert page.status_code == 200 and b"crmbridge_queue_depth" in page.data
    finally:
        app.extensions["crmbridge"].backend.close()


class Counting:
    """Counts the Redis commands a scrape sends (single commands and those of pipelines)."""

    def __init__(self, monkeypatch):
        from redis import Redis
        from redis.client import Pipeline
        self.commands = 0
        single, batch = Redis.execute_command, Pipeline.execute

        def execute_command(client, *args, **kwargs):
            self.commands += 1
            return single(client, *args, **kwargs)

        def execute(pipe, *args, **kwargs):
            self.commands += len(pipe.command_stack)
            return batch(pipe, *args, **kwargs)
        monkeypatch.setattr(Redis, "execute_command", execute_command)
        monkeypatch.setattr(Pipeline, "execute", execute)


def test_a_scrape_costs_the_same_few_commands_however_long_the_queue(runtime, monkeypatch):
    registry = metrics.registry_for(runtime)
    counting = Counting(monkeypatch)

    def scrape() -> tuple[int, float, dict]:
        counting.commands = 0
        start = time.perf_counter()
        from prometheus_client import generate_latest
        text = generate_latest(registry).decode()
        return counting.commands, time.perf_counter() - start, scraped(text)

    empty, _, seen = scrape()
    assert seen[("crmbridge_queue_depth", ())] == 0 and seen[("crmbridge_queue_oldest_job_age_seconds", ())] == 0
    for n in range(2000):   # a backlog: 2,000 queued events
        runtime.backend.enqueue_event({"id": f"amo:{n}", "connection": "quickstart-amo", "source": "amocrm",
                                       "kind": "stage.changed", "entity": {"type": "lead", "id": str(n)},
                                       "data": {}, "raw": {}, "occurred_at": "2026-11-27T15:00:00+00:00"})
    time.sleep(1.1)
    full, seconds, seen = scrape()
    assert seen[("crmbridge_queue_depth", ())] == 2000
    assert seen[("crmbridge_queue_oldest_job_age_seconds", ())] >= 1.0
    assert full == empty + 1 <= 8      # the oldest job's enqueued_at: one more read, whatever the backlog
    assert seconds < 0.5, f"a scrape took {seconds:.3f} s"


def test_a_dead_letter_a_timer_and_a_rate_limit_wait_are_counted(runtime):
    from pipeline import dead_letters
    from ratelimit import Limit, RateLimiter
    dead = value("crmbridge_dead_letters_total", job="worker.handle_event")
    dead_letters.dead_letter(runtime, "worker.handle_event", {"id": "amo:1"}, "PermanentApiError: HTTP 400")
    assert value("crmbridge_dead_letters_total", job="worker.handle_event") == dead + 1
    seen = scraped(metrics.generate_latest(metrics.registry_for(runtime)).decode())
    assert seen[("crmbridge_dead_letters", ())] == 1

    late = value("crmbridge_timer_lateness_seconds_count")
    metrics.timer_fired("2026-11-27T15:00:00+00:00")
    assert value("crmbridge_timer_lateness_seconds_count") == late + 1

    waited = value("crmbridge_rate_limit_wait_seconds_total", connection="quickstart-amo")
    limiter = RateLimiter(runtime.store, runtime.keys.prefix)
    start = time.monotonic()
    for _ in range(3):    # one a second, a burst of 1: the second and third wait about a second each
        limiter.acquire("quickstart-amo:chat:-100123", Limit(1.0, 1.0, 0.0))
    slept = value("crmbridge_rate_limit_wait_seconds_total", connection="quickstart-amo") - waited
    assert 1.5 < slept <= time.monotonic() - start + 0.01


# --- multiprocess: gunicorn's two workers and a worker.py, added up ---------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_workers_and_a_worker_process_add_up(settings, config_dir, env, fake_amo, fake_tg, tmp_path):
    fake_amo.add_lead(LEAD)
    shared = tmp_path / "prometheus"
    shared.mkdir()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from metrics import child_exit  # noqa: F401 (gunicorn's hook)\n")
    port = free_port()
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith(("CRMBRIDGE_", "PROMETHEUS_"))}, **env,
               "REDIS_URL": TEST_REDIS_URL, "CRMBRIDGE_CONFIG": str(config_dir), "PROMETHEUS_MULTIPROC_DIR": str(shared),
               "CRMBRIDGE_REDIS_PREFIX": settings.redis_prefix, "CRMBRIDGE_QUEUE": settings.queue_name,
               "CRMBRIDGE_HISTORY": "off"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", str(conf), "--workers", "2",
                             "--bind", f"127.0.0.1:{port}", "webhooks:create_app()"], cwd=ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        body = payload("amocrm/lead_status_changed_full.form")

        def post(_: int) -> int:
            return requests.post(base + AMO_HOOK, data=body, headers={**FORM, "Connection": "close"}, timeout=10).status_code
        posted, web_pids = 0, set()
        with ThreadPoolExecutor(8) as pool:   # 8 at once: a busy sync worker leaves the next to the other
            while len(web_pids) < 2 and posted < 400:
                assert set(pool.map(post, range(16))) == {200}
                posted += 16
                web_pids = {p.name.split("_")[-1].split(".")[0] for p in shared.glob("counter_*.db")}
        assert len(web_pids) == 2, f"both gunicorn workers counted: {sorted(shared.iterdir())}"

        done = subprocess.run([sys.executable, "worker.py", "--burst"], cwd=ROOT, env=environ, timeout=60,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]

        def scrape() -> dict:
            return scraped(requests.get(base + "/metrics", timeout=5).text)
        seen = scrape()
        assert seen[("crmbridge_webhooks_total", (("connection", "quickstart-amo"), ("status", "200")))] == posted
        # counted by worker.py, scraped from gunicorn: one event (the rest duplicates), one task, one message
        assert seen[("crmbridge_events_total", (("kind", "stage.changed"),))] == 1
        assert seen[("crmbridge_actions_total", (("outcome", "done"), ("verb", "create_task")))] == 1
        assert seen[("crmbridge_vendor_calls_total", (("connection", "quickstart-bot"), ("status", "200")))] == 1
        assert seen[("crmbridge_queue_depth", ())] == 0

        # a web worker dies: gunicorn's child_exit hook marks it dead; what it counted stays counted
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(children[0]), signal.SIGKILL)
        time.sleep(1.5)
        seen = scrape()
        assert seen[("crmbridge_webhooks_total", (("connection", "quickstart-amo"), ("status", "200")))] == posted
    finally:
        os.killpg(proc.pid, signal.SIGTERM)   # gunicorn's own session, started above
        proc.wait(timeout=15)


def test_the_embedded_default_serves_its_one_process(tmp_path):
    """`python webhooks.py` without REDIS_URL: web and worker in one process, its queue in memory."""
    from config.settings import Settings
    from tests.conftest import QUICKSTART
    from webhooks import create_app
    app = create_app(settings=Settings(config_dir=QUICKSTART, redis_url=None, testing=True,
                                       history_path=tmp_path / "history.sqlite3",
                                       environ={"AMO_WEBHOOK_SECRET": "amo-s", "TELEGRAM_WEBHOOK_SECRET": "tg-s"}))
    rt = app.extensions["crmbridge"]
    try:
        client = app.test_client()
        planned = value("crmbridge_events_total", kind="stage.changed")
        sample = (QUICKSTART / "sample-webhook.form").read_bytes()
        assert client.post("/hooks/quickstart-amo?token=amo-s", data=sample,
                           content_type="application/x-www-form-urlencoded").status_code == 200
        rt.backend.join(timeout=10)
        seen = scraped(client.get("/metrics").get_data(as_text=True))
        assert seen[("crmbridge_queue_depth", ())] == 0 and seen[("crmbridge_redis_up", ())] == 1
        assert seen[("crmbridge_events_total", (("kind", "stage.changed"),))] == planned + 1
        assert seen[("crmbridge_webhooks_total", (("connection", "quickstart-amo"), ("status", "200")))] >= 1
    finally:
        rt.backend.close()
