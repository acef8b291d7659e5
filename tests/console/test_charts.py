"""The console's report charts (/console/reports): the rows of a report (reports/__init__, the same
as GET /reports/<name>) drawn as server-side SVG: a bar per group and metric, a line over periods;
labels escaped (Cyrillic kept, a hostile `<script>` group shown as text); behind the console token."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from console import charts
from pipeline import history
from pipeline.steps.record import store
from tests.console.conftest import TOKEN
from tests.console.test_browser import browser, shots  # noqa: F401  (fixtures)

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script>'
RULES = """
rules:
  - name: Order → facts
    on: {event: stage.changed, connection: quickstart-amo}
    do:
      - record: {metric: orders, dimensions: {account: "{{ entity.name }}"}}
      - record: {metric: paid, dimensions: {account: "{{ entity.name }}"}}
"""
REPORTS = """
reports:
  by_account:
    title: "Замовлення за акаунтами"
    metric: [orders, paid]
    aggregate: count
    by: account
  per_month:
    title: "Замовлення по місяцях"
    metric: orders
    aggregate: count
    by: month
"""
# orders per account: кондитерська 3 (paid 1), the hostile name 1 (paid 0); months: 2026-10 1, 2026-11 3
FACTS = [("orders", "Кондитерська «Ромашка»", datetime(2026, 11, 3, 9, tzinfo=timezone.utc)),
         ("orders", "Кондитерська «Ромашка»", datetime(2026, 11, 4, 9, tzinfo=timezone.utc)),
         ("orders", "Кондитерська «Ромашка»", datetime(2026, 10, 20, 9, tzinfo=timezone.utc)),
         ("paid", "Кондитерська «Ромашка»", datetime(2026, 11, 5, 9, tzinfo=timezone.utc)),
         ("orders", HOSTILE, datetime(2026, 11, 6, 9, tzinfo=timezone.utc))]
WIDE = {"from": "2026-10-01", "to": "2026-11-30"}


@pytest.fixture
def settings(settings, config_dir):
    (config_dir / "rules" / "facts.yaml").write_text(RULES, encoding="utf-8")
    (config_dir / "reports.yaml").write_text(REPORTS, encoding="utf-8")
    facts = store(settings)
    for i, (metric, account, at) in enumerate(FACTS):
        facts.add_fact(history.fact_row(f"e{i}|r|0", f"e{i}", "quickstart-amo", "lead:1", "Order → facts", at,
                                        "Europe/Kyiv", metric, 1, {"account": account}))
    return replace(settings)


def page(client, path: str, **params: str):
    return client.get(path, query_string=params, headers={"Authorization": f"Bearer {TOKEN}"})


def svg_of(html: str) -> ET.Element:
    """The page's chart, parsed as XML (so it is well-formed, whatever the labels held)."""
    [svg] = re.findall(r"<svg .*?</svg>", html, re.S)
    return ET.fromstring(svg)


def test_bars_per_group_and_metric_with_escaped_labels(client):
    resp = page(client, "/console/reports/by_account", **WIDE)
    assert resp.status_code == 200 and resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
    html = resp.get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;alert(" in html   # the hostile name is text
    svg = svg_of(html)
    groups = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "group"]
    assert groups == [HOSTILE, "Кондитерська «Ромашка»"]            # rows in group order, as the report has them
    bars = [(b.get("data-series"), b.get("data-value"), float(b.get("width"))) for b in svg.iter(f"{SVG}rect")
            if b.get("class") == "bar"]
    assert [(s, v) for s, v, _ in bars] == [("orders", "1"), ("paid", "0"), ("orders", "3"), ("paid", "1")]
    widths = {(s, v): w for s, v, w in bars}
    longest = charts.WIDTH - charts.LABEL_WIDTH - 70
    assert widths[("orders", "3")] == pytest.approx(longest) and widths[("paid", "0")] == 0
    assert widths[("orders", "1")] == pytest.approx(longest / 3, abs=0.1)
    assert [t.text for t in svg.iter(f"{SVG}title")][0] == "Замовлення за акаунтами, 2026-10-01 – 2026-11-30"
    # the table beside it says the same
    assert "<td>Кондитерська «Ромашка»</td><td>3</td><td>1</td>" in html


