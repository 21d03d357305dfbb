"""The pages in a real browser: Debian's chromium, headless, driven by Selenium with the system
chromedriver (never Selenium Manager, which would download one). The dashboard shows the pool grow
during a 300-upload burst and shrink after it; the upload page labels five files chosen together
and shows why a sixth is refused; neither logs a console error. With IMGREC_SCREENSHOTS=DIR
(`make screenshots`), it also saves the pictures the README shows."""

import base64
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import ROOT
from local_stack import Stack, loadgen, stack_processes, wait_until

MODEL = ROOT / "models" / "efficientnet-lite0"
SCREENSHOTS = os.environ.get("IMGREC_SCREENSHOTS")


@pytest.fixture
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "needs Debian's chromium and chromium-driver (make test installs them)"
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def tiles(driver) -> list[dict]:
    """The instance tiles as shown now, read in one go (the page replaces them every second)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#instances li.tile')]"
        ".map(t => ({name: t.dataset.name, state: t.dataset.state, text: t.textContent}))")


def screenshot(driver, name: str):
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / name))


def test_the_dashboard_shows_the_pool_grow_during_a_burst_and_shrink_after(tmp_path, datasets, browser):
    images = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    settings = {"scaler__max": "4", "scaler__scale_in_after_s": "3", "scaler__tick_ms": "200"}
    with Stack(tmp_path / "data", **settings) as stack:
        browser.get(stack.url + "dashboard")
        wait_until("the page shows its web tier",
                   lambda: browser.find_element(By.ID, "web-tier").text.startswith("web-instance"), 10)
        assert tiles(browser) == []
        assert browser.find_element(By.ID, "no-instances").is_displayed()

        result = {}
        burst = threading.Thread(target=lambda: result.update(
            summary=loadgen(stack.url, images, concurrency=100, repeat=3)[0]))
        burst.start()
        names, states, shot = set(), set(), False
        deadline = time.monotonic() + 60
        while (burst.is_alive() or not names) and time.monotonic() < deadline:
            shown = tiles(browser)
            for tile in shown:
                names.add(tile["name"])
                states.add(tile["state"])
                assert "up " in tile["text"], tile
            if len(shown) > 1 and not shot:
                time.sleep(1.5)  # let the chart gather a few points
                screenshot(browser, "dashboard-burst.png")
                shot = True
            time.sleep(0.2)
        burst.join(60)
        assert result["summary"]["ok"] == 300, result
        assert names and names <= {f"app-instance{k}" for k in range(1, 5)}, names
        assert states <= {"pending", "running", "stopping"} and "running" in states, states

        # After the burst: every tile leaves, the figures say what happened.
        wait_until("the tiles are gone",
                   lambda: tiles(browser) == [] and browser.find_element(By.ID, "no-instances").is_displayed(), 30)
        assert browser.find_element(By.ID, "pending").text == "0"
        assert float(browser.find_element(By.ID, "rate").text) > 0
        assert "/" in browser.find_element(By.ID, "latency").text
        wait_until("the chart has points",
                   lambda: len(browser.find_element(By.ID, "live-line").get_attribute("points").split()) > 3, 5)
        assert browser.find_element(By.ID, "problem").is_displayed() is False
        time.sleep(2)  # the next history poll draws the scale-in
        screenshot(browser, "dashboard-after.png")
        errors = console_errors(browser)
        assert errors == [], errors
    assert stack_processes(tmp_path / "data") == []


def reference_labels(files: list[Path]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, files)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(line.split(",", 1) for line in out.splitlines())


def test_the_upload_page_labels_files_chosen_together_or_dropped_and_says_why_one_is_refused(tmp_path, datasets,
                                                                                           browser):
    files = sorted((datasets / "imagenet-100").glob("*.JPEG"))[:5]
    want = reference_labels(files)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is not an image")
    with Stack(tmp_path / "data", **{"scaler__max": "2"}) as stack:
        browser.get(stack.url)
        # Accessible basics: the file input has a label, and the keyboard reaches it and the button.
        assert browser.find_element(By.CSS_SELECTOR, "label[for=files]").text.startswith("Images")
        focused = []
        body = browser.find_element(By.TAG_NAME, "body")
        for _ in range(2):
            body.send_keys(Keys.TAB)
            focused.append(browser.switch_to.active_element.get_attribute("id"))
        assert focused == ["files", "classify"], focused

        # Readable contrast (WCAG AA, 4.5:1): the text, the button, the hints.
        for selector, ratio in contrasts(browser, ["body", "#classify", "#how", "#drop"]).items():
            assert ratio >= 4.5, f"{selector}: contrast {ratio:.1f}"

        chooser = browser.find_element(By.ID, "files")
        chooser.send_keys("\n".join(str(f) for f in [*files, not_an_image]))
        browser.find_element(By.ID, "classify").click()
        rows = wait_until("every row has its answer", lambda: done_rows(browser, 6), 120)
        screenshot(browser, "upload-page.png")
        assert len(rows) == 6
        for selector, ratio in contrasts(browser, ["td.error", "td.time", "th"]).items():
            assert ratio >= 4.5, f"{selector}: contrast {ratio:.1f}"
        assert browser.current_url == stack.url, "the page was left"

        # Each labelled image: its thumbnail, drawn in the browser, and its top 5 with confidences.
        tops = top_fives(browser)
        for f in files:
            labels, percents, width = tops[f.name]
            assert len(labels) == 5 and labels[0] == want[f.name], tops[f.name]
            assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.05, tops[f.name]
            assert width == 64, tops[f.name]
        assert tops["notes.jpg"][0] == [], "a refused upload has no classes"

        # Dropping files on the page sends them at once, in new rows; a reload while their job
        # is under way loses none of the rows, and the answers still come.
        dropped = sorted((datasets / "imagenet-100").glob("*.JPEG"))[5:7]
        browser.execute_script(DROP, [[f.name, base64.b64encode(f.read_bytes()).decode()] for f in dropped])
        wait_until("the dropped files' job is accepted",
                   lambda: len(browser.execute_script("return JSON.parse(localStorage.getItem('imgrec.jobs') ?? '[]')")) == 2,
                   30)
        browser.refresh()
        rows = wait_until("every row is back with its answer", lambda: done_rows(browser, 8), 120)
        screenshot(browser, "upload-page-reloaded.png")
    want.update(reference_labels(dropped))
    files = files + dropped
    shown = {name: (label, cls, took) for name, label, cls, took in rows}
    for f in files:
        label, cls, took = shown[f.name]
        assert (label, cls) == (want[f.name], "label"), shown[f.name]
        assert took.endswith(" s") and float(took[:-2]) > 0
    label, cls, _ = shown["notes.jpg"]
    assert cls == "error" and label.startswith("refused: "), label
    tops = top_fives(browser)
    assert all(len(tops[f.name][0]) == 5 for f in files), tops
    assert console_errors(browser) == []


def done_rows(driver, count: int):
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#rows tr')].map(tr => [...tr.cells].map(c => c.textContent)"
        ".concat([tr.cells[1].className]))")
    finished = [(name, label, cls, took) for name, label, _top, took, cls in rows if label != "classifying…" and took]
    return finished if len(finished) == count else None


def top_fives(driver) -> dict[str, tuple[list[str], list[float], int]]:
    """Each row's top-5 list (labels, percentages) and its thumbnail's drawn width, by file name."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#rows tr')].map(tr => [tr.cells[0].textContent,"
        " [...tr.cells[2].querySelectorAll('li')].map(li => [...li.children].slice(0, 2).map(c => c.textContent)),"
        " tr.cells[0].querySelector('canvas').width])")
    return {name: ([label for label, _ in top], [float(p.rstrip('%')) for _, p in top], width)
            for name, top, width in rows}


