"""An audit's results on disk: per_image.jsonl (appended a batch at a time, made durable before the next), the maps,
and from them results.json (summary with bootstrap intervals, ranking, per-class means, galleries) and
per_image.csv."""
from __future__ import annotations

import csv
import heapq
import json
import os
from array import array
from collections.abc import Iterable, Iterator
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


def _lines(path: Path) -> Iterator[tuple[dict, int]]:
    """(row, the offset after its line) for each whole line of per_image.jsonl at `path`, streamed; a last line cut
    short (a run stopped while writing it) ends them, a damaged line before it is refused."""
    size, at = path.stat().st_size, 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("cut short")
                row = json.loads(line)
            except ValueError:
                if at + len(line) < size:
                    raise OnnxplainError(f"{path} line {n} is damaged; start the audit again with --force") from None
                return
            at += len(line)
            yield row, at


def each_row(out: Path) -> Iterator[dict]:
    """The rows of per_image.jsonl one at a time (none without one; see `_lines`): memory holds one row."""
    path = out / ROWS
    if path.is_file():
        yield from (row for row, _ in _lines(path))


def read_rows(out: Path) -> list[dict]:
    """The rows of per_image.jsonl ([] without one; see `each_row`), all in memory: for tests and small audits."""
    return list(each_row(out))


def repair_rows(out: Path) -> None:
    """Cut a last line cut short (a run stopped while writing it) off per_image.jsonl, so that appending goes on
    from the last whole row; a damaged line before it is refused."""
    path, at = out / ROWS, 0
    if not path.is_file():
        return
    for _, at in _lines(path):
        pass
    if at < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(at)


