"""The reliability suite's tools: scripted fake vendors, the web app on a real socket, worker
processes that can be SIGKILLed and restarted, a Redis server of our own, posting at volume, and
the tally of what the vendors received.

Everything is loopback and bounded: every wait has a deadline, every loop a maximum count, and
every process started here is killed by the context manager that started it.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
import yaml
from redis import Redis
from werkzeug.serving import make_server

from config.settings import Settings
from tests.fakes import Call, FakeAmo, FakeTelegram

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = ROOT / "tests" / "payloads"
QUICKSTART = ROOT / "config" / "examples" / "quickstart"
# the same variable and default as tests/conftest.py
TEST_REDIS_URL = os.environ.get("CRMBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TG_TOKEN = "123456:TEST-token"
AMO_SECRET, TG_SECRET = "amo-secret", "tg-secret"
TEAM_CHAT = "-1001234567890"
FORM = "application/x-www-form-urlencoded"
LEAD_NAME = "Reliability lead {}"
LEAD_IN_TEXT = re.compile(r"Reliability lead (\d+)")
QUICKSTART_MESSAGE = re.compile(r"Brief received: Reliability lead (\d+)")   # the quickstart rule's message
BRIEF_RECEIVED, BRIEF_PIPELINE = 10216994, 2116


# --- bounded waiting --------------------------------------------------------------------------

def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
               max_polls: int = 100_000) -> bool:
    """Poll until `predicate()` holds; False once `timeout` seconds or `max_polls` polls pass."""
    deadline = time.monotonic() + timeout
    for _ in range(max_polls):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return False


def report(title: str, figures: dict[str, Any]) -> None:
    """The figures of one test, printed so that `pytest -s` shows them."""
    width = max(len(k) for k in figures) if figures else 0
    lines = [f"\n=== {title} ==="] + [f"  {k:<{width}} : {v}" for k, v in figures.items()]
    print("\n".join(lines), flush=True)


# --- the test database ------------------------------------------------------------------------

def open_test_db() -> Redis:
    """The test database named by CRMBRIDGE_TEST_REDIS_URL (never database 0 of the shared server)."""
    db = (urlsplit(TEST_REDIS_URL).path or "/0").strip("/") or "0"
    if db == "0":
        pytest.fail(f"refusing to flush database 0 ({TEST_REDIS_URL}); set CRMBRIDGE_TEST_REDIS_URL")
    conn = Redis.from_url(TEST_REDIS_URL)
    try:
        conn.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the test Redis fails the test
        pytest.fail(f"Redis at {TEST_REDIS_URL} does not answer: {exc}")
    return conn


# --- configuration ------------------------------------------------------------------------------

def quickstart_config(target: Path, *, amo_rate: float | None = None, tg_rate: float | None = None,
                      chat_per_lead: bool = False) -> Path:
    """A copy of the quickstart configuration; rates above the vendors' limits when asked to (a
    crash or fault test is about what is done, not how fast, and must finish in CI time).

    `chat_per_lead` sends each lead's message to a private chat of its own (the lead's id) instead of
    the team group: the Telegram client keeps one chat to 1 message/s and a group to 20/min, which no
    option raises, so thousands of messages to one group would take hours."""
    shutil.copytree(QUICKSTART, target)
    if chat_per_lead:  # a text edit: PyYAML would turn the rule's `on:` key into True
        path = target / "rules" / "quickstart.yaml"
        text, n = re.subn(r"(?m)^(\s*)chat: team\b.*$", r'\1chat: "{{ entity.id }}"', path.read_text(encoding="utf-8"))
        if n != 1:
            raise AssertionError(f"quickstart rule changed: {n} 'chat: team' lines in {path}")
        path.write_text(text, encoding="utf-8")
    if amo_rate or tg_rate:
        path = target / "connections.yaml"
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
        for name, rate in (("quickstart-amo", amo_rate), ("quickstart-bot", tg_rate)):
            if rate:
                options = conf["connections"][name].setdefault("options", {}) or {}
                options.update(rate_per_second=rate, burst=rate)
                conf["connections"][name]["options"] = options
        path.write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def vendor_env(amo_url: str, tg_url: str) -> dict[str, str]:
    """What tests/conftest.py `env` gives the quickstart, pointed at our fakes."""
    return {"AMO_BASE_URL": amo_url, "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": AMO_SECRET,
            "TELEGRAM_API_URL": tg_url, "TELEGRAM_BOT_TOKEN": TG_TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": TG_SECRET, "TEAM_CHAT_ID": TEAM_CHAT}


@dataclass
class Deployment:
    """One configured crmbridge: its settings, and the environment a worker process gets."""

    config_dir: Path
    redis_url: str
    prefix: str
    queue: str
    vendors: dict[str, str]
    maintenance_interval: int = 2

    @property
    def settings(self) -> Settings:
        return Settings(config_dir=self.config_dir, redis_url=self.redis_url, redis_prefix=self.prefix,
                        queue_name=self.queue, environ=self.vendors,
                        maintenance_interval=self.maintenance_interval)

    def worker_env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR",
                                                              "SYSTEMROOT", "VIRTUAL_ENV")}
        return {**keep, **self.vendors, "REDIS_URL": self.redis_url, "CRMBRIDGE_CONFIG": str(self.config_dir),
                "CRMBRIDGE_REDIS_PREFIX": self.prefix, "CRMBRIDGE_QUEUE": self.queue,
                "CRMBRIDGE_MAINTENANCE_INTERVAL": str(self.maintenance_interval),
                "CRMBRIDGE_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# --- webhooks -----------------------------------------------------------------------------------

def amo_status_form(lead_id: int, stamp: int | None = None) -> bytes:
    """A real-format amoCRM "lead moved to Brief received" webhook (the recorded full sample, with
    this lead's id, name and modification time)."""
    sample = (PAYLOADS / "amocrm" / "lead_status_changed_full.form").read_text()
    pairs = []
    for key, value in parse_qsl(sample, keep_blank_values=True):
        if key == "leads[status][0][id]":
            value = str(lead_id)
        elif key == "leads[status][0][name]":
            value = LEAD_NAME.format(lead_id)
        elif key == "leads[status][0][last_modified]":
            value = str(stamp or 1_700_000_000 + lead_id)
        pairs.append((key, value))
    return urlencode(pairs).encode()


def amo_lead(lead_id: int) -> dict[str, Any]:
    """The lead as FakeAmo's API answers it."""
    return {"id": lead_id, "name": LEAD_NAME.format(lead_id), "price": 1000, "status_id": BRIEF_RECEIVED,
            "pipeline_id": BRIEF_PIPELINE, "responsible_user_id": 938348}


@dataclass
class Posted:
    lead: int
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)   # monotonic (sent, answered)

    @property
    def acknowledged(self) -> bool:
        return 200 in self.statuses