CONTRAST = """
const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
const lum = (c) => {
  const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const background = (el) => {
  for (; el; el = el.parentElement) {
    const bg = getComputedStyle(el).backgroundColor;
    if (!/rgba\\(.*, 0\\)$/.test(bg) && bg !== "transparent") return bg;
  }
  return "rgb(255, 255, 255)";
};
return Object.fromEntries(arguments[0].map((sel) => {
  const el = document.querySelector(sel);
  const [a, b] = [lum(getComputedStyle(el).color), lum(background(el))];
  return [sel, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
}));
"""


def contrasts(driver, selectors: list[str]) -> dict[str, float]:
    """The contrast ratio of each element's text colour on its background, as WCAG defines it."""
    return driver.execute_script(CONTRAST, selectors)


# A drop of files on the drop zone, as a user's drag from a file manager delivers it.
DROP = """
const transfer = new DataTransfer();
for (const [name, b64] of arguments[0]) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
}
const zone = document.getElementById("drop");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
}
"""


def test_the_dashboard_says_why_the_fleet_stays_below_desired(browser):
    """Launches the group cannot make (a vCPU quota) show on the dashboard with AWS's reason. The
    page is the one the web tier embeds; its /status here is a fixed answer with such a failure."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    reason = "You have requested more vCPU capacity than your current vCPU limit of 32 allows"
    status = {
        "queue": {"pending": 240, "in_flight": 30, "dead_letter": 0},
        "capacity": {"desired": 19, "min": 0, "max": 19, "launch_failure": {"at_s": int(time.time()) - 90, "reason": reason}},
        "instances": [{"name": f"app-instance{k}", "state": "running", "busy": True, "up_s": 60.0} for k in range(1, 16)],
        "waiting_requests": 270, "recent": None, "scaler_error": None,
        "web_tier": {"name": "web-instance1", "scaler_acting": False},
    }
    page = (ROOT / "services" / "web-tier" / "src" / "dashboard.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = (json.dumps([] if "history" in self.path else status).encode(), "application/json")
            if self.path == "/dashboard":
                body, kind = page, "text/html"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/dashboard")
        problem = browser.find_element(By.ID, "problem")
        wait_until("the problem is shown", lambda: problem.is_displayed() and reason in problem.text, 10)
        assert problem.text.startswith("Launches failing (")
        assert browser.find_element(By.ID, "live").text == "15 / 19"
        assert console_errors(browser) == []
    finally:
        server.shutdown()
