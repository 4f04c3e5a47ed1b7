"""The web demo in a real browser: headless Chromium (Debian's chromium and chromium-driver, which
tools/install_browser.sh installs) driven by Selenium loads the page, uploads an image, types a
vocabulary, runs it, and finds the overlay (the server's picture, pixel for pixel) and the legend;
an example runs on a click; a bad vocabulary shows its message on the page. The screenshot is
written to the test's folder.

Without the browser the test fails, saying how to install it: it is never skipped."""

import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from vilseg_d2.app import cli
from vilseg_d2.app.examples import example_images
from vilseg_d2.app.page import segment_request

from helpers import TINY_CONFIG
from web_app_fixtures import GRADIO_WARNINGS, app_opts, free_port, write_images, write_weights

pytestmark = GRADIO_WARNINGS

INSTALL = (
    "run `bash tools/install_browser.sh` as root (apt-get install chromium chromium-driver), "
    "as `make test` does"
)
# Headless Chromium as root, asking no server but the page's (this machine has no other network).
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--window-size=1280,1500",
]  # fmt: skip
VOCABULARY = "circle; square; hexagon; star"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(f"Headless Chromium is not installed (chromium: {chromium}, chromedriver: "
                    f"{driver}): {INSTALL}.", pytrace=False)  # fmt: skip
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    try:
        browser = webdriver.Chrome(service=Service(driver), options=options)
    except WebDriverException as e:
        pytest.fail(f"Headless Chromium does not start ({e.msg}): {INSTALL}.", pytrace=False)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """tools/web_demo.py on a free port, and the same model in this process."""
    weights = write_weights(tmp_path_factory.mktemp("weights"))
    argv = ["--config-file", TINY_CONFIG, "--port", str(free_port()), "--opts", *app_opts(weights)]
    page, url = cli.main(argv, block=False)
    yield url, cli.load_web_segmenter(TINY_CONFIG, app_opts(weights))
    page.close()


def wait_for(browser, css: str, seconds: float = 60):
    return WebDriverWait(browser, seconds).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def test_segment_an_image_in_the_browser(browser, served, tmp_path):
    url, web = served
    image = write_images(tmp_path / "images")["scene"]
    browser.get(url)
    upload = WebDriverWait(browser, 60).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#vilseg-image input[type=file]"))
    )
    upload.send_keys(str(image))
    wait_for(browser, "#vilseg-image img")  # the upload's preview
    box = wait_for(browser, "#vilseg-vocabulary textarea")
    box.clear()
    box.send_keys(VOCABULARY)
    browser.find_element(By.CSS_SELECTOR, "#vilseg-run").click()

    rows = WebDriverWait(browser, 60).until(
        EC.visibility_of_all_elements_located((By.CSS_SELECTOR, "#vilseg-legend tbody tr"))
    )
    browser.save_screenshot(str(tmp_path / "web_demo.png"))
    assert (tmp_path / "web_demo.png").stat().st_size > 10_000
    overlay, shares, _, _, _ = segment_request(web, {"path": str(image)}, VOCABULARY)
    assert [row.text for row in rows] == expected_rows(shares) and len(rows) >= 2
    assert "Segmented 128 x 128 pixels" in wait_for(browser, "#vilseg-summary").text
    shown = wait_for(browser, "#vilseg-overlay img").get_attribute("src")
    picture = Image.open(io.BytesIO(httpx.get(shown, timeout=30).content)).convert("RGB")
    np.testing.assert_array_equal(np.asarray(picture), overlay)


def legend_rows(browser):
    rows = browser.find_elements(By.CSS_SELECTOR, "#vilseg-legend tbody tr")
    return [row.text for row in rows]


def expected_rows(shares: dict) -> list:
    return [f"{c} {100 * s:.1f}%" for c, s in sorted(shares.items(), key=lambda x: -x[1])]


def test_an_example_runs_on_a_click(browser, served, tmp_path):
    url, web = served
    path, vocabulary = example_images(str(tmp_path))[0]  # what the page shows first
    _, shares, _, _, _ = segment_request(web, {"path": path}, vocabulary)
    browser.get(url)
    first = WebDriverWait(browser, 60).until(
        EC.element_to_be_clickable((By.CSS_SELECTOR, "img[src*='synthetic_val_']"))
    )
    first.click()
    WebDriverWait(browser, 60).until(lambda b: legend_rows(b) == expected_rows(shares))
    box = browser.find_element(By.CSS_SELECTOR, "#vilseg-vocabulary textarea")
    assert box.get_attribute("value") == vocabulary


def test_a_bad_vocabulary_is_a_message_on_the_page(browser, served):
    box = wait_for(browser, "#vilseg-vocabulary textarea")
    box.clear()
    box.send_keys(" ; ")
    browser.find_element(By.CSS_SELECTOR, "#vilseg-run").click()
    WebDriverWait(browser, 60).until(
        lambda b: "The vocabulary is empty" in b.find_element(By.TAG_NAME, "body").text
    )
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
