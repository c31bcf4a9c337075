"""A real audit for the report's tests: `onnxplain.audit` of the bundled MobileNetV2 on the bundled photos in class
folders (285: Egyptian cat, 967: espresso), with an unreadable file and a method that fails, and the Egyptian cat's
label replaced by HTML to test the escaping. Also the helpers that read results.json as the report shows it."""
import shutil
from pathlib import Path

from conftest import IMAGES, MOBILENET

import onnxplain

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
METHODS = ("gradcam", "saliency", "occlusion")  # occlusion with a window larger than the image: fails in one line
STEP = 224 * 224 // 8  # 9 points per deletion and insertion curve


def make_audit(folder: Path) -> Path:
    """Audit into `folder`/out (which then holds results.json, the maps and report.html); returns that folder."""
    for image, c in zip(IMAGES, (285, 967)):
        (folder / "data" / str(c)).mkdir(parents=True)
        shutil.copy(image, folder / "data" / str(c))
    (folder / "data" / "285" / "broken.png").write_bytes(b"not a png")
    labels = onnxplain.load(MOBILENET, device="cpu").labels
    labels[285] = HOSTILE
    model = onnxplain.load(MOBILENET, device="cpu", labels=labels)
    onnxplain.audit(model, folder / "data", METHODS, folder / "out", metrics=["deletion", "insertion"],
                    options={"deletion": {"step": STEP}, "insertion": {"step": STEP}},
                    params={"occlusion": {"window": 500}}, command=f"tests/audit_fixture.py # {HOSTILE}")
    return folder / "out"


# Sanity-check results as the schema has them (made up: the fixture's audit runs no randomisation metric)
SANITY = {m: {"mprt": {"verdict": "pass" if m == "saliency" else "fail", "reason": f"{m}: {HOSTILE}",
                       "layers": ["Conv_52", "Conv_49", "Conv_47"],
                       "spearman": [0.61, 0.22, 0.05] if m == "saliency" else [0.97, 0.95, 0.93],
                       "ssim": [0.52, 0.31, None]},
              "random_logit": {"verdict": "pass", "reason": "maps of another class differ", "layers": [],
                               "spearman": [0.125], "ssim": []}} for m in ("gradcam", "saliency")}


def at(results: dict, path: list):
    for key in path:
        results = results[key]
    return results


def text_of(value) -> str:
    """How the report shows a number of results.json: integers whole, others to 3 significant digits, null a dash."""
    return "–" if value is None else str(value) if isinstance(value, int) else f"{value:.3g}"


def ok(results: dict) -> list[str]:
    return [m for m, v in results["methods"].items() if v["status"] == "ok"]


def pictures(results: dict, gallery: int, grid: int) -> list[str]:
    """The pictures the report shows, in page order: per method (that ran) its best, then worst gallery images,
    then per grid image its thumbnail and each method's overlay."""
    out = [results["images"][i]["maps"][m] for m in ok(results) for side in ("best", "worst")
           for i in results["gallery"][m][side][:gallery]]
    for i in results["grid"][:grid]:
        out += [results["images"][i]["thumbnail"]] + [results["images"][i]["maps"][m] for m in ok(results)]
    return out


def shown_paths(results: dict, gallery: int) -> set:
    """The places of results.json whose numbers the report must show: every summary statistic, every point of the
    sanity curves, the accuracy, the data set's counts and the gallery images' values of the gallery's metric."""
    paths = {("summary", m, k, s) for m, row in results["summary"].items() for k in row
             for s in ("mean", "low", "high", "n")}
    paths |= {("sanity", m, c, series, i) for m, checks in results["sanity"].items() for c, v in checks.items()
              for series in ("spearman", "ssim") for i, x in enumerate(v[series]) if x is not None}
    paths |= {("accuracy", "top1"), ("accuracy", "n"), ("data", "images"), ("data", "labelled")}
    metric = results["gallery"]["metric"]
    paths |= {("images", i, "metrics", m, metric) for m in ok(results) for side in ("best", "worst")
              for i in results["gallery"][m][side][:gallery]}
    return paths


def changed(source: Path, dest: Path, change) -> tuple[Path, dict]:
    """A copy of the audit folder `source` at `dest` whose results.json `change(results)` has edited, with its
    report written again; the folder and the changed results."""
    import json

    from onnxplain.report import write_report
    shutil.copytree(source, dest)
    results = json.loads((dest / "results.json").read_text(encoding="utf-8"))
    change(results)
    (dest / "results.json").write_text(json.dumps(results), encoding="utf-8")
    write_report(dest)
    return dest, results
