"""What bench/run.py and bench/profiling.py share: processes, fakes, configuration, webhooks.

Everything runs on 127.0.0.1. The benchmark's Redis is database 10 of 127.0.0.1:6379
(BENCH_REDIS_URL to change it); only that database is ever flushed. Every process started
here is recorded and ended, by its own id (and its own process group), by `Procs.stop_all()`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
PYTHON = sys.executable
QUICKSTART = ROOT / "config" / "examples" / "quickstart"
TEMPLATE = ROOT / "tests" / "payloads" / "amocrm" / "lead_status_changed_full.form"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
TEMPLATE_LEAD = b"31926520"
AMO_SECRET = "bench-amo-secret"
TG_SECRET = "bench-tg-secret"
CHAT = "-1001234567890"
GUNICORN_WORKERS = 4      # README, Production
KEY_RE = re.compile(r"#(\d+)")

BENCH_RULES = """\
# The benchmark's rules: one Telegram message per "Brief received" webhook (the quickstart's
# message, plus the lead id so that the fake Telegram can match it to its webhook), and a
# delayed rule whose timers bench/run.py creates directly. Each lead's message goes to a chat
# of its own: Telegram allows 1 message/s per chat and 20/minute per group, and the connector
# enforces that; sent to one team chat, the benchmark would measure that quota.
defaults:
  connection: quickstart-amo

rules:
  - name: Bench - brief received, team notice
    on:
      event: stage.changed
      stage: ["Brief received", "10216994"]
    do:
      - send_message:
          connection: quickstart-bot
          chat: "{{ entity.id }}"
          text: |
            📥 Бриф отримано / Brief received: {{ entity.name }} #{{ entity.id }}
            Бюджет / Budget: {{ entity.price or '—' }}
            {% for name, value in (entity.fields or {}).items() %}{{ name }}: {{ value }}
            {% endfor %}

  - name: Bench - timer
    on: {event: note.added}
    after: 1 hour
    do:
      - send_message: {connection: quickstart-bot, chat: "{{ entity.id }}", text: "⏰ timer #{{ entity.id }}"}
"""
TIMER_RULE = "Bench - timer"


# --- processes --------------------------------------------------------------------------------

class Procs:
    """Every process the benchmark starts, each in its own process group, ended by id."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path = ROOT,
              stdin: Any = subprocess.DEVNULL, stdout: Any = None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 (the child writes to it; closed on exit)
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=stdout or log, stderr=log,
                                start_new_session=True)
        proc.bench_name = name  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        """SIGTERM to the process's own group (gunicorn's workers, RQ's scheduler), then SIGKILL."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout) if timeout else None
            except subprocess.TimeoutExpired:
                pass
        try:  # anything left in the group (a worker's scheduler child) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(2)
        if proc.stdin:
            proc.stdin.close()

    def stop_many(self, procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
        """SIGTERM to all of them at once, then wait for each (SIGKILL what is left)."""
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(Exception):  # keep stopping the others
                self.stop(proc, timeout=0)

    def stop_all(self) -> None:
        self.stop_many(list(reversed(self.started)), timeout=5.0)
        self.started.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """The pid and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


class Background:
    """Samples, once a second, the CPU used by processes that are not this benchmark's (other
    people's tests on a shared machine), in cores. The shared redis-server is left out: its
    work is partly ours. `mean(t0, t1)` is the average over a phase."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        import threading
        self.exclude = exclude or set()
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _scan() -> dict[int, tuple[int, int, int]]:
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    found[int(entry)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
                except (OSError, IndexError, ValueError):
                    continue
        return found  # pid: (ppid, start time, cpu ticks)

    def _run(self) -> None:
        me = os.getpid()
        prev, t_prev = self._scan(), time.monotonic()
        while not self._stop.wait(1.0):
            now, t_now = self._scan(), time.monotonic()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in now.items():
                children.setdefault(ppid, []).append(pid)
            ours, todo = set(), [me]
            while todo:
                p = todo.pop()
                ours.add(p)
                todo.extend(children.get(p, []))
            ticks = 0
            for pid, (_, start, cpu) in now.items():
                if pid in ours or pid in self.exclude:
                    continue
                before = prev.get(pid)
                ticks += cpu - before[2] if before and before[1] == start else cpu if pid not in prev else 0
            self.samples.append((time.time(), ticks / self._tick / max(1e-9, t_now - t_prev)))
            prev, t_prev = now, t_now

    def start(self) -> Background:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def mean(self, t0: float, t1: float) -> float:
        values = [v for t, v in self.samples if t0 <= t <= t1 + 1.0]
        return sum(values) / len(values) if values else float("nan")


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{getattr(proc, 'bench_name', proc.args)} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# --- Redis --------------------------------------------------------------------------------------

def redis() -> Redis:
    return Redis.from_url(REDIS_URL)


def flush(store: Redis) -> None:
    """Empty the benchmark's own database (and only that one)."""
    assert store.connection_pool.connection_kwargs.get("db") == int(REDIS_URL.rsplit("/", 1)[1])
    store.flushdb()


# --- the fakes ----------------------------------------------------------------------------------

