"""dry-run --fetch and --record: a Bitrix24 webhook carries only the deal's id, so without the
record every stage rule is skipped ("event is entity.updated"); with --fetch the deal is read from
the portal (tests/fakes_bitrix24.py, documented shapes), the worker's derived stage change is
planned, and nothing but reads reaches the portal. --record plans from a saved record."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from connectors import bitrix24
from connectors.base import Connection, Entity
from simulate.readonly import ReadOnly, ReadOnlyRefused
from tests.conftest import PAYLOADS
from tests.fakes_bitrix24 import FakeBitrix24

DEAL = json.loads((PAYLOADS / "bitrix24" / "api_deal_get.json").read_text(encoding="utf-8"))["result"]  # 410, PREPARATION
RULES = """
defaults:
  connection: shop-b24
rules:
  - name: documents stage → task
    on: {event: stage.changed, stage: "Подготовка документов"}
    do:
      - create_task: {text: "Подготовить документы для «{{ entity.name }}»", due: 1 working day}
      - add_note: "Сделка на этапе «{{ entity.stage.name }}»"
"""
# the portal's REST methods that change something (b24restdocs: *.add, *.update, *.delete, *.set, im.notify…)
WRITES = re.compile(r"\.(add|update|delete|set|complete|attach|bind)\w*$|^im\.notify|^tasks\.task\.(add|update|complete)")


@pytest.fixture
def portal() -> Iterator[FakeBitrix24]:
    server = FakeBitrix24().start()
    server.add("deal", dict(DEAL))
    yield server
    server.stop()


@pytest.fixture
def config(tmp_path: Path, portal: FakeBitrix24) -> Path:
    target = tmp_path / "config"
    (target / "rules").mkdir(parents=True)
    (target / "connections.yaml").write_text(f"""
connections:
  shop-b24:
    type: bitrix24
    base_url: {portal.base_url}
    webhook_secret: ${{B24_APP_TOKEN}}
    credentials:
      webhook: ${{B24_WEBHOOK_CODE}}
""", encoding="utf-8")
    (target / "rules" / "deal.yaml").write_text(RULES, encoding="utf-8")
    return target


def dry_run(config: Path, portal: FakeBitrix24, *args: str, body: str = "deal_update.form") -> str:
    from cli import cli
    hook = (PAYLOADS / "bitrix24" / body).read_bytes().replace(b"%5BID%5D=759", b"%5BID%5D=410")
    path = config.parent / "hook.form"
    path.write_bytes(hook)
    env = {"B24_APP_TOKEN": "51856fefc120afa4b628cc82d3935cce", "B24_WEBHOOK_CODE": portal.code,
           "CRMBRIDGE_HISTORY": "off"}
    result = CliRunner(env=env).invoke(cli, ["--config", str(config), "dry-run", "shop-b24", str(path),
                                             "--now", "2026-12-07T10:00:00+02:00", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def writes(portal: FakeBitrix24) -> list[str]:
    names = [re.sub(r"(\.json)?$", "", c.path.rsplit("/", 1)[-1]) for c in portal.calls]
    batched = [cmd.split("?")[0] for c in portal.calls if c.path.endswith(("batch", "batch.json"))
               for cmd in ((c.body or {}).get("cmd") or {}).values()]
    return [n for n in names + batched if WRITES.search(n)]


def test_without_fetch_the_stage_rule_sees_only_the_id(config, portal, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    out = dry_run(config, portal)
    assert "event entity.updated deal:410" in out
    assert "skipped  'documents stage → task'" in out and "event is entity.updated" in out
    assert "would call" not in out and portal.calls == []


def test_with_fetch_the_record_is_read_and_the_stage_rule_planned(config, portal, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    out = dry_run(config, portal, "--fetch")
    assert "event stage.changed deal:410 (derived from the record: first seen, entering its stage)" in out
    assert "matched  'documents stage → task'" in out
    assert "would call shop-b24.create_task(entity={'type': 'deal', 'id': '410'}, text='Подготовить документы для «New Deal #1»'" in out
    assert "would call shop-b24.add_note(" in out and "Подготовка документов" in out
    read = [c.path.rsplit("/", 1)[-1] for c in portal.calls]
    assert any(p.startswith("crm.deal.get") for p in read)          # the record
    assert writes(portal) == []                                     # nothing but reads reached the portal


def test_fetch_never_writes_even_when_asked_to():
    client = ReadOnly(bitrix24.Client(Connection(name="b", type="bitrix24", base_url="http://127.0.0.1:9/rest/1",
                                                 credentials={"webhook": "c"})))
    assert client.can("get_entity") and not client.can("create_task") and not client.can("move_to_stage")
    assert "set_fields" not in client.capabilities
    for verb in ("create_task", "add_note", "move_to_stage", "set_fields", "delete_entity", "notify", "request"):
        with pytest.raises(ReadOnlyRefused, match="refused, the dry run only reads"):
            getattr(client, verb)(Entity("deal", "1"), "x")


def test_record_file_takes_the_place_of_the_read(config, portal, tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    saved = tmp_path / "deal.json"
    saved.write_text(json.dumps({"name": "Сохранённая сделка", "stage": {"id": "PREPARATION", "name": "Подготовка документов"},
                                 "tasks": []}, ensure_ascii=False), encoding="utf-8")
    out = dry_run(config, portal, "--record", str(saved))
    assert "matched  'documents stage → task'" in out and "«Сохранённая сделка»" in out
    assert portal.calls == []


def test_fetch_compares_with_the_kept_snapshot_and_writes_nothing_to_redis(config, portal, redis_db, monkeypatch):
    """With REDIS_URL the record's kept snapshot is read (GET only): the deal was seen before in the
    same stage, so no stage change is derived, only the field it changed."""
    from tests.conftest import TEST_REDIS_URL
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    key = "crmbridge:snapshot:shop-b24:deal:410"
    redis_db.set(key, json.dumps({"type": "deal", "id": "410", "stage": {"id": "PREPARATION"},
                                  "responsible": {"id": "1"}, "fields": {"Комментарий клиента": "было"}}, ensure_ascii=False))
    before = {k: redis_db.dump(k) for k in redis_db.keys("*")}
    out = dry_run(config, portal, "--fetch")
    assert "event stage.changed" not in out and "matched" not in out
    assert "event field.changed deal:410 (derived from the record: fields Комментарий клиента)" in out
    assert {k: redis_db.dump(k) for k in redis_db.keys("*")} == before
    assert writes(portal) == []
