"""The `in_zone` template filter: dates written to fields are the local day, not UTC's."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rules.templates import TemplateProblem, render


def test_late_evening_in_kyiv_is_already_the_next_day():
    moment = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)        # 00:30 on the 25th in Kyiv
    assert render("{{ (now | in_zone('Europe/Kyiv')).date().isoformat() }}", {"now": moment}) == "2026-11-25"
    assert render("{{ (t | in_zone('Europe/Kyiv')).isoformat() }}", {"t": "2026-07-01T21:15:00+00:00"}) == (
        "2026-07-02T00:15:00+03:00")                          # summer time


@pytest.mark.parametrize("value, zone", [("2026-11-24T10:00:00", "Europe/Kyiv"), ("2026-11-24T10:00:00+00:00", "Mars/Base")])
def test_naive_moments_and_unknown_zones_are_refused(value, zone):
    with pytest.raises(TemplateProblem):
        render("{{ t | in_zone(z) }}", {"t": value, "z": zone})