def post_leads(base_url: str, leads: Iterable[int], *, threads: int = 8, timeout: float = 120.0,
               attempts: int = 1, retry_pause: float = 0.5, stop: threading.Event | None = None,
               pace: float = 0.0, gate: threading.Event | None = None) -> list[Posted]:
    """Post one amoCRM status webhook per lead from `threads` senders, the way amoCRM does: a
    refused post (not 200) is posted again, up to `attempts` times, until `timeout`. While `gate`
    is cleared, senders hold their next post."""
    url = f"{base_url}/hooks/quickstart-amo?token={AMO_SECRET}"
    deadline = time.monotonic() + timeout
    local = threading.local()

    def one(lead: int) -> Posted:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        out = Posted(lead)
        body = amo_status_form(lead)
        for attempt in range(attempts):
            if gate is not None:
                gate.wait(timeout=max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                break
            started = time.monotonic()
            try:
                resp = session.post(url, data=body, headers={"Content-Type": FORM}, timeout=15)
                out.statuses.append(resp.status_code)
                out.answers.append(resp.json() if resp.headers.get("Content-Type", "").startswith(
                    "application/json") else resp.text[:100])
            except requests.RequestException as exc:
                out.statuses.append(-1)
                out.answers.append(type(exc).__name__)
            out.latencies.append(time.monotonic() - started)
            out.spans.append((started, time.monotonic()))
            if out.statuses[-1] == 200:
                break
            time.sleep(retry_pause)
        if pace:
            time.sleep(pace)
        return out

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, leads))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- the web app on a real socket ------------------------------------------------------------------

