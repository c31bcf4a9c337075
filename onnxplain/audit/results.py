"""An audit's results on disk: per_image.jsonl (appended a batch at a time, made durable before the next), the maps,
and from them results.json (summary with bootstrap intervals, ranking, per-class means, galleries) and
per_image.csv."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import OnnxplainError, writing
from ..render import save_npy, save_png

ROWS = "per_image.jsonl"
RESAMPLES = 1000
GALLERY = 4   # best and worst images per method
GRID = 8      # images in the method × image grid


def write_files(out: Path, rows: list[dict]) -> list[dict]:
    """Write the rows' files (maps, pictures) into `out`; the rows without them (a Ray actor writes them where it
    scored the batch and sends back the rows)."""
    for row in rows:
        for name, value in row["files"].items():
            (save_png if name.endswith(".png") else save_npy)(out / name, value)
    return [{**row, "files": {}} for row in rows]


def write_rows(out: Path, rows: list[dict], done: set) -> None:
    """Write the rows' files (maps, pictures) and append the rows not `done` yet (their (id, method)) to
    per_image.jsonl, flushed and synced to disk; `done` gains them."""
    lines = []
    for row in write_files(out, rows):
        key = (row["id"], row["method"])
        if key not in done:
            done.add(key)
            lines.append(json.dumps({k: v for k, v in row.items() if k != "files"}, ensure_ascii=False) + "\n")
    if not lines:
        return
    try:
        with open(out / ROWS, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OnnxplainError(f"cannot write {out / ROWS}: {exc.strerror or exc}") from None


def read_rows(out: Path, repair: bool = False) -> list[dict]:
    """The rows of per_image.jsonl ([] without one). A last line cut short (a run stopped while writing it) is
    left out, and with `repair` cut off the file so that appending goes on from the last whole row; a damaged line
    before it is refused."""
    path = out / ROWS
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, at = [], 0
    for n, line in enumerate(data.splitlines(keepends=True), 1):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("cut short")
            rows.append(json.loads(line))
        except ValueError:
            if at + len(line) < len(data):
                raise OnnxplainError(f"{path} line {n} is damaged; start the audit again with --force") from None
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(at)
            break
        at += len(line)
    return rows


def bootstrap(values, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its 95 % percentile-bootstrap interval, the 2.5th and 97.5th
    percentiles of the means of `resamples` resamples drawn with replacement by default_rng(seed), resample b being
    the b-th draw of len(values) indices. Drawn in blocks, so memory stays bounded however many values there are."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 10_000_000 // max(len(v), 1)))
    means = np.concatenate([v[rng.integers(0, len(v), (min(block, resamples - a), len(v)))].mean(axis=1)
                            for a in range(0, resamples, block)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(low), float(high)


def _finite(x):
    """JSON-safe: non-finite floats become None (results.json never holds NaN)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def summarise(rows: list[dict], metrics: dict, seed: int) -> dict:
    """The parts of results.json computed from the rows: accuracy, methods' status, summary, ranking, per-class
    means, gallery, grid and images. `metrics`: {name: Metric} of the plan."""
    images = {}
    for row in rows:
        images.setdefault(row["id"], row)
    read = [r for r in images.values() if r["predicted"] is not None]
    labelled = [r for r in read if r["label"] is not None]
    accuracy = ({"top1": float(np.mean([r["predicted"] == r["label"] for r in labelled])), "n": len(labelled)}
                if labelled else None)
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        if row["predicted"] is not None:
            by_method.setdefault(row["method"], []).append(row)
    methods, summary = {}, {}
    for method, own in by_method.items():
        ok = [r for r in own if r["error"] is None]
        failed = [r for r in own if r["error"] is not None]
        reason = failed[0]["error"] if failed else None
        methods[method] = {"status": "ok" if ok else "failed",
                           "reason": reason if not ok or not failed else
                           f"failed on {len(failed)} of {len(own)} images: {reason}",
                           "seconds": float(sum(r["seconds"] for r in own))}
        summary[method] = {}
        for name in metrics:
            values = [r["metrics"].get(name) for r in ok]
            values = [v for v in values if v is not None]
            if values:
                mean, low, high = bootstrap(values, seed)
                summary[method][name] = {"mean": mean, "low": low, "high": high, "n": len(values)}
    ranking = {}
    for name, metric in metrics.items():
        scored = [(s[name]["mean"], method) for method, s in summary.items() if name in s]
        ranking[name] = [method for _, method in sorted(scored, reverse=metric.better == "higher")]
    return {"accuracy": accuracy, "methods": methods, "summary": summary, "ranking": ranking,
            "per_class": _per_class(read, by_method, metrics), **_galleries(read, by_method, metrics)}


