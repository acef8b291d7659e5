"""A Redis primary, its replicas and three Sentinels of the test's own on free loopback ports (Debian's
redis-server runs as a Sentinel with `--sentinel`), each in a temporary directory, all SIGKILLed when
the context ends. Sentinel is set to act fast: a primary is down after 1 s without an answer, a
fail-over is given 5 s.

Ports: CRMBRIDGE_TEST_SENTINEL_PORTS=`first-last` keeps every server and Sentinel in that range (a
machine shared by several runs gives each its own range); by default the primary is in 16400-16499,
the replicas in 16500-16599, the Sentinels in 26400-26499."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Self

import pytest
from redis import Redis

from tests.reliability.harness import RedisServer, free_port, wait_until

SERVICE = "crmbridge"


def _answer(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - not answering, for any reason, is the answer
        return None


class _Ports:
    """Free loopback ports, each taken once (a port given out but not yet bound would look free)."""

    def __init__(self) -> None:
        text = os.environ.get("CRMBRIDGE_TEST_SENTINEL_PORTS", "")
        first, _, last = text.partition("-")
        if text and not (first.isdigit() and last.isdigit() and int(first) < int(last)):
            raise ValueError(f"CRMBRIDGE_TEST_SENTINEL_PORTS: expected first-last, found {text!r}")
        self.range = (int(first), int(last) + 1) if text else None
        self.next = {"primary": 16400, "replica": 16500, "sentinel": 26400}
        self.taken: set[int] = set()

    def take(self, kind: str) -> int:
        lo, hi = self.range or (self.next[kind], {"primary": 16500, "replica": 16600, "sentinel": 26500}[kind])
        while lo < hi:
            port = free_port(lo, hi)
            lo = port + 1
            if port not in self.taken:
                self.taken.add(port)
                if not self.range:
                    self.next[kind] = port + 1
                return port
        raise RuntimeError(f"no free port for a {kind} in {self.range or kind}")


def _reset_all(held: socket.socket) -> None:
    """Accept and reset every connection to a held port, until it is closed."""
    while True:
        try:
            conn, _ = held.accept()
        except OSError:
            return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def _own(server: "RedisServer | SentinelProcess") -> None:
    """The server answering on the port is the one this test started (not another run's that held
    the port first: its data and its Sentinels would mix with ours)."""
    conn = Redis(port=server.port, socket_timeout=2)
    try:
        pid = int(conn.info("server")["process_id"])
    finally:
        conn.close()
    if server.proc is None or pid != server.proc.pid:
        raise RuntimeError(f"port {server.port} is answered by another redis-server (pid {pid})")


class SentinelProcess:
    def __init__(self, data_dir: Path, port: int, primary_port: int, quorum: int, down_after_ms: int,
                 failover_timeout_ms: int):
        self.dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.conf = data_dir / "sentinel.conf"   # Sentinel rewrites it: it must be its own, writable
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {data_dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.log = open(data_dir / "sentinel.log", "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(["redis-server", str(self.conf), "--sentinel"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.client = Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)

    def master(self) -> dict | None:
        return _answer(lambda: self.client.sentinel_master(SERVICE))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.client.close()
        self.log.close()


class SentinelCluster:
    """primary (RedisServer, AOF always), `replicas` RedisServers replicating it, 3 Sentinels."""

    def __init__(self, root: Path, *, replicas: int = 1, down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.root, self.n_replicas = root, replicas
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.servers: list[RedisServer] = []
        self.sentinels: list[SentinelProcess] = []
        self.held: list[socket.socket] = []

    def __enter__(self) -> Self:
        try:
            ports = _Ports()
            primary = RedisServer(self.root / "primary", port=ports.take("primary"))
            primary.start()
            self.servers.append(primary)
            for i in range(self.n_replicas):
                replica = RedisServer(self.root / f"replica-{i}", port=ports.take("replica"),
                                      extra_args=("--replicaof", "127.0.0.1", str(primary.port)))
                replica.start()
                self.servers.append(replica)
            for server in self.servers:
                _own(server)
            probe = Redis(port=primary.port, socket_timeout=1, decode_responses=True)
            if not wait_until(lambda: (_answer(probe.info) or {}).get("connected_slaves") == self.n_replicas
                              and all(self.link_up(s) for s in self.servers[1:]), 30, interval=0.1):
                raise RuntimeError("the replicas did not catch up with the primary")
            probe.close()
            for i in range(3):
                self.sentinels.append(SentinelProcess(self.root / f"sentinel-{i}", ports.take("sentinel"),
                                                      primary.port, 2, self.down_after_ms, self.failover_timeout_ms))
            # each Sentinel has found the replicas and the two other Sentinels (their hello messages)
            if not wait_until(lambda: all((m := s.master()) and int(m.get("num-other-sentinels", 0)) == 2
                                          and int(m.get("num-slaves", 0)) == self.n_replicas
                                          for s in self.sentinels), 30, interval=0.2):
                raise RuntimeError("the Sentinels did not find each other and the replicas")
            for s in self.sentinels:
                _own(s)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.sentinels:
            s.kill()
        for server in self.servers:
            server.kill()
        for held in self.held:
            try:
                held.shutdown(socket.SHUT_RDWR)   # wakes its accept()
            except OSError:
                pass
            held.close()

    def kill(self, port: int) -> None:
        """SIGKILL the server on `port`, as when its machine dies, and keep the port taken while the
        Sentinels live: a connection is accepted and reset at once, as a dead server's is refused. A
        redis-server of another run that took the freed port would be a master at an address the
        Sentinels know: clients could write to it until the Sentinels made it a replica (wiping those
        writes), which is not the fail-over this cluster plays."""
        self.server_on(port).kill()
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # over the dead server's TIME_WAITs
        held.bind(("127.0.0.1", port))
        held.listen(64)
        self.held.append(held)
        threading.Thread(target=_reset_all, args=(held,), daemon=True).start()

    @staticmethod
    def link_up(server: RedisServer) -> bool:
        conn = Redis(port=server.port, socket_timeout=1)
        try:
            return (_answer(lambda: conn.info("replication")) or {}).get("master_link_status") == "up"
        finally:
            conn.close()

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for the service."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def primary_port(self) -> int | None:
        """The primary as the Sentinels' majority names it now."""
        ports = [int(m["port"]) for s in self.sentinels if (m := s.master())]
        best = max(set(ports), key=ports.count, default=None)
        return best if best is not None and ports.count(best) >= 2 else None

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)
