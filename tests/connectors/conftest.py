"""Fixtures shared by the connector tests."""
from __future__ import annotations

import pytest

from connectors import bitrix24
from connectors.base import Connection
from tests.fakes_bitrix24 import FakeBitrix24


@pytest.fixture
def b24_with_a_deal(redis_db):
    """A Bitrix24 client on a fake portal holding one deal (410): (client, fake)."""
    fake = FakeBitrix24().start()
    fake.add("deal", {"ID": "410", "TITLE": "Deal", "STAGE_ID": "NEW", "CATEGORY_ID": "0", "ASSIGNED_BY_ID": "1"})
    conn = Connection(name="b24", type="bitrix24", base_url=fake.base_url, credentials={"webhook": fake.code})
    yield bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:"), fake
    fake.stop()
