"""The decision history's two backends for tests: a SQLite file, and a PostgreSQL database of the
test's own on 127.0.0.1:5432 (CRMBRIDGE_TEST_DATABASE_URL to change the server; `.ci/run` makes
sure it answers), created before and dropped after."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

SERVER = os.environ.get("CRMBRIDGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_database() -> Iterator[str]:
    """A fresh database (crmbridge_test_<random>); its URL."""
    import psycopg
    name = f"crmbridge_test_g_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {SERVER} does not answer: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = SERVER.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def history_settings(request, tmp_path: Path) -> Iterator[dict]:
    """Settings overrides for one backend: {"database_url": …} or {"history_path": …}."""
    if request.param == "sqlite":
        yield {"history_path": tmp_path / "history.sqlite3"}
    else:
        yield from ({"database_url": url} for url in postgres_database())
