"""rqworker.py against RQ's own bookkeeping, in one process and without waiting: what a dead
worker leaves in Redis (a StartedJobRegistry entry, an execution, a job in the intermediate list) is
given back the way a live worker's maintenance pass gives it back; what a timer poller that died or
stalled between its claim and its enqueue leaves; and the RQ names rqworker.py relies on that RQ
does not document (RQ_INTERNALS): a change in RQ fails here, not in production."""
from __future__ import annotations

import time

import pytest
from rq import Queue, Retry
from rq.executions import Execution
from rq.serializers import JSONSerializer

from rqworker import (
    RQ_INTERNALS,
    CrashSafeWorker,
    Heartbeat,
    give_back_unregistered,
    recover_abandoned,
)
from tests.reliability.harness import TEST_REDIS_URL, open_test_db

QUEUE = "crmrel-rq"


def job_of_a_dead_worker(store, retries: int = 3, ttl: int = 15):
    """A job as a SimpleWorker leaves it when SIGKILLed mid-job: dequeued, registered, executing."""
    queue = Queue(QUEUE, connection=store, serializer=JSONSerializer)
    job = queue.enqueue("builtins.len", [1, 2], retry=Retry(max=retries, interval=[5, 30, 120][:retries]))
    dead = CrashSafeWorker([queue], connection=store, serializer=JSONSerializer, maintenance_interval=2,
                           job_heartbeat_ttl=ttl)
    assert queue.dequeue_any([queue], None, connection=store, serializer=JSONSerializer)[0].id == job.id
    execution = dead.prepare_execution(job)   # what RQ does before running it (registry entry, ttl)
    store.lrem(queue.intermediate_queue_key, 1, job.id)
    return queue, job, execution


@pytest.fixture
def store():
    conn = open_test_db()
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def test_a_started_job_is_registered_for_the_heartbeat_ttl_not_the_job_timeout(store):
    queue, _job, execution = job_of_a_dead_worker(store, ttl=15)
    expires_in = store.zscore(queue.started_job_registry.key, execution.composite_key) - time.time()
    assert 13 < expires_in <= 15          # RQ's SimpleWorker: job.timeout + 60 = 240 s


def test_the_heartbeat_renews_the_entry_and_never_brings_a_removed_one_back(store):
    queue, job, execution = job_of_a_dead_worker(store, ttl=15)
    key = queue.started_job_registry.key
    store.zadd(key, {execution.composite_key: time.time() + 1})
    Heartbeat(store, "rq:worker:nobody", job, execution, 15).beat()
    assert store.zscore(key, execution.composite_key) - time.time() > 13
    store.zrem(key, execution.composite_key)           # the job ended (or cleanup took it)
    Heartbeat(store, "rq:worker:nobody", job, execution, 15).beat()
    assert store.zscore(key, execution.composite_key) is None


def test_an_expired_entry_goes_back_to_the_front_of_the_queue_at_once(store):
    queue, job, execution = job_of_a_dead_worker(store)
    other = queue.enqueue("builtins.len", [3])
    assert recover_abandoned(queue) == []                 # not expired yet: a live worker's job
    store.zadd(queue.started_job_registry.key, {execution.composite_key: time.time() - 1})
    assert recover_abandoned(queue) == [job.id]
    assert queue.get_job_ids() == [job.id, other.id]      # front, not through the scheduler
    assert store.zcard(queue.started_job_registry.key) == 0
    job.refresh()
    assert job.retries_left == 3 and job.get_status() == "queued"   # a worker's death uses up no retry
    assert job.meta["abandoned"] == 1
    # the dead execution is forgotten, so RQ's cleanup after the re-run does not trip on it
    assert [e.id for e in job.get_executions()] == []
    assert not store.exists(f"rq:execution:{execution.composite_key}")


