"""The audit report in a real browser (issue 17): headless Chromium, networking off, opens report.html; the page
loads without console errors or failed requests, every table and picture is there (each picture decoded at its
file's size), and every number shown equals results.json. Skipped only where no Chromium is installed (`.ci/run`
installs Debian's)."""
import io
import json

import pytest
from audit_fixture import HOSTILE, SANITY, at, changed, pictures, shown_paths, text_of
from browser import Browser, find
from PIL import Image

from onnxplain.report import GALLERY, GRID

pytestmark = pytest.mark.skipif(find() is None, reason="no Chromium binary (chromium, chromium-browser, "
                                                       "google-chrome) on PATH")

TABLES = ["The model", "The data set", "Every metric, every method", "Mean of each metric by class: gradcam",
          "Mean of each metric by class: saliency", "Each image explained by each method",
          "Methods that failed on this model", "Images that could not be read"]


def test_the_report_loads_offline_without_errors_and_shows_every_table_picture_and_number(audited, tmp_path):
    out, results = audited
    sanity, _ = changed(out, tmp_path / "sanity", lambda r: r.update(sanity=SANITY))
    with Browser() as browser:
        page = browser.open(out / "report.html")
        assert page.evaluate("document.readyState") == "complete"
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight, "
                               "i.src, i.alt, i.getBoundingClientRect().width])")
        captions = page.evaluate("[...document.querySelectorAll('table')].map(t => t.caption.textContent)")
        numbers = page.evaluate("[...document.querySelectorAll('[data-path]')].map(e => [e.dataset.path, "
                                "e.dataset.value, e.tagName, e.textContent])")
        scripts = page.evaluate("document.scripts.length")
        text = page.evaluate("document.body.innerText")
        shot = Image.open(io.BytesIO(page.screenshot()))
        problems = page.problems
        other = browser.open(sanity / "report.html")  # with sanity checks: their curves drawn
        curves = other.evaluate("[...document.querySelectorAll('svg.curve')].map(s => [s.getBBox().width, "
                                "s.querySelectorAll('polyline').length, s.querySelectorAll('circle').length])")
        problems += other.problems
    assert problems == []
    assert captions == TABLES
    expected = pictures(results, GALLERY, GRID)
    assert len(images) == len(expected) == 2 * (2 + 2) + 2 * (1 + 2)  # galleries of 2 images, grid of 2
    for (complete, w, h, src, alt, width), rel in zip(images, expected):
        assert src.startswith("data:image/png;base64,") and alt and width > 0
        assert complete and (w, h) == Image.open(out / rel).size  # decoded, at the file's own size
    seen = set()
    for path, value, tag, shown in numbers:
        path = json.loads(path)
        assert json.loads(value) == at(results, path), path
        if tag == "SPAN":
            assert shown == text_of(at(results, path)), path
        seen.add(tuple(path))
    assert shown_paths(results, GALLERY) <= seen
    assert len(curves) == 2 and all(w > 100 and lines == 2 and points == 5 for w, lines, points in curves)
    assert scripts == 0 and HOSTILE in text  # labels, reasons and the command shown as text, not run
    assert shot.width == 1280 and shot.height > 3000  # the whole page, not the window
    colours = shot.convert("RGB").getcolors(1 << 20)
    assert colours is not None and len(colours) > 5000  # photos and maps, not a blank page
    shot.save(tmp_path / "report.png")


def test_the_browser_check_sees_console_errors_exceptions_and_blocked_requests(tmp_path):
    """The check above cannot pass by hearing nothing: this page's three faults are each reported."""
    page_file = tmp_path / "faulty.html"
    page_file.write_text('<html><body><img src="https://example.com/x.png" alt="x">'
                         '<script>console.error("boom"); missing_function();</script></body></html>')
    with Browser() as browser:
        problems = browser.open(page_file).problems
    assert any("console.error: boom" in p for p in problems)
    assert any("missing_function is not defined" in p for p in problems)
    assert any("example.com" in p and "ERR_" in p for p in problems)
