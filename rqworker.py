"""crmbridge's RQ worker: RQ's SimpleWorker, made to give a dead worker's job back in seconds and to
outlive a Redis outage. `worker.main` runs it (`run_worker`); the reasons are RQ's own code (2.12,
the same in 3.0):

- A SimpleWorker's StartedJobRegistry entry gets the score now + job.timeout + 60 (240 s for our
  180 s jobs) and is never refreshed while the job runs (SimpleWorker.get_heartbeat_ttl; only the
  forking Worker heartbeats, from its monitoring loop). Here the entry lives `job_heartbeat_ttl`
  seconds (15 by default) and a thread of the worker renews it every few seconds while the job
  runs: a SIGKILLed worker's entry expires 15 s later, a live one's never does.
- Maintenance (StartedJobRegistry.cleanup) runs only between two dequeues, and an idle worker
  blocks in BLMOVE for worker_ttl - 15 = 405 s: here the block lasts at most maintenance_interval.
- RQ's cleanup re-runs an abandoned job through its Retry interval, i.e. through the RQ scheduler,
  whose lock (interval + 60 s) the dead worker's scheduler may hold for a minute: here an abandoned
  job with retries left goes straight back to the front of its queue.
- The maintenance lock RQ takes (rq:clean_registries:<queue>) expires after 899 s: a worker killed
  while holding it would stop every cleanup for 15 minutes. Here it expires after CLEANING_LOCK_TTL.
- A job moved into the intermediate list by a worker that died before it registered the job is
  given back after INTERMEDIATE_GRACE seconds (RQ: after a minute, and through the scheduler).
- RQ's work loop quits on any Redis error outside its dequeue (`run_supervised` starts a new
  worker after Redis answers again) and waits up to 60 s between reconnections (here 5 s).

Everything else (dequeue, job start, success, failure, retries) is RQ's own code. The worker
overrides only what RQ offers for it: the started job's heartbeat TTL (`get_heartbeat_ttl`, and
`prepare_execution`/`execute_job` to heartbeat it), the dequeue timeout and the maintenance pass
(`clean_registries`); jobs are written through RQ's public API. Names RQ uses but does not
document are listed in RQ_INTERNALS; tests/reliability/test_rq_recovery.py fails when one of them
changes.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker, worker_registration
from rq.exceptions import AbandonedJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, now, parse_composite_key

import redisconn

log = logging.getLogger("crmbridge.rqworker")

JOB_HEARTBEAT_TTL = 15      # seconds a started job stays registered without a heartbeat
CLEANING_LOCK_TTL = 20      # seconds the maintenance lock outlives a worker killed while holding it
MAX_ABANDONED = 10          # times a job may lose its worker before it fails (a poison job)
INTERMEDIATE_GRACE = 10     # seconds a dequeued job may stay unregistered before it is given back

# What this module uses of RQ that RQ's documentation does not promise (module, class, or an
# instance of the class: "()"; and the names):
# tests/reliability/test_rq_recovery.py::test_the_rq_internals_we_use_are_there checks them, and
# the other tests there check what they do (entries, keys, the lock, the intermediate list).
RQ_INTERNALS: dict[str, tuple[str, ...]] = {
    "rq.SimpleWorker": ("execute_job", "prepare_execution", "get_heartbeat_ttl", "dequeue_timeout",
                        "clean_registries", "max_connection_wait_time", "log_result_lifespan"),
    "rq.SimpleWorker()": ("_shutdown_requested_date", "last_cleaned_at", "worker_ttl", "maintenance_interval"),
    "rq.queue.Queue": ("registry_cleaning_key", "intermediate_queue", "started_job_registry",
                       "failed_job_registry", "finished_job_registry", "deferred_job_registry", "push_job_id"),
    "rq.intermediate_queue.IntermediateQueue()": ("get_job_ids", "remove", "set_first_seen", "get_first_seen",
                                                  "get_first_seen_key", "key"),
    "rq.job.Job": ("started_job_registry", "execution_registry", "failure_callback"),
    "rq.executions.Execution": ("key", "composite_key"),
    "rq.worker_registration": ("clean_worker_registry",),
    "rq.utils": ("parse_composite_key", "current_timestamp"),
}

# release the maintenance lock only if this worker still holds it
RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CrashSafeWorker(SimpleWorker):
    """SimpleWorker whose started jobs are heartbeated by a thread and whose maintenance gives an
    abandoned job back within about job_heartbeat_ttl + maintenance_interval seconds."""

    max_connection_wait_time = 5.0   # RQ: up to 60 s between two tries to reach Redis while idle
    # RQ logs three lines per job; the job's start ("crmbridge: <description> (<id>)") and its
    # "Job OK" are kept, the line about the result's lifetime (always 0 s here) is not
    log_result_lifespan = False

    def __init__(self, *args: Any, job_heartbeat_ttl: int = JOB_HEARTBEAT_TTL, **kwargs: Any):
        self.job_heartbeat_ttl = max(3, int(job_heartbeat_ttl))
        self._heartbeat: Heartbeat | None = None
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        """Block for a job at most maintenance_interval seconds, so an idle worker runs its
        maintenance on time (RQ blocks worker_ttl - 15 s)."""
        return max(1, min(self.worker_ttl - 15, self.maintenance_interval))

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """The started job's registry entry (and execution) lives this long without a heartbeat."""
        return self.job_heartbeat_ttl

    def prepare_execution(self, job: Job) -> Execution:
        """RQ registers the job's execution (for get_heartbeat_ttl seconds); a thread of this
        process renews it until execute_job ends."""
        execution = super().prepare_execution(job)
        self._heartbeat = Heartbeat(self.connection, self.key, job, execution, self.job_heartbeat_ttl)
        self._heartbeat.start()
        return execution

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None

    def clean_registries(self) -> None:
        """RQ's maintenance pass, with our recovery of abandoned jobs and a short-lived lock."""
        for queue in self.queues:
            lock = queue.registry_cleaning_key
            if not self.connection.set(lock, self.name, nx=True, ex=CLEANING_LOCK_TTL):
                continue
            try:
                self.log.debug("Worker %s: cleaning registries for queue: %s", self.name, queue.name)
                recover_abandoned(queue)
                clean_other_registries(queue)
                worker_registration.clean_worker_registry(queue)
                give_back_unregistered(queue)
            finally:
                self.connection.eval(RELEASE_IF_OWNER, 1, lock, self.name)
        self.last_cleaned_at = now()


