"""The web page of `nsnet serve` on a phone-sized screen and with a token, in headless
Chromium: no card wider than the screen (390 px), the token hint gone once a score
succeeded, the threshold printed as the command line prints it; no caption line for a head
that reads no caption."""

from __future__ import annotations

import shutil

from nsnet.inference.predict import load_chain
from tests.test_explain import train_bundle
from tests.test_serve import (  # noqa: F401 - fixtures used by name
    browser_driver,
    bundle,
    chain,
    files_of,
    paths,
    serving,
)


def test_page_on_a_390px_screen_with_a_token(chain, bundle, paths, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    long_name = tmp_path / ("a_photo_with_a_very_long_file_name_" * 3 + "0001.png")
    shutil.copy(paths[0], long_name)
    with serving(chain, bundle, token="s3cret") as srv:
        browser = browser_driver()
        try:
            browser.set_window_size(390, 844)
            browser.get(srv.url + "/")
            wait = WebDriverWait(browser, 90)
            wait.until(lambda b: "access token" in b.find_element(By.ID, "model").text)
            assert browser.find_element(By.ID, "token-box").is_displayed()
            browser.find_element(By.ID, "token").send_keys("s3cret")
            browser.find_element(By.ID, "files").send_keys(f"{paths[1]}\n{long_name}")
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card .heat")) == 2)
            wait.until(lambda b: b.find_element(By.ID, "model").text.startswith("model:"))
            assert "access token" not in browser.find_element(By.ID, "model").text
            label = browser.find_element(By.CSS_SELECTOR, 'label[for="token"]').text
            assert "needs" not in label and "accepted" in label
            assert browser.find_element(By.ID, "model").text.endswith("threshold 0.5")
            width = browser.execute_script("return window.innerWidth")
            assert width <= 400
            assert browser.execute_script(
                "return document.documentElement.scrollWidth") <= width  # no sideways scroll
            overflowing = browser.execute_script(
                "return Array.from(document.querySelectorAll('.card, .card *'))"
                ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
                ".map(e => e.className || e.tagName)")
            assert overflowing == []
            browser.save_screenshot(str(tmp_path / "page_390px.png"))
        finally:
            browser.quit()


def test_page_shows_no_caption_for_a_head_that_reads_none(built_cache, paths,  # noqa: F811
                                                          tmp_path):
    """The API answers ``caption: null`` for the nsnet head; the card then has no caption line
    (it printed ``caption: "null"``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ns_bundle = train_bundle(built_cache, tmp_path / "ns", "nsnet", 2)
    with serving(load_chain(ns_bundle, "cpu"), ns_bundle) as srv:
        with srv.client() as c:
            assert c.post("/v1/detect", files=files_of(paths[:1])).json()["results"][0][
                "caption"] is None
        browser = browser_driver()
        try:
            browser.get(srv.url + "/")
            wait = WebDriverWait(browser, 90)
            wait.until(lambda b: "nsnet head" in b.find_element(By.ID, "model").text)
            browser.find_element(By.ID, "files").send_keys(paths[0])
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card .heat")) == 1)
            card = browser.find_element(By.CSS_SELECTOR, ".card")
            assert card.find_element(By.CSS_SELECTOR, ".prob").text.startswith("P(generated)")
            assert card.find_elements(By.CSS_SELECTOR, ".caption") == []
            assert "caption" not in card.text and "null" not in card.text
        finally:
            browser.quit()
