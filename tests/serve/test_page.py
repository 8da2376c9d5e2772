"""The page at / in a real headless Chromium (Debian's chromium and chromium-driver, which .ci/run
installs), driven by Selenium: the query the CLI answers shows the CLI's first clip first, a click
plays it, a question about it is answered (--qa), "more like this" returns the clip first, the query lives in the URL, errors show."""

from __future__ import annotations

import os
import shutil
import time
from urllib.parse import quote

import pytest

from tests.retrieval.test_retrieve_cli import query_lines

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)),
                None)
DRIVER = shutil.which("chromedriver")
QUERY = "a red star shrinks on a black background"  # the README's example query

if not (CHROMIUM and DRIVER) and not os.environ.get("CI"):
    pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait(condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the page")


def result_keys(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.get_attribute("data-key") for li in browser.find_elements(By.CSS_SELECTOR, "#results li")]


def test_search_play_and_more_like_this(browser, server, served_index, tmp_path):
    from selenium.webdriver.common.by import By

    expected = query_lines(served_index, "-k", "1", QUERY)[0].split("\t")[2]  # the CLI's first clip
    browser.get(server.url)
    box = browser.find_element(By.ID, "q")
    box.send_keys(QUERY + "\n")
    keys = wait(lambda: result_keys(browser))
    assert keys[0] == expected and f"q={quote(QUERY).replace('%20', '+')}" in browser.current_url
    browser.find_elements(By.CSS_SELECTOR, "#results li img")[0].click()
    video_time = "return document.getElementById('video').currentTime"
    wait(lambda: browser.execute_script(video_time) > 0.2)  # it plays: the time advances
    browser.save_screenshot(str(tmp_path / "serve_page.png"))  # the artefact the note shows
    assert browser.find_element(By.ID, "video").get_attribute("data-key") == expected
    browser.find_element(By.ID, "question").send_keys("what color is the shape\n")  # --qa: ask about it
    assert "%" in wait(lambda: "%" in browser.find_element(By.ID, "answer").text and
                       browser.find_element(By.ID, "answer").text)
    browser.find_elements(By.CSS_SELECTOR, "#results li button.more")[0].click()
    wait(lambda: "similar=" in browser.current_url and result_keys(browser) and result_keys(browser)[0] == expected)
    shared = server.url + f"?q={quote(QUERY)}"  # a shared link runs the search on load
    browser.get(shared)
    assert wait(lambda: result_keys(browser))[0] == expected


def test_states_no_results_error_and_paging(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "?q=a+red+star&index=nope")
    status = wait(lambda: browser.find_element(By.ID, "status").text.startswith("Error") and
                  browser.find_element(By.ID, "status").text)
    assert "no index named 'nope'" in status
    browser.get(server.url + "?q=a+red+star&offset=50")  # past the last of the index's 8 clips
    wait(lambda: browser.find_element(By.ID, "status").text.startswith("No results"))
    browser.get(server.url + "?q=a+red+star&offset=4")
    wait(lambda: result_keys(browser))
    assert browser.find_element(By.ID, "status").text.startswith("Results 5-8")
    browser.find_element(By.ID, "prev").click()
    wait(lambda: "Results 1-" in browser.find_element(By.ID, "status").text)
    assert "offset" not in browser.current_url