# the registries RQ's maintenance cleans besides the started one (ready: RQ 3.0), as Queue properties
OTHER_REGISTRIES = ("finished_job_registry", "failed_job_registry", "deferred_job_registry", "ready_job_registry")


def clean_other_registries(queue: Queue) -> None:
    """RQ's maintenance of the queue's other registries. Not RQ's `clean_registries`, which also
    runs StartedJobRegistry.cleanup: an entry that expired just after recover_abandoned read the
    registry would be retried through RQ's scheduler, slowly, instead of at the front."""
    for name in OTHER_REGISTRIES:
        registry = getattr(queue, name, None)
        if registry is not None:
            registry.cleanup()


def run_worker(queue: Queue, settings: Any, *, burst: bool = False, logging_level: str = "INFO") -> int:
    """worker.py's worker on `queue`, on a connection pool of its own (worker_connection), run by
    run_supervised."""
    connection = worker_connection(queue.connection)
    own = Queue(queue.name, connection=connection, serializer=JSONSerializer)

    def make_worker() -> CrashSafeWorker:
        return CrashSafeWorker([own], connection=connection, serializer=JSONSerializer,
                               maintenance_interval=settings.maintenance_interval,
                               job_heartbeat_ttl=settings.job_heartbeat_ttl)
    return run_supervised(make_worker, connection.ping, burst=burst, logging_level=logging_level)


def worker_connection(connection: Redis) -> Redis:
    """A pool of the worker's own with the same settings. RQ raises its connection pool's socket
    timeout above its blocking dequeue (dequeue timeout + 10 s), which only connections made after
    that take: on the runtime's pool, already used at start-up with its 5 s timeout, an idle
    worker's dequeue timed out and its work loop quit every few seconds."""
    # (the pool's own objects, such as redis-py's maintenance-notifications handler, are not shared;
    # a Sentinel client gets a Sentinel client: redisconn.fresh)
    return redisconn.fresh(connection)