def test_a_job_killed_between_registering_and_starting_is_queued_once(store):
    """Killed after RQ registered the job (StartedJobRegistry) and before it took it out of the
    intermediate list: the recovery of the expired entry queues it again, and the intermediate
    list must not give it back a second time (two copies would run side by side)."""
    queue, job, execution = job_of_a_dead_worker(store)
    store.rpush(queue.intermediate_queue_key, job.id)
    store.zadd(queue.started_job_registry.key, {execution.composite_key: time.time() - 1})
    assert recover_abandoned(queue) == [job.id]
    assert store.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert give_back_unregistered(queue, grace=0) == [] and queue.get_job_ids() == [job.id]


def test_a_job_abandoned_again_and_again_fails(store):
    """A job whose worker dies every time (it kills it: out of memory, say) fails after
    MAX_ABANDONED deaths instead of going round for ever."""
    from rqworker import MAX_ABANDONED
    queue, job, execution = job_of_a_dead_worker(store, retries=1)
    job.meta["abandoned"] = MAX_ABANDONED
    job.save_meta()
    store.zadd(queue.started_job_registry.key, {execution.composite_key: time.time() - 1})
    assert recover_abandoned(queue) == []
    assert job.get_status(refresh=True) == "failed"
    assert job.id in queue.failed_job_registry.get_job_ids()


def test_a_job_dequeued_by_a_worker_that_died_before_registering_it_comes_back(store):
    queue = Queue(QUEUE, connection=store, serializer=JSONSerializer)
    job = queue.enqueue("builtins.len", [1])
    assert queue.dequeue_any([queue], None, connection=store, serializer=JSONSerializer)[0].id == job.id
    assert store.lrange(queue.intermediate_queue_key, 0, -1) == [job.id.encode()]
    assert give_back_unregistered(queue, grace=0.2) == []      # first seen now
    time.sleep(0.3)
    assert give_back_unregistered(queue, grace=0.2) == [job.id]
    assert queue.get_job_ids() == [job.id] and store.llen(queue.intermediate_queue_key) == 0


def test_a_registered_job_in_the_intermediate_list_is_left_alone(store):
    queue = Queue(QUEUE, connection=store, serializer=JSONSerializer)
    job = queue.enqueue("builtins.len", [1])
    queue.dequeue_any([queue], None, connection=store, serializer=JSONSerializer)
    worker = CrashSafeWorker([queue], connection=store, serializer=JSONSerializer, maintenance_interval=2)
    worker.prepare_execution(job)     # registered: a live worker is about to run it
    give_back_unregistered(queue, grace=0.0)
    time.sleep(0.05)
    assert give_back_unregistered(queue, grace=0.0) == []
    assert queue.get_job_ids() == []


def test_an_idle_worker_blocks_no_longer_than_its_maintenance_interval(store):
    queue = Queue(QUEUE, connection=store, serializer=JSONSerializer)
    worker = CrashSafeWorker([queue], connection=store, serializer=JSONSerializer, maintenance_interval=10)
    assert worker.dequeue_timeout == 10            # RQ: worker_ttl - 15 = 405 s