def _per_class(read: list[dict], by_method: dict, metrics: dict) -> dict:
    """Per class (the label, else the predicted class): images, accuracy and each method's metric means."""
    def klass(r):
        return (r["label_name"] or f"class {r['label']}") if r["label"] is not None else \
            (r["predicted_name"] or f"class {r['predicted']}")
    out = {}
    for r in read:
        entry = out.setdefault(klass(r), {"n": 0, "hits": [], "ids": set()})
        entry["n"] += 1
        entry["ids"].add(r["id"])
        if r["label"] is not None:
            entry["hits"].append(r["predicted"] == r["label"])
    for name, entry in out.items():
        ids, hits = entry.pop("ids"), entry.pop("hits")
        entry["accuracy"] = float(np.mean(hits)) if hits else None
        for method, own in by_method.items():
            means = {}
            for metric in metrics:
                values = [r["metrics"].get(metric) for r in own if r["id"] in ids and r["error"] is None]
                values = [v for v in values if v is not None]
                means[metric] = float(np.mean(values)) if values else None
            entry[method] = means
    return dict(sorted(out.items()))


GALLERY_METRICS = ("insertion", "deletion")  # the metric galleries rank by: the first of these the audit has


def _galleries(read: list[dict], by_method: dict, metrics: dict) -> dict:
    chosen = next((m for m in GALLERY_METRICS if m in metrics), next(iter(metrics), None))
    gallery = {"metric": chosen}
    for method, own in by_method.items():
        scored = [(r["metrics"][chosen], r["id"]) for r in own if chosen and r["metrics"].get(chosen) is not None]
        scored.sort(key=lambda s: s[0], reverse=metrics[chosen].better == "higher" if chosen else False)
        gallery[method] = {"best": [i for _, i in scored[:GALLERY]], "worst": [i for _, i in scored[::-1][:GALLERY]]}
    grid = [r["id"] for r in read[:GRID]]
    shown = set(grid) | {i for method in by_method for part in ("best", "worst") for i in gallery[method][part]}
    images = {r["id"]: {"path": r["path"], "label_name": r["label_name"], "predicted_name": r["predicted_name"],
                        "score": r["score"], "thumbnail": f"maps/{r['id']}/image.png", "maps": {}, "metrics": {}}
              for r in read if r["id"] in shown}
    for method, own in by_method.items():
        for x in own:
            if x["id"] in images and x["map"]:
                images[x["id"]]["maps"][method] = x["map"]
                images[x["id"]]["metrics"][method] = x["metrics"]
    return {"gallery": gallery, "grid": grid, "images": images}


def write_json(path: Path, results: dict) -> None:
    with writing(path) as tmp:
        tmp.write_text(json.dumps(_finite(results), indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                       encoding="utf-8")


def write_csv(path: Path, rows: list[dict], metrics) -> None:
    """per_image.csv: one line per (image, method), its metrics as columns."""
    columns = ["id", "path", "label", "label_name", "predicted", "predicted_name", "score", "target", "method",
               *metrics, "error"]
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if v is None else v for v in
                    [*(row[c] for c in columns[:9]), *(row["metrics"].get(m) for m in metrics), row["error"]]])
    with writing(path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