class Heartbeat:
    """Keeps a running job's StartedJobRegistry entry (and its execution and worker keys) alive
    while this process lives: every ttl/5 seconds, and never past the job's own timeout + 60 s
    (RQ's death penalty stops the job at its timeout; a job past that is someone else's)."""

    def __init__(self, connection: Redis, worker_key: str, job: Job, execution: Any, ttl: int):
        self.connection, self.worker_key, self.job, self.execution, self.ttl = (
            connection, worker_key, job, execution, ttl)
        self.interval = max(1.0, ttl / 5)
        self.limit = time.monotonic() + (job.timeout if job.timeout and job.timeout > 0 else 180) + 60
        self.due = time.monotonic() + self.interval

    def start(self) -> None:
        _BEATER.start(self)

    def stop(self) -> None:
        """Once this returns, no beat of this job is running or will run."""
        _BEATER.stop(self)

    def beat(self) -> None:
        until = current_timestamp() + self.ttl
        with self.connection.pipeline() as pipe:
            # xx: an entry already removed (the job ended, or cleanup took it) is not brought back
            pipe.zadd(self.job.started_job_registry.key, {self.execution.composite_key: until}, xx=True)
            pipe.expire(self.execution.key, self.ttl)
            pipe.zadd(self.job.execution_registry.key, {self.execution.id: until + 60}, xx=True)
            pipe.expire(self.worker_key, self.ttl + 60)
            pipe.execute()



class _Beater:
    """One thread per process beats the job that runs now (a worker runs one at a time): a thread
    started and joined for every job cost ~0.5 ms a job (bench/profiling.py, 7 % of a job's wall
    time). Beats run under the lock, so stop() returns only once no beat of that job is running."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._current: Heartbeat | None = None
        self._thread: threading.Thread | None = None

    def start(self, beat: Heartbeat) -> None:
        with self._lock:
            self._current = beat
            if self._thread is None or not self._thread.is_alive():   # first job, or a forked child
                self._thread = threading.Thread(target=self._run, name="rq-heartbeat", daemon=True)
                self._thread.start()
            self._lock.notify()

    def stop(self, beat: Heartbeat) -> None:
        with self._lock:
            if self._current is beat:
                self._current = None

    def _run(self) -> None:
        with self._lock:
            while True:
                beat = self._current
                wait = None if beat is None else beat.due - time.monotonic()
                if wait is None or wait > 0:
                    self._lock.wait(wait)
                    continue
                if time.monotonic() > beat.limit:
                    log.warning("job %s runs past its timeout: its heartbeat stops", beat.job.id)
                    self._current = None
                    continue
                beat.due = time.monotonic() + beat.interval
                try:
                    beat.beat()
                except RedisError as exc:   # Redis away: try again at the next beat
                    log.warning("heartbeat of job %s failed: %s", beat.job.id, exc)


_BEATER = _Beater()


def recover_abandoned(queue: Queue) -> list[str]:
    """StartedJobRegistry.cleanup, except that an abandoned job goes back to the front of its queue
    at once, without using up one of its retries (RQ schedules it through its Retry interval and
    counts the death as a failure). Returns the jobs given back."""
    registry = queue.started_job_registry
    expired = queue.connection.zrangebyscore(registry.key, 0, current_timestamp())
    given_back = []
    for raw in expired:
        entry = raw.decode() if isinstance(raw, bytes) else raw
        job_id, execution_id = parse_composite_key(entry)
        job = queue.fetch_job(job_id)
        if job is None:
            queue.connection.zrem(registry.key, entry)
            continue
        # forget the dead execution first: its hash expires with the heartbeat, and a job whose
        # execution list still names it fails when RQ cleans it up after its next run
        # (ExecutionRegistry.get_executions: "Execution ... not found in Redis")
        with queue.connection.pipeline() as pipe:
            pipe.zrem(job.execution_registry.key, execution_id)
            pipe.delete(Execution(execution_id, job_id, queue.connection).key)
            pipe.execute()
        abandoned = int(job.meta.get("abandoned", 0)) + 1
        if abandoned > MAX_ABANDONED:   # it fails for good: its failure callback says so, as RQ's cleanup does
            job.retries_left = 0
            report_abandoned(job, queue.connection)
        with queue.connection.pipeline() as pipe:
            # a worker's death is not the job's failure: it does not use up the job's retries (RQ's
            # cleanup takes one), up to MAX_ABANDONED times (a job that kills every worker it runs on)
            if abandoned <= MAX_ABANDONED:
                job.meta["abandoned"] = abandoned
                job.save_meta()
                queue.enqueue_job(job, pipeline=pipe, at_front=True)
                given_back.append(job.id)
                log.warning("job %s abandoned by its worker (%d time(s)): queued again", job.id, abandoned)
            else:
                reason = f"Moved to FailedJobRegistry, due to AbandonedJobError, at {now()}"
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                queue.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=reason, pipeline=pipe)
                Result.create_failure(job, job.failure_ttl, exc_string=reason, pipeline=pipe)
                log.warning("job %s abandoned by its worker %d times: failed", job.id, abandoned - 1)
            # a worker killed between registering the job and starting it left it in the intermediate
            # list too: give_back_unregistered would queue it a second time, to run beside this copy
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            pipe.zrem(registry.key, entry)
            pipe.execute()
    return given_back


def report_abandoned(job: Job, connection: Redis) -> None:
    """Call the job's failure callback as RQ documents it (job, connection, type, value,
    traceback), as RQ's own cleanup does; a callback that raises does not stop the pass."""
    callback = job.failure_callback
    if callback is None:
        return
    try:
        callback(job, connection, AbandonedJobError, AbandonedJobError(), None)
    except Exception:
        log.exception("failure callback of abandoned job %s raised", job.id)