@pytest.mark.timeout(30)
def test_an_idle_worker_on_a_used_connection_never_times_out_its_dequeue(store):
    """worker.py's runtime connection (5 s socket timeout) is used at start-up before the worker
    is built: RQ raises its pool's socket timeout above the blocking dequeue, but only for new
    connections, so a dequeue on the runtime's pool timed out and the idle worker quit its loop
    every few seconds. worker_connection gives the worker a pool of its own."""
    from redis import Redis
    from rqworker import worker_connection
    used = Redis.from_url(TEST_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    used.ping()
    own = worker_connection(used)
    assert own.connection_pool is not used.connection_pool
    for key in ("host", "port", "db", "socket_timeout", "socket_connect_timeout"):
        assert own.connection_pool.connection_kwargs.get(key) == used.connection_pool.connection_kwargs.get(key)
    worker = CrashSafeWorker([Queue(QUEUE, connection=own, serializer=JSONSerializer)], connection=own,
                             serializer=JSONSerializer, maintenance_interval=3)
    started = time.monotonic()
    assert worker.dequeue_job_and_maintain_ttl(worker.dequeue_timeout, max_idle_time=4) is None   # no error
    assert 3.5 <= time.monotonic() - started < 20
    used.close()
    own.close()


def test_a_worker_started_while_redis_is_down_waits_for_it(tmp_path):
    """worker.py started before Redis (a reboot, a fail-over) waits and then works, instead of
    exiting on its first Redis call."""
    import os
    import signal
    import subprocess
    import sys
    from redis import Redis
    from tests.conftest import QUICKSTART, ROOT
    from tests.reliability.harness import RedisServer
    server = RedisServer(tmp_path / "redis", durable=False)
    env = {**os.environ, "REDIS_URL": server.url(), "CRMBRIDGE_CONFIG": str(QUICKSTART),
           "AMO_WEBHOOK_SECRET": "a", "TELEGRAM_WEBHOOK_SECRET": "b", "CRMBRIDGE_QUEUE": QUEUE}
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(3.0)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]    # still there, waiting
        server.start()
        conn = Redis.from_url(server.url())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not conn.smembers("rq:workers"):
            time.sleep(0.2)
        assert conn.smembers("rq:workers"), "the worker never registered once Redis was up"
        assert proc.poll() is None
        conn.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        server.kill()


def test_the_maintenance_lock_of_a_dead_worker_expires_in_seconds(store):
    queue = Queue(QUEUE, connection=store, serializer=JSONSerializer)
    worker = CrashSafeWorker([queue], connection=store, serializer=JSONSerializer, maintenance_interval=2)
    worker.clean_registries()
    assert not store.exists(queue.registry_cleaning_key)      # released after the pass
    store.set(queue.registry_cleaning_key, "a-dead-worker", ex=20)   # as a worker killed mid-pass leaves it
    worker.clean_registries()
    assert store.get(queue.registry_cleaning_key) == b"a-dead-worker"   # not ours: not released
    assert 0 < store.ttl(queue.registry_cleaning_key) <= 20               # RQ's own: 899 s


def test_the_maintenance_pass_never_leaves_an_abandoned_job_to_rqs_scheduler(store, monkeypatch):
    """Our recovery puts an abandoned job at the front of its queue; RQ's StartedJobRegistry.cleanup
    would retry it through the scheduler (5 s, and a dead worker's scheduler lock). The pass must
    not run RQ's: an entry expiring between the two would take the slow road (seen in
    test_crash_safety: one job left in the scheduled registry)."""
    from rq.registry import StartedJobRegistry

    def rqs_own(self, *args, **kwargs):
        raise AssertionError("StartedJobRegistry.cleanup ran in our maintenance pass")
    monkeypatch.setattr(StartedJobRegistry, "cleanup", rqs_own)
    queue, job, execution = job_of_a_dead_worker(store)
    store.zadd(queue.started_job_registry.key, {execution.composite_key: time.time() - 1})
    worker = CrashSafeWorker([queue], connection=store, serializer=JSONSerializer, maintenance_interval=2)
    worker.clean_registries()
    assert queue.get_job_ids() == [job.id] and store.zcard(queue.scheduled_job_registry.key) == 0


def test_execution_objects_match_rq(store):
    """The keys the heartbeat renews are RQ's own (a rename in RQ would silently stop renewing)."""
    queue, job, execution = job_of_a_dead_worker(store)
    assert store.exists(Execution(execution.id, job.id, store).key)
    assert store.zscore(job.execution_registry.key, execution.id) is not None
    assert queue.started_job_registry.key == f"rq:wip:{QUEUE}"


# --- the worker's own path: RQ's bookkeeping, untouched ------------------------------------------

SEEN_WHILE_RUNNING: list[dict] = []