def bootstrap(values, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its 95 % percentile-bootstrap interval, the 2.5th and 97.5th
    percentiles of the means of `resamples` resamples drawn with replacement by default_rng(seed), resample b being
    the b-th draw of len(values) indices. Drawn in blocks, so memory stays bounded however many values there are."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 1_000_000 // max(len(v), 1)))  # 16 MB of indices and values
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


def _klass(r: dict) -> str:
    """An image's class in the per-class tables: its label, else its predicted class."""
    return (r["label_name"] or f"class {r['label']}") if r["label"] is not None else \
        (r["predicted_name"] or f"class {r['predicted']}")


class _Few:
    """The `n` smallest of (unique) keys offered one at a time, in bounded memory."""

    def __init__(self, n: int):
        self.n, self.kept = n, []

    def offer(self, key, item) -> None:
        self.kept.append((key, item))
        if len(self.kept) > 64 * self.n:
            self.kept = heapq.nsmallest(self.n, self.kept)

    def first(self) -> list:
        return [item for _, item in heapq.nsmallest(self.n, self.kept)]


def summarise(out: Path, metrics: dict, seed: int) -> dict:
    """The parts of results.json computed from the rows of per_image.jsonl in `out`: accuracy, methods' status,
    summary, ranking, per-class means, gallery, grid, images and the images that could not be read. `metrics`:
    {name: Metric} of the plan.

    Streamed in two passes over the file: memory holds per method and metric its values (8 bytes each) for the
    bootstrap, per image its id, and running sums per class, never the rows."""
    first: set[str] = set()       # images met (their first row decides whether they were read)
    read_ids, failed = set(), {}
    labelled = hits = 0
    grid: list[str] = []
    methods: dict[str, dict] = {}
    values: dict[str, dict[str, array]] = {}
    classes: dict[str, dict] = {}
    chosen = next((m for m in GALLERY_METRICS if m in metrics), next(iter(metrics), None))
    higher = chosen is not None and metrics[chosen].better == "higher"
    best: dict[str, _Few] = {}
    worst: dict[str, _Few] = {}
    order = 0
    for row in each_row(out):
        i = row["id"]
        if i not in first:
            first.add(i)
            if row["predicted"] is not None:
                read_ids.add(i)
                grid += [i] if len(grid) < GRID else []
                entry = classes.setdefault(_klass(row), {"n": 0, "labelled": 0, "hits": 0, "sums": {}})
                entry["n"] += 1
                if row["label"] is not None:
                    labelled, hits = labelled + 1, hits + (row["predicted"] == row["label"])
                    entry["labelled"] += 1
                    entry["hits"] += row["predicted"] == row["label"]
        if row["predicted"] is None:
            failed[i] = {"path": row["path"], "reason": row["error"]}
        if i not in read_ids or row["predicted"] is None:
            continue
        method = row["method"]
        state = methods.setdefault(method, {"ok": 0, "failed": 0, "reason": None, "seconds": 0.0})
        state["seconds"] += row["seconds"]
        own = values.setdefault(method, {name: array("d") for name in metrics})
        if row["error"] is not None:
            state["failed"] += 1
            state["reason"] = state["reason"] or row["error"]
        else:
            state["ok"] += 1
            sums = classes[_klass(row)]["sums"].setdefault(method, {})
            for name in metrics:
                v = row["metrics"].get(name)
                if v is not None:
                    own[name].append(v)
                    total = sums.setdefault(name, [0.0, 0])
                    total[0] += v
                    total[1] += 1
        v = row["metrics"].get(chosen) if chosen else None
        best.setdefault(method, _Few(GALLERY))
        worst.setdefault(method, _Few(GALLERY))
        if v is not None:  # the gallery's order: a stable sort by value, best first; the worst, that list reversed
            order += 1
            best[method].offer((-v if higher else v, order), i)
            worst[method].offer((v if higher else -v, -order), i)
    summary = {}
    for method, own in values.items():
        summary[method] = {}
        for name, v in own.items():
            if len(v):
                mean, low, high = bootstrap(v, seed)
                summary[method][name] = {"mean": mean, "low": low, "high": high, "n": len(v)}
    ranking = {}
    for name, metric in metrics.items():
        scored = [(s[name]["mean"], method) for method, s in summary.items() if name in s]
        ranking[name] = [method for _, method in sorted(scored, reverse=metric.better == "higher")]
    status = {method: {"status": "ok" if st["ok"] else "failed",
                       "reason": st["reason"] if not st["ok"] or not st["failed"] else
                       f"failed on {st['failed']} of {st['ok'] + st['failed']} images: {st['reason']}",
                       "seconds": float(st["seconds"])} for method, st in methods.items()}
    per_class = {}
    for name, entry in sorted(classes.items()):
        per_class[name] = {"n": entry["n"], "accuracy": entry["hits"] / entry["labelled"] if entry["labelled"]
                           else None}
        for method in methods:
            sums = entry["sums"].get(method, {})
            per_class[name][method] = {m: sums[m][0] / sums[m][1] if m in sums else None for m in metrics}
    gallery = {"metric": chosen, **{method: {"best": best[method].first(), "worst": worst[method].first()}
                                    for method in methods}}
    return {"accuracy": {"top1": hits / labelled, "n": labelled} if labelled else None, "methods": status,
            "summary": summary, "ranking": ranking, "per_class": per_class, "gallery": gallery, "grid": grid,
            "images": _shown(out, set(grid) | {i for g in gallery.values() if isinstance(g, dict)
                                               for part in g.values() for i in part}, list(methods)),
            "failed": list(failed.values())}


def _shown(out: Path, shown: set, methods: list[str]) -> dict:
    """The images the report shows (second pass over the rows): caption, thumbnail, and each method's map and
    metrics."""
    images = {}
    for row in each_row(out):
        i = row["id"]
        if i not in shown or row["predicted"] is None:
            continue
        if i not in images:
            images[i] = {"path": row["path"], "label_name": row["label_name"], "predicted_name": row["predicted_name"],
                         "score": row["score"], "thumbnail": f"maps/{i}/image.png", "maps": {}, "metrics": {}}
        if row["map"]:
            images[i]["maps"][row["method"]] = row["map"]
            images[i]["metrics"][row["method"]] = row["metrics"]
    for image in images.values():  # in the methods' order, as the report lists them
        for part in ("maps", "metrics"):
            image[part] = {m: image[part][m] for m in methods if m in image[part]}
    return images


GALLERY_METRICS = ("insertion", "deletion")  # the metric galleries rank by: the first of these the audit has


def write_json(path: Path, results: dict) -> None:
    with writing(path) as tmp:
        tmp.write_text(json.dumps(_finite(results), indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                       encoding="utf-8")


def write_csv(path: Path, rows: Iterable[dict], metrics) -> None:
    """per_image.csv: one line per (image, method), its metrics as columns; the rows streamed."""
    columns = ["id", "path", "label", "label_name", "predicted", "predicted_name", "score", "target", "method",
               *metrics, "error"]
    with writing(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if v is None else v for v in
                        [*(row[c] for c in columns[:9]), *(row["metrics"].get(m) for m in metrics), row["error"]]])