class LiveApp:
    """`create_app(settings=…)` served by werkzeug's threaded server in this process."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __enter__(self) -> Self:
        import worker
        from webhooks import create_app
        self._previous_runtime = worker._runtime
        self.app = create_app(settings=self.settings)
        self.runtime = self.app.extensions["crmbridge"]
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        return self

    def __exit__(self, *exc: object) -> None:
        import worker
        try:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
        finally:
            self.runtime.backend.close()
            worker._runtime = self._previous_runtime


# --- fake vendors with scripted faults and a record of arrival times --------------------------------

@dataclass
class Arrival:
    at: float                 # time.monotonic() when the request reached the fake
    method: str
    path: str
    key: tuple[str, Any] | None
    chat: str | None
    fault: str | None


class Scripted:
    """Mixin for the fakes: per-operation attempt counts, a fault script, arrival times.

    `script[(operation, item)] = ["429", "500", "slow", "timeout", …]` gives the answers to the first
    attempts of that operation on that item: "429" and "500" refuse the call (nothing is done),
    "applied-500" does it and then answers 500 (the client cannot tell it from "500"),
    "slow" answers normally after `slow_seconds`, "timeout" does the work and answers after
    `timeout_seconds` (longer than the client waits, so the client never learns it was done).
    """

    slow_seconds = 1.5
    timeout_seconds = 10.8     # the clients' read timeout is 10 s

    def _init_script(self) -> None:
        self.script: dict[tuple[str, Any], list[str]] = {}
        self.attempts: Counter = Counter()
        self.arrivals: list[Arrival] = []
        self.injected: Counter = Counter()
        self.script_lock = threading.Lock()
        self.in_flight = 0
        self.delay: dict[str, float] = {}   # operation -> seconds added to every answer
        self.after: dict[str, Callable[[Call], None]] = {}   # operation -> called once it is done

    def classify(self, call: Call) -> tuple[str, Any] | None:
        raise NotImplementedError

    def chat_of(self, call: Call) -> str | None:
        return None

    def refuse(self, fault: str) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def _answer(self, call: Call):
        arrived = time.monotonic()
        key = self.classify(call)
        with self.script_lock:
            fault = None
            if key is not None:
                self.attempts[key] += 1
                planned = self.script.get(key, [])
                n = self.attempts[key]
                fault = planned[n - 1] if n <= len(planned) else None
                if fault:
                    self.injected[fault] += 1
            self.arrivals.append(Arrival(arrived, call.method, call.path, key, self.chat_of(call), fault))
            self.in_flight += 1
        try:
            if key is not None and self.delay.get(key[0]):
                time.sleep(self.delay[key[0]])
            if fault in ("429", "500"):
                return self.refuse(fault)
            if fault == "applied-500":   # done, then the answer fails: FakeServer.received counts it
                answer = super()._answer(call)  # type: ignore[misc]
                call.applied = answer[0] < 400
                return self.refuse("500")
            if fault == "slow":
                time.sleep(self.slow_seconds)
            elif fault == "timeout":
                time.sleep(self.timeout_seconds)
            answer = super()._answer(call)  # type: ignore[misc]
            hook = self.after.get(key[0]) if key is not None else None
            if hook is not None:
                hook(call)
            return answer
        finally:
            with self.script_lock:
                self.in_flight -= 1

    def idle(self) -> bool:
        with self.script_lock:
            return self.in_flight == 0

    def times(self, op: str | None = None, chat: str | None = None) -> list[float]:
        with self.script_lock:
            return sorted(a.at for a in self.arrivals if (op is None or (a.key and a.key[0] == op))
                          and (chat is None or a.chat == chat))

    def retries(self) -> int:
        """Calls beyond the first, per operation and item: what the clients tried again. Calls about
        no item (metadata: pipelines, users) are left out: workers that start together each fetch it."""
        with self.script_lock:
            return sum(n - 1 for key, n in self.attempts.items() if n > 1 and key[1] is not None)


class ScriptedAmo(Scripted, FakeAmo):
    def __init__(self) -> None:
        FakeAmo.__init__(self)
        self._init_script()

    def classify(self, call: Call) -> tuple[str, Any] | None:
        m = re.fullmatch(r"/api/v4/leads/(\d+)", call.path)
        if m and call.method == "GET":
            return ("get_lead", int(m.group(1)))
        if call.path == "/api/v4/tasks" and call.method == "POST":
            items = call.body if isinstance(call.body, list) else []
            return ("create_task", int(items[0]["entity_id"]) if items else None)
        return (call.path.rsplit("/", 1)[-1], None)

    def refuse(self, fault: str):
        if fault == "429":
            return 429, {"title": "Too Many Requests", "status": 429}, {"Retry-After": "1"}
        return 500, {"title": "Internal Server Error", "status": 500}, {}

    def tasks_per_lead(self) -> Counter:
        return Counter(int(item["entity_id"]) for c in self.received("POST", "/api/v4/tasks")
                       for item in (c.body or []))


class ScriptedTelegram(Scripted, FakeTelegram):
    def __init__(self, token: str = TG_TOKEN) -> None:
        FakeTelegram.__init__(self, token)
        self._init_script()

    def classify(self, call: Call) -> tuple[str, Any] | None:
        method = call.path.rsplit("/", 1)[-1]
        body = call.body if isinstance(call.body, dict) else {}
        m = LEAD_IN_TEXT.search(str(body.get("text", "")))
        chat = str(body.get("chat_id", ""))
        if not m:
            return (method, chat or None)
        # the quickstart's message is (method, lead); a message of another rule to another chat is its own item
        own = ("", TEAM_CHAT, m.group(1))   # the quickstart's chat: the team's, or the lead's own
        return (method, int(m.group(1)) if chat in own else f"{m.group(1)}@{chat}")

    def chat_of(self, call: Call) -> str | None:
        body = call.body if isinstance(call.body, dict) else {}
        return str(body["chat_id"]) if "chat_id" in body else None

    def refuse(self, fault: str):
        if fault == "429":
            return 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                         "parameters": {"retry_after": 1}}, {}
        return 500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}, {}

    def messages_per_lead(self) -> Counter:
        found = Counter()
        for c in self.method_calls("sendMessage"):
            m = QUICKSTART_MESSAGE.search(str((c.body or {}).get("text", "")))
            if m:
                found[int(m.group(1))] += 1
        return found


class Vendors:
    """FakeAmo and FakeTelegram (scripted), started and stopped together."""

    def __enter__(self) -> Self:
        self.amo = ScriptedAmo().start()
        self.tg = ScriptedTelegram().start()
        return self

    def __exit__(self, *exc: object) -> None:
        for fake in (self.amo, self.tg):
            try:
                fake.stop()
            except Exception:  # noqa: BLE001, S110 - stopping a fake must not hide the test's own failure
                pass

    @property
    def env(self) -> dict[str, str]:
        return vendor_env(self.amo.url, self.tg.url)

    def idle(self) -> bool:
        return self.amo.idle() and self.tg.idle()


def tally(vendors: Vendors, leads: list[int]) -> dict[str, Any]:
    """What the vendors received, per lead: one task and one message is handled; fewer is lost
    (not yet done); more is duplicated."""
    tasks, messages = vendors.amo.tasks_per_lead(), vendors.tg.messages_per_lead()
    lost = [lead for lead in leads if tasks[lead] == 0 or messages[lead] == 0]
    duplicated = [lead for lead in leads if tasks[lead] > 1 or messages[lead] > 1]
    handled = [lead for lead in leads if tasks[lead] == 1 and messages[lead] == 1]
    return {"handled": len(handled), "lost": len(lost), "duplicated": len(duplicated),
            "tasks": sum(tasks[lead] for lead in leads), "messages": sum(messages[lead] for lead in leads),
            "lost_leads": lost[:20], "duplicated_leads": duplicated[:20], "lost_leads_all": lost}


# --- RQ's bookkeeping ----------------------------------------------------------------------------------

def rq_state(store: Redis, queue: str) -> dict[str, int]:
    return {"queued": store.llen(f"rq:queue:{queue}"),
            "intermediate": store.llen(f"rq:queue:{queue}:intermediate"),
            "started": store.zcard(f"rq:wip:{queue}"),
            "scheduled": store.zcard(f"rq:scheduled:{queue}"),
            "failed": store.zcard(f"rq:failed:{queue}")}


def started_entries(store: Redis, queue: str) -> list[dict[str, Any]]:
    """The StartedJobRegistry: job, execution, its worker and when cleanup will call it abandoned."""
    out = []
    for raw, score in store.zrange(f"rq:wip:{queue}", 0, -1, withscores=True):
        composite = raw.decode()
        job_id, _, execution_id = composite.rpartition(":")
        worker_name = store.hget(f"rq:execution:{composite}", "worker_name")
        out.append({"job": job_id, "execution": execution_id,
                    "worker": worker_name.decode() if worker_name else None,
                    "abandoned_in": round(score - time.time(), 1)})
    return out


def job_lead(store: Redis, job_id: str) -> int | None:
    from rq.job import Job
    from rq.serializers import JSONSerializer
    try:
        job = Job.fetch(job_id, connection=store, serializer=JSONSerializer)
        return int(job.args[0]["entity"]["id"])
    except Exception:  # noqa: BLE001 - a figure: a job gone or unreadable has no lead
        return None


def worker_names_by_pid(store: Redis, queue: str) -> dict[int, str]:
    names = {}
    for member in store.smembers(f"rq:workers:{queue}"):
        name = member.decode().removeprefix("rq:worker:")
        pid = store.hget(f"rq:worker:{name}", "pid")
        if pid:
            names[int(pid)] = name
    return names


# --- worker processes --------------------------------------------------------------------------------

class WorkerPool:
    """`python worker.py` processes, each in its own process group (with its RQ scheduler child).

    `kill(slot)` SIGKILLs the whole group, as when a container or machine dies; `supervise()` restarts
    a worker that exited by itself, as systemd/Kubernetes would (and counts it).
    """

    def __init__(self, env: dict[str, str], log_dir: Path, size: int, max_starts: int = 200):
        self.env, self.log_dir, self.size, self.max_starts = env, log_dir, size, max_starts
        self.procs: dict[int, subprocess.Popen] = {}
        self.every: list[subprocess.Popen] = []    # every process started, for the final kill
        self.starts = 0
        self.kills = 0
        self.exits: list[int] = []     # return codes of workers that exited by themselves
        self._logs: list[Any] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Self:
        for slot in range(self.size):
            self.start(slot)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, slot: int) -> subprocess.Popen:
        if self.starts >= self.max_starts:
            raise RuntimeError(f"more than {self.max_starts} worker starts")
        self.starts += 1
        log = open(self.log_dir / f"worker-{slot}-{self.starts}.log", "wb")  # noqa: SIM115 - open for the process's life, closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[slot] = proc
        self.every.append(proc)
        return proc

    def kill(self, slot: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs[slot]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.kills += 1
        return proc.pid

    def kill_main(self, slot: int) -> int:
        """SIGKILL the worker process only (as the OOM killer does): its RQ scheduler child lives on."""
        proc = self.procs[slot]
        try:
            proc.kill()
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kills += 1
        return proc.pid

    def restart(self, slot: int) -> subprocess.Popen:
        return self.start(slot)

    def supervise(self) -> None:
        for slot, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.exits.append(proc.returncode)
                kill_group_leftovers(proc.pid)   # its scheduler child may live on
                self.start(slot)

    def stop(self) -> None:
        for proc in self.every:
            if proc.poll() is None:   # the leader is ours and alive: its group is ours
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kill_group_leftovers(proc.pid)
        for proc in self.every:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for log in self._logs:
            log.close()

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.log_dir.glob("worker-*.log"))[-4:]:
            text = path.read_text(errors="replace").splitlines()
            out.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def log_grep(self, needle: str) -> int:
        return sum(path.read_text(errors="replace").count(needle) for path in self.log_dir.glob("worker-*.log"))


def kill_group_leftovers(pgid: int) -> list[int]:
    """SIGKILL what is left of a worker's process group (its scheduler child) once the worker
    itself is gone: only processes still in that group whose command line is worker.py."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"worker.py" not in f.read():
                    continue
            os.kill(int(entry), signal.SIGKILL)
            killed.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return killed