def look_while_running(queue_name: str) -> int:
    """A job that records what Redis holds about it while it runs."""
    from rq import get_current_job
    job = get_current_job()
    store = job.connection
    entries = store.zrange(f"rq:wip:{queue_name}", 0, -1, withscores=True)
    SEEN_WHILE_RUNNING.append({
        "status": store.hget(job.key, "status"), "started_at": store.hget(job.key, "started_at"),
        "registered": [e.decode() for e, _ in entries], "expires_in": [s - time.time() for _, s in entries],
        "intermediate": store.lrange(f"rq:queue:{queue_name}:intermediate", 0, -1),
        "ttl": store.ttl(job.key)})
    return 7


def fails() -> None:
    raise RuntimeError("the vendor said no")


def run_one(store, func: str, worker_class=CrashSafeWorker, result_ttl: int = 0, args=()):
    queue = Queue(QUEUE, connection=store, serializer=JSONSerializer)
    job = queue.enqueue(func, *args, result_ttl=result_ttl, retry=Retry(max=2, interval=[5, 30]))
    worker = worker_class([queue], connection=store, serializer=JSONSerializer)
    worker.work(burst=True)
    return queue, job, worker


def keys_left(store) -> set[str]:
    """Key names with job, execution and worker ids replaced, and their types."""
    import re
    names = set()
    for key in store.scan_iter():
        name = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", "<id>",
                      key.decode())
        names.add((re.sub(r"rq:job:[^:]+", "rq:job:<job>", re.sub(r"executions?:[^:]+", "execution:<job>", name)),
                   store.type(key).decode()))
    return names


@pytest.mark.parametrize("result_ttl", [0, 300])
def test_our_worker_leaves_redis_as_rqs_simple_worker_does(store, result_ttl):
    """CrashSafeWorker changes only the started job's TTL and its heartbeat: a job it runs leaves
    the keys RQ's SimpleWorker leaves, and RQ reads its outcome the same way."""
    from rq import SimpleWorker
    SEEN_WHILE_RUNNING.clear()
    func = f"{__name__}.look_while_running"
    _, rq_job, _ = run_one(store, func, SimpleWorker, result_ttl=result_ttl, args=(QUEUE,))
    theirs = keys_left(store)
    rq_status = rq_job.get_status(refresh=True) if result_ttl else None
    store.flushdb()
    queue, job, worker = run_one(store, func, result_ttl=result_ttl, args=(QUEUE,))
    assert keys_left(store) == theirs
    rq_seen, ours_seen = SEEN_WHILE_RUNNING
    assert ours_seen["status"] == rq_seen["status"] == b"started"
    assert ours_seen["registered"] and ours_seen["registered"][0].startswith(job.id + ":")   # heartbeat-able
    assert rq_seen["expires_in"][0] > 200 and 0 < ours_seen["expires_in"][0] <= worker.job_heartbeat_ttl
    assert ours_seen["intermediate"] == rq_seen["intermediate"] == []
    assert ours_seen["ttl"] == rq_seen["ttl"]
    assert store.zcard(queue.started_job_registry.key) == 0
    assert store.hget(worker.key, "successful_job_count") == b"1"
    assert store.hget(worker.key, "current_job") is None
    if result_ttl:
        assert job.get_status(refresh=True) == rq_status == "finished"
        assert job.latest_result().return_value == 7
        job.refresh()
        assert job.started_at and job.ended_at and job.ended_at >= job.started_at
        assert job.worker_name == worker.name
        assert job.id in queue.finished_job_registry.get_job_ids()
    else:
        assert not store.exists(job.key)


def test_a_job_that_fails_takes_rqs_failure_path(store):
    """Failure handling is RQ's own: the retry is scheduled, the execution cleaned up."""
    queue, job, _ = run_one(store, f"{__name__}.fails")
    assert job.get_status(refresh=True) == "scheduled"
    assert job.id in queue.scheduled_job_registry.get_job_ids()
    assert store.zcard(queue.started_job_registry.key) == 0
    assert int(store.hget(job.key, "retries_left")) == 1