def give_back_unregistered(queue: Queue, grace: float = INTERMEDIATE_GRACE) -> list[str]:
    """Jobs moved into the intermediate list by a worker that died before registering them."""
    intermediate = queue.intermediate_queue
    started = {parse_composite_key(e.decode())[0] for e in queue.connection.zrange(queue.started_job_registry.key, 0, -1)}
    given_back = []
    for job_id in intermediate.get_job_ids():
        if job_id in started:
            continue
        if queue.fetch_job(job_id) is None:
            intermediate.remove(job_id)
            continue
        if intermediate.set_first_seen(job_id):
            continue
        first = intermediate.get_first_seen(job_id)
        if first is not None and (now() - first).total_seconds() > grace:
            with queue.connection.pipeline() as pipe:
                pipe.lrem(intermediate.key, 1, job_id)
                queue.push_job_id(job_id, pipeline=pipe, at_front=True)
                pipe.delete(intermediate.get_first_seen_key(job_id))
                pipe.execute()
            given_back.append(job_id)
            log.warning("job %s was dequeued by a worker that died before starting it: queued again", job_id)
    return given_back


def run_supervised(make_worker: Callable[[], CrashSafeWorker], ping: Callable[[], Any], *, burst: bool = False,
                   logging_level: str = "INFO", max_pause: float = 30.0, max_runs: int | None = None) -> int:
    """Run RQ's work loop; when it quits on an error (Redis gone in the middle of a job, a Redis
    timeout), wait until Redis answers (backoff up to max_pause) and run a new worker. Stops on
    SIGINT/SIGTERM (RQ's warm shutdown), in burst mode, or after max_runs (tests)."""
    runs = 0
    stop = threading.Event()

    def stop_between_runs(signum: int, frame: Any) -> None:
        stop.set()

    while True:
        runs += 1
        worker = make_worker()
        try:
            worker.work(with_scheduler=True, burst=burst, logging_level=logging_level)
        except RedisError as exc:   # bootstrap or teardown without Redis
            log.error("worker %s stopped: %s", worker.name, exc)
        if burst or worker._shutdown_requested_date is not None or (max_runs is not None and runs >= max_runs):
            return 0
        # RQ's handlers belong to the worker that quit: between runs a signal just stops us
        signal.signal(signal.SIGTERM, stop_between_runs)
        signal.signal(signal.SIGINT, stop_between_runs)
        log.warning("worker %s quit its work loop; a new worker starts once Redis answers", worker.name)
        if not wait_for_redis(ping, stop, max_pause=max_pause):
            return 0


def wait_for_redis(ping: Callable[[], Any], stop: threading.Event | None = None, *, max_pause: float = 30.0) -> bool:
    """Wait until Redis answers (backoff up to max_pause seconds); False if `stop` was set first.
    A worker started while Redis is down waits here instead of exiting."""
    stop = stop or threading.Event()
    pause = 1.0
    while True:
        try:
            ping()
            return True
        except RedisError as exc:
            log.warning("Redis unavailable (%s); next try in %.0f s", exc, pause)
        if stop.wait(pause):
            return False
        pause = min(pause * 2, max_pause)
