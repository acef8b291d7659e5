"""Coalesced reads (pipeline/coalesce.py): the records of a connection's waiting events are read in
one request, and an event never sees its record as read before its webhook arrived."""
from __future__ import annotations

import worker
from tests.conftest import payload
from tests.reliability.harness import amo_lead

FORM = "application/x-www-form-urlencoded"
LEADS = (31926520, 31926521, 31926522)


def scheduler_running(runtime) -> None:
    """Intake paces (and notes records to read together) only while an RQ scheduler runs (a real
    worker.py holds its lock); these tests run the jobs themselves, so they hold it."""
    from rq.scheduler import RQScheduler
    runtime.store.set(RQScheduler.get_locking_key(runtime.backend.queue.name), "test", ex=60)


def post(client, lead: int) -> None:
    body = payload("amocrm/lead_status_changed_full.form").replace(b"31926520", str(lead).encode())
    assert client.post("/hooks/quickstart-amo?token=amo-secret", data=body, content_type=FORM).status_code == 200


def jobs(runtime) -> list[dict]:
    """Every event queued or on the schedule (intake paces the account: pipeline/lanes.py)."""
    queue = runtime.backend.queue
    from rq.job import Job
    from rq.serializers import JSONSerializer
    scheduled = [Job.fetch(j, connection=runtime.store, serializer=JSONSerializer)
                 for j in queue.scheduled_job_registry.get_job_ids()]
    return [job.args[0] for job in [*queue.jobs, *scheduled]]


def reads(fake_amo) -> tuple[list, list]:
    one = fake_amo.received("GET", r"/api/v4/leads/\d+")
    lists = [c for c in fake_amo.received("GET", r"/api/v4/leads") if "filter[id][]" in c.query]
    return one, lists


def test_waiting_events_have_their_records_read_in_one_request(client, runtime, fake_amo):
    scheduler_running(runtime)
    for lead in LEADS:
        fake_amo.add_lead(amo_lead(lead))
        post(client, lead)
    events = jobs(runtime)
    assert len(events) == 3
    for event in events:
        outcome = worker.handle_event(event)
        assert outcome["stage.changed"]["done"] >= 1
    one, lists = reads(fake_amo)
    assert one == [] and len(lists) == 1
    assert sorted(lists[0].query["filter[id][]"]) == sorted(str(lead) for lead in LEADS)
    assert lists[0].query["with"] == ["contacts"]
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 3


def test_an_event_that_came_after_the_read_reads_its_record_again(client, runtime, fake_amo):
    scheduler_running(runtime)
    first, other = LEADS[0], LEADS[1]
    for lead in (first, other):
        fake_amo.add_lead(amo_lead(lead))
        post(client, lead)
    by_lead = {e["entity"]["id"]: e for e in jobs(runtime)}
    worker.handle_event(by_lead[str(first)])        # reads both records: `other`'s is kept for its event
    fake_amo.leads[other]["name"] = "Renamed after the read"
    body = payload("amocrm/lead_status_changed_full.form").replace(b"31926520", str(other).encode())
    body = body.replace(b"%5Bold_status_id%5D=", b"%5Bold_status_id%5D=1")   # not a duplicate of the first webhook
    assert client.post("/hooks/quickstart-amo?token=amo-secret", data=body, content_type=FORM).status_code == 200
    later = [e for e in jobs(runtime) if e["entity"]["id"] == str(other) and e["id"] != by_lead[str(other)]["id"]]
    assert len(later) == 1
    worker.handle_event(by_lead[str(other)])        # arrived before the read: the kept record, no request
    one, lists = reads(fake_amo)
    assert one == [] and len(lists) == 1
    worker.handle_event(later[0])                   # arrived after it: its record is read again
    one, lists = reads(fake_amo)
    assert [c.path for c in one] == [f"/api/v4/leads/{other}"] and len(lists) == 1
