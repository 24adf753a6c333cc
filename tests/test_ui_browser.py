"""End to end in a real browser: ``streamlit run`` the app on a free localhost port, drive it with
headless Chromium (selenium + Debian's chromium-driver), load a tiny model, generate, check the
image appears and the downloaded PNG carries the metadata; save a screenshot as a test artefact
(``artifacts/ui/`` or ``$SYNTHEX_TEST_ARTIFACTS``; ``SYNTHEX_UPDATE_DOCS_SCREENSHOT=1`` also copies
it to ``docs/img/ui_screenshot.png``).

Needs: ``apt-get install -y chromium chromium-driver`` and ``pip install selenium streamlit``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

INSTALL_HINT = ("headless Chromium is needed for the browser test: "
                "sudo apt-get install -y chromium chromium-driver && pip install selenium streamlit")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(f"chromium/chromedriver not found; {INSTALL_HINT}", allow_module_level=True)
pytest.importorskip("selenium", reason=f"selenium is missing; {INSTALL_HINT}")
pytest.importorskip("streamlit", reason=f"streamlit is missing; {INSTALL_HINT}")

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from synthex.cli.ui import streamlit_command  # noqa: E402
from tests.helpers_tiny import tiny_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1600,1100")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "SYNTHEX_UI_MODEL": str(tiny_model_dir("sd-l")), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "SYNTHEX_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with log.open("w+") as out:
        process = subprocess.Popen(streamlit_command(port, "127.0.0.1"), env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
        process.stdout = out
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def button(driver, label: str, timeout: float = 30):
    xpath = f"//button[normalize-space(.)='{label}']"
    return WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, xpath)))


def wait_text(driver, text: str, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def artefacts() -> Path:
    folder = Path(os.environ.get("SYNTHEX_TEST_ARTIFACTS") or ROOT / "artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_load_generate_download_in_chromium(server, browser):
    browser.get(server)
    wait_text(browser, "Synthetic images for research, not diagnosis")
    disabled = WebDriverWait(browser, 30).until(ec.presence_of_element_located(
        (By.XPATH, "//button[normalize-space(.)='Generate']")))
    assert disabled.get_attribute("disabled") is not None
    button(browser, "Load model").click()
    wait_text(browser, "Active model: sd-l")
    generate = button(browser, "Generate", 60)
    generate.click()
    images = WebDriverWait(browser, 120).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img"))
    assert images[0].get_attribute("naturalWidth") not in (None, "0")
    wait_text(browser, "(seed 42)")
    shot = artefacts() / "ui_generate.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("SYNTHEX_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "img" / "ui_screenshot.png")

    browser.find_element(By.CSS_SELECTOR, "[data-testid='stDownloadButton'] button").click()
    target = browser.downloads / "synthetic_xray_0042.png"
    deadline = time.monotonic() + 30
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert target.is_file(), f"no download; got {list(browser.downloads.iterdir())}"
    shutil.copyfile(target, artefacts() / target.name)
    with Image.open(target) as image:
        text = dict(image.text)
    assert text["Synthetic"] == "true" and text["Seed"] == "42" and text["Model"] == "sd-l"
    assert "Seed: 42" in text["parameters"] and "Steps: 30" in text["parameters"]
    assert text["Description"].endswith("Chest x-ray.") and "SynTheX-Ray" in text["Software"]

    # PNG info tab: upload the downloaded file, its parameters are shown
    browser.find_element(By.XPATH, "//*[@role='tab'][normalize-space(.)='PNG info']").click()
    # the PNG info uploader by its label: the img2img / Inpaint tabs have file inputs of their own
    browser.find_element(By.XPATH, "//*[@data-testid='stFileUploader'][.//*[contains(., 'Upload a PNG made by')]]"
                                   "//input[@type='file']").send_keys(str(target))
    wait_text(browser, "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras")
    button(browser, "Regenerate")  # enabled: a model is loaded


def test_bad_seed_shows_an_error_and_the_page_keeps_working(server, browser):
    browser.get(server)
    button(browser, "Load model").click()
    wait_text(browser, "Active model: sd-l")
    seed = browser.find_element(By.XPATH, "//input[@aria-label='Seed']")
    seed.clear()
    seed.send_keys("not-a-seed\n")
    time.sleep(1.0)
    button(browser, "Generate").click()
    wait_text(browser, "Invalid seed")
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
