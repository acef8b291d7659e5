"""How every crmbridge process reaches Redis: one address (REDIS_URL), or the primary that Redis
Sentinel names (REDIS_SENTINELS, REDIS_SENTINEL_SERVICE), followed across a fail-over.

With Sentinel, the client is redis-py's `Sentinel.master_for`: each new connection asks the
Sentinels for the primary's address, a connection to a primary that died fails (and is made again
by redis-py's retries, to the primary the Sentinels name by then), and a connection to a former
primary that came back as a replica fails on its first write (READONLY) and is dropped. So the web
process and the workers follow a fail-over without a restart; what fails meanwhile is a
`RedisError` like any outage (webhooks: 503; workers: `rqworker.run_supervised` waits and starts
its work loop again).

REDIS_URL still gives the database number, user, password and TLS of the primary (its host and
port are not used when Sentinels are named); REDIS_SENTINEL_PASSWORD, the Sentinels' own password.

`replicated` is intake's optional wait for replicas (CRMBRIDGE_INTAKE_WAIT_REPLICAS): Redis's
WAIT on the connection that wrote, so that a webhook is acknowledged only once a replica has it.
WAIT counts "the write commands sent in the context of the current connection" and does not block
inside MULTI or a script (redis.io/commands/wait): so it follows the write in a plain pipeline.
"""
from __future__ import annotations

from typing import Any

from redis import Redis
from redis.connection import parse_url
from redis.exceptions import RedisError
from redis.sentinel import Sentinel, SentinelConnectionPool

# socket timeouts of every client the service makes (a dead primary is noticed within these)
TIMEOUTS = dict(socket_timeout=5, socket_connect_timeout=2)
# the pool's own objects, never handed to a second pool (redis-py's maintenance-notifications
# handler; a Sentinel pool's proxy back to itself)
_POOL_OWN = ("connection_pool", "connection_class")


class NotReplicated(RedisError):
    """Intake wrote the event, but fewer replicas than asked for acknowledged it in time: the
    webhook is answered 503 (the vendor sends it again; that copy is a duplicate, or, if the
    primary died with the write, accepted anew by the primary that took over)."""


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (a port-less host is Sentinel's 26379) -> ((host, port), …)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, "26379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_SENTINELS: expected host:port[,host:port…], found {part!r}")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("REDIS_SENTINELS is set but names no Sentinel (expected host:port[,host:port…])")
    return tuple(out)


def connect(settings: Any, **options: Any) -> Redis:
    """The service's Redis client: REDIS_URL's server, or the Sentinels' primary."""
    options = {**TIMEOUTS, **options}
    if not getattr(settings, "redis_sentinels", ()):
        return Redis.from_url(settings.redis_url, **options)
    primary = {k: v for k, v in parse_url(settings.redis_url).items() if k not in ("host", "port", "path")}
    sentinel_kwargs = dict(TIMEOUTS)
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(list(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(settings.redis_sentinel_service, **{**primary, **options})


def fresh(connection: Redis) -> Redis:
    """A client on a new pool of its own with the same settings (and, for a Sentinel client, the
    same Sentinels and service)."""
    pool = connection.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if not k.endswith("_pool_handler") and k not in _POOL_OWN}
    if isinstance(pool, SentinelConnectionPool):
        return pool.sentinel_manager.master_for(pool.service_name, **kwargs)
    return Redis(connection_pool=pool.__class__(connection_class=pool.connection_class, **kwargs))


def replicated(pipe: Any, replicas: int, timeout_ms: int) -> None:
    """Queue WAIT on `pipe` (a non-transactional pipeline: one connection, after its writes)."""
    pipe.execute_command("WAIT", replicas, timeout_ms)


def replicate(connection: Redis, marker: str, replicas: int, timeout_ms: int,
              present: str | None = None) -> tuple[int, bool]:
    """How many replicas have every write this process made so far, waiting up to timeout_ms for
    `replicas` of them: a small write of our own (`marker`), then WAIT on the same connection.
    Replication is one ordered stream, so a replica that has the marker has every write answered
    before it was sent, on any connection of this process, to this server. Also whether the key
    `present` is on the server that answered (None: not asked): a connection made again meanwhile may
    have reached another server (a new primary), where the process's earlier writes are not."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.set(marker, 1, px=max(1000, 2 * timeout_ms))
        if present is not None:
            pipe.exists(present)
        replicated(pipe, replicas, timeout_ms)
        answers = pipe.execute()
    return int(answers[-1]), present is None or bool(answers[1])


def rediscover(connection: Redis) -> None:
    """Drop the idle connections of a Sentinel client, so that the next one asks the Sentinels where
    the primary is. redis-py asks only when it connects and keeps a connection while it works: after
    a fail-over that went wrong (two replicas promoted one after the other, or an old primary back at
    its address), a connection can stay on a server that is a primary no replica follows, and that
    the Sentinels make a replica later (wiping what was written there). Nothing for a plain client."""
    pool = connection.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.disconnect(inuse_connections=False)


def check_replicas(acknowledged: int, replicas: int, timeout_ms: int) -> None:
    if acknowledged < replicas:
        raise NotReplicated(f"{acknowledged} of {replicas} replica(s) acknowledged the write "
                            f"within {timeout_ms} ms")