def test_the_rq_internals_we_use_are_there(store):
    """What rqworker.py overrides or reads of RQ without RQ documenting it (RQ_INTERNALS): each
    name exists, and the methods we override are still called with the arguments we take."""
    import importlib
    import inspect

    from rq import SimpleWorker
    from rq.utils import parse_composite_key
    queue = Queue(QUEUE, connection=store)
    worker = CrashSafeWorker([queue], connection=store)
    instances = {"rq.SimpleWorker()": worker, "rq.intermediate_queue.IntermediateQueue()": queue.intermediate_queue}
    for owner, names in RQ_INTERNALS.items():
        if owner in instances:
            target = instances[owner]
        elif owner[owner.rfind(".") + 1].isupper():
            module, _, cls = owner.rpartition(".")
            target = getattr(importlib.import_module(module), cls)
        else:
            target = importlib.import_module(owner)
        missing = [name for name in names if not hasattr(target, name)]
        assert not missing, f"{owner} has no {missing}: RQ changed; see rqworker.py"

    def params(method) -> list[str]:
        return list(inspect.signature(method).parameters)
    assert params(SimpleWorker.execute_job)[:3] == ["self", "job", "queue"]
    assert params(SimpleWorker.prepare_execution) == ["self", "job"]
    assert params(SimpleWorker.get_heartbeat_ttl)[:2] == ["self", "job"]
    assert params(SimpleWorker.clean_registries) == ["self"]
    assert isinstance(SimpleWorker.dequeue_timeout, property)
    assert parse_composite_key("a-job:an-execution") == ("a-job", "an-execution")
    # set by a warm shutdown, and by each maintenance pass
    assert worker._shutdown_requested_date is None and worker.last_cleaned_at is None


# --- the timer poll: claim, then enqueue through RQ ------------------------------------------------

@pytest.fixture
def backend(store):
    from queueing import Keys, RQBackend
    return RQBackend(store, Keys("crmrel:"), QUEUE)


def a_due_timer(backend, at: float = 1_795_600_800.5) -> tuple[str, float]:
    from datetime import UTC, datetime
    from queueing import TimerIndex
    timer_id, fire_at = "timer:t1:quickstart-amo:lead:31926520", datetime.fromtimestamp(at, UTC).isoformat()
    backend.schedule({"timer_id": timer_id, "fire_at": fire_at, "entity": {"type": "lead", "id": "31926520"}})
    return timer_id, TimerIndex.score(timer_id, fire_at)   # its place on the schedule, as a poller reads it


def test_a_timer_claimed_by_a_poller_that_died_is_queued_once_its_claim_expires(store, backend):
    timer_id, at = a_due_timer(backend)
    assert backend._claim(timer_id, at)                     # ... and the poller dies here
    assert backend.fire_due_timers(now=at + 1) == 0          # claimed: no other poller queues it
    claim = backend.keys("timer-claim", timer_id)
    assert 0 < store.ttl(claim) <= backend.FIRE_CLAIM_TTL
    store.pexpire(claim, 1)
    time.sleep(0.05)
    assert backend.fire_due_timers(now=at + 1) == 1
    [job] = backend.queue.jobs
    assert (job.func_name, job.args) == ("worker.fire_timer", [{"timer_id": timer_id, "at": at}])
    assert store.zcard(backend.keys("timers")) == 0                # off the schedule
    assert not store.exists(claim)


def test_a_poller_that_stalled_past_its_claim_queues_nothing(store, backend):
    timer_id, at = a_due_timer(backend)
    slow = backend._claim(timer_id, at)
    store.delete(backend.keys("timer-claim", timer_id))     # its claim expired while it stalled
    quick = backend._claim(timer_id, at)
    assert quick and backend._enqueue_claimed(timer_id, at, quick)
    assert not backend._enqueue_claimed(timer_id, at, slow)   # claim gone: nothing queued
    assert backend.queue.count == 1 and store.zcard(backend.keys("timers")) == 0
