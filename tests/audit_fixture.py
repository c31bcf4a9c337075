"""An audit folder (results.json + overlays) laid out as /work's audit contract says, made from real maps of the
bundled MobileNetV2 on the bundled photos: the reports' tests read it. The metric values are real (deletion and
insertion through onnxplain.evaluate, bootstrap intervals over the images); the sanity curves and per-class means
are made up to the schema. Labels and reasons carry HTML to test the escaping."""
import json
from pathlib import Path

import numpy as np
from conftest import IMAGES

import onnxplain
from onnxplain import render
from onnxplain.report import GALLERY

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
METHODS = ("gradcam", "saliency")


def bootstrap(values, rng, n=1000) -> dict:
    v = np.asarray(values, np.float64)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high), "n": len(v)}


def make_audit(out: Path, model) -> dict:
    """Write the audit folder `out` and return its results."""
    rng = np.random.default_rng(17)
    ids = [p.stem for p in IMAGES]
    explained = {m: onnxplain.explain(model, [str(p) for p in IMAGES], m) for m in METHODS}
    scores = onnxplain.evaluate(model, [str(p) for p in IMAGES], {m: e.maps for m, e in explained.items()},
                                metrics=["deletion", "insertion"], step=224 * 224 // 8)
    first = explained[METHODS[0]]
    images = {}
    for i, image_id in enumerate(ids):
        folder = out / "maps" / image_id
        render.save_png(folder / "image.png", first.views[i])
        for m, e in explained.items():
            render.save_png(folder / f"{m}.png", render.figure(e, i, view="crop")[0])
        c = int(first.targets[i])
        images[image_id] = {"path": str(IMAGES[i]), "label_name": HOSTILE if i == 0 else model.label(c),
                            "predicted_name": model.label(c),
                            "score": float(model.probabilities(first.logits[i].astype(np.float64))[c]),
                            "thumbnail": f"maps/{image_id}/image.png",
                            "maps": {m: f"maps/{image_id}/{m}.png" for m in METHODS},
                            "metrics": {m: {k: float(scores[m][k][i]) for k in ("deletion", "insertion")}
                                        for m in METHODS}}
    summary = {m: {k: bootstrap(v, rng) for k, v in row.items()} for m, row in scores.items()}
    better = {"deletion": "lower", "insertion": "higher"}
    ranking = {k: sorted(METHODS, key=lambda m: summary[m][k]["mean"] * (1 if b == "lower" else -1))
               for k, b in better.items()}
    order = {m: sorted(range(len(ids)), key=lambda i: scores[m]["insertion"][i], reverse=True) for m in METHODS}
    layers = ["Conv_52", "Conv_49", "Conv_47"]
    results = {
        "onnxplain": "0.1.0", "created": "2026-12-04T13:30:00Z",
        "command": f"onnxplain audit models/mobilenet_v2.onnx models/images -m gradcam -m saliency -o out "
                   f"# {HOSTILE}",
        "model": {"path": "models/mobilenet_v2.onnx", "sha256": model.sha256, "producer": "pytorch",
                  "producer_version": "2.13.0", "opset": model.opset, "ir_version": model.proto.ir_version,
                  "input": {"name": model.input, "shape": ["N", 3, 224, 224], "layout": model.layout,
                            "size": list(model.input_size)},
                  "preprocessing": {**model.preprocessing.to_dict(), "guessed": model.preprocessing_guessed},
                  "provider": "CPUExecutionProvider", "passes": ["dims: batch made dynamic"],
                  "classes": model.num_classes, "labels": True},
        "data": {"source": "models/images", "kind": "folder", "images": len(ids) + 1, "labelled": len(ids),
                 "with_masks": 0, "classes": {HOSTILE: 1, images[ids[1]]["label_name"]: 1},
                 "failed": [{"path": "models/images/broken.png", "reason": f"not an image {HOSTILE}"}]},
        "target": "label",
        "accuracy": {"top1": 0.5, "n": len(ids)},
        "methods": {**{m: {"status": "ok", "reason": None if m == "gradcam" else "failed on 1 of 3 images: too dark",
                           "params": {}, "seconds": 1.25} for m in METHODS},
                    "lime": {"status": "failed", "reason": f"lime failed: {HOSTILE}", "params": {}, "seconds": 0.0}},
        "metrics": {k: {"group": "faithfulness", "better": b, "paper": "Petsiuk et al. 2018", "needs": [],
                        "options": {"step": 224 * 224 // 8}} for k, b in better.items()},
        "summary": summary,
        "ranking": ranking,
        "sanity": {m: {"mprt": {"verdict": "pass" if m == "saliency" else "fail", "reason": f"{m}: {HOSTILE}",
                                "layers": layers, "spearman": [0.61, 0.22, 0.05] if m == "saliency" else
                                [0.97, 0.95, 0.93], "ssim": [0.52, 0.31, None]},
                       "random_logit": {"verdict": "pass", "reason": "maps of another class differ",
                                        "layers": [], "spearman": [0.125], "ssim": []}} for m in METHODS},
        "per_class": {HOSTILE: {"n": 1, "accuracy": 1.0, **{m: {k: float(scores[m][k][0]) for k in better}
                                                               for m in METHODS}},
                      images[ids[1]]["label_name"]: {"n": 1, "accuracy": 0.0,
                                                     **{m: {k: float(scores[m][k][1]) for k in better}
                                                        for m in METHODS}}},
        "gallery": {"metric": "insertion", **{m: {"best": [ids[order[m][0]]], "worst": [ids[order[m][-1]]]}
                                              for m in METHODS}},
        "grid": ids,
        "images": images,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


def at(results: dict, path: list):
    for key in path:
        results = results[key]
    return results


def text_of(value) -> str:
    """How the report shows a number of results.json: integers whole, others to 3 significant digits, null a dash."""
    return "–" if value is None else str(value) if isinstance(value, int) else f"{value:.3g}"


def pictures(results: dict, gallery: int, grid: int) -> list[str]:
    """The pictures the report shows, in page order: per method (that ran) its best, then worst gallery images,
    then per grid image its thumbnail and each method's overlay."""
    ok = [m for m, v in results["methods"].items() if v["status"] == "ok"]
    out = [results["images"][i]["maps"][m] for m in ok for side in ("best", "worst")
           for i in results["gallery"][m][side][:gallery]]
    for i in results["grid"][:grid]:
        out += [results["images"][i]["thumbnail"]] + [results["images"][i]["maps"][m] for m in ok]
    return out


def shown_paths(results: dict) -> set:
    """The places of results.json whose numbers the report must show: every summary statistic, every point of the
    sanity curves, the accuracy and the data set's counts."""
    paths = {("summary", m, k, s) for m, row in results["summary"].items() for k in row
             for s in ("mean", "low", "high", "n")}
    paths |= {("sanity", m, c, series, i) for m, checks in results["sanity"].items() for c, v in checks.items()
              for series in ("spearman", "ssim") for i, x in enumerate(v[series]) if x is not None}
    paths |= {("accuracy", "top1"), ("accuracy", "n"), ("data", "images"), ("data", "labelled")}
    metric = results["gallery"]["metric"]
    paths |= {("images", i, "metrics", m, metric) for m in results["summary"] for side in ("best", "worst")
              for i in results["gallery"][m][side][:GALLERY]}
    return paths
