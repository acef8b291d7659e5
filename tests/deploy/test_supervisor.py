"""deploy/supervisord.conf, started the way docs/deploy.md says (`deploy/supervise`, an environment
file), on a Redis of the test's own and the loopback fakes of amoCRM and Telegram: a worker's process
group and gunicorn's master are SIGKILLed while webhooks come in; supervisord starts both again within
seconds, and every webhook posted before, around and after the kills is acknowledged and handled once.

Also: the systemd units, checked by `systemd-analyze verify` as installed (the checkout's paths put in
for /opt/crmbridge), with a broken copy to show that verify does check.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.deploy.common import (
    DEPLOY,
    VENV_BIN,
    base_env,
    end_group,
    wait_healthy,
    write_env_file,
)
from tests.reliability.harness import (
    ROOT,
    RedisServer,
    Vendors,
    amo_lead,
    free_port,
    post_leads,
    quickstart_config,
    report,
    tally,
    wait_until,
)

pytestmark = pytest.mark.skipif(not (VENV_BIN / "supervisord").exists(),
                                reason="supervisor is not installed (requirements.txt)")

STATUS = re.compile(r"^(\S+)\s+(\S+)\s+(?:pid (\d+),)?", re.M)


class Supervised:
    """`deploy/supervise` in a process group of its own; `ctl(...)` is `deploy/supervise ctl …`."""

    def __init__(self, env_file: Path, log_dir: Path):
        self.env = {**base_env(), "CRMBRIDGE_ENV_FILE": str(env_file)}
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()

    def __enter__(self) -> Supervised:
        self.out = open(self.log_dir / "supervise.out", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen([str(DEPLOY / "supervise")], env=self.env, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.ctl("shutdown", timeout=20)
                self.proc.wait(timeout=40)
        except (subprocess.TimeoutExpired, OSError):
            pass
        finally:
            end_group(self.proc)
            for pid in self.seen_pids:   # each program runs in a process group of its own
                kill_program_group(pid)
            self.out.close()

    def ctl(self, *args: str, timeout: float = 15) -> str:
        done = subprocess.run([str(DEPLOY / "supervise"), "ctl", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        return done.stdout + done.stderr

    def status(self) -> dict[str, tuple[str, int | None]]:
        found = {name: (state, int(pid) if pid else None) for name, state, pid in STATUS.findall(self.ctl("status"))}
        self.seen_pids |= {pid for _, pid in found.values() if pid}
        return found

    def all_running(self, names: set[str]) -> bool:
        status = self.status()
        return names <= set(status) and all(status[n][0] == "RUNNING" for n in names)


def kill_program_group(pgid: int) -> None:
    """SIGKILL what is left of one program's process group: only our service's processes."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            if b"worker.py" in cmd or b"gunicorn" in cmd:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


@pytest.mark.timeout(240)
def test_supervisord_brings_a_killed_worker_and_gunicorn_back_and_nothing_is_lost(tmp_path):
    logs = tmp_path / "log"
    logs.mkdir()
    port = free_port(18400, 18500)
    base = f"http://127.0.0.1:{port}"
    around = list(range(8_100_000, 8_100_080))   # posted while the kills happen
    after = list(range(8_110_000, 8_110_020))    # posted once both are back
    with RedisServer(tmp_path / "redis") as redis, Vendors() as vendors:
        for lead in around + after:
            vendors.amo.add_lead(amo_lead(lead))
        config = quickstart_config(tmp_path / "config", amo_rate=50, tg_rate=25, chat_per_lead=True)
        env_file = write_env_file(tmp_path / "crmbridge.env", {
            **vendors.env, "REDIS_URL": redis.url(0), "CRMBRIDGE_CONFIG": str(config),
            "CRMBRIDGE_HOME": str(ROOT), "CRMBRIDGE_VENV": str(VENV_BIN.parent),
            "CRMBRIDGE_BIND": f"127.0.0.1:{port}", "CRMBRIDGE_WEB_WORKERS": "2", "CRMBRIDGE_WORKERS": "2",
            "CRMBRIDGE_LOG_DIR": str(logs), "CRMBRIDGE_RUN_DIR": str(tmp_path / "run"),
            "CRMBRIDGE_MAINTENANCE_INTERVAL": "2", "CRMBRIDGE_JOB_HEARTBEAT_TTL": "6",
            "CRMBRIDGE_HISTORY_PATH": str(tmp_path / "history.sqlite3"), "PYTHONDONTWRITEBYTECODE": "1"})
        names = {"crmbridge:web", "crmbridge:worker-00", "crmbridge:worker-01"}
        with Supervised(env_file, logs) as sup:
            assert wait_until(lambda: sup.all_running(names), 60, interval=0.5), sup.ctl("status") + tail(logs)
            assert wait_healthy(base, 30), tail(logs)
            before = sup.status()

            # webhooks arrive all along (a refused or unanswered post is posted again, as amoCRM does)
            posted: list = []
            sender = threading.Thread(target=lambda: posted.extend(post_leads(
                base, around, threads=4, attempts=60, retry_pause=0.25, pace=0.15, timeout=90)))
            sender.start()
            time.sleep(1.0)
            worker_pid = before["crmbridge:worker-01"][1]
            os.killpg(worker_pid, signal.SIGKILL)   # the worker and its RQ scheduler, as a container dies
            killed_worker_at = time.monotonic()
            time.sleep(1.0)
            web_pid = before["crmbridge:web"][1]
            os.kill(web_pid, signal.SIGKILL)        # gunicorn's master alone
            killed_web_at = time.monotonic()

            def back(name: str, old: int) -> bool:
                state, pid = sup.status().get(name, ("", None))
                return state == "RUNNING" and pid not in (None, old)

            assert wait_until(lambda: back("crmbridge:worker-01", worker_pid), 30, interval=0.2), sup.ctl("status")
            worker_back = time.monotonic() - killed_worker_at
            assert wait_until(lambda: back("crmbridge:web", web_pid), 30, interval=0.2), sup.ctl("status")
            assert wait_healthy(base, 30), tail(logs)
            web_back = time.monotonic() - killed_web_at
            sender.join(timeout=120)
            assert not sender.is_alive()
            posted += post_leads(base, after, threads=4, attempts=20, retry_pause=0.25, timeout=60)

            leads = around + after
            refused = [p.lead for p in posted if not p.acknowledged]
            done = wait_until(lambda: tally(vendors, leads)["handled"] == len(leads) and vendors.idle(), 120,
                              interval=0.5)
            time.sleep(2.0)   # anything done twice would show now
            counts = tally(vendors, leads)
            status = sup.status()
            report("supervisord: a worker and gunicorn's master SIGKILLed", {
                "webhooks posted": len(posted), "acknowledged": len(posted) - len(refused),
                "not 200 at first (posted again)": sum(1 for p in posted if p.statuses[0] != 200),
                "worker back (RUNNING, new pid) after": f"{worker_back:.1f} s",
                "web back (RUNNING, /healthz 200) after": f"{web_back:.1f} s",
                "handled once": counts["handled"], "lost": counts["lost"], "duplicated": counts["duplicated"],
                "status": {n: s for n, (s, _) in status.items()}})
            assert not refused, f"never acknowledged: {refused[:10]}"
            assert done and counts["lost"] == 0, (counts, tail(logs))
            assert counts["duplicated"] == 0, counts
            assert worker_back < 15 and web_back < 20
            assert all(state == "RUNNING" for state, _ in status.values()), status
            assert status["crmbridge:worker-00"][1] == before["crmbridge:worker-00"][1]   # the other one untouched


