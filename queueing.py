"""Where work waits: RQ on Redis (durable), or an in-process queue for the embedded default.

Both backends offer the same four verbs: enqueue an event, schedule a timer (replacing one
with the same id), cancel a timer, list pending timers. Timers are also indexed in our own
sorted set so that they can be listed by entity and fire time.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Callback, Job
from rq.serializers import JSONSerializer

log = logging.getLogger("crmbridge.queue")

HANDLE_EVENT = "worker.handle_event"
FIRE_TIMER = "worker.fire_timer"


def job_id_for(kind: str, key: str) -> str:
    """RQ job ids from our keys: deterministic, short, and safe in a Redis key."""
    return f"crmbridge-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"


class Keys:
    """The project's Redis keys, under one prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)


class Order:
    """Events about one record are handled in the order they arrived.

    Intake gives each accepted event a ticket (a counter per record); a worker handles ticket
    n only once ticket n-1 is done, so two quick stage moves of one deal cannot be applied
    out of order by two workers, while different records run in parallel.
    """

    TTL = 30 * 24 * 3600
    # KEYS[1] done counter; ARGV[1] ticket, ARGV[2] ttl: raise the counter, never lower it
    DONE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return current
"""

    # KEYS[1] the record's counter, KEYS[2] this event's ticket; ARGV[1] ttl
    TICKET = """
local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], seq, 'EX', ARGV[1])
return seq
"""

    def __init__(self, store: Redis, keys: Keys):
        self.store, self.keys = store, keys
        self._done = store.register_script(self.DONE)
        self._ticket = store.register_script(self.TICKET)

    def _key(self, kind: str, event: dict[str, Any]) -> str:
        return self.keys(kind, event["connection"], f"{event['entity']['type']}:{event['entity']['id']}")

    def ticket(self, event: dict[str, Any], pipe=None) -> None:
        """Number the event among its record's events (inside the intake's transaction)."""
        self._ticket(keys=[self._key("order", event), self.keys("ticket", event["id"])], args=[self.TTL],
                     client=pipe if pipe is not None else self.store)

    def seq(self, event: dict[str, Any]) -> int | None:
        """The event's number, or None for events that were not numbered (timers, replays)."""
        if "seq" not in event:
            raw = self.store.get(self.keys("ticket", event["id"]))
            event["seq"] = int(raw) if raw else None
        return event["seq"]

    def is_turn(self, event: dict[str, Any]) -> bool:
        seq = self.seq(event)
        if not seq:
            return True
        return int(self.store.get(self._key("order-done", event)) or 0) >= seq - 1

    def done(self, event: dict[str, Any]) -> None:
        if self.seq(event):
            self._done(keys=[self._key("order-done", event)], args=[event["seq"], self.TTL + 3600])


class TimerIndex:
    """Pending timers by fire time (sorted set) and their contents (hash)."""

    def __init__(self, store: Redis, keys: Keys):
        self.store, self.keys = store, keys

    def add(self, timer: dict[str, Any], pipe=None) -> None:
        target = pipe if pipe is not None else self.store
        when = datetime.fromisoformat(timer["fire_at"]).timestamp()
        target.zadd(self.keys("timers"), {timer["timer_id"]: when})
        target.hset(self.keys("timer-data"), timer["timer_id"], json.dumps(timer, ensure_ascii=False))

    def remove(self, timer_id: str, pipe=None) -> None:
        target = pipe if pipe is not None else self.store
        target.zrem(self.keys("timers"), timer_id)
        target.hdel(self.keys("timer-data"), timer_id)

    def get(self, timer_id: str) -> dict[str, Any] | None:
        raw = self.store.hget(self.keys("timer-data"), timer_id)
        return json.loads(raw) if raw else None

    def pending(self, entity: str | None = None) -> list[dict[str, Any]]:
        ids = self.store.zrange(self.keys("timers"), 0, -1)
        if not ids:
            return []
        timers = [json.loads(t) for t in self.store.hmget(self.keys("timer-data"), ids) if t]
        if entity:
            timers = [t for t in timers if f"{t['entity']['type']}:{t['entity']['id']}" == entity]
        return timers


