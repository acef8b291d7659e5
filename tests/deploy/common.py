"""What the deployment tests share: the environment file the service reads, process groups that are
always ended, and bounded waits. Everything is loopback and temporary (the test's tmp_path)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.reliability.harness import ROOT, wait_until

DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent   # the virtual environment running the tests (supervisord, gunicorn)


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    """A KEY=value file, as deploy/crmbridge.env.example shows (read by deploy/supervise and systemd)."""
    for key, value in values.items():
        if any(c in value for c in " \n'\"$`\\"):
            raise ValueError(f"{key}: a value the file cannot hold unquoted: {value!r}")
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def base_env() -> dict[str, str]:
    """The environment a service starts with: the system's basics only, never the test's own."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}


def end_group(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGKILL a process group this test started (its leader is ours), and reap the leader."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def healthy(base_url: str) -> bool:
    try:
        return requests.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_healthy(base_url: str, timeout: float) -> bool:
    return wait_until(lambda: healthy(base_url), timeout, interval=0.2)
