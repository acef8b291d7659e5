"""The record read that starts every event is retried inside the job like any vendor call: a 429
(with Retry-After) or a 5xx on it does not fail the job and send it to RQ's retry schedule."""
from __future__ import annotations

import worker
from tests.conftest import payload

FORM = "application/x-www-form-urlencoded"


def queued(client, runtime) -> dict:
    client.post("/hooks/quickstart-amo?token=amo-secret", data=payload("amocrm/lead_status_changed_full.form"),
                content_type=FORM)
    [job] = runtime.backend.queue.jobs
    return job.args[0]


def test_a_429_on_the_record_read_is_retried_in_the_job(client, runtime, fake_amo):
    event = queued(client, runtime)
    fake_amo.fail(r"^/api/v4/leads/31926520$", 429, {"title": "Too Many Requests", "status": 429},
                  headers={"Retry-After": "1"})
    outcome = worker.handle_event(event)
    reads = fake_amo.received("GET", r"/api/v4/leads/31926520", failed=True)
    assert [c.status for c in reads][0] == 429 and len(reads) == 2 and reads[1].status < 300
    assert outcome["stage.changed"]["done"] >= 1
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1


def test_a_502_on_the_record_read_is_retried_in_the_job(client, runtime, fake_amo):
    event = queued(client, runtime)
    fake_amo.fail(r"^/api/v4/leads/31926520$", 502, "<html>Bad Gateway</html>", times=2)
    outcome = worker.handle_event(event)
    reads = fake_amo.received("GET", r"/api/v4/leads/31926520", failed=True)
    assert [c.status for c in reads][:2] == [502, 502] and len(reads) == 3 and reads[2].status < 300
    assert outcome["stage.changed"]["done"] >= 1
