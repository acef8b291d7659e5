"""A configuration error is the same clean list under every entry point: `cli.py validate`,
`worker.py` and gunicorn as the README runs it print it with file:line and stop, no traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import QUICKSTART, ROOT, TEST_REDIS_URL

EXPECTED = "connections.yaml:17: connection \"quickstart-amo\" → calendar: no calendar 'nowhere-cal' in 'calendars:'"


@pytest.fixture
def broken(tmp_path):
    target = tmp_path / "config"
    shutil.copytree(QUICKSTART, target)
    path = target / "connections.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    [at] = [i for i, line in enumerate(lines) if line.strip().startswith("calendar:")]
    assert at == 16, "the quickstart's calendar line moved: update EXPECTED"
    lines[at] = "    calendar: nowhere-cal"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def run(args: list[str], config, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRMBRIDGE_CONFIG": str(config), "AMO_WEBHOOK_SECRET": "a", "TELEGRAM_WEBHOOK_SECRET": "b",
           "REDIS_URL": TEST_REDIS_URL}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_clean_list(done: subprocess.CompletedProcess, config) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{config}/{EXPECTED}" in output
    assert "1 error in 1 file; crmbridge did not start." in output
    assert "Traceback" not in output


def test_worker_py_prints_the_list_and_exits(broken):
    assert_clean_list(run([sys.executable, "worker.py"], broken), broken)


def test_cli_validate_prints_the_same_list(broken):
    assert_clean_list(run([sys.executable, "cli.py", "validate"], broken), broken)


def test_gunicorn_prints_the_list_and_stops(broken):
    done = run([str(ROOT / ".venv" / "bin" / "gunicorn"), "--workers", "1", "--bind", "127.0.0.1:0",
                "webhooks:create_app()"], broken)
    assert_clean_list(done, broken)
    assert "App failed to load." in done.stderr