# --- a Redis server of our own -------------------------------------------------------------------------

def free_port(start: int = 6391, end: int = 6491) -> int:
    for port in range(start, end):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{end}")


class RedisServer:
    """A private `redis-server` on a free loopback port, killed (SIGKILL) and restarted at will.

    `durable=True` runs it the way the README requires for production: AOF with
    `appendfsync always`, so a restart keeps what was acknowledged.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True, port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.dir, self.durable, self.extra_args = data_dir, durable, extra_args
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, timeout: float = 10.0, wait: bool = True) -> None:
        """Start it; with wait=False return as soon as the process runs (it may still be loading)."""
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.starts += 1
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.durable else "no", "--appendfsync", "always",
                "--dir", str(self.dir), "--daemonize", "no", "--maxmemory-policy", "noeviction",
                *self.extra_args]
        self.log = open(self.dir / f"redis-{self.starts}.log", "wb")  # noqa: SIM115 - open for the server's life, closed in kill()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait:
            return
        probe = Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        ok = wait_until(lambda: _pings(probe), timeout, interval=0.05)
        probe.close()
        if not ok:
            self.kill()
            raise RuntimeError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.log.close()
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _pings(conn: Redis) -> bool:
    try:
        return bool(conn.ping())
    except Exception:  # noqa: BLE001 - not answering, for any reason, is the answer
        return False


# --- the rate a fake saw ---------------------------------------------------------------------------------

def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The largest number of arrivals within any half-open window [t, t + window)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def seeded(seed: int) -> random.Random:
    return random.Random(seed)
