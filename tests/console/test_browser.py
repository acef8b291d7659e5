"""The console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
which .ci/run installs) driven by Selenium against the app on a real loopback socket, Redis and a
SQLite decision history written by a real worker. An operator logs in, finds a record, reads why
a rule was skipped, replays a dead letter (a worker then makes the note) and cancels a timer.

Screenshots of the main pages go to the test's directory; with CRMBRIDGE_CONSOLE_SCREENSHOTS=<dir>
(docs/console for docs/console.md) they go there too."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, run_worker
from tests.console.conftest import RECORD, TOKEN, audit_lines

CHROMIUM = os.environ.get("CRMBRIDGE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CRMBRIDGE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
PHONE = (390, 844)      # a phone's viewport in CSS pixels
DESKTOP = (1280, 900)


@pytest.fixture
def browser() -> Iterator["WebDriver"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():   # .ci/run installs them; a bare machine needs apt-get install chromium chromium-driver
            pytest.fail(f"{path} not found: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--lang=uk-UA", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path):
    """shot(driver, name): a screenshot of the page as a PNG, kept beside the test (and in
    CRMBRIDGE_CONSOLE_SCREENSHOTS when set)."""
    extra = os.environ.get("CRMBRIDGE_CONSOLE_SCREENSHOTS")
    target = (ROOT / extra) if extra and not os.path.isabs(extra) else (Path(extra) if extra else None)

    def shot(driver, name: str, size: tuple[int, int] = DESKTOP) -> Path:
        driver.set_window_size(*size)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size[0], min(max(size[1], height + 140), 4000))   # the whole page
        path = tmp_path / f"{name}.png"
        assert driver.save_screenshot(str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        if target:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / path.name)
        driver.set_window_size(*size)
        return path
    return shot


def test_an_operator_finds_why_replays_and_cancels(browser, live_server, seeded, runtime, fake_amo, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(locator):
        return WebDriverWait(browser, 15).until(ready.visibility_of_element_located(locator))

    def text(css: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, css).text

    # log in: the console sends the browser to its login page first
    browser.get(f"{live_server}/console/")
    wait_for((By.ID, "token"))
    assert browser.current_url == f"{live_server}/console/login?next=/console/"
    shots(browser, "login")
    browser.find_element(By.ID, "token").send_keys("not the token")
    browser.find_element(By.ID, "login").click()
    assert "That token is not the console's token." in wait_for((By.CSS_SELECTOR, "p.error")).text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_for((By.ID, "record"))
    assert browser.current_url == f"{live_server}/console/"
    cookie = browser.get_cookie("crmbridge_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console" and "expiry" not in cookie
    assert "1 dead letter" in text("ul.tiles") and "1 pending timer" in text("ul.tiles")
    shots(browser, "home")

    # find the record by its bare id, and read why "Big brief → note" was skipped
    browser.find_element(By.ID, "record").send_keys("31926520")
    browser.find_element(By.ID, "find").click()
    wait_for((By.ID, "timeline"))
    assert browser.current_url == f"{live_server}/console/records/{RECORD}"
    assert browser.find_element(By.TAG_NAME, "h1").text == RECORD
    [skipped] = [li for li in browser.find_elements(By.CSS_SELECTOR, "li.rule-skipped")
                 if li.find_element(By.CSS_SELECTOR, ".rule").text == "Big brief → note"]
    why_not = skipped.find_element(By.CSS_SELECTOR, ".why-not").text
    assert "Why not: field 'Бюджет' is '5000'; expected gt 10000" in why_not
    assert "Would act: it acts on the record's next stage.changed event once `fields.Бюджет > 10000` holds" in why_not
    first = browser.find_element(By.CSS_SELECTOR, "details.explain")
    assert first.find_element(By.TAG_NAME, "summary").text.startswith("Big brief → note")
    assert "condition `fields.Бюджет > 10000` failed" in first.text
    failed = browser.find_element(By.CSS_SELECTOR, "li.action-failed").text
    assert "Бриф отримано: Кондитерська «Ромашка»" in failed and "HTTP 400: Ошибка валидации: text" in failed
    shots(browser, "record")
    shots(browser, "record-phone", PHONE)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), \
        "the record page scrolls sideways on a phone"

    # the other pages an operator opens
    browser.find_element(By.LINK_TEXT, "Events").click()
    wait_for((By.CSS_SELECTOR, "table.events"))
    assert "failed" in text("table.events tbody tr")
    shots(browser, "events")
    browser.find_element(By.LINK_TEXT, "Connections").click()
    wait_for((By.ID, "conn-quickstart-amo"))
    assert "HTTP 400: Ошибка валидации: text" in text("#conn-quickstart-amo")
    shots(browser, "connections")
    browser.find_element(By.LINK_TEXT, "Rules").click()
    wait_for((By.CSS_SELECTOR, "table.rules"))
    assert "console.yaml:6" in text("table.rules")
    shots(browser, "rules")

    # replay the dead letter: the vendor takes the note this time
    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    wait_for((By.CSS_SELECTOR, "table.dead"))
    browser.find_element(By.LINK_TEXT, seeded["dead"]).click()
    wait_for((By.ID, "replay"))
    assert "Ошибка валидации" in text("pre.error") and '"kind": "stage.changed"' in text("pre:not(.error)")
    shots(browser, "dead-letter")
    browser.find_element(By.ID, "replay").click()
    assert "queued again" in wait_for((By.CSS_SELECTOR, "p.flash")).text
    assert "No dead letter." in text("main")
    assert not runtime.store.hexists(runtime.keys("dead"), seeded["dead"])
    run_worker(runtime)
    [note] = fake_amo.received("POST", "/api/v4/leads/notes")   # the refused call is not among those received
    assert note.status == 200 and note.body[0]["params"]["text"] == "Бриф отримано: Кондитерська «Ромашка»"
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1   # the task done before is not made again

    # cancel the timer from its page
    browser.find_element(By.LINK_TEXT, "Timers").click()
    wait_for((By.CSS_SELECTOR, "table.timers"))
    shots(browser, "timers")
    browser.find_element(By.CSS_SELECTOR, f"button.cancel[data-timer='{seeded['timer']}']").click()
    assert f"Timer {seeded['timer']} cancelled" in wait_for((By.CSS_SELECTOR, "p.flash")).text
    assert "No pending timer." in text("main")
    assert runtime.backend.timers.get(seeded["timer"]) is None
    [cancelled] = [e for e in audit_lines(runtime) if e["what"] == "timer.cancelled"]
    assert cancelled["reason"].startswith("cancelled by an operator (console")

    # log out: the pages ask for the token again
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for((By.ID, "token"))
    browser.get(f"{live_server}/console/records/{RECORD}")
    wait_for((By.ID, "token"))
