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
import math
import os
import queue
import random
import threading
import time
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from redis import Redis
from redis.exceptions import NoScriptError, RedisError, WatchError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Callback, Job
from rq.serializers import JSONSerializer

from rqintake import FastIntake

log = logging.getLogger("crmbridge.queue")

HANDLE_EVENT = "worker.handle_event"
# seconds RQ keeps a finished event's job hash and result: nobody reads them (the audit stream
# records the outcome), so by default none; bench/run.py keeps them to time the jobs
RESULT_TTL = int(os.environ.get("CRMBRIDGE_RESULT_TTL", "0"))
# how intake queues an event: "fast" (rqintake.py: RQ's recorded enqueue, one round trip) or "rq"
# (RQBackend.accept_public: RQ's enqueue_call in a MULTI, two round trips)
INTAKE = os.environ.get("CRMBRIDGE_INTAKE", "fast")
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

    # seconds a record's counters live after its last event: longer than any event waits in a
    # backlog; a record quiet for longer starts again from 0, which is as good as where it stopped
    TTL = 3 * 24 * 3600
    # seconds an event's generation is kept: far longer than a dead worker's job takes to come back
    # (heartbeat TTL + maintenance interval) or RQ's retries of it (5, 30, 120 s)
    GEN_TTL = 24 * 3600
    # KEYS[1] done counter, KEYS[2] the event's ticket; ARGV[1] ticket, ARGV[2] ttl: raise the
    # counter, never lower it, and drop the ticket (only needed until the event is handled)
    DONE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
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
        """Number the event among its record's events. With `pipe` (the intake's MULTI) the script
        goes as EVAL with its text: by digest, a Redis that lost its scripts (a restart) would
        answer NOSCRIPT inside the transaction and the rest of it would still be applied."""
        keys = [self._key("order", event), self.keys("ticket", event["id"])]
        if pipe is None:
            self._ticket(keys=keys, args=[self.TTL])
        else:
            pipe.eval(self.TICKET, len(keys), *keys, self.TTL)

    def seq(self, event: dict[str, Any]) -> int | None:
        """The event's number, or None for events that were not numbered (timers, replays)."""
        if "seq" not in event:
            raw = self.store.get(self.keys("ticket", event["id"]))
            event["seq"] = int(raw) if raw else None
        return event["seq"]

    def is_turn(self, event: dict[str, Any], also: list[str] = ()) -> tuple[bool, list[bytes | None] | None]:
        """Is every earlier event of the record done? With the values of the keys `also` names,
        read in the same round trip on the event's first look (its ticket is read then); None on a
        later look (a deferred event, a second poll), when the caller reads them itself. A copy
        of the event that a deferral superseded (`superseded`) is never its turn."""
        done_key, gen_key = self._key("order-done", event), self.generation_key(event)
        values = None
        if "seq" in event:
            seq = event["seq"]
            done, gen = self.store.mget(done_key, gen_key) if seq else (None, self.store.get(gen_key))
        else:  # the first look: ticket, counter, generation (and the caller's keys) in one round trip
            raw, done, gen, *values = self.store.mget(self.keys("ticket", event["id"]), done_key, gen_key, *also)
            seq = event["seq"] = int(raw) if raw else None
        event["superseded"] = int(gen or 0) > int(event.get("gen", 0))
        return not event["superseded"] and (not seq or int(done or 0) >= seq - 1), values

    def generation_key(self, event: dict[str, Any]) -> str:
        """The number of the event's latest deferred copy (BackendRQ.defer_event)."""
        return self.keys("event-gen", event["id"])

    def hold_key(self, event: dict[str, Any]) -> str:
        """Set while one of the record's events is deferred on a rate limit (its number): the
        record's later events wait for it however long, instead of skipping it as missing."""
        return self._key("order-hold", event)

    def held(self, event: dict[str, Any]) -> bool:
        """Is an earlier event of the record, not done yet, deferred on a rate limit?"""
        hold, done = self.store.mget(self.hold_key(event), self._key("order-done", event))
        return hold is not None and int(hold) > int(done or 0) and int(hold) < int(event.get("seq") or 0)

    def done(self, event: dict[str, Any], pipe=None) -> Callable[[], Any] | None:
        """Raise the record's done counter to this event's number. With `pipe` (not a
        transaction) the script is queued there by its digest, and what runs it again, loading it,
        is returned for `finish_pipeline` (Redis may have lost the script: a restart)."""
        if not self.seq(event):
            return None
        keys, args = [self._key("order-done", event), self.keys("ticket", event["id"])], [event["seq"], self.TTL + 3600]
        if pipe is None:
            self._done(keys=keys, args=args)
            return None
        pipe.evalsha(self._done.sha, len(keys), *keys, *args)
        return lambda: self._done(keys=keys, args=args)