def tail(logs: Path, lines: int = 25) -> str:
    out = []
    for path in sorted(logs.glob("*.log")):
        text = path.read_text(errors="replace").splitlines()
        out.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


# --- systemd ----------------------------------------------------------------------------------------

def installed_units(target: Path) -> list[Path]:
    """The units as docs/deploy.md installs them, with this checkout in place of /opt/crmbridge and the
    example environment file in place of /etc/crmbridge/crmbridge.env; worker@1 instantiated."""
    out = []
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        text = unit.read_text(encoding="utf-8")
        text = text.replace("/etc/crmbridge/crmbridge.env", str(DEPLOY / "crmbridge.env.example"))
        text = text.replace("/opt/crmbridge/.venv", str(VENV_BIN.parent)).replace("/opt/crmbridge", str(ROOT))
        name = unit.name.replace("@.service", "@1.service")
        (target / name).write_text(text, encoding="utf-8")
        out.append(target / name)
    return out


def verify(units: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)], capture_output=True,
                          text=True, timeout=60, cwd=units[0].parent)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (no systemd here)")
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    units = installed_units(tmp_path)
    assert {u.name for u in units} == {"crmbridge-web.service", "crmbridge-worker@1.service", "crmbridge.target"}
    done = verify(units)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # the same check on a broken copy fails: verify reads what it is given
    broken = tmp_path / "broken"
    broken.mkdir()
    unit = broken / "crmbridge-web.service"
    unit.write_text((tmp_path / "crmbridge-web.service").read_text().replace("KillMode=mixed", "KillMode=sometimes")
                    .replace(f"{VENV_BIN.parent}/bin/gunicorn", "/nonexistent/gunicorn"))
    bad = verify([unit])
    assert bad.returncode != 0 and "kill mode" in bad.stderr and "not executable" in bad.stderr, bad.stderr
    # the template's ExecStart and stop policy are what docs/deploy.md says
    worker = (DEPLOY / "systemd" / "crmbridge-worker@.service").read_text()
    assert "ExecStart=/opt/crmbridge/.venv/bin/python worker.py" in worker
    assert "KillSignal=SIGTERM" in worker and "Restart=always" in worker


def test_supervise_refuses_to_start_without_its_environment(tmp_path):
    """deploy/supervise says what is missing and exits 2, before supervisord starts anything."""
    missing = subprocess.run([str(DEPLOY / "supervise")], env={**base_env(), "CRMBRIDGE_ENV_FILE": str(tmp_path / "none.env")},
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "no environment file" in missing.stderr and "crmbridge.env.example" in missing.stderr
    no_redis = write_env_file(tmp_path / "crmbridge.env", {"CRMBRIDGE_CONFIG": str(tmp_path)})
    refused = subprocess.run([str(DEPLOY / "supervise")], env={**base_env(), "CRMBRIDGE_ENV_FILE": str(no_redis)},
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "REDIS_URL is not set" in refused.stderr