class Fake:
    """A fake vendor in its own process (bench/fakes.py)."""

    def __init__(self, procs: Procs, kind: str) -> None:
        self.kind = kind
        self.proc = procs.start(f"fake-{kind}", [PYTHON, str(BENCH / "fakes.py"), kind], dict(os.environ),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Its address, once it listens (the first use waits for that)."""
        if self._url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"fake {self.kind} did not start; see its log")
            self._url = json.loads(line)["url"]
        return self._url

    def deliveries(self) -> list[tuple[float, str]]:
        """Every stamped sendMessage since the last reset."""
        got = requests.get(f"{self.url}/_bench/deliveries", params={"since": 0}, timeout=30).json()
        return [tuple(d) for d in got["deliveries"]]

    def reset(self) -> None:
        requests.post(f"{self.url}/_bench/reset", timeout=10)


def collect(tg: Fake, keys: set[str], prefix: str, timeout: float, settle: float = 0.5) -> dict[str, list[float]]:
    """Wait until each key has a message starting with `prefix` (or the timeout); then a
    little longer, so that a message sent twice shows as twice. {key: [times received]}"""
    def received() -> dict[str, list[float]]:
        got: dict[str, list[float]] = {}
        for stamp, text in tg.deliveries():
            m = KEY_RE.search(text) if text.startswith(prefix) else None
            if m:
                got.setdefault(m.group(1), []).append(stamp)
        return got

    deadline = time.monotonic() + timeout
    while not (keys <= received().keys() or time.monotonic() > deadline):
        time.sleep(0.05)
    if settle:
        time.sleep(settle)
    return received()


# --- crmbridge's configuration and environment --------------------------------------------------

def make_config(workdir: Path) -> Path:
    """The quickstart configuration, copied; vendor rate limits raised; the bench rules."""
    target = workdir / "config"
    shutil.copytree(QUICKSTART, target)
    for path in (target / "rules").glob("*.yaml"):
        path.unlink()
    (target / "rules" / "bench.yaml").write_text(BENCH_RULES, encoding="utf-8")
    conns_path = target / "connections.yaml"
    doc = yaml.safe_load(conns_path.read_text(encoding="utf-8"))
    for conn in doc["connections"].values():
        # amoCRM allows 7 requests/s and Telegram 30 messages/s per bot: kept, they would
        # measure the vendors' quotas. The shared token bucket still runs on every call.
        conn.setdefault("options", {}).update(rate_per_second=1_000_000, burst=1_000_000)
    conns_path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def crm_env(config_dir: Path, amo: Fake, tg: Fake, redis_url: str = REDIS_URL) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update(REDIS_URL=redis_url, CRMBRIDGE_CONFIG=str(config_dir), AMO_BASE_URL=amo.url,
               AMO_TOKEN="amo-token", AMO_WEBHOOK_SECRET=AMO_SECRET, TELEGRAM_API_URL=tg.url,
               TELEGRAM_BOT_TOKEN="123456:BENCH-token", TELEGRAM_WEBHOOK_SECRET=TG_SECRET,
               TEAM_CHAT_ID=CHAT, PYTHONUNBUFFERED="1",
               # keep finished jobs' hashes for 5 minutes (production keeps none): their started/ended
               # stamps split the end-to-end time into queue wait and job
               CRMBRIDGE_RESULT_TTL="300")
    if "CRMBRIDGE_INTAKE" in os.environ:   # `CRMBRIDGE_INTAKE=rq bench/run.py`: measure the public path
        env["CRMBRIDGE_INTAKE"] = os.environ["CRMBRIDGE_INTAKE"]
    return env


class Web:
    """A gunicorn as README's Production section runs it (4 sync workers)."""

    def __init__(self, procs: Procs, name: str, app: str, env: dict[str, str], cwd: Path,
                 workers: int = GUNICORN_WORKERS) -> None:
        self.port = free_port()
        self.name = name
        self.proc = procs.start(name, [str(BIN / "gunicorn"), "--workers", str(workers), "--bind",
                                       f"127.0.0.1:{self.port}", app], env, cwd=cwd)

    def ready(self, timeout: float = 60.0) -> Web:
        wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout, self.proc)
        deadline = time.monotonic() + timeout  # every worker booted (gunicorn boots them lazily)
        while len(tree(self.proc.pid)) < GUNICORN_WORKERS + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        return self

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def worker_pids(self) -> list[int]:
        return [p for p in self.pids() if p != self.proc.pid]


# --- webhooks -----------------------------------------------------------------------------------

class Webhooks:
    """Real amoCRM status webhooks (the recorded template), each about a lead of its own, so
    that no two are duplicates and none waits for another's turn."""

    def __init__(self, first_lead: int = 40_000_000) -> None:
        self.template = TEMPLATE.read_bytes()
        assert self.template.count(TEMPLATE_LEAD) == 1
        self.next_lead = first_lead

    def body(self, lead: int) -> bytes:
        return self.template.replace(TEMPLATE_LEAD, str(lead).encode())

    def stream(self, port: int, path: str) -> Iterator[tuple[str, bytes]]:
        from load import build_request
        while True:
            lead = self.next_lead
            self.next_lead += 1
            yield str(lead), build_request("127.0.0.1", port, path, self.body(lead),
                                           "application/x-www-form-urlencoded")


def crm_path() -> str:
    return f"/hooks/quickstart-amo?token={AMO_SECRET}"


LOCK_PATH = Path(tempfile.gettempdir()) / "crmbridge-bench.lock"


def exclusive(wait: float):
    """One benchmark at a time on this machine (they share database 10 and flush it): an
    flock on LOCK_PATH, waited for up to `wait` seconds. Returns the open lock file, or None."""
    import fcntl
    handle = open(LOCK_PATH, "a")  # noqa: SIM115 (held for the run: the flock lives as long as it)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.5)


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="crmbridge-bench-"))