def finish_pipeline(results: list[Any], redo: list[Callable[[], Any]]) -> None:
    """After `pipe.execute(raise_on_error=False)` of a pipeline scripts were queued in by digest
    (Order.done): if Redis did not have a script (NOSCRIPT after a restart), run `redo` (raising a
    counter to a number is harmless twice); raise any other error of the pipeline."""
    if any(isinstance(r, NoScriptError) for r in results):
        for again in redo:
            again()
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, NoScriptError):
            raise result

class TimerIndex:
    """Pending timers by fire time (sorted set `timers`), their contents (hash `timer-data`), and
    each record's timer ids (a small set per record, `timers-of:<type>:<id>`, kept in step with
    the hash: `cli.py timers --entity` reads one record's timers, not every pending one).

    A timer is kept with what firing reads (pipeline/timers.py, worker.fire_timer: the rule, its
    time, the record, the event's kind, connection, data and time, which the rules' templates and
    guards read), compressed (`pack`). Not kept: the vendor's raw payload (nothing reads it when a
    timer fires: the record is read fresh), and what the key or the timer itself says already
    (its id is the hash's field; its event's record is the timer's record)."""

    # set once every timer kept before the per-record sets existed has been entered in them
    INDEXED = "timers-of-indexed"
    # a kept timer: this byte, then its JSON deflated with ZDICT (strings timers repeat; a kept
    # timer is a few hundred bytes, too short for deflate alone to find much). Changing ZDICT needs
    # a new version byte: timers kept with this one are read with it. JSON ("{…"): kept before.
    PACKED = b"\x01"
    ZDICT = (b'"occurred_at":"20","fire_at":"20","data":{"name":"","price":"","stage":{"id":""},'
             b'"previous_stage":{"id":""},"pipeline":{"id":""},"responsible":{"id":""},"fields":{"}},'
             b'"event":{"id":"","connection":"","source":"amocrm","kind":"stage.changed",'
             b'"entity":{"type":"lead","id":""},"rule":"","rule_id":"","timer_id":"timer:')

    def __init__(self, store: Redis, keys: Keys):
        self.store, self.keys = store, keys

    def _of(self, entity: dict[str, Any] | str) -> str:
        ref = entity if isinstance(entity, str) else f"{entity['type']}:{entity['id']}"
        return self.keys("timers-of", ref)

    @classmethod
    def pack(cls, timer: dict[str, Any]) -> bytes:
        """The timer as it is kept (see the class): compact JSON, deflated with ZDICT."""
        kept = {k: v for k, v in timer.items() if k != "timer_id"}
        event = kept.get("event")
        if isinstance(event, dict):
            kept["event"] = {k: v for k, v in event.items()
                             if k != "raw" and not (k == "entity" and v == timer.get("entity"))}
        text = json.dumps(kept, ensure_ascii=False, separators=(",", ":"), default=str).encode()
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, cls.ZDICT)
        return cls.PACKED + squeeze.compress(text) + squeeze.flush()

    @classmethod
    def unpack(cls, timer_id: str, raw: bytes) -> dict[str, Any]:
        """A kept timer as it was set (its event's raw payload: None)."""
        if raw[:1] != cls.PACKED:
            return json.loads(raw)   # kept before timers were packed
        unsqueeze = zlib.decompressobj(-15, zdict=cls.ZDICT)
        timer = json.loads(unsqueeze.decompress(raw[1:]) + unsqueeze.flush())
        timer["timer_id"] = timer_id
        if isinstance(timer.get("event"), dict):
            timer["event"].setdefault("entity", timer.get("entity"))
            timer["event"].setdefault("raw", None)
        return timer

    SPREAD = 0.001   # seconds: a timer's offset on the schedule is less than this (`score`)

    @classmethod
    def score(cls, timer_id: str, fire_at: str) -> float:
        """A timer's place on the schedule: its fire time and a sub-millisecond offset of its own
        (from its id), never before its time. Timers due at the same instant (every event outside
        working hours lands on the first second of the next working day) are thus taken in an
        order mixed across connections and rules, not by their ids, which name the connection:
        one client's thousands of timers do not all go to the queue before another's first. A
        timer whose time has come is on the schedule before `due_by(now)`."""
        return datetime.fromisoformat(fire_at).timestamp() + (zlib.crc32(timer_id.encode()) % 999 + 1) / 1e6

    @classmethod
    def due_by(cls, now: float) -> float:
        """The schedule's bound for the timers whose time is `now` or before."""
        return now + cls.SPREAD

    @classmethod
    def is_time_of(cls, timer: dict[str, Any], at: float) -> bool:
        """Was `at` (a score read from the schedule) this timer's time? Timers kept before scores
        had their offset are on the schedule at their plain fire time."""
        return at in (cls.score(timer["timer_id"], timer["fire_at"]),
                      datetime.fromisoformat(timer["fire_at"]).timestamp())

    def add(self, timer: dict[str, Any], pipe=None) -> None:
        target = pipe if pipe is not None else self.store
        target.zadd(self.keys("timers"), {timer["timer_id"]: self.score(timer["timer_id"], timer["fire_at"])})
        target.hset(self.keys("timer-data"), timer["timer_id"], self.pack(timer))
        target.sadd(self._of(timer["entity"]), timer["timer_id"])

    def remove(self, timer_id: str, pipe=None) -> None:
        timer = self.get(timer_id)   # its record's set (a timer id never changes records)
        target = pipe if pipe is not None else self.store.pipeline(transaction=False)
        target.zrem(self.keys("timers"), timer_id)
        target.hdel(self.keys("timer-data"), timer_id)
        if timer is not None:
            target.srem(self._of(timer["entity"]), timer_id)
        if pipe is None:
            target.execute()

    def get(self, timer_id: str) -> dict[str, Any] | None:
        raw = self.store.hget(self.keys("timer-data"), timer_id)
        return self.unpack(timer_id, raw) if raw else None

    def pending(self, entity: str | None = None) -> list[dict[str, Any]]:
        """Timers waiting to fire, earliest first; with `entity` ("lead:123"), that record's only,
        read from its set (milliseconds at any number of pending timers)."""
        if entity:
            return self._pending_of(entity)
        ids = self.store.zrange(self.keys("timers"), 0, -1)
        if not ids:
            return []
        return [self.unpack(i.decode(), t) for i, t in zip(ids, self.store.hmget(self.keys("timer-data"), ids)) if t]

    def _pending_of(self, entity: str) -> list[dict[str, Any]]:
        if not self.store.exists(self.keys(self.INDEXED)):
            self.index_all()
        key = self._of(entity)
        ids = sorted(self.store.smembers(key))
        if not ids:
            return []
        with self.store.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys("timer-data"), ids)
            pipe.zmscore(self.keys("timers"), ids)
            data, scores = pipe.execute()
        gone = [i for i, raw in zip(ids, data) if raw is None]
        if gone:   # removed by a process that kept no per-record sets (an older release)
            self.store.srem(key, *gone)
        # fired (off the schedule, its job queued or running) or gone: not pending
        found = [(score, self.unpack(i.decode(), raw)) for i, raw, score in zip(ids, data, scores)
                 if raw is not None and score is not None]
        return [timer for _, timer in sorted(found, key=lambda pair: pair[0])]

    def index_all(self, batch: int = 1000) -> int:
        """Enter every kept timer in its record's set (timers kept before the sets existed); once."""
        count = 0
        with self.store.pipeline(transaction=False) as pipe:
            for timer_id, raw in self.store.hscan_iter(self.keys("timer-data"), count=batch):
                pipe.sadd(self._of(self.unpack(timer_id.decode(), raw)["entity"]), timer_id)
                count += 1
                if count % batch == 0:
                    pipe.execute()
            pipe.set(self.keys(self.INDEXED), 1)
            pipe.execute()
        return count