def test_a_line_over_the_periods(client):
    svg = svg_of(page(client, "/console/reports/per_month", **WIDE).get_data(as_text=True))
    points = [(p.get("data-value"), float(p.get("cx")), float(p.get("cy"))) for p in svg.iter(f"{SVG}circle")]
    assert [v for v, _, _ in points] == ["1", "3"]
    assert points[0][1] < points[1][1] and points[0][2] > points[1][2]   # later is right, more is higher
    assert [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "period"] == ["2026-10", "2026-11"]
    assert len(list(svg.iter(f"{SVG}polyline"))) == 1
    # grouped by account instead: bars again, from the page's own form
    svg = svg_of(page(client, "/console/reports/per_month", by="account", **WIDE).get_data(as_text=True))
    assert [r.get("data-value") for r in svg.iter(f"{SVG}rect") if r.get("class") == "bar"] == ["1", "3"]


def test_the_svg_alone_and_wrong_requests(client):
    resp = page(client, "/console/reports/by_account/chart.svg", **WIDE)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert ET.fromstring(resp.get_data(as_text=True)).tag == f"{SVG}svg"
    empty = svg_of(page(client, "/console/reports/by_account", **{"from": "2026-12-01", "to": "2026-12-31"})
                   .get_data(as_text=True))
    assert "No facts in these days." in "".join(empty.itertext())
    assert page(client, "/console/reports/nope").status_code == 404
    bad = page(client, "/console/reports/by_account", by="manger")
    assert bad.status_code == 400 and "by: unknown dimension &#39;manger&#39;" in bad.get_data(as_text=True)
    assert page(client, "/console/reports/by_account", to="2026-02-30").status_code == 400
    listing = page(client, "/console/reports").get_data(as_text=True)
    assert "Замовлення за акаунтами" in listing and 'href="/console/reports/per_month"' in listing


def test_behind_the_console_token(client):
    assert client.get("/console/reports/by_account").status_code == 302          # to the login page
    assert client.get("/console/reports/by_account/chart.svg",
                      headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_chart_module_escapes_and_cuts_long_labels():
    long = "Дуже довга назва акаунта кондитерської мережі «Солодка мрія»"
    svg = ET.fromstring(str(charts.chart(["account"], ["orders"], [{"account": long, "orders": 2},
                                                                   {"account": "a&b", "orders": None}], "t")))
    labels = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "group"]
    assert labels == [long[:charts.LABEL_CHARS - 1] + "…", "a&b"]
    assert [t.text for t in svg.iter(f"{SVG}title")][1] == f"{long} · orders: 2"      # the whole name on hover
    assert [r.get("data-value") for r in svg.iter(f"{SVG}rect") if r.get("class") == "bar"] == ["2", "—"]


def test_an_operator_opens_a_chart_from_the_nav_in_a_browser(browser, live_server, shots):  # noqa: F811
    """Chromium: log in, Reports in the nav, a report's bars drawn (the screenshot for docs/console.md)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(locator):
        return WebDriverWait(browser, 15).until(ready.visibility_of_element_located(locator))

    browser.get(f"{live_server}/console/reports")
    wait_for((By.ID, "token")).send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_for((By.CSS_SELECTOR, "table.reports"))
    browser.find_element(By.LINK_TEXT, "Rules").click()                 # from elsewhere, by the nav
    wait_for((By.CSS_SELECTOR, "table.rules"))
    browser.find_element(By.LINK_TEXT, "Reports").click()
    browser.find_element(By.LINK_TEXT, "Замовлення за акаунтами").click()
    wait_for((By.CSS_SELECTOR, "figure.chart svg"))
    browser.get(f"{live_server}/console/reports/by_account?from=2026-10-01&to=2026-11-30")
    bars = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect.bar")
    assert [b.get_attribute("data-value") for b in bars] == ["1", "0", "3", "1"]
    assert bars[2].size["width"] > bars[0].size["width"] * 2.5          # drawn to scale by the browser
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "figure.chart svg text.group")]
    assert labels == [HOSTILE, "Кондитерська «Ромашка»"]                # shown as text, never run
    assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
    shots(browser, "report-chart")
    browser.get(f"{live_server}/console/reports/per_month?from=2026-10-01&to=2026-11-30")
    assert len(wait_for((By.CSS_SELECTOR, "figure.chart svg")).find_elements(By.CSS_SELECTOR, "circle.point")) == 2
