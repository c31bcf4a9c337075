"""The audit report (issue 17): one self-contained report.html from results.json and the overlays it names. Read here
with Python's HTML parser (tests/test_report_browser.py opens it in Chromium)."""
import base64
import copy
import json
import os
import shutil
from html import escape
from html.parser import HTMLParser

import pytest
from audit_fixture import HOSTILE, SANITY, at, changed, pictures, shown_paths, text_of

from onnxplain import OnnxplainError
from onnxplain.report import CLASSES, FAILED, GALLERY, GRID, write_report


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of the page."""

    def __init__(self, page: str):
        super().__init__()
        self.tags, self.text, self.numbers, self.open = [], [], [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "data-path" in attrs:  # a number: its place, its value, and the text shown (spans; SVG points: None)
            self.numbers.append([attrs["data-path"], attrs["data-value"], "" if tag == "span" else None])
            self.open = self.numbers[-1] if tag == "span" else None

    def handle_endtag(self, tag):
        self.open = None if tag == "span" else self.open

    def handle_data(self, data):
        self.text.append(data)
        if self.open is not None:
            self.open[2] += data

    def all(self, tag):
        return [a for t, a in self.tags if t == tag]


def report_of(folder) -> tuple[str, Tags]:
    page = write_report(folder).read_text(encoding="utf-8")
    return page, Tags(page)


def test_every_picture_is_inline_and_nothing_can_be_fetched_or_run(audited):
    out, results = audited
    page, tags = report_of(out)
    sources = [a["src"] for a in tags.all("img")]
    expected = pictures(results, GALLERY, GRID)
    assert [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources] == \
        [(out / rel).read_bytes() for rel in expected]
    assert all(a.get("alt") for a in tags.all("img"))
    assert not {t for t, _ in tags.tags} & {"script", "link", "iframe", "object", "embed", "base", "form"}
    attributes = [v for _, a in tags.tags for k, v in a.items() if k != "src" and v]
    assert not any("http:" in v or "https:" in v or "url(" in v for v in attributes)
    assert "url(" not in page.split("</style>")[0] and "@import" not in page
    policy = next(a["content"] for a in tags.all("meta") if a.get("http-equiv") == "Content-Security-Policy")
    assert policy.startswith("default-src 'none'; img-src data:")  # nothing else may load, nothing may run


def test_every_number_shown_is_the_one_in_results_json(audited):
    out, results = audited
    _, tags = report_of(out)
    seen = set()
    for path, value, shown in tags.numbers:
        path = json.loads(path)
        assert json.loads(value) == at(results, path) and shown in (None, text_of(at(results, path))), path
        seen.add(tuple(path))
    assert shown_paths(results, GALLERY) - seen == set()
    ranking = "".join(tags.text)
    for metric, order in results["ranking"].items():  # the ranking line of each metric, best first
        assert " › ".join(order) in ranking


def test_text_from_the_files_cannot_inject_markup(audited):
    out, results = audited
    page, tags = report_of(out)
    assert HOSTILE not in page and "<script" not in page and "<b>" not in page
    text = "".join(tags.text)
    assert text.count(HOSTILE) >= 6  # label, class, reasons, failed image, command: shown as text
    assert tags.all("b") == []


def test_failed_methods_and_images_are_listed_with_their_reasons(audited, tmp_path):
    source, results = audited
    _, tags = report_of(source)
    text = "".join(tags.text)
    assert f"occlusionfailed{results['methods']['occlusion']['reason']}" in text
    assert f"285/broken.png{results['data']['failed'][0]['reason']}" in text and "cannot read image" in text
    assert "gradcamran on" not in text and "saliencyran on" not in text

    def partly(r):
        r["methods"]["saliency"]["reason"] = "failed on 1 of 3 images: too dark"
    out, _ = changed(source, tmp_path / "audit", partly)
    assert "saliencyran on the other imagesfailed on 1 of 3 images: too dark" in "".join(report_of(out)[1].text)


def test_sanity_verdicts_with_their_curves(audited, tmp_path):
    source, results = audited
    assert results["sanity"] == {} and results["sanity_note"]  # this audit ran no randomisation metric: said so
    assert results["sanity_note"][1:] in "".join(report_of(source)[1].text)
    out, results = changed(source, tmp_path / "audit", lambda r: r.update(sanity=SANITY))
    page, tags = report_of(out)
    points = [json.loads(a["data-path"]) for t, a in tags.tags if t == "circle"]
    assert points == [["sanity", m, "mprt", series, i] for m in ("gradcam", "saliency")
                      for series, n in (("spearman", 3), ("ssim", 2)) for i in range(n)]
    curves = [a for t, a in tags.tags if t == "svg"]
    assert len(curves) == 2 and all(a["role"] == "img" and "spearman: " in a["aria-label"] for a in curves)
    text = "".join(tags.text)
    assert "gradcammprt✗ fail" in text and "saliencympr✓ pass" not in text and "saliencymprt✓ pass" in text
    assert text.count("spearman 0.125") == 2  # one value: a number, not a curve
    for path, value, shown in tags.numbers:
        assert json.loads(value) == at(results, json.loads(path)) and shown in (None, text_of(json.loads(value)))


def test_pictures_outside_the_folder_or_not_png_are_shown_missing(audited, tmp_path):
    source, results = audited
    out = tmp_path / "audit"
    shutil.copytree(source, out)
    secret = tmp_path / "secret.png"
    (out / "maps" / "link.png").symlink_to(secret)
    (out / "maps" / "text.png").write_text("not a picture")
    results = copy.deepcopy(results)
    chelsea = results["images"]["285__chelsea.png"]
    shutil.copy(out / chelsea["maps"]["gradcam"], secret)  # a real PNG, but outside the folder
    chelsea["maps"].update(gradcam="../secret.png", saliency="maps/link.png")
    chelsea["thumbnail"] = "maps/text.png"
    (out / "results.json").write_text(json.dumps(results))
    page, tags = report_of(out)
    assert base64.b64encode(secret.read_bytes()[:300])[:200].decode() not in page
    missing = [a for t, a in tags.tags if t == "div" and a.get("class") == "missing"]
    shown = pictures(results, GALLERY, GRID)  # the cat: best and worst of both methods, and its grid row
    assert len(missing) == sum(shown.count(p) for p in ("../secret.png", "maps/link.png", "maps/text.png")) == 7
    assert all(a["role"] == "img" and a["aria-label"].endswith("(missing)") for a in missing)


def test_a_large_data_set_gives_a_bounded_report(audited, tmp_path):
    """10 000 images, 1000 classes, 5000 unreadable files: the report shows GALLERY images per gallery row, GRID
    grid rows, CLASSES classes, FAILED failed files, and says that there are more."""
    source, small = audited
    out = tmp_path / "audit"
    shutil.copytree(source, out)
    results = copy.deepcopy(small)
    ids = [f"class_{i % 1000}__img_{i}.jpg" for i in range(10_000)]
    first = small["images"][small["grid"][0]]
    results["images"] = {i: {**first, "label_name": i.split("__")[0]} for i in ids}
    results["grid"] = ids
    results["gallery"].update({m: {"best": ids[:500], "worst": ids[-500:]} for m in ("gradcam", "saliency")})
    row = small["per_class"]["espresso"]  # the other class is named HOSTILE
    results["per_class"] = {f"class_{c}": {**row, "n": 10 + c % 7} for c in range(1000)}
    results["data"]["classes"] = {f"class_{c}": 10 for c in range(1000)}
    results["data"]["failed"] = [{"path": f"bad_{i}.jpg", "reason": "not an image"} for i in range(5000)]
    (out / "results.json").write_text(json.dumps(results))
    page, tags = report_of(out)
    assert len(tags.all("img")) == 2 * 2 * GALLERY + GRID * 3
    pngs = max(os.path.getsize(out / p) for p in first["maps"].values())
    assert len(page) < len(tags.all("img")) * pngs * 4 / 3 + 200_000  # the pictures (base64) and 200 kB of text
    rows = [a for t, a in tags.tags if t == "tr"]
    assert len(rows) < 2 * (CLASSES + 1) + (GRID + 1) + (FAILED + 1) + 40
    text = "".join(tags.text)
    assert f"The {CLASSES} classes with most images of 1000" in text and f"The first {FAILED} of 5000" in text
    assert f"The first {GRID} of 10000 images" in text


def test_a_folder_without_results_is_refused_in_one_line(tmp_path):
    with pytest.raises(OnnxplainError, match="results.json not found: run an audit"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(OnnxplainError, match="cannot read .*results.json: Expecting property name"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(OnnxplainError, match="is not an onnxplain audit's results"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_the_report_replaces_a_link_instead_of_writing_through_it(audited, tmp_path):
    source, _ = audited
    out = tmp_path / "audit"
    shutil.copytree(source, out)
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text("keep")
    (out / "report.html").unlink()
    (out / "report.html").symlink_to(elsewhere)
    write_report(out)
    assert elsewhere.read_text() == "keep" and not (out / "report.html").is_symlink()
    assert escape("Explanation audit of") in (out / "report.html").read_text()
