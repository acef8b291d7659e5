"""Intake's fast path: mark an event seen, number it and queue its RQ job in one Redis round trip.

Why it exists. The public path (`queueing.RQBackend.accept_public`: the seen-mark by SET NX, then
RQ's `Queue.enqueue_call` in a MULTI with the ticket) costs per webhook a second round trip and an
RQ `Job` built, serialized and compressed by RQ. Measured (BENCHMARKS.md, "Fourth session"): the
receiver's CPU per webhook in-process 0.90–1.45 ms on that path, 0.62–0.92 ms on this one, 0.48–0.63
ms before issue 13 (the Flask view accounts for this path's difference); under gunicorn, intake
0.37–0.63× the baseline's on that path, 0.65–0.71× on this one (the target is 0.6×). This path keeps
RQ the author of the job:

- once per process, the first event's job is queued by RQ's own `Queue.enqueue_call` on a
  pipeline that is recorded, not executed (`pipeline=`, RQ's public way to batch its writes), so
  the commands are exactly what this RQ version writes (the job hash, the queue, RQ's set of
  queues, whatever else it adds);
- every job after that is the recording with what differs from job to job replaced: the job id
  (in key names and values) and the hash fields in VARYING;
- one Lua script checks and sets the seen-mark, takes the order ticket and applies the commands:
  Redis runs it alone, so of two concurrent copies exactly one is queued and nothing is left
  marked seen but not queued.

What it relies on beyond RQ's public API: that only the job id and the VARYING fields differ from
one of our event jobs to the next, that `data` is RQ's zlib-compressed (function, instance, args,
kwargs) in the queue's serializer, and redis-py's `Pipeline.command_stack`.
tests/test_webhooks.py::test_the_fast_intake_writes_what_rqs_enqueue_writes compares both paths
key by key and field by field with the installed RQ (2.12 and 3.0 were tried): when it fails, RQ
changed; CRMBRIDGE_INTAKE=rq puts production on the public path meanwhile.
"""
from __future__ import annotations

import zlib
from typing import Any

from redis.exceptions import NoScriptError
from rq import Queue
from rq.utils import now, utcformat

from redisconn import check_replicas, rediscover, replicated

VARYING = ("data", "description", "created_at", "enqueued_at")


class FastIntake:
    """Queues jobs of one function on one queue, as `queue.enqueue_call` would, in one script."""

    # KEYS: seen-mark, the record's order counter, this event's ticket. ARGV: seen ttl, order ttl,
    # then RQ's commands, each as its length followed by the command and its arguments.
    ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], seq, 'EX', ARGV[2])
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return seq
"""

    def __init__(self, queue: Queue, func: str):
        self.queue, self.func = queue, func
        self._script = queue.connection.register_script(self.ACCEPT)
        # the recorded commands, flattened, and where each thing that differs per job goes in them:
        # one attribute, set once, so that a thread never sees one without the other
        self._recording: tuple[list[Any], list[tuple[int, str]]] | None = None
        # (replicas, ms): answer only once that many replicas have the write (CRMBRIDGE_INTAKE_WAIT_REPLICAS)
        self.wait: tuple[int, int] | None = None

    def accept(self, arg: Any, options: dict[str, Any], *, seen: str, ttl: int,
               order_key: str, ticket_key: str, order_ttl: int) -> bool:
        """Mark `seen`, take the ticket and queue func(arg) with RQ's `options`; False if seen before."""
        commands = self.commands(arg, options)
        keys, args = [seen, order_key, ticket_key], [ttl, order_ttl, *commands]
        if self.wait is None:
            return bool(self._script(keys=keys, args=args))
        return self._accept_replicated(keys, args, *self.wait)

    def _accept_replicated(self, keys: list[str], args: list[Any], replicas: int, timeout_ms: int) -> bool:
        """The script, then WAIT, in one round trip on one connection (WAIT counts the replicas that
        have this connection's writes). NotReplicated (a RedisError: 503) if too few have it.

        A duplicate wrote nothing here, and its seen-mark may be another request's write that no
        replica has yet (the vendor's retry of a webhook answered 503): a small write of our own,
        then WAIT, covers it too, as replication is one ordered stream."""
        conn = self.queue.connection
        for _ in range(2):
            with conn.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                replicated(pipe, replicas, timeout_ms)
                result, acknowledged = pipe.execute(raise_on_error=False)
            if not isinstance(result, NoScriptError):
                break
            self._script.sha = conn.script_load(self.ACCEPT)   # a restarted or promoted Redis
        for answer in (result, acknowledged):
            if isinstance(answer, Exception):
                raise answer
        if not result:
            with conn.pipeline(transaction=False) as pipe:
                pipe.set(f"{keys[0]}:replicated", 1, px=2000)
                replicated(pipe, replicas, timeout_ms)
                acknowledged = pipe.execute()[1]
        if acknowledged < replicas:   # this server may be a primary the Sentinels no longer name
            rediscover(conn)
        check_replicas(acknowledged, replicas, timeout_ms)
        return bool(result)

    def commands(self, arg: Any, options: dict[str, Any]) -> list[Any]:
        """The commands `queue.enqueue_call(func, args=(arg,), **options)` sends, flattened for the
        script (length, command, arguments, length, …). `options` must name the job (`job_id`) and
        be the same for every job but `job_id` and `description`."""
        job_id = options["job_id"]
        if self._recording is None:
            return self._record(arg, options)
        template, slots = self._recording
        stamp = utcformat(now())
        values = {"id": job_id, "key": self.queue.job_class.key_for(job_id), "created_at": stamp,
                  "enqueued_at": stamp, "description": options.get("description"),
                  # level 1: a third of the default level's CPU for a few more bytes; RQ reads any level
                  "data": zlib.compress(self.queue.serializer.dumps((self.func, None, (arg,), {})), 1)}
        commands = list(template)
        for index, name in slots:
            commands[index] = values[name]
        return commands

    def _record(self, arg: Any, options: dict[str, Any]) -> list[Any]:
        """RQ's own enqueue of the first job, on a pipeline that is never executed."""
        job_id = options["job_id"]
        recorder = self.queue.connection.pipeline()
        try:
            self.queue.enqueue_call(self.func, args=(arg,), pipeline=recorder, **options)
            recorded = [args for args, _ in recorder.command_stack]
        finally:
            recorder.reset()
        key = self.queue.job_class.key_for(job_id)
        flat: list[Any] = []
        slots: list[tuple[int, str]] = []
        for args in recorded:
            start = len(flat) + 1
            flat.append(len(args))
            flat.extend(args)
            for offset, value in enumerate(args):
                if value == key:
                    slots.append((start + offset, "key"))
                elif value == job_id:
                    slots.append((start + offset, "id"))
            if args[0].upper() == "HSET" and args[1] == key:
                for offset in range(2, len(args) - 1, 2):
                    if args[offset] in VARYING:
                        slots.append((start + offset + 1, args[offset]))
        self._recording = (flat, slots)
        return list(flat)