class RQBackend:
    """Durable: events and timers are RQ jobs in Redis (JSON serializer, never pickle).

    Every job is written by RQ's own public API (`Queue.enqueue_call`, `enqueue_at`, `enqueue_in`,
    each with `pipeline=` where it must be atomic with keys of ours), so that any RQ release that
    keeps that API reads and runs them; Lua is used for our own keys only. The one exception is
    intake's fast path (rqintake.py, the default; CRMBRIDGE_INTAKE=rq turns it off), which applies
    RQ's recorded enqueue in a script of ours to keep a webhook's acknowledgement at one round trip."""

    durable = True
    # seconds the seen-mark of an event being queued lives before it is made permanent together with
    # the job: if this process dies in between (SIGKILL, gunicorn's timeout), the vendor's retry
    # after that is accepted, not taken for a duplicate
    PENDING_TTL = 60
    PENDING = b"queueing"
    # seconds a poller's claim on a due timer lives: a poller that dies between claim and enqueue
    # delays that timer by at most this much (the next poll after it claims it again)
    FIRE_CLAIM_TTL = 10
    # seconds a rate-limit hold on a record outlives its event's deferral: the time to run it then,
    # and RQ's scheduler lock (interval + 60 s) that a worker killed while holding it keeps
    HOLD_SLACK = 120

    def __init__(self, store: Redis, keys: Keys, queue_name: str, *, job_retries: int = 3):
        self.store, self.keys = store, keys
        self.queue = Queue(queue_name, connection=store, serializer=JSONSerializer)
        self.timers = TimerIndex(store, keys)
        self.order = Order(store, keys)
        self.retry = Retry(max=job_retries, interval=[5, 30, 120][:job_retries]) if job_retries else None
        self._on_failure = Callback("worker.on_job_failed")
        self.fast = FastIntake(self.queue, HANDLE_EVENT) if INTAKE == "fast" else None
        self._give_back = store.register_script(self.GIVE_BACK)
        self._claim_timer = store.register_script(self.CLAIM_TIMER)
        self._claim_timers = store.register_script(self.CLAIM_TIMERS)

    # KEYS[1] a seen-mark; ARGV[1] the value it has while its event is being queued
    GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

    def accept(self, event: dict[str, Any], seen: str, ttl: int) -> bool:
        """Mark the event seen, number it and queue it; False if it was seen before. One script
        (rqintake.py), or, with CRMBRIDGE_INTAKE=rq, accept_public."""
        if self.fast is None:
            return self.accept_public(event, seen, ttl)
        return self.fast.accept(event, self._event_options(event), seen=seen, ttl=ttl, order_ttl=Order.TTL,
                                order_key=self.order._key("order", event), ticket_key=self.keys("ticket", event["id"]))

    def accept_public(self, event: dict[str, Any], seen: str, ttl: int) -> bool:
        """accept() through RQ's public API alone, in two steps.

        The seen-mark is taken first (SET NX, marked "queueing", PENDING_TTL seconds): of two
        concurrent copies exactly one gets it. Then one MULTI/EXEC holds the rest: the mark
        made permanent (`ttl`), the order ticket, and the job as RQ's `Queue.enqueue_call` writes
        it (`pipeline=`); Redis applies all of it or none. If that fails, the mark is given back
        (only while it still says "queueing"), so the vendor's retry is not dropped as a
        duplicate; if even that cannot reach Redis, or this process dies between the two steps,
        the mark expires after PENDING_TTL seconds. So no event stays marked seen but not queued.
        """
        if not self.store.set(seen, self.PENDING, nx=True, ex=self.PENDING_TTL):
            return False
        try:
            with self.store.pipeline() as pipe:
                pipe.multi()   # first: RQ puts a pipeline it is given in MULTI, which must precede any command
                pipe.set(seen, 1, ex=ttl)
                self.order.ticket(event, pipe)
                self.queue.enqueue_call(HANDLE_EVENT, args=(event,), pipeline=pipe, **self._event_options(event))
                pipe.execute()
        except BaseException:
            try:
                self._give_back(keys=[seen], args=[self.PENDING])
            except RedisError as exc:   # Redis away: the mark expires after PENDING_TTL seconds
                log.warning("seen-mark %s not given back (%s); it expires in %s s", seen, exc, self.PENDING_TTL)
            raise
        return True

    def enqueue_event(self, event: dict[str, Any]) -> None:
        self.queue.enqueue_call(HANDLE_EVENT, args=(event,), **self._event_options(event))

    def call_at(self, when: datetime, func: str, arg: Any, key: str) -> None:
        """A periodic job of our own (catch-up) at `when`; one per key, however many workers ask."""
        self.queue.enqueue_at(when.astimezone(timezone.utc), func, arg, job_id=job_id_for("call", key),
                              result_ttl=300, failure_ttl=7 * 24 * 3600, retry=Retry(max=3, interval=[10, 60, 300]))

    def defer_event(self, event: dict[str, Any], seconds: float, *, hold: bool = False) -> None:
        """Try an event again `seconds` later (its record's earlier event is not done yet; or, with
        `hold`, a rate limit has no slot for it now: its record's later events keep waiting for it).

        The deferred copy is the event's next generation: its number is written in the same
        MULTI/EXEC as the job (RQ's `enqueue_in`, `pipeline=`), so a copy of an earlier generation
        (the job that deferred, given back by the maintenance after its worker died before RQ
        recorded it finished) finds itself superseded (Order.is_turn) and does nothing."""
        event["gen"] = int(event.get("gen", 0)) + 1
        options = self._event_options(event)
        options["job_id"] = job_id_for("event", f"{event['id']}#gen{event['gen']}")
        with self.store.pipeline() as pipe:
            pipe.multi()   # first: RQ puts a pipeline it is given in MULTI, which must precede any command
            pipe.set(self.order.generation_key(event), event["gen"], ex=Order.GEN_TTL)
            if hold and event.get("seq"):
                pipe.set(self.order.hold_key(event), event["seq"], ex=math.ceil(seconds) + self.HOLD_SLACK)
            self.queue.enqueue_in(timedelta(seconds=seconds), HANDLE_EVENT, event, pipeline=pipe, **options)
            pipe.execute()

    def _event_options(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._job_options(job_id_for("event", event["id"]),
                                 f"{event['kind']} {event['entity']['type']}:{event['entity']['id']}")

    def _job_options(self, job_id: str, description: str) -> dict[str, Any]:
        return dict(job_id=job_id, description=description, retry=self.retry, on_failure=self._on_failure,
                    result_ttl=RESULT_TTL, failure_ttl=30 * 24 * 3600)

    def schedule(self, timer: dict[str, Any]) -> None:
        """Set (or replace, or move) a timer: it is kept once, in our index (`timers` sorted by fire
        time, `timer-data`); `fire_due_timers` turns it into an RQ job when it is due."""
        with self.store.pipeline() as pipe:
            self.timers.add(timer, pipe)
            pipe.execute()

    # KEYS: the timers' schedule, the timer's claim. ARGV: timer id, its fire time as read, a token,
    # the claim's ttl. The timer is claimed only if it is still due at the time read (not moved or
    # cancelled since) and nobody holds a claim on it.
    CLAIM_TIMER = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then return 0 end
return 1
"""
    # The same for many timers at once. KEYS: the schedule, then each timer's claim. ARGV: a token,
    # the claim's ttl, then each timer's id and fire time as read. Returns the ids claimed.
    CLAIM_TIMERS = """
local claimed = {}
for i = 1, #KEYS - 1 do
  local id, at = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) == tonumber(at) and redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    claimed[#claimed + 1] = id
  end
end
return claimed
"""
    # KEYS: the timers' schedule, the timer's claim. ARGV: timer id, its fire time: off the schedule
    # if still at that time (a timer moved meanwhile stays, for its new time), and the claim released
    TAKE_OFF = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('DEL', KEYS[2])
return 1
"""

    def fire_due_timers(self, now: float | None = None, limit: int = 200) -> int:
        """Queue the timers whose time has come, at the front of the queue; how many.

        Every worker process calls this a few times a second (worker.py), so a timer fires
        within that interval of its exact time, never before it, and does not wait behind a
        backlog of webhooks. The job carries only the timer's id and time: `fire_timer` reads
        the timer from the index and does nothing if it was moved or cancelled meanwhile."""
        until = TimerIndex.due_by(time.time() if now is None else now)
        due = self.store.zrangebyscore(self.keys("timers"), "-inf", until, start=0, num=limit, withscores=True)
        if len(due) == limit:   # a herd: pollers of several workers each take a part of it at random
            waiting = self.store.zcount(self.keys("timers"), "-inf", until)
            start = random.randrange(0, max(1, waiting - limit + 1))
            if start:
                due = self.store.zrangebyscore(self.keys("timers"), "-inf", until, start=start, num=limit,
                                               withscores=True)
        if not due:
            return 0
        # claimed together, queued together: a handful of round trips for the whole batch
        token = uuid.uuid4().hex
        due = [(raw.decode() if isinstance(raw, bytes) else raw, at) for raw, at in due]
        keys = [self.keys("timers"), *(self.keys("timer-claim", timer_id) for timer_id, _ in due)]
        args = [token, self.FIRE_CLAIM_TTL, *(v for timer_id, at in due for v in (timer_id, repr(at)))]
        claimed = {c.decode() if isinstance(c, bytes) else c for c in self._claim_timers(keys=keys, args=args)}
        # each goes to the front: the earliest due ends up first
        return self._enqueue_all_claimed([(t, at) for t, at in reversed(due) if t in claimed], token)

    def _enqueue_all_claimed(self, timers: list[tuple[str, float]], token: str) -> int:
        """`_enqueue_claimed` for a batch in one MULTI/EXEC (every claim WATCHed); how many were
        queued. A claim that changed meanwhile aborts the batch: each is then queued on its own."""
        if not timers:
            return 0
        claims = [self.keys("timer-claim", timer_id) for timer_id, _ in timers]
        with self.store.pipeline() as pipe:
            try:
                pipe.watch(*claims)
                mine = [(t, at, claim) for (t, at), claim, held in zip(timers, claims, pipe.mget(claims))
                        if held == token.encode()]
                pipe.multi()
                for timer_id, at, claim in mine:
                    self.queue.enqueue_call(FIRE_TIMER, args=({"timer_id": timer_id, "at": at},), at_front=True,
                                            pipeline=pipe, **self._job_options(
                                                job_id_for("timer", f"{timer_id}@{at!r}"), f"timer {timer_id}"))
                    pipe.eval(self.TAKE_OFF, 2, self.keys("timers"), claim, timer_id, repr(at))
                pipe.execute()
                return len(mine)
            except WatchError:
                pass
        return sum(self._enqueue_claimed(timer_id, at, token) for timer_id, at in timers)

    def _claim(self, timer_id: str, at: float) -> str | None:
        """Claim a due timer for this poller (a token), or None: taken, moved or cancelled."""
        token = uuid.uuid4().hex
        keys = [self.keys("timers"), self.keys("timer-claim", timer_id)]
        return token if self._claim_timer(keys=keys, args=[timer_id, repr(at), token, self.FIRE_CLAIM_TTL]) else None

    def _enqueue_claimed(self, timer_id: str, at: float, token: str) -> bool:
        """Queue a claimed timer's job and take the timer off the schedule, in one MULTI/EXEC.

        Why claim, then enqueue, and not the other way round: RQ's public enqueue cannot be made
        conditional, and a job queued twice would run twice, possibly at once on two workers,
        before `fire_timer`'s stale check could tell. So the condition lives in keys of ours: the
        claim (CLAIM_TIMER: one poller per timer) is WATCHed and read back before the MULTI, and
        the MULTI holds the job (RQ's `enqueue_call`, `pipeline=`, at the front), the timer taken
        off the schedule and the claim released. A poller that dies after its claim leaves the
        timer on the schedule; its claim expires after FIRE_CLAIM_TTL seconds and the next poll
        claims and queues it. A poller that stalled past its claim's expiry finds the claim gone
        or another's and queues nothing (a claim changed after the WATCH aborts the EXEC). The job
        id is deterministic (timer id and time), so even a repeat would be the same RQ job."""
        claim = self.keys("timer-claim", timer_id)
        job = {"timer_id": timer_id, "at": at}
        with self.store.pipeline() as pipe:
            try:
                pipe.watch(claim)
                if pipe.get(claim) != token.encode():
                    return False
                pipe.multi()
                self.queue.enqueue_call(FIRE_TIMER, args=(job,), at_front=True, pipeline=pipe,
                                        **self._job_options(job_id_for("timer", f"{timer_id}@{at!r}"),
                                                            f"timer {timer_id}"))
                pipe.eval(self.TAKE_OFF, 2, self.keys("timers"), claim, timer_id, repr(at))
                pipe.execute()
            except WatchError:
                return False
        return True

    def cancel(self, timer_id: str) -> bool:
        existed = self.timers.get(timer_id) is not None
        self.timers.remove(timer_id)
        try:  # a timer set before timers were kept in the index only: its job waits in RQ's schedule
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
        try:
            self.order.ticket(event)
        except Exception:   # not queued: the vendor's retry must not be taken for a duplicate
            self.store.delete(seen)
            raise
        self._queue.put(("event", event))
        return True

    def enqueue_event(self, event: dict[str, Any]) -> None:
        self._queue.put(("event", event))

    def defer_event(self, event: dict[str, Any], seconds: float, *, hold: bool = False) -> None:
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