class RQBackend:
    """Durable: events and timers are RQ jobs in Redis (JSON serializer, never pickle)."""

    durable = True

    def __init__(self, store: Redis, keys: Keys, queue_name: str, *, job_retries: int = 3):
        self.store, self.keys = store, keys
        self.queue = Queue(queue_name, connection=store, serializer=JSONSerializer)
        self.timers = TimerIndex(store, keys)
        self.order = Order(store, keys)
        self.retry = Retry(max=job_retries, interval=[5, 30, 120][:job_retries]) if job_retries else None

    def accept(self, event: dict[str, Any], seen: str, ttl: int) -> bool:
        """Mark the event seen, number it and queue it in one transaction; False if seen before.

        One MULTI/EXEC, so that no crash can leave an event marked seen but not queued (its
        retry would then be dropped as a duplicate), and a concurrent copy loses the WATCH.
        """
        # redis-py also raises WatchError when the connection fails while a key is watched
        # (e.g. Redis still loading its data after a restart): that is no duplicate. Try again;
        # a real concurrent copy then shows as seen, and a Redis that keeps failing is a 503.
        for _ in range(3):
            with self.store.pipeline() as pipe:
                try:
                    pipe.watch(seen)
                    if pipe.exists(seen):
                        return False
                    pipe.multi()
                    pipe.set(seen, 1, ex=ttl)
                    self.order.ticket(event, pipe)
                    self.queue.enqueue(HANDLE_EVENT, event, job_id=job_id_for("event", event["id"]),
                                       pipeline=pipe, **self._job_options(event))
                    pipe.execute()
                    return True
                except WatchError:
                    time.sleep(0.05)
        raise RedisError("the event could not be stored (watched key kept failing)")

    def enqueue_event(self, event: dict[str, Any]) -> None:
        self.queue.enqueue(HANDLE_EVENT, event, job_id=job_id_for("event", event["id"]), **self._job_options(event))

    def call_at(self, when: datetime, func: str, arg: Any, key: str) -> None:
        """A periodic job of our own (catch-up) at `when`; one per key, however many workers ask."""
        self.queue.enqueue_at(when.astimezone(timezone.utc), func, arg, job_id=job_id_for("call", key),
                              result_ttl=300, failure_ttl=7 * 24 * 3600)

    def defer_event(self, event: dict[str, Any], seconds: float) -> None:
        """Try an event again a little later (its record's earlier event is not done yet)."""
        job_id = job_id_for("event", f"{event['id']}#wait{event.get('defers', 0)}")
        self.queue.enqueue_in(timedelta(seconds=seconds), HANDLE_EVENT, event, job_id=job_id,
                              **self._job_options(event))

    def _job_options(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(retry=self.retry, on_failure=Callback("worker.on_job_failed"),
                    description=f"{event['kind']} {event['entity']['type']}:{event['entity']['id']}",
                    result_ttl=300, failure_ttl=30 * 24 * 3600)

    def schedule(self, timer: dict[str, Any]) -> None:
        when = datetime.fromisoformat(timer["fire_at"]).astimezone(timezone.utc)
        with self.store.pipeline() as pipe:
            self.timers.add(timer, pipe)
            pipe.execute()
        self.queue.enqueue_at(when, FIRE_TIMER, timer, job_id=job_id_for("timer", timer["timer_id"]),
                              retry=self.retry, on_failure=Callback("worker.on_job_failed"),
                              description=f"timer {timer['rule']} {timer['entity']['type']}:{timer['entity']['id']}",
                              result_ttl=300, failure_ttl=30 * 24 * 3600)

    def cancel(self, timer_id: str) -> bool:
        existed = self.timers.get(timer_id) is not None
        self.timers.remove(timer_id)
        try:
            Job.fetch(job_id_for("timer", timer_id), connection=self.store, serializer=JSONSerializer).delete()
        except NoSuchJobError:
            pass
        return existed

    def close(self) -> None:
        pass


class InProcessBackend:
    """The embedded default: one worker thread and a timer heap. Not durable: a restart loses
    queued work and pending timers."""

    durable = False

    def __init__(self, store: Redis, keys: Keys, handle_event: Callable[[dict], Any],
                 fire_timer: Callable[[dict], Any], on_failure: Callable[[str, dict, Exception], Any]):
        self.store, self.keys = store, keys
        self.timers = TimerIndex(store, keys)
        self.order = Order(store, keys)
        self._handle_event, self._fire_timer, self._on_failure = handle_event, fire_timer, on_failure
        self._queue: queue.Queue = queue.Queue()
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crmbridge-worker", daemon=True)
        self._thread.start()

    def accept(self, event: dict[str, Any], seen: str, ttl: int) -> bool:
        if not self.store.set(seen, 1, nx=True, ex=ttl):
            return False
        self.order.ticket(event)
        self._queue.put(("event", event))
        return True

    def enqueue_event(self, event: dict[str, Any]) -> None:
        self._queue.put(("event", event))

    def defer_event(self, event: dict[str, Any], seconds: float) -> None:
        self._queue.put(("event", event))  # one thread handles events in order: never needed

    def call_at(self, when: datetime, func: str, arg: Any, key: str) -> None:
        log.warning("periodic job %s is not run on the embedded default; set REDIS_URL", key)

    def schedule(self, timer: dict[str, Any]) -> None:
        self.timers.add(timer)
        with self._lock:
            heapq.heappush(self._heap, (datetime.fromisoformat(timer["fire_at"]).timestamp(), timer["timer_id"]))

    def cancel(self, timer_id: str) -> bool:
        existed = self.timers.get(timer_id) is not None
        self.timers.remove(timer_id)
        return existed

    def join(self, timeout: float = 5.0) -> None:
        """Wait until queued events are handled (for tests and the dry run)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()

    def _due_timers(self) -> list[dict[str, Any]]:
        due = []
        with self._lock:
            while self._heap and self._heap[0][0] <= time.time():
                _, tid = heapq.heappop(self._heap)
                timer = self.timers.get(tid)
                if timer and datetime.fromisoformat(timer["fire_at"]).timestamp() <= time.time():
                    due.append(timer)
        return due

    def _run(self) -> None:
        while not self._stop.is_set():
            for timer in self._due_timers():
                self._safely(FIRE_TIMER, self._fire_timer, timer)
            try:
                _, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._safely(HANDLE_EVENT, self._handle_event, payload)
            finally:
                self._queue.task_done()

    def _safely(self, name: str, func: Callable[[dict], Any], payload: dict) -> None:
        try:
            func(payload)
        except Exception as exc:  # the embedded worker must outlive one bad job: dead-letter it
            log.exception("job failed: %s", payload.get("id") or payload.get("timer_id"))
            self._on_failure(name, payload, exc)
